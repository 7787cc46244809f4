//! Either denoiser behind one type, so that training, sampling and evaluation take any of them.

use crate::{DiT, DiTConfig, DropoutKey, ModelConfigError, UNet, UNetConfig};
use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

/// The configuration of a [`Network`]: a UNet or a DiT.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkConfig {
    /// A DDPM/ADM UNet.
    UNet(UNetConfig),
    /// A diffusion transformer.
    DiT(DiTConfig),
}

impl NetworkConfig {
    /// Names of every preset, the UNets' then the DiTs'.
    pub fn presets() -> Vec<&'static str> {
        UNetConfig::PRESETS
            .into_iter()
            .chain(DiTConfig::PRESETS)
            .collect()
    }

    /// The preset with this name, of either architecture.
    pub fn preset(name: &str) -> Option<Self> {
        UNetConfig::preset(name)
            .map(Self::UNet)
            .or_else(|| DiTConfig::preset(name).map(Self::DiT))
    }

    /// "UNet" or "DiT".
    pub fn architecture(&self) -> &'static str {
        match self {
            Self::UNet(_) => "UNet",
            Self::DiT(_) => "DiT",
        }
    }

    /// Checks that the config describes a network that can be built.
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        match self {
            Self::UNet(c) => c.validate(),
            Self::DiT(c) => c.validate(),
        }
    }

    /// Builds the network on `device`.
    ///
    /// # Panics
    /// If the config is invalid (see [`NetworkConfig::validate`]).
    pub fn init(&self, device: &Device) -> Network {
        match self {
            Self::UNet(c) => Network::UNet(c.init(device)),
            Self::DiT(c) => Network::DiT(c.init(device)),
        }
    }

    /// FLOPs of one forward pass on one image (see each architecture's `forward_flops`).
    pub fn forward_flops(&self) -> u64 {
        match self {
            Self::UNet(c) => c.forward_flops(),
            Self::DiT(c) => c.forward_flops(),
        }
    }

    /// Side length of the square images the network is built for.
    pub fn resolution(&self) -> usize {
        match self {
            Self::UNet(c) => c.resolution,
            Self::DiT(c) => c.resolution,
        }
    }

    /// Channels of the images.
    pub fn image_channels(&self) -> usize {
        match self {
            Self::UNet(c) => c.image_channels,
            Self::DiT(c) => c.image_channels,
        }
    }

    /// Classes of a class-conditional network (0: unconditional).
    pub fn num_classes(&self) -> usize {
        match self {
            Self::UNet(c) => c.num_classes,
            Self::DiT(c) => c.num_classes,
        }
    }

    /// Dropout probability in training (a DiT has none).
    pub fn dropout(&self) -> f64 {
        match self {
            Self::UNet(c) => c.dropout,
            Self::DiT(_) => 0.0,
        }
    }

    /// The config with dropout set to `p` where the architecture has it: what a network's
    /// weights do not depend on.
    pub fn with_dropout(&self, p: f64) -> Self {
        match self {
            Self::UNet(c) => Self::UNet(UNetConfig {
                dropout: p,
                ..c.clone()
            }),
            Self::DiT(c) => Self::DiT(c.clone()),
        }
    }
}

/// A UNet or a DiT. Its parameters sit under the inner network's own names (no level for the
/// variant), so a checkpoint of a UNet written before the DiT existed loads unchanged.
// One per model, built once and moved rarely: the UNet's size is no cost worth a box that every
// match would have to see through.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Network {
    /// A DDPM/ADM UNet.
    UNet(UNet),
    /// A diffusion transformer.
    DiT(DiT),
}

impl Network {
    /// Side length of the images the network was built for.
    pub fn resolution(&self) -> usize {
        match self {
            Self::UNet(m) => m.resolution(),
            Self::DiT(m) => m.resolution(),
        }
    }

    /// Classes of a class-conditional network (0: unconditional).
    pub fn num_classes(&self) -> usize {
        match self {
            Self::UNet(m) => m.num_classes(),
            Self::DiT(m) => m.num_classes(),
        }
    }

