use crate::DropoutMasks;
use crate::fused;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::AvgPoolOptions;
use serde::{Deserialize, Serialize};

/// A 3x3 convolution with "same" padding and the given stride.
pub(crate) fn conv3x3(cin: usize, cout: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

/// A 1x1 convolution (DDPM's "network in network" layer).
fn conv1x1(cin: usize, cout: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [1, 1]).init(device)
}

/// Convolutions that start at zero, so each residual branch starts as the identity (DDPM
/// scales these by 1e-10; ADM zeroes them).
pub(crate) fn zero_conv(cin: usize, cout: usize, kernel: usize, device: &Device) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_initializer(Initializer::Zeros)
        .init(device)
}

pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// Sinusoidal embedding of the timestep followed by a two-layer MLP, as in DDPM (or, built with
/// [`TimestepEmbedding::glide`], as in GLIDE, ADM and DiT).
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// Number of sinusoid frequencies (half the embedded width).
    half: usize,
    /// GLIDE's sinusoids, exp(-ln(10000) i / half) with the cosines first, instead of DDPM's,
    /// exp(-ln(10000) i / (half - 1)) with the sines first.
    glide: bool,
    dense0: Linear,
    dense1: Linear,
}

impl TimestepEmbedding {
    /// Embeds `base_channels`-wide sinusoids into `embed_dim` features (DDPM's embedding).
    pub fn new(base_channels: usize, embed_dim: usize, device: &Device) -> Self {
        Self {
            half: base_channels / 2,
            glide: false,
            dense0: LinearConfig::new(base_channels, embed_dim).init(device),
            dense1: LinearConfig::new(embed_dim, embed_dim).init(device),
        }
    }

    /// GLIDE's embedding of `frequency_dim`-wide sinusoids into `embed_dim` features, its
    /// weights drawn as DiT draws them (normal, std 0.02; biases zero).
    pub fn glide(frequency_dim: usize, embed_dim: usize, device: &Device) -> Self {
        let dense = |i: usize, o: usize| {
            let mut layer = LinearConfig::new(i, o)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device);
            layer.bias = Some(Param::from_tensor(Tensor::zeros([o], device)));
            layer
        };
        Self {
            half: frequency_dim / 2,
            glide: true,
            dense0: dense(frequency_dim, embed_dim),
            dense1: dense(embed_dim, embed_dim),
        }
    }

    /// # Shapes
    /// - `t`: `[batch]`, timesteps as floats in `[0, T)`
    /// - output: `[batch, embed_dim]`
    pub fn forward(&self, t: Tensor<1>) -> Tensor<2> {
        let [n] = t.dims();
        let half = self.half;
        // The frequencies are computed on the host in f64 so every backend sees the same ones.
        let denom = if self.glide {
            half as f64
        } else {
            (half.max(2) - 1) as f64
        };
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10000f64.ln()) * i as f64 / denom).exp() as f32)
            .collect();
        let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &t.device());
        let angles =
            t.cast(burn::tensor::FloatDType::F32).reshape([n, 1]) * freqs.reshape([1, half]);
        let waves = if self.glide {
            vec![angles.clone().cos(), angles.sin()]
        } else {
            vec![angles.clone().sin(), angles.cos()]
        };
        // The sinusoids in f32 (t near 1000 has no bf16 neighbours 1 apart), then the MLP in
        // its weights' type.
        let emb = Tensor::cat(waves, 1).cast(self.dense0.weight.val().dtype());
        self.dense1.forward(silu(self.dense0.forward(emb)))
    }
}

/// Where a strided downsampling convolution pads its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownsamplePadding {
    /// One pixel on every side, so each output pixel is centred on an even input pixel
    /// (guided-diffusion, diffusers' `downsample_padding = 1`).
    #[default]
    Both,
    /// One pixel after (bottom and right) only: TensorFlow's "SAME" for a stride of 2, as the
    /// original DDPM code ran it (diffusers' `downsample_padding = 0`, the DDPM weights it
    /// publishes).
    After,
}

/// How a residual block changes the resolution (ADM's `resblock_updown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// Keeps it.
    Keep,
    /// Halves it (2x2 average pooling).
    Down,
    /// Doubles it (nearest neighbour).
    Up,
}

impl Resample {
    fn code(self) -> usize {
        self as usize
    }

    fn from_code(code: usize) -> Self {
        match code {
            1 => Self::Down,
            2 => Self::Up,
            _ => Self::Keep,
        }
    }

    /// Applies the resampling without weights.
    pub fn apply(self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Keep => x,
            Self::Down => avg_pool2d(x, AvgPoolOptions::new([2, 2])),
            Self::Up => nearest_up(x),
        }
    }
}

/// Residual block: GroupNorm, SiLU, (resample), conv, timestep injection, GroupNorm, SiLU,
/// dropout, conv, with a 1x1 convolution on the skip path when the width changes. The timestep
/// is added (DDPM) or, with `scale_shift`, applied as a scale and shift after the second norm
/// (ADM's `use_scale_shift_norm`).
#[derive(Module, Debug)]
pub struct ResBlock {
    norm0: GroupNorm,
    conv0: Conv2d,
    time_proj: Linear,
    norm1: GroupNorm,
    /// Dropout probability, applied only in a training forward pass ([`DropoutMasks`]).
    dropout: f64,
    conv1: Conv2d,
    skip: Option<Conv2d>,
    scale_shift: bool,
    /// A [`Resample`] code (modules hold plain numbers, not enums).
    resample: usize,
}

