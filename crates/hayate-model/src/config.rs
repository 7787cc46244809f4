use crate::DownsamplePadding;
use serde::{Deserialize, Serialize};

/// Configuration of a [`UNet`](crate::UNet): the DDPM (Ho et al. 2020) layout, with the
/// widths, depths and attention placement of ADM (Dhariwal & Nichol 2021) as options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Side length of the square input images, in pixels.
    pub resolution: usize,
    /// Channels of the input and output images.
    #[serde(default = "default_image_channels")]
    pub image_channels: usize,
    /// Channels of the first level; level `i` has `base_channels * channel_mult[i]`.
    pub base_channels: usize,
    /// Width multiplier of each level; each level after the first halves the resolution.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down (the way up has one more, as in DDPM).
    pub num_res_blocks: usize,
    /// Resolutions (in pixels) at which a self-attention block follows each residual block.
    pub attention_resolutions: Vec<usize>,
    /// Dropout probability inside the residual blocks (active only in training).
    pub dropout: f64,
    /// Groups of every GroupNorm; each level's width must be a multiple of it.
    #[serde(default = "default_norm_groups")]
    pub norm_groups: usize,
    /// Heads of every attention block (ignored when `head_channels` is set).
    #[serde(default = "default_num_heads")]
    pub num_heads: usize,
    /// Channels per attention head: a block of width `c` gets `c / head_channels` heads (ADM's
    /// `num_head_channels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_channels: Option<usize>,
    /// Feed the timestep to the residual blocks as a scale and shift of their second norm (ADM's
    /// `use_scale_shift_norm`) instead of adding it before that norm (DDPM).
    #[serde(default)]
    pub scale_shift_norm: bool,
    /// Change resolution with residual blocks that pool or upsample inside (ADM's
    /// `resblock_updown`, from BigGAN) instead of a strided or an upsampling convolution.
    #[serde(default)]
    pub resblock_updown: bool,
    /// Classes of a class-conditional model, 0 for an unconditional one. A conditional model
    /// embeds the label (one extra row stands for "no label", used for classifier-free guidance)
    /// and adds it to the timestep embedding, as ADM does.
    #[serde(default)]
    pub num_classes: usize,
    /// Epsilon of every GroupNorm (the original DDPM code and the weights diffusers publishes
    /// for it use 1e-6).
    #[serde(
        default = "default_norm_eps",
        skip_serializing_if = "is_default_norm_eps"
    )]
    pub norm_eps: f64,
    /// Where the strided downsampling convolutions pad (unused with `resblock_updown`).
    #[serde(default, skip_serializing_if = "is_default_padding")]
    pub downsample_padding: DownsamplePadding,
}

fn default_norm_eps() -> f64 {
    1e-5
}

fn is_default_norm_eps(eps: &f64) -> bool {
    *eps == default_norm_eps()
}

fn is_default_padding(padding: &DownsamplePadding) -> bool {
    *padding == DownsamplePadding::default()
}

fn default_num_heads() -> usize {
    1
}

fn default_image_channels() -> usize {
    3
}

fn default_norm_groups() -> usize {
    32
}

/// A [`UNetConfig`] that cannot build a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfigError(pub String);

impl std::fmt::Display for ModelConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid model config: {}", self.0)
    }
}

impl std::error::Error for ModelConfigError {}

/// One residual block of the plan: its input and output widths and whether attention follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockPlan {
    pub in_channels: usize,
    pub out_channels: usize,
    pub resolution: usize,
    pub attention: bool,
}

/// The network's shape, derived once from the config so that `init` and the FLOP count walk
/// the same structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Per level, the residual blocks on the way down, then whether a downsample follows.
    pub down: Vec<(Vec<BlockPlan>, bool)>,
    /// Width (and resolution) of the middle blocks.
    pub middle: (usize, usize),
    /// Per level from the bottom, the residual blocks on the way up, then whether an upsample
    /// follows.
    pub up: Vec<(Vec<BlockPlan>, bool)>,
}

