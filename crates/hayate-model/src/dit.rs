//! A diffusion transformer: DiT (Peebles & Xie 2023, "Scalable Diffusion Models with
//! Transformers"), on pixels rather than on a VAE's latents.
//!
//! The image is cut into `patch_size` x `patch_size` patches, each embedded linearly, plus fixed
//! 2-D sine-cosine position embeddings (MAE's). The timestep (and the class) become one
//! conditioning vector c, and every transformer block is adaLN-Zero conditioned on it: a
//! zero-initialised linear layer of SiLU(c) gives the shift, scale and gate of the attention
//! and of the MLP branch, so each block starts as the identity. A last adaLN-modulated linear
//! layer (zero-initialised) maps every token back to its patch. The layer shapes, the
//! initialisation and the tensor names of [`DiT::from_reference_tensors`] follow the official
//! code (github.com/facebookresearch/DiT, `models.py`), with `learn_sigma = False`: the network
//! predicts the target only, as hayate's UNet does.

use crate::ModelConfigError;
use crate::blocks::TimestepEmbedding;
use crate::diffusers::{ConversionError, HostTensor, Layout, Name, export_named, load_named};
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu_approximate, silu};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Width of the timestep's sinusoidal embedding before its MLP (DiT's
/// `frequency_embedding_size`).
pub const FREQUENCY_DIM: usize = 256;

/// Epsilon of DiT's layer norms (which have no learned scale or shift).
const NORM_EPS: f64 = 1e-6;

/// Configuration of a [`DiT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiTConfig {
    /// Side length of the square input images, in pixels.
    pub resolution: usize,
    /// Channels of the input and output images.
    #[serde(default = "default_image_channels")]
    pub image_channels: usize,
    /// Side of the square patches that become tokens (`(resolution / patch_size)^2` tokens).
    pub patch_size: usize,
    /// Width of every token.
    pub hidden_size: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads of every block (`hidden_size` must divide by it).
    pub num_heads: usize,
    /// Width of the MLP's hidden layer over `hidden_size` (DiT: 4).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Classes of a class-conditional model, 0 for an unconditional one. A conditional model
    /// embeds the label (one extra row stands for "no label", for classifier-free guidance) and
    /// adds it to the timestep's embedding, as DiT does.
    #[serde(default)]
    pub num_classes: usize,
}

fn default_image_channels() -> usize {
    3
}

fn default_mlp_ratio() -> f64 {
    4.0
}

impl DiTConfig {
    /// DiT-S/2 (384 wide, 12 blocks, 6 heads, patch 2) on 32x32 RGB pixels, unconditional:
    /// the size the consistency study compares with the DDPM UNet (32.5M parameters against
    /// 35.7M).
    pub fn dit_s2_cifar10() -> Self {
        Self {
            resolution: 32,
            image_channels: 3,
            patch_size: 2,
            hidden_size: 384,
            depth: 12,
            num_heads: 6,
            mlp_ratio: 4.0,
            num_classes: 0,
        }
    }

    /// A small DiT for tests and CPU experiments: 64 wide, 4 blocks, 4 heads, patch 2, on 32x32
    /// images.
    pub fn dit_tiny() -> Self {
        Self {
            resolution: 32,
            image_channels: 3,
            patch_size: 2,
            hidden_size: 64,
            depth: 4,
            num_heads: 4,
            mlp_ratio: 4.0,
            num_classes: 0,
        }
    }