/// The shape of a [`ResBlock`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResBlockConfig {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Width of the timestep embedding.
    pub time_dim: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Dropout probability.
    pub dropout: f64,
    /// Timestep as scale and shift after the second norm instead of a sum before it.
    pub scale_shift: bool,
    /// Resolution change inside the block.
    pub resample: Resample,
}

impl ResBlockConfig {
    /// Builds the block on `device`.
    pub fn init(&self, device: &Device) -> ResBlock {
        let time_out = if self.scale_shift { 2 } else { 1 } * self.cout;
        ResBlock {
            norm0: group_norm(self.groups, self.cin, self.eps, device),
            conv0: conv3x3(self.cin, self.cout, 1, device),
            time_proj: LinearConfig::new(self.time_dim, time_out).init(device),
            norm1: group_norm(self.groups, self.cout, self.eps, device),
            dropout: self.dropout,
            conv1: zero_conv(self.cout, self.cout, 3, device),
            skip: (self.cin != self.cout).then(|| conv1x1(self.cin, self.cout, device)),
            scale_shift: self.scale_shift,
            resample: self.resample.code(),
        }
    }
}

impl ResBlock {
    /// # Shapes
    /// - `x`: `[batch, cin, h, w]`
    /// - `temb`: `[batch, time_dim]`
    /// - output: `[batch, cout, h', w']`, `h' = h` (or `h / 2`, `2h` when resampling)
    ///
    /// Without dropout; [`ResBlock::forward_masked`] is the training form.
    pub fn forward(&self, x: Tensor<4>, temb: Tensor<2>) -> Tensor<4> {
        self.forward_masked(x, temb, None)
    }

    /// [`ResBlock::forward`] with the block's dropout drawn from `masks` (the next layer of the
    /// forward pass) when given.
    pub fn forward_masked(
        &self,
        x: Tensor<4>,
        temb: Tensor<2>,
        masks: Option<&mut DropoutMasks>,
    ) -> Tensor<4> {
        let resample = Resample::from_code(self.resample);
        let h = resample.apply(fused::group_norm(&self.norm0, x.clone(), true));
        let x = resample.apply(x);
        let h = fused::conv2d(&self.conv0, h);
        let [n, c, _, _] = h.dims();
        let t = self.time_proj.forward(silu(temb));
        let h = if self.scale_shift {
            let t = t.reshape([n as i64, 2 * c as i64, 1, 1]);
            let scale = t.clone().narrow(1, 0, c);
            let shift = t.narrow(1, c, c);
            silu(fused::group_norm(&self.norm1, h, false) * (scale + 1.0) + shift)
        } else {
            fused::group_norm(&self.norm1, h + t.reshape([n as i64, c as i64, 1, 1]), true)
        };
        let h = match masks {
            Some(masks) => masks.apply(h, self.dropout),
            None => h,
        };
        let h = fused::conv2d(&self.conv1, h);
        let skip = match &self.skip {
            Some(conv) => fused::conv2d(conv, x),
            None => x,
        };
        skip + h
    }
}

/// Nearest-neighbour doubling by broadcasting: each pixel becomes a 2x2 block.
fn nearest_up(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h, 1, w, 1])
        .expand([n, c, h, 2, w, 2])
        .reshape([n, c, 2 * h, 2 * w])
}

/// Multi-head self-attention over all pixels, with a residual connection (DDPM's AttnBlock
/// with one head; ADM's AttentionBlock with several).
#[derive(Module, Debug)]
pub struct AttentionBlock {
    norm: GroupNorm,
    query: Conv2d,
    key: Conv2d,
    value: Conv2d,
    out: Conv2d,
    heads: usize,
}

