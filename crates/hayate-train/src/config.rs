//! The run configuration: one TOML file holds every setting; unknown keys are errors.

use crate::ema::EmaSchedule;
use anyhow::{Context, Result, bail};
use hayate_model::{DownsamplePadding, NetworkConfig, Precision, UNetConfig};
use hayate_schedule::ddpm::PosteriorVariance;
use hayate_schedule::{
    BetaSchedule, LossWeight, MomentumDecay, MomentumSchedule, NoiseAssignment, NoiseSchedule,
    Prediction, SamplerSpec, Solver, TimestepSamplerConfig,
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
    /// Evaluation during training.
    #[serde(default)]
    pub eval: EvalConfig,
}

/// The model: a named preset (a UNet or a DiT), optionally with fields overridden. A field of
/// the other architecture is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Starting point: one of `NetworkConfig::presets()` (UNets: ddpm_cifar10, tiny,
    /// adm_imagenet64, adm_imagenet128; DiTs: dit_s2_cifar10, dit_tiny).
    pub preset: String,
    /// Overrides of the preset's image resolution.
    pub resolution: Option<usize>,
    /// Overrides of the preset's base width (UNet).
    pub base_channels: Option<usize>,
    /// Overrides of the preset's channel multipliers (UNet).
    pub channel_mult: Option<Vec<usize>>,
    /// Overrides of the preset's residual blocks per level (UNet).
    pub num_res_blocks: Option<usize>,
    /// Overrides of the preset's attention resolutions (UNet).
    pub attention_resolutions: Option<Vec<usize>>,
    /// Overrides of the preset's dropout (UNet).
    pub dropout: Option<f64>,
    /// Overrides of the preset's GroupNorm groups (UNet).
    pub norm_groups: Option<usize>,
    /// Overrides of the preset's attention heads.
    pub num_heads: Option<usize>,
    /// Overrides of the preset's channels per attention head (UNet).
    pub head_channels: Option<usize>,
    /// Overrides of the preset's scale-shift norm (UNet).
    pub scale_shift_norm: Option<bool>,
    /// Overrides of the preset's resampling residual blocks (UNet).
    pub resblock_updown: Option<bool>,
    /// Overrides of the preset's class count (0: unconditional; else the dataset's classes).
    pub num_classes: Option<usize>,
    /// Overrides of the preset's image channels (3: RGB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_channels: Option<usize>,
    /// Overrides of the preset's GroupNorm epsilon (UNet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_eps: Option<f64>,
    /// Overrides of where the preset's downsampling convolutions pad ("both" or "after"; UNet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downsample_padding: Option<DownsamplePadding>,
    /// Overrides of the preset's patch side (DiT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<usize>,
    /// Overrides of the preset's token width (DiT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<usize>,
    /// Overrides of the preset's transformer blocks (DiT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// Overrides of the preset's MLP width over the token width (DiT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_ratio: Option<f64>,
}

impl ModelSection {
    /// The section that resolves to exactly `config`: a preset with every field overridden.
    pub fn exact(config: &NetworkConfig) -> Self {
        let none = Self {
            preset: String::new(),
            resolution: None,
            base_channels: None,
            channel_mult: None,
            num_res_blocks: None,
            attention_resolutions: None,
            dropout: None,
            norm_groups: None,
            num_heads: None,
            head_channels: None,
            scale_shift_norm: None,
            resblock_updown: None,
            num_classes: None,
            image_channels: None,
            norm_eps: None,
            downsample_padding: None,
            patch_size: None,
            hidden_size: None,
            depth: None,
            mlp_ratio: None,
        };
        match config.clone() {
            NetworkConfig::UNet(c) => Self {
                // The one preset without head_channels, which an override cannot unset.
                preset: "ddpm_cifar10".into(),
                resolution: Some(c.resolution),
                base_channels: Some(c.base_channels),
                channel_mult: Some(c.channel_mult),
                num_res_blocks: Some(c.num_res_blocks),
                attention_resolutions: Some(c.attention_resolutions),
                dropout: Some(c.dropout),
                norm_groups: Some(c.norm_groups),
                num_heads: Some(c.num_heads),
                head_channels: c.head_channels,
                scale_shift_norm: Some(c.scale_shift_norm),
                resblock_updown: Some(c.resblock_updown),
                num_classes: Some(c.num_classes),
                image_channels: Some(c.image_channels),
                norm_eps: Some(c.norm_eps),
                downsample_padding: Some(c.downsample_padding),
                ..none
            },
            NetworkConfig::DiT(c) => Self {
                preset: "dit_tiny".into(),
                resolution: Some(c.resolution),
                num_heads: Some(c.num_heads),
                num_classes: Some(c.num_classes),
                image_channels: Some(c.image_channels),
                patch_size: Some(c.patch_size),
                hidden_size: Some(c.hidden_size),
                depth: Some(c.depth),
                mlp_ratio: Some(c.mlp_ratio),
                ..none
            },
        }
    }