impl Plan {
    /// The width of every attention block, the middle one included.
    pub fn attention_widths(&self) -> impl Iterator<Item = usize> + '_ {
        self.down
            .iter()
            .chain(&self.up)
            .flat_map(|(blocks, _)| blocks)
            .filter(|b| b.attention)
            .map(|b| b.out_channels)
            .chain(std::iter::once(self.middle.0))
    }
}

/// One layer of a UNet's forward pass, with its shapes for one image (see [`UNetConfig::layers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layer {
    /// A 2-D convolution with a square `kernel` (padding `kernel / 2`) at `stride`, on an
    /// input of `resolution` x `resolution`.
    Conv {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Kernel side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Input side.
        resolution: usize,
    },
    /// A dense layer on one vector per image.
    Linear {
        /// Input width.
        inputs: usize,
        /// Output width.
        outputs: usize,
    },
    /// A GroupNorm over `channels` at `resolution`, followed by SiLU where `silu`.
    GroupNorm {
        /// Channels.
        channels: usize,
        /// Side of the map.
        resolution: usize,
        /// Whether SiLU follows.
        silu: bool,
    },
    /// A whole attention block (GroupNorm, the q, k, v and output projections, and
    /// softmax(q k^T / sqrt(d)) v over `resolution`^2 positions in `heads` heads), as one layer
    /// so that a profile times the model's own block.
    Attention {
        /// Channels (all heads together).
        channels: usize,
        /// Side of the map.
        resolution: usize,
        /// Heads.
        heads: usize,
    },
}

impl Layer {
    /// FLOPs (multiply-adds times two) of the layer on one image; zero for a norm.
    pub fn flops(&self) -> u64 {
        match *self {
            Self::Conv {
                in_channels,
                out_channels,
                kernel,
                stride,
                resolution,
            } => {
                let out = resolution.div_ceil(stride);
                2 * (in_channels * out_channels * kernel * kernel * out * out) as u64
            }
            Self::Linear { inputs, outputs } => 2 * (inputs * outputs) as u64,
            Self::GroupNorm { .. } => 0,
            Self::Attention {
                channels,
                resolution,
                ..
            } => {
                let (hw, c) = ((resolution * resolution) as u64, channels as u64);
                4 * 2 * c * c * hw + 2 * 2 * hw * hw * c
            }
        }
    }
}

impl UNetConfig {
    /// The DDPM CIFAR-10 model: 128 channels, multipliers (1, 2, 2, 2), two residual blocks per
    /// level, attention at 16x16, dropout 0.1 (35.7M parameters).
    pub fn ddpm_cifar10() -> Self {
        Self {
            resolution: 32,
            image_channels: 3,
            base_channels: 128,
            channel_mult: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attention_resolutions: vec![16],
            dropout: 0.1,
            norm_groups: 32,
            num_heads: 1,
            head_channels: None,
            scale_shift_norm: false,
            resblock_updown: false,
            num_classes: 0,
            norm_eps: default_norm_eps(),
            downsample_padding: DownsamplePadding::Both,
        }
    }

    /// ADM's class-conditional ImageNet 64x64 model (Dhariwal & Nichol 2021, guided-diffusion's
    /// released flags): 192 channels, multipliers (1, 2, 3, 4), three residual blocks per level,
    /// attention at 32, 16 and 8 with 64 channels per head, scale-shift norm, resampling residual
    /// blocks, dropout 0.1, 1000 classes. It predicts the noise only (3 output channels, where
    /// ADM also learns the variance with 6).
    pub fn adm_imagenet64() -> Self {
        Self {
            resolution: 64,
            image_channels: 3,
            base_channels: 192,
            channel_mult: vec![1, 2, 3, 4],
            num_res_blocks: 3,
            attention_resolutions: vec![32, 16, 8],
            dropout: 0.1,
            norm_groups: 32,
            num_heads: 4,
            head_channels: Some(64),
            scale_shift_norm: true,
            resblock_updown: true,
            num_classes: 1000,
            norm_eps: default_norm_eps(),
            downsample_padding: DownsamplePadding::Both,
        }
    }