    /// Predicts the network target for noisy images `x` (`[batch, C, H, W]`) at timesteps `t`
    /// (`[batch]`, floats in `[0, T)`), without labels.
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward_labelled(x, t, None)
    }

    /// [`Network::forward`] with class labels (`[batch]`, each in `0..=num_classes`, the last
    /// meaning "no label"; `None`: no label for every image).
    pub fn forward_labelled(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        labels: Option<Tensor<1, Int>>,
    ) -> Tensor<4> {
        let x = x.cast(self.dtype());
        match self {
            Self::UNet(m) => m.forward_labelled(x, t, labels),
            Self::DiT(m) => m.forward_labelled(x, t, labels),
        }
        .cast(FloatDType::F32)
    }

    /// The training forward pass: the UNet's residual blocks apply their dropout with masks
    /// from `dropout`; a DiT has no dropout (as DiT's own training), so it ignores the key.
    pub fn forward_training(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        labels: Option<Tensor<1, Int>>,
        dropout: DropoutKey,
    ) -> Tensor<4> {
        let x = x.cast(self.dtype());
        match self {
            Self::UNet(m) => m.forward_training(x, t, labels, dropout),
            Self::DiT(m) => m.forward_labelled(x, t, labels),
        }
        .cast(FloatDType::F32)
    }

    /// The float type the network computes in, its parameters' (f32 unless cast with
    /// [`cast_params`](crate::cast_params)). The forward takes f32 images and timesteps in
    /// either case and returns f32.
    pub fn dtype(&self) -> DType {
        match self {
            Self::UNet(m) => m.first_weight_dtype(),
            Self::DiT(m) => m.first_weight_dtype(),
        }
    }
}

/// Applies `$body` to the inner network, rewrapping it when the body returns one.
macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Network::UNet($m) => $body,
            Network::DiT($m) => $body,
        }
    };
    (wrap $self:expr, $m:ident => $body:expr) => {
        match $self {
            Network::UNet($m) => Network::UNet($body),
            Network::DiT($m) => Network::DiT($body),
        }
    };
}

// Written out rather than derived: Burn's derive for enums adds the variant's name to every
// parameter path ("UNet.conv_in.weight"), which would orphan every existing checkpoint.
impl Module for Network {
    fn collect_devices(&self, devices: Devices) -> Devices {
        each!(self, m => m.collect_devices(devices))
    }

    fn fork(self, device: &Device) -> Self {
        each!(wrap self, m => m.fork(device))
    }

    fn to_device(self, device: &Device) -> Self {
        each!(wrap self, m => m.to_device(device))
    }

    fn train(self) -> Self {
        each!(wrap self, m => m.train())
    }

    fn valid(&self) -> Self {
        each!(wrap self, m => m.valid())
    }

    fn materialize(self) -> Self {
        each!(wrap self, m => m.materialize())
    }

    fn visit<Visitor: ModuleVisitor>(&self, visitor: &mut Visitor) {
        each!(self, m => m.visit(visitor))
    }

    fn map<Mapper: ModuleMapper>(self, mapper: &mut Mapper) -> Self {
        each!(wrap self, m => m.map(mapper))
    }
}

impl ModuleDisplayDefault for Network {
    fn content(&self, content: Content) -> Option<Content> {
        each!(self, m => m.content(content))
    }

    fn num_params(&self) -> usize {
        each!(self, m => Module::num_params(m))
    }
}

impl ModuleDisplay for Network {}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&ModuleDisplay::format(self, Default::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::store::ModuleSnapshot;

    #[test]
    fn parameters_keep_the_inner_networks_names_and_records_move_between_them() {
        let device = Device::flex();
        let unet = UNetConfig::tiny().init(&device);
        fn names<M: ModuleSnapshot>(m: &M) -> Vec<String> {
            m.collect(None, None, false)
                .into_iter()
                .map(|t| t.name)
                .collect()
        }
        let wrapped = Network::UNet(unet.clone());
        let (inner, outer) = (names(&unet), names(&wrapped));
        assert_eq!(inner, outer);
        assert_eq!(Module::num_params(&wrapped), Module::num_params(&unet));
        // A bare UNet's record (what checkpoints hold) loads into the wrapped one.
        let fresh = NetworkConfig::UNet(UNetConfig::tiny()).init(&device);
        let loaded = fresh.load_record(unet.clone().into_record());
        let x = Tensor::<4>::random([1, 3, 32, 32], burn::tensor::Distribution::Default, &device);
        let t = Tensor::<1>::from_floats([10.0], &device);
        let a = unet.forward(x.clone(), t.clone()).into_data();
        let b = loaded.forward(x, t).into_data();
        assert_eq!(a, b);
    }

    #[test]
    fn presets_of_both_architectures_resolve() {
        for name in NetworkConfig::presets() {
            let config = NetworkConfig::preset(name).unwrap();
            config.validate().unwrap();
            assert!(config.forward_flops() > 0);
        }
        assert_eq!(
            NetworkConfig::preset("dit_tiny").unwrap().architecture(),
            "DiT"
        );
        assert!(NetworkConfig::preset("nope").is_none());
    }
}
