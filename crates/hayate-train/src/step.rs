//! The training step: the denoising loss on one batch, its gradients, and global-norm clipping.

use burn::module::{ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::train::metric::{Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use hayate_model::{DropoutKey, Network, Precision, cast_params};
use std::borrow::Cow;

/// The denoiser as the Learner trains it: the loss, and gradients clipped by their global norm.
#[derive(Module, Debug)]
pub struct DenoisingModel {
    /// The network, a UNet or a DiT (named `unet` because that name starts every parameter's
    /// path in the checkpoints written before the DiT, which resume unchanged).
    pub unet: Network,
    /// Clip the global gradient norm to this (0 disables).
    pub grad_clip: f64,
    /// The type the forward computes in; the parameters stay f32.
    #[module(skip)]
    pub precision: Precision,
}

/// One prepared batch: everything random was drawn on the host before it reached the device.
#[derive(Debug, Clone)]
pub struct DenoisingBatch {
    /// Noisy images x_t, `[N, C, H, W]`.
    pub x_t: Tensor<4>,
    /// Their timesteps as floats, `[N]`.
    pub t: Tensor<1>,
    /// The regression target (eps, v or x_0), `[N, C, H, W]`.
    pub target: Tensor<4>,
    /// Each sample's loss weight, `[N]`.
    pub weight: Tensor<1>,
    /// Class labels of a class-conditional model (the class count meaning "no label"), `[N]`.
    pub labels: Option<Tensor<1, Int>>,
    /// Mean t / T of the batch (host-side, for the display).
    pub mean_t_over_t: f64,
    /// The step's dropout masks: its seed and this batch's first image in the step's batch.
    pub dropout: DropoutKey,
}

/// What a step reports to the metrics.
pub struct DenoisingOutput {
    /// Mean squared error over the batch, `[1]`.
    pub loss: Tensor<1>,
    /// Each sample's squared error averaged over its pixels, unweighted and detached, `[N]`
    /// (the adaptive curriculum's signal).
    pub per_sample: Tensor<1>,
    /// Images in the batch.
    pub images: usize,
    /// Mean t / T of the batch.
    pub mean_t_over_t: f64,
    /// Adam's beta1 in this step (set by the training strategy, which knows the step).
    pub beta1: f64,
}

impl DenoisingModel {
    /// The gradients of `loss` (one backward pass), clipped by their global norm: the backward
    /// half of every training step, one device or several, and of the benchmark's timed phases.
    pub fn gradients(&self, loss: &Tensor<1>) -> GradientsParams {
        let mut grads = GradientsParams::from_grads(loss.backward(), self);
        self.clip(&mut grads);
        grads
    }

    /// Clips `grads` (this model's) by their global norm when `grad_clip` is set.
    pub fn clip(&self, grads: &mut GradientsParams) {
        if self.grad_clip > 0.0 {
            clip_global_norm(self, grads, self.grad_clip);
        }
    }

    /// Each sample's squared error, averaged over its pixels, times its weight; averaged over
    /// the batch.
    pub fn loss(&self, batch: &DenoisingBatch) -> Tensor<1> {
        self.losses(batch).0
    }

    /// The batch's loss (as [`loss`](Self::loss)) and each sample's unweighted squared error,
    /// detached from the graph.
    pub fn losses(&self, batch: &DenoisingBatch) -> (Tensor<1>, Tensor<1>) {
        // A bf16 copy of the f32 network per step: the casts are in the graph, so the
        // gradients reach the f32 parameters; the output comes back in f32 for the loss.
        let unet = match self.precision {
            Precision::F32 => Cow::Borrowed(&self.unet),
            precision => Cow::Owned(cast_params(self.unet.clone(), precision.dtype())),
        };
        let out = unet.forward_training(
            batch.x_t.clone(),
            batch.t.clone(),
            batch.labels.clone(),
            batch.dropout,
        );
        let [n, c, h, w] = out.dims();
        let per_sample = (out - batch.target.clone())
            .powi_scalar(2)
            .reshape([n, c * h * w])
            .mean_dim(1)
            .reshape([n]);
        let loss = (per_sample.clone() * batch.weight.clone()).mean();
        (loss, per_sample.detach())
    }
}

impl DenoisingBatch {
    /// Images `start..start + len` on `device`, their loss weights times `share` (the shard's
    /// fraction of the batch, so that the shards' losses add up to the batch's).
    fn shard(&self, start: usize, len: usize, share: f64, device: &Device) -> Self {
        let rows4 = |t: &Tensor<4>| t.clone().narrow(0, start, len).to_device(device);
        let rows1 = |t: &Tensor<1>| t.clone().narrow(0, start, len).to_device(device);
        Self {
            x_t: rows4(&self.x_t),
            t: rows1(&self.t),
            target: rows4(&self.target),
            weight: rows1(&self.weight).mul_scalar(share),
            labels: self
                .labels
                .as_ref()
                .map(|l| l.clone().narrow(0, start, len).to_device(device)),
            mean_t_over_t: self.mean_t_over_t,
            // The shard's images keep their places in the step's batch, and so their masks.
            dropout: DropoutKey {
                first_image: self.dropout.first_image + start,
                ..self.dropout
            },
        }
    }
}

impl DenoisingModel {
    /// One data-parallel training step with Burn's multi-device pieces: the batch is split into
    /// one shard per device (sizes differing by at most one), a replica of the model
    /// (`Module::fork`) computes each shard's loss and gradients on its device, all at once,
    /// and the gradients are brought to this model's device (`GradientsParams::to_device`) and
    /// summed in device order (`GradientsAccumulator`). Each shard's loss is weighted by its
    /// share of the batch, so the sum is the gradient of the whole batch's loss, which is then
    /// clipped by its global norm as in a one-device step. `devices` are autodiff devices.
    pub fn data_parallel_step(
        &self,
        batch: DenoisingBatch,
        devices: &[Device],
    ) -> TrainOutput<DenoisingOutput> {
        let n = batch.t.dims()[0];
        let k = devices.len();
        assert!(
            k >= 1 && n >= k,
            "{n} images cannot be split over {k} devices"
        );
        let main = batch.t.device();
        let shards: Vec<(DenoisingModel, DenoisingBatch)> = devices
            .iter()
            .enumerate()
            .map(|(i, device)| {
                let (start, end) = (i * n / k, (i + 1) * n / k);
                let share = (end - start) as f64 / n as f64;
                let replica = self.clone().fork(device);
                (replica, batch.shard(start, end - start, share, device))
            })
            .collect();
        let results: Vec<(Tensor<1>, Tensor<1>, GradientsParams)> = std::thread::scope(|scope| {
            let handles: Vec<_> = shards
                .into_iter()
                .map(|(replica, shard)| {
                    scope.spawn(move || {
                        let (loss, per_sample) = replica.losses(&shard);
                        let grads = GradientsParams::from_grads(loss.backward(), &replica);
                        (loss, per_sample, grads)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a device's training step panicked"))
                .collect()
        });
        let mut accumulator = GradientsAccumulator::new();
        let mut total: Option<Tensor<1>> = None;
        let mut per_sample = Vec::with_capacity(k);
        for (loss, shard_losses, grads) in results {
            accumulator.accumulate(self, grads.to_device(&main, self));
            per_sample.push(shard_losses.to_device(&main));
            let loss = loss.to_device(&main);
            total = Some(match total {
                Some(t) => t + loss,
                None => loss,
            });
        }
        let mut grads = accumulator.grads();
        self.clip(&mut grads);
        TrainOutput {
            grads,
            item: DenoisingOutput {
                loss: total.expect("at least one device"),
                // In shard order, which is the batch's order.
                per_sample: Tensor::cat(per_sample, 0),
                images: n,
                mean_t_over_t: batch.mean_t_over_t,
                beta1: f64::NAN,
            },
        }
    }
}

impl TrainStep for DenoisingModel {
    type Input = DenoisingBatch;
    type Output = DenoisingOutput;

    fn step(&self, batch: DenoisingBatch) -> TrainOutput<DenoisingOutput> {
        let (loss, per_sample) = self.losses(&batch);
        let images = batch.t.dims()[0];
        let grads = self.gradients(&loss);
        TrainOutput {
            grads,
            item: DenoisingOutput {
                loss,
                per_sample,
                images,
                mean_t_over_t: batch.mean_t_over_t,
                beta1: f64::NAN,
            },
        }
    }
}

impl InferenceStep for DenoisingModel {
    type Input = DenoisingBatch;
    type Output = DenoisingOutput;

    fn step(&self, batch: DenoisingBatch) -> DenoisingOutput {
        let (loss, per_sample) = self.losses(&batch);
        DenoisingOutput {
            loss,
            per_sample,
            images: batch.t.dims()[0],
            mean_t_over_t: batch.mean_t_over_t,
            beta1: f64::NAN,
        }
    }
}

impl Adaptor<LossInput> for DenoisingOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl ItemLazy for DenoisingOutput {
    fn sync(self) -> Result<Self, burn::tensor::ExecutionError> {
        self.loss.device().flush()?;
        Ok(Self {
            loss: self.loss.without_autodiff(),
            per_sample: self.per_sample.without_autodiff(),
            ..self
        })
    }
}

/// Scales all gradients by min(1, max_norm / ||g||) where ||g|| is the norm of all gradients
/// together, as DDPM does (`clip_by_global_norm`); Burn's own clipping works per tensor. The
/// factor stays on the device, so clipping costs no synchronisation.
pub fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) {
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let sq = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + sq,
                    None => sq,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: Tensor<1>,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let factor = self.factor.clone().reshape([1; D]);
                self.grads.register::<D>(param.id, g * factor);
            }
        }
    }
    let mut norm = SquaredNorm { grads, total: None };
    module.visit(&mut norm);
    let Some(total) = norm.total else { return };
    let factor = (total.sqrt() + 1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0);
    module.visit(&mut Scale { grads, factor });
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::{DType, Distribution};
    use hayate_model::UNetConfig;

    /// Every parameter's gradient, flattened, in visiting order, with its type.
    fn gradients(model: &DenoisingModel, grads: &GradientsParams) -> Vec<(DType, Vec<f32>)> {
        struct Collect<'a>(&'a GradientsParams, Vec<(DType, Vec<f32>)>);
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let grad = self
                    .0
                    .get::<D>(param.id)
                    .expect("every parameter has a gradient");
                let dtype = grad.dtype();
                self.1
                    .push((dtype, grad.into_data().iter::<f32>().collect()));
            }
        }
        let mut collect = Collect(grads, Vec::new());
        model.visit(&mut collect);
        collect.1
    }

    #[test]
    fn a_bf16_forward_gives_f32_gradients_close_to_the_f32_ones() {
        let device = Device::flex().autodiff();
        // Every weight moved off its initial value: the output convolution starts at zero,
        // which would make both losses equal and most gradients vanish.
        struct Perturb;
        impl burn::module::ModuleMapper for Perturb {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                param.map(|t| {
                    let noise = t.random_like(Distribution::Normal(0.0, 0.05));
                    (t + noise).detach().require_grad()
                })
            }
        }
        let unet = hayate_model::Network::UNet(UNetConfig::tiny().init(&device));
        let f32_model = DenoisingModel {
            unet: unet.map(&mut Perturb),
            grad_clip: 0.0,
            precision: Precision::F32,
        };
        let bf16_model = DenoisingModel {
            precision: Precision::Bf16,
            ..f32_model.clone()
        };
        let n = 2;
        let batch = DenoisingBatch {
            x_t: Tensor::random([n, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device),
            t: Tensor::from_floats([17.0, 871.0], &device),
            target: Tensor::random([n, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device),
            weight: Tensor::ones([n], &device),
            labels: None,
            mean_t_over_t: 0.5,
            dropout: DropoutKey {
                seed: 1,
                first_image: 0,
            },
        };
        let (loss32, loss16) = (f32_model.loss(&batch), bf16_model.loss(&batch));
        assert_eq!(loss16.dtype(), DType::F32, "the loss is computed in f32");
        let (l32, l16) = (
            loss32.clone().into_scalar::<f32>() as f64,
            loss16.clone().into_scalar::<f32>() as f64,
        );
        assert!(
            (l32 - l16).abs() < 0.02 * l32,
            "f32 loss {l32}, bf16 loss {l16}"
        );
        assert_ne!(l32, l16, "the bf16 model computed in f32");
        let g32 = gradients(&f32_model, &f32_model.gradients(&loss32));
        let g16 = gradients(&bf16_model, &bf16_model.gradients(&loss16));
        assert_eq!(g32.len(), g16.len());
        // Each tensor's gradient points the same way (bf16 keeps 8 bits of mantissa; 0.9998 or
        // more seen). Biases that a normalisation or the softmax cancels have gradients of
        // rounding noise only (norms near 1e-10 against 1e-1): their direction means nothing.
        let norm = |v: &[f32]| v.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
        let largest = g32.iter().map(|(_, a)| norm(a)).fold(0.0, f64::max);
        let mut compared = 0;
        for (i, ((d32, a), (d16, b))) in g32.iter().zip(&g16).enumerate() {
            assert_eq!((*d32, *d16), (DType::F32, DType::F32), "parameter {i}");
            let (na, nb) = (norm(a), norm(b));
            if na < 1e-6 * largest {
                continue;
            }
            let dot: f64 = a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum();
            let cosine = dot / (na * nb);
            assert!(cosine > 0.99, "parameter {i}: cosine {cosine}");
            compared += 1;
        }
        assert!(compared > g32.len() * 3 / 4, "{compared} of {}", g32.len());
    }
}
