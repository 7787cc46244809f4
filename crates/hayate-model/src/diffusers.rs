//! diffusers' `UNet2DModel`: its `config.json` and its tensor names, both ways.
//!
//! hayate's UNet is the network `UNet2DModel` builds from DDPM's block types, so a config maps
//! field by field and a weight by renaming (and transposing the linear layers, which PyTorch
//! stores as `[out, in]` and Burn as `[in, out]`). What `UNet2DModel` cannot express is refused
//! by name: a head count that gives blocks of different widths heads of different sizes
//! (diffusers has one `attention_head_dim`). What hayate cannot express (Fourier or flipped
//! timestep embeddings, other activations, cross-attention blocks, ...) is refused on import.
//! Files are read and written elsewhere (`hayate-eval`); this module only maps.

use crate::{DownsamplePadding, UNet, UNetConfig};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, bridge};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// The model's config file in a diffusers folder.
pub const CONFIG_FILE: &str = "config.json";
/// The model's weights in a diffusers folder.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// The diffusers version whose `UNet2DModel` this mapping was checked against (the fixture).
pub const DIFFUSERS_VERSION: &str = "0.42.1";
/// Marks a class-conditional export: hayate's label embedding has one row more than its classes,
/// the last standing for "no label" (classifier-free guidance). diffusers keeps and ignores
/// config keys that start with an underscore.
const NULL_CLASS_KEY: &str = "_hayate_null_class";

/// A config or set of tensors that cannot be converted; the message names the field or tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionError(pub String);

impl std::fmt::Display for ConversionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConversionError {}

fn fail<T>(message: impl Into<String>) -> Result<T, ConversionError> {
    Err(ConversionError(message.into()))
}

/// A tensor on the host: its shape and its f32 values, row-major (PyTorch's layout).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

const DOWN_PLAIN: &str = "DownBlock2D";
const DOWN_ATTN: &str = "AttnDownBlock2D";
const DOWN_RESNET: &str = "ResnetDownsampleBlock2D";
const UP_PLAIN: &str = "UpBlock2D";
const UP_ATTN: &str = "AttnUpBlock2D";
const UP_RESNET: &str = "ResnetUpsampleBlock2D";

/// Every `UNet2DModel` argument in diffusers 0.42.1. A key outside this list (and not
/// underscore-prefixed metadata) is an error, so a config from a newer diffusers with an option
/// hayate does not know is not silently misread.
const KNOWN_FIELDS: [&str; 28] = [
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "time_embedding_type",
    "time_embedding_dim",
    "freq_shift",
    "flip_sin_to_cos",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "downsample_padding",
    "downsample_type",
    "upsample_type",
    "dropout",
    "act_fn",
    "attention_head_dim",
    "norm_num_groups",
    "attn_norm_num_groups",
    "norm_eps",
    "resnet_time_scale_shift",
    "add_attention",
    "class_embed_type",
    "num_class_embeds",
    "num_train_timesteps",
];

impl UNetConfig {
    /// The `config.json` of the `UNet2DModel` that computes this network.
    pub fn to_diffusers(&self) -> Result<Value, ConversionError> {
        self.validate()
            .map_err(|e| ConversionError(e.to_string()))?;
        let plan = self.plan();
        let levels = self.channel_mult.len();
        let attention_dim = self.diffusers_head_dim()?;
        let updown = self.resblock_updown;
        let attention_at: Vec<bool> = plan.down.iter().map(|(b, _)| b[0].attention).collect();
        let down: Vec<&str> = attention_at
            .iter()
            .map(|&a| match (a, updown) {
                (true, _) => DOWN_ATTN,
                (false, false) => DOWN_PLAIN,
                (false, true) => DOWN_RESNET,
            })
            .collect();
        let up: Vec<&str> = (0..levels)
            .rev()
            .map(|level| match (attention_at[level], updown) {
                (true, _) => UP_ATTN,
                (false, false) => UP_PLAIN,
                (false, true) => UP_RESNET,
            })
            .collect();
        let resample = if updown { "resnet" } else { "conv" };
        let mut config = json!({
            "_class_name": "UNet2DModel",
            "_diffusers_version": DIFFUSERS_VERSION,
            "sample_size": self.resolution,
            "in_channels": self.image_channels,
            "out_channels": self.image_channels,
            "center_input_sample": false,
            "time_embedding_type": "positional",
            "time_embedding_dim": null,
            "freq_shift": 1,
            "flip_sin_to_cos": false,
            "down_block_types": down,
            "mid_block_type": "UNetMidBlock2D",
            "up_block_types": up,
            "block_out_channels": self.channel_mult.iter().map(|m| m * self.base_channels).collect::<Vec<_>>(),
            "layers_per_block": self.num_res_blocks,
            "mid_block_scale_factor": 1,
            "downsample_padding": match self.downsample_padding {
                DownsamplePadding::Both => 1,
                DownsamplePadding::After => 0,
            },
            "downsample_type": resample,
            "upsample_type": resample,
            "dropout": self.dropout,
            "act_fn": "silu",
            "attention_head_dim": attention_dim,
            "norm_num_groups": self.norm_groups,
            "attn_norm_num_groups": self.norm_groups,
            "norm_eps": self.norm_eps,
            "resnet_time_scale_shift": if self.scale_shift_norm { "scale_shift" } else { "default" },
            "add_attention": true,
            "class_embed_type": null,
            "num_class_embeds": (self.num_classes > 0).then_some(self.num_classes + 1),
            "num_train_timesteps": null,
        });
        if self.num_classes > 0 {
            config[NULL_CLASS_KEY] = json!(true);
        }
        Ok(config)
    }

