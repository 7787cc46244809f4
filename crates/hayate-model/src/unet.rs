use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::blocks::{conv3x3, group_norm, zero_conv};
use crate::config::BlockPlan;
use crate::{AttentionBlock, Downsample, ResBlock, TimestepEmbedding, UNetConfig, Upsample};

/// A residual block, optionally followed by self-attention.
#[derive(Module, Debug)]
struct Stage {
    res: ResBlock,
    attention: Option<AttentionBlock>,
}

impl Stage {
    fn new(plan: &BlockPlan, config: &UNetConfig, device: &Device) -> Self {
        let groups = config.norm_groups;
        Self {
            res: ResBlock::new(
                plan.in_channels,
                plan.out_channels,
                config.time_embed_dim(),
                groups,
                config.dropout,
                device,
            ),
            attention: plan
                .attention
                .then(|| AttentionBlock::new(plan.out_channels, groups, device)),
        }
    }

    fn forward(&self, x: Tensor<4>, temb: Tensor<2>) -> Tensor<4> {
        let h = self.res.forward(x, temb);
        match &self.attention {
            Some(attention) => attention.forward(h),
            None => h,
        }
    }
}

/// One resolution level of the down path: its stages, then an optional downsample.
#[derive(Module, Debug)]
struct DownLevel {
    stages: Vec<Stage>,
    resample: Option<Downsample>,
}

/// One resolution level of the up path: its stages, then an optional upsample.
#[derive(Module, Debug)]
struct UpLevel {
    stages: Vec<Stage>,
    resample: Option<Upsample>,
}

/// The DDPM/ADM UNet: predicts the noise (or v, or x_0) from a noisy image and its timestep.
#[derive(Module, Debug)]
pub struct UNet {
    time_embed: TimestepEmbedding,
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
        UNet {
            time_embed: TimestepEmbedding::new(ch, temb, device),
            conv_in: conv3x3(self.image_channels, ch, 1, device),
            down: plan
                .down
                .iter()
                .map(|(blocks, resample)| DownLevel {
                    stages: stages(blocks),
                    resample: resample.then(|| Downsample::new(width(blocks), device)),
                })
                .collect(),
            mid_res0: ResBlock::new(mid, mid, temb, groups, self.dropout, device),
            mid_attention: AttentionBlock::new(mid, groups, device),
            mid_res1: ResBlock::new(mid, mid, temb, groups, self.dropout, device),
            up: plan
                .up
                .iter()
                .map(|(blocks, resample)| UpLevel {
                    stages: stages(blocks),
                    resample: resample.then(|| Upsample::new(width(blocks), device)),
                })
                .collect(),
            norm_out: group_norm(groups, ch, device),
            conv_out: zero_conv(ch, self.image_channels, 3, device),
        }
    }
}

impl UNet {
    /// Predicts the network target for noisy images `x` at timesteps `t`.
    ///
    /// # Shapes
    /// - `x`: `[batch, image_channels, resolution, resolution]` (any side divisible by
    ///   2^(levels-1) works, since the network is fully convolutional)
    /// - `t`: `[batch]`, timesteps as floats in `[0, T)`
    /// - output: the same shape as `x`
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        let temb = self.time_embed.forward(t);
        let mut h = self.conv_in.forward(x);
        let mut skips = vec![h.clone()];
        for level in &self.down {
            for stage in &level.stages {
                h = stage.forward(h, temb.clone());
                skips.push(h.clone());
            }
            if let Some(down) = &level.resample {
                h = down.forward(h);
                skips.push(h.clone());
            }
        }
        h = self.mid_res0.forward(h, temb.clone());
        h = self.mid_attention.forward(h);
        h = self.mid_res1.forward(h, temb.clone());
        for level in &self.up {
            for stage in &level.stages {
                let skip = skips.pop().expect("one skip per up stage, by construction");
                h = stage.forward(Tensor::cat(vec![h, skip], 1), temb.clone());
            }
            if let Some(up) = &level.resample {
                h = up.forward(h);
            }
        }
        self.conv_out.forward(silu(self.norm_out.forward(h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