impl AttentionBlock {
    /// Attention over `channels`-wide feature maps with `heads` heads (`channels` must be a
    /// multiple of `heads`), after a GroupNorm of `groups` groups and epsilon `eps`.
    pub fn new(channels: usize, heads: usize, groups: usize, eps: f64, device: &Device) -> Self {
        assert!(
            heads > 0 && channels.is_multiple_of(heads),
            "{channels} channels cannot be split into {heads} heads"
        );
        Self {
            norm: group_norm(groups, channels, eps, device),
            query: conv1x1(channels, channels, device),
            key: conv1x1(channels, channels, device),
            value: conv1x1(channels, channels, device),
            out: zero_conv(channels, channels, 1, device),
            heads,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`
    /// - output: `[batch, channels, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let (heads, d) = (self.heads, c / self.heads);
        let normed = fused::group_norm(&self.norm, x.clone(), false);
        // Each head sees its own slice of the channels.
        let split = |t: Tensor<4>| t.reshape([n, heads, d, h * w]);
        let q = split(fused::conv2d(&self.query, normed.clone())); // [n, heads, d, hw]
        let k = split(fused::conv2d(&self.key, normed.clone()));
        let v = split(fused::conv2d(&self.value, normed));
        let attended = fused::attention(q, k, v, 1.0 / (d as f64).sqrt()).reshape([n, c, h, w]);
        x + fused::conv2d(&self.out, attended)
    }
}

/// Halves the resolution with a strided 3x3 convolution.
#[derive(Module, Debug)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    /// A downsampler for `channels`-wide maps, padded as `padding` says.
    pub fn new(channels: usize, padding: DownsamplePadding, device: &Device) -> Self {
        let conv = match padding {
            DownsamplePadding::Both => conv3x3(channels, channels, 2, device),
            DownsamplePadding::After => Conv2dConfig::new([channels, channels], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
                .init(device),
        };
        Self { conv }
    }

    /// # Shapes
    /// - `x`: `[batch, channels, h, w]` (h, w even)
    /// - output: `[batch, channels, h / 2, w / 2]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        fused::conv2d(&self.conv, x)
    }
}

/// Doubles the resolution (nearest neighbour), then a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    /// An upsampler for `channels`-wide maps.
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            conv: conv3x3(channels, channels, 1, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`
    /// - output: `[batch, channels, 2h, 2w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        fused::conv2d(&self.conv, nearest_up(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let (a, b) = (
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap(),
        );
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn each_attention_head_attends_over_its_own_channels() {
        let device = Device::flex();
        let (n, c, side, heads) = (2, 8, 3, 2);
        let mut block = AttentionBlock::new(c, heads, 2, 1e-5, &device);
        // A non-zero output projection, so the attention shows in the output.
        block.out = conv1x1(c, c, &device);
        let x = Tensor::<4>::random(
            [n, c, side, side],
            burn::tensor::Distribution::Default,
            &device,
        );
        let hw = side * side;
        let d = c / heads;
        let normed = block.norm.forward(x.clone());
        let flat = |t: Tensor<4>| t.reshape([n, c, hw]);
        let (q, k, v) = (
            flat(block.query.forward(normed.clone())),
            flat(block.key.forward(normed.clone())),
            flat(block.value.forward(normed)),
        );
        // Each head separately, from its slice of the channels, then concatenated.
        let per_head: Vec<Tensor<3>> = (0..heads)
            .map(|h| {
                let slice = |t: &Tensor<3>| t.clone().narrow(1, h * d, d);
                let logits = slice(&q).swap_dims(1, 2).matmul(slice(&k)) / (d as f64).sqrt();
                slice(&v).matmul(burn::tensor::activation::softmax(logits, 2).swap_dims(1, 2))
            })
            .collect();
        let attended = Tensor::cat(per_head, 1).reshape([n, c, side, side]);
        let want = x.clone() + block.out.forward(attended);
        let two = block.forward(x.clone());
        let diff = close(two.clone(), want);
        assert!(diff < 1e-5, "{diff}");
        // One head over all channels is a different function.
        block.heads = 1;
        let diff = close(block.forward(x), two);
        assert!(diff > 1e-4, "{diff}");
    }

    #[test]
    fn scale_shift_blocks_apply_the_timestep_after_the_norm() {
        let device = Device::flex();
        let (n, c, side, temb) = (2, 4, 4, 6);
        let mut block = ResBlockConfig {
            cin: c,
            cout: c,
            time_dim: temb,
            groups: 2,
            eps: 1e-5,
            dropout: 0.0,
            scale_shift: true,
            resample: Resample::Down,
        }
        .init(&device);
        block.conv1 = conv3x3(c, c, 1, &device);
        let x = Tensor::<4>::random(
            [n, c, side, side],
            burn::tensor::Distribution::Default,
            &device,
        );
        let t = Tensor::<2>::random([n, temb], burn::tensor::Distribution::Default, &device);
        // ADM: norm, SiLU, pool (branch and skip alike), conv; then norm(h) (1 + scale) + shift
        // with the first half of the projection as the scale.
        let pooled = Resample::Down.apply(silu(block.norm0.forward(x.clone())));
        let h = block.conv0.forward(pooled);
        let proj = block
            .time_proj
            .forward(silu(t.clone()))
            .reshape([n, 2 * c, 1, 1]);
        let (scale, shift) = (proj.clone().narrow(1, 0, c), proj.narrow(1, c, c));
        let h = block.norm1.forward(h) * (scale + 1.0) + shift;
        let want = Resample::Down.apply(x.clone()) + block.conv1.forward(silu(h));
        let got = block.forward(x, t);
        assert_eq!(got.dims(), [n, c, side / 2, side / 2]);
        let diff = close(got, want);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn resampling_pools_and_repeats() {
        let device = Device::flex();
        let x = Tensor::<4>::from_floats([[[[1.0, 3.0], [5.0, 7.0]]]], &device);
        let down = Resample::Down
            .apply(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(down, vec![4.0]);
        let up = Resample::Up
            .apply(x)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(&up[..4], &[1.0, 1.0, 3.0, 3.0]);
        assert_eq!(&up[8..12], &[5.0, 5.0, 7.0, 7.0]);
    }
}