    /// The preset with this name (see [`DiTConfig::PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "dit_s2_cifar10" => Some(Self::dit_s2_cifar10()),
            "dit_tiny" => Some(Self::dit_tiny()),
            _ => None,
        }
    }

    /// Names of the presets that [`DiTConfig::preset`] knows.
    pub const PRESETS: [&'static str; 2] = ["dit_s2_cifar10", "dit_tiny"];

    /// Width of the MLP's hidden layer (Python's `int(hidden_size * mlp_ratio)`).
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Tokens of an image at the configured resolution.
    pub fn tokens(&self) -> usize {
        (self.resolution / self.patch_size.max(1)).pow(2)
    }

    /// Checks that the config describes a network that can be built.
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        let err = |m: String| Err(ModelConfigError(m));
        // Bounds far beyond any real network, so that a typo gives an error instead of an
        // overflow or an allocation of terabytes.
        for (name, value, max) in [
            ("resolution", self.resolution, 8192),
            ("image_channels", self.image_channels, 64),
            ("patch_size", self.patch_size, 64),
            ("hidden_size", self.hidden_size, 16384),
            ("depth", self.depth, 256),
            ("num_heads", self.num_heads, 1024),
            ("num_classes", self.num_classes, 1_000_000),
        ] {
            if value == 0 && name != "num_classes" {
                return err(format!("{name} must be positive"));
            }
            if value > max {
                return err(format!("{name} ({value}) must be at most {max}"));
            }
        }
        if !self.resolution.is_multiple_of(self.patch_size) {
            return err(format!(
                "resolution {} must be a multiple of patch_size {}",
                self.resolution, self.patch_size
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return err(format!(
                "hidden_size {} cannot be split into num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        // The position embedding gives each grid axis a quarter of the width in sines and a
        // quarter in cosines.
        if !self.hidden_size.is_multiple_of(4) {
            return err(format!(
                "hidden_size {} must be a multiple of 4 for the 2-D sine-cosine position embedding",
                self.hidden_size
            ));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) || self.mlp_hidden() == 0 {
            return err(format!("mlp_ratio {} must be in (0, 64]", self.mlp_ratio));
        }
        Ok(())
    }

    /// Builds the network on `device`, initialised as DiT is: Xavier-uniform linear layers with
    /// zero biases, the patch embedding as a linear layer, normal (std 0.02) timestep MLP and
    /// label table, and zero adaLN modulations and output layer.
    ///
    /// # Panics
    /// If the config is invalid; call [`DiTConfig::validate`] first to get the reason as an
    /// error instead.
    pub fn init(&self, device: &Device) -> DiT {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let d = self.hidden_size;
        let (c, p) = (self.image_channels, self.patch_size);
        let mut patch_embed = Conv2dConfig::new([c, d], [p, p])
            .with_stride([p, p])
            .init(device);
        // DiT draws the patch embedding as the linear layer it is, fans C p^2 in and d out.
        patch_embed.weight = Initializer::XavierUniform { gain: 1.0 }.init_with(
            [d, c, p, p],
            Some(c * p * p),
            Some(d),
            device,
        );
        patch_embed.bias = Some(Param::from_tensor(Tensor::zeros([d], device)));
        let blocks = (0..self.depth)
            .map(|_| DiTBlock {
                qkv: xavier_linear(d, 3 * d, device),
                proj: xavier_linear(d, d, device),
                fc1: xavier_linear(d, self.mlp_hidden(), device),
                fc2: xavier_linear(self.mlp_hidden(), d, device),
                modulation: zero_linear(d, 6 * d, device),
                heads: self.num_heads,
            })
            .collect();
        DiT {
            patch_embed,
            time_embed: TimestepEmbedding::glide(FREQUENCY_DIM, d, device),
            label_embed: (self.num_classes > 0).then(|| {
                EmbeddingConfig::new(self.num_classes + 1, d)
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: 0.02,
                    })
                    .init(device)
            }),
            blocks,
            final_modulation: zero_linear(d, 2 * d, device),
            final_linear: zero_linear(d, p * p * c, device),
            resolution: self.resolution,
            patch_size: p,
            image_channels: c,
            hidden_size: d,
            num_classes: self.num_classes,
        }
    }

    /// Multiply-adds times two (FLOPs) of one forward pass on one image, counting the linear
    /// layers, the patch embedding and the attention matrix products; norms, activations and
    /// the softmax are left out (as [`UNetConfig::forward_flops`](crate::UNetConfig) does).
    pub fn forward_flops(&self) -> u64 {
        let d = self.hidden_size as u64;
        let tokens = self.tokens() as u64;
        let m = self.mlp_hidden() as u64;
        let patch = (self.patch_size * self.patch_size * self.image_channels) as u64;
        let linear = |i: u64, o: u64| 2 * i * o;
        let conditioning = linear(FREQUENCY_DIM as u64, d) + linear(d, d);
        let block = tokens * (linear(d, 3 * d) + linear(d, d) + linear(d, m) + linear(m, d))
            + 2 * 2 * tokens * tokens * d
            + linear(d, 6 * d);
        conditioning
            + tokens * linear(patch, d)
            + self.depth as u64 * block
            + linear(d, 2 * d)
            + tokens * linear(d, patch)
    }
}

/// A linear layer drawn as DiT draws its transformer layers: Xavier-uniform weight, zero bias.
fn xavier_linear(input: usize, output: usize, device: &Device) -> Linear {
    let mut layer = LinearConfig::new(input, output)
        .with_initializer(Initializer::XavierUniform { gain: 1.0 })
        .init(device);
    layer.bias = Some(Param::from_tensor(Tensor::zeros([output], device)));
    layer
}

/// A linear layer that starts at zero (adaLN-Zero's modulations, the output layer).
fn zero_linear(input: usize, output: usize, device: &Device) -> Linear {
    LinearConfig::new(input, output)
        .with_initializer(Initializer::Zeros)
        .init(device)
}

/// Layer norm over the last axis without a learned scale or shift.
fn layer_norm(x: Tensor<3>) -> Tensor<3> {
    // In f32 under bf16, as autocast runs it.
    let (x, dtype) = crate::precision::widen(x);
    let centred = x.clone() - x.mean_dim(2);
    let var = centred.clone().powi_scalar(2).mean_dim(2);
    (centred / var.add_scalar(NORM_EPS).sqrt()).cast(dtype)
}

/// adaLN's modulation: `x * (1 + scale) + shift`, `shift` and `scale` being `[n, 1, d]`.
fn modulate(x: Tensor<3>, shift: Tensor<3>, scale: Tensor<3>) -> Tensor<3> {
    x * scale.add_scalar(1.0) + shift
}

/// MAE's fixed 2-D sine-cosine position embedding of a `rows` x `cols` grid of `width`-wide
/// tokens, row-major: the first half of a token's width encodes its column, the second half its
/// row, each as sines then cosines of the position times 10000^(-k / (width / 4)). Computed on
/// the host in f64, so every backend sees the same numbers.
fn position_embedding(rows: usize, cols: usize, width: usize) -> Vec<f32> {
    let quarter = width / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = Vec::with_capacity(rows * cols * width);
    for i in 0..rows {
        for j in 0..cols {
            for pos in [j as f64, i as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}

/// A transformer block with adaLN-Zero conditioning.
#[derive(Module, Debug)]
struct DiTBlock {
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    /// SiLU(c) to the shift, scale and gate of the attention, then of the MLP.
    modulation: Linear,
    heads: usize,
}

impl DiTBlock {
    /// `x`: `[n, tokens, d]`; `c`: SiLU of the conditioning, `[n, d]`.
    fn forward(&self, x: Tensor<3>, c: Tensor<2>) -> Tensor<3> {
        let [n, _, d] = x.dims();
        let m = self.modulation.forward(c).reshape([n, 6, d]);
        let part = |k: usize| m.clone().narrow(1, k, 1);
        let h = modulate(layer_norm(x.clone()), part(0), part(1));
        let x = x + part(2) * self.attention(h);
        let h = modulate(layer_norm(x.clone()), part(3), part(4));
        x + part(5) * self.fc2.forward(gelu_approximate(self.fc1.forward(h)))
    }

    /// Multi-head self-attention over the tokens (timm's `Attention`, with biases on q, k, v).
    fn attention(&self, x: Tensor<3>) -> Tensor<3> {
        let [n, tokens, d] = x.dims();
        let heads = self.heads;
        let hd = d / heads;
        // [3, n, heads, hd, tokens]: each head channels first, as `fused::attention` takes it.
        let qkv = self
            .qkv
            .forward(x)
            .reshape([n, tokens, 3, heads, hd])
            .permute([2, 0, 3, 4, 1]);
        let part = |k: usize| qkv.clone().narrow(0, k, 1).reshape([n, heads, hd, tokens]);
        let (q, k, v) = (part(0), part(1), part(2));
        let attended = crate::fused::attention(q, k, v, 1.0 / (hd as f64).sqrt())
            .permute([0, 3, 1, 2])
            .reshape([n, tokens, d]);
        self.proj.forward(attended)
    }
}

/// DiT: predicts the noise (or v, or x_0) from a noisy image and its timestep, as
/// [`UNet`](crate::UNet) does, with a transformer over patches.
#[derive(Module, Debug)]
pub struct DiT {
    patch_embed: Conv2d,
    time_embed: TimestepEmbedding,
    /// Class embedding of a conditional model; row `num_classes` stands for "no label".
    label_embed: Option<Embedding>,
    blocks: Vec<DiTBlock>,
    final_modulation: Linear,
    final_linear: Linear,
    resolution: usize,
    patch_size: usize,
    image_channels: usize,
    hidden_size: usize,
    num_classes: usize,
}

impl DiT {
    /// The type of its patch embedding's weight: the type it computes in.
    pub(crate) fn first_weight_dtype(&self) -> burn::tensor::DType {
        self.patch_embed.weight.val().dtype()
    }

    /// Side length of the images the network was built for.
    pub fn resolution(&self) -> usize {
        self.resolution
    }

    /// Classes of a class-conditional network (0: unconditional).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Predicts the network target for noisy images `x` at timesteps `t`.
    ///
    /// # Shapes
    /// - `x`: `[batch, image_channels, height, width]`, both sides multiples of the patch size
    ///   (the position embedding is computed for the grid it gets)
    /// - `t`: `[batch]`, timesteps as floats in `[0, T)`
    /// - output: the same shape as `x`
    ///
    /// A class-conditional model predicts without a label here; see
    /// [`DiT::forward_labelled`].
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward_labelled(x, t, None)
    }

    /// [`DiT::forward`] with class labels: `labels` is `[batch]`, each in `0..=num_classes`
    /// (`num_classes` meaning "no label"); `None` means no label for every image. An
    /// unconditional model ignores labels.
    pub fn forward_labelled(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        labels: Option<Tensor<1, Int>>,
    ) -> Tensor<4> {
        let [n, _, height, width] = x.dims();
        let (p, d, c) = (self.patch_size, self.hidden_size, self.image_channels);
        let (rows, cols) = (height / p, width / p);
        let tokens = rows * cols;
        let device = x.device();
        let positions = Tensor::<1>::from_data(
            TensorData::new(position_embedding(rows, cols, d), [tokens * d]),
            &device,
        )
        .cast(self.first_weight_dtype())
        .reshape([1, tokens, d]);
        let mut h = self
            .patch_embed
            .forward(x)
            .reshape([n, d, tokens])
            .swap_dims(1, 2)
            + positions;
        let mut cond = self.time_embed.forward(t);
        if let Some(embed) = &self.label_embed {
            let labels =
                labels.unwrap_or_else(|| Tensor::full([n], self.num_classes as i64, &device));
            cond = cond + embed.forward(labels.reshape([n, 1])).reshape([n, d]);
        }
        let cond = silu(cond);
        for block in &self.blocks {
            h = block.forward(h, cond.clone());
        }
        let m = self.final_modulation.forward(cond).reshape([n, 2, d]);
        let h = modulate(layer_norm(h), m.clone().narrow(1, 0, 1), m.narrow(1, 1, 1));
        // [n, tokens, p * p * c] with the channel fastest, then the patch's column, then its
        // row: DiT's unpatchify, einsum "nhwpqc->nchpwq".
        self.final_linear
            .forward(h)
            .reshape([n, rows, cols, p, p, c])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([n, c, height, width])
    }

    /// The network's weights under the official DiT code's names (its `state_dict()` with
    /// `learn_sigma = False`), in PyTorch's layouts, `pos_embed` included.
    pub fn to_reference_tensors(
        &self,
        config: &DiTConfig,
    ) -> Result<std::collections::BTreeMap<String, HostTensor>, ConversionError> {
        let mut out = export_named(self, &reference_names(config))?;
        let (rows, d) = (config.resolution / config.patch_size, config.hidden_size);
        out.insert(
            POSITION_TENSOR.into(),
            HostTensor {
                shape: vec![1, rows * rows, d],
                values: position_embedding(rows, rows, d),
            },
        );
        Ok(out)
    }

    /// Builds the network `config` describes on `device` with the weights of the official DiT
    /// code's `state_dict()` (`learn_sigma = False`, so `final_layer.linear` has
    /// `patch_size^2 * image_channels` outputs). Every tensor must be there with its shape, and
    /// no other; `pos_embed`, which DiT stores though it is fixed, must equal the sine-cosine
    /// embedding hayate computes.
    pub fn from_reference_tensors(
        config: &DiTConfig,
        mut tensors: HashMap<String, HostTensor>,
        device: &Device,
    ) -> Result<Self, ConversionError> {
        config
            .validate()
            .map_err(|e| ConversionError(e.to_string()))?;
        let (rows, d) = (config.resolution / config.patch_size, config.hidden_size);
        match tensors.remove(POSITION_TENSOR) {
            None => {
                return Err(ConversionError(format!(
                    "missing tensors: {POSITION_TENSOR}"
                )));
            }
            Some(t) => {
                let want = position_embedding(rows, rows, d);
                let close = t.values.len() == want.len()
                    && t.values
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| (a - b).abs() <= 1e-5);
                if !close {
                    return Err(ConversionError(format!(
                        "{POSITION_TENSOR} (shape {:?}) is not the fixed sine-cosine embedding \
                         of a {rows}x{rows} grid of width {d}",
                        t.shape
                    )));
                }
            }
        }
        let mut model = config.init(device);
        load_named(&mut model, &reference_names(config), tensors)?;
        Ok(model)
    }
}

/// The official code's fixed position embedding, stored as a parameter.
const POSITION_TENSOR: &str = "pos_embed";

/// Every weight of the network `config` builds, under hayate's and the official code's names.
fn reference_names(config: &DiTConfig) -> Vec<Name> {
    let mut out = Vec::new();
    let mut linear = |h: &str, r: &str| {
        out.push(Name::new(
            format!("{h}.weight"),
            format!("{r}.weight"),
            Layout::Transposed,
        ));
        out.push(Name::new(
            format!("{h}.bias"),
            format!("{r}.bias"),
            Layout::Same,
        ));
    };
    linear("time_embed.dense0", "t_embedder.mlp.0");
    linear("time_embed.dense1", "t_embedder.mlp.2");
    for i in 0..config.depth {
        for (h, r) in [
            ("qkv", "attn.qkv"),
            ("proj", "attn.proj"),
            ("fc1", "mlp.fc1"),
            ("fc2", "mlp.fc2"),
            ("modulation", "adaLN_modulation.1"),
        ] {
            linear(&format!("blocks.{i}.{h}"), &format!("blocks.{i}.{r}"));
        }
    }
    linear("final_modulation", "final_layer.adaLN_modulation.1");
    linear("final_linear", "final_layer.linear");
    out.push(Name::new(
        "patch_embed.weight",
        "x_embedder.proj.weight",
        Layout::Same,
    ));
    out.push(Name::new(
        "patch_embed.bias",
        "x_embedder.proj.bias",
        Layout::Same,
    ));
    if config.num_classes > 0 {
        out.push(Name::new(
            "label_embed.weight",
            "y_embedder.embedding_table.weight",
            Layout::Same,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_embedding_matches_maes_formula_at_hand_picked_entries() {
        // Width 8: quarter 2, omega = (1, 1/100). Token (row 1, col 2) of a 3x3 grid is index 5:
        // [sin 2, sin 0.02, cos 2, cos 0.02, sin 1, sin 0.01, cos 1, cos 0.01].
        let e = position_embedding(3, 3, 8);
        let token = &e[5 * 8..6 * 8];
        let want = [
            2f64.sin(),
            0.02f64.sin(),
            2f64.cos(),
            0.02f64.cos(),
            1f64.sin(),
            0.01f64.sin(),
            1f64.cos(),
            0.01f64.cos(),
        ];
        for (got, want) in token.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-7, "{token:?}");
        }
    }

    // Counts of the official code's DiT with the same settings and learn_sigma=False, its fixed
    // pos_embed left out (scripts/make_dit_fixture.py prints them; a conditional model adds
    // (classes + 1) x width for the label table, which DiT also has with class dropout).
    #[test]
    fn presets_match_the_official_codes_parameter_counts() {
        let device = Device::flex();
        let count = |c: DiTConfig| Module::num_params(&c.init(&device));
        assert_eq!(count(DiTConfig::dit_s2_cifar10()), 32_471_436);
        assert_eq!(count(DiTConfig::dit_tiny()), 329_292);
        let conditional = DiTConfig {
            num_classes: 10,
            ..DiTConfig::dit_tiny()
        };
        assert_eq!(count(conditional), 329_996);
    }

    #[test]
    fn a_fresh_network_predicts_zero_and_keeps_shapes() {
        // adaLN-Zero: the output layer starts at zero, so a fresh DiT outputs exactly zero.
        let device = Device::flex();
        let model = DiTConfig::dit_tiny().init(&device);
        let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device);
        let t = Tensor::<1>::from_floats([3.0, 900.0], &device);
        let y = model.forward(x, t).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(y.len(), 2 * 3 * 32 * 32);
        assert!(y.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn invalid_configs_are_rejected_with_a_reason() {
        let tiny = DiTConfig::dit_tiny();
        let cases = [
            (
                DiTConfig {
                    patch_size: 3,
                    ..tiny.clone()
                },
                "patch_size",
            ),
            (
                DiTConfig {
                    num_heads: 5,
                    ..tiny.clone()
                },
                "num_heads",
            ),
            (
                DiTConfig {
                    hidden_size: 66,
                    num_heads: 2,
                    ..tiny.clone()
                },
                "multiple of 4",
            ),
            (
                DiTConfig {
                    depth: 0,
                    ..tiny.clone()
                },
                "depth",
            ),
            (
                DiTConfig {
                    mlp_ratio: 0.0,
                    ..tiny.clone()
                },
                "mlp_ratio",
            ),
            (
                DiTConfig {
                    resolution: 1 << 20,
                    ..tiny.clone()
                },
                "resolution",
            ),
        ];
        for (config, needle) in cases {
            let e = config.validate().unwrap_err().0;
            assert!(e.contains(needle), "{e}");
        }
        for name in DiTConfig::PRESETS {
            DiTConfig::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn flops_match_a_hand_count() {
        // dit_tiny: 256 tokens of width 64, MLP 256, 4 blocks, patches of 12 values.
        let per_block = 256 * 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64)
            + 4 * 256 * 256 * 64
            + 2 * 64 * 384;
        let want = 2 * (256 * 64 + 64 * 64)
            + 256 * 2 * 12 * 64
            + 4 * per_block
            + 2 * 64 * 128
            + 256 * 2 * 64 * 12;
        assert_eq!(DiTConfig::dit_tiny().forward_flops(), want as u64);
    }
}
