//! The run configuration: one TOML file holds every setting; unknown keys are errors.

use anyhow::{Context, Result, bail};
use hayate_model::UNetConfig;
use hayate_schedule::ddpm::PosteriorVariance;
use hayate_schedule::{
    BetaSchedule, LossWeight, MomentumDecay, MomentumSchedule, NoiseSchedule, Prediction,
    TimestepSamplerConfig,
};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a training run needs, as read from `experiments/*.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The denoiser.
    pub model: ModelSection,
    /// The diffusion process.
    #[serde(default)]
    pub diffusion: DiffusionConfig,
    /// Optimisation and bookkeeping.
    #[serde(default)]
    pub train: TrainConfig,
    /// The training images.
    #[serde(default)]
    pub data: DataConfig,
    /// Sample grids written during training and by `hayate sample`.
    #[serde(default)]
    pub sampling: SamplingConfig,
}

/// The model: a named preset, optionally with fields overridden.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Starting point: one of `UNetConfig::PRESETS`.
    pub preset: String,
    /// Overrides of the preset's base width.
    pub base_channels: Option<usize>,
    /// Overrides of the preset's channel multipliers.
    pub channel_mult: Option<Vec<usize>>,
    /// Overrides of the preset's residual blocks per level.
    pub num_res_blocks: Option<usize>,
    /// Overrides of the preset's attention resolutions.
    pub attention_resolutions: Option<Vec<usize>>,
    /// Overrides of the preset's dropout.
    pub dropout: Option<f64>,
    /// Overrides of the preset's GroupNorm groups.
    pub norm_groups: Option<usize>,
}

impl ModelSection {
    /// The full network config: the preset with the overrides applied, validated.
    pub fn resolve(&self) -> Result<UNetConfig> {
        let Some(mut c) = UNetConfig::preset(&self.preset) else {
            bail!(
                "model.preset: unknown preset {:?}; known presets: {}",
                self.preset,
                UNetConfig::PRESETS.join(", ")
            );
        };
        if let Some(v) = self.base_channels {
            c.base_channels = v;
        }
        if let Some(v) = &self.channel_mult {
            c.channel_mult = v.clone();
        }
        if let Some(v) = self.num_res_blocks {
            c.num_res_blocks = v;
        }
        if let Some(v) = &self.attention_resolutions {
            c.attention_resolutions = v.clone();
        }
        if let Some(v) = self.dropout {
            c.dropout = v;
        }
        if let Some(v) = self.norm_groups {
            c.norm_groups = v;
        }
        c.validate().context("model")?;
        Ok(c)
    }
}

/// The forward process and what the network predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// Number of diffusion steps T.
    pub timesteps: usize,
    /// The beta schedule.
    pub beta_schedule: BetaSchedule,
    /// The network's target.
    pub prediction: Prediction,
    /// How training draws t (uniform, CLTS, logit-normal, log-normal, SpeeD).
    pub timestep_sampler: TimestepSamplerConfig,
    /// How each sample's error is weighted by its timestep (uniform, Min-SNR, P2).
    pub loss_weight: LossWeight,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            timesteps: 1000,
            beta_schedule: BetaSchedule::default(),
            prediction: Prediction::Eps,
            timestep_sampler: TimestepSamplerConfig::Uniform,
            loss_weight: LossWeight::Uniform,
        }
    }
}

impl DiffusionConfig {
    /// The noise schedule this section describes.
    pub fn schedule(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::new(self.beta_schedule, self.timesteps).context("diffusion")
    }

    /// Checks the schedule, the timestep sampler and the loss weight.
    pub fn validate(&self) -> Result<()> {
        let schedule = self.schedule()?;
        self.timestep_sampler
            .build(&schedule)
            .context("diffusion")?;
        self.loss_weight.validate().context("diffusion")?;
        Ok(())
    }
}

/// Optimiser, EMA, and how often to checkpoint and log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Total optimiser steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Adam's learning rate after warm-up.
    pub lr: f64,
    /// Steps of linear learning-rate warm-up from 0.
    pub warmup_steps: u64,
    /// Adam's beta1 (at the start, when `momentum` schedules it).
    pub beta1: f64,
    /// MDLRC: beta1 decays from `beta1` to `momentum.beta_end`, with learning-rate
    /// compensation. Absent: beta1 stays constant (plain Adam).
    pub momentum: Option<MomentumDecay>,
    /// Adam's beta2.
    pub beta2: f64,
    /// Adam's epsilon.
    pub adam_eps: f64,
    /// Clip the global gradient norm to this value (0 disables).
    pub grad_clip: f64,
    /// Target decay of the EMA of the weights.
    pub ema_decay: f64,
    /// EMA warm-up: the decay used at step k is min(ema_decay, (1 + k) / (ema_warmup + k)), so
    /// short runs get a useful average (0 disables the warm-up).
    pub ema_warmup: f64,
    /// Steps between checkpoints (each also writes a sample grid and a metrics line).
    pub checkpoint_every: u64,
    /// Steps between progress lines when the output is not a terminal (a terminal gets Burn's
    /// live display).
    pub log_every: u64,
    /// Checkpoints kept; older ones are deleted.
    pub keep_checkpoints: usize,
    /// The seed every random stream derives from (overridden by `--seed`).
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 800_000,
            batch_size: 128,
            lr: 2e-4,
            warmup_steps: 5000,
            beta1: 0.9,
            momentum: None,
            beta2: 0.999,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            ema_decay: 0.9999,
            ema_warmup: 10.0,
            checkpoint_every: 5000,
            log_every: 100,
            keep_checkpoints: 3,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// beta1(k) and the lr compensation of this run (constant beta1 without `momentum`).
    pub fn momentum_schedule(&self) -> MomentumSchedule {
        MomentumSchedule {
            beta_start: self.beta1,
            decay: self.momentum,
        }
    }
}

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// The dataset; `cifar10` for now.
    pub dataset: String,
    /// A local folder with the dataset's files; when absent, `$HAYATE_CIFAR10_DIR` or the cache
    /// (downloading there if needed). `--data-dir` overrides it.
    pub dir: Option<std::path::PathBuf>,
    /// Mirror each training image left to right with probability 1/2.
    pub random_flip: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: "cifar10".into(),
            dir: None,
            random_flip: true,
        }
    }
}

/// The sampler used for grids during training and as `hayate sample`'s default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Images per grid.
    pub grid_images: usize,
    /// DDIM steps for the grids.
    pub ddim_steps: usize,
    /// DDIM eta for the grids.
    pub eta: f64,
    /// The DDPM sampler's variance.
    pub ddpm_variance: PosteriorVariance,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            grid_images: 64,
            ddim_steps: 50,
            eta: 0.0,
            ddpm_variance: PosteriorVariance::FixedLarge,
        }
    }
}

impl RunConfig {
    /// Reads and validates a TOML file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field that could make a run fail later or silently do the wrong thing.
    pub fn validate(&self) -> Result<()> {
        self.model.resolve()?;
        self.diffusion.validate()?;
        let t = &self.train;
        if t.steps == 0 {
            bail!("train.steps must be positive");
        }
        if t.batch_size == 0 {
            bail!("train.batch_size must be positive");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr must be positive, got {}", t.lr);
        }
        for (name, beta) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                bail!("{name} must be in [0, 1), got {beta}");
            }
        }
        t.momentum_schedule().validate().context("train")?;
        if t.adam_eps.is_nan() || t.adam_eps <= 0.0 {
            bail!("train.adam_eps must be positive, got {}", t.adam_eps);
        }
        if t.grad_clip.is_nan() || t.grad_clip < 0.0 {
            bail!(
                "train.grad_clip must be 0 (off) or positive, got {}",
                t.grad_clip
            );
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            bail!("train.ema_decay must be in [0, 1), got {}", t.ema_decay);
        }
        if t.ema_warmup.is_nan() || t.ema_warmup < 0.0 {
            bail!(
                "train.ema_warmup must be 0 or positive, got {}",
                t.ema_warmup
            );
        }
        if t.checkpoint_every == 0 {
            bail!("train.checkpoint_every must be positive");
        }
        if t.log_every == 0 {
            bail!("train.log_every must be positive");
        }
        if t.keep_checkpoints == 0 {
            bail!("train.keep_checkpoints must be at least 1");
        }
        if self.data.dataset != "cifar10" {
            bail!(
                "data.dataset: {:?} is not supported yet (supported: cifar10)",
                self.data.dataset
            );
        }
        let s = &self.sampling;
        if s.grid_images == 0 || s.ddim_steps == 0 || s.ddim_steps > self.diffusion.timesteps {
            bail!(
                "sampling: grid_images must be positive and ddim_steps in 1..={}",
                self.diffusion.timesteps
            );
        }
        if !(0.0..=1.0).contains(&s.eta) {
            bail!("sampling.eta must be in [0, 1], got {}", s.eta);
        }
        Ok(())
    }

    /// The resolved config as TOML, for the run folder and `hayate info`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunConfig always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_experiment_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = RunConfig::load(&path).unwrap();
                // The resolved form parses back to the same config.
                assert_eq!(RunConfig::parse(&config.to_toml()).unwrap(), config);
                seen += 1;
            }
        }
        assert!(
            seen >= 2,
            "expected the experiment files in {}",
            dir.display()
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_field() {
        let base = "[model]\npreset = \"tiny\"\n";
        assert!(RunConfig::parse(base).is_ok());
        let err = |text: &str| format!("{:#}", RunConfig::parse(text).unwrap_err());
        assert!(err(&format!("{base}[train]\nlearning_rate = 1.0\n")).contains("learning_rate"));
        assert!(err("[model]\npreset = \"huge\"\n").contains("huge"));
        assert!(err(&format!("{base}[train]\nlr = -1.0\n")).contains("train.lr"));
        assert!(err(&format!("{base}[train]\nbeta1 = 1.0\n")).contains("train.beta1"));
        assert!(err(&format!("{base}[train]\nbatch_size = \"big\"\n")).contains("batch_size"));
        assert!(err(&format!("{base}[model]\n")).contains("model"));
        assert!(err("[model]\npreset = \"tiny\"\nnorm_groups = 7\n").contains("norm_groups"));
    }
}
