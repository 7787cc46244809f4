//! `hayate train`.

use super::flags::{DataArgs, DeviceArgs, default_run_dir};
use anyhow::Result;
use hayate_train::backend::select_devices;
use hayate_train::config::RunConfig;
use hayate_train::train::{TrainOptions, train};
use std::path::PathBuf;

/// Train a model from a TOML config.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The experiment config (for example experiments/cifar10-baseline.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Where to run.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Where the images come from.
    #[command(flatten)]
    pub data: DataArgs,
    /// The run folder (default runs/<config name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Total training steps (overrides train.steps).
    #[arg(long)]
    pub steps: Option<u64>,
    /// The seed of every random stream (overrides train.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from the newest checkpoint in the run folder.
    #[arg(long)]
    pub resume: bool,
    /// With --resume: accept a config that changes the run (lr, schedule, model...); the
    /// changes are listed and logged. Without it such a resume is refused.
    #[arg(long, requires = "resume")]
    pub allow_config_change: bool,
    /// Start from the EMA weights of this checkpoint (a file or a run folder; for example one
    /// `hayate import diffusers` wrote) instead of random ones, to fine-tune it. Its network
    /// must have the config's shape.
    #[arg(long, value_name = "CHECKPOINT", conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Data parallelism over these GPUs (WGPU discrete adapters by index, e.g. 0,1,2,3):
    /// each step's batch (train.batch_size, the global batch) is split across them and the
    /// gradients summed on the first, so the learning rate and every random draw stay as
    /// configured.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<usize>,
}

impl Args {
    /// Trains, or resumes, and prints where the run is.
    pub fn run(self) -> Result<()> {
        let mut config = RunConfig::load(&self.config)?;
        if let Some(steps) = self.steps {
            config.train.steps = steps;
        }
        if let Some(seed) = self.seed {
            config.train.seed = seed;
        }
        config.validate()?;
        let out = self.out.unwrap_or_else(|| default_run_dir(&self.config));
        let devices = if self.devices.is_empty() {
            vec![self.device.select()?.0]
        } else {
            let (devices, why) = select_devices(self.device.backend, &self.devices)?;
            eprintln!("device: {why}");
            devices
        };
        let report = train(
            &TrainOptions {
                config,
                data_dir: self.data.data_dir,
                out: out.clone(),
                resume: self.resume,
                init: self.init,
                allow_config_change: self.allow_config_change,
                devices: devices.clone(),
                images: None,
            },
            &devices[0],
            hayate_eval::interval::standard(),
        )?;
        println!(
            "trained to step {} ({:.1} img/s); run folder {}",
            report.step,
            report.images_per_second,
            out.display()
        );
        Ok(())
    }
}