    /// ADM's class-conditional ImageNet 128x128 model: 256 channels, multipliers
    /// (1, 1, 2, 3, 4), two residual blocks per level, attention at 32, 16 and 8 with 4 heads,
    /// scale-shift norm, resampling residual blocks, 1000 classes; noise prediction only, as
    /// [`UNetConfig::adm_imagenet64`].
    pub fn adm_imagenet128() -> Self {
        Self {
            resolution: 128,
            base_channels: 256,
            channel_mult: vec![1, 1, 2, 3, 4],
            num_res_blocks: 2,
            head_channels: None,
            dropout: 0.0,
            ..Self::adm_imagenet64()
        }
    }

    /// A small 32x32 model for tests and CPU experiments: 32 channels, two levels, one residual
    /// block per level, attention at 16x16.
    pub fn tiny() -> Self {
        Self {
            resolution: 32,
            image_channels: 3,
            base_channels: 32,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![16],
            dropout: 0.0,
            norm_groups: 8,
            num_heads: 1,
            head_channels: None,
            scale_shift_norm: false,
            resblock_updown: false,
            num_classes: 0,
            norm_eps: default_norm_eps(),
            downsample_padding: DownsamplePadding::Both,
        }
    }

    /// The preset with this name (see [`UNetConfig::PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "ddpm_cifar10" => Some(Self::ddpm_cifar10()),
            "tiny" => Some(Self::tiny()),
            "adm_imagenet64" => Some(Self::adm_imagenet64()),
            "adm_imagenet128" => Some(Self::adm_imagenet128()),
            _ => None,
        }
    }

    /// Names of the presets that [`UNetConfig::preset`] knows.
    pub const PRESETS: [&'static str; 4] =
        ["ddpm_cifar10", "tiny", "adm_imagenet64", "adm_imagenet128"];

    /// Attention heads of a block of width `channels`.
    pub fn heads(&self, channels: usize) -> usize {
        match self.head_channels {
            Some(per_head) => channels / per_head.max(1),
            None => self.num_heads,
        }
    }

    /// Width of the timestep embedding (4x the base width, as in DDPM).
    pub fn time_embed_dim(&self) -> usize {
        4 * self.base_channels
    }

    /// Checks that the config describes a network that can be built.
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        let err = |m: String| Err(ModelConfigError(m));
        if self.channel_mult.is_empty() {
            return err("channel_mult must list at least one level".into());
        }
        if self.base_channels == 0 || self.channel_mult.contains(&0) {
            return err("base_channels and every channel_mult must be positive".into());
        }
        // Bounds far beyond any real network, so that a typo gives an error instead of an
        // overflow or an allocation of terabytes.
        for (name, value, max) in [
            ("base_channels", self.base_channels, 8192),
            (
                "channel_mult entries",
                *self.channel_mult.iter().max().expect("non-empty"),
                64,
            ),
            (
                "the number of channel_mult levels",
                self.channel_mult.len(),
                12,
            ),
            ("num_res_blocks", self.num_res_blocks, 64),
            ("image_channels", self.image_channels, 64),
            ("resolution", self.resolution, 8192),
            ("num_heads", self.num_heads, 1024),
            ("head_channels", self.head_channels.unwrap_or(1), 8192),
            ("num_classes", self.num_classes, 1_000_000),
        ] {
            if value > max {
                return err(format!("{name} ({value}) must be at most {max}"));
            }
        }
        if !self.base_channels.is_multiple_of(2) {
            return err(format!(
                "base_channels ({}) must be even for the sinusoidal timestep embedding",
                self.base_channels
            ));
        }
        if self.num_res_blocks == 0 {
            return err("num_res_blocks must be at least 1".into());
        }
        if self.image_channels == 0 {
            return err("image_channels must be positive".into());
        }
        if self.norm_groups == 0 {
            return err("norm_groups must be positive".into());
        }
        for width in std::iter::once(1).chain(self.channel_mult.iter().copied()) {
            let c = self.base_channels * width;
            if !c.is_multiple_of(self.norm_groups) {
                return err(format!(
                    "width {c} (base_channels {} x channel_mult {width}) is not a multiple of \
                     norm_groups ({})",
                    self.base_channels, self.norm_groups
                ));
            }
        }
        let levels = self.channel_mult.len() as u32;
        let divisor = 1usize << (levels - 1);
        if self.resolution == 0 || !self.resolution.is_multiple_of(divisor) {
            return err(format!(
                "resolution {} must be a positive multiple of {divisor} for the {levels} levels \
                 of channel_mult",
                self.resolution
            ));
        }
        let reachable: Vec<usize> = (0..levels).map(|i| self.resolution >> i).collect();
        if let Some(r) = self
            .attention_resolutions
            .iter()
            .find(|r| !reachable.contains(r))
        {
            return err(format!(
                "attention_resolutions: {r} is not one of the levels' resolutions {reachable:?} \
                 (resolution {} halved per level of channel_mult)",
                self.resolution
            ));
        }
        if self.num_heads == 0 || self.head_channels == Some(0) {
            return err("num_heads and head_channels must be positive".into());
        }
        for c in self.plan().attention_widths() {
            let heads = self.heads(c);
            let uneven = self.head_channels.is_some_and(|h| !c.is_multiple_of(h));
            if heads == 0 || !c.is_multiple_of(heads) || uneven {
                let split = self
                    .head_channels
                    .map_or(format!("num_heads {}", self.num_heads), |h| {
                        format!("heads of head_channels {h}")
                    });
                return err(format!(
                    "an attention block of width {c} (base_channels x channel_mult, at \
                     attention_resolutions) cannot be split into {split}"
                ));
            }
        }
        if !(self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return err(format!("norm_eps {} must be in (0, 1)", self.norm_eps));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return err(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }

    pub(crate) fn plan(&self) -> Plan {
        let ch = self.base_channels;
        let levels = self.channel_mult.len();
        let mut down = Vec::with_capacity(levels);
        // Widths of the skip connections, in the order the down path produces them.
        let mut skips = vec![ch];
        let mut current = ch;
        let mut resolution = self.resolution;
        for (level, mult) in self.channel_mult.iter().enumerate() {
            let out = ch * mult;
            let attention = self.attention_resolutions.contains(&resolution);
            let mut blocks = Vec::with_capacity(self.num_res_blocks);
            for _ in 0..self.num_res_blocks {
                blocks.push(BlockPlan {
                    in_channels: current,
                    out_channels: out,
                    resolution,
                    attention,
                });
                current = out;
                skips.push(current);
            }
            let downsample = level + 1 != levels;
            if downsample {
                skips.push(current);
                resolution /= 2;
            }
            down.push((blocks, downsample));
        }
        let middle = (current, resolution);
        let mut up = Vec::with_capacity(levels);
        for (level, mult) in self.channel_mult.iter().enumerate().rev() {
            let out = ch * mult;
            let attention = self.attention_resolutions.contains(&resolution);
            let mut blocks = Vec::with_capacity(self.num_res_blocks + 1);
            for _ in 0..=self.num_res_blocks {
                let skip = skips
                    .pop()
                    .expect("the down path yields one skip per up block");
                blocks.push(BlockPlan {
                    in_channels: current + skip,
                    out_channels: out,
                    resolution,
                    attention,
                });
                current = out;
            }
            let upsample = level != 0;
            if upsample {
                resolution *= 2;
            }
            up.push((blocks, upsample));
        }
        Plan { down, middle, up }
    }

    /// Multiply-adds times two (FLOPs) of one forward pass on one image, counting convolutions,
    /// linear layers and attention matrix products; norms and activations are left out.
    pub fn forward_flops(&self) -> u64 {
        self.layers().iter().map(Layer::flops).sum()
    }

    /// Every layer of one forward pass in order, once per occurrence, with its shapes: what the
    /// FLOP count sums and what `hayate bench throughput --phases` times op by op. Elementwise
    /// work (residual sums, dropout, the timestep embedding's sinusoids) is left out.
    pub fn layers(&self) -> Vec<Layer> {
        let temb = self.time_embed_dim();
        let time_outputs = if self.scale_shift_norm { 2 } else { 1 };
        let conv = |in_channels, out_channels, kernel, resolution| Layer::Conv {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            resolution,
        };
        let norm = |channels, resolution, silu| Layer::GroupNorm {
            channels,
            resolution,
            silu,
        };
        // `input_resolution` differs from the block's own where it resamples (resblock_updown):
        // the first norm runs before the resampling, everything else after it.
        let res_block = |layers: &mut Vec<Layer>, b: &BlockPlan, input_resolution: usize| {
            let (i, o, r) = (b.in_channels, b.out_channels, b.resolution);
            layers.push(norm(i, input_resolution, true));
            layers.push(conv(i, o, 3, r));
            layers.push(Layer::Linear {
                inputs: temb,
                outputs: time_outputs * o,
            });
            layers.push(norm(o, r, true));
            layers.push(conv(o, o, 3, r));
            if i != o {
                layers.push(conv(i, o, 1, r));
            }
        };
        let attention = |layers: &mut Vec<Layer>, c: usize, r: usize| {
            layers.push(Layer::Attention {
                channels: c,
                resolution: r,
                heads: self.heads(c),
            });
        };
        let block = |layers: &mut Vec<Layer>, b: &BlockPlan| {
            res_block(layers, b, b.resolution);
            if b.attention {
                attention(layers, b.out_channels, b.resolution);
            }
        };
        // Either a 3x3 convolution (strided down, or after a nearest upsampling) or a residual
        // block that resamples.
        let resample = |layers: &mut Vec<Layer>, last: &BlockPlan, res: usize| {
            let c = last.out_channels;
            if self.resblock_updown {
                let plan = BlockPlan {
                    in_channels: c,
                    out_channels: c,
                    resolution: res,
                    attention: false,
                };
                res_block(layers, &plan, last.resolution);
            } else if res < last.resolution {
                layers.push(Layer::Conv {
                    in_channels: c,
                    out_channels: c,
                    kernel: 3,
                    stride: 2,
                    resolution: last.resolution,
                });
            } else {
                layers.push(conv(c, c, 3, res));
            }
        };
        let plan = self.plan();
        let ch = self.base_channels;
        let mut layers = vec![
            Layer::Linear {
                inputs: ch,
                outputs: temb,
            },
            Layer::Linear {
                inputs: temb,
                outputs: temb,
            },
            conv(self.image_channels, ch, 3, self.resolution),
        ];
        for (blocks, downsample) in &plan.down {
            blocks.iter().for_each(|b| block(&mut layers, b));
            if *downsample {
                resample(
                    &mut layers,
                    &blocks[blocks.len() - 1],
                    blocks[0].resolution / 2,
                );
            }
        }
        let (mc, mr) = plan.middle;
        let mid = BlockPlan {
            in_channels: mc,
            out_channels: mc,
            resolution: mr,
            attention: false,
        };
        res_block(&mut layers, &mid, mr);
        attention(&mut layers, mc, mr);
        res_block(&mut layers, &mid, mr);
        for (blocks, upsample) in &plan.up {
            blocks.iter().for_each(|b| block(&mut layers, b));
            if *upsample {
                resample(
                    &mut layers,
                    &blocks[blocks.len() - 1],
                    blocks[0].resolution * 2,
                );
            }
        }
        layers.push(norm(ch, self.resolution, true));
        layers.push(conv(ch, self.image_channels, 3, self.resolution));
        layers
    }
}
