//! The learning-rate schedule: linear warm-up, then constant (the DDPM recipe) or a cosine
//! decay, times MDLRC's compensation for the scheduled beta1.

use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use hayate_schedule::MomentumSchedule;
use serde::{Deserialize, Serialize};

/// What the rate does after warm-up (`train.lr_decay`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrDecay {
    /// Stays at `lr` (DDPM).
    #[default]
    Constant,
    /// Falls from `lr` to `min_lr` along a half cosine between the end of warm-up and the last
    /// step of the run.
    Cosine {
        /// The rate at the last step.
        min_lr: f64,
    },
}

/// lr(k) = base(k) * min(1, k / warmup) * c(k - 1) for the k-th step (1-based), where base is
/// the decay's rate and c the momentum schedule's compensation for the beta1 of that update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupLr {
    /// The rate after warm-up.
    pub lr: f64,
    /// Warm-up length in steps (0: none).
    pub warmup: u64,
    /// After warm-up: constant or cosine.
    pub decay: LrDecay,
    /// The run's length in steps (the cosine's end).
    pub total: u64,
    /// Steps taken so far.
    pub step: u64,
    /// beta1(k) and its compensation.
    pub momentum: MomentumSchedule,
}

impl WarmupLr {
    /// The rate of the `k`-th step (1-based).
    pub fn at(&self, k: u64) -> f64 {
        let warmup = if self.warmup == 0 {
            1.0
        } else {
            (k as f64 / self.warmup as f64).min(1.0)
        };
        let base = match self.decay {
            LrDecay::Constant => self.lr,
            LrDecay::Cosine { min_lr } => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f64;
                let p = (k.saturating_sub(self.warmup) as f64 / span).min(1.0);
                min_lr + (self.lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        };
        base * warmup * self.momentum.lr_factor(k.saturating_sub(1))
    }
}

impl LrScheduler for WarmupLr {
    fn step(&mut self) -> f64 {
        self.step += 1;
        self.at(self.step)
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_holds_and_resumes_from_its_record() {
        let momentum = MomentumSchedule::constant(0.9);
        let mut s = WarmupLr {
            lr: 2e-4,
            warmup: 4,
            decay: LrDecay::Constant,
            total: 100,
            step: 0,
            momentum,
        };
        let seq: Vec<f64> = (0..6).map(|_| s.step()).collect();
        let expected = [0.5e-4, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4];
        for (got, want) in seq.iter().zip(expected) {
            assert!((got - want).abs() < 1e-15, "{seq:?}");
        }
        let mut resumed = WarmupLr {
            lr: 2e-4,
            warmup: 4,
            decay: LrDecay::Constant,
            total: 100,
            step: 0,
            momentum,
        };
        let mut at_two = WarmupLr {
            lr: 2e-4,
            warmup: 4,
            decay: LrDecay::Constant,
            total: 100,
            step: 2,
            momentum,
        };
        resumed.load_record(at_two.to_record());
        assert_eq!(resumed.step(), at_two.step());
    }

    #[test]
    fn cosine_decay_runs_from_lr_to_min_lr_after_warm_up() {
        let s = WarmupLr {
            lr: 1e-3,
            warmup: 10,
            decay: LrDecay::Cosine { min_lr: 1e-5 },
            total: 110,
            step: 0,
            momentum: MomentumSchedule::constant(0.9),
        };
        assert!((s.at(5) - 0.5e-3).abs() < 1e-15);
        assert!((s.at(10) - 1e-3).abs() < 1e-15);
        // Half way through the decay: the mean of the two ends.
        assert!((s.at(60) - (1e-3 + 1e-5) / 2.0).abs() < 1e-15);
        assert!((s.at(110) - 1e-5).abs() < 1e-15);
        assert!((s.at(500) - 1e-5).abs() < 1e-15);
        assert!(s.at(30) > s.at(31));
    }

    #[test]
    fn compensation_scales_the_rate_by_the_beta1_of_each_update() {
        let momentum = MomentumSchedule {
            beta_start: 0.9,
            decay: Some(hayate_schedule::MomentumDecay {
                beta_end: 0.5,
                k_start: 0,
                k_end: 10,
                shape: hayate_schedule::MomentumShape::Linear,
                compensation: hayate_schedule::Compensation::EmaWeight,
            }),
        };
        let mut s = WarmupLr {
            lr: 1e-3,
            warmup: 0,
            decay: LrDecay::Constant,
            total: 100,
            step: 0,
            momentum,
        };
        let rates: Vec<f64> = (0..12).map(|_| s.step()).collect();
        // Update k (0-based) uses beta1(k) = 0.9 - 0.04 k: lr (1 - beta1) stays 1e-4.
        for (k, lr) in rates.iter().enumerate() {
            assert!(
                (lr * (1.0 - momentum.beta1(k as u64)) - 1e-4).abs() < 1e-15,
                "k={k}"
            );
        }
        assert!((rates[11] - 2e-4).abs() < 1e-15);
    }
}
