//! `hayate eval`.

use super::flags::{DataArgs, DeviceArgs, SamplerArgs, SamplerChoice, choice_name};
use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use hayate_data::Split;
use hayate_eval::fid::{
    Statistics, dataset_statistics, frechet_distance, sample_batches, statistics_of,
};
use hayate_eval::inception::FidInception;
use hayate_eval::sample::TrainedModel;
use std::path::{Path, PathBuf};

/// `hayate eval` evaluations.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// FID of a checkpoint's samples (or of a CIFAR-10 split) against a reference set.
    Fid(FidArgs),
    /// FID against network evaluations: one checkpoint sampled by several samplers at several
    /// step counts, the reference statistics computed once; writes nfe.json, nfe.md (a table)
    /// and fid-vs-nfe.png into --out.
    Nfe(NfeArgs),
}

impl Command {
    /// Runs the evaluation.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Fid(args) => args.run(),
            Self::Nfe(args) => args.run(),
        }
    }
}

/// `hayate eval nfe`.
#[derive(Debug, clap::Args)]
pub struct NfeArgs {
    /// A checkpoint file or run folder whose EMA model draws the images.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Images on each side, the same for every point (FID depends on n).
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// The samplers to compare (DDIM with eta 0; DDPM, which takes all T steps, is not one).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ddim,dpmpp-2m,euler-karras,heun-karras"
    )]
    pub samplers: Vec<SamplerChoice>,
    /// Network evaluations per image to try; Heun takes the odd count 2 steps - 1 at or below
    /// each (the table gives what each sampler really took).
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,50")]
    pub evaluations: Vec<usize>,
    /// The reference, the Inception weights, the noise seed (the same starting noise for every
    /// point), the data and the device.
    #[command(flatten)]
    pub setup: FidSetup,
    /// The folder to write into (created if needed).
    #[arg(long)]
    pub out: PathBuf,
}

impl NfeArgs {
    /// Computes every point, printing each as it lands, then writes the table, the JSON and the
    /// chart.
    pub fn run(self) -> Result<()> {
        if self.samplers.contains(&SamplerChoice::Ddpm) {
            bail!("--samplers: ddpm takes all T steps and has no evaluation count to vary");
        }
        if self.samplers.is_empty() || self.evaluations.is_empty() {
            bail!("give at least one sampler and one evaluation count");
        }
        if let Some(&bad) = self.evaluations.iter().find(|&&e| e == 0) {
            bail!("--evaluations must be positive, got {bad}");
        }
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("cannot create {}", self.out.display()))?;
        let mut fid = FidArgs {
            checkpoint: Some(self.checkpoint.clone()),
            images: None,
            n: self.n,
            ref_prepared: None,
            cfg_scale: None,
            sampler: SamplerArgs {
                sampler: None,
                steps: None,
                eta: Some(0.0),
            },
            setup: self.setup.clone(),
            out: None,
        };
        check_sizes(fid.n, fid.setup.batch)?;
        let inception = fid.setup.inception()?;
        let trained = TrainedModel::open(&self.checkpoint, &inception.device)?;
        let reference =
            fid.reference_side(&inception.net, trained.model.resolution(), &inception.cache)?;
        let mut points = Vec::new();
        for &choice in &self.samplers {
            let name = choice_name(choice);
            for &target in &self.evaluations {
                let steps = if choice == SamplerChoice::HeunKarras {
                    target.div_ceil(2).max(1)
                } else {
                    target
                };
                fid.sampler.sampler = Some(choice);
                fid.sampler.steps = Some(steps);
                let started = std::time::Instant::now();
                let (side, drawn) = fid.sample_side(&inception.net, &trained)?;
                let point = NfePoint {
                    sampler: name.clone(),
                    steps: drawn.steps,
                    evaluations: drawn.evaluations,
                    fid: frechet_distance(&side.stats, &reference.stats),
                    seconds: started.elapsed().as_secs_f64(),
                };
                println!(
                    "{name} {steps} steps ({} evaluations): FID {:.4} ({:.0} s)",
                    point.evaluations, point.fid, point.seconds
                );
                points.push(point);
            }
        }
        let result = serde_json::json!({
            "checkpoint": trained.path.display().to_string(),
            "step": trained.step,
            "n": self.n,
            "reference": reference.name,
            "seed": self.setup.seed,
            "inception_weights": inception.weights.display().to_string(),
            "results": points.iter().map(NfePoint::json).collect::<Vec<_>>(),
        });
        let heading = format!(
            "FID against network evaluations: {}, step {}, n = {} against {}, seed {}",
            trained.path.display(),
            trained.step,
            self.n,
            reference.name,
            self.setup.seed
        );
        let write = |file: &str, text: String| {
            hayate_train::checkpoint::write_atomic(&self.out.join(file), text.as_bytes())
        };
        write("nfe.json", format!("{result:#}\n"))?;
        write("nfe.md", nfe_table(&heading, &points))?;
        nfe_chart(self.n, &points).save(&self.out.join("fid-vs-nfe.png"))?;
        println!(
            "wrote nfe.json, nfe.md and fid-vs-nfe.png into {}",
            self.out.display()
        );
        Ok(())
    }
}

