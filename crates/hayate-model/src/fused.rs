//! Ops the model runs fused where the backend has them. On the CPU backend (flex) Burn's
//! GroupNorm is ten whole-tensor passes forward (mean, subtract, square, mean, add, sqrt, divide,
//! scale, shift) and as many backward, and SiLU two more each way; here GroupNorm and the SiLU
//! after it are one pass forward and two backward, through a Burn backend extension with its own
//! autodiff backward. Elsewhere (WGPU, whose fusion compiler already merges elementwise work)
//! and with the switch off, the model runs Burn's composed ops, so the two can be timed side by
//! side and checked against each other.

use burn::nn::GroupNorm;
use burn::prelude::*;
use burn::tensor::activation::silu;
use std::sync::atomic::{AtomicBool, Ordering};

static FUSED: AtomicBool = AtomicBool::new(true);

/// Turns the fused ops on or off for the whole process (on by default): off runs Burn's
/// composed ops everywhere, the path to time the fused ones against.
pub fn set_fused(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether the fused ops are on (see [`set_fused`]).
pub fn fused() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// `norm.forward(x)`, followed by SiLU where `with_silu`: fused on the CPU backend for an f32
/// affine GroupNorm, Burn's composed ops otherwise.
///
/// # Shapes
/// - `x`: `[batch, channels, h, w]`
/// - output: `[batch, channels, h, w]`
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
    group_norm_on(norm, x, with_silu, fused())
}

/// [`group_norm`] with the switch given rather than read (tests flip it per call, not for the
/// whole process, which other tests share).
fn group_norm_on(norm: &GroupNorm, x: Tensor<4>, with_silu: bool, on: bool) -> Tensor<4> {
    #[cfg(feature = "cpu")]
    if let (true, Some(gamma), Some(beta)) = (on, &norm.gamma, &norm.beta)
        && cpu::runs_fused(&x)
    {
        return cpu::group_norm(
            x,
            gamma.val(),
            beta.val(),
            norm.num_groups,
            norm.epsilon,
            with_silu,
        );
    }
    let y = norm.forward(x);
    if with_silu { silu(y) } else { y }
}

