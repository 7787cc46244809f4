use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, EmbeddingConfig, GroupNorm};
use burn::prelude::*;

use crate::blocks::{conv3x3, group_norm, zero_conv};
use crate::config::BlockPlan;
use crate::{
    AttentionBlock, Downsample, DropoutKey, DropoutMasks, ResBlock, ResBlockConfig, Resample,
    TimestepEmbedding, UNetConfig, Upsample,
};

/// A residual block, optionally followed by self-attention.
#[derive(Module, Debug)]
struct Stage {
    res: ResBlock,
    attention: Option<AttentionBlock>,
}

impl Stage {
    fn new(plan: &BlockPlan, config: &UNetConfig, device: &Device) -> Self {
        Self {
            res: config
                .res_block(plan.in_channels, plan.out_channels, Resample::Keep)
                .init(device),
            attention: plan
                .attention
                .then(|| config.attention(plan.out_channels, device)),
        }
    }

    fn forward(
        &self,
        x: Tensor<4>,
        temb: Tensor<2>,
        masks: Option<&mut DropoutMasks>,
    ) -> Tensor<4> {
        let h = self.res.forward_masked(x, temb, masks);
        match &self.attention {
            Some(attention) => attention.forward(h),
            None => h,
        }
    }
}

/// One resolution level of the down path: its stages, then an optional downsample (a strided
/// convolution, or a residual block that pools).
#[derive(Module, Debug)]
struct DownLevel {
    stages: Vec<Stage>,
    resample: Option<Downsample>,
    resample_block: Option<ResBlock>,
}

/// One resolution level of the up path: its stages, then an optional upsample (a convolution
/// after nearest-neighbour doubling, or a residual block that doubles).
#[derive(Module, Debug)]
struct UpLevel {
    stages: Vec<Stage>,
    resample: Option<Upsample>,
    resample_block: Option<ResBlock>,
}

/// The DDPM/ADM UNet: predicts the noise (or v, or x_0) from a noisy image and its timestep.
#[derive(Module, Debug)]
pub struct UNet {
    time_embed: TimestepEmbedding,
    /// Class embedding of a conditional model; row `num_classes` stands for "no label".
    label_embed: Option<Embedding>,
    num_classes: usize,
    resolution: usize,
    conv_in: Conv2d,
    down: Vec<DownLevel>,
    mid_res0: ResBlock,
    mid_attention: AttentionBlock,
    mid_res1: ResBlock,
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNetConfig {
    /// A residual block of this network's kind.
    fn res_block(&self, cin: usize, cout: usize, resample: Resample) -> ResBlockConfig {
        ResBlockConfig {
            cin,
            cout,
            time_dim: self.time_embed_dim(),
            groups: self.norm_groups,
            eps: self.norm_eps,
            dropout: self.dropout,
            scale_shift: self.scale_shift_norm,
            resample,
        }
    }

    /// An attention block of this network's kind for `channels`-wide maps.
    fn attention(&self, channels: usize, device: &Device) -> AttentionBlock {
        AttentionBlock::new(
            channels,
            self.heads(channels),
            self.norm_groups,
            self.norm_eps,
            device,
        )
    }

    /// Builds the network on `device`.
    ///
    /// # Panics
    /// If the config is invalid; call [`UNetConfig::validate`] first to get the reason as an
    /// error instead.
    pub fn init(&self, device: &Device) -> UNet {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let plan = self.plan();
        let ch = self.base_channels;
        let temb = self.time_embed_dim();
        let groups = self.norm_groups;
        let stages = |blocks: &[BlockPlan]| -> Vec<Stage> {
            blocks.iter().map(|b| Stage::new(b, self, device)).collect()
        };
        let width = |blocks: &[BlockPlan]| blocks[blocks.len() - 1].out_channels;
        let (mid, _) = plan.middle;
        let updown = self.resblock_updown;
        let block = |c: usize, resample| self.res_block(c, c, resample).init(device);
        UNet {
            time_embed: TimestepEmbedding::new(ch, temb, device),
            label_embed: (self.num_classes > 0)
                .then(|| EmbeddingConfig::new(self.num_classes + 1, temb).init(device)),
            num_classes: self.num_classes,
            resolution: self.resolution,
            conv_in: conv3x3(self.image_channels, ch, 1, device),
            down: plan
                .down
                .iter()
                .map(|(blocks, resample)| DownLevel {
                    stages: stages(blocks),
                    resample: (*resample && !updown)
                        .then(|| Downsample::new(width(blocks), self.downsample_padding, device)),
                    resample_block: (*resample && updown)
                        .then(|| block(width(blocks), Resample::Down)),
                })
                .collect(),
            mid_res0: block(mid, Resample::Keep),
            mid_attention: self.attention(mid, device),
            mid_res1: block(mid, Resample::Keep),
            up: plan
                .up
                .iter()
                .map(|(blocks, resample)| UpLevel {
                    stages: stages(blocks),
                    resample: (*resample && !updown).then(|| Upsample::new(width(blocks), device)),
                    resample_block: (*resample && updown)
                        .then(|| block(width(blocks), Resample::Up)),
                })
                .collect(),
            norm_out: group_norm(groups, ch, self.norm_eps, device),
            conv_out: zero_conv(ch, self.image_channels, 3, device),
        }
    }
}

impl UNet {
    /// The type of its first convolution's weight: the type it computes in.
    pub(crate) fn first_weight_dtype(&self) -> burn::tensor::DType {
        self.conv_in.weight.val().dtype()
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
    /// - `x`: `[batch, image_channels, resolution, resolution]` (any side divisible by
    ///   2^(levels-1) works, since the network is fully convolutional)
    /// - `t`: `[batch]`, timesteps as floats in `[0, T)`
    /// - output: the same shape as `x`
    ///
    /// A class-conditional model predicts without a label here (the "no label" row that
    /// classifier-free guidance uses); see [`UNet::forward_labelled`].
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward_labelled(x, t, None)
    }