    /// `attention_head_dim`: none (one head, as wide as its block) or the one per-head width
    /// that every attention block has.
    fn diffusers_head_dim(&self) -> Result<Option<usize>, ConversionError> {
        if let Some(per_head) = self.head_channels {
            return Ok(Some(per_head));
        }
        if self.num_heads == 1 {
            return Ok(None);
        }
        let widths: std::collections::BTreeSet<usize> = self.plan().attention_widths().collect();
        let dims: std::collections::BTreeSet<usize> =
            widths.iter().map(|c| c / self.num_heads).collect();
        match dims.len() {
            1 => Ok(dims.into_iter().next()),
            _ => fail(format!(
                "num_heads {} gives the attention blocks of widths {widths:?} heads of widths \
                 {dims:?}; diffusers' UNet2DModel has one attention_head_dim for every block \
                 (set head_channels instead of num_heads)",
                self.num_heads
            )),
        }
    }

    /// The network a `UNet2DModel` `config.json` describes. Fields hayate cannot express, and
    /// fields it does not know, are errors that name them.
    pub fn from_diffusers(config: &Value) -> Result<Self, ConversionError> {
        let Some(fields) = config.as_object() else {
            return fail("the model config is not a JSON object");
        };
        let unknown: Vec<&str> = fields
            .keys()
            .map(String::as_str)
            .filter(|k| !k.starts_with('_') && !KNOWN_FIELDS.contains(k))
            .collect();
        if !unknown.is_empty() {
            return fail(format!(
                "unknown UNet2DModel config fields {unknown:?} (hayate knows those of diffusers \
                 {DIFFUSERS_VERSION})"
            ));
        }
        let read = Fields(fields);
        if let Some(class) = fields.get("_class_name")
            && *class != "UNet2DModel"
        {
            return fail(format!(
                "_class_name is {class}; hayate reads UNet2DModel configs only"
            ));
        }
        // Settings hayate's network has in one form only.
        read.require("center_input_sample", &json!(false))?;
        read.require("time_embedding_type", &json!("positional"))?;
        read.require("flip_sin_to_cos", &json!(false))?;
        read.require("freq_shift", &json!(1))?;
        read.require("mid_block_type", &json!("UNetMidBlock2D"))?;
        read.require("mid_block_scale_factor", &json!(1))?;
        read.require("add_attention", &json!(true))?;
        read.require("class_embed_type", &Value::Null)?;
        let act = read.string("act_fn", "silu")?;
        if act != "silu" && act != "swish" {
            return fail(format!(
                "act_fn is {act:?}; hayate's network uses SiLU (\"silu\" or \"swish\")"
            ));
        }

        let channels = read.uint_list("block_out_channels", &[224, 448, 672, 896])?;
        let Some(&base) = channels.first() else {
            return fail("block_out_channels is empty");
        };
        if base == 0 || channels.iter().any(|c| c % base != 0) {
            return fail(format!(
                "block_out_channels {channels:?}: hayate's levels are multiples of the first \
                 level's width"
            ));
        }
        let levels = channels.len();
        if let Some(dim) = read.opt_uint("time_embedding_dim")?
            && dim != 4 * base
        {
            return fail(format!(
                "time_embedding_dim is {dim}; hayate's is 4 x block_out_channels[0] ({})",
                4 * base
            ));
        }
        let down = read.string_list(
            "down_block_types",
            &[DOWN_PLAIN, DOWN_ATTN, DOWN_ATTN, DOWN_ATTN],
        )?;
        let up = read.string_list("up_block_types", &[UP_ATTN, UP_ATTN, UP_ATTN, UP_PLAIN])?;
        if down.len() != levels || up.len() != levels {
            return fail(format!(
                "down_block_types ({}) and up_block_types ({}) must list one block per \
                 block_out_channels entry ({levels})",
                down.len(),
                up.len()
            ));
        }
        let downsample = read.string("downsample_type", "conv")?;
        let upsample = read.string("upsample_type", "conv")?;
        let updown = match (downsample.as_str(), upsample.as_str()) {
            ("conv", "conv") => false,
            ("resnet", "resnet") => true,
            _ => {
                return fail(format!(
                    "downsample_type {downsample:?} with upsample_type {upsample:?}: hayate \
                     resamples both ways with convolutions (\"conv\") or both with residual \
                     blocks (\"resnet\")"
                ));
            }
        };
        let resolution = match fields.get("sample_size") {
            Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
            Some(Value::Array(sides)) if sides.len() == 2 && sides[0] == sides[1] => {
                sides[0].as_u64().map(|n| n as usize)
            }
            _ => None,
        };
        let Some(resolution) = resolution else {
            return fail(
                "sample_size must be the images' side in pixels (hayate's images are square)",
            );
        };
        let mut attention_resolutions = Vec::new();
        for level in 0..levels {
            let last = level + 1 == levels;
            let d = down[level].as_str();
            let u = up[levels - 1 - level].as_str();
            // Without a resampler (the last level down, the first up) a resnet-resampling block
            // is the plain one.
            let plain_down = d == DOWN_PLAIN && (!updown || last);
            let plain_up = u == UP_PLAIN && (!updown || last);
            let resnet_down = d == DOWN_RESNET && (updown || last);
            let resnet_up = u == UP_RESNET && (updown || last);
            let attention = match (d, u) {
                (DOWN_ATTN, UP_ATTN) => true,
                _ if (plain_down || resnet_down) && (plain_up || resnet_up) => false,
                _ => {
                    return fail(format!(
                        "down_block_types[{level}] {d:?} with up_block_types[{}] {u:?} and \
                         {downsample:?} resampling: hayate's levels have attention both ways or \
                         neither, and its blocks are {DOWN_PLAIN}/{UP_PLAIN} (\"conv\"), \
                         {DOWN_RESNET}/{UP_RESNET} (\"resnet\") or {DOWN_ATTN}/{UP_ATTN}",
                        levels - 1 - level
                    ));
                }
            };
            if attention {
                attention_resolutions.push(resolution >> level);
            }
        }
        let scale_shift = match read.string("resnet_time_scale_shift", "default")?.as_str() {
            "default" => false,
            "scale_shift" => true,
            other => {
                return fail(format!(
                    "resnet_time_scale_shift {other:?}: hayate has \"default\" and \
                     \"scale_shift\""
                ));
            }
        };
        let norm_groups = read.uint("norm_num_groups", 32)?;
        match read.opt_uint("attn_norm_num_groups")? {
            Some(g) if g != norm_groups => {
                return fail(format!(
                    "attn_norm_num_groups {g} differs from norm_num_groups {norm_groups}; \
                     hayate's attention norms have the residual blocks' groups"
                ));
            }
            // diffusers then builds the middle attention block without a norm.
            None if scale_shift => {
                return fail(
                    "attn_norm_num_groups is null with resnet_time_scale_shift \"scale_shift\": \
                     diffusers then gives the middle attention block no GroupNorm, which \
                     hayate's always has",
                );
            }
            _ => {}
        }
        let head_channels = read.opt_uint("attention_head_dim")?;
        let num_classes = match read.opt_uint("num_class_embeds")? {
            None => 0,
            Some(rows) if rows >= 2 && fields.get(NULL_CLASS_KEY) == Some(&json!(true)) => rows - 1,
            Some(rows) => {
                return fail(format!(
                    "num_class_embeds {rows}: hayate's class-conditional networks hold one \
                     embedding row more than their classes (\"no label\", for guidance), so only \
                     class-conditional models exported by hayate ({NULL_CLASS_KEY}) import"
                ));
            }
        };
        let image_channels = read.uint("in_channels", 3)?;
        let out_channels = read.uint("out_channels", 3)?;
        if out_channels != image_channels {
            return fail(format!(
                "out_channels {out_channels} differs from in_channels {image_channels}; hayate's \
                 network predicts one value per input channel (no learned variance)"
            ));
        }
        let downsample_padding = match read.uint("downsample_padding", 1)? {
            1 => DownsamplePadding::Both,
            0 => DownsamplePadding::After,
            p => {
                return fail(format!(
                    "downsample_padding {p}: hayate pads its strided convolutions by 1 (\"1\") \
                     or TensorFlow-style after only (\"0\")"
                ));
            }
        };
        let config = UNetConfig {
            resolution,
            image_channels,
            base_channels: base,
            channel_mult: channels.iter().map(|c| c / base).collect(),
            num_res_blocks: read.uint("layers_per_block", 2)?,
            attention_resolutions,
            dropout: read.float("dropout", 0.0)?,
            norm_groups,
            num_heads: 1,
            head_channels,
            scale_shift_norm: scale_shift,
            resblock_updown: updown,
            num_classes,
            norm_eps: read.float("norm_eps", 1e-5)?,
            downsample_padding,
        };
        config
            .validate()
            .map_err(|e| ConversionError(format!("the UNet2DModel config: {e}")))?;
        Ok(config)
    }
}

