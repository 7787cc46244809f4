//! Mixed precision: the network's forward in bf16 while the weights stay f32.
//!
//! Burn has no automatic mixed precision, so training casts a copy of the f32 network to bf16
//! for each forward ([`cast_params`]): the cast is an autodiff op, so the backward brings every
//! gradient back to its f32 parameter, and the optimiser, its state and the EMA never see bf16.
//! Inside the network, the steps that lose most in bf16 run in f32 as PyTorch's autocast runs
//! them: the timestep's sinusoids, GroupNorm and layer norm, and the attention softmax.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

/// The float type a training step's forward computes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// The forward (and so the backward's products) in bfloat16, with f32 weights, gradients,
    /// optimiser state, EMA, loss and normalisation statistics.
    Bf16,
}

impl Precision {
    /// Whether this is f32 (the default, left out of written configs).
    pub fn is_f32(&self) -> bool {
        *self == Self::F32
    }

    /// Its name as configs and flags spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// The float type the forward computes in.
    pub fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
        }
    }

    /// Whether `device` computes in this type: WGSL has no bf16, and Vulkan stores and converts
    /// it but has no bf16 arithmetic, so there it would give garbage rather than fail.
    pub fn supported_on(self, device: &Device) -> bool {
        self.is_f32() || device.supports_dtype(self.dtype())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// The names configs use ([`Precision::name`]).
    fn from_str(name: &str) -> Result<Self, String> {
        [Self::F32, Self::Bf16]
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| format!("{name:?} is not a precision (f32 or bf16)"))
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Casts every float parameter to one type, keeping each parameter's id.
struct CastParams(FloatDType);

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// `module` with every float parameter cast to `dtype`. Under autodiff each cast tensor is a
/// child of the original parameter, so `GradientsParams::from_grads(grads, &module)` (the
/// original, not the copy) finds f32 gradients. A parameter already in `dtype` is shared as it
/// is. Cast once per step: the backward consumes the graph, and the optimiser replaces the
/// parameters.
pub fn cast_params<M: Module>(module: M, dtype: FloatDType) -> M {
    module.map(&mut CastParams(dtype))
}

/// `x` in f32 for a step that must not lose precision, and the type to return its result in.
pub(crate) fn widen<const D: usize>(x: Tensor<D>) -> (Tensor<D>, DType) {
    let dtype = x.dtype();
    (x.cast(FloatDType::F32), dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_others_are_refused() {
        for precision in [Precision::F32, Precision::Bf16] {
            assert_eq!(precision.name().parse::<Precision>(), Ok(precision));
        }
        let err = "f16".parse::<Precision>().unwrap_err();
        assert!(err.contains("\"f16\"") && err.contains("bf16"), "{err}");
    }
}
