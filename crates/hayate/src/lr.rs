//! The learning-rate schedule: linear warm-up, then constant (the DDPM recipe).

use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};

/// lr(k) = lr * min(1, k / warmup) for the k-th step (1-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupLr {
    /// The rate after warm-up.
    pub lr: f64,
    /// Warm-up length in steps (0: none).
    pub warmup: u64,
    /// Steps taken so far.
    pub step: u64,
}

impl WarmupLr {
    /// The rate of the `k`-th step (1-based).
    pub fn at(&self, k: u64) -> f64 {
        if self.warmup == 0 {
            return self.lr;
        }
        self.lr * (k as f64 / self.warmup as f64).min(1.0)
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
        let mut s = WarmupLr {
            lr: 2e-4,
            warmup: 4,
            step: 0,
        };
        let seq: Vec<f64> = (0..6).map(|_| s.step()).collect();
        let expected = [0.5e-4, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4];
        for (got, want) in seq.iter().zip(expected) {
            assert!((got - want).abs() < 1e-15, "{seq:?}");
        }
        let mut resumed = WarmupLr {
            lr: 2e-4,
            warmup: 4,
            step: 0,
        };
        let mut at_two = WarmupLr {
            lr: 2e-4,
            warmup: 4,
            step: 2,
        };
        resumed.load_record(at_two.to_record());
        assert_eq!(resumed.step(), at_two.step());
    }
}
