//! `hayate eval`.

use super::flags::{DataArgs, DeviceArgs, SamplerArgs, choice_name};
use anyhow::{Result, bail};
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
}

impl Command {
    /// Runs the evaluation.
    pub fn run(self) -> Result<()> {
        let Self::Fid(args) = self;
        args.run()
    }
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
    /// The reference set.
    #[arg(long = "ref", value_enum, default_value_t = ImageSet::Cifar10Train)]
    pub reference: ImageSet,
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
        if self.n < 2 || self.batch == 0 {
            bail!("--n must be at least 2 and --batch positive");
        }
        let compared = match (&self.checkpoint, self.images) {
            (Some(path), _) => Compared::Samples(path),
            (None, Some(set)) => Compared::Images(set),
            (None, None) => bail!("give --checkpoint or --images"),
        };
        let cache = hayate_train::train::cache_dir();
        let weights =
            hayate_eval::fid::inception_weights(self.inception_weights.as_deref(), &cache)?;
        let (device, _) = self.device.select()?;
        eprintln!("Inception weights {}", weights.display());
        let net = FidInception::load(&weights, &device)?;
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
        }) = drawn
        {
            result["step"] = step.into();
            result["sampler"] = sampler.into();
            result["steps"] = steps.into();
            result["seed"] = self.seed.into();
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
                    stats: dataset_statistics(net, &data, self.n, self.batch, cache)?,
                })
            }
            None => self.cifar10_side(self.reference, net, resolution, cache),
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
            self.data.data_dir.as_deref(),
            set.split(),
            resolution,
            cache,
        )?;
        Ok(Side {
            name: choice_name(set),
            stats: dataset_statistics(net, data.as_ref(), self.n, self.batch, cache)?,
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
            self.batch,
            self.seed,
            self.cfg_scale.unwrap_or(config.sampling.cfg_scale),
        );
        let stats = statistics_of(net, batches.map(Ok), Some(self.n))?;
        let taken = sampler.timesteps(&trained.schedule).len();
        let side = Side {
            name: trained.path.display().to_string(),
            stats,
        };
        let drawn = Drawn {
            step: trained.step,
            sampler: self.sampler.name(config.eval.sampler()),
            steps: taken,
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
    /// The steps it took.
    steps: usize,
}
