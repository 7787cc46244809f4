//! `hayate sample`.

use super::flags::{DeviceArgs, SamplerArgs};
use anyhow::{Result, bail};
use hayate_eval::sample::{Guidance, TrainedModel, generate_batched, save_grid};
use hayate_train::progress::Countdown;
use std::path::PathBuf;

/// Write a grid of samples from a checkpoint's EMA weights.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A checkpoint file, or a run folder (its newest checkpoint is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Images per forward pass (memory grows with it, not with --n); each batch draws its own
    /// noise from the seed.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// How images are drawn.
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Seed of the starting noise and the per-step noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class-conditional models: draw every image of this class (default: the classes in
    /// turn).
    #[arg(long)]
    pub class: Option<u32>,
    /// Class-conditional models: the classifier-free guidance scale (1: the conditional
    /// model alone, 0: the unconditional one; default: the run's sampling.cfg_scale).
    #[arg(long)]
    pub cfg_scale: Option<f64>,
    /// The PNG to write.
    #[arg(long, default_value = "grid.png")]
    pub out: PathBuf,
    /// Where to run.
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl Args {
    /// Draws the images and writes the grid.
    pub fn run(self) -> Result<()> {
        let n = self.n;
        if n == 0 || self.batch == 0 {
            bail!("--n and --batch must be positive");
        }
        let (device, _) = self.device.select()?;
        let trained = TrainedModel::open(&self.checkpoint, &device)?;
        eprintln!(
            "checkpoint {} (step {})",
            trained.path.display(),
            trained.step
        );
        let config = &trained.config;
        let sampler = self
            .sampler
            .build(config.sampling.sampler(), &trained.schedule, config)?;
        let scale = self.cfg_scale.unwrap_or(config.sampling.cfg_scale);
        let classes = trained.model.num_classes();
        let guidance = match self.class {
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
            None => Guidance::for_grid(&trained.model, n, scale),
        };
        let mut progress = Countdown::new("images", n);
        let images = generate_batched(
            trained.sampling(),
            sampler.as_ref(),
            n,
            self.batch,
            self.seed,
            guidance.as_ref(),
            &mut |done| {
                if let Some(line) = progress.update(done) {
                    eprintln!("sampled {line}");
                }
            },
        );
        save_grid(&images, trained.model.resolution(), &self.out)?;
        println!("wrote {n} samples to {}", self.out.display());
        Ok(())
    }
}