    /// The overrides that only a UNet has, by name, that this section sets.
    fn unet_fields(&self) -> Vec<&'static str> {
        [
            ("base_channels", self.base_channels.is_some()),
            ("channel_mult", self.channel_mult.is_some()),
            ("num_res_blocks", self.num_res_blocks.is_some()),
            (
                "attention_resolutions",
                self.attention_resolutions.is_some(),
            ),
            ("dropout", self.dropout.is_some()),
            ("norm_groups", self.norm_groups.is_some()),
            ("head_channels", self.head_channels.is_some()),
            ("scale_shift_norm", self.scale_shift_norm.is_some()),
            ("resblock_updown", self.resblock_updown.is_some()),
            ("norm_eps", self.norm_eps.is_some()),
            ("downsample_padding", self.downsample_padding.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// The overrides that only a DiT has, by name, that this section sets.
    fn dit_fields(&self) -> Vec<&'static str> {
        [
            ("patch_size", self.patch_size.is_some()),
            ("hidden_size", self.hidden_size.is_some()),
            ("depth", self.depth.is_some()),
            ("mlp_ratio", self.mlp_ratio.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// The full network config: the preset with the overrides applied, validated.
    pub fn resolve(&self) -> Result<NetworkConfig> {
        let Some(preset) = NetworkConfig::preset(&self.preset) else {
            bail!(
                "model.preset: unknown preset {:?}; known presets: {}",
                self.preset,
                NetworkConfig::presets().join(", ")
            );
        };
        let foreign = match &preset {
            NetworkConfig::UNet(_) => self.dit_fields(),
            NetworkConfig::DiT(_) => self.unet_fields(),
        };
        if !foreign.is_empty() {
            bail!(
                "model: {} {} not apply to the {} preset {:?}",
                foreign.join(", "),
                if foreign.len() == 1 { "does" } else { "do" },
                preset.architecture(),
                self.preset
            );
        }
        let config = match preset {
            NetworkConfig::UNet(c) => NetworkConfig::UNet(self.unet(c)),
            NetworkConfig::DiT(mut c) => {
                let shared = [
                    (&mut c.resolution, self.resolution),
                    (&mut c.num_heads, self.num_heads),
                    (&mut c.num_classes, self.num_classes),
                    (&mut c.image_channels, self.image_channels),
                    (&mut c.patch_size, self.patch_size),
                    (&mut c.hidden_size, self.hidden_size),
                    (&mut c.depth, self.depth),
                ];
                for (field, value) in shared {
                    if let Some(v) = value {
                        *field = v;
                    }
                }
                if let Some(v) = self.mlp_ratio {
                    c.mlp_ratio = v;
                }
                NetworkConfig::DiT(c)
            }
        };
        config.validate().context("model")?;
        Ok(config)
    }

    /// A UNet preset with this section's overrides.
    fn unet(&self, mut c: UNetConfig) -> UNetConfig {
        if let Some(v) = self.resolution {
            c.resolution = v;
        }
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
        if let Some(v) = self.num_heads {
            c.num_heads = v;
        }
        if self.head_channels.is_some() {
            c.head_channels = self.head_channels;
        }
        if let Some(v) = self.scale_shift_norm {
            c.scale_shift_norm = v;
        }
        if let Some(v) = self.resblock_updown {
            c.resblock_updown = v;
        }
        if let Some(v) = self.num_classes {
            c.num_classes = v;
        }
        if let Some(v) = self.image_channels {
            c.image_channels = v;
        }
        if let Some(v) = self.norm_eps {
            c.norm_eps = v;
        }
        if let Some(v) = self.downsample_padding {
            c.downsample_padding = v;
        }
        c
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
    /// How training draws t (uniform, CLTS, logit-normal, log-normal, Laplace, SpeeD).
    pub timestep_sampler: TimestepSamplerConfig,
    /// How each sample's error is weighted by its timestep (uniform, Min-SNR, P2).
    pub loss_weight: LossWeight,
    /// Which noise draw goes with which image: independent (DDPM), immiscible (a minimum-cost
    /// assignment over the batch) or knn (the nearest of k draws). Left out of a written
    /// config when independent, so the configs of earlier runs read and hash as before.
    #[serde(skip_serializing_if = "is_independent")]
    pub noise_assignment: NoiseAssignment,
}

fn is_independent(assignment: &NoiseAssignment) -> bool {
    *assignment == NoiseAssignment::Independent
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            timesteps: 1000,
            beta_schedule: BetaSchedule::default(),
            prediction: Prediction::Eps,
            timestep_sampler: TimestepSamplerConfig::Uniform,
            loss_weight: LossWeight::Uniform,
            noise_assignment: NoiseAssignment::Independent,
        }
    }
}

impl DiffusionConfig {
    /// The noise schedule this section describes.
    pub fn schedule(&self) -> Result<NoiseSchedule> {
        // Checked here too, so that the error names the setting.
        if !(2..=NoiseSchedule::MAX_STEPS).contains(&self.timesteps) {
            bail!(
                "diffusion.timesteps must be in 2..={}, got {}",
                NoiseSchedule::MAX_STEPS,
                self.timesteps
            );
        }
        NoiseSchedule::new(self.beta_schedule, self.timesteps).context("diffusion.beta_schedule")
    }

    /// Checks the schedule, the timestep sampler, the loss weight and the noise assignment.
    pub fn validate(&self) -> Result<()> {
        let schedule = self.schedule()?;
        self.timestep_sampler
            .build(&schedule)
            .context("diffusion")?;
        self.loss_weight.validate().context("diffusion")?;
        self.noise_assignment.validate().context("diffusion")?;
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
    /// After warm-up: constant (DDPM) or a cosine decay to `min_lr` at the last step.
    pub lr_decay: crate::lr::LrDecay,
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
    /// EDM2's power-function EMA with this relative std (0.05 to 0.10 in EDM2): the decay after
    /// t updates is (1 - 1/t)^(gamma + 1), so the average spans the same share of any run's
    /// length. Replaces `ema_decay` and `ema_warmup` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_sigma_rel: Option<f64>,
    /// Steps between checkpoints (each also writes a sample grid and a metrics line).
    pub checkpoint_every: u64,
    /// Steps between progress lines when the output is not a terminal (a terminal gets Burn's
    /// live display).
    pub log_every: u64,
    /// Checkpoints kept; older ones are deleted.
    pub keep_checkpoints: usize,
    /// Class-conditional models: the probability that an image's label is replaced by "no
    /// label", so the one network also learns the unconditional prediction that
    /// classifier-free guidance needs (0.1 is usual; 0 trains a purely conditional model).
    pub label_dropout: f64,
    /// The seed every random stream derives from (overridden by `--seed`).
    pub seed: u64,
    /// The type the network's forward computes in: "f32", or "bf16" (on the CPU and CUDA
    /// backends), with f32 weights, gradients, optimiser state, EMA and checkpoints either way.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 800_000,
            batch_size: 128,
            lr: 2e-4,
            warmup_steps: 5000,
            lr_decay: crate::lr::LrDecay::Constant,
            beta1: 0.9,
            momentum: None,
            beta2: 0.999,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            ema_decay: 0.9999,
            ema_warmup: 10.0,
            ema_sigma_rel: None,
            checkpoint_every: 5000,
            log_every: 100,
            keep_checkpoints: 3,
            label_dropout: 0.0,
            seed: 0,
            precision: Precision::F32,
        }
    }
}

impl TrainConfig {
    /// The EMA's decay schedule: the power EMA when `ema_sigma_rel` is set, else `ema_decay`
    /// with `ema_warmup`.
    pub fn ema_schedule(&self) -> EmaSchedule {
        self.ema_sigma_rel
            .and_then(EmaSchedule::power)
            .unwrap_or(EmaSchedule::Constant {
                decay: self.ema_decay,
                warmup: self.ema_warmup,
            })
    }

    /// The run's optimiser: Adam with beta1 following `momentum_schedule` (MDLRC).
    pub fn optimizer(&self) -> burn::optim::ModuleOptimizer {
        burn::optim::ModuleOptimizer::from(crate::optim::ScheduledAdam {
            momentum: self.momentum_schedule(),
            beta2: self.beta2,
            epsilon: self.adam_eps,
        })
    }

    /// beta1(k) and the lr compensation of this run (constant beta1 without `momentum`).
    pub fn momentum_schedule(&self) -> MomentumSchedule {
        MomentumSchedule {
            beta_start: self.beta1,
            decay: self.momentum,
        }
    }

    /// lr(k) of this run, positioned after `step` steps.
    pub fn lr_schedule(&self, step: u64) -> crate::lr::WarmupLr {
        crate::lr::WarmupLr {
            lr: self.lr,
            warmup: self.warmup_steps,
            decay: self.lr_decay,
            total: self.steps,
            step,
            momentum: self.momentum_schedule(),
        }
    }
}

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Which images.
    pub dataset: DatasetKind,
    /// Where they are (`--data-dir` overrides it). CIFAR-10: a folder with the official binary
    /// files; when absent, `$HAYATE_CIFAR10_DIR` or the cache (downloading there if needed).
    /// Image folder: the folder (one subfolder per class, or just images), prepared into the
    /// cache on first use, or a file written by `hayate prepare`.
    pub dir: Option<std::path::PathBuf>,
    /// Mirror each training image left to right with probability 1/2.
    pub random_flip: bool,
}

/// The kinds of training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// CIFAR-10's 50,000 training images, 32x32, 10 classes.
    Cifar10,
    /// Any folder of JPEG/PNG images, with one subfolder per class (ImageNet's training layout)
    /// or without classes, squared to the model's resolution.
    ImageFolder,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Cifar10,
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
    /// The grids' sampler: `"ddim"`, `"dpmpp-2m"` (DPM-Solver++(2M)), `"euler-karras"` or
    /// `"heun-karras"` (Euler and Heun on the Karras sigma grid).
    pub sampler: Solver,
    /// The grids' sampler steps (any solver's; the name is DDIM's for old configs). Heun makes
    /// 2 steps - 1 network evaluations.
    pub ddim_steps: usize,
    /// DDIM eta for the grids (0 with the other samplers, which draw no noise).
    pub eta: f64,
    /// The DDPM sampler's variance.
    pub ddpm_variance: PosteriorVariance,
    /// Classifier-free guidance of a class-conditional model: eps_uncond + s (eps_cond -
    /// eps_uncond); 1 is the plain conditional model, 0 the unconditional one.
    pub cfg_scale: f64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            grid_images: 64,
            sampler: Solver::Ddim,
            ddim_steps: 50,
            eta: 0.0,
            ddpm_variance: PosteriorVariance::FixedLarge,
            cfg_scale: 1.0,
        }
    }
}

