//! `hayate import`.

use super::flags::DeviceArgs;
use anyhow::Result;
use hayate_train::checkpoint::write_atomic;
use hayate_train::config::RunConfig;
use std::path::PathBuf;

/// Formats hayate reads models from.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// A diffusers UNet2DModel folder (config.json and diffusion_pytorch_model.safetensors or
    /// .bin, with scheduler_config.json beside them), or a pipeline folder with unet/ and
    /// scheduler/ (such as the DDPM authors' CIFAR-10 model in diffusers form).
    Diffusers(DiffusersArgs),
}

/// `hayate import diffusers`.
#[derive(Debug, clap::Args)]
pub struct DiffusersArgs {
    /// The diffusers folder.
    pub dir: PathBuf,
    /// The hayate checkpoint to write (sample, eval fid and train --init take it); its run
    /// config is written beside it with the extension .toml, for fine-tuning.
    #[arg(long)]
    pub out: PathBuf,
    /// An experiment config whose training, sampling and evaluation settings the checkpoint
    /// carries (its [model] and schedule come from the folder); default: hayate's defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the weights are loaded (the CPU is enough).
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl Command {
    /// Runs the import.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Diffusers(args) => {
                let base = args.config.as_deref().map(RunConfig::load).transpose()?;
                let (device, _) = args.device.select()?;
                let done = hayate_eval::diffusers::import(&args.dir, &args.out, base, &device)?;
                let toml = args.out.with_extension("toml");
                write_atomic(&toml, done.config.to_toml().as_bytes())?;
                let m = &done.model;
                println!(
                    "imported {} tensors ({}x{} network, {} channels x {:?}; schedule from {}) \
                     into {}",
                    done.tensors,
                    m.resolution,
                    m.resolution,
                    m.base_channels,
                    m.channel_mult,
                    done.scheduler
                        .as_ref()
                        .map_or("DDPM's defaults".to_string(), |p| p.display().to_string()),
                    args.out.display()
                );
                println!(
                    "fine-tune with: hayate train --config {} --init {}",
                    toml.display(),
                    args.out.display()
                );
                Ok(())
            }
        }
    }
}
