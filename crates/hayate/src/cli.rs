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
        /// Data parallelism over these GPUs (WGPU discrete adapters by index, e.g. 0,1,2,3):
        /// each step's batch (train.batch_size, the global batch) is split across them and the
        /// gradients summed on the first, so the learning rate and every random draw stay as
        /// configured.
        #[arg(long, value_delimiter = ',')]
        devices: Vec<usize>,
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
    /// Benchmarks.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        what: BenchCommand,
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

/// `hayate bench` benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Images per second of full training steps (forward, backward, optimiser, EMA, host-side
    /// batches) after warm-up, the FLOP rate from the analytic count, peak memory, and sampling
    /// steps per second; beside PyTorch's figures for the same UNet (benches/torch_throughput.py)
    /// when PyTorch and diffusers are installed.
    Throughput {
        /// A model preset (its default training settings); or give --config.
        #[arg(long, conflicts_with = "config")]
        preset: Option<String>,
        /// An experiment config whose model and training step are measured.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Images per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Timed training steps, run after as many untimed warm-up steps.
        #[arg(long, default_value_t = 5)]
        steps: u64,
        /// Timed sampling steps (DDIM), after a warm-up pass.
        #[arg(long, default_value_t = 5)]
        sample_steps: usize,
        /// Where to run.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// The Python with torch and diffusers for the comparison ($HAYATE_PYTHON, else python3).
        #[arg(long)]
        python: Option<String>,
        /// Skip the PyTorch comparison.
        #[arg(long)]
        no_torch: bool,
        /// Also time each phase of a step on its own (host batch, transfer, forward, backward,
        /// Adam, EMA): where the time goes.
        #[arg(long)]
        phases: bool,
        /// Also write the figures as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The convergence benchmark: trains one small model with each method of the config over
    /// its seeds on real CIFAR-10, scores samples at fixed steps with the Frechet distance in
    /// the features of a small CIFAR-10 classifier (and, for some checkpoints, Inception FID, to
    /// show the two rank alike), and reports each method's speed-up over the baseline. Finished
    /// runs are kept, so an interrupted benchmark continues where it stopped.
    Convergence {
        /// The benchmark (experiments/bench-*.toml).
        #[arg(long)]
        config: PathBuf,
        /// CIFAR-10's folder (else $HAYATE_CIFAR10_DIR or the cache).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where results, the table and the plot go (default runs/<config name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the trained runs are kept (default OUT/runs); give two benchmarks the same
        /// folder to share the runs they have in common (same method name, seed and settings).
        #[arg(long)]
        runs: Option<PathBuf>,
        /// Skip the Inception FID check of the proxy metric.
        #[arg(long)]
        no_inception: bool,
        /// FID's Inception weights (else $HAYATE_INCEPTION_WEIGHTS, else the cached download).
        #[arg(long)]
        inception_weights: Option<PathBuf>,
        /// Where to run.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
    },
    /// Trains the convergence benchmark's feature network (a small CIFAR-10 classifier) and
    /// writes its weights with its test accuracy.
    FeatureNet {
        /// CIFAR-10's folder (else $HAYATE_CIFAR10_DIR or the cache).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Image side: 32, or 16 / 8 (CIFAR-10 averaged over blocks).
        #[arg(long, default_value_t = 16)]
        resolution: usize,
        /// Passes over the training images.
        #[arg(long, default_value_t = 15)]
        epochs: usize,
        /// Seed of the initialisation, shuffling and flips.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The weights file to write.
        #[arg(long, default_value = "benches/cifar10-16-features.hfn")]
        out: PathBuf,
        /// Where to run.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
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

/// How the command line spells `choice`, so results name it as a user would type it.
fn choice_name(choice: impl ValueEnum + std::fmt::Debug) -> String {
    match choice.to_possible_value() {
        Some(value) => value.get_name().to_owned(),
        None => format!("{choice:?}"),
    }
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
            devices,
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
            let (devices, why) = if devices.is_empty() {
                select(backend).map(|(d, why)| (vec![d], why))?
            } else {
                crate::backend::select_devices(backend, &devices)?
            };
            eprintln!("device: {why}");
            let report = train(
                &TrainOptions {
                    config: run_config,
                    data_dir,
                    out: out.clone(),
                    resume,
                    allow_config_change,
                    devices: devices.clone(),
                    images: None,
                },
                &devices[0],
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
            what:
                BenchCommand::FeatureNet {
                    data_dir,
                    resolution,
                    epochs,
                    seed,
                    out,
                    backend,
                },
        } => {
            if ![32, 16, 8].contains(&resolution) {
                bail!("--resolution must be 32, 16 or 8");
            }
            let (device, why) = select(backend)?;
            eprintln!("device: {why}");
            let cache = crate::train::cache_dir();
            let open = |split| {
                crate::dataset::cifar10_images(data_dir.as_deref(), split, resolution, &cache)
            };
            let (train_images, test_images) = (open(Split::Train)?, open(Split::Test)?);
            eprintln!("training on {}", train_images.describe());
            let settings = crate::feature_net::FeatureNetTraining {
                epochs,
                seed,
                ..Default::default()
            };
            let start = std::time::Instant::now();
            let file = crate::feature_net::train_feature_net(
                train_images.as_ref(),
                test_images.as_ref(),
                &settings,
                &device,
                |epoch, loss| {
                    eprintln!(
                        "epoch {epoch}/{epochs}: loss {loss:.4} ({:.0} s)",
                        start.elapsed().as_secs_f64()
                    )
                },
            )?;
            file.save(&out)?;
            println!(
                "wrote {}: test accuracy {:.2}% on {} CIFAR-10 test images, trained in {:.0} s",
                out.display(),
                100.0 * file.info.test_accuracy,
                file.info.test_images,
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Convergence {
                    config,
                    data_dir,
                    out,
                    runs,
                    no_inception,
                    inception_weights,
                    backend,
                },
        } => {
            let bench = crate::convergence::BenchConfig::load(&config)?;
            let out = out.unwrap_or_else(|| {
                PathBuf::from("runs").join(
                    config
                        .file_stem()
                        .map_or_else(|| "bench".into(), |s| s.to_string_lossy().into_owned()),
                )
            });
            let (device, why) = select(backend)?;
            eprintln!("device: {why}");
            let report = crate::convergence::run(
                &bench,
                &crate::convergence::BenchOptions {
                    data_dir,
                    out: out.clone(),
                    runs,
                    inception: !no_inception,
                    inception_weights,
                },
                &device,
            )?;
            println!("{}", report.table());
            println!("results, table and plot in {}", out.display());
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Throughput {
                    preset,
                    config,
                    batch,
                    steps,
                    sample_steps,
                    backend,
                    python,
                    no_torch,
                    phases,
                    out,
                },
        } => {
            if steps == 0 || sample_steps == 0 || batch == 0 {
                bail!("--batch, --steps and --sample-steps must be positive");
            }
            let mut run_config = match (&preset, &config) {
                (_, Some(path)) => RunConfig::load(path)?,
                (Some(p), None) => RunConfig::parse(&format!("[model]\npreset = {p:?}\n"))?,
                (None, None) => bail!("give --preset or --config"),
            };
            run_config.train.batch_size = batch;
            let name = run_config.model.preset.clone();
            let (device, why) = select(backend)?;
            eprintln!("device: {why}");
            let ours = crate::bench::throughput(&run_config, steps, sample_steps, &device)?;
            println!(
                "hayate: {name} ({} parameters), batch {batch}, on {why}",
                ours.params
            );
            println!(
                "  training: {:.2} img/s ({:.3} s/step, {:.2} GFLOP/s); sampling: {:.2} image-steps/s; peak RSS {}",
                ours.train_images_per_second,
                batch as f64 / ours.train_images_per_second,
                ours.train_flops / 1e9,
                ours.sample_image_steps_per_second,
                ours.peak_rss_bytes
                    .map_or("not reported".into(), |b| format!(
                        "{:.2} GB",
                        b as f64 / 1e9
                    ))
            );
            let mut result = serde_json::json!({ "hayate": ours, "device": why });
            if phases {
                let times = crate::bench::phases(&run_config, steps as usize, &device)?;
                let total: f64 = times.iter().map(|(_, t)| t).sum();
                println!("  phases of a step, each timed alone ({total:.3} s in all):");
                for (name, t) in &times {
                    println!("    {name:<40} {t:>8.4} s  {:>5.1}%", 100.0 * t / total);
                }
                result["phases"] = serde_json::json!(times);
                let (forward, both) = crate::bench::conv_kernel(batch, steps as usize, &device);
                println!(
                    "  one 3x3 convolution 128->128 at 32x32, batch {batch}: forward {forward:.4} s, forward+backward {both:.4} s"
                );
                result["conv3x3"] =
                    serde_json::json!({ "forward": forward, "forward_backward": both });
            }
            if !no_torch {
                let python = python
                    .or_else(|| std::env::var("HAYATE_PYTHON").ok())
                    .unwrap_or_else(|| "python3".into());
                let script = [
                    "benches/torch_throughput.py",
                    concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/../../benches/torch_throughput.py"
                    ),
                ]
                .map(PathBuf::from)
                .into_iter()
                .find(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("benches/torch_throughput.py"));
                // PyTorch runs where hayate ran: the CPU, or the GPU through CUDA.
                let on_gpu =
                    backend != BackendChoice::Cpu && crate::backend::hardware_gpu().is_some();
                let torch_device = if on_gpu { "cuda" } else { "cpu" };
                match crate::bench::torch_throughput(
                    &python,
                    &script,
                    &name,
                    batch,
                    steps,
                    sample_steps,
                    torch_device,
                ) {
                    Ok(torch) => {
                        let rate = |key: &str| torch[key].as_f64().unwrap_or(f64::NAN);
                        let (train, sample) = (
                            rate("train_images_per_second"),
                            rate("sample_image_steps_per_second"),
                        );
                        println!(
                            "PyTorch {} on {} ({} parameters): training {train:.2} img/s; sampling {sample:.2} image-steps/s",
                            torch["torch"], torch["device"], torch["params"]
                        );
                        println!(
                            "hayate / PyTorch: training {:.3}x, sampling {:.3}x",
                            ours.train_images_per_second / train,
                            ours.sample_image_steps_per_second / sample
                        );
                        if let (Some(ours), Some(theirs)) =
                            (result.get("conv3x3"), torch.get("conv3x3"))
                        {
                            let t =
                                |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                            println!(
                                "3x3 convolution, PyTorch / hayate time: forward {:.3}x, forward+backward {:.3}x",
                                t(theirs, "forward") / t(ours, "forward"),
                                t(theirs, "forward_backward") / t(ours, "forward_backward")
                            );
                        }
                        result["torch"] = torch;
                    }
                    Err(why) => println!("PyTorch comparison skipped: {why}"),
                }
            }
            if let Some(out) = out {
                crate::checkpoint::write_atomic(&out, format!("{result:#}\n").as_bytes())?;
            }
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
            let loaded = checkpoint
                .as_ref()
                .map(|c| Checkpoint::load_newest_valid(c))
                .transpose()?;
            // A model's samples are compared with the images at its own resolution (CIFAR-10
            // averaged down for a 16x16 model), as the FID logged in training is.
            let resolution = match &loaded {
                Some((_, l)) => l.meta.config.model.resolve()?.resolution,
                None => 32, // CIFAR-10's own size
            };
            let stats_of = |set: ImageSet| -> Result<_> {
                let data = crate::dataset::cifar10_images(
                    data_dir.as_deref(),
                    set.split(),
                    resolution,
                    &cache,
                )?;
                crate::fid::dataset_statistics(&net, data.as_ref(), n, batch, &cache)
            };
            let (reference_name, reference_stats) = match &ref_prepared {
                Some(path) => {
                    let data = hayate_data::PreparedImages::open(path)?;
                    let stats = crate::fid::dataset_statistics(&net, &data, n, batch, &cache)?;
                    (path.display().to_string(), stats)
                }
                None => (choice_name(reference), stats_of(reference)?),
            };
            let (subject, stats, drawn) = match (loaded, images) {
                (Some((path, loaded)), None) => {
                    let config = &loaded.meta.config;
                    let schedule = config.diffusion.schedule()?;
                    let model = load_ema(&loaded, &device)?;
                    let chosen = sampler.build(steps, &schedule, config)?;
                    eprintln!("sampling {n} images from {}", path.display());
                    let batches = crate::fid::sample_batches(
                        &model,
                        &device,
                        &schedule,
                        config.diffusion.prediction,
                        chosen.as_ref(),
                        n,
                        batch,
                        seed,
                        cfg_scale.unwrap_or(config.sampling.cfg_scale),
                    );
                    let stats = crate::fid::statistics_of(&net, batches.map(Ok), 1000)?;
                    let taken = chosen.timesteps(&schedule).len();
                    (
                        path.display().to_string(),
                        stats,
                        Some((loaded.step(), taken)),
                    )
                }
                (None, Some(set)) => (choice_name(set), stats_of(set)?, None),
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
            // Samples: which step's model drew them, and how.
            if let Some((step, taken)) = drawn {
                result["step"] = step.into();
                result["sampler"] = choice_name(sampler).into();
                result["steps"] = taken.into();
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
            let setup = crate::consistency::Setup {
                a: path_a,
                b: path_b,
                sampler: choice_name(sampler),
                steps: chosen.timesteps(&schedule).len(),
                seed,
            };
            for path in crate::consistency::write(&setup, &report, &ta, &tb, &out)? {
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
            if config.extension().is_some_and(|e| e == "toml")
                && !crate::convergence::is_benchmark_file(&config)
            {
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
