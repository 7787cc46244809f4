//! Ops the model runs fused where the backend has them. On the CPU backend (flex) Burn's
//! GroupNorm is ten whole-tensor passes forward (mean, subtract, square, mean, add, sqrt, divide,
//! scale, shift) and as many backward, and SiLU two more each way; here GroupNorm and the SiLU
//! after it are one pass forward and two backward, and attention's softmax one pass each way,
//! through Burn backend extensions with their own autodiff backward. Elsewhere (WGPU, whose
//! fusion compiler already merges elementwise work) and with the switch off, the model runs
//! Burn's composed ops, so the two can be timed side by side and checked against each other.

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
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

static POINTWISE_PRODUCTS: AtomicBool = AtomicBool::new(true);

/// Chooses how the fused CPU convolution runs a 1x1 stride-1 layer (for the whole process): on
/// (the default), as one product per image on the tensors as they lie; off, through the column
/// matrix as every other kernel size: the path to time the products against.
pub fn set_pointwise_products(on: bool) {
    POINTWISE_PRODUCTS.store(on, Ordering::Relaxed);
}

/// Whether 1x1 layers run as direct products (see [`set_pointwise_products`]).
pub fn pointwise_products() -> bool {
    POINTWISE_PRODUCTS.load(Ordering::Relaxed)
}

static TURNED_INPUT_GRADIENT: AtomicBool = AtomicBool::new(true);

/// Chooses how the fused CPU convolution computes the input gradient of a stride-1 layer into
/// few channels (a UNet's last; for the whole process): on (the default), as a forward
/// convolution of the output gradient by the turned kernel, through the same column matrix and
/// product as the forward; off, as Burn's transposed convolution, as every other layer does:
/// the path to time it against.
pub fn set_turned_input_gradient(on: bool) {
    TURNED_INPUT_GRADIENT.store(on, Ordering::Relaxed);
}

/// Whether those input gradients go through the turned kernel (see
/// [`set_turned_input_gradient`]).
pub fn turned_input_gradient() -> bool {
    TURNED_INPUT_GRADIENT.load(Ordering::Relaxed)
}

static SHIFTED_PRODUCTS: AtomicBool = AtomicBool::new(true);

/// Chooses how the fused CPU convolution runs a stride-1 kernel larger than 1x1 (for the whole
/// process): on (the default), as one product per kernel position on the padded input shifted,
/// with no column matrix, for the parts and sizes where that measured faster (the weight
/// gradient from 16x16; see `cpu::Part`); off, through the column matrix (and Burn's
/// transposed convolution for the input gradient) throughout: the path to time the shifted
/// products against.
pub fn set_shifted_products(on: bool) {
    SHIFTED_PRODUCTS.store(on, Ordering::Relaxed);
}

/// Whether those layers run as shifted products (see [`set_shifted_products`]).
pub fn shifted_products() -> bool {
    SHIFTED_PRODUCTS.load(Ordering::Relaxed)
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
    // Under bf16 the statistics and the affine step run in f32, as autocast runs GroupNorm.
    if x.dtype() != burn::tensor::DType::F32 {
        let (x, dtype) = crate::precision::widen(x);
        let norm = crate::precision::cast_params(norm.clone(), burn::tensor::FloatDType::F32);
        return group_norm_on(&norm, x, with_silu, on).cast(dtype);
    }
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
    #[cfg(not(feature = "cpu"))]
    let _ = on;
    let y = norm.forward(x);
    if with_silu { silu(y) } else { y }
}

/// `conv.forward(x)`: on the CPU backend, for an f32 convolution with a bias, no groups and no
/// dilation, im2col and matrix products: the output one image per rayon task where it has 256
/// positions or more, else one product per block of images (over blocks where the whole
/// batch's column matrix would be large), and the weight gradient one product per block (flex
/// runs a product per image and 512-pixel tile, and its weight gradient as a convolution over
/// swapped dimensions); a 1x1 stride-1 layer as one product per image with no column matrix at
/// all. The
/// input gradient is Burn's transposed convolution, except into few channels (see
/// [`set_turned_input_gradient`]); every other convolution is Burn's.
///
/// # Shapes
/// - `x`: `[batch, in_channels, h, w]`
/// - output: `[batch, out_channels, h_out, w_out]`
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv2d_on(conv, x, fused())
}

/// [`conv2d`] with the switch given rather than read.
fn conv2d_on(conv: &Conv2d, x: Tensor<4>, on: bool) -> Tensor<4> {
    #[cfg(feature = "cpu")]
    if let (true, Some(bias), Some(padding)) = (on, &conv.bias, explicit(&conv.padding))
        && conv.groups == 1
        && conv.dilation == [1, 1]
        && cpu::runs_fused(&x)
    {
        return cpu::conv2d(x, conv.weight.val(), bias.val(), conv.stride, padding);
    }
    #[cfg(not(feature = "cpu"))]
    let _ = on;
    conv.forward(x)
}

/// `softmax(x, 3)`, over the last axis of `[batch, heads, rows, columns]` attention scores:
/// fused on the CPU backend for f32 (one pass forward with a vectorised exp, one backward, in
/// place of Burn's five whole-tensor passes forward, max, subtract, exp, sum and divide, and
/// their autodiff gradients), Burn's composed ops otherwise.
pub fn softmax_last(x: Tensor<4>) -> Tensor<4> {
    softmax_last_on(x, fused())
}

/// [`softmax_last`] with the switch given rather than read.
fn softmax_last_on(x: Tensor<4>, on: bool) -> Tensor<4> {
    // In f32 under bf16, as autocast runs the softmax.
    if x.dtype() != burn::tensor::DType::F32 {
        let (x, dtype) = crate::precision::widen(x);
        return softmax_last_on(x, on).cast(dtype);
    }
    #[cfg(feature = "cpu")]
    if on && cpu::runs_fused(&x) {
        return cpu::softmax(x);
    }
    #[cfg(not(feature = "cpu"))]
    let _ = on;
    burn::tensor::activation::softmax(x, 3)
}

/// Attention of each head's queries over its keys and values, all `[batch, heads, d, hw]`
/// (channels first, as a 1x1 convolution leaves them), `softmax(q^T k * scale)` applied to
/// `v`, returned as `[batch, heads, d, hw]`. On the CPU backend in f32 one op with its own
/// backward, whose products run one (image, head) per rayon task (gemm does not thread
/// products this shallow, see [`conv2d`]'s 1x1 path); elsewhere Burn's batched matmuls around
/// [`softmax_last`].
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    attention_on(q, k, v, scale, fused())
}

/// [`attention`] with the switch given rather than read.
fn attention_on(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, on: bool) -> Tensor<4> {
    #[cfg(feature = "cpu")]
    if on && cpu::runs_fused(&q) && cpu::runs_fused(&k) && cpu::runs_fused(&v) {
        return cpu::attention(q, k, v, scale);
    }
    let weights = softmax_last_on(q.swap_dims(2, 3).matmul(k) * scale, on); // [n, heads, hw, hw]
    weights.matmul(v.swap_dims(2, 3)).swap_dims(2, 3)
}

/// The scalars of one Adam step (see [`adam_step`]), in f64 as the optimiser computes them.
#[derive(Debug, Clone, Copy)]
pub struct AdamScalars {
    /// beta1 of this step.
    pub beta1: f64,
    /// beta2.
    pub beta2: f64,
    /// The bias correction sqrt(1 - beta2^t) / (1 - prod beta1).
    pub factor: f64,
    /// epsilon times sqrt(1 - beta2^t), added to sqrt(v).
    pub epsilon: f64,
    /// The learning rate.
    pub lr: f64,
}

/// One Adam step: m = m b1 + g (1 - b1), v = v b2 + g^2 (1 - b2),
/// p = p - lr (m factor) / (sqrt(v) + epsilon); returns (p, m, v). On the CPU backend for f32
/// tensors, one pass over the parameter, its gradient and moments, in place where their buffers
/// are not shared, with the same f32 operations in the same order as the composed tensor ops
/// (so the same bits); those ops otherwise (where the switch is off: the path to time it
/// against).
pub fn adam_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
    s: AdamScalars,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    adam_step_on(param, grad, m, v, s, fused())
}

/// [`adam_step`] with the switch given rather than read.
fn adam_step_on<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
    s: AdamScalars,
    on: bool,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    #[cfg(feature = "cpu")]
    if on && [&param, &grad, &m, &v].iter().all(|t| cpu::runs_fused(*t)) {
        return cpu::adam_step(param, grad, m, v, s);
    }
    #[cfg(not(feature = "cpu"))]
    let _ = on;
    let m = m.mul_scalar(s.beta1) + grad.clone().mul_scalar(1.0 - s.beta1);
    let v = v.mul_scalar(s.beta2) + grad.square().mul_scalar(1.0 - s.beta2);
    let update = m
        .clone()
        .mul_scalar(s.factor)
        .div(v.clone().sqrt().add_scalar(s.epsilon));
    (param - update.mul_scalar(s.lr), m, v)
}

/// The EMA update `ema * decay + source * (1 - decay)`: on the CPU backend for f32 tensors in
/// one pass, in place where `ema`'s buffer is not shared (the same f32 operations as the
/// composed ops, which run otherwise).
pub fn ema_mix<const D: usize>(ema: Tensor<D>, source: Tensor<D>, decay: f64) -> Tensor<D> {
    ema_mix_on(ema, source, decay, fused())
}

/// [`ema_mix`] with the switch given rather than read.
fn ema_mix_on<const D: usize>(
    ema: Tensor<D>,
    source: Tensor<D>,
    decay: f64,
    on: bool,
) -> Tensor<D> {
    #[cfg(feature = "cpu")]
    if on && cpu::runs_fused(&ema) && cpu::runs_fused(&source) {
        return cpu::ema_mix(ema, source, decay);
    }
    #[cfg(not(feature = "cpu"))]
    let _ = on;
    ema.mul_scalar(decay) + source.mul_scalar(1.0 - decay)
}