/// Typed reads of config fields, with diffusers' defaults for absent ones.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn wrong<T>(&self, key: &str, want: &str) -> Result<T, ConversionError> {
        fail(format!(
            "{key} must be {want}, found {}",
            self.0.get(key).unwrap_or(&Value::Null)
        ))
    }

    /// The field must be absent or equal `want` (null counts as absent only when `want` is).
    fn require(&self, key: &str, want: &Value) -> Result<(), ConversionError> {
        match self.0.get(key) {
            None => Ok(()),
            Some(v) if v == want => Ok(()),
            // diffusers writes 1.0 for float-typed fields that hayate compares with 1.
            Some(v) if v.as_f64().is_some() && v.as_f64() == want.as_f64() => Ok(()),
            Some(v) => fail(format!(
                "{key} is {v}; hayate's network can only express {want}"
            )),
        }
    }

    fn uint(&self, key: &str, default: usize) -> Result<usize, ConversionError> {
        Ok(self.opt_uint(key)?.unwrap_or(default))
    }

    fn opt_uint(&self, key: &str) -> Result<Option<usize>, ConversionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(n as usize)),
                None => self.wrong(key, "a non-negative integer"),
            },
        }
    }

    fn float(&self, key: &str, default: f64) -> Result<f64, ConversionError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) => Ok(x),
                None => self.wrong(key, "a number"),
            },
        }
    }

    fn string(&self, key: &str, default: &str) -> Result<String, ConversionError> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => self.wrong(key, "a string"),
        }
    }

    fn uint_list(&self, key: &str, default: &[usize]) -> Result<Vec<usize>, ConversionError> {
        match self.get(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|n| n as usize))
                .collect::<Option<Vec<_>>>()
                .map_or_else(|| self.wrong(key, "a list of integers"), Ok),
            Some(_) => self.wrong(key, "a list of integers"),
        }
    }

    fn string_list(&self, key: &str, default: &[&str]) -> Result<Vec<String>, ConversionError> {
        match self.get(key) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map_or_else(|| self.wrong(key, "a list of strings"), Ok),
            Some(_) => self.wrong(key, "a list of strings"),
        }
    }
}