/// One point of `eval nfe`.
#[derive(Debug)]
struct NfePoint {
    sampler: String,
    steps: usize,
    evaluations: usize,
    fid: f64,
    seconds: f64,
}

impl NfePoint {
    /// The point as a row of `nfe.json`.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sampler": self.sampler,
            "steps": self.steps,
            "evaluations": self.evaluations,
            "fid": self.fid,
            "seconds": self.seconds,
        })
    }
}

/// A Markdown table under `heading`: a row per sampler and evaluation count, FID and the time
/// it took.
fn nfe_table(heading: &str, points: &[NfePoint]) -> String {
    let mut text = format!(
        "{heading}\n\n| sampler | steps | network evaluations | FID | seconds |\n\
         | --- | --- | --- | --- | --- |\n"
    );
    for p in points {
        text += &format!(
            "| {} | {} | {} | {:.2} | {:.0} |\n",
            p.sampler, p.steps, p.evaluations, p.fid, p.seconds
        );
    }
    text
}

/// FID against evaluations, a curve per sampler.
fn nfe_chart(n: usize, points: &[NfePoint]) -> hayate_eval::plot::Chart {
    let mut series: Vec<hayate_eval::plot::Series> = Vec::new();
    for p in points {
        let point = (p.evaluations as f64, p.fid);
        match series.iter_mut().find(|s| s.name == p.sampler) {
            Some(s) => s.points.push(point),
            None => series.push(hayate_eval::plot::Series {
                name: p.sampler.clone(),
                points: vec![point],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    hayate_eval::plot::Chart {
        title: format!("FID (n = {n}) against network evaluations"),
        x_label: "network evaluations per image".into(),
        y_label: "FID".into(),
        series,
        log_y: false,
    }
}

/// Refuses an n or batch FID cannot be computed with.
fn check_sizes(n: usize, batch: usize) -> Result<()> {
    if n < 2 || batch == 0 {
        bail!("--n must be at least 2 and --batch positive");
    }
    Ok(())
}

/// The Inception network an evaluation runs, where it runs, and the cache it keeps statistics in.
struct Inception {
    cache: PathBuf,
    weights: PathBuf,
    device: burn::prelude::Device,
    net: FidInception,
}

impl FidSetup {
    /// Finds the weights (downloading them into the cache if need be), picks the device and
    /// loads the network there.
    fn inception(&self) -> Result<Inception> {
        let cache = hayate_train::train::cache_dir();
        let weights =
            hayate_eval::fid::inception_weights(self.inception_weights.as_deref(), &cache)?;
        let (device, _) = self.device.select()?;
        eprintln!("Inception weights {}", weights.display());
        let net = FidInception::load(&weights, &device)?;
        Ok(Inception {
            cache,
            weights,
            device,
            net,
        })
    }
}

/// What every FID here is computed with, shared by `eval fid` and `eval nfe`.
#[derive(Debug, Clone, clap::Args)]
pub struct FidSetup {
    /// The reference set.
    #[arg(long = "ref", value_enum, default_value_t = ImageSet::Cifar10Train)]
    pub reference: ImageSet,
    /// Seed of the sampling noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per batch through the sampler and Inception.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// The Inception weights (.pth from pytorch-fid or .safetensors); else
    /// $HAYATE_INCEPTION_WEIGHTS, else downloaded into the cache.
    #[arg(long)]
    pub inception_weights: Option<PathBuf>,
    /// Where the images come from.
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to run.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `hayate eval fid`.
#[derive(Debug, clap::Args)]
pub struct FidArgs {
    /// A checkpoint file or run folder whose EMA model draws the images.
    #[arg(long, conflicts_with = "images")]
    pub checkpoint: Option<PathBuf>,
    /// Instead of samples, compare this image set with the reference.
    #[arg(long, value_enum)]
    pub images: Option<ImageSet>,
    /// Images on each side (FID depends on n: 50,000 is the standard).
    #[arg(long, default_value_t = 50_000)]
    pub n: usize,
    /// A prepared file (`hayate prepare`) as the reference set instead of --ref.
    #[arg(long)]
    pub ref_prepared: Option<PathBuf>,
    /// Class-conditional models: the classifier-free guidance scale (default: the run's
    /// sampling.cfg_scale).
    #[arg(long)]
    pub cfg_scale: Option<f64>,
    /// How images are drawn.
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// The reference, the Inception weights, the noise seed, the data and the device.
    #[command(flatten)]
    pub setup: FidSetup,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
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

/// What is compared with the reference: a model's samples, or an image set.
enum Compared<'a> {
    Samples(&'a Path),
    Images(ImageSet),
}

/// One side of the comparison: its name as reported, and its statistics.
struct Side {
    name: String,
    stats: Statistics,
}

impl FidArgs {
    /// Computes the FID, prints it, and writes the JSON if asked.
    pub fn run(self) -> Result<()> {
        check_sizes(self.n, self.setup.batch)?;
        let compared = match (&self.checkpoint, self.images) {
            (Some(path), _) => Compared::Samples(path),
            (None, Some(set)) => Compared::Images(set),
            (None, None) => bail!("give --checkpoint or --images"),
        };
        let Inception {
            cache,
            weights,
            device,
            net,
        } = self.setup.inception()?;
        let (subject, reference, drawn) = match compared {
            Compared::Samples(path) => {
                let trained = TrainedModel::open(path, &device)?;
                // A model's samples are compared with the images at its own resolution
                // (CIFAR-10 averaged down for a 16x16 model), as the FID logged in training is.
                let resolution = trained.model.resolution();
                let reference = self.reference_side(&net, resolution, &cache)?;
                let (subject, drawn) = self.sample_side(&net, &trained)?;
                (subject, reference, Some(drawn))
            }
            Compared::Images(set) => {
                // CIFAR-10's own size.
                let reference = self.reference_side(&net, 32, &cache)?;
                (self.cifar10_side(set, &net, 32, &cache)?, reference, None)
            }
        };
        let fid = frechet_distance(&subject.stats, &reference.stats);
        println!(
            "FID {fid:.4} ({} against {}, n = {})",
            subject.name, reference.name, self.n
        );
        let mut result = serde_json::json!({
            "fid": fid,
            "n": self.n,
            "subject": subject.name,
            "reference": reference.name,
            "inception_weights": weights.display().to_string(),
        });
        // Samples: which step's model drew them, and how.
        if let Some(Drawn {
            step,
            sampler,
            steps,
            evaluations,
        }) = drawn
        {
            result["step"] = step.into();
            result["sampler"] = sampler.into();
            result["steps"] = steps.into();
            result["evaluations"] = evaluations.into();
            result["seed"] = self.setup.seed.into();
        }
        if let Some(out) = &self.out {
            hayate_train::checkpoint::write_atomic(out, format!("{result:#}\n").as_bytes())?;
        }
        Ok(())
    }

    /// The reference side: a prepared file, or a CIFAR-10 split at `resolution`.
    fn reference_side(&self, net: &FidInception, resolution: usize, cache: &Path) -> Result<Side> {
        match &self.ref_prepared {
            Some(path) => {
                let data = hayate_data::PreparedImages::open(path)?;
                Ok(Side {
                    name: path.display().to_string(),
                    stats: dataset_statistics(net, &data, self.n, self.setup.batch, cache)?,
                })
            }
            None => self.cifar10_side(self.setup.reference, net, resolution, cache),
        }
    }

    /// The first n images of a CIFAR-10 split at `resolution`.
    fn cifar10_side(
        &self,
        set: ImageSet,
        net: &FidInception,
        resolution: usize,
        cache: &Path,
    ) -> Result<Side> {
        let data = hayate_train::dataset::cifar10_images(
            self.setup.data.data_dir.as_deref(),
            set.split(),
            resolution,
            cache,
        )?;
        Ok(Side {
            name: choice_name(set),
            stats: dataset_statistics(net, data.as_ref(), self.n, self.setup.batch, cache)?,
        })
    }

    /// The model's samples, and how they were drawn.
    fn sample_side(&self, net: &FidInception, trained: &TrainedModel) -> Result<(Side, Drawn)> {
        let config = &trained.config;
        let sampler = self
            .sampler
            .build(config.eval.sampler(), &trained.schedule, config)?;
        eprintln!("sampling {} images from {}", self.n, trained.path.display());
        let batches = sample_batches(
            trained.sampling(),
            sampler.as_ref(),
            self.n,
            self.setup.batch,
            self.setup.seed,
            self.cfg_scale.unwrap_or(config.sampling.cfg_scale),
        );
        let stats = statistics_of(net, batches.map(Ok), Some(self.n))?;
        let evaluations = sampler.timesteps(&trained.schedule).len();
        let side = Side {
            name: trained.path.display().to_string(),
            stats,
        };
        let drawn = Drawn {
            step: trained.step,
            sampler: self.sampler.name(config.eval.sampler()),
            steps: self.sampler.steps(config.eval.sampler(), &trained.schedule),
            evaluations,
        };
        Ok((side, drawn))
    }
}

/// How the samples an FID was taken of were drawn.
struct Drawn {
    /// The training step of the checkpoint.
    step: u64,
    /// The sampler, as the command line spells it.
    sampler: String,
    /// Its steps setting (DDPM: all T).
    steps: usize,
    /// Network evaluations per image (Heun: 2 steps - 1; the others: steps).
    evaluations: usize,
}
