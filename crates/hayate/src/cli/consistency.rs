//! `hayate consistency`.

use super::flags::{DeviceArgs, SamplerArgs};
use anyhow::{Result, bail};
use hayate_eval::consistency::{Setup, measure, write};
use hayate_eval::inception::FidInception;
use hayate_eval::sample::TrainedModel;
use std::path::PathBuf;

/// Two models, the same starting and per-step noise: how alike are their samples, and their
/// predictions of x_0 along the way? (The consistency phenomenon.)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The first model: a checkpoint file or run folder.
    #[arg(long)]
    pub a: PathBuf,
    /// The second model.
    #[arg(long)]
    pub b: PathBuf,
    /// Image pairs.
    #[arg(long, default_value_t = 256)]
    pub n: usize,
    /// Pairs per forward pass (memory grows with it, not with --n); each batch draws its own
    /// noise from the seed.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// How images are drawn.
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Seed of the shared noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the reproducibility score (Inception features of the final samples).
    #[arg(long)]
    pub no_inception: bool,
    /// The Inception weights for the reproducibility score (.pth from pytorch-fid or
    /// .safetensors); else $HAYATE_INCEPTION_WEIGHTS, else downloaded into the cache.
    #[arg(long, conflicts_with = "no_inception")]
    pub inception_weights: Option<PathBuf>,
    /// The folder for consistency.json, pairs.png and agreement.png.
    #[arg(long, default_value = "consistency")]
    pub out: PathBuf,
    /// Where to run.
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl Args {
    /// Measures and writes the report.
    pub fn run(self) -> Result<()> {
        if self.n < 2 || self.batch == 0 {
            bail!("--n must be at least 2 and --batch positive");
        }
        let (device, _) = self.device.select()?;
        let a = TrainedModel::open(&self.a, &device)?;
        let b = TrainedModel::open(&self.b, &device)?;
        eprintln!("A = {}, B = {}", a.path.display(), b.path.display());
        if b.schedule != a.schedule {
            bail!(
                "{} and {} use different noise schedules: the same noise would mean different \
                 things to them",
                a.path.display(),
                b.path.display()
            );
        }
        let sampler = self
            .sampler
            .build(a.config.sampling.sampler(), &a.schedule, &a.config)?;
        let inception = if self.no_inception {
            None
        } else {
            let weights = hayate_eval::fid::inception_weights(
                self.inception_weights.as_deref(),
                &hayate_train::train::cache_dir(),
            )?;
            eprintln!("Inception weights {}", weights.display());
            Some(FidInception::load(&weights, &device)?)
        };
        let features = inception.as_ref().map(|net| {
            (
                net as &dyn hayate_eval::fid::FeatureExtractor,
                "Inception pool3 (FID's network), mean-centred, cosine",
            )
        });
        let measured = measure(
            &a,
            &b,
            sampler.as_ref(),
            self.n,
            self.batch,
            self.seed,
            features,
        )?;
        let setup = Setup {
            a: a.path.clone(),
            b: b.path.clone(),
            sampler: self.sampler.name(a.config.sampling.sampler()),
            steps: sampler.timesteps(&a.schedule).len(),
            seed: self.seed,
        };
        for path in write(&setup, &measured, &self.out)? {
            println!("wrote {}", path.display());
        }
        let report = &measured.report;
        println!(
            "paired: agreement {:.4}, PSNR {:.2} dB; shuffled (chance): agreement {:.4}, PSNR \
             {:.2} dB",
            report.paired.agreement,
            report.paired.psnr,
            report.shuffled.agreement,
            report.shuffled.psnr
        );
        if let Some(r) = &report.reproducibility {
            println!(
                "reproducibility score {:.4} (chance {:.4}): similarity above {:.4}, the {} \
                 quantile of {} mismatched pairs; mean similarity paired {:.4}, mismatched {:.4}",
                r.score,
                r.chance,
                r.threshold,
                r.quantile,
                r.mismatched_pairs,
                r.mean_paired,
                r.mean_mismatched
            );
        }
        Ok(())
    }
}