#[cfg(feature = "cpu")]
mod cpu {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, DispatchDevice, Flex, backend_extension};
    use burn::prelude::*;
    use burn::tensor::{DType, TensorData};
    use rayon::prelude::*;

    /// Whether `x` lives on the CPU backend (with or without autodiff) in f32.
    pub fn runs_fused(x: &Tensor<4>) -> bool {
        let device = x.device().inner();
        matches!(device.as_dispatch(), DispatchDevice::Flex(_)) && x.dtype() == DType::F32
    }

    pub fn group_norm(
        x: Tensor<4>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        groups: usize,
        epsilon: f64,
        with_silu: bool,
    ) -> Tensor<4> {
        Tensor::from_dispatch(<burn::backend::Dispatch as FusedNorm>::group_norm_silu(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            groups,
            epsilon,
            with_silu,
        ))
    }

    /// The fused op as Burn dispatches it: to flex, and to autodiff over flex.
    #[backend_extension(Flex, Autodiff)]
    pub trait FusedNorm: Backend {
        /// GroupNorm of `x` ([n, c, h, w]) in `groups` groups with the affine `gamma`, `beta`
        /// ([c]), then SiLU where `with_silu`.
        fn group_norm_silu(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            groups: usize,
            epsilon: f64,
            with_silu: bool,
        ) -> FloatTensor<Self>;
    }

    /// The kernels behind [`FusedNorm`] on a backend without autodiff: the forward pass also
    /// returns each group's mean and reciprocal standard deviation ([n * groups]) for the
    /// backward pass, which returns the gradients of `x`, `gamma` and `beta`.
    pub trait NormKernels: Backend {
        fn group_norm_forward(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            groups: usize,
            epsilon: f64,
            with_silu: bool,
        ) -> [FloatTensor<Self>; 3];

        #[allow(clippy::too_many_arguments)]
        fn group_norm_backward(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            mean: FloatTensor<Self>,
            rstd: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            groups: usize,
            with_silu: bool,
        ) -> [FloatTensor<Self>; 3];
    }

    impl FusedNorm for Flex {
        fn group_norm_silu(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            groups: usize,
            epsilon: f64,
            with_silu: bool,
        ) -> FloatTensor<Self> {
            let [out, _, _] = Self::group_norm_forward(x, gamma, beta, groups, epsilon, with_silu);
            out
        }
    }

    impl<B: NormKernels, C: CheckpointStrategy> FusedNorm for Autodiff<B, C> {
        fn group_norm_silu(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            groups: usize,
            epsilon: f64,
            with_silu: bool,
        ) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct GroupNormBackward;

            impl<B: NormKernels> Backward<B, 3> for GroupNormBackward {
                // x, gamma, beta, mean, rstd, groups, with_silu: the output is recomputed from
                // these in the backward pass rather than kept.
                type State = (
                    B::FloatTensorPrimitive,
                    B::FloatTensorPrimitive,
                    B::FloatTensorPrimitive,
                    B::FloatTensorPrimitive,
                    B::FloatTensorPrimitive,
                    usize,
                    bool,
                );

                fn backward(
                    self,
                    ops: Ops<Self::State, 3>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let [node_x, node_gamma, node_beta] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    let (x, gamma, beta, mean, rstd, groups, with_silu) = ops.state;
                    let [dx, dgamma, dbeta] =
                        B::group_norm_backward(x, gamma, beta, mean, rstd, grad, groups, with_silu);
                    for (node, g) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
                        if let Some(node) = node {
                            grads.register::<B>(node.id, g);
                        }
                    }
                }
            }

            let nodes = [x.node(), gamma.node(), beta.node()];
            let (x, gamma, beta) = (
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
            );
            match GroupNormBackward
                .prepare::<C>(nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let [out, mean, rstd] = B::group_norm_forward(
                        x.clone(),
                        gamma.clone(),
                        beta.clone(),
                        groups,
                        epsilon,
                        with_silu,
                    );
                    prep.finish((x, gamma, beta, mean, rstd, groups, with_silu), out)
                }
                OpsKind::UnTracked(prep) => {
                    let [out, _, _] =
                        B::group_norm_forward(x, gamma, beta, groups, epsilon, with_silu);
                    prep.finish(out)
                }
            }
        }
    }

    /// A contiguous f32 copy of a flex tensor's values, and its shape.
    fn values(t: &FlexTensor) -> (Vec<usize>, std::borrow::Cow<'_, [f32]>) {
        let shape = t.layout().shape().to_vec();
        match t.as_slice::<f32>() {
            Some(s) if t.is_contiguous() => (shape, std::borrow::Cow::Borrowed(s)),
            _ => (
                shape,
                std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("f32").to_vec()),
            ),
        }
    }

    fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    /// The sizes of a GroupNorm's problem: batch, channels, positions per channel, groups,
    /// channels per group.
    #[derive(Clone, Copy)]
    struct Sizes {
        c: usize,
        hw: usize,
        per_group: usize,
    }

    impl Sizes {
        fn of(shape: &[usize], groups: usize) -> Self {
            let c = shape[1];
            assert!(
                groups > 0 && c.is_multiple_of(groups),
                "GroupNorm: {c} channels do not split into {groups} groups"
            );
            Self {
                c,
                hw: shape[2..].iter().product(),
                per_group: c / groups,
            }
        }

        /// Elements of one group of one image.
        fn group_len(&self) -> usize {
            self.per_group * self.hw
        }
    }

    fn sigmoid(y: f32) -> f32 {
        1.0 / (1.0 + (-y).exp())
    }

    impl NormKernels for Flex {
        fn group_norm_forward(
            x: FlexTensor,
            gamma: FlexTensor,
            beta: FlexTensor,
            groups: usize,
            epsilon: f64,
            with_silu: bool,
        ) -> [FlexTensor; 3] {
            let (shape, x) = values(&x);
            let (_, gamma) = values(&gamma);
            let (_, beta) = values(&beta);
            let s = Sizes::of(&shape, groups);
            let mut out = vec![0f32; x.len()];
            let stats: Vec<(f32, f32)> = out
                .par_chunks_mut(s.group_len())
                .zip(x.par_chunks(s.group_len()))
                .enumerate()
                .map(|(i, (out, x))| {
                    // Two passes in f64: the statistics are as exact as f32 inputs allow.
                    let len = x.len() as f64;
                    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / len;
                    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len;
                    let rstd = 1.0 / (var + epsilon).sqrt();
                    let first = (i % groups) * s.per_group;
                    for (j, (out, x)) in out.chunks_mut(s.hw).zip(x.chunks(s.hw)).enumerate() {
                        // y = (x - mean) * rstd * gamma + beta = x * a + b
                        let a = (rstd * gamma[first + j] as f64) as f32;
                        let b = beta[first + j] - (mean * a as f64) as f32;
                        for (o, &v) in out.iter_mut().zip(x) {
                            let y = v * a + b;
                            *o = if with_silu { y * sigmoid(y) } else { y };
                        }
                    }
                    (mean as f32, rstd as f32)
                })
                .collect();
            let (mean, rstd) = stats.into_iter().unzip();
            let n_groups = shape[0] * groups;
            [
                tensor(out, shape),
                tensor(mean, vec![n_groups]),
                tensor(rstd, vec![n_groups]),
            ]
        }

        fn group_norm_backward(
            x: FlexTensor,
            gamma: FlexTensor,
            beta: FlexTensor,
            mean: FlexTensor,
            rstd: FlexTensor,
            grad: FlexTensor,
            groups: usize,
            with_silu: bool,
        ) -> [FlexTensor; 3] {
            let (shape, x) = values(&x);
            let (_, gamma) = values(&gamma);
            let (_, beta) = values(&beta);
            let (_, mean) = values(&mean);
            let (_, rstd) = values(&rstd);
            let (_, grad) = values(&grad);
            let s = Sizes::of(&shape, groups);
            let mut dx = vec![0f32; x.len()];
            // Per image and group: each channel's (sum of dy, sum of dy * x_hat), for the
            // affine's gradients, summed over the batch below.
            let partials: Vec<Vec<(f64, f64)>> = dx
                .par_chunks_mut(s.group_len())
                .zip(x.par_chunks(s.group_len()))
                .zip(grad.par_chunks(s.group_len()))
                .enumerate()
                .map(|(i, ((dx, x), grad))| {
                    let (m, r) = (mean[i], rstd[i]);
                    let first = (i % groups) * s.per_group;
                    let mut channel = Vec::with_capacity(s.per_group);
                    // Sums over the group of d(x_hat) and d(x_hat) * x_hat.
                    let (mut sum_d, mut sum_dx) = (0f64, 0f64);
                    for (j, ((dx, x), grad)) in dx
                        .chunks_mut(s.hw)
                        .zip(x.chunks(s.hw))
                        .zip(grad.chunks(s.hw))
                        .enumerate()
                    {
                        let (g, b) = (gamma[first + j], beta[first + j]);
                        let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
                        for ((d, &v), &go) in dx.iter_mut().zip(x).zip(grad) {
                            let xhat = (v - m) * r;
                            let dy = if with_silu {
                                let y = xhat * g + b;
                                let sig = sigmoid(y);
                                go * sig * (1.0 + y * (1.0 - sig))
                            } else {
                                go
                            };
                            sum_dy += dy as f64;
                            sum_dy_xhat += (dy * xhat) as f64;
                            // d(x_hat), finished into dx in the second pass.
                            *d = dy * g;
                        }
                        sum_d += sum_dy * g as f64;
                        sum_dx += sum_dy_xhat * g as f64;
                        channel.push((sum_dy, sum_dy_xhat));
                    }
                    let len = s.group_len() as f64;
                    let (mean_d, mean_dx) = ((sum_d / len) as f32, (sum_dx / len) as f32);
                    for (d, &v) in dx.iter_mut().zip(x) {
                        let xhat = (v - m) * r;
                        *d = r * (*d - mean_d - xhat * mean_dx);
                    }
                    channel
                })
                .collect();
            let (mut dgamma, mut dbeta) = (vec![0f64; s.c], vec![0f64; s.c]);
            for (i, channel) in partials.iter().enumerate() {
                let first = (i % groups) * s.per_group;
                for (j, (dy, dy_xhat)) in channel.iter().enumerate() {
                    dbeta[first + j] += dy;
                    dgamma[first + j] += dy_xhat;
                }
            }
            let narrow = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
            [
                tensor(dx, shape),
                tensor(narrow(dgamma), vec![s.c]),
                tensor(narrow(dbeta), vec![s.c]),
            ]
        }
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::nn::GroupNormConfig;
    use burn::tensor::Distribution;

    /// Largest |a - b| over max(|b|, 1): relative for large values, absolute near zero.
    fn max_error<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let (a, b) = (
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0, f32::max)
    }

    /// The fused op against Burn's composed one, forward and every gradient, on one shape.
    fn check(batch: usize, channels: usize, groups: usize, side: [usize; 2], with_silu: bool) {
        let device = Device::flex().autodiff();
        let norm = GroupNormConfig::new(groups, channels)
            .with_epsilon(1e-5)
            .init(&device);
        // Non-trivial affine parameters, and an offset and scale in x so the statistics matter.
        let norm = GroupNorm {
            gamma: norm
                .gamma
                .map(|p| p.map(|g| g.random_like(Distribution::Normal(1.0, 0.5)).require_grad())),
            beta: norm
                .beta
                .map(|p| p.map(|b| b.random_like(Distribution::Normal(0.0, 0.5)).require_grad())),
            ..norm
        };
        let x = Tensor::<4>::random(
            [batch, channels, side[0], side[1]],
            Distribution::Normal(0.3, 2.0),
            &device,
        );
        // Otherwise both runs below would take the composed path and agree trivially.
        assert!(cpu::runs_fused(&x), "the CPU backend must take the fused path");
        // A random upstream gradient, so every output element weighs differently.
        let upstream = Tensor::<4>::random(x.shape(), Distribution::Normal(0.0, 1.0), &device);
        let run = |on: bool| {
            let x = x.clone().require_grad();
            let y = group_norm_on(&norm, x.clone(), with_silu, on);
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let gamma = norm.gamma.as_ref().unwrap();
            let beta = norm.beta.as_ref().unwrap();
            (
                y.without_autodiff(),
                x.grad(&grads).unwrap(),
                gamma.grad(&grads).unwrap(),
                beta.grad(&grads).unwrap(),
            )
        };
        let composed = run(false);
        let fused = run(true);
        let what = format!(
            "batch {batch}, {channels} channels in {groups} groups, {side:?}, silu {with_silu}"
        );
        // Gradients of gamma and beta sum over the batch and the map, so they carry the
        // summation order's rounding of both paths: 1e-5 relative to their scale.
        for (name, error) in [
            ("output", max_error(fused.0, composed.0)),
            ("x gradient", max_error(fused.1, composed.1)),
            (
                "gamma gradient",
                max_error(fused.2.clone(), composed.2.clone()),
            ),
            (
                "beta gradient",
                max_error(fused.3.clone(), composed.3.clone()),
            ),
        ] {
            assert!(error < 1e-5, "{name} differs by {error:e} ({what})");
        }
    }

    #[test]
    fn fused_group_norm_equals_burns_forward_and_backward_over_many_shapes() {
        for (batch, channels, groups, side, with_silu) in [
            (1, 32, 8, [8, 8], true),
            (2, 64, 32, [16, 16], true),
            (3, 6, 3, [5, 7], true),
            (2, 12, 4, [1, 1], true),
            (2, 24, 1, [9, 3], false),
            (4, 64, 8, [4, 4], false),
            (1, 7, 7, [3, 3], true),
        ] {
            check(batch, channels, groups, side, with_silu);
        }
    }

    #[test]
    fn without_autodiff_the_fused_op_runs_and_agrees() {
        let device = Device::flex();
        let norm = GroupNormConfig::new(4, 16).init(&device);
        let x = Tensor::<4>::random([2, 16, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        let composed = group_norm_on(&norm, x.clone(), true, false);
        let fused = group_norm_on(&norm, x, true, true);
        assert!(max_error(fused, composed) < 1e-5);
    }
}
