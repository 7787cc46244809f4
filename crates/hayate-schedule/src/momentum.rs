//! MDLRC's optimiser schedules (Xu et al. 2024): Adam's beta1 as a function of the step, and the
//! learning-rate compensation that keeps the step size stable as beta1 falls.

use crate::ScheduleError;
use serde::{Deserialize, Serialize};

/// How beta1 moves from its start to its end value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MomentumShape {
    /// Straight line.
    #[default]
    Linear,
    /// Half a cosine: slow at both ends.
    Cosine,
    /// Demon (Chen et al. 2019): the odds beta / (1 - beta) move linearly, so with
    /// beta_end = 0 they are proportional to (1 - progress), as in the paper.
    Demon,
}

/// The learning-rate compensation c(k) applied as lr(k) = lr_base(k) c(k).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compensation {
    /// c = 1.
    #[default]
    None,
    /// c = (1 - beta_start) / (1 - beta1(k)): keeps lr (1 - beta1), the weight of each new
    /// gradient in the update, fixed.
    EmaWeight,
    /// c = sqrt((1 - beta_start)(1 + beta1(k)) / ((1 + beta_start)(1 - beta1(k)))): keeps the
    /// variance of the momentum of i.i.d. gradient noise fixed.
    Noise,
}

/// How beta1 decays from its starting value: the `[train] momentum` table of a config.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MomentumDecay {
    /// beta1 from `k_end` on.
    pub beta_end: f64,
    /// First step of the decay.
    pub k_start: u64,
    /// Step at which beta1 reaches `beta_end`.
    pub k_end: u64,
    /// The decay's shape.
    #[serde(default)]
    pub shape: MomentumShape,
    /// The learning-rate compensation.
    #[serde(default)]
    pub compensation: Compensation,
}

/// beta1(k): `beta_start`, decaying as `decay` says (constant without one), and the
/// learning-rate compensation that goes with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MomentumSchedule {
    /// beta1 before the decay (Adam's usual 0.9).
    pub beta_start: f64,
    /// The decay; `None` keeps beta1 at `beta_start` with no compensation (plain Adam).
    pub decay: Option<MomentumDecay>,
}