/// How a tensor is laid out on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The same shape and order.
    Same,
    /// A linear layer's weight: Burn `[in, out]`, PyTorch `[out, in]`.
    Transposed,
    /// An attention projection: a 1x1 convolution `[c, c, 1, 1]` in hayate, a linear layer
    /// `[c, c]` (`[out, in]`, the same order) in diffusers.
    Projection,
}

/// One tensor's name in hayate's module and in diffusers' state dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name {
    hayate: String,
    /// The name in the other framework's state dict.
    diffusers: String,
    layout: Layout,
}

impl Name {
    pub(crate) fn new(
        hayate: impl Into<String>,
        theirs: impl Into<String>,
        layout: Layout,
    ) -> Self {
        Self {
            hayate: hayate.into(),
            diffusers: theirs.into(),
            layout,
        }
    }
}

/// The names of every tensor of the network `config` builds.
fn names(config: &UNetConfig) -> Vec<Name> {
    let mut out = Vec::new();
    let mut push = |h: String, d: String, layout| {
        out.push(Name {
            hayate: h,
            diffusers: d,
            layout,
        })
    };
    let mut layer = |h: &str, d: &str, kind: Layer| {
        let (w, b, layout) = match kind {
            Layer::Conv => ("weight", "bias", Layout::Same),
            Layer::Linear => ("weight", "bias", Layout::Transposed),
            Layer::Projection => ("weight", "bias", Layout::Projection),
            Layer::Norm => ("gamma", "beta", Layout::Same),
        };
        push(format!("{h}.{w}"), format!("{d}.weight"), layout);
        push(format!("{h}.{b}"), format!("{d}.bias"), Layout::Same);
    };
    let res_block = |layer: &mut dyn FnMut(&str, &str, Layer), h: &str, d: &str, skip: bool| {
        layer(&format!("{h}.norm0"), &format!("{d}.norm1"), Layer::Norm);
        layer(&format!("{h}.conv0"), &format!("{d}.conv1"), Layer::Conv);
        layer(
            &format!("{h}.time_proj"),
            &format!("{d}.time_emb_proj"),
            Layer::Linear,
        );
        layer(&format!("{h}.norm1"), &format!("{d}.norm2"), Layer::Norm);
        layer(&format!("{h}.conv1"), &format!("{d}.conv2"), Layer::Conv);
        if skip {
            layer(
                &format!("{h}.skip"),
                &format!("{d}.conv_shortcut"),
                Layer::Conv,
            );
        }
    };
    let attention = |layer: &mut dyn FnMut(&str, &str, Layer), h: &str, d: &str| {
        layer(
            &format!("{h}.norm"),
            &format!("{d}.group_norm"),
            Layer::Norm,
        );
        for (hn, dn) in [
            ("query", "to_q"),
            ("key", "to_k"),
            ("value", "to_v"),
            ("out", "to_out.0"),
        ] {
            layer(
                &format!("{h}.{hn}"),
                &format!("{d}.{dn}"),
                Layer::Projection,
            );
        }
    };
    layer(
        "time_embed.dense0",
        "time_embedding.linear_1",
        Layer::Linear,
    );
    layer(
        "time_embed.dense1",
        "time_embedding.linear_2",
        Layer::Linear,
    );
    layer("conv_in", "conv_in", Layer::Conv);
    let plan = config.plan();
    for (hs, ds, resampler, levels) in [
        ("down", "down_blocks", "downsamplers", &plan.down),
        ("up", "up_blocks", "upsamplers", &plan.up),
    ] {
        for (i, (blocks, resample)) in levels.iter().enumerate() {
            for (j, b) in blocks.iter().enumerate() {
                res_block(
                    &mut layer,
                    &format!("{hs}.{i}.stages.{j}.res"),
                    &format!("{ds}.{i}.resnets.{j}"),
                    b.in_channels != b.out_channels,
                );
                if b.attention {
                    attention(
                        &mut layer,
                        &format!("{hs}.{i}.stages.{j}.attention"),
                        &format!("{ds}.{i}.attentions.{j}"),
                    );
                }
            }
            if *resample && config.resblock_updown {
                res_block(
                    &mut layer,
                    &format!("{hs}.{i}.resample_block"),
                    &format!("{ds}.{i}.{resampler}.0"),
                    false,
                );
            } else if *resample {
                layer(
                    &format!("{hs}.{i}.resample.conv"),
                    &format!("{ds}.{i}.{resampler}.0.conv"),
                    Layer::Conv,
                );
            }
        }
    }
    res_block(&mut layer, "mid_res0", "mid_block.resnets.0", false);
    attention(&mut layer, "mid_attention", "mid_block.attentions.0");
    res_block(&mut layer, "mid_res1", "mid_block.resnets.1", false);
    layer("norm_out", "conv_norm_out", Layer::Norm);
    layer("conv_out", "conv_out", Layer::Conv);
    if config.num_classes > 0 {
        push(
            "label_embed.weight".into(),
            "class_embedding.weight".into(),
            Layout::Same,
        );
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Layer {
    Conv,
    Linear,
    Projection,
    Norm,
}

/// The names older diffusers releases (and the DDPM weights published with them) gave the
/// attention projections; diffusers still reads them.
const DEPRECATED_ATTENTION: [(&str, &str); 4] = [
    ("to_q", "query"),
    ("to_k", "key"),
    ("to_v", "value"),
    ("to_out.0", "proj_attn"),
];

pub(crate) fn transpose(t: &HostTensor) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let mut values = vec![0.0; t.values.len()];
    for r in 0..rows {
        for c in 0..cols {
            values[c * rows + r] = t.values[r * cols + c];
        }
    }
    HostTensor {
        shape: vec![cols, rows],
        values,
    }
}

impl UNet {
    /// The network's weights under diffusers' names, in PyTorch's layouts, for the
    /// `UNet2DModel` whose config is `config.to_diffusers()` (`config` built this network).
    pub fn to_diffusers_tensors(
        &self,
        config: &UNetConfig,
    ) -> Result<BTreeMap<String, HostTensor>, ConversionError> {
        export_named(self, &names(config))
    }

    /// Builds the network `config` describes on `device` with the weights of a `UNet2DModel`
    /// state dict (diffusers' names, PyTorch's layouts; the attention projections may carry
    /// their pre-0.14 names). Every tensor must be there with its shape, and no other.
    pub fn from_diffusers_tensors(
        config: &UNetConfig,
        mut tensors: HashMap<String, HostTensor>,
        device: &Device,
    ) -> Result<Self, ConversionError> {
        config
            .validate()
            .map_err(|e| ConversionError(e.to_string()))?;
        let mut model = config.init(device);
        let names = names(config);
        // Older names of the attention projections become the current ones.
        for name in &names {
            if tensors.contains_key(&name.diffusers) {
                continue;
            }
            let old = DEPRECATED_ATTENTION.iter().find_map(|(new, old)| {
                let stem = name
                    .diffusers
                    .strip_suffix(".weight")
                    .or_else(|| name.diffusers.strip_suffix(".bias"))?;
                let leaf = &name.diffusers[stem.len()..];
                let prefix = stem.strip_suffix(new)?;
                Some(format!("{prefix}{old}{leaf}"))
            });
            if let Some(t) = old.and_then(|old| tensors.remove(&old)) {
                tensors.insert(name.diffusers.clone(), t);
            }
        }
        load_named(&mut model, &names, tensors)?;
        Ok(model)
    }
}

/// `model`'s weights under their names in another framework (`names`, every weight of the
/// model exactly once), in that framework's layouts.
pub(crate) fn export_named<M: ModuleSnapshot>(
    model: &M,
    names: &[Name],
) -> Result<BTreeMap<String, HostTensor>, ConversionError> {
    let mut by_path: HashMap<String, HostTensor> = HashMap::new();
    for tensor in model.collect(None, None, false) {
        let data = bridge::to_data(&tensor)
            .map_err(|e| ConversionError(format!("{}: {e:?}", tensor.name)))?;
        let values = data
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| ConversionError(format!("{}: {e:?}", tensor.name)))?;
        let shape = tensor.shape.to_vec();
        by_path.insert(tensor.name, HostTensor { shape, values });
    }
    let mut out = BTreeMap::new();
    for name in names {
        let Some(t) = by_path.remove(&name.hayate) else {
            return fail(format!(
                "the network has no tensor {}: it was not built from this config",
                name.hayate
            ));
        };
        let t = match name.layout {
            Layout::Same => t,
            Layout::Transposed => transpose(&t),
            Layout::Projection => HostTensor {
                shape: t.shape[..2].to_vec(),
                values: t.values,
            },
        };
        out.insert(name.diffusers.clone(), t);
    }
    if let Some(extra) = by_path.keys().next() {
        return fail(format!(
            "the network's tensor {extra} has no name in the other framework: it was not built \
             from this config"
        ));
    }
    Ok(out)
}