/// FID during training: at every `fid_every`-th step that ends a checkpoint interval, the EMA
/// model draws `fid_n` images (DDIM, `fid_ddim_steps`, a fixed seed) and their FID against the
/// first `fid_n` CIFAR-10 training images is logged, with n, to metrics.jsonl and `plots/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Steps between FID evaluations (0: never); a multiple of `train.checkpoint_every`.
    pub fid_every: u64,
    /// Images per FID (FID depends on n: compare values at the same n only).
    pub fid_n: usize,
    /// The FID samples' sampler: `"ddim"` (eta 0), `"dpmpp-2m"`, `"euler-karras"` or
    /// `"heun-karras"`.
    pub fid_sampler: Solver,
    /// The FID samples' sampler steps.
    pub fid_ddim_steps: usize,
    /// Images per batch through the sampler and Inception.
    pub fid_batch: usize,
    /// The Inception weights; absent: `$HAYATE_INCEPTION_WEIGHTS`, else the cached download.
    pub inception_weights: Option<std::path::PathBuf>,
}

impl SamplingConfig {
    /// The grids' sampler, also `hayate sample`'s and `hayate consistency`'s default.
    pub fn sampler(&self) -> SamplerSpec {
        SamplerSpec {
            solver: self.sampler,
            steps: self.ddim_steps,
            eta: self.eta,
        }
    }
}

