//! The training step: the denoising loss on one batch, its gradients, and global-norm clipping.

use burn::module::{ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::train::metric::{Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use hayate_model::UNet;

/// The UNet as the Learner trains it: the loss, and gradients clipped by their global norm.
#[derive(Module, Debug)]
pub struct DenoisingModel {
    /// The network.
    pub unet: UNet,
    /// Clip the global gradient norm to this (0 disables).
    pub grad_clip: f64,
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
}

/// What a step reports to the metrics.
pub struct DenoisingOutput {
    /// Mean squared error over the batch, `[1]`.
    pub loss: Tensor<1>,
    /// Images in the batch.
    pub images: usize,
    /// Mean t / T of the batch.
    pub mean_t_over_t: f64,
    /// Adam's beta1 in this step (set by the training strategy, which knows the step).
    pub beta1: f64,
}

impl DenoisingModel {
    /// Each sample's squared error, averaged over its pixels, times its weight; averaged over
    /// the batch.
    pub fn loss(&self, batch: &DenoisingBatch) -> Tensor<1> {
        let out =
            self.unet
                .forward_labelled(batch.x_t.clone(), batch.t.clone(), batch.labels.clone());
        let [n, c, h, w] = out.dims();
        let per_sample = (out - batch.target.clone())
            .powi_scalar(2)
            .reshape([n, c * h * w])
            .mean_dim(1)
            .reshape([n]);
        (per_sample * batch.weight.clone()).mean()
    }
}

impl TrainStep for DenoisingModel {
    type Input = DenoisingBatch;
    type Output = DenoisingOutput;

    fn step(&self, batch: DenoisingBatch) -> TrainOutput<DenoisingOutput> {
        let loss = self.loss(&batch);
        let images = batch.t.dims()[0];
        let mut grads = GradientsParams::from_grads(loss.backward(), self);
        if self.grad_clip > 0.0 {
            clip_global_norm(self, &mut grads, self.grad_clip);
        }
        TrainOutput {
            grads,
            item: DenoisingOutput {
                loss,
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
        DenoisingOutput {
            loss: self.loss(&batch),
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
