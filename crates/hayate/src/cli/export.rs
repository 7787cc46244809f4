//! `hayate export`.

use super::flags::DeviceArgs;
use anyhow::Result;
use std::path::PathBuf;

/// Write a checkpoint's EMA network as a diffusers UNet2DModel folder.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A checkpoint file, or a run folder (its newest checkpoint is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The folder to write: config.json, diffusion_pytorch_model.safetensors (the EMA
    /// weights) and scheduler_config.json (the noise schedule, for DDPMPipeline).
    #[arg(long)]
    pub out: PathBuf,
    /// Where the weights are read (the CPU is enough).
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl Args {
    /// Writes the folder and says what it holds.
    pub fn run(self) -> Result<()> {
        let (device, _) = self.device.select()?;
        let done = hayate_eval::diffusers::export(&self.checkpoint, &self.out, &device)?;
        println!(
            "exported {} (step {}): {} tensors to {}; in Python: \
             UNet2DModel.from_pretrained({:?}), DDPMScheduler.from_pretrained({:?})",
            done.checkpoint.display(),
            done.step,
            done.tensors,
            self.out.display(),
            self.out.display().to_string(),
            self.out.display().to_string(),
        );
        Ok(())
    }
}
