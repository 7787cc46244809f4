//! Exponential moving average of the weights, written as a module mapper (Burn has no EMA).

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use hayate_model::UNet;

/// The EMA copy of the network, kept off the autodiff graph.
#[derive(Debug, Clone)]
pub struct Ema {
    /// The averaged network.
    pub model: UNet,
    /// Target decay.
    pub decay: f64,
    /// Warm-up constant: decay at update k is min(decay, (1 + k) / (warmup + k)).
    pub warmup: f64,
}

impl Ema {
    /// Starts the average at the current weights.
    pub fn new(model: &UNet, decay: f64, warmup: f64) -> Self {
        Self {
            model: model.valid(),
            decay,
            warmup,
        }
    }

    /// The decay applied at update `k` (0-based).
    pub fn decay_at(&self, k: u64) -> f64 {
        if self.warmup <= 0.0 {
            return self.decay;
        }
        let k = k as f64;
        self.decay.min((1.0 + k) / (self.warmup + k))
    }

    /// ema <- d * ema + (1 - d) * model, with d = `decay_at(k)`.
    pub fn update(&mut self, model: &UNet, k: u64) {
        let d = self.decay_at(k);
        let mut collect = Flatten(Vec::new());
        model.visit(&mut collect);
        let mut mix = Mix {
            sources: collect.0.into_iter(),
            decay: d,
        };
        self.model = self.model.clone().map(&mut mix);
    }
}

/// Collects every float parameter, detached and flattened, in visiting order.
struct Flatten(Vec<Tensor<1>>);

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().without_autodiff();
        let n = value.shape().num_elements();
        self.0.push(value.reshape([n]));
    }
}

/// Mixes each parameter with the next collected one; both modules have the same structure, so
/// visiting order pairs them.
struct Mix<I: Iterator<Item = Tensor<1>>> {
    sources: I,
    decay: f64,
}

impl<I: Iterator<Item = Tensor<1>>> ModuleMapper for Mix<I> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let source = self
            .sources
            .next()
            .expect("the EMA and the model have the same parameters");
        let decay = self.decay;
        param.map(|ema| {
            let shape = ema.shape();
            let source = source.to_device(&ema.device()).reshape(shape);
            ema.mul_scalar(decay) + source.mul_scalar(1.0 - decay)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hayate_model::UNetConfig;

    #[test]
    fn warmup_makes_early_decay_small_and_reaches_the_target() {
        let device = Device::flex();
        let model = UNetConfig::tiny().init(&device);
        let ema = Ema::new(&model, 0.9999, 10.0);
        assert!((ema.decay_at(0) - 0.1).abs() < 1e-12);
        assert_eq!(ema.decay_at(10_000_000), 0.9999);
        assert_eq!(Ema::new(&model, 0.99, 0.0).decay_at(0), 0.99);
    }

    #[test]
    fn update_moves_the_average_toward_the_model() {
        let device = Device::flex();
        let a = UNetConfig::tiny().init(&device);
        let b = UNetConfig::tiny().init(&device);
        let mut ema = Ema::new(&a, 0.75, 0.0);
        ema.update(&b, 0);
        let first = |m: &UNet| {
            let mut f = Flatten(Vec::new());
            m.visit(&mut f);
            f.0.into_iter()
                .next()
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let (va, vb, ve) = (first(&a), first(&b), first(&ema.model));
        for i in 0..va.len() {
            let expected = 0.75 * va[i] + 0.25 * vb[i];
            assert!((ve[i] - expected).abs() < 1e-6);
        }
        assert_ne!(va, vb);
    }
}