/// A padding as (top, left, bottom, right), where it does not depend on the input (`Same`
/// does, and stays with Burn).
#[cfg(feature = "cpu")]
fn explicit(padding: &burn::nn::PaddingConfig2d) -> Option<[usize; 4]> {
    use burn::nn::PaddingConfig2d as P;
    match *padding {
        P::Valid => Some([0; 4]),
        P::Explicit(top, left, bottom, right) => Some([top, left, bottom, right]),
        _ => None,
    }
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
    pub fn runs_fused<const D: usize>(x: &Tensor<D>) -> bool {
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

    pub fn conv2d(
        x: Tensor<4>,
        weight: Tensor<4>,
        bias: Tensor<1>,
        stride: [usize; 2],
        [top, left, bottom, right]: [usize; 4],
    ) -> Tensor<4> {
        Tensor::from_dispatch(<burn::backend::Dispatch as FusedConv>::conv2d_im2col(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            stride[0],
            stride[1],
            top,
            bottom,
            left,
            right,
        ))
    }

    pub fn softmax(x: Tensor<4>) -> Tensor<4> {
        Tensor::from_dispatch(<burn::backend::Dispatch as FusedSoftmax>::softmax_last(
            x.into_dispatch(),
        ))
    }

    pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
        Tensor::from_dispatch(
            <burn::backend::Dispatch as FusedAttention>::attention_heads(
                q.into_dispatch(),
                k.into_dispatch(),
                v.into_dispatch(),
                scale,
            ),
        )
    }

    #[allow(clippy::type_complexity)]
    pub fn adam_step<const D: usize>(
        param: Tensor<D>,
        grad: Tensor<D>,
        m: Tensor<D>,
        v: Tensor<D>,
        s: super::AdamScalars,
    ) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
        let (p, m, v) = <burn::backend::Dispatch as FusedUpdates>::adam(
            param.into_dispatch(),
            grad.into_dispatch(),
            m.into_dispatch(),
            v.into_dispatch(),
            [s.beta1, s.beta2, s.factor, s.epsilon, s.lr],
        );
        (
            Tensor::from_dispatch(p),
            Tensor::from_dispatch(m),
            Tensor::from_dispatch(v),
        )
    }

    pub fn ema_mix<const D: usize>(ema: Tensor<D>, source: Tensor<D>, decay: f64) -> Tensor<D> {
        Tensor::from_dispatch(<burn::backend::Dispatch as FusedUpdates>::ema(
            ema.into_dispatch(),
            source.into_dispatch(),
            decay,
        ))
    }

    /// The optimiser's and the EMA's elementwise updates, on flex (their tensors are off the
    /// autodiff graph).
    #[backend_extension(Flex)]
    pub trait FusedUpdates: Backend {
        /// One Adam step: (param, m, v) from the parameter, its gradient and the moments, with
        /// the scalars [beta1, beta2, factor, epsilon, lr] of [`super::AdamScalars`].
        fn adam(
            param: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            m: FloatTensor<Self>,
            v: FloatTensor<Self>,
            scalars: [f64; 5],
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

        /// ema * decay + source * (1 - decay).
        fn ema(ema: FloatTensor<Self>, source: FloatTensor<Self>, decay: f64) -> FloatTensor<Self>;
    }

    /// `t` as a uniquely owned contiguous buffer (a copy only where it is shared or a view).
    fn owned(t: FlexTensor) -> FlexTensor {
        let whole = t.is_contiguous()
            && t.as_slice::<f32>()
                .is_some_and(|s| s.len() == t.layout().shape().num_elements());
        if whole { t } else { t.to_contiguous() }
    }

    /// Elements per rayon task of the elementwise updates.
    const UPDATE_CHUNK: usize = 1 << 14;

    impl FusedUpdates for Flex {
        fn adam(
            param: FlexTensor,
            grad: FlexTensor,
            m: FlexTensor,
            v: FlexTensor,
            [beta1, beta2, factor, epsilon, lr]: [f64; 5],
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let (mut p, mut m, mut v) = (owned(param), owned(m), owned(v));
            let (_, g) = values(&grad);
            // The scalars as the composed ops take them: each f64 expression rounded to f32.
            let (b1, c1) = (beta1 as f32, (1.0 - beta1) as f32);
            let (b2, c2) = (beta2 as f32, (1.0 - beta2) as f32);
            let (factor, epsilon, lr) = (factor as f32, epsilon as f32, lr as f32);
            let (ps, ms, vs) = (
                p.storage_mut::<f32>(),
                m.storage_mut::<f32>(),
                v.storage_mut::<f32>(),
            );
            assert!(
                ps.len() == g.len() && ms.len() == g.len() && vs.len() == g.len(),
                "Adam: parameter, gradient and moments differ in size"
            );
            ps.par_chunks_mut(UPDATE_CHUNK)
                .zip(ms.par_chunks_mut(UPDATE_CHUNK))
                .zip(vs.par_chunks_mut(UPDATE_CHUNK))
                .zip(g.par_chunks(UPDATE_CHUNK))
                .for_each(|(((p, m), v), g)| {
                    for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                        *m = *m * b1 + g * c1;
                        *v = *v * b2 + (g * g) * c2;
                        *p -= (*m * factor) / (v.sqrt() + epsilon) * lr;
                    }
                });
            (p, m, v)
        }

        fn ema(ema: FlexTensor, source: FlexTensor, decay: f64) -> FlexTensor {
            let mut e = owned(ema);
            let (_, s) = values(&source);
            let (d, w) = (decay as f32, (1.0 - decay) as f32);
            let es = e.storage_mut::<f32>();
            assert_eq!(es.len(), s.len(), "EMA: average and model differ in size");
            es.par_chunks_mut(UPDATE_CHUNK)
                .zip(s.par_chunks(UPDATE_CHUNK))
                .for_each(|(e, s)| {
                    for (e, &s) in e.iter_mut().zip(s) {
                        *e = *e * d + s * w;
                    }
                });
            e
        }
    }

    /// Softmax as Burn dispatches it: to flex, and to autodiff over flex.
    #[backend_extension(Flex, Autodiff)]
    pub trait FusedSoftmax: Backend {
        /// Softmax over the last axis of `x`.
        fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    /// The kernels behind [`FusedSoftmax`] on a backend without autodiff.
    pub trait SoftmaxKernels: Backend {
        fn softmax_forward(x: FloatTensor<Self>) -> FloatTensor<Self>;

        /// The input gradient from the output `y` and its gradient `grad`:
        /// y * (grad - sum(grad * y)) along the last axis.
        fn softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    impl FusedSoftmax for Flex {
        fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::softmax_forward(x)
        }
    }

    impl<B: SoftmaxKernels, C: CheckpointStrategy> FusedSoftmax for Autodiff<B, C> {
        fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct SoftmaxBackward;

            impl<B: SoftmaxKernels> Backward<B, 1> for SoftmaxBackward {
                // The output: the gradient needs only it.
                type State = B::FloatTensorPrimitive;

                fn backward(
                    self,
                    ops: Ops<Self::State, 1>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let [node_x] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    if let Some(node) = node_x {
                        grads.register::<B>(node.id, B::softmax_backward(ops.state, grad));
                    }
                }
            }

            let nodes = [x.node()];
            let x = x.into_primitive();
            match SoftmaxBackward
                .prepare::<C>(nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let y = B::softmax_forward(x);
                    prep.finish(y.clone(), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::softmax_forward(x)),
            }
        }
    }

    /// Independent running sums (and maxima) in the vectorised kernels: one AVX-512 register
    /// of f32, or two of AVX2.
    const LANES: usize = 16;

    /// The elements handed to one rayon task in the softmax kernels: whole rows, at least 16k
    /// values, enough to outweigh a task's overhead.
    fn softmax_task(columns: usize) -> usize {
        (columns * (16 * 1024usize).div_ceil(columns.max(1))).max(1)
    }

    /// Softmax of each `columns`-long row of `x` times `scale` (positive) into `out`.
    struct SoftmaxRows<'a> {
        out: &'a mut [f32],
        x: &'a [f32],
        columns: usize,
        scale: f32,
    }

    impl pulp::WithSimd for SoftmaxRows<'_> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            for (out, x) in self
                .out
                .chunks_mut(self.columns)
                .zip(self.x.chunks(self.columns))
            {
                let mut lanes = [f32::NEG_INFINITY; LANES];
                let mut chunks = x.chunks_exact(LANES);
                for chunk in &mut chunks {
                    for (lane, &v) in lanes.iter_mut().zip(chunk) {
                        *lane = lane.max(v);
                    }
                }
                // The scale applied before the max is taken off, as the composed ops apply it
                // (the largest scaled value is the scaled largest: rounding keeps the order).
                let max = chunks
                    .remainder()
                    .iter()
                    .chain(&lanes)
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
                    * self.scale;
                let mut sums = [0f32; LANES];
                let mut out_chunks = out.chunks_exact_mut(LANES);
                let mut x_chunks = x.chunks_exact(LANES);
                for (o, x) in (&mut out_chunks).zip(&mut x_chunks) {
                    for k in 0..LANES {
                        o[k] = exp(x[k] * self.scale - max);
                        sums[k] += o[k];
                    }
                }
                let mut sum: f32 = sums.iter().sum();
                for (o, &v) in out_chunks
                    .into_remainder()
                    .iter_mut()
                    .zip(x_chunks.remainder())
                {
                    *o = exp(v * self.scale - max);
                    sum += *o;
                }
                let scale = 1.0 / sum;
                for o in out.iter_mut() {
                    *o *= scale;
                }
            }
        }
    }

    /// The gradient of each `columns`-long row of the softmax of x times `scale`, with respect
    /// to x, from the output `y` and its gradient.
    struct SoftmaxGradRows<'a> {
        dx: &'a mut [f32],
        y: &'a [f32],
        grad: &'a [f32],
        columns: usize,
        scale: f32,
    }

    impl pulp::WithSimd for SoftmaxGradRows<'_> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            let c = self.columns;
            for ((dx, y), grad) in self
                .dx
                .chunks_mut(c)
                .zip(self.y.chunks(c))
                .zip(self.grad.chunks(c))
            {
                let mut lanes = [0f32; LANES];
                let (mut y_chunks, mut g_chunks) =
                    (y.chunks_exact(LANES), grad.chunks_exact(LANES));
                for (y, g) in (&mut y_chunks).zip(&mut g_chunks) {
                    for k in 0..LANES {
                        lanes[k] += y[k] * g[k];
                    }
                }
                let dot = lanes.iter().sum::<f32>()
                    + y_chunks
                        .remainder()
                        .iter()
                        .zip(g_chunks.remainder())
                        .map(|(&y, &g)| y * g)
                        .sum::<f32>();
                for ((d, &y), &g) in dx.iter_mut().zip(y).zip(grad) {
                    *d = y * (g - dot) * self.scale;
                }
            }
        }
    }

    impl SoftmaxKernels for Flex {
        fn softmax_forward(x: FlexTensor) -> FlexTensor {
            let (shape, x) = values(&x);
            let columns = *shape.last().expect("softmax of a scalar");
            let mut out = vec![0f32; x.len()];
            let task = softmax_task(columns);
            out.par_chunks_mut(task)
                .zip(x.par_chunks(task))
                .for_each(|(out, x)| {
                    pulp::Arch::new().dispatch(SoftmaxRows {
                        out,
                        x,
                        columns,
                        scale: 1.0,
                    });
                });
            tensor(out, shape)
        }

        fn softmax_backward(y: FlexTensor, grad: FlexTensor) -> FlexTensor {
            let (shape, y) = values(&y);
            let (_, grad) = values(&grad);
            let columns = *shape.last().expect("softmax of a scalar");
            let mut dx = vec![0f32; y.len()];
            let task = softmax_task(columns);
            dx.par_chunks_mut(task)
                .zip(y.par_chunks(task))
                .zip(grad.par_chunks(task))
                .for_each(|((dx, y), grad)| {
                    pulp::Arch::new().dispatch(SoftmaxGradRows {
                        dx,
                        y,
                        grad,
                        columns,
                        scale: 1.0,
                    });
                });
            tensor(dx, shape)
        }
    }

    /// Attention as Burn dispatches it: to flex, and to autodiff over flex.
    #[backend_extension(Flex, Autodiff)]
    pub trait FusedAttention: Backend {
        /// For each (image, head) of `q`, `k`, `v` ([n, heads, d, hw]): v softmax(q^T k *
        /// scale)^T, [n, heads, d, hw].
        fn attention_heads(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            scale: f64,
        ) -> FloatTensor<Self>;
    }

    /// The kernels behind [`FusedAttention`] on a backend without autodiff: the forward pass
    /// also returns the weights softmax(q^T k * scale) ([n * heads, hw, hw]) for the backward
    /// pass, which returns the gradients of `q`, `k` and `v`.
    pub trait AttentionKernels: Backend {
        fn attention_forward(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            scale: f64,
        ) -> [FloatTensor<Self>; 2];

        fn attention_backward(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            weights: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            scale: f64,
        ) -> [FloatTensor<Self>; 3];
    }

    impl FusedAttention for Flex {
        fn attention_heads(q: FlexTensor, k: FlexTensor, v: FlexTensor, scale: f64) -> FlexTensor {
            let [out, _] = Self::attention_forward(q, k, v, scale);
            out
        }
    }

    impl<B: AttentionKernels, C: CheckpointStrategy> FusedAttention for Autodiff<B, C> {
        fn attention_heads(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            scale: f64,
        ) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct AttentionBackward;

            impl<B: AttentionKernels> Backward<B, 3> for AttentionBackward {
                // q, k, v and the weights: the weights are kept, as the composed ops keep them.
                type State = (
                    B::FloatTensorPrimitive,
                    B::FloatTensorPrimitive,
                    B::FloatTensorPrimitive,
                    B::FloatTensorPrimitive,
                    f64,
                );

                fn backward(
                    self,
                    ops: Ops<Self::State, 3>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let [node_q, node_k, node_v] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    let (q, k, v, weights, scale) = ops.state;
                    let [dq, dk, dv] = B::attention_backward(q, k, v, weights, grad, scale);
                    for (node, g) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
                        if let Some(node) = node {
                            grads.register::<B>(node.id, g);
                        }
                    }
                }
            }

            let nodes = [q.node(), k.node(), v.node()];
            let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
            match AttentionBackward
                .prepare::<C>(nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let [out, weights] =
                        B::attention_forward(q.clone(), k.clone(), v.clone(), scale);
                    prep.finish((q, k, v, weights, scale), out)
                }
                OpsKind::UnTracked(prep) => {
                    let [out, _] = B::attention_forward(q, k, v, scale);
                    prep.finish(out)
                }
            }
        }
    }

    /// `t` ([n, heads, d, hw]) as [n * heads, d, hw], contiguous (a copy only where it is a
    /// view), and its sizes [n * heads, d, hw].
    fn heads(t: &FlexTensor) -> (FlexTensor, [usize; 3]) {
        let shape = t.layout().shape();
        let sizes = [shape[0] * shape[1], shape[2], shape[3]];
        let t = if t.is_contiguous() {
            t.clone()
        } else {
            t.to_contiguous()
        };
        (t.reshape(burn::tensor::Shape::from(sizes.to_vec())), sizes)
    }

    impl AttentionKernels for Flex {
        fn attention_forward(
            q: FlexTensor,
            k: FlexTensor,
            v: FlexTensor,
            scale: f64,
        ) -> [FlexTensor; 2] {
            let shape = q.layout().shape().to_vec();
            let ((q, [b, d, hw]), (k, _), (v, _)) = (heads(&q), heads(&k), heads(&v));
            let mut weights = vec![0f32; b * hw * hw];
            let mut out = vec![0f32; b * d * hw];
            weights
                .par_chunks_mut(hw * hw)
                .zip(out.par_chunks_mut(d * hw))
                .enumerate()
                .for_each(|(i, (w, o))| {
                    // S = q^T k [hw, hw], its rows' softmax, then o = v w^T [d, hw].
                    let scores =
                        flex_matmul(image(&q, i, [d, hw]).transpose(0, 1), image(&k, i, [d, hw]));
                    let (_, scores) = values(&scores);
                    pulp::Arch::new().dispatch(SoftmaxRows {
                        out: w,
                        x: &scores,
                        columns: hw,
                        scale: scale as f32,
                    });
                    let wt = tensor(w.to_vec(), vec![hw, hw]).transpose(0, 1);
                    let product = flex_matmul(image(&v, i, [d, hw]), wt);
                    o.copy_from_slice(&values(&product).1);
                });
            [tensor(out, shape), tensor(weights, vec![b, hw, hw])]
        }

        fn attention_backward(
            q: FlexTensor,
            k: FlexTensor,
            v: FlexTensor,
            weights: FlexTensor,
            grad: FlexTensor,
            scale: f64,
        ) -> [FlexTensor; 3] {
            let shape = q.layout().shape().to_vec();
            let ((q, [b, d, hw]), (k, _), (v, _)) = (heads(&q), heads(&k), heads(&v));
            let (g, _) = heads(&grad);
            let (_, w) = values(&weights);
            let (mut dq, mut dk, mut dv) = (
                vec![0f32; b * d * hw],
                vec![0f32; b * d * hw],
                vec![0f32; b * d * hw],
            );
            dq.par_chunks_mut(d * hw)
                .zip(dk.par_chunks_mut(d * hw))
                .zip(dv.par_chunks_mut(d * hw))
                .enumerate()
                .for_each(|(i, ((dq, dk), dv))| {
                    let weights = &w[i * hw * hw..][..hw * hw];
                    let wt = tensor(weights.to_vec(), vec![hw, hw]);
                    let g = image(&g, i, [d, hw]);
                    // dv = g w; d(weights) = g^T v; dS = the softmax's gradient (scaled);
                    // dq = k dS^T; dk = q dS.
                    dv.copy_from_slice(&values(&flex_matmul(g.clone(), wt)).1);
                    let dweights = flex_matmul(g.transpose(0, 1), image(&v, i, [d, hw]));
                    let mut ds = vec![0f32; hw * hw];
                    pulp::Arch::new().dispatch(SoftmaxGradRows {
                        dx: &mut ds,
                        y: weights,
                        grad: &values(&dweights).1,
                        columns: hw,
                        scale: scale as f32,
                    });
                    let ds = tensor(ds, vec![hw, hw]);
                    let dq_product = flex_matmul(image(&k, i, [d, hw]), ds.transpose(0, 1));
                    dq.copy_from_slice(&values(&dq_product).1);
                    dk.copy_from_slice(&values(&flex_matmul(image(&q, i, [d, hw]), ds)).1);
                });
            [
                tensor(dq, shape.clone()),
                tensor(dk, shape.clone()),
                tensor(dv, shape),
            ]
        }
    }

    /// The convolution as Burn dispatches it: to flex, and to autodiff over flex.
    #[backend_extension(Flex, Autodiff)]
    pub trait FusedConv: Backend {
        /// A convolution of `x` ([n, c_in, h, w]) by `weight` ([c_out, c_in, kh, kw]) plus
        /// `bias` ([c_out]), at the strides, with the zero padding on each side.
        #[allow(clippy::too_many_arguments)]
        fn conv2d_im2col(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            stride_h: usize,
            stride_w: usize,
            top: usize,
            bottom: usize,
            left: usize,
            right: usize,
        ) -> FloatTensor<Self>;
    }

    /// A convolution's geometry: strides and padding (top, bottom, left, right).
    #[derive(Debug, Clone, Copy)]
    pub struct Geometry {
        stride: [usize; 2],
        pad: [usize; 4],
    }

    impl Geometry {
        /// Strides, and padding (top, bottom, left, right).
        #[cfg(test)]
        pub fn new(stride: [usize; 2], pad: [usize; 4]) -> Self {
            Self { stride, pad }
        }
    }

    /// The kernels behind [`FusedConv`] on a backend without autodiff.
    pub trait ConvKernels: Backend {
        fn conv_forward(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            geometry: Geometry,
        ) -> FloatTensor<Self>;

        /// The gradients of `x`, `weight` and `bias`, each where `need` says.
        fn conv_backward(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            geometry: Geometry,
            need: [bool; 3],
        ) -> [Option<FloatTensor<Self>>; 3];
    }

    impl FusedConv for Flex {
        fn conv2d_im2col(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            stride_h: usize,
            stride_w: usize,
            top: usize,
            bottom: usize,
            left: usize,
            right: usize,
        ) -> FloatTensor<Self> {
            let geometry = Geometry {
                stride: [stride_h, stride_w],
                pad: [top, bottom, left, right],
            };
            Self::conv_forward(x, weight, bias, geometry)
        }
    }

    impl<B: ConvKernels, C: CheckpointStrategy> FusedConv for Autodiff<B, C> {
        fn conv2d_im2col(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            stride_h: usize,
            stride_w: usize,
            top: usize,
            bottom: usize,
            left: usize,
            right: usize,
        ) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct ConvBackward;

            impl<B: ConvKernels> Backward<B, 3> for ConvBackward {
                type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive, Geometry);

                fn backward(
                    self,
                    ops: Ops<Self::State, 3>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let [node_x, node_weight, node_bias] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    let (x, weight, geometry) = ops.state;
                    // Only the gradients wanted: not the input's for the network's first layer.
                    let need = [node_x.is_some(), node_weight.is_some(), node_bias.is_some()];
                    let [dx, dw, db] = B::conv_backward(x, weight, grad, geometry, need);
                    for (node, g) in [(node_x, dx), (node_weight, dw), (node_bias, db)] {
                        if let (Some(node), Some(g)) = (node, g) {
                            grads.register::<B>(node.id, g);
                        }
                    }
                }
            }

            let geometry = Geometry {
                stride: [stride_h, stride_w],
                pad: [top, bottom, left, right],
            };
            let nodes = [x.node(), weight.node(), bias.node()];
            let (x, weight, bias) = (
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
            );
            match ConvBackward.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let out = B::conv_forward(x.clone(), weight.clone(), bias, geometry);
                    prep.finish((x, weight, geometry), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::conv_forward(x, weight, bias, geometry)),
            }
        }
    }

    /// Sizes of a convolution on a batch.
    #[derive(Clone, Copy)]
    struct ConvSizes {
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        kh: usize,
        kw: usize,
        oh: usize,
        ow: usize,
        g: Geometry,
    }

    impl ConvSizes {
        fn of(x: &[usize], weight: &[usize], g: Geometry) -> Self {
            let [n, c_in, h, w] = [x[0], x[1], x[2], x[3]];
            let [c_out, c_w, kh, kw] = [weight[0], weight[1], weight[2], weight[3]];
            assert_eq!(
                c_in, c_w,
                "convolution: input channels {c_in}, weight's {c_w}"
            );
            let [top, bottom, left, right] = g.pad;
            let (ph, pw) = (h + top + bottom, w + left + right);
            assert!(
                ph >= kh && pw >= kw,
                "convolution: kernel {kh}x{kw} exceeds the padded input {ph}x{pw}"
            );
            Self {
                n,
                c_in,
                h,
                w,
                c_out,
                kh,
                kw,
                oh: (ph - kh) / g.stride[0] + 1,
                ow: (pw - kw) / g.stride[1] + 1,
                g,
            }
        }

        /// A 1x1 kernel at stride 1 without padding: each image's output is the weight
        /// [c_out, c_in] times the image [c_in, h * w] as it lies, with no column matrix.
        fn pointwise(&self) -> bool {
            super::pointwise_products()
                && self.kh == 1
                && self.kw == 1
                && self.g.stride == [1, 1]
                && self.g.pad == [0; 4]
        }

        /// Rows of the column matrix: one per input channel and kernel position.
        fn k(&self) -> usize {
            self.c_in * self.kh * self.kw
        }

        fn out_plane(&self) -> usize {
            self.oh * self.ow
        }

        /// For kernel offset `ky` (or `kx`), the output rows (columns) whose input row
        /// (column) lies inside the image: [first, end), and the input index at `first`.
        fn valid(&self, offset: usize, axis: usize) -> (usize, usize) {
            let (stride, before, size, out) = match axis {
                0 => (self.g.stride[0], self.g.pad[0], self.h, self.oh),
                _ => (self.g.stride[1], self.g.pad[2], self.w, self.ow),
            };
            // input = o * stride + offset - before, inside [0, size)
            let first = before.saturating_sub(offset).div_ceil(stride);
            let end = if size + before > offset {
                ((size + before - offset - 1) / stride + 1).min(out)
            } else {
                0
            };
            (first.min(end), end)
        }
    }

    /// A column matrix up to this size is built for the whole batch and goes through one
    /// product; larger ones go in blocks of images with at least [`COLUMNS_PER_BLOCK`] output
    /// positions each. The whole batch's (38 MB for a 128-channel 3x3 layer at 32x32 and batch
    /// 8) made the product wait on memory: in blocks, the 384-channel layer at 32x32 ran its
    /// forward 1.45x faster and the weight gradients at 32x32 1.2-1.3x. Blocks of 2,048 columns
    /// made the tiny model's small layers (k <= 576, 9.4 MB at most) 8% slower, so they stay
    /// whole; 4,096 columns was slower for the 384-channel layer. (The forward at 256 output
    /// positions or more has since gone one image per task, see [`PER_IMAGE_FROM`]; the blocks
    /// serve the weight gradient and the smaller forwards.)
    const WHOLE_BATCH_BYTES: usize = 16 << 20;

    /// See [`WHOLE_BATCH_BYTES`].
    const COLUMNS_PER_BLOCK: usize = 2048;

    /// Images per block of the column matrix (see [`WHOLE_BATCH_BYTES`]), at least one.
    fn images_per_block(s: &ConvSizes) -> usize {
        let whole = s.k() * s.n * s.out_plane() * std::mem::size_of::<f32>();
        if whole <= WHOLE_BATCH_BYTES {
            return s.n.max(1);
        }
        COLUMNS_PER_BLOCK
            .div_ceil(s.out_plane().max(1))
            .clamp(1, s.n.max(1))
    }

    /// The column matrix [k, m * oh * ow] of the m images `images` of `x`: row (c, ky, kx)
    /// holds, for each of those images and every output position, the input value that kernel
    /// position multiplies (zero in the padding).
    fn im2col(x: &[f32], s: &ConvSizes, images: std::ops::Range<usize>) -> Vec<f32> {
        let cols = images.len() * s.out_plane();
        let mut col = vec![0f32; s.k() * cols];
        let (sh, sw) = (s.g.stride[0], s.g.stride[1]);
        col.par_chunks_mut(cols).enumerate().for_each(|(row, out)| {
            let (c, ky, kx) = (row / (s.kh * s.kw), row / s.kw % s.kh, row % s.kw);
            let (y0, y1) = s.valid(ky, 0);
            let (x0, x1) = s.valid(kx, 1);
            for (i, b) in images.clone().enumerate() {
                let plane = &x[(b * s.c_in + c) * s.h * s.w..][..s.h * s.w];
                let out = &mut out[i * s.out_plane()..][..s.out_plane()];
                for oy in y0..y1 {
                    let iy = oy * sh + ky - s.g.pad[0];
                    let src = &plane[iy * s.w..][..s.w];
                    let dst = &mut out[oy * s.ow..][..s.ow];
                    if sw == 1 {
                        let ix0 = x0 + kx - s.g.pad[2];
                        dst[x0..x1].copy_from_slice(&src[ix0..ix0 + (x1 - x0)]);
                    } else {
                        for ox in x0..x1 {
                            dst[ox] = src[ox * sw + kx - s.g.pad[2]];
                        }
                    }
                }
            }
        });
        col
    }

    /// The sizes of [`blocks`] for a convolution of these shapes (for tests).
    #[cfg(test)]
    pub fn block_sizes(x: &[usize], weight: &[usize], g: Geometry) -> Vec<usize> {
        blocks(&ConvSizes::of(x, weight, g))
            .map(|r| r.len())
            .collect()
    }

    /// The blocks of images that go through one product each.
    fn blocks(s: &ConvSizes) -> impl Iterator<Item = std::ops::Range<usize>> + use<> {
        let (n, per) = (s.n, images_per_block(s));
        (0..n.div_ceil(per)).map(move |i| i * per..((i + 1) * per).min(n))
    }

    /// Output channels below which a stride-1 convolution's input gradient is a forward
    /// convolution of the output gradient by the turned kernel (see [`turn`]) rather than
    /// Burn's transposed convolution, whose product has only k = c_out: for the UNets' last
    /// layer (3 channels) the forward and input gradient together ran 1.4-1.9x faster with the
    /// turned kernel; from 32 to 256 channels within 10% either way or slower (0.76x for 128
    /// channels at 32x32), so those keep Burn's.
    const TURNED_BELOW_CHANNELS: usize = 16;

    /// The geometry of a stride-1 layer's input gradient as a forward convolution by the
    /// turned kernel (see [`turn`]): stride 1, padding kernel - 1 - padding, where the kernel
    /// is larger than 1x1 and padded by at most its size less one on each side.
    fn turned(weight: &FlexTensor, g: Geometry) -> Option<Geometry> {
        let shape = weight.layout().shape();
        let (kh, kw) = (shape[2], shape[3]);
        let [top, bottom, left, right] = g.pad;
        (g.stride == [1, 1] && kh * kw > 1 && top.max(bottom) < kh && left.max(right) < kw).then(
            || Geometry {
                stride: [1, 1],
                pad: [kh - 1 - top, kh - 1 - bottom, kw - 1 - left, kw - 1 - right],
            },
        )
    }

    /// The kernel [c_out, c_in, kh, kw] turned for the input gradient: [c_in, c_out, kh, kw],
    /// each plane rotated by half a turn.
    fn turn(weight: &FlexTensor) -> FlexTensor {
        let (shape, w) = values(weight);
        let [c_out, c_in, kh, kw] = [shape[0], shape[1], shape[2], shape[3]];
        let mut turned = vec![0f32; w.len()];
        for (i, dst) in turned.chunks_mut(kh * kw).enumerate() {
            let (ci, co) = (i / c_out, i % c_out);
            let src = &w[(co * c_in + ci) * kh * kw..][..kh * kw];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
        tensor(turned, vec![c_in, c_out, kh, kw])
    }

    /// A zero bias for a convolution whose output has `x`'s channels.
    fn zeros_bias(x: &FlexTensor) -> FlexTensor {
        let c = x.layout().shape()[1];
        tensor(vec![0f32; c], vec![c])
    }

    fn flex_matmul(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        <Flex as burn::backend::ops::FloatTensorOps<Flex>>::float_matmul(lhs, rhs)
    }

    /// Positions per image from which a 1x1 layer's weight gradient is a product per image
    /// (then summed); below, one product over the whole batch, whose depth (n * h * w) the
    /// per-image products lack: at 4x4 and 8x8 those were 1.5-2x slower than the column
    /// matrix's single product, at 16x16 and 32x32 up to 2.9x faster.
    const POINTWISE_BATCHED_WEIGHT_GRADIENT: usize = 256;

    /// The planes of `images` of `t` ([n, c, plane]) as [c, m * plane]: each channel's planes
    /// side by side, the layout of a product over a block of images.
    fn by_channel(t: &[f32], c: usize, plane: usize, images: std::ops::Range<usize>) -> Vec<f32> {
        padded_by_channel(t, [c, 1, plane], images, [1, plane], [0, 0])
    }

    /// The planes [h, w] of `images` of `t` ([n, c, h, w]) by channel, [c, m * hp * wp]: each
    /// at row `top` and column `left` of its own [hp, wp] plane, zeros around.
    fn padded_by_channel(
        t: &[f32],
        [c, h, w]: [usize; 3],
        images: std::ops::Range<usize>,
        [hp, wp]: [usize; 2],
        [top, left]: [usize; 2],
    ) -> Vec<f32> {
        let m = images.len();
        let mut out = vec![0f32; c * m * hp * wp];
        out.par_chunks_mut(hp * wp)
            .enumerate()
            .for_each(|(i, dst)| {
                let (ch, b) = (i / m, images.start + i % m);
                let src = &t[(b * c + ch) * h * w..][..h * w];
                for (y, row) in src.chunks(w).enumerate() {
                    dst[(y + top) * wp + left..][..w].copy_from_slice(row);
                }
            });
        out
    }

    /// For each image b, the product of the two matrices `operands(b)` ([rows, k] by
    /// [k, cols]) into `out` ([n, rows, cols]), with `bias[row]` added where given: one product
    /// per image, each in its own rayon task. The products of a 1x1 layer are a few hundred
    /// deep, and gemm's own threading does not split them: [256, 256] x [256, 2048] took
    /// 2.2-3.0 ms on two threads as on one, and flex's batched product of eight such images
    /// 2.2 ms; one product per image in rayon tasks took 1.0 ms (PyTorch 1.0 ms), and
    /// [128, 384] x [384, 1024] per image 3.2 against 5.5 ms.
    fn per_image_products(
        operands: impl Fn(usize) -> (FlexTensor, FlexTensor) + Sync,
        [rows, cols]: [usize; 2],
        out: &mut [f32],
        bias: Option<&[f32]>,
    ) {
        out.par_chunks_mut(rows * cols)
            .enumerate()
            .for_each(|(b, dst)| {
                let (lhs, rhs) = operands(b);
                let product = flex_matmul(lhs, rhs);
                let (_, product) = values(&product);
                for (row, (d, p)) in dst.chunks_mut(cols).zip(product.chunks(cols)).enumerate() {
                    let add = bias.map_or(0.0, |bias| bias[row]);
                    d.iter_mut().zip(p).for_each(|(d, p)| *d = p + add);
                }
            });
    }

    /// Output positions per image from which a convolution's forward runs one image per rayon
    /// task (its column matrix, then its product, landing in place with the bias) rather than a
    /// product per block of images: at 16x16 and 32x32 the forward of ddpm_cifar10's layers
    /// ran 1.05-1.68x faster so, 1.24-1.32x over all of them (gemm threads one deep product
    /// 1.77x on two threads; and no reordering pass). Below, products of 16 or 64 columns would
    /// be too narrow. The weight gradient per image measured 0.92-1.15x (1.00x over the
    /// layers), so it keeps the blocks.
    const PER_IMAGE_FROM: usize = 256;

    /// Image `b` of `t` ([n, ...]) as a matrix [rows, cols] (a view of a contiguous tensor).
    fn image(t: &FlexTensor, b: usize, [rows, cols]: [usize; 2]) -> FlexTensor {
        t.narrow(0, b, 1)
            .reshape(burn::tensor::Shape::from(vec![rows, cols]))
    }

    /// A matrix in a slice: element (i, j) at `offset + i * rows + j * cols` (the row and
    /// column strides).
    #[derive(Clone, Copy)]
    pub struct Strided {
        offset: usize,
        rows: usize,
        cols: usize,
    }

    impl Strided {
        pub fn at(offset: usize, rows: usize, cols: usize) -> Self {
            Self { offset, rows, cols }
        }

        /// The largest index of a [m, n] matrix so laid out (m, n >= 1).
        fn last(&self, [m, n]: [usize; 2]) -> usize {
            self.offset + (m - 1) * self.rows + (n - 1) * self.cols
        }
    }

    /// dst = lhs x rhs, or dst += lhs x rhs where `accumulate`, for [m, k] by [k, n] matrices
    /// laid out in their slices as given: gemm's own call, which flex's product does not expose
    /// (it neither accumulates nor takes a view at an offset into a buffer). Checks that every
    /// index it reaches lies in its slice and that no two elements of `dst` share one, which
    /// is what makes the call sound.
    #[allow(unsafe_code, clippy::too_many_arguments)]
    pub fn product(
        [m, n, k]: [usize; 3],
        dst: &mut [f32],
        d: Strided,
        lhs: &[f32],
        l: Strided,
        rhs: &[f32],
        r: Strided,
        accumulate: bool,
        threaded: bool,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let distinct =
            (d.cols >= 1 && d.rows >= d.cols * n) || (d.rows >= 1 && d.cols >= d.rows * m);
        assert!(distinct, "product: overlapping output strides");
        assert!(d.last([m, n]) < dst.len(), "product: output out of bounds");
        if k == 0 {
            if !accumulate {
                (0..m).for_each(|i| {
                    (0..n).for_each(|j| dst[d.offset + i * d.rows + j * d.cols] = 0.0)
                });
            }
            return;
        }
        assert!(
            l.last([m, k]) < lhs.len(),
            "product: left operand out of bounds"
        );
        assert!(
            r.last([k, n]) < rhs.len(),
            "product: right operand out of bounds"
        );
        let parallelism = if threaded {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: every index gemm reads or writes is below the largest checked above, the
        // output's are distinct, and `dst` is borrowed mutably, so it aliases neither operand.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr().add(d.offset),
                d.cols as isize,
                d.rows as isize,
                accumulate,
                lhs.as_ptr().add(l.offset),
                l.cols as isize,
                l.rows as isize,
                rhs.as_ptr().add(r.offset),
                r.cols as isize,
                r.rows as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }

    /// Which parts of a stride-1 convolution with a kernel larger than 1x1 run as shifted
    /// products (see [`Grid`]) rather than through the column matrix (Burn's transposed
    /// convolution for the input gradient). Measured per layer against the column matrix, in
    /// one process, the two alternating (docs/results.md): the grid's spare columns and rows
    /// cost 13% more work at 32x32, 27% at 16x16 and 56% at 8x8, and the products are only
    /// c_in (forward) or c_out (input gradient) deep, not kh * kw times that.
    /// - The weight gradient, from 16x16: 1.1-2.4x over the UNets' layers at 16x16 and 32x32.
    /// - The input gradient, at 32x32 and at 16x16 into 128 channels or fewer, from 16 output
    ///   channels: 1.06-1.35x at 32x32, 1.07-1.40x at 16x16 for 64->64, 96->64 and 128->128
    ///   (1.0x for 32->64 and 128->64); at 16x16 into 256 channels 0.85-0.93x, and into 3
    ///   channels (products 3 deep) 0.89x, where Burn's and the turned kernel's column
    ///   matrix do better.
    /// - The forward, from 32x32 into fewer than 64 channels: 1.16x for 96->32 and 2.4x for
    ///   128->3, where the column matrix's k x positions values cost more than the product
    ///   (c_out multiply-adds each); even at 32x32 into 128 or 256 channels, and 0.6x at 16x16.
    #[derive(Clone, Copy, PartialEq)]
    enum Part {
        Forward,
        InputGradient,
        WeightGradient,
    }

    /// Whether `part` of a convolution of these sizes runs as shifted products (see [`Part`]).
    fn shifted(s: &ConvSizes, part: Part) -> bool {
        let plane = s.out_plane();
        super::shifted_products()
            && s.n > 0
            && s.g.stride == [1, 1]
            && s.kh * s.kw > 1
            && match part {
                Part::WeightGradient => plane >= 256,
                Part::InputGradient => {
                    s.c_out >= TURNED_BELOW_CHANNELS
                        && (plane >= 1024 || (plane >= 256 && s.c_in <= 128))
                }
                Part::Forward => plane >= 1024 && s.c_out < 64,
            }
    }

    /// The padded grid of a stride-1 convolution. Each image's plane is padded to [hp, wp] and
    /// the planes are stored by channel, [c, n * hp * wp]. Output position (oy, ox) of image b
    /// sits at grid index q = b * hp * wp + oy * wp + ox, and kernel position (ky, kx) reads
    /// the padded input at q + ky * wp + kx: for each kernel position the input it multiplies
    /// is the padded input shifted by a constant, a strided view, so the convolution is one
    /// product per kernel position with no column matrix (which writes and reads the input
    /// kh * kw times over). The grid's columns ow..wp and rows oh..hp hold no output: their
    /// outputs are dropped, and their output gradients are zero, so what they read from the
    /// next row or image adds nothing.
    struct Grid {
        hp: usize,
        wp: usize,
        plane: usize,
        /// Grid indices from the first output to the last, the depth (or width) of the
        /// products: the last read, at the last output plus the largest shift, is the last
        /// element of the padded input.
        len: usize,
    }

    impl Grid {
        fn of(s: &ConvSizes) -> Self {
            let [top, bottom, left, right] = s.g.pad;
            let (hp, wp) = (s.h + top + bottom, s.w + left + right);
            let plane = hp * wp;
            Self {
                hp,
                wp,
                plane,
                len: (s.n - 1) * plane + (s.oh - 1) * wp + s.ow,
            }
        }

        /// Where kernel position `tap` (ky * kw + kx) reads, relative to the output's index.
        fn shift(&self, tap: usize, s: &ConvSizes) -> usize {
            tap / s.kw * self.wp + tap % s.kw
        }

        /// `t` ([n, c, h, w]) on the grid by channel, [c, n * plane], each plane's values at row
        /// `top` and column `left` of its grid plane, zeros around.
        fn place(&self, t: &[f32], [n, c, h, w]: [usize; 4], at: [usize; 2]) -> Vec<f32> {
            padded_by_channel(t, [c, h, w], 0..n, [self.hp, self.wp], at)
        }
    }

    /// Output columns per task of the shifted forward: each task accumulates its [c_out, 512]
    /// block (0.5 MB at 256 channels, within the core's cache) over the kernel positions.
    const SHIFTED_COLUMNS: usize = 512;

    /// The weight [c_out, c_in, kh, kw] by kernel position, [taps, c_out, c_in], as the
    /// shifted products read it (in rows rather than at a stride of taps); or, `turned`, the
    /// turned kernel's (see [`turn`]) so laid out, [taps, c_in, c_out], the positions reversed.
    fn by_tap(w: &[f32], [c_out, c_in, taps]: [usize; 3], turned: bool) -> Vec<f32> {
        let mut out = vec![0f32; w.len()];
        for (i, src) in w.chunks(taps).enumerate() {
            let (co, ci) = (i / c_in, i % c_in);
            for (tap, &v) in src.iter().enumerate() {
                let at = if turned {
                    ((taps - 1 - tap) * c_in + ci) * c_out + co
                } else {
                    (tap * c_out + co) * c_in + ci
                };
                out[at] = v;
            }
        }
        out
    }

    /// See [`shifted_forward`]; `wt` is the weight by kernel position (see [`by_tap`]).
    fn shifted_forward_by_tap(x: &[f32], wt: &[f32], bias: &[f32], s: &ConvSizes) -> Vec<f32> {
        let grid = Grid::of(s);
        let xp = grid.place(x, [s.n, s.c_in, s.h, s.w], [s.g.pad[0], s.g.pad[2]]);
        let (row, taps, block) = (s.n * grid.plane, s.kh * s.kw, s.c_out * SHIFTED_COLUMNS);
        let mut y = vec![0f32; grid.len.div_ceil(SHIFTED_COLUMNS) * block];
        y.par_chunks_mut(block).enumerate().for_each(|(i, dst)| {
            let q0 = i * SHIFTED_COLUMNS;
            let cols = SHIFTED_COLUMNS.min(grid.len - q0);
            for tap in 0..taps {
                product(
                    [s.c_out, cols, s.c_in],
                    dst,
                    Strided::at(0, SHIFTED_COLUMNS, 1),
                    wt,
                    Strided::at(tap * s.c_out * s.c_in, s.c_in, 1),
                    &xp,
                    Strided::at(q0 + grid.shift(tap, s), row, 1),
                    tap > 0,
                    false,
                );
            }
        });
        // Back to [n, c_out, oh, ow] with the bias; a row of outputs may straddle two blocks.
        let plane = s.out_plane();
        let mut out = vec![0f32; s.n * s.c_out * plane];
        out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
            let (b, c) = (i / s.c_out, i % s.c_out);
            for (oy, dst) in dst.chunks_mut(s.ow).enumerate() {
                let mut q = b * grid.plane + oy * grid.wp;
                let mut done = 0;
                while done < s.ow {
                    let (blk, j) = (q / SHIFTED_COLUMNS, q % SHIFTED_COLUMNS);
                    let take = (s.ow - done).min(SHIFTED_COLUMNS - j);
                    let src = &y[blk * block + c * SHIFTED_COLUMNS + j..][..take];
                    for (d, v) in dst[done..done + take].iter_mut().zip(src) {
                        *d = v + bias[c];
                    }
                    (done, q) = (done + take, q + take);
                }
            }
        });
        out
    }

    /// A stride-1 convolution's output ([n, c_out, oh, ow] values), bias added, as shifted
    /// products (see [`Grid`]): per block of [`SHIFTED_COLUMNS`] grid columns, in a rayon task,
    /// the sum over kernel positions of the weight's slice [c_out, c_in] by the padded input
    /// shifted [c_in, columns] (a view), accumulated in place by gemm. (The input gradient
    /// is this by the turned kernel, see [`by_tap`].)
    fn shifted_forward(x: &[f32], w: &[f32], bias: &[f32], s: &ConvSizes) -> Vec<f32> {
        let wt = by_tap(w, [s.c_out, s.c_in, s.kh * s.kw], false);
        shifted_forward_by_tap(x, &wt, bias, s)
    }

    /// A stride-1 convolution's weight gradient ([c_out, c_in, kh, kw] values) as shifted
    /// products (see [`Grid`]): per kernel position, the output gradient on the grid
    /// [c_out, len] by the padded input shifted, transposed [len, c_in] (a view). The products
    /// are as deep as the batch's grid (9,000 at 32x32, batch 8); threaded by gemm, the nine
    /// of a 3x3 layer ran 0.79x of the column matrix, so each runs on one thread instead.
    fn shifted_weight_gradient(x: &[f32], dy: &[f32], s: &ConvSizes) -> Vec<f32> {
        let grid = Grid::of(s);
        let xp = grid.place(x, [s.n, s.c_in, s.h, s.w], [s.g.pad[0], s.g.pad[2]]);
        let dyg = grid.place(dy, [s.n, s.c_out, s.oh, s.ow], [0, 0]);
        let (row, taps) = (s.n * grid.plane, s.kh * s.kw);
        // One task per kernel position and half of the input channels (18 tasks balance two
        // threads better than 9), each product on one thread, into [taps, 2, c_out, half];
        // then to [c_out, c_in, taps].
        let half = s.c_in.div_ceil(2);
        let block = s.c_out * half;
        let mut parts = vec![0f32; taps * 2 * block];
        parts
            .par_chunks_mut(block)
            .enumerate()
            .for_each(|(i, dst)| {
                let (tap, c0) = (i / 2, i % 2 * half);
                let cols = half.min(s.c_in - c0);
                product(
                    [s.c_out, cols, grid.len],
                    dst,
                    Strided::at(0, cols, 1),
                    &dyg,
                    Strided::at(0, row, 1),
                    &xp,
                    Strided::at(c0 * row + grid.shift(tap, s), 1, row),
                    false,
                    false,
                );
            });
        let mut dw = vec![0f32; taps * s.c_out * s.c_in];
        dw.par_chunks_mut(taps).enumerate().for_each(|(i, dst)| {
            let (co, ci) = (i / s.c_in, i % s.c_in);
            let (part, c) = (ci / half, ci % half);
            let cols = half.min(s.c_in - part * half);
            for (tap, d) in dst.iter_mut().enumerate() {
                *d = parts[(tap * 2 + part) * block + co * cols + c];
            }
        });
        dw
    }

    /// A 1x1 convolution's output: per image, the weight [c_out, c_in] by the image
    /// [c_in, h * w] as it lies, landing in [n, c_out, h * w] order with the bias added: no
    /// column matrix (a copy of the input) and no reordering, which the im2col path needs.
    fn pointwise_forward(
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: &[f32],
        s: &ConvSizes,
    ) -> FlexTensor {
        let shape = |d: Vec<usize>| burn::tensor::Shape::from(d);
        let plane = s.out_plane();
        let mut out = vec![0f32; s.n * s.c_out * plane];
        let w = weight.reshape(shape(vec![s.c_out, s.c_in]));
        per_image_products(
            |b| (w.clone(), image(x, b, [s.c_in, plane])),
            [s.c_out, plane],
            &mut out,
            Some(bias),
        );
        tensor(out, vec![s.n, s.c_out, s.oh, s.ow])
    }

    /// A 1x1 convolution's input gradient, per image the weight's transpose [c_in, c_out] (a
    /// view) by the output gradient [c_out, h * w], and weight gradient, the sum over images of
    /// dY [c_out, h * w] by the image's transpose [h * w, c_in] (a view): products on the
    /// tensors as they lie (for small planes the weight gradient is one product over the
    /// batch, see [`POINTWISE_BATCHED_WEIGHT_GRADIENT`]).
    fn pointwise_backward(
        x: &FlexTensor,
        weight: &FlexTensor,
        grad: &FlexTensor,
        s: &ConvSizes,
        [need_x, need_w]: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let shape = |d: Vec<usize>| burn::tensor::Shape::from(d);
        let plane = s.out_plane();
        let dx = need_x.then(|| {
            let w = weight.reshape(shape(vec![s.c_out, s.c_in])).transpose(0, 1);
            let mut dx = vec![0f32; s.n * s.c_in * plane];
            per_image_products(
                |b| (w.clone(), image(grad, b, [s.c_out, plane])),
                [s.c_in, plane],
                &mut dx,
                None,
            );
            tensor(dx, vec![s.n, s.c_in, s.h, s.w])
        });
        let dw = need_w.then(|| {
            if plane < POINTWISE_BATCHED_WEIGHT_GRADIENT {
                let (_, x) = values(x);
                let (_, dy) = values(grad);
                let dy = tensor(
                    by_channel(&dy, s.c_out, plane, 0..s.n),
                    vec![s.c_out, s.n * plane],
                );
                let x = tensor(
                    by_channel(&x, s.c_in, plane, 0..s.n),
                    vec![s.c_in, s.n * plane],
                );
                return flex_matmul(dy, x.transpose(0, 1))
                    .reshape(shape(vec![s.c_out, s.c_in, 1, 1]));
            }
            // Each image's dY x X^T, summed in image order (the same order whatever the
            // threads did, so a run is reproducible).
            let size = s.c_out * s.c_in;
            let mut per_image = vec![0f32; s.n * size];
            per_image_products(
                |b| {
                    let xt = image(x, b, [s.c_in, plane]).transpose(0, 1);
                    (image(grad, b, [s.c_out, plane]), xt)
                },
                [s.c_out, s.c_in],
                &mut per_image,
                None,
            );
            let mut dw = vec![0f32; size];
            dw.par_chunks_mut(UPDATE_CHUNK)
                .enumerate()
                .for_each(|(i, dst)| {
                    for b in 0..s.n {
                        let src = &per_image[b * size + i * UPDATE_CHUNK..][..dst.len()];
                        dst.iter_mut().zip(src).for_each(|(d, v)| *d += v);
                    }
                });
            tensor(dw, vec![s.c_out, s.c_in, 1, 1])
        });
        [dx, dw]
    }

    /// The bias gradient: the output gradient summed over images and positions, per channel.
    fn bias_gradient(grad: &FlexTensor, s: &ConvSizes) -> FlexTensor {
        bias_gradient_of(&values(grad).1, s)
    }

    fn bias_gradient_of(grad: &[f32], s: &ConvSizes) -> FlexTensor {
        let plane = s.out_plane();
        let db: Vec<f32> = (0..s.c_out)
            .into_par_iter()
            .map(|c| {
                (0..s.n)
                    .flat_map(|b| &grad[(b * s.c_out + c) * plane..][..plane])
                    .map(|&v| v as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        tensor(db, vec![s.c_out])
    }

    impl ConvKernels for Flex {
        fn conv_forward(
            x: FlexTensor,
            weight: FlexTensor,
            bias: FlexTensor,
            geometry: Geometry,
        ) -> FlexTensor {
            let s = ConvSizes::of(x.layout().shape(), weight.layout().shape(), geometry);
            if s.pointwise() && x.is_contiguous() && weight.is_contiguous() {
                let (_, bias) = values(&bias);
                return pointwise_forward(&x, &weight, &bias, &s);
            }
            let (_, x) = values(&x);
            let (_, w) = values(&weight);
            let (_, bias) = values(&bias);
            if shifted(&s, Part::Forward) {
                let out = shifted_forward(&x, &w, &bias, &s);
                return tensor(out, vec![s.n, s.c_out, s.oh, s.ow]);
            }
            let w = tensor(w.into_owned(), vec![s.c_out, s.k()]);
            let plane = s.out_plane();
            let mut out = vec![0f32; s.n * s.c_out * plane];
            if plane >= PER_IMAGE_FROM {
                per_image_products(
                    |b| {
                        (
                            w.clone(),
                            tensor(im2col(&x, &s, b..b + 1), vec![s.k(), plane]),
                        )
                    },
                    [s.c_out, plane],
                    &mut out,
                    Some(&bias),
                );
                return tensor(out, vec![s.n, s.c_out, s.oh, s.ow]);
            }
            for images in blocks(&s) {
                let m = images.len();
                let col = tensor(im2col(&x, &s, images.clone()), vec![s.k(), m * plane]);
                // [c_out, k] x [k, m * oh * ow] for a block of m images. (The transposed
                // product, col^T x W^T, measured slower here; for the weight gradient it is
                // faster.)
                let product = flex_matmul(w.clone(), col);
                let (_, product) = values(&product);
                // Back to [n, c_out, oh, ow], with the bias.
                let block = &mut out[images.start * s.c_out * plane..][..m * s.c_out * plane];
                block
                    .par_chunks_mut(plane)
                    .enumerate()
                    .for_each(|(i, dst)| {
                        let (b, c) = (i / s.c_out, i % s.c_out);
                        let src = &product[(c * m + b) * plane..][..plane];
                        for (d, v) in dst.iter_mut().zip(src) {
                            *d = v + bias[c];
                        }
                    });
            }
            tensor(out, vec![s.n, s.c_out, s.oh, s.ow])
        }

        fn conv_backward(
            x: FlexTensor,
            weight: FlexTensor,
            grad: FlexTensor,
            geometry: Geometry,
            [need_x, need_w, need_b]: [bool; 3],
        ) -> [Option<FlexTensor>; 3] {
            let s = ConvSizes::of(x.layout().shape(), weight.layout().shape(), geometry);
            if s.pointwise() && [&x, &weight, &grad].iter().all(|t| t.is_contiguous()) {
                let [dx, dw] = pointwise_backward(&x, &weight, &grad, &s, [need_x, need_w]);
                let db = need_b.then(|| bias_gradient(&grad, &s));
                return [dx, dw, db];
            }
            let dx = need_x.then(|| match turned(&weight, geometry) {
                // The turned kernel's forward: as shifted products (see [`Grid`]) where those
                // run, else through its column matrix for layers into few channels.
                Some(g) if shifted(&s, Part::InputGradient) => {
                    let t = ConvSizes::of(grad.layout().shape(), &[s.c_in, s.c_out, s.kh, s.kw], g);
                    let wt = by_tap(&values(&weight).1, [s.c_out, s.c_in, s.kh * s.kw], true);
                    let zeros = vec![0f32; s.c_in];
                    let dx = shifted_forward_by_tap(&values(&grad).1, &wt, &zeros, &t);
                    tensor(dx, vec![s.n, s.c_in, s.h, s.w])
                }
                Some(g) if s.c_out < TURNED_BELOW_CHANNELS && super::turned_input_gradient() => {
                    Self::conv_forward(grad.clone(), turn(&weight), zeros_bias(&x), g)
                }
                _ => {
                    // Burn's (a transposed convolution: a product into a column matrix of
                    // k x n x h x w values, c_out multiply-adds each, then col2im).
                    let [top, bottom, left, right] = geometry.pad;
                    let options = burn::tensor::ops::ConvOptions::new_with_padding(
                        geometry.stride,
                        [(top, bottom), (left, right)],
                        [1, 1],
                        1,
                    );
                    <Flex as burn::backend::ops::ModuleOps<Flex>>::conv2d_x_backward(
                        x.clone(),
                        weight.clone(),
                        grad.clone(),
                        options,
                    )
                }
            });
            if !(need_w || need_b) {
                return [dx, None, None];
            }
            let (_, x) = values(&x);
            let w_shape = weight.layout().shape().to_vec();
            let (_, grad) = values(&grad);
            let plane = s.out_plane();
            let db = need_b.then(|| bias_gradient_of(&grad, &s));
            // dW^T = sum over blocks of col [k, m * oh * ow] x dY^T [m * oh * ow, c_out].
            let dw = need_w.then(|| {
                if shifted(&s, Part::WeightGradient) {
                    return tensor(shifted_weight_gradient(&x, &grad, &s), w_shape.clone());
                }
                let mut dwt = vec![0f32; s.k() * s.c_out];
                for images in blocks(&s) {
                    let m = images.len();
                    // The block's output gradient as [c_out, m * oh * ow], the product's layout.
                    let dy = by_channel(&grad, s.c_out, plane, images.clone());
                    let dy = tensor(dy, vec![s.c_out, m * plane]);
                    let col = tensor(im2col(&x, &s, images), vec![s.k(), m * plane]);
                    let product = flex_matmul(col, dy.transpose(0, 1));
                    let (_, product) = values(&product);
                    dwt.par_iter_mut().zip(&*product).for_each(|(d, v)| *d += v);
                }
                tensor(dwt, vec![s.k(), s.c_out])
                    .transpose(0, 1)
                    .to_contiguous()
                    .reshape(burn::tensor::Shape::from(w_shape.clone()))
            });
            [dx, dw, db]
        }
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

    /// e^x in plain f32 arithmetic that the compiler vectorises (`f32::exp` is a libm call per
    /// element, which made SiLU most of the fused GroupNorm's time): x = k ln 2 + r with
    /// |r| <= ln 2 / 2 (ln 2 in two parts, Cody and Waite, so r keeps its precision), e^r by its
    /// degree-6 Taylor polynomial (truncation under 1.2e-7 relative), 2^k written into the
    /// exponent bits. Inputs are clamped to [-87, 88], where 2^k stays a normal f32.
    #[inline(always)]
    pub(super) fn exp(x: f32) -> f32 {
        const LOG2_E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // 1.5 * 2^23: adding it rounds to an integer, which its low mantissa bits then hold.
        const ROUND: f32 = 12_582_912.0;
        let x = x.clamp(-87.0, 88.0);
        let shifted = x * LOG2_E + ROUND;
        let k = shifted - ROUND;
        let r = (x - k * LN2_HI) - k * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        // k + 127, shifted into the exponent field: the bits of 2^k.
        let scale = shifted
            .to_bits()
            .wrapping_sub(ROUND.to_bits())
            .wrapping_add(127)
            << 23;
        p * f32::from_bits(scale)
    }

    #[inline(always)]
    fn sigmoid(y: f32) -> f32 {
        1.0 / (1.0 + exp(-y))
    }

    /// The sum of `f(v)` over `xs` in f64, in eight running sums rather than one, so that the
    /// compiler vectorises it (one running sum is a chain of dependent adds).
    #[inline(always)]
    fn sum_f64(xs: &[f32], f: impl Fn(f32) -> f64) -> f64 {
        let mut lanes = [0f64; 8];
        let chunks = xs.chunks_exact(8);
        let rest: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
        for chunk in chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += f(v);
            }
        }
        lanes.iter().sum::<f64>() + rest
    }

    /// One channel of the forward pass: `out = x * a + b`, then SiLU where `SILU`.
    #[inline(always)]
    fn norm_row<const SILU: bool>(out: &mut [f32], x: &[f32], a: f32, b: f32) {
        for (o, &v) in out.iter_mut().zip(x) {
            let y = v * a + b;
            *o = if SILU { y * sigmoid(y) } else { y };
        }
    }

    /// One channel of the backward pass's first sweep: writes d(x_hat) = `dy * g` into `dx` and
    /// returns the channel's (sum of dy, sum of dy * x_hat), where dy is the gradient at the
    /// norm's output (through SiLU where `SILU`). The sums run in 16 f32 lanes, each of hw / 16
    /// terms, combined in f64: a single f64 sum per element was half the backward's time.
    #[inline(always)]
    fn grad_row<const SILU: bool>(
        dx: &mut [f32],
        x: &[f32],
        grad: &[f32],
        [m, r, g, b]: [f32; 4],
    ) -> (f64, f64) {
        let one = |d: &mut f32, v: f32, go: f32| {
            let xhat = (v - m) * r;
            let dy = if SILU {
                let y = xhat * g + b;
                let sig = sigmoid(y);
                go * sig * (1.0 + y * (1.0 - sig))
            } else {
                go
            };
            *d = dy * g;
            (dy, dy * xhat)
        };
        let (mut sum_dy, mut sum_dy_xhat) = ([0f32; LANES], [0f32; LANES]);
        let mut dx_lanes = dx.chunks_exact_mut(LANES);
        let mut x_lanes = x.chunks_exact(LANES);
        let mut grad_lanes = grad.chunks_exact(LANES);
        for ((d, x), go) in (&mut dx_lanes).zip(&mut x_lanes).zip(&mut grad_lanes) {
            for k in 0..LANES {
                let (a, b) = one(&mut d[k], x[k], go[k]);
                sum_dy[k] += a;
                sum_dy_xhat[k] += b;
            }
        }
        let wide = |lanes: [f32; LANES]| lanes.iter().map(|&v| v as f64).sum::<f64>();
        let (mut dy, mut dy_xhat) = (wide(sum_dy), wide(sum_dy_xhat));
        for ((d, &v), &go) in dx_lanes
            .into_remainder()
            .iter_mut()
            .zip(x_lanes.remainder())
            .zip(grad_lanes.remainder())
        {
            let (a, b) = one(d, v, go);
            dy += a as f64;
            dy_xhat += b as f64;
        }
        (dy, dy_xhat)
    }

    /// The forward pass over one group of one image (`x`, `out`: its channels of `hw` values;
    /// `gamma`, `beta`: its channels' affine), returning its mean and reciprocal standard
    /// deviation.
    struct ForwardGroup<'a> {
        out: &'a mut [f32],
        x: &'a [f32],
        gamma: &'a [f32],
        beta: &'a [f32],
        hw: usize,
        epsilon: f64,
        silu: bool,
    }

    /// Run through `pulp::Arch::dispatch`, the kernels are compiled for AVX-512 or AVX2 where
    /// the processor has them (1.6-1.8x faster than the baseline build on the backward's row
    /// kernel, measured alone) and for the baseline elsewhere: the same operations
    /// in the same order (Rust contracts nothing into FMAs), so every build gives the same bits.
    impl pulp::WithSimd for ForwardGroup<'_> {
        type Output = (f32, f32);

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> (f32, f32) {
            let Self {
                out,
                x,
                gamma,
                beta,
                hw,
                epsilon,
                silu,
            } = self;
            // Two passes in f64: the statistics are as exact as f32 inputs allow.
            let len = x.len() as f64;
            let mean = sum_f64(x, |v| v as f64) / len;
            let var = sum_f64(x, |v| (v as f64 - mean).powi(2)) / len;
            let rstd = 1.0 / (var + epsilon).sqrt();
            for (j, (out, x)) in out.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
                // y = (x - mean) * rstd * gamma + beta = x * a + b
                let a = (rstd * gamma[j] as f64) as f32;
                let b = beta[j] - (mean * a as f64) as f32;
                if silu {
                    norm_row::<true>(out, x, a, b);
                } else {
                    norm_row::<false>(out, x, a, b);
                }
            }
            (mean as f32, rstd as f32)
        }
    }

    /// The backward pass over one group of one image (as [`ForwardGroup`], with the group's
    /// `mean`, `rstd` and output gradient): writes the input gradient into `dx` and returns
    /// each channel's (sum of dy, sum of dy * x_hat), for the affine's gradients.
    struct BackwardGroup<'a> {
        dx: &'a mut [f32],
        x: &'a [f32],
        grad: &'a [f32],
        gamma: &'a [f32],
        beta: &'a [f32],
        mean: f32,
        rstd: f32,
        hw: usize,
        silu: bool,
    }

    impl pulp::WithSimd for BackwardGroup<'_> {
        type Output = Vec<(f64, f64)>;

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Vec<(f64, f64)> {
            let Self {
                dx,
                x,
                grad,
                gamma,
                beta,
                mean: m,
                rstd: r,
                hw,
                silu,
            } = self;
            let mut channel = Vec::with_capacity(gamma.len());
            // Sums over the group of d(x_hat) and d(x_hat) * x_hat.
            let (mut sum_d, mut sum_dx) = (0f64, 0f64);
            for (j, ((dx, x), grad)) in dx
                .chunks_mut(hw)
                .zip(x.chunks(hw))
                .zip(grad.chunks(hw))
                .enumerate()
            {
                let (g, b) = (gamma[j], beta[j]);
                // d(x_hat) into dx, finished there in the second sweep.
                let (sum_dy, sum_dy_xhat) = if silu {
                    grad_row::<true>(dx, x, grad, [m, r, g, b])
                } else {
                    grad_row::<false>(dx, x, grad, [m, r, g, b])
                };
                sum_d += sum_dy * g as f64;
                sum_dx += sum_dy_xhat * g as f64;
                channel.push((sum_dy, sum_dy_xhat));
            }
            let len = x.len() as f64;
            let (mean_d, mean_dx) = ((sum_d / len) as f32, (sum_dx / len) as f32);
            for (d, &v) in dx.iter_mut().zip(x) {
                let xhat = (v - m) * r;
                *d = r * (*d - mean_d - xhat * mean_dx);
            }
            channel
        }
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
                    let first = (i % groups) * s.per_group;
                    pulp::Arch::new().dispatch(ForwardGroup {
                        out,
                        x,
                        gamma: &gamma[first..first + s.per_group],
                        beta: &beta[first..first + s.per_group],
                        hw: s.hw,
                        epsilon,
                        silu: with_silu,
                    })
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
                    let first = (i % groups) * s.per_group;
                    pulp::Arch::new().dispatch(BackwardGroup {
                        dx,
                        x,
                        grad,
                        gamma: &gamma[first..first + s.per_group],
                        beta: &beta[first..first + s.per_group],
                        mean: mean[i],
                        rstd: rstd[i],
                        hw: s.hw,
                        silu: with_silu,
                    })
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

    /// Largest |a - b| over max(|b|, rms(b), 1): relative for large values, and near zero
    /// relative to the tensor's scale. (A weight gradient sums thousands of products of
    /// magnitude ~1: its elements are ~100 and one that happens to be near zero carries the
    /// rounding error of the whole sum, whatever the order of summation.)
    fn max_error<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let (a, b) = (
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let rms = (b.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / b.len().max(1) as f64)
            .sqrt() as f32;
        a.iter()
            .zip(&b)
            .map(|(a, b)| (a - b).abs() / b.abs().max(rms).max(1.0))
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
        assert!(
            cpu::runs_fused(&x),
            "the CPU backend must take the fused path"
        );
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
    fn the_vectorisable_exp_agrees_with_f64_exp_to_a_few_ulp() {
        let mut worst = 0f64;
        for i in 0..=400_000 {
            let x = -87.0 + 175.0 * i as f32 / 400_000.0;
            let exact = (x as f64).exp();
            worst = worst.max(((cpu::exp(x) as f64 - exact) / exact).abs());
        }
        assert!(worst < 4e-7, "relative error {worst:e}");
        // Outside the range it saturates instead of overflowing to infinity or zero.
        assert!(cpu::exp(200.0).is_finite() && cpu::exp(200.0) > 1e38);
        assert!(cpu::exp(-200.0) > 0.0 && cpu::exp(-200.0) < 1e-37);
        assert!(cpu::exp(f32::NAN).is_nan());
    }

    #[test]
    fn fused_softmax_equals_burns_forward_and_backward_over_many_shapes() {
        let device = Device::flex().autodiff();
        // Rows shorter and longer than the lanes, not a multiple of them, and large logits.
        for (shape, scale) in [
            ([1, 1, 1, 1], 1.0),
            ([2, 3, 5, 7], 3.0),
            ([1, 2, 16, 33], 1.0),
            ([2, 1, 64, 256], 8.0),
            ([3, 4, 9, 1000], 30.0),
        ] {
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.5, scale), &device);
            let upstream = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let run = |on: bool| {
                let x = x.clone().require_grad();
                let y = softmax_last_on(x.clone(), on);
                let grads = (y.clone() * upstream.clone()).sum().backward();
                (y.without_autodiff(), x.grad(&grads).unwrap())
            };
            let (composed, fused) = (run(false), run(true));
            for (name, error) in [
                ("output", max_error(fused.0, composed.0)),
                ("x gradient", max_error(fused.1, composed.1)),
            ] {
                assert!(
                    error < 1e-5,
                    "{name} differs by {error:e} ({shape:?}, scale {scale})"
                );
            }
        }
    }

    #[test]
    fn fused_attention_equals_burns_forward_and_backward_over_many_shapes() {
        let device = Device::flex().autodiff();
        // Batch 1 and more, one head and several, head sizes and positions off multiples of 8
        // (the 16x16 and 4x4 maps of ddpm_cifar10 among them), and a scale above 1.
        for ([n, heads, d, hw], scale) in [
            ([1, 1, 1, 1], 1.0),
            ([2, 1, 8, 16], 0.35),
            ([1, 3, 5, 17], 0.45),
            ([3, 2, 16, 64], 0.25),
            ([2, 1, 32, 256], 0.18),
            ([1, 2, 7, 9], 1.5),
        ] {
            let random = |sigma: f64| {
                Tensor::<4>::random([n, heads, d, hw], Distribution::Normal(0.2, sigma), &device)
            };
            let (q, k, v) = (random(1.0), random(1.0), random(2.0));
            let upstream = random(1.0);
            assert!(
                cpu::runs_fused(&q),
                "the CPU backend must take the fused path"
            );
            let run = |on: bool| {
                let (q, k, v) = (
                    q.clone().require_grad(),
                    k.clone().require_grad(),
                    v.clone().require_grad(),
                );
                let y = attention_on(q.clone(), k.clone(), v.clone(), scale, on);
                let grads = (y.clone() * upstream.clone()).sum().backward();
                (
                    y.without_autodiff(),
                    q.grad(&grads).unwrap(),
                    k.grad(&grads).unwrap(),
                    v.grad(&grads).unwrap(),
                )
            };
            let (composed, fused) = (run(false), run(true));
            for (name, error) in [
                ("output", max_error(fused.0, composed.0)),
                ("q gradient", max_error(fused.1, composed.1)),
                ("k gradient", max_error(fused.2, composed.2)),
                ("v gradient", max_error(fused.3, composed.3)),
            ] {
                assert!(
                    error < 1e-5,
                    "{name} differs by {error:e} ({n}x{heads} heads of {d}x{hw}, scale {scale})"
                );
            }
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

    /// The im2col convolution against Burn's, output and every gradient, on one shape.
    #[allow(clippy::too_many_arguments)]
    fn check_conv(
        batch: usize,
        [c_in, c_out]: [usize; 2],
        kernel: [usize; 2],
        side: [usize; 2],
        stride: [usize; 2],
        padding: burn::nn::PaddingConfig2d,
        input_grad: bool,
    ) {
        use burn::nn::conv::Conv2dConfig;
        let device = Device::flex().autodiff();
        let conv = Conv2dConfig::new([c_in, c_out], kernel)
            .with_stride(stride)
            .with_padding(padding.clone())
            .init(&device);
        let x = Tensor::<4>::random(
            [batch, c_in, side[0], side[1]],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        assert!(
            cpu::runs_fused(&x),
            "the CPU backend must take the fused path"
        );
        // One random upstream gradient.
        let upstream = Tensor::<4>::random(
            conv.forward(x.clone()).shape(),
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let fused = {
            let x = if input_grad {
                x.clone().require_grad()
            } else {
                x.clone()
            };
            let y = conv2d_on(&conv, x.clone(), true);
            let grads = (y.clone() * upstream.clone()).sum().backward();
            (
                y.without_autodiff(),
                input_grad.then(|| x.grad(&grads).unwrap()),
                conv.weight.grad(&grads).unwrap(),
                conv.bias.as_ref().unwrap().grad(&grads).unwrap(),
            )
        };
        // Against the exact answer, in f64, not Burn's f32: at depths of thousands (a weight
        // gradient over a batch's 48x48 planes sums 9,216 products) the fused op's and Burn's
        // orders of summation differed by 1.1e-5 in one CI run.
        let padding = explicit(&padding).expect("explicit or valid padding");
        let exact = conv_f64(
            [&host(&x), &host(&conv.weight.val()), &host(&upstream)],
            &conv
                .bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            [batch, c_in, side[0], side[1]],
            [c_out, kernel[0], kernel[1]],
            stride,
            padding,
        );
        let what = format!(
            "batch {batch}, {c_in}->{c_out}, kernel {kernel:?}, {side:?}, stride {stride:?}, {padding:?}"
        );
        assert_eq!(fused.0.dims(), upstream.dims(), "{what}");
        let mut errors = vec![
            ("output", max_error_f64(fused.0, &exact[0])),
            ("weight gradient", max_error_f64(fused.2, &exact[2])),
            ("bias gradient", max_error_f64(fused.3, &exact[3])),
        ];
        if let Some(dx) = fused.1 {
            errors.push(("input gradient", max_error_f64(dx, &exact[1])));
        }
        for (name, error) in errors {
            assert!(error < 1e-5, "{name} differs by {error:e} ({what})");
        }
    }

    /// [`max_error`] against exact values.
    fn max_error_f64<const D: usize>(a: Tensor<D>, b: &[f64]) -> f32 {
        let a = a.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let rms = (b.iter().map(|v| v.powi(2)).sum::<f64>() / b.len().max(1) as f64).sqrt();
        a.iter()
            .zip(b)
            .map(|(&a, &b)| ((a as f64 - b).abs() / b.abs().max(rms).max(1.0)) as f32)
            .fold(0.0, f32::max)
    }

    /// A convolution's output, and its input, weight and bias gradients for the upstream
    /// gradient `up`, in f64 by the definition: [x, weight, up], padding [top, left, bottom,
    /// right] (Burn's order).
    fn conv_f64(
        [x, w, up]: [&[f32]; 3],
        bias: &[f32],
        [n, c_in, h, wd]: [usize; 4],
        [c_out, kh, kw]: [usize; 3],
        [sh, sw]: [usize; 2],
        [top, left, bottom, right]: [usize; 4],
    ) -> [Vec<f64>; 4] {
        let (oh, ow) = (
            (h + top + bottom - kh) / sh + 1,
            (wd + left + right - kw) / sw + 1,
        );
        let mut y = vec![0f64; n * c_out * oh * ow];
        let (mut dx, mut dw) = (vec![0f64; x.len()], vec![0f64; w.len()]);
        let mut db = vec![0f64; c_out];
        for b in 0..n {
            for co in 0..c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let at = ((b * c_out + co) * oh + oy) * ow + ox;
                        let g = up[at] as f64;
                        let mut sum = bias[co] as f64;
                        for ci in 0..c_in {
                            for ky in 0..kh {
                                let Some(iy) = (oy * sh + ky).checked_sub(top).filter(|&v| v < h)
                                else {
                                    continue;
                                };
                                for kx in 0..kw {
                                    let Some(ix) =
                                        (ox * sw + kx).checked_sub(left).filter(|&v| v < wd)
                                    else {
                                        continue;
                                    };
                                    let xi = ((b * c_in + ci) * h + iy) * wd + ix;
                                    let wi = ((co * c_in + ci) * kh + ky) * kw + kx;
                                    sum += w[wi] as f64 * x[xi] as f64;
                                    dx[xi] += w[wi] as f64 * g;
                                    dw[wi] += x[xi] as f64 * g;
                                }
                            }
                        }
                        y[at] = sum;
                        db[co] += g;
                    }
                }
            }
        }
        [y, dx, dw, db]
    }

    /// The naive product of the same strided views, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        [m, n, k]: [usize; 3],
        dst: &mut [f32],
        d: [usize; 3],
        lhs: &[f32],
        l: [usize; 3],
        rhs: &[f32],
        r: [usize; 3],
        accumulate: bool,
    ) {
        for i in 0..m {
            for j in 0..n {
                let at = d[0] + i * d[1] + j * d[2];
                let mut sum = if accumulate { dst[at] as f64 } else { 0.0 };
                for p in 0..k {
                    sum += lhs[l[0] + i * l[1] + p * l[2]] as f64
                        * rhs[r[0] + p * r[1] + j * r[2]] as f64;
                }
                dst[at] = sum as f32;
            }
        }
    }

    #[test]
    fn strided_products_equal_the_naive_product_and_refuse_out_of_bounds_views() {
        use cpu::{Strided, product};
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        // [m, n, k]; the output's, left's and right's (offset, row stride, column stride);
        // threaded; accumulate: row-major, transposed views, offsets, gaps between rows.
        type View = [usize; 3];
        let cases: [([usize; 3], View, View, View, bool, bool); 5] = [
            ([5, 7, 3], [0, 7, 1], [0, 3, 1], [0, 7, 1], false, false),
            ([4, 6, 9], [2, 1, 5], [1, 1, 4], [3, 6, 1], true, false),
            ([3, 5, 40], [0, 9, 1], [7, 50, 1], [4, 1, 60], false, true),
            ([17, 33, 65], [0, 40, 1], [0, 70, 1], [5, 40, 1], true, true),
            ([1, 1, 1], [3, 1, 1], [2, 1, 1], [1, 1, 1], false, true),
        ];
        for (shape, d, l, r, threaded, accumulate) in cases {
            let [m, n, k] = shape;
            let size = |v: [usize; 3], rows: usize, cols: usize| {
                v[0] + (rows - 1) * v[1] + (cols - 1) * v[2] + 1
            };
            let lhs = values(size(l, m, k), 1);
            let rhs = values(size(r, k, n), 2);
            let start = values(size(d, m, n) + 3, 3);
            let (mut got, mut want) = (start.clone(), start.clone());
            let at = |v: [usize; 3]| Strided::at(v[0], v[1], v[2]);
            product(
                shape,
                &mut got,
                at(d),
                &lhs,
                at(l),
                &rhs,
                at(r),
                accumulate,
                threaded,
            );
            naive(shape, &mut want, d, &lhs, l, &rhs, r, accumulate);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{shape:?}: {g} against {w}"
                );
            }
        }
        // [2, 3] by [3, 2] into [2, 2]: in bounds as given; then one past the end of the
        // right operand, the output, the left; then overlapping output rows.
        let refused = |rhs_len: usize, d: Strided, l: Strided| {
            std::panic::catch_unwind(|| {
                let (a, b, mut c) = (vec![0f32; 6], vec![0f32; rhs_len], vec![0f32; 4]);
                let r = Strided::at(0, 2, 1);
                product([2, 2, 3], &mut c, d, &a, l, &b, r, false, false);
            })
            .is_err()
        };
        let (d, l) = (Strided::at(0, 2, 1), Strided::at(0, 3, 1));
        assert!(!refused(6, d, l));
        assert!(refused(5, d, l));
        assert!(refused(6, Strided::at(1, 2, 1), l));
        assert!(refused(6, d, Strided::at(1, 3, 1)));
        assert!(refused(6, Strided::at(0, 1, 1), l));
    }

    #[test]
    fn large_inputs_split_into_column_blocks() {
        let g = cpu::Geometry::new([1, 1], [1, 1, 1, 1]);
        assert_eq!(
            cpu::block_sizes(&[4, 64, 48, 48], &[5, 64, 3, 3], g),
            vec![1; 4]
        );
        assert_eq!(
            cpu::block_sizes(&[5, 64, 40, 40], &[4, 64, 3, 3], g),
            vec![2, 2, 1]
        );
        assert_eq!(
            cpu::block_sizes(
                &[16, 64, 48, 48],
                &[5, 64, 3, 3],
                cpu::Geometry::new([2, 2], [1; 4])
            ),
            vec![4; 4]
        );
        assert_eq!(
            cpu::block_sizes(&[40, 64, 14, 14], &[6, 64, 3, 3], g),
            vec![11, 11, 11, 7]
        );
        // Under 16 MiB: the whole batch (here 8 MB).
        assert_eq!(
            cpu::block_sizes(&[3, 32, 48, 48], &[5, 32, 3, 3], g),
            vec![3]
        );
        // DDPM's 128-channel layer at 32x32, batch 8 (38 MB), and its 256-channel at 16x16.
        assert_eq!(
            cpu::block_sizes(&[8, 128, 32, 32], &[128, 128, 3, 3], g),
            vec![2; 4]
        );
        assert_eq!(
            cpu::block_sizes(&[8, 256, 16, 16], &[256, 256, 3, 3], g),
            vec![8]
        );
    }

    #[test]
    fn fused_convolution_equals_the_exact_forward_and_backward_over_many_shapes() {
        use burn::nn::PaddingConfig2d::{Explicit, Valid};
        for (batch, channels, kernel, side, stride, padding, input_grad) in [
            (
                2,
                [8, 16],
                [3, 3],
                [8, 8],
                [1, 1],
                Explicit(1, 1, 1, 1),
                true,
            ),
            (
                1,
                [3, 5],
                [3, 3],
                [7, 9],
                [1, 1],
                Explicit(1, 1, 1, 1),
                true,
            ),
            (
                3,
                [6, 4],
                [3, 3],
                [8, 8],
                [2, 2],
                Explicit(1, 1, 1, 1),
                true,
            ),
            // Outputs of 256 positions or more, strided: the forward one image per task.
            (
                2,
                [5, 6],
                [3, 3],
                [34, 34],
                [2, 2],
                Explicit(1, 1, 1, 1),
                true,
            ),
            (
                2,
                [4, 4],
                [3, 3],
                [32, 32],
                [2, 2],
                Explicit(0, 0, 1, 1),
                true,
            ),
            // DDPM's downsampler: padding only after (bottom and right), stride 2.
            (
                2,
                [4, 4],
                [3, 3],
                [8, 8],
                [2, 2],
                Explicit(0, 0, 1, 1),
                true,
            ),
            // 1x1 at stride 1 unpadded (direct products): batch 2, 1 and 5, channel counts off
            // multiples of 8, and without the input gradient (a network's first layer).
            (2, [5, 7], [1, 1], [6, 6], [1, 1], Valid, true),
            (1, [13, 6], [1, 1], [5, 3], [1, 1], Valid, true),
            (5, [9, 12], [1, 1], [4, 7], [1, 1], Valid, true),
            (3, [17, 4], [1, 1], [8, 8], [1, 1], Valid, false),
            // Planes of 256 positions or more: the weight gradient as a product per image.
            (2, [5, 7], [1, 1], [16, 17], [1, 1], Valid, true),
            (1, [12, 3], [1, 1], [16, 16], [1, 1], Valid, false),
            // 1x1 strided or padded: through the column matrix.
            (2, [6, 5], [1, 1], [7, 7], [2, 2], Valid, true),
            (
                2,
                [4, 3],
                [1, 1],
                [4, 5],
                [1, 1],
                Explicit(1, 0, 0, 1),
                true,
            ),
            (1, [9, 3], [3, 3], [5, 5], [1, 1], Valid, true),
            (
                2,
                [4, 6],
                [2, 3],
                [7, 6],
                [2, 1],
                Explicit(2, 0, 1, 2),
                true,
            ),
            (
                1,
                [3, 8],
                [3, 3],
                [4, 4],
                [1, 1],
                Explicit(1, 1, 1, 1),
                false,
            ),
            (
                2,
                [2, 3],
                [5, 5],
                [3, 3],
                [1, 1],
                Explicit(2, 2, 2, 2),
                true,
            ),
            // Into few channels, stride 1: the turned kernel's input gradient, here with
            // uneven padding (its own is uneven too); and a padding past the kernel's size less
            // one, which takes Burn's.
            (
                2,
                [5, 9],
                [3, 3],
                [6, 7],
                [1, 1],
                Explicit(2, 0, 1, 2),
                true,
            ),
            (
                1,
                [4, 3],
                [3, 3],
                [5, 4],
                [1, 1],
                Explicit(3, 1, 3, 1),
                true,
            ),
            // Shifted products (stride 1, a kernel larger than 1x1, planes of 16x16 or more):
            // the weight gradient everywhere below; the input gradient at 32x32 into 16
            // channels or more; the forward at 32x32 into fewer than 64. Channel counts off
            // multiples of 8, batch 1, uneven and zero padding, 5x5, 1x3 and 3x1 kernels,
            // outputs narrower than their grid by more than two columns.
            (
                2,
                [5, 17],
                [3, 3],
                [32, 32],
                [1, 1],
                Explicit(1, 1, 1, 1),
                true,
            ),
            (
                1,
                [3, 64],
                [3, 3],
                [32, 32],
                [1, 1],
                Explicit(1, 1, 1, 1),
                true,
            ),
            (
                3,
                [7, 20],
                [3, 3],
                [16, 17],
                [1, 1],
                Explicit(2, 0, 1, 2),
                true,
            ),
            (
                2,
                [4, 16],
                [5, 5],
                [32, 33],
                [1, 1],
                Explicit(2, 2, 2, 2),
                true,
            ),
            (
                2,
                [6, 18],
                [1, 3],
                [32, 32],
                [1, 1],
                Explicit(0, 0, 1, 1),
                true,
            ),
            (1, [5, 16], [3, 1], [34, 32], [1, 1], Valid, true),
            (1, [6, 19], [3, 3], [34, 36], [1, 1], Valid, true),
            (
                2,
                [3, 8],
                [3, 3],
                [32, 32],
                [1, 1],
                Explicit(1, 1, 1, 1),
                false,
            ),
            // Padding past the kernel's size less one: Burn's input gradient, the rest shifted.
            (
                1,
                [4, 16],
                [3, 3],
                [32, 30],
                [1, 1],
                Explicit(3, 1, 3, 1),
                true,
            ),
            // Column matrices over 16 MiB: stride 2 at 48x48 (576 output positions, weight
            // gradient in four blocks of four images), and 14x14 at batch 40 (blocks of 11, 11, 11
            // and 7 images, forward and weight gradient).
            (
                16,
                [64, 5],
                [3, 3],
                [48, 48],
                [2, 2],
                Explicit(1, 1, 1, 1),
                true,
            ),
            (
                40,
                [64, 6],
                [3, 3],
                [14, 14],
                [1, 1],
                Explicit(1, 1, 1, 1),
                true,
            ),
            // The same at 48x48 and 40x40, stride 1: shifted.
            (
                4,
                [64, 5],
                [3, 3],
                [48, 48],
                [1, 1],
                Explicit(1, 1, 1, 1),
                true,
            ),
            (
                5,
                [64, 4],
                [3, 3],
                [40, 40],
                [1, 1],
                Explicit(1, 1, 1, 1),
                true,
            ),
        ] {
            check_conv(batch, channels, kernel, side, stride, padding, input_grad);
        }
    }

    fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
        t.clone().into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn fused_adam_and_ema_give_the_composed_ops_bits_and_leave_shared_buffers_alone() {
        let device = Device::flex();
        let scalars = AdamScalars {
            beta1: 0.87,
            beta2: 0.999,
            factor: 0.031f64.sqrt() / (1.0 - 0.87f64.powi(3)),
            epsilon: 1e-8 * 0.031f64.sqrt(),
            lr: 3e-4,
        };
        // Sizes below, at and across the rayon chunk, and a 4-D one.
        for shape in [
            vec![7],
            vec![1 << 14],
            vec![3, 5, 1 << 11],
            vec![2, 3, 4, 5],
        ] {
            let random = || {
                Tensor::<1>::random(
                    [shape.iter().product::<usize>()],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                )
            };
            let (p, g, m) = (random(), random(), random());
            let v = random().abs();
            let composed = adam_step_on(p.clone(), g.clone(), m.clone(), v.clone(), scalars, false);
            // Clones held here share every buffer: the fused op must copy, not overwrite them.
            let (p0, m0, v0) = (host(&p), host(&m), host(&v));
            let fused = adam_step_on(p.clone(), g.clone(), m.clone(), v.clone(), scalars, true);
            assert_eq!(host(&fused.0), host(&composed.0), "parameter, {shape:?}");
            assert_eq!(host(&fused.1), host(&composed.1), "first moment, {shape:?}");
            assert_eq!(
                host(&fused.2),
                host(&composed.2),
                "second moment, {shape:?}"
            );
            assert_eq!((host(&p), host(&m), host(&v)), (p0, m0, v0), "{shape:?}");
            assert_ne!(host(&fused.0), host(&p), "the step moved nothing");
            // Unshared buffers are updated in place, to the same values.
            let in_place = adam_step_on(p, g.clone(), m, v, scalars, true);
            assert_eq!(host(&in_place.0), host(&composed.0), "{shape:?}");

            let (e, src) = (random(), random());
            let composed = ema_mix_on(e.clone(), src.clone(), 0.995, false);
            let before = host(&e);
            let shared = ema_mix_on(e.clone(), src.clone(), 0.995, true);
            assert_eq!(host(&shared), host(&composed), "{shape:?}");
            assert_eq!(host(&e), before, "{shape:?}");
            assert_eq!(host(&ema_mix_on(e, src, 0.995, true)), host(&composed));
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