/// Loads `tensors` (another framework's names and layouts) into `model` by `names`. Every
/// tensor must be there with its shape, and no other; the error lists every problem.
pub(crate) fn load_named<M: ModuleSnapshot>(
    model: &mut M,
    names: &[Name],
    mut tensors: HashMap<String, HostTensor>,
) -> Result<(), ConversionError> {
    let want: HashMap<String, Vec<usize>> = model
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name, t.shape.to_vec()))
        .collect();
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut snapshots = Vec::new();
    for name in names {
        let Some(t) = tensors.remove(&name.diffusers) else {
            missing.push(name.diffusers.clone());
            continue;
        };
        let shape = &want[&name.hayate];
        // What the other framework's layout calls for, for the message.
        let theirs = match name.layout {
            Layout::Same => shape.clone(),
            Layout::Transposed => shape.iter().rev().copied().collect(),
            Layout::Projection => shape[..2].to_vec(),
        };
        let found = t.shape.clone();
        if t.values.len() != found.iter().product::<usize>() {
            wrong.push(format!(
                "{} (shape {found:?} but {} values)",
                name.diffusers,
                t.values.len()
            ));
            continue;
        }
        let t = match name.layout {
            Layout::Same => t,
            Layout::Transposed if t.shape.len() == 2 => transpose(&t),
            // A linear [out, in] or, as some conversions keep them, a 1x1 convolution
            // [out, in, 1, 1]; anything else is reported as misshapen below.
            Layout::Projection
                if t.shape.len() >= 2
                    && t.shape[..2] == shape[..2]
                    && t.shape[2..].iter().all(|&d| d == 1) =>
            {
                HostTensor {
                    shape: shape.clone(),
                    values: t.values,
                }
            }
            _ => t,
        };
        let expected_len: usize = shape.iter().product();
        if &t.shape != shape || t.values.len() != expected_len {
            wrong.push(format!(
                "{} (expected {theirs:?}, found {found:?})",
                name.diffusers
            ));
            continue;
        }
        snapshots.push(bridge::from_data(
            TensorData::new(t.values, t.shape),
            name.hayate.clone(),
            None,
        ));
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing tensors: {}", missing.join(", ")));
    }
    if !wrong.is_empty() {
        problems.push(format!("tensors of the wrong shape: {}", wrong.join(", ")));
    }
    if !tensors.is_empty() {
        let mut extra: Vec<_> = tensors.into_keys().collect();
        extra.sort();
        problems.push(format!(
            "tensors the config has no place for: {}",
            extra.join(", ")
        ));
    }
    if !problems.is_empty() {
        return fail(problems.join("; "));
    }
    let result = model.apply(snapshots, None, None, false);
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return fail(format!(
            "loading the weights into the network: errors {:?}, missing {:?}, unused {:?}",
            result.errors, result.missing, result.unused
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> Vec<UNetConfig> {
        let tiny = UNetConfig::tiny();
        vec![
            tiny.clone(),
            UNetConfig {
                scale_shift_norm: true,
                resblock_updown: true,
                head_channels: Some(16),
                num_classes: 4,
                norm_eps: 1e-6,
                ..tiny.clone()
            },
            UNetConfig {
                downsample_padding: DownsamplePadding::After,
                channel_mult: vec![1, 2, 2],
                attention_resolutions: vec![8],
                ..tiny
            },
        ]
    }

    #[test]
    fn every_tensor_of_the_network_has_exactly_one_diffusers_name() {
        let device = Device::flex();
        for config in configs() {
            let model = config.init(&device);
            let mut ours: Vec<String> = model
                .collect(None, None, false)
                .into_iter()
                .map(|t| t.name)
                .collect();
            ours.sort();
            let mut mapped: Vec<String> = names(&config).into_iter().map(|n| n.hayate).collect();
            mapped.sort();
            assert_eq!(ours, mapped, "{config:?}");
            let mut theirs: Vec<String> = names(&config).into_iter().map(|n| n.diffusers).collect();
            theirs.sort();
            theirs.dedup();
            assert_eq!(theirs.len(), mapped.len());
        }
    }

    #[test]
    fn configs_round_trip_through_diffusers_form() {
        for config in configs() {
            let json = config.to_diffusers().unwrap();
            assert_eq!(UNetConfig::from_diffusers(&json).unwrap(), config);
        }
    }

    #[test]
    fn weights_round_trip_bit_for_bit() {
        let device = Device::flex();
        for config in configs() {
            let model = config.init(&device);
            let tensors = model.to_diffusers_tensors(&config).unwrap();
            let back = UNet::from_diffusers_tensors(
                &config,
                tensors.clone().into_iter().collect(),
                &device,
            )
            .unwrap();
            assert_eq!(back.to_diffusers_tensors(&config).unwrap(), tensors);
        }
    }

    #[test]
    fn unknown_and_inexpressible_fields_are_named() {
        let mut json = UNetConfig::tiny().to_diffusers().unwrap();
        json["cross_attention_dim"] = json!(768);
        let err = UNetConfig::from_diffusers(&json).unwrap_err().0;
        assert!(err.contains("cross_attention_dim"), "{err}");
        for (field, value) in [
            ("flip_sin_to_cos", json!(true)),
            ("act_fn", json!("gelu")),
            ("time_embedding_type", json!("fourier")),
            ("out_channels", json!(6)),
            ("block_out_channels", json!([32, 48])),
            ("up_block_types", json!(["UpBlock2D", "UpBlock2D"])),
        ] {
            let mut json = UNetConfig::tiny().to_diffusers().unwrap();
            json[field] = value;
            let err = UNetConfig::from_diffusers(&json).unwrap_err().0;
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn every_preset_but_adm_imagenet128_has_a_diffusers_form() {
        for name in UNetConfig::PRESETS {
            let config = UNetConfig::preset(name).unwrap();
            let result = config.to_diffusers();
            if name == "adm_imagenet128" {
                // Four heads at widths 512, 768 and 1024: heads of 128, 192 and 256 channels.
                let err = result.unwrap_err().0;
                assert!(err.contains("attention_head_dim"), "{err}");
            } else {
                let back = UNetConfig::from_diffusers(&result.unwrap()).unwrap();
                // num_heads means nothing beside head_channels.
                let back = UNetConfig {
                    num_heads: config.num_heads,
                    ..back
                };
                assert_eq!(back, config, "{name}");
            }
        }
    }

    #[test]
    fn head_counts_diffusers_cannot_express_are_refused() {
        let config = UNetConfig {
            num_heads: 2,
            attention_resolutions: vec![32, 16],
            ..UNetConfig::tiny()
        };
        let err = config.to_diffusers().unwrap_err().0;
        assert!(err.contains("attention_head_dim"), "{err}");
        // The same width everywhere gives one head size, which diffusers can say.
        let config = UNetConfig {
            num_heads: 2,
            ..UNetConfig::tiny()
        };
        let json = config.to_diffusers().unwrap();
        assert_eq!(json["attention_head_dim"], json!(32));
    }

    #[test]
    fn missing_misshapen_and_extra_tensors_are_named() {
        let device = Device::flex();
        let config = UNetConfig::tiny();
        let tensors = config.init(&device).to_diffusers_tensors(&config).unwrap();
        let mut bad: HashMap<String, HostTensor> = tensors.into_iter().collect();
        bad.remove("conv_in.bias");
        bad.insert(
            "conv_out.bias".into(),
            HostTensor {
                shape: vec![4],
                values: vec![0.0; 4],
            },
        );
        bad.insert(
            "extra.weight".into(),
            HostTensor {
                shape: vec![1],
                values: vec![0.0],
            },
        );
        // An attention projection with the right number of values in the wrong shape is
        // refused; the same one as a 1x1 convolution [c, c, 1, 1] is taken.
        let query = bad
            .keys()
            .find(|k| k.ends_with("to_q.weight"))
            .expect("tiny has attention")
            .clone();
        let key = query.replace("to_q", "to_k");
        let q = bad.get_mut(&query).unwrap();
        let c = q.shape[0];
        q.shape = vec![2 * c, c / 2];
        bad.get_mut(&key).unwrap().shape = vec![c, c, 1, 1];
        let err = UNet::from_diffusers_tensors(&config, bad, &device)
            .unwrap_err()
            .0;
        for name in [
            "conv_in.bias",
            "conv_out.bias",
            "extra.weight",
            query.as_str(),
        ] {
            assert!(err.contains(name), "{name}: {err}");
        }
        assert!(!err.contains(&key), "{key}: {err}");
    }
}