impl EvalConfig {
    /// FID's sampler (deterministic), also `hayate eval fid`'s default.
    pub fn sampler(&self) -> SamplerSpec {
        SamplerSpec {
            solver: self.fid_sampler,
            steps: self.fid_ddim_steps,
            eta: 0.0,
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            fid_every: 0,
            fid_n: 5000,
            fid_sampler: Solver::Ddim,
            fid_ddim_steps: 100,
            fid_batch: 50,
            inception_weights: None,
        }
    }
}

/// Whether an experiment file is a convergence benchmark (a base `[run]` and `[[method]]`s, as
/// `experiments/bench-*.toml`) rather than a run config. Unreadable files are not.
pub fn is_benchmark_file(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| is_benchmark_text(&text))
}

fn is_benchmark_text(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|table| table.contains_key("run") && table.contains_key("method"))
}

impl RunConfig {
    /// Reads and validates a TOML file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        // A benchmark file fails as a run config with a serde message about its first key; say
        // what it is and what runs it.
        if is_benchmark_text(&text) {
            bail!(
                "{} is a convergence benchmark file, not a run config: run it with \
                 `hayate bench convergence --config {}`",
                path.display(),
                path.display()
            );
        }
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
        // The upper bounds turn a typo into an error instead of an allocation failure.
        if !(1..=65_536).contains(&t.batch_size) {
            bail!(
                "train.batch_size must be in 1..=65536, got {}",
                t.batch_size
            );
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr must be positive, got {}", t.lr);
        }
        if let crate::lr::LrDecay::Cosine { min_lr } = t.lr_decay
            && !(0.0..=t.lr).contains(&min_lr)
        {
            bail!("train.lr_decay.min_lr must be in [0, train.lr], got {min_lr}");
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
        if !(0.0..1.0).contains(&t.label_dropout) {
            bail!(
                "train.label_dropout must be in [0, 1), got {}",
                t.label_dropout
            );
        }
        if !self.sampling.cfg_scale.is_finite() || self.sampling.cfg_scale < 0.0 {
            bail!(
                "sampling.cfg_scale must be 0 or positive, got {}",
                self.sampling.cfg_scale
            );
        }
        if let Some(sigma_rel) = t.ema_sigma_rel
            && EmaSchedule::power(sigma_rel).is_none()
        {
            bail!(
                "train.ema_sigma_rel must be in (0, {:.4}), got {sigma_rel}",
                EmaSchedule::MAX_SIGMA_REL
            );
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
        if self.data.dataset == DatasetKind::Cifar10 {
            let resolution = self.model.resolve()?.resolution();
            if ![32, 16, 8].contains(&resolution) {
                bail!(
                    "data.dataset = \"cifar10\" has 32x32 images (averaged to 16x16 or 8x8 for \
                     smaller models), but model.resolution is {resolution}"
                );
            }
        }
        let s = &self.sampling;
        if !(1..=4096).contains(&s.grid_images)
            || s.ddim_steps == 0
            || s.ddim_steps > self.diffusion.timesteps
        {
            bail!(
                "sampling: grid_images must be in 1..=4096 and ddim_steps in 1..={}",
                self.diffusion.timesteps
            );
        }
        if !(0.0..=1.0).contains(&s.eta) {
            bail!("sampling.eta must be in [0, 1], got {}", s.eta);
        }
        if !s.sampler.takes_eta() && s.eta != 0.0 {
            bail!(
                "sampling.eta is {}, but sampling.sampler = \"{}\" draws no noise: set \
                 eta = 0 or sampler = \"ddim\"",
                s.eta,
                s.sampler.name()
            );
        }
        let e = &self.eval;
        if e.fid_every > 0 {
            if !e.fid_every.is_multiple_of(t.checkpoint_every) {
                bail!(
                    "eval.fid_every ({}) must be a multiple of train.checkpoint_every ({})",
                    e.fid_every,
                    t.checkpoint_every
                );
            }
            if !(2..=1_000_000).contains(&e.fid_n) || !(1..=4096).contains(&e.fid_batch) {
                bail!("eval.fid_n must be in 2..=1000000 and eval.fid_batch in 1..=4096");
            }
            if e.fid_ddim_steps == 0 || e.fid_ddim_steps > self.diffusion.timesteps {
                bail!(
                    "eval.fid_ddim_steps must be in 1..={}",
                    self.diffusion.timesteps
                );
            }
        }
        Ok(())
    }

    /// Settings of `self` that fit together badly without being contradictory, as
    /// human-readable warnings (a curriculum or warm-up longer than the run, say: legitimate
    /// for a shortened trial run, a mistake otherwise).
    pub fn warnings(&self) -> Vec<String> {
        let t = &self.train;
        let mut out = Vec::new();
        let mut longer = |name: &str, end: u64| {
            if end > t.steps {
                out.push(format!(
                    "{name} ({end}) is past the end of the run (train.steps = {}): it will not \
                     complete",
                    t.steps
                ));
            }
        };
        longer("train.warmup_steps", t.warmup_steps);
        if let Some(m) = &t.momentum {
            longer("train.momentum.k_end", m.k_end);
        }
        match self.diffusion.timestep_sampler {
            TimestepSamplerConfig::Clts { ramp_steps, .. } => {
                longer("diffusion.timestep_sampler.ramp_steps", ramp_steps);
            }
            TimestepSamplerConfig::Adaptive {
                bands,
                update_every,
                ..
            } => {
                longer("diffusion.timestep_sampler.update_every", update_every);
                let per_band = (t.batch_size as u64 * update_every) as f64 / bands.max(1) as f64;
                if per_band < 16.0 {
                    out.push(format!(
                        "diffusion.timestep_sampler: a band sees about {per_band:.1} draws per \
                         update (train.batch_size x update_every / bands), too few for a steady \
                         signal: raise update_every or lower bands"
                    ));
                }
            }
            _ => {}
        }
        out
    }

    /// The settings that differ between `self` (a checkpoint's config) and `now` and that change
    /// a run's numbers, as "path: old -> new". The run's length, logging, retention, data
    /// folder and sample grids may change on resume; nothing else may without consent.
    pub fn differences(&self, now: &RunConfig) -> Vec<String> {
        const MAY_CHANGE: [&str; 6] = [
            "train.steps",
            "train.log_every",
            "train.keep_checkpoints",
            "data.dir",
            "sampling.",
            "eval.",
        ];
        // A cosine decay ends at the last step, so there the run's length changes the rates.
        let cosine = [self, now]
            .iter()
            .any(|c| matches!(c.train.lr_decay, crate::lr::LrDecay::Cosine { .. }));
        let (old, new) = (flatten(self), flatten(now));
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        let missing = serde_json::Value::Null;
        keys.into_iter()
            .filter(|k| {
                !MAY_CHANGE.iter().any(|m| k.starts_with(m)) || (cosine && *k == "train.steps")
            })
            .filter_map(|k| {
                let (a, b) = (
                    old.get(k).unwrap_or(&missing),
                    new.get(k).unwrap_or(&missing),
                );
                (a != b).then(|| format!("{k}: {a} -> {b}"))
            })
            .collect()
    }

    /// The resolved config as TOML, for the run folder and `hayate info`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunConfig always serialises")
    }
}

