//! Subcommands: parse, validate, then hand over to the library.

use crate::backend::{BackendChoice, select};
use crate::checkpoint::Checkpoint;
use crate::config::RunConfig;
use crate::sample::{Guidance, generate, save_grid};
use crate::train::{TrainOptions, load_ema, train};
use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hayate_data::Split;
use hayate_schedule::Sampler;
use hayate_schedule::ddim::Ddim;
use hayate_schedule::ddpm::Ddpm;
use std::path::PathBuf;

/// hayate: train image diffusion models fast, on any GPU Burn's WGPU backend reaches.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model from a TOML config.
    Train {
        /// The experiment config (for example experiments/cifar10-baseline.toml).
        #[arg(long)]
        config: PathBuf,
        /// Where to run: auto picks WGPU on a hardware GPU, else the CPU backend.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// The training images (overrides data.dir). CIFAR-10: a local folder
        /// (cifar-10-batches-bin), else $HAYATE_CIFAR10_DIR or the cache, downloading there if
        /// needed. Image folder: the folder (prepared into the cache on first use) or a file
        /// written by `hayate prepare`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The run folder (default runs/<config name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Total training steps (overrides train.steps).
        #[arg(long)]
        steps: Option<u64>,
        /// The seed of every random stream (overrides train.seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Continue from the newest checkpoint in the run folder.
        #[arg(long)]
        resume: bool,
        /// With --resume: accept a config that changes the run (lr, schedule, model...); the
        /// changes are listed and logged. Without it such a resume is refused.
        #[arg(long, requires = "resume")]
        allow_config_change: bool,
    },
    /// Write a grid of samples from a checkpoint's EMA weights.
    Sample {
        /// A checkpoint file, or a run folder (its newest checkpoint is used).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// The reverse process.
        #[arg(long, value_enum, default_value_t = SamplerChoice::Ddim)]
        sampler: SamplerChoice,
        /// DDIM steps (DDPM always takes all T steps).
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// DDIM eta (0: deterministic).
        #[arg(long, default_value_t = 0.0)]
        eta: f64,
        /// Seed of the starting noise and the per-step noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Class-conditional models: draw every image of this class (default: the classes in
        /// turn).
        #[arg(long)]
        class: Option<u32>,
        /// Class-conditional models: the classifier-free guidance scale (1: the conditional
        /// model alone, 0: the unconditional one; default: the run's sampling.cfg_scale).
        #[arg(long)]
        cfg_scale: Option<f64>,
        /// The PNG to write.
        #[arg(long, default_value = "grid.png")]
        out: PathBuf,
        /// Where to run.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
    },
    /// Measure training throughput: warm-up steps, then timed steps, on real data.
    Bench {
        /// The experiment config whose model and process are measured.
        #[arg(long)]
        config: PathBuf,
        /// Images per step (overrides train.batch_size).
        #[arg(long)]
        batch: Option<usize>,
        /// Timed steps, run after as many untimed warm-up steps (kernel compilation, autotune).
        #[arg(long, default_value_t = 10)]
        steps: u64,
        /// Where to run.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// A local CIFAR-10 folder.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Evaluate a model or an image set.
    Eval {
        /// Which evaluation.
        #[command(subcommand)]
        what: EvalCommand,
    },
    /// Two models, the same starting and per-step noise: how alike are their samples, and
    /// their predictions of x_0 along the way? (The consistency phenomenon.)
    Consistency {
        /// The first model: a checkpoint file or run folder.
        #[arg(long)]
        a: PathBuf,
        /// The second model.
        #[arg(long)]
        b: PathBuf,
        /// Image pairs.
        #[arg(long, default_value_t = 256)]
        n: usize,
        /// The reverse process.
        #[arg(long, value_enum, default_value_t = SamplerChoice::Ddim)]
        sampler: SamplerChoice,
        /// DDIM steps.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Seed of the shared noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The folder for consistency.json, pairs.png and agreement.png.
        #[arg(long, default_value = "consistency")]
        out: PathBuf,
        /// Where to run.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
    },
    /// Look at a config's schedules before training with it.
    Schedule {
        /// What to do with them.
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// Pack an image folder into a prepared file that training reads without decoding.
    Prepare {
        /// What to prepare.
        #[command(subcommand)]
        what: PrepareCommand,
    },
    /// Redraw a run's charts (loss, lr, beta1, mean t/T against step) into RUN_DIR/plots.
    Plot {
        /// The run folder (holding metrics.jsonl).
        run_dir: PathBuf,
    },
    /// Print a config's parameter count, FLOPs and resolved settings.
    Info {
        /// The experiment config.
        #[arg(long)]
        config: PathBuf,
    },
}

/// `hayate prepare` sources.
#[derive(Debug, Subcommand)]
pub enum PrepareCommand {
    /// An ImageNet-style training folder (one subfolder of JPEG/PNG files per class), or any
    /// folder of images: each image is shrunk on its short side and centre-cropped to SIZE x
    /// SIZE. Broken and non-image files are listed and skipped; an interrupted prepare resumes
    /// when run again with the same arguments.
    #[command(visible_alias = "folder")]
    Imagenet {
        /// The source folder.
        #[arg(long)]
        src: PathBuf,
        /// Side length of the prepared images (the model's resolution).
        #[arg(long)]
        size: usize,
        /// The prepared file to write.
        #[arg(long)]
        out: PathBuf,
        /// Decoding threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

/// `hayate eval` evaluations.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// FID of a checkpoint's samples (or of a CIFAR-10 split) against a reference set.
    Fid {
        /// A checkpoint file or run folder whose EMA model draws the images.
        #[arg(long, conflicts_with = "images")]
        checkpoint: Option<PathBuf>,
        /// Instead of samples, compare this image set with the reference.
        #[arg(long, value_enum)]
        images: Option<ImageSet>,
        /// Images on each side (FID depends on n: 50,000 is the standard).
        #[arg(long, default_value_t = 50_000)]
        n: usize,
        /// The reference set.
        #[arg(long = "ref", value_enum, default_value_t = ImageSet::Cifar10Train)]
        reference: ImageSet,
        /// A prepared file (`hayate prepare`) as the reference set instead of --ref.
        #[arg(long)]
        ref_prepared: Option<PathBuf>,
        /// Class-conditional models: the classifier-free guidance scale (default: the run's
        /// sampling.cfg_scale).
        #[arg(long)]
        cfg_scale: Option<f64>,
        /// The reverse process for samples.
        #[arg(long, value_enum, default_value_t = SamplerChoice::Ddim)]
        sampler: SamplerChoice,
        /// DDIM steps.
        #[arg(long, default_value_t = 100)]
        steps: usize,
        /// Seed of the sampling noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Images per batch through the sampler and Inception.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// The Inception weights (.pth from pytorch-fid or .safetensors); else
        /// $HAYATE_INCEPTION_WEIGHTS, else downloaded into the cache.
        #[arg(long)]
        inception_weights: Option<PathBuf>,
        /// A local CIFAR-10 folder.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where to run.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// Also write the result as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Image sets FID can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageSet {
    /// The CIFAR-10 training images (the first n).
    Cifar10Train,
    /// The CIFAR-10 test images (the first n).
    Cifar10Test,
}

impl ImageSet {
    fn split(self) -> Split {
        match self {
            Self::Cifar10Train => Split::Train,
            Self::Cifar10Test => Split::Test,
        }
    }
}

/// `hayate schedule` actions.
#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Write PNG charts of p_k(t) at several steps k, the loss weight w(t), beta1(k) and lr(k).
    Plot {
        /// The experiment config.
        #[arg(long)]
        config: PathBuf,
        /// The folder the charts go to.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `--sampler` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerChoice {
    /// DDPM ancestral sampling over all T steps.
    Ddpm,
    /// DDIM over `--steps` steps.
    Ddim,
}

impl SamplerChoice {
    /// The sampler, with DDIM's `steps` checked against the schedule (eta 0).
    fn build(
        self,
        steps: usize,
        schedule: &hayate_schedule::NoiseSchedule,
        config: &RunConfig,
    ) -> Result<Box<dyn Sampler>> {
        self.build_with_eta(steps, 0.0, schedule, config)
    }

    /// The sampler with DDIM's `steps` and `eta` checked.
    fn build_with_eta(
        self,
        steps: usize,
        eta: f64,
        schedule: &hayate_schedule::NoiseSchedule,
        config: &RunConfig,
    ) -> Result<Box<dyn Sampler>> {
        if steps == 0 || steps > schedule.steps() {
            bail!("--steps must be in 1..={}", schedule.steps());
        }
        if !(0.0..=1.0).contains(&eta) {
            bail!("--eta must be in [0, 1]");
        }
        Ok(match self {
            Self::Ddim => Box::new(Ddim {
                steps,
                eta,
                clip_x0: true,
            }),
            Self::Ddpm => Box::new(Ddpm {
                variance: config.sampling.ddpm_variance,
                clip_x0: true,
            }),
        })
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train {
            config,
            backend,
            data_dir,
            out,
            steps,
            seed,
            resume,
            allow_config_change,
        } => {
            let mut run_config = RunConfig::load(&config)?;
            if let Some(steps) = steps {
                run_config.train.steps = steps;
            }
            if let Some(seed) = seed {
                run_config.train.seed = seed;
            }
            run_config.validate()?;
            let out = out.unwrap_or_else(|| {
                let name = config
                    .file_stem()
                    .map_or("run".into(), |s| s.to_string_lossy());
                PathBuf::from("runs").join(name.as_ref())
            });
            let (device, why) = select(backend)?;
            eprintln!("device: {why}");
            let report = train(
                &TrainOptions {
                    config: run_config,
                    data_dir,
                    out: out.clone(),
                    resume,
                    allow_config_change,
                },
                &device,
            )?;
            println!(
                "trained to step {} ({:.1} img/s); run folder {}",
                report.step,
                report.images_per_second,
                out.display()
            );
            Ok(())
        }
        Command::Sample {
            checkpoint,
            n,
            sampler,
            steps,
            eta,
            seed,
            class,
            cfg_scale,
            out,
            backend,
        } => {
            if n == 0 {
                bail!("--n must be positive");
            }
            let (path, loaded) = Checkpoint::load_newest_valid(&checkpoint)?;
            let config = &loaded.meta.config;
            let schedule = config.diffusion.schedule()?;
            let chosen = sampler.build_with_eta(steps, eta, &schedule, config)?;
            let (device, why) = select(backend)?;
            eprintln!(
                "device: {why}; checkpoint {} (step {})",
                path.display(),
                loaded.step()
            );
            let model = load_ema(&loaded, &device)?;
            let scale = cfg_scale.unwrap_or(config.sampling.cfg_scale);
            let classes = model.num_classes();
            let guidance = match class {
                Some(c) if (c as usize) >= classes => bail!(
                    "--class {c}: the model has {classes} classes{}",
                    if classes == 0 {
                        " (it is unconditional)"
                    } else {
                        ""
                    }
                ),
                Some(c) => Some(Guidance {
                    labels: vec![c; n],
                    scale,
                }),
                None => Guidance::for_grid(&model, n, scale),
            };
            let images = generate(
                &model,
                &device,
                &schedule,
                config.diffusion.prediction,
                chosen.as_ref(),
                n,
                seed,
                guidance.as_ref(),
            );
            save_grid(&images, model.resolution(), &out)?;
            println!("wrote {n} samples to {}", out.display());
            Ok(())
        }
        Command::Prepare {
            what:
                PrepareCommand::Imagenet {
                    src,
                    size,
                    out,
                    threads,
                },
        } => {
            if size == 0 || size > 4096 {
                bail!("--size must be in 1..=4096");
            }
            let folder = hayate_data::ImageFolder::scan(&src)?;
            eprintln!(
                "{}: {} files in {} classes",
                src.display(),
                folder.files.len(),
                folder.classes.len()
            );
            let threads = threads.unwrap_or_else(crate::dataset::default_threads);
            crate::dataset::prepare_with_progress(&folder, size, &out, threads)?;
            Ok(())
        }
        Command::Bench {
            config,
            batch,
            steps,
            backend,
            data_dir,
        } => {
            if steps == 0 {
                bail!("--steps must be positive");
            }
            let mut run_config = RunConfig::load(&config)?;
            if let Some(batch) = batch {
                run_config.train.batch_size = batch;
            }
            run_config.train.steps = 2 * steps;
            run_config.train.checkpoint_every = steps;
            run_config.train.keep_checkpoints = 1;
            // The end-of-interval grid is not what is measured; keep it minimal.
            run_config.sampling.grid_images = 1;
            run_config.sampling.ddim_steps = 1;
            run_config.validate()?;
            let (device, why) = select(backend)?;
            let out = std::env::temp_dir().join(format!("hayate-bench-{}", std::process::id()));
            let report = train(
                &TrainOptions {
                    config: run_config.clone(),
                    data_dir,
                    out: out.clone(),
                    resume: false,
                    allow_config_change: false,
                },
                &device,
            );
            let _ = std::fs::remove_dir_all(&out);
            let report = report?;
            let unet = run_config.model.resolve()?;
            let rate = report.interval_images_per_second[1];
            let batch = run_config.train.batch_size;
            let flops = 3.0 * unet.forward_flops() as f64 * rate;
            println!("bench: {} on {why}", config.display());
            println!(
                "model {} ({} parameters), batch {batch}, {steps} warm-up + {steps} timed steps",
                run_config.model.preset,
                crate::train::count_params(&unet)
            );
            println!(
                "warm-up: {:.2} img/s; timed: {rate:.2} img/s, {:.3} s/step, {:.2} GFLOP/s",
                report.interval_images_per_second[0],
                batch as f64 / rate,
                flops / 1e9
            );
            Ok(())
        }
        Command::Eval {
            what:
                EvalCommand::Fid {
                    checkpoint,
                    images,
                    n,
                    reference,
                    ref_prepared,
                    cfg_scale,
                    sampler,
                    steps,
                    seed,
                    batch,
                    inception_weights,
                    data_dir,
                    backend,
                    out,
                },
        } => {
            if n < 2 || batch == 0 {
                bail!("--n must be at least 2 and --batch positive");
            }
            let cache = crate::train::cache_dir();
            let weights = crate::fid::inception_weights(inception_weights.as_deref(), &cache)?;
            let (device, why) = select(backend)?;
            eprintln!("device: {why}; Inception weights {}", weights.display());
            let net = crate::inception::FidInception::load(&weights, &device)?;
            let stats_of = |set: ImageSet| -> Result<_> {
                let dir = hayate_data::cifar10_dir(data_dir.as_deref(), &cache)?;
                let data = hayate_data::Cifar10::open(&dir, set.split())?;
                crate::fid::dataset_statistics(&net, &data, n, batch, &cache)
            };
            let (reference_name, reference_stats) = match &ref_prepared {
                Some(path) => {
                    let data = hayate_data::PreparedImages::open(path)?;
                    let stats = crate::fid::dataset_statistics(&net, &data, n, batch, &cache)?;
                    (path.display().to_string(), stats)
                }
                None => (format!("{reference:?}"), stats_of(reference)?),
            };
            let (subject, stats, step) = match (checkpoint, images) {
                (Some(checkpoint), None) => {
                    let (path, loaded) = Checkpoint::load_newest_valid(&checkpoint)?;
                    let config = &loaded.meta.config;
                    let schedule = config.diffusion.schedule()?;
                    let model = load_ema(&loaded, &device)?;
                    let chosen = sampler.build(steps, &schedule, config)?;
                    eprintln!("sampling {n} images from {}", path.display());
                    let stats = crate::fid::sample_statistics(
                        &net,
                        &model,
                        &device,
                        &schedule,
                        config.diffusion.prediction,
                        chosen.as_ref(),
                        n,
                        batch,
                        seed,
                        cfg_scale.unwrap_or(config.sampling.cfg_scale),
                    )?;
                    (path.display().to_string(), stats, Some(loaded.step()))
                }
                (None, Some(set)) => (format!("{set:?}"), stats_of(set)?, None),
                _ => bail!("give --checkpoint or --images"),
            };
            let fid = crate::fid::frechet_distance(&stats, &reference_stats);
            println!("FID {fid:.4} ({subject} against {reference_name}, n = {n})");
            let mut result = serde_json::json!({
                "fid": fid,
                "n": n,
                "subject": subject,
                "reference": reference_name,
                "inception_weights": weights.display().to_string(),
            });
            if step.is_some() {
                result["step"] = step.into();
                result["sampler"] = format!("{sampler:?}").into();
                result["steps"] = steps.into();
                result["seed"] = seed.into();
            }
            if let Some(out) = out {
                crate::checkpoint::write_atomic(&out, format!("{result:#}\n").as_bytes())?;
            }
            Ok(())
        }
        Command::Consistency {
            a,
            b,
            n,
            sampler,
            steps,
            seed,
            out,
            backend,
        } => {
            if n < 2 {
                bail!("--n must be at least 2");
            }
            let (path_a, a) = Checkpoint::load_newest_valid(&a)?;
            let (path_b, b) = Checkpoint::load_newest_valid(&b)?;
            let schedule = a.meta.config.diffusion.schedule()?;
            if b.meta.config.diffusion.schedule()? != schedule {
                bail!(
                    "{} and {} use different noise schedules: the same noise would mean \
                     different things to them",
                    path_a.display(),
                    path_b.display()
                );
            }
            let chosen = sampler.build(steps, &schedule, &a.meta.config)?;
            let (device, why) = select(backend)?;
            eprintln!(
                "device: {why}; A = {}, B = {}",
                path_a.display(),
                path_b.display()
            );
            let run = |checkpoint: &Checkpoint| -> Result<crate::consistency::Trajectory> {
                let model = load_ema(checkpoint, &device)?;
                let prediction = checkpoint.meta.config.diffusion.prediction;
                Ok(crate::consistency::trajectory(
                    &model,
                    &device,
                    &schedule,
                    prediction,
                    chosen.as_ref(),
                    n,
                    seed,
                ))
            };
            let (ta, tb) = (run(&a)?, run(&b)?);
            let report = crate::consistency::compare(&ta, &tb)?;
            for path in crate::consistency::write(&report, &ta, &tb, &out)? {
                println!("wrote {}", path.display());
            }
            println!(
                "paired: agreement {:.4}, PSNR {:.2} dB; shuffled (chance): agreement {:.4}, \
                 PSNR {:.2} dB",
                report.paired.agreement,
                report.paired.psnr,
                report.shuffled.agreement,
                report.shuffled.psnr
            );
            Ok(())
        }
        Command::Schedule {
            action: ScheduleAction::Plot { config, out },
        } => {
            let run_config = RunConfig::load(&config)?;
            run_config.validate()?;
            for path in crate::plot::save_all(&crate::plot::schedule_charts(&run_config)?, &out)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Plot { run_dir } => {
            for path in crate::plot::plot_run(&run_dir)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Info { config } => {
            let run_config = RunConfig::load(&config)?;
            let unet = run_config.model.resolve()?;
            let params = crate::train::count_params(&unet);
            let forward = unet.forward_flops();
            let batch = run_config.train.batch_size as u64;
            println!("config: {}", config.display());
            println!("parameters: {params} ({:.2}M)", params as f64 / 1e6);
            println!(
                "forward FLOPs per image: {:.3} GFLOPs",
                forward as f64 / 1e9
            );
            // Backward costs about twice the forward pass.
            println!(
                "training FLOPs per step (batch {batch}, forward + backward = 3x forward): {:.3} TFLOPs",
                (3 * forward * batch) as f64 / 1e12
            );
            println!(
                "whole run ({} steps): {:.3e} FLOPs",
                run_config.train.steps,
                (3 * forward * batch) as f64 * run_config.train.steps as f64
            );
            println!("\n# resolved config\n{}", run_config.to_toml());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_and_schedule_plot_run_on_every_experiment() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let plots = tempfile::tempdir().unwrap();
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let config = entry.unwrap().path();
            if config.extension().is_some_and(|e| e == "toml") {
                run(Cli {
                    command: Command::Info {
                        config: config.clone(),
                    },
                })
                .unwrap();
                let out = plots.path().join(config.file_stem().unwrap());
                run(Cli {
                    command: Command::Schedule {
                        action: ScheduleAction::Plot {
                            config,
                            out: out.clone(),
                        },
                    },
                })
                .unwrap();
                for chart in ["timesteps", "loss_weight", "beta1", "lr"] {
                    image::open(out.join(format!("{chart}.png"))).unwrap();
                }
                count += 1;
            }
        }
        assert!(count >= 12, "only {count} experiment configs");
    }

    #[test]
    fn command_line_flags_parse() {
        let cli = Cli::try_parse_from([
            "hayate",
            "train",
            "--config",
            "x.toml",
            "--backend",
            "cpu",
            "--steps",
            "5",
            "--seed",
            "2",
            "--resume",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Train {
                backend: BackendChoice::Cpu,
                steps: Some(5),
                seed: Some(2),
                resume: true,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["hayate", "sample", "--sampler", "euler"]).is_err());
    }
}
