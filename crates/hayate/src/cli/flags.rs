//! The flag groups several subcommands share, declared once and flattened into each.

use anyhow::{Result, bail};
use burn::prelude::*;
use clap::{Args, ValueEnum};
use hayate_schedule::ddpm::Ddpm;
use hayate_schedule::{NoiseSchedule, Sampler, SamplerSpec, Solver};
use hayate_train::backend::{BackendChoice, select};
use hayate_train::config::RunConfig;
use std::path::PathBuf;

/// Where to run.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Where to run: auto picks CUDA on an NVIDIA driver, else Vulkan, else WGPU on a hardware
    /// GPU, else the CPU backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

impl DeviceArgs {
    /// The device, after printing which it is and why; the line is returned for reports.
    pub fn select(&self) -> Result<(Device, String)> {
        let (device, why) = select(self.backend)?;
        eprintln!("device: {why}");
        Ok((device, why))
    }
}

/// Where the images come from.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// The images (overrides the config's data.dir). CIFAR-10: a local folder
    /// (cifar-10-batches-bin), else $HAYATE_CIFAR10_DIR or the cache, downloading there if
    /// needed. Image folder: the folder (prepared into the cache on first use) or a file
    /// written by `hayate prepare`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// How images are drawn from a model.
#[derive(Debug, Clone, Args)]
pub struct SamplerArgs {
    /// The reverse process (default: the run's sampling.sampler; for `eval fid`, its
    /// eval.fid_sampler).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerChoice>,
    /// The sampler's steps (default: the run's sampling.ddim_steps; for `eval fid`, its
    /// eval.fid_ddim_steps). DDPM always takes all T steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM eta, 0 (deterministic) to 1 (default: the run's sampling.eta; 0 for `eval fid`).
    #[arg(long)]
    pub eta: Option<f64>,
}

/// `--sampler` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerChoice {
    /// DDPM ancestral sampling over all T steps.
    Ddpm,
    /// DDIM over `--steps` steps.
    Ddim,
    /// DPM-Solver++(2M) over `--steps` steps (deterministic; k-diffusion's `dpmpp_2m`,
    /// diffusers' `DPMSolverMultistepScheduler`).
    #[value(name = "dpmpp-2m")]
    DpmPp2m,
    /// Euler on the Karras sigma grid, `--steps` sigmas (deterministic; diffusers'
    /// `EulerDiscreteScheduler` with `use_karras_sigmas`).
    #[value(name = "euler-karras")]
    EulerKarras,
    /// Heun on the Karras sigma grid, `--steps` sigmas, 2 steps - 1 network evaluations
    /// (deterministic; Karras et al.'s Algorithm 1, diffusers' `HeunDiscreteScheduler`).
    #[value(name = "heun-karras")]
    HeunKarras,
}

impl SamplerArgs {
    /// The sampler: flags given on the command line, the rest from `default` (the run's
    /// `[sampling]` or `[eval]` choice), checked against the run's schedule.
    pub fn build(
        &self,
        default: SamplerSpec,
        schedule: &NoiseSchedule,
        config: &RunConfig,
    ) -> Result<Box<dyn Sampler>> {
        let steps = self.steps.unwrap_or(default.steps);
        if steps == 0 || steps > schedule.steps() {
            bail!("--steps must be in 1..={}, got {steps}", schedule.steps());
        }
        let eta = self.eta.unwrap_or(default.eta);
        if !(0.0..=1.0).contains(&eta) {
            bail!("--eta must be in [0, 1], got {eta}");
        }
        let solver = match self.sampler {
            None => default.solver,
            Some(SamplerChoice::Ddim) => Solver::Ddim,
            Some(SamplerChoice::DpmPp2m) => Solver::DpmPp2m,
            Some(SamplerChoice::EulerKarras) => Solver::EulerKarras,
            Some(SamplerChoice::HeunKarras) => Solver::HeunKarras,
            Some(SamplerChoice::Ddpm) => {
                return Ok(Box::new(Ddpm {
                    variance: config.sampling.ddpm_variance,
                    clip_x0: true,
                }));
            }
        };
        let eta = if solver.takes_eta() {
            eta
        } else if self.eta.is_some_and(|eta| eta != 0.0) {
            bail!(
                "--eta does not apply to {}, which draws no noise",
                solver.name()
            )
        } else {
            // The run's DDIM eta does not carry over.
            0.0
        };
        Ok(SamplerSpec { solver, steps, eta }.build())
    }

    /// The steps setting the sampler is built with, `default` being the run's choice (DDPM:
    /// all T).
    pub fn steps(&self, default: SamplerSpec, schedule: &NoiseSchedule) -> usize {
        match self.sampler {
            Some(SamplerChoice::Ddpm) => schedule.steps(),
            _ => self.steps.unwrap_or(default.steps),
        }
    }

    /// How the command line spells the sampler, `default` being the run's choice.
    pub fn name(&self, default: SamplerSpec) -> String {
        match self.sampler {
            Some(choice) => choice_name(choice),
            None => default.solver.name().into(),
        }
    }
}

/// How the command line spells `choice`, so results name it as a user would type it.
pub fn choice_name(choice: impl ValueEnum + std::fmt::Debug) -> String {
    match choice.to_possible_value() {
        Some(value) => value.get_name().to_owned(),
        None => format!("{choice:?}"),
    }
}

/// The run folder a config names by default: `runs/<config file name without extension>`.
pub fn default_run_dir(config: &std::path::Path) -> PathBuf {
    let name = config
        .file_stem()
        .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(name)
}