/// Every leaf setting of `config` by its dotted path (`train.momentum.k_end`).
fn flatten(config: &RunConfig) -> std::collections::BTreeMap<String, serde_json::Value> {
    fn walk(
        prefix: &str,
        value: serde_json::Value,
        out: &mut std::collections::BTreeMap<String, serde_json::Value>,
    ) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(
        "",
        serde_json::to_value(config).expect("a RunConfig always serialises"),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_config_in_experiments_loads_and_benchmark_files_are_named_as_such() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let (mut runs, mut benchmarks) = (0, 0);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            if is_benchmark_file(&path) {
                // Given to `hayate train`, it is named for what it is (hayate-bench loads it).
                let err = format!("{:#}", RunConfig::load(&path).unwrap_err());
                assert!(
                    err.contains("is a convergence benchmark file")
                        && err.contains("hayate bench convergence --config"),
                    "{err}"
                );
                benchmarks += 1;
            } else {
                let config = RunConfig::load(&path).unwrap();
                // The resolved form parses back to the same config.
                assert_eq!(RunConfig::parse(&config.to_toml()).unwrap(), config);
                runs += 1;
            }
        }
        assert!(
            runs >= 2 && benchmarks >= 1,
            "expected run configs and a benchmark in {}",
            dir.display()
        );
    }

    #[test]
    fn a_dit_preset_takes_its_own_and_the_shared_fields_and_refuses_the_unets() {
        let config = RunConfig::parse(
            "[model]\npreset = \"dit_tiny\"\nresolution = 16\nhidden_size = 48\n\
             num_heads = 3\nnum_classes = 10\n",
        )
        .unwrap();
        let NetworkConfig::DiT(dit) = config.model.resolve().unwrap() else {
            panic!("dit_tiny is a DiT")
        };
        assert_eq!(
            (
                dit.resolution,
                dit.hidden_size,
                dit.num_heads,
                dit.num_classes,
                dit.depth
            ),
            (16, 48, 3, 10, 4)
        );
        // The exact section of a DiT resolves to it again.
        let exact = ModelSection::exact(&NetworkConfig::DiT(dit.clone()));
        assert_eq!(exact.resolve().unwrap(), NetworkConfig::DiT(dit));
        for (text, needle) in [
            (
                "preset = \"dit_tiny\"\nchannel_mult = [1, 2]",
                "channel_mult does not apply to the DiT",
            ),
            (
                "preset = \"dit_tiny\"\ndropout = 0.1\nnorm_groups = 4",
                "dropout, norm_groups do not",
            ),
            (
                "preset = \"tiny\"\npatch_size = 4",
                "patch_size does not apply to the UNet",
            ),
            (
                "preset = \"dit_tiny\"\nhidden_size = 30\nnum_heads = 5",
                "multiple of 4",
            ),
            ("preset = \"ditt\"", "dit_s2_cifar10, dit_tiny"),
        ] {
            let e = RunConfig::parse(&format!("[model]\n{text}\n"))
                .map_err(|e| format!("{e:#}"))
                .and_then(|c| c.model.resolve().map(|_| ()).map_err(|e| format!("{e:#}")))
                .unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
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
        assert!(err(&format!("{base}[train]\nbeta2 = -0.1\n")).contains("train.beta2"));
        assert!(err(&format!("{base}[train]\nsteps = 0\n")).contains("train.steps"));
        assert!(
            err(&format!("{base}[train]\nema_sigma_rel = 0.5\n")).contains("train.ema_sigma_rel")
        );
        let power = RunConfig::parse(&format!("{base}[train]\nema_sigma_rel = 0.05\n")).unwrap();
        assert_eq!(
            power.train.ema_schedule(),
            EmaSchedule::power(0.05).unwrap()
        );
        assert!(matches!(
            RunConfig::parse(base).unwrap().train.ema_schedule(),
            EmaSchedule::Constant { decay: 0.9999, .. }
        ));
        let clts = "[diffusion]\ntimestep_sampler = { kind = \"clts\", mu = 1.5, sigma = 0.1, \
                    lambda_max = 0.5, ramp_steps = 10 }\n";
        assert!(err(&format!("{base}{clts}")).contains("mu must be in [0, 1]"));
        let decay = "[train]\nmomentum = { beta_end = 0.5, k_start = 20, k_end = 10, \
                     shape = \"linear\", compensation = \"none\" }\n";
        assert!(err(&format!("{base}{decay}")).contains("k_end (10) must not come before"));
        let solver = |text: &str| RunConfig::parse(&format!("{base}{text}"));
        let dpm =
            solver("[sampling]\nsampler = \"dpmpp-2m\"\n[eval]\nfid_sampler = \"dpmpp-2m\"\n")
                .unwrap();
        assert_eq!(
            dpm.sampling
                .sampler()
                .build()
                .timesteps(&NoiseSchedule::ddpm())
                .len(),
            50
        );
        assert_eq!(dpm.eval.sampler().solver, Solver::DpmPp2m);
        assert!(err(&format!("{base}[sampling]\nsampler = \"euler\"\n")).contains("euler"));
        let heun =
            solver("[sampling]\nsampler = \"heun-karras\"\nddim_steps = 10\n[eval]\nfid_sampler = \"euler-karras\"\n")
                .unwrap();
        // Heun evaluates the network twice a step but at the last.
        assert_eq!(
            heun.sampling
                .sampler()
                .build()
                .timesteps(&NoiseSchedule::ddpm())
                .len(),
            19
        );
        assert_eq!(heun.eval.sampler().solver, Solver::EulerKarras);
        let noisy_heun = err(&format!(
            "{base}[sampling]\nsampler = \"heun-karras\"\neta = 0.5\n"
        ));
        assert!(
            noisy_heun.contains("sampling.eta") && noisy_heun.contains("heun-karras"),
            "{noisy_heun}"
        );
        let noisy = err(&format!(
            "{base}[sampling]\nsampler = \"dpmpp-2m\"\neta = 0.5\n"
        ));
        assert!(
            noisy.contains("sampling.eta") && noisy.contains("dpmpp-2m"),
            "{noisy}"
        );
    }

    /// Values that break parsers: wrong types, out of range, non-finite, huge, nested.
    const ODD_VALUES: [&str; 16] = [
        "-1",
        "0",
        "1",
        "1e400",
        "nan",
        "-inf",
        "\"x\"",
        "[1, 2]",
        "[]",
        "{ kind = \"clts\" }",
        "{ kind = \"speed\", tau = 0, k = 1.0 }",
        "true",
        "18446744073709551615",
        "4000000000",
        "0.5",
        "",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// Text of real section and setting names (some in the wrong section) with odd values
        /// parses to a valid config or gives an error; it never panics.
        #[test]
        fn any_text_parses_or_fails_cleanly(
            section in 0usize..OPTIONAL.len(),
            lines in proptest::collection::vec(
                (
                    0usize..OPTIONAL.len(),
                    0usize..=ODD_VALUES.len(),
                    "[-0-9a-z.\"\\[\\], {}=]{0,20}",
                ),
                0..6,
            ),
        ) {
            // Each value is one of the odd values, or random text.
            let mut text = format!("[{}]\n", OPTIONAL[section].0);
            for (key, odd, random) in &lines {
                let value = ODD_VALUES.get(*odd).copied().unwrap_or(random.as_str());
                text.push_str(&format!("{} = {value}\n", OPTIONAL[*key].1));
            }
            if let Err(e) = RunConfig::parse(&text) {
                let message = format!("{e:#}");
                proptest::prop_assert!(!message.is_empty());
            }
        }

        /// An experiment file with one value replaced by an odd one parses to a config that
        /// validates and round-trips, or gives an error naming a setting; it never panics.
        #[test]
        fn mutated_experiment_files_parse_or_fail_cleanly(
            file in 0usize..64,
            line in 0usize..64,
            value in 0usize..ODD_VALUES.len(),
        ) {
            let text = experiment_text(file);
            let lines: Vec<&str> = text.lines().collect();
            let settings: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains(" = ")).collect();
            let target = settings[line % settings.len()];
            let key = lines[target].split(" = ").next().unwrap();
            let mutated: String = lines
                .iter()
                .enumerate()
                .map(|(i, l)| if i == target { format!("{key} = {}\n", ODD_VALUES[value]) } else { format!("{l}\n") })
                .collect();
            check_parse(&mutated, key)?;
        }

        /// The same with a setting the experiment files leave at its default (model overrides,
        /// sizes, steps) given an odd value.
        #[test]
        fn odd_optional_settings_parse_or_fail_cleanly(
            file in 0usize..64,
            setting in 0usize..OPTIONAL.len(),
            value in 0usize..ODD_VALUES.len(),
        ) {
            let (section, key) = OPTIONAL[setting];
            let header = format!("[{section}]");
            let mut mutated = String::new();
            for line in experiment_text(file).lines() {
                if line.starts_with(&format!("{key} =")) {
                    continue;
                }
                mutated.push_str(line);
                mutated.push('\n');
                if line == header {
                    mutated.push_str(&format!("{key} = {}\n", ODD_VALUES[value]));
                }
            }
            check_parse(&mutated, key)?;
        }
    }

    /// Settings the fuzz tests add to an experiment file, by section.
    const OPTIONAL: [(&str, &str); 14] = [
        ("model", "base_channels"),
        ("model", "channel_mult"),
        ("model", "num_res_blocks"),
        ("model", "attention_resolutions"),
        ("model", "dropout"),
        ("model", "norm_groups"),
        ("diffusion", "timesteps"),
        ("diffusion", "timestep_sampler"),
        ("diffusion", "loss_weight"),
        ("train", "batch_size"),
        ("train", "steps"),
        ("train", "momentum"),
        ("sampling", "grid_images"),
        ("sampling", "ddim_steps"),
    ];

    /// The text of experiment file number `index` (modulo their count), in name order.
    fn experiment_text(index: usize) -> String {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && !is_benchmark_file(p))
            .collect();
        files.sort();
        std::fs::read_to_string(&files[index % files.len()]).unwrap()
    }

    /// A parsed config validates, builds its schedules and network plan and round-trips; an
    /// error names `key`, the setting that was given an odd value.
    fn check_parse(text: &str, key: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        match RunConfig::parse(text) {
            Ok(config) => {
                config.validate().unwrap();
                config.model.resolve().unwrap().forward_flops();
                config.warnings();
                proptest::prop_assert_eq!(RunConfig::parse(&config.to_toml()).unwrap(), config);
            }
            Err(e) => {
                let message = format!("{e:#}");
                proptest::prop_assert!(message.contains(key), "{key}: {message}");
            }
        }
        Ok(())
    }

    #[test]
    fn settings_that_do_not_complete_within_the_run_are_warned_about() {
        let config = RunConfig::parse(
            "[model]\npreset = \"tiny\"\n[train]\nsteps = 100\nwarmup_steps = 500\n\
             momentum = { beta_end = 0.5, k_start = 10, k_end = 90, shape = \"linear\", \
             compensation = \"none\" }\n",
        )
        .unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("train.warmup_steps (500)"));
    }

    #[test]
    fn differences_name_each_changed_setting_and_ignore_the_harmless_ones() {
        let a = RunConfig::parse("[model]\npreset = \"tiny\"\n").unwrap();
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.train.steps += 10;
        b.train.log_every += 1;
        b.sampling.grid_images += 1;
        assert!(a.differences(&b).is_empty());
        b.train.lr *= 2.0;
        b.model.dropout = Some(0.3);
        let diff = a.differences(&b);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(
            diff[0].starts_with("model.dropout: null -> 0.3"),
            "{diff:?}"
        );
        assert!(
            diff[1].starts_with("train.lr: 0.0002 -> 0.0004"),
            "{diff:?}"
        );
        // With a cosine decay the run's length sets the rates, so it may not change freely.
        let mut cosine = a.clone();
        cosine.train.lr_decay = crate::lr::LrDecay::Cosine { min_lr: 0.0 };
        let mut longer = cosine.clone();
        longer.train.steps += 10;
        assert_eq!(cosine.differences(&longer).len(), 1);
    }
}