impl MomentumSchedule {
    /// beta1 fixed at `beta` with no compensation: plain Adam.
    pub fn constant(beta: f64) -> Self {
        Self {
            beta_start: beta,
            decay: None,
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let end = self.decay.map(|d| d.beta_end);
        for (name, b) in [("beta_start", Some(self.beta_start)), ("beta_end", end)] {
            if let Some(b) = b
                && !(0.0..1.0).contains(&b)
            {
                return Err(ScheduleError(format!(
                    "momentum.{name} must be in [0, 1), got {b}"
                )));
            }
        }
        if let Some(d) = self.decay
            && d.k_end < d.k_start
        {
            return Err(ScheduleError(format!(
                "momentum.k_end ({}) must not come before k_start ({})",
                d.k_end, d.k_start
            )));
        }
        Ok(())
    }

    /// beta1 for the update at (0-based) step `k`.
    pub fn beta1(&self, k: u64) -> f64 {
        let Some(d) = self.decay else {
            return self.beta_start;
        };
        let p = if k >= d.k_end {
            1.0
        } else if k <= d.k_start {
            0.0
        } else {
            (k - d.k_start) as f64 / (d.k_end - d.k_start) as f64
        };
        let (b0, b1) = (self.beta_start, d.beta_end);
        match d.shape {
            MomentumShape::Linear => b0 + (b1 - b0) * p,
            MomentumShape::Cosine => {
                b1 + (b0 - b1) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            MomentumShape::Demon => {
                let odds = |b: f64| b / (1.0 - b);
                let r = odds(b0) + (odds(b1) - odds(b0)) * p;
                r / (1.0 + r)
            }
        }
    }

    /// The compensation factor c(k) for the update at (0-based) step `k`.
    pub fn lr_factor(&self, k: u64) -> f64 {
        let compensation = self.decay.map_or(Compensation::None, |d| d.compensation);
        let (b0, b) = (self.beta_start, self.beta1(k));
        match compensation {
            Compensation::None => 1.0,
            Compensation::EmaWeight => (1.0 - b0) / (1.0 - b),
            Compensation::Noise => ((1.0 - b0) * (1.0 + b) / ((1.0 + b0) * (1.0 - b))).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decay(shape: MomentumShape, compensation: Compensation) -> MomentumDecay {
        MomentumDecay {
            beta_end: 0.5,
            k_start: 100,
            k_end: 300,
            shape,
            compensation,
        }
    }

    fn schedule(shape: MomentumShape, compensation: Compensation) -> MomentumSchedule {
        MomentumSchedule {
            beta_start: 0.9,
            decay: Some(decay(shape, compensation)),
        }
    }

    #[test]
    fn beta1_follows_each_shape_at_chosen_steps() {
        let linear = schedule(MomentumShape::Linear, Compensation::None);
        assert_eq!(linear.beta1(0), 0.9);
        assert_eq!(linear.beta1(100), 0.9);
        assert!((linear.beta1(200) - 0.7).abs() < 1e-12);
        assert_eq!(linear.beta1(300), 0.5);
        assert_eq!(linear.beta1(10_000), 0.5);
        let cosine = schedule(MomentumShape::Cosine, Compensation::None);
        assert!((cosine.beta1(200) - 0.7).abs() < 1e-12);
        assert!(
            (cosine.beta1(150) - (0.5 + 0.4 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())))
                .abs()
                < 1e-12
        );
        let demon = schedule(MomentumShape::Demon, Compensation::None);
        // Odds 9 -> 1 linearly: at the midpoint the odds are 5, so beta1 = 5/6.
        assert!((demon.beta1(200) - 5.0 / 6.0).abs() < 1e-12);
        assert!((demon.beta1(300) - 0.5).abs() < 1e-12);
        // With beta_end = 0 the odds are proportional to (1 - progress): Demon itself.
        let to_zero = MomentumSchedule {
            beta_start: 0.9,
            decay: Some(MomentumDecay {
                beta_end: 0.0,
                ..decay(MomentumShape::Demon, Compensation::None)
            }),
        };
        let odds = |b: f64| b / (1.0 - b);
        assert!((odds(to_zero.beta1(250)) - 9.0 * 0.25).abs() < 1e-9);
    }

    #[test]
    fn compensation_keeps_its_invariant() {
        let ema = schedule(MomentumShape::Linear, Compensation::EmaWeight);
        let noise = schedule(MomentumShape::Linear, Compensation::Noise);
        for k in [0, 150, 200, 299, 5000] {
            let b = ema.beta1(k);
            // lr (1 - beta1) stays at its starting value 0.1.
            assert!((ema.lr_factor(k) * (1.0 - b) - 0.1).abs() < 1e-12);
            // lr^2 (1 - beta1) / (1 + beta1), the stationary variance of the momentum of unit
            // i.i.d. noise scaled by lr, stays at its starting value.
            let v = noise.lr_factor(k).powi(2) * (1.0 - b) / (1.0 + b);
            assert!((v - 0.1 / 1.9).abs() < 1e-12);
        }
        assert_eq!(
            schedule(MomentumShape::Linear, Compensation::None).lr_factor(250),
            1.0
        );
        assert_eq!(MomentumSchedule::constant(0.9).beta1(12345), 0.9);
        assert_eq!(MomentumSchedule::constant(0.9).lr_factor(12345), 1.0);
    }

    #[test]
    fn invalid_schedules_are_rejected() {
        let ok = decay(MomentumShape::Linear, Compensation::None);
        let with = |decay: MomentumDecay| MomentumSchedule {
            beta_start: 0.9,
            decay: Some(decay),
        };
        assert!(with(ok).validate().is_ok());
        assert!(
            with(MomentumDecay {
                beta_end: 1.0,
                ..ok
            })
            .validate()
            .is_err()
        );
        assert!(with(MomentumDecay { k_end: 50, ..ok }).validate().is_err());
        assert!(MomentumSchedule::constant(1.0).validate().is_err());
    }
}
