//! Adam with a scheduled beta1: the optimiser half of MDLRC. Burn's Adam fixes beta1 when it is
//! built, so this is Burn's `Optimizer` trait implemented with beta1 a pure function of the step.

use burn::optim::{
    AdaptiveMomentumState, LearningRate, Optimizer, RecordState, StateSink, StateSource, join_path,
};
use burn::prelude::*;
use hayate_schedule::MomentumSchedule;

/// Adam whose beta1 at update k is `momentum.beta1(k)`; with a constant schedule it is Adam.
#[derive(Debug, Clone)]
pub struct ScheduledAdam {
    /// beta1(k).
    pub momentum: MomentumSchedule,
    /// beta2.
    pub beta2: f64,
    /// epsilon, added to sqrt of the bias-corrected second moment.
    pub epsilon: f64,
}

/// Per-parameter state: Burn's Adam moments and update count, plus the product of the beta1s
/// used so far, which replaces beta1^t in the first moment's bias correction.
#[derive(Clone)]
pub struct ScheduledAdamState<const D: usize> {
    /// Update count (`time`) and the two moments.
    pub moments: AdaptiveMomentumState<D>,
    /// prod_{i < time} beta1(i).
    pub beta1_product: f64,
}

impl<const D: usize> RecordState for ScheduledAdamState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        self.moments
            .state_flatten(&join_path(prefix, "moments"), out);
        out.push_scalar(prefix, "beta1_product", self.beta1_product.into());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let moments =
            AdaptiveMomentumState::state_unflatten(&join_path(prefix, "moments"), src, device)?;
        let beta1_product = f64::try_from(src.take_scalar(prefix, "beta1_product")?).ok()?;
        Some(Self {
            moments,
            beta1_product,
        })
    }
}

impl Optimizer for ScheduledAdam {
    type State<const D: usize> = ScheduledAdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (time, m, v, product) = match state {
            Some(s) => (
                s.moments.time,
                s.moments.moment_1,
                s.moments.moment_2,
                s.beta1_product,
            ),
            None => (0, grad.zeros_like(), grad.zeros_like(), 1.0),
        };
        let beta1 = self.momentum.beta1(time as u64);
        let time = time + 1;
        let product = product * beta1;
        let correction2 = 1.0 - self.beta2.powi(time as i32);
        // m_hat / (sqrt(v_hat) + eps), written as Burn's Adam writes it.
        let (tensor, m, v) = hayate_model::fused::adam_step(
            tensor,
            grad,
            m,
            v,
            hayate_model::fused::AdamScalars {
                beta1,
                beta2: self.beta2,
                factor: correction2.sqrt() / (1.0 - product),
                epsilon: self.epsilon * correction2.sqrt(),
                lr,
            },
        );
        let state = ScheduledAdamState {
            moments: AdaptiveMomentumState::new(time, m, v),
            beta1_product: product,
        };
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.moments = state.moments.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
    use burn::train::checkpoint::Checkpoint;
    use hayate_schedule::{Compensation, MomentumDecay, MomentumShape};

    #[derive(Module, Debug)]
    struct Net {
        a: Linear,
        b: Linear,
    }

    /// A small network with its weights drawn now (Burn draws them lazily otherwise); clones
    /// share them.
    fn net(device: &Device) -> Net {
        Net {
            a: LinearConfig::new(6, 8).init(device),
            b: LinearConfig::new(8, 3).init(device),
        }
        .materialize()
    }

    fn values(net: &Net) -> Vec<f32> {
        [net.a.weight.val().inner(), net.b.weight.val().inner()]
            .into_iter()
            .flat_map(|t| t.into_data().iter::<f32>().collect::<Vec<_>>())
            .collect()
    }

    /// `steps` steps of a regression toward a fixed target.
    fn train(mut model: Net, optim: &mut ModuleOptimizer, steps: usize, device: &Device) -> Net {
        let x = Tensor::<2>::from_floats([[0.5, -1.0, 0.25, 2.0, -0.5, 1.0]; 4], device);
        for _ in 0..steps {
            let y = model.b.forward(model.a.forward(x.clone()).tanh());
            let loss = (y - 0.3).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        model
    }

    fn scheduled(momentum: MomentumSchedule) -> ModuleOptimizer {
        ModuleOptimizer::from(ScheduledAdam {
            momentum,
            beta2: 0.999,
            epsilon: 1e-8,
        })
    }

    #[test]
    fn with_a_constant_beta1_it_matches_burns_adam() {
        let device = Device::flex().autodiff();
        let mut ours = scheduled(MomentumSchedule::constant(0.9));
        let mut burns = AdamConfig::new().with_epsilon(1e-8).init();
        let start = net(&device);
        let a = train(start.clone(), &mut ours, 20, &device);
        let b = train(start.clone(), &mut burns, 20, &device);
        let (va, vb) = (values(&a), values(&b));
        let start = values(&start);
        assert!(
            va.iter().zip(&start).any(|(x, y)| (x - y).abs() > 1e-3),
            "training moved nothing"
        );
        let worst = va
            .iter()
            .zip(&vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "differs from Burn's Adam by {worst}");
    }

    #[test]
    fn a_decaying_beta1_changes_the_trajectory_and_resumes_from_its_record() {
        let device = Device::flex().autodiff();
        let decay = MomentumSchedule {
            beta_start: 0.9,
            decay: Some(MomentumDecay {
                beta_end: 0.5,
                k_start: 2,
                k_end: 8,
                shape: MomentumShape::Cosine,
                compensation: Compensation::EmaWeight,
            }),
        };
        let start = net(&device);
        let mut straight = scheduled(decay);
        let full = train(start.clone(), &mut straight, 12, &device);
        let mut constant = scheduled(MomentumSchedule::constant(0.9));
        let other = train(start.clone(), &mut constant, 12, &device);
        assert_ne!(values(&full), values(&other));

        // Stop after 5 steps, save the optimiser state as bytes, restore it into a fresh
        // optimiser, and go on: the same parameters as straight through.
        let mut first = scheduled(decay);
        let half = train(start, &mut first, 5, &device);
        let bytes = first.to_record().checkpoint_into_bytes().unwrap();
        let record = burn::optim::OptimizerRecord::checkpoint_from_bytes(bytes).unwrap();
        let mut second = scheduled(decay).load_record(record);
        let resumed = train(half, &mut second, 7, &device);
        assert_eq!(values(&resumed), values(&full));
    }
}