    /// [`UNet::forward`] with class labels: `labels` is `[batch]`, each in `0..=num_classes`
    /// (`num_classes` meaning "no label"); `None` means no label for every image. An
    /// unconditional model ignores labels.
    pub fn forward_labelled(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        labels: Option<Tensor<1, Int>>,
    ) -> Tensor<4> {
        self.forward_inner(x, t, labels, None)
    }

    /// The training forward pass: [`UNet::forward_labelled`] with the residual blocks' dropout,
    /// its masks drawn from `dropout` (see [`DropoutKey`]), so the same image gets the same masks
    /// on any backend and any split of the batch across devices.
    pub fn forward_training(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        labels: Option<Tensor<1, Int>>,
        dropout: DropoutKey,
    ) -> Tensor<4> {
        self.forward_inner(x, t, labels, Some(&mut DropoutMasks::new(dropout)))
    }

    fn forward_inner(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        labels: Option<Tensor<1, Int>>,
        mut masks: Option<&mut DropoutMasks>,
    ) -> Tensor<4> {
        let [n] = t.dims();
        let mut temb = self.time_embed.forward(t);
        if let Some(embed) = &self.label_embed {
            let labels = labels
                .unwrap_or_else(|| Tensor::full([n], self.num_classes as i64, &temb.device()));
            let [_, width] = temb.dims();
            temb = temb + embed.forward(labels.reshape([n, 1])).reshape([n, width]);
        }
        let mut h = crate::fused::conv2d(&self.conv_in, x);
        let mut skips = vec![h.clone()];
        for level in &self.down {
            for stage in &level.stages {
                h = stage.forward(h, temb.clone(), masks.as_deref_mut());
                skips.push(h.clone());
            }
            if let Some(down) = &level.resample {
                h = down.forward(h);
                skips.push(h.clone());
            }
            if let Some(down) = &level.resample_block {
                h = down.forward_masked(h, temb.clone(), masks.as_deref_mut());
                skips.push(h.clone());
            }
        }
        h = self
            .mid_res0
            .forward_masked(h, temb.clone(), masks.as_deref_mut());
        h = self.mid_attention.forward(h);
        h = self
            .mid_res1
            .forward_masked(h, temb.clone(), masks.as_deref_mut());
        for level in &self.up {
            for stage in &level.stages {
                let skip = skips.pop().expect("one skip per up stage, by construction");
                let input = Tensor::cat(vec![h, skip], 1);
                h = stage.forward(input, temb.clone(), masks.as_deref_mut());
            }
            if let Some(up) = &level.resample {
                h = up.forward(h);
            }
            if let Some(up) = &level.resample_block {
                h = up.forward_masked(h, temb.clone(), masks.as_deref_mut());
            }
        }
        crate::fused::conv2d(
            &self.conv_out,
            crate::fused::group_norm(&self.norm_out, h, true),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Layer;

    #[test]
    fn ddpm_cifar10_has_the_papers_parameter_count() {
        let model = UNetConfig::ddpm_cifar10().init(&Device::flex());
        // 35,746,307: the DDPM CIFAR-10 model as counted by the official implementation's
        // PyTorch ports.
        assert_eq!(model.num_params(), 35_746_307);
    }

    #[test]
    fn tiny_parameter_count_is_pinned() {
        let model = UNetConfig::tiny().init(&Device::flex());
        assert_eq!(model.num_params(), TINY_PARAMS);
    }

    const TINY_PARAMS: usize = 702_499;

    /// A small ADM-style model: 64 channels, two levels, attention at 16x16 with 32 channels per
    /// head, 10 classes.
    fn small_adm(updown_and_scale_shift: bool) -> UNetConfig {
        UNetConfig {
            resolution: 32,
            base_channels: 64,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![16],
            dropout: 0.0,
            head_channels: Some(32),
            scale_shift_norm: updown_and_scale_shift,
            resblock_updown: updown_and_scale_shift,
            num_classes: 10,
            ..UNetConfig::adm_imagenet64()
        }
    }

    // Reference counts from guided-diffusion's UNetModel (commit 22e0df8) run by PyTorch with the
    // same settings and `learn_sigma=False`, plus one embedding row (time_embed_dim parameters)
    // for hayate's "no label" class, which ADM does not have.
    #[test]
    fn adm_style_models_match_guided_diffusions_parameter_counts() {
        let device = Device::flex();
        assert_eq!(small_adm(true).init(&device).num_params(), 3_295_939 + 256);
        assert_eq!(small_adm(false).init(&device).num_params(), 2_798_147 + 256);
    }

    #[test]
    fn adm_imagenet_presets_match_guided_diffusions_parameter_counts() {
        let device = Device::flex();
        let m64 = UNetConfig::adm_imagenet64().init(&device).num_params();
        assert_eq!(m64, 295_899_267 + 768);
        let m128 = UNetConfig::adm_imagenet128().init(&device).num_params();
        assert_eq!(m128, 421_522_691 + 1024);
    }

    #[test]
    fn class_conditional_models_take_labels_and_keep_shapes() {
        let device = Device::flex();
        let model = small_adm(true).init(&device);
        assert_eq!((model.num_classes(), model.resolution()), (10, 32));
        let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device);
        let t = Tensor::<1>::from_floats([3.0, 900.0], &device);
        let labels = Tensor::<1, Int>::from_ints([3, 10], &device);
        let y = model.forward_labelled(x.clone(), t.clone(), Some(labels));
        assert_eq!(y.dims(), [2, 3, 32, 32]);
        assert_eq!(model.forward(x, t).dims(), [2, 3, 32, 32]);
    }

    fn output_shape_matches_input(config: UNetConfig, side: usize) {
        let device = Device::flex();
        let model = config.init(&device);
        let x = Tensor::<4>::random(
            [2, 3, side, side],
            burn::tensor::Distribution::Default,
            &device,
        );
        let t = Tensor::<1>::from_floats([3.0, 900.0], &device);
        let y = model.forward(x, t);
        assert_eq!(y.dims(), [2, 3, side, side]);
        let values = y.into_data().try_to_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn output_shape_equals_input_shape_at_32() {
        output_shape_matches_input(UNetConfig::tiny(), 32);
    }

    #[test]
    fn output_shape_equals_input_shape_at_64() {
        let config = UNetConfig {
            resolution: 64,
            attention_resolutions: vec![32],
            ..UNetConfig::tiny()
        };
        output_shape_matches_input(config, 64);
    }

    #[test]
    fn ddpm_cifar10_output_shape_equals_input_shape() {
        output_shape_matches_input(UNetConfig::ddpm_cifar10(), 32);
    }

    #[test]
    fn invalid_configs_are_rejected_with_a_reason() {
        let bad_groups = UNetConfig {
            norm_groups: 7,
            ..UNetConfig::tiny()
        };
        assert!(bad_groups.validate().unwrap_err().0.contains("norm_groups"));
        let bad_attention = UNetConfig {
            attention_resolutions: vec![3],
            ..UNetConfig::tiny()
        };
        assert!(
            bad_attention
                .validate()
                .unwrap_err()
                .0
                .contains("attention")
        );
        let bad_resolution = UNetConfig {
            resolution: 33,
            ..UNetConfig::tiny()
        };
        assert!(bad_resolution.validate().is_err());
        assert!(UNetConfig::ddpm_cifar10().validate().is_ok());
    }

    #[test]
    fn flops_grow_with_width_and_match_a_hand_count_for_the_stem() {
        let small = UNetConfig::tiny().forward_flops();
        let large = UNetConfig::ddpm_cifar10().forward_flops();
        assert!(large > 10 * small);
        // The DDPM CIFAR-10 model is commonly quoted at about 6.1 GMACs (12.2 GFLOPs) per image.
        let gflops = large as f64 / 1e9;
        assert!((10.0..14.0).contains(&gflops), "{gflops} GFLOPs");
        // Pinned against a count written apart from the layer list (in Python, from DDPM's
        // layout), so the list and the FLOPs cannot drift together.
        assert_eq!(large, 12_443_713_536);
        assert_eq!(small, 580_927_488);
    }

    #[test]
    fn the_layer_list_walks_the_network_in_order() {
        let config = UNetConfig::ddpm_cifar10();
        let layers = config.layers();
        let convs = |k: usize, s: usize| {
            layers
                .iter()
                .filter(|l| matches!(l, Layer::Conv { kernel, stride, .. } if *kernel == k && *stride == s))
                .count()
        };
        // 2 per residual block (8 down, 2 middle, 12 up), the stem, the head, 3 upsamplers.
        assert_eq!(convs(3, 1), 2 * 22 + 2 + 3);
        assert_eq!(convs(3, 2), 3);
        // Skip projections where the width changes: 128->256 down, and the up path's
        // concatenations that are not 2 x the output width.
        assert!(convs(1, 1) > 0);
        let norms = layers
            .iter()
            .filter(|l| matches!(l, Layer::GroupNorm { silu: true, .. }))
            .count();
        assert_eq!(norms, 2 * 22 + 1);
        // Attention at 16x16: two down, one in the middle (at 4x4), three up.
        let attention: Vec<usize> = layers
            .iter()
            .filter_map(|l| match l {
                Layer::Attention { resolution, .. } => Some(*resolution),
                _ => None,
            })
            .collect();
        assert_eq!(attention, [16, 16, 4, 16, 16, 16]);
        assert_eq!(
            layers.first(),
            Some(&Layer::Linear {
                inputs: 128,
                outputs: 512
            })
        );
        assert_eq!(
            layers.last(),
            Some(&Layer::Conv {
                in_channels: 128,
                out_channels: 3,
                kernel: 3,
                stride: 1,
                resolution: 32
            })
        );
    }
}
