//! Exponential moving average of the weights, written as a module mapper (Burn has no EMA).

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use hayate_model::Network;

/// How the EMA's decay moves with the update count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EmaSchedule {
    /// A target decay, reached through the warm-up min(decay, (1 + k) / (warmup + k)) (0: none).
    Constant {
        /// Target decay.
        decay: f64,
        /// Warm-up constant.
        warmup: f64,
    },
    /// EDM2's power-function EMA (Karras et al. 2024, arXiv 2312.02696): after t updates the
    /// decay is (1 - 1/t)^(gamma + 1), so the average always spans the same fraction of the
    /// run (a relative std sigma_rel of its length), from the first update on.
    Power {
        /// The exponent gamma.
        gamma: f64,
    },
}

impl EmaSchedule {
    /// The largest relative std a power EMA can have with gamma > 0: 1 / sqrt(12).
    pub const MAX_SIGMA_REL: f64 = 0.288_675_134_594_812_9;

    /// The power EMA with relative std `sigma_rel`: gamma solves sigma_rel^2 =
    /// (gamma + 1) / ((gamma + 2)^2 (gamma + 3)) (EDM2's eq. 3; 0.05 gives 16.97, 0.10 gives
    /// 6.94). `None` outside (0, [`Self::MAX_SIGMA_REL`]).
    pub fn power(sigma_rel: f64) -> Option<Self> {
        if !(sigma_rel > 0.0 && sigma_rel < Self::MAX_SIGMA_REL) {
            return None;
        }
        let variance = |g: f64| (g + 1.0) / ((g + 2.0).powi(2) * (g + 3.0));
        let target = sigma_rel * sigma_rel;
        // variance falls from 1/12 at gamma = 0 toward 0: bisect.
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        while variance(hi) > target {
            hi *= 2.0;
        }
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if variance(mid) > target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(Self::Power {
            gamma: 0.5 * (lo + hi),
        })
    }

    /// The decay applied at update `k` (0-based).
    pub fn decay_at(&self, k: u64) -> f64 {
        match *self {
            Self::Constant { decay, warmup } => {
                if warmup <= 0.0 {
                    return decay;
                }
                let k = k as f64;
                decay.min((1.0 + k) / (warmup + k))
            }
            Self::Power { gamma } => (1.0 - 1.0 / (k + 1) as f64).powf(gamma + 1.0),
        }
    }
}

/// The EMA copy of the network, kept off the autodiff graph.
#[derive(Debug, Clone)]
pub struct Ema {
    /// The averaged network: `None` only inside [`Ema::update`], which takes it out so that
    /// its buffers are not shared while they are updated in place.
    model: Option<Network>,
    /// Its decay over the updates.
    pub schedule: EmaSchedule,
}

impl Ema {
    /// Starts the average at the current weights.
    pub fn new(model: &Network, schedule: EmaSchedule) -> Self {
        Self::resume(model.valid(), schedule)
    }

    /// Continues an average (`model`, off the autodiff graph, as a checkpoint holds it).
    pub fn resume(model: Network, schedule: EmaSchedule) -> Self {
        Self {
            model: Some(model),
            schedule,
        }
    }

    /// The averaged network.
    pub fn model(&self) -> &Network {
        self.model
            .as_ref()
            .expect("the EMA model is only taken out during an update")
    }

    /// The decay applied at update `k` (0-based).
    pub fn decay_at(&self, k: u64) -> f64 {
        self.schedule.decay_at(k)
    }

    /// ema <- d * ema + (1 - d) * model, with d = `decay_at(k)`.
    pub fn update(&mut self, model: &Network, k: u64) {
        let d = self.decay_at(k);
        let mut collect = Flatten(Vec::new());
        model.visit(&mut collect);
        let mut mix = Mix {
            sources: collect.0.into_iter(),
            decay: d,
        };
        let model = self
            .model
            .take()
            .expect("the EMA model is in place between updates");
        self.model = Some(model.map(&mut mix));
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
            hayate_model::fused::ema_mix(ema, source, decay)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hayate_model::UNetConfig;

    fn constant(decay: f64, warmup: f64) -> EmaSchedule {
        EmaSchedule::Constant { decay, warmup }
    }

    #[test]
    fn warmup_makes_early_decay_small_and_reaches_the_target() {
        let ema = constant(0.9999, 10.0);
        assert!((ema.decay_at(0) - 0.1).abs() < 1e-12);
        assert_eq!(ema.decay_at(10_000_000), 0.9999);
        assert_eq!(constant(0.99, 0.0).decay_at(0), 0.99);
    }

    #[test]
    fn power_ema_matches_edm2s_gamma_and_decay() {
        // gamma from numpy.roots([1, 7, 16 - s^-2, 12 - s^-2]), as EDM2's sigma_rel_to_gamma.
        for (sigma_rel, gamma) in [
            (0.05, 16.972_198_602_303_447),
            (0.10, 6.937_203_937_601_809),
        ] {
            let Some(EmaSchedule::Power { gamma: ours }) = EmaSchedule::power(sigma_rel) else {
                panic!("{sigma_rel} is a valid relative std");
            };
            assert!(
                (ours - gamma).abs() < 1e-9,
                "{sigma_rel}: {ours} vs {gamma}"
            );
        }
        let ema = EmaSchedule::power(0.10).unwrap();
        // The first update copies the model; after t updates, (1 - 1/t)^(gamma + 1).
        assert_eq!(ema.decay_at(0), 0.0);
        assert!((ema.decay_at(9) - 0.433_324_720_682_134_8).abs() < 1e-12);
        assert!((ema.decay_at(999) - 0.992_090_272_645_078_9).abs() < 1e-12);
        assert!((1..2000).all(|k| ema.decay_at(k) > ema.decay_at(k - 1)));
        for bad in [0.0, -0.1, 0.3, f64::NAN] {
            assert_eq!(EmaSchedule::power(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_power_ema_weighs_update_i_as_i_to_the_gamma() {
        // EDM2's profile: the average after t updates weighs update i about as i^gamma. Average
        // the numbers 1..=t and compare with sum i^(g+1) / sum i^g (the plain mean is t/2).
        let ema = EmaSchedule::power(0.10).unwrap();
        let EmaSchedule::Power { gamma } = ema else {
            unreachable!()
        };
        for (t, tolerance) in [(50u64, 2e-3), (2000, 1e-4)] {
            let mut average = 0.0f64;
            for k in 0..t {
                let d = ema.decay_at(k);
                average = d * average + (1.0 - d) * (k + 1) as f64;
            }
            let (num, den) = (1..=t).fold((0.0, 0.0), |(n, d), i| {
                let w = (i as f64).powf(gamma);
                (n + w * i as f64, d + w)
            });
            let profile = num / den;
            assert!(
                (average / profile - 1.0).abs() < tolerance,
                "t = {t}: {average} vs {profile}"
            );
        }
    }

    #[test]
    fn update_moves_the_average_toward_the_model() {
        let device = Device::flex();
        let a = Network::UNet(UNetConfig::tiny().init(&device));
        let b = Network::UNet(UNetConfig::tiny().init(&device));
        let mut ema = Ema::new(&a, constant(0.75, 0.0));
        ema.update(&b, 0);
        let first = |m: &Network| {
            let mut f = Flatten(Vec::new());
            m.visit(&mut f);
            f.0.into_iter()
                .next()
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let (va, vb, ve) = (first(&a), first(&b), first(ema.model()));
        for i in 0..va.len() {
            let expected = 0.75 * va[i] + 0.25 * vb[i];
            assert!((ve[i] - expected).abs() < 1e-6);
        }
        assert_ne!(va, vb);
    }
}
