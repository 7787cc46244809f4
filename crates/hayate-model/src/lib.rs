//! The hayate denoisers for [Burn](https://burn.dev): a DDPM/ADM-style UNet and a diffusion
//! transformer (DiT).
//!
//! This crate holds the network only, with no training code, so any Burn project can embed it:
//!
//! ```no_run
//! use burn::prelude::*;
//! use hayate_model::UNetConfig;
//!
//! let device = Device::default();
//! let model = UNetConfig::ddpm_cifar10().init(&device);
//! let x = Tensor::<4>::zeros([2, 3, 32, 32], &device);
//! let t = Tensor::<1>::from_floats([10.0, 500.0], &device);
//! let eps = model.forward(x, t); // [2, 3, 32, 32]
//! ```

mod blocks;
mod config;
pub mod diffusers;
mod dit;
mod dropout;
pub mod fused;
mod network;
pub mod precision;
mod unet;

pub use blocks::{
    AttentionBlock, Downsample, DownsamplePadding, ResBlock, ResBlockConfig, Resample,
    TimestepEmbedding, Upsample,
};
pub use config::{Layer, ModelConfigError, UNetConfig};
pub use diffusers::HostTensor;
pub use dit::{DiT, DiTConfig};
pub use dropout::{DropoutKey, DropoutMasks};
pub use network::{Network, NetworkConfig};
pub use precision::{Precision, cast_params};
pub use unet::UNet;
