//! Per-timestep loss weights, in the space of the network's own prediction.

use crate::{NoiseSchedule, Prediction, ScheduleError};
use serde::{Deserialize, Serialize};

/// How each sample's squared error is weighted by its timestep (the `loss_weight` table of a
/// config). Every weight is defined for eps-prediction and converted to the run's prediction so
/// that the weighting of the eps-space error is the same whatever the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LossWeight {
    /// The plain MSE of the prediction (DDPM's "simple" loss for eps).
    #[default]
    Uniform,
    /// Min-SNR-gamma (Hang et al. 2023): eps weight min(SNR, gamma) / SNR.
    MinSnr {
        /// The clamp (5 in the paper).
        gamma: f64,
    },
    /// P2 (Choi et al. 2022): eps weight 1 / (k + SNR)^gamma.
    P2 {
        /// Offset k (1 in the paper).
        k: f64,
        /// Exponent gamma (0.5 or 1 in the paper).
        gamma: f64,
    },
}

impl LossWeight {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match *self {
            Self::Uniform => Ok(()),
            Self::MinSnr { gamma } if gamma > 0.0 && gamma.is_finite() => Ok(()),
            Self::P2 { k, gamma }
                if k > 0.0 && k.is_finite() && gamma >= 0.0 && gamma.is_finite() =>
            {
                Ok(())
            }
            other => Err(ScheduleError(format!(
                "loss_weight: invalid parameters in {other:?}"
            ))),
        }
    }

    /// The weight of a sample at timestep `t` for a network that predicts `prediction`.
    pub fn weight(&self, schedule: &NoiseSchedule, t: usize, prediction: Prediction) -> f64 {
        let snr = schedule.snr(t);
        let eps_weight = match *self {
            Self::Uniform => return 1.0,
            Self::MinSnr { gamma } => snr.min(gamma) / snr,
            Self::P2 { k, gamma } => (k + snr).powf(-gamma),
        };
        // For a fixed x_t, |x0 error|^2 = |eps error|^2 / SNR and |v error|^2 =
        // |eps error|^2 (1 + SNR) / SNR, so these factors give the prediction's own error the
        // eps-space weighting.
        eps_weight
            * match prediction {
                Prediction::Eps => 1.0,
                Prediction::X0 => snr,
                Prediction::V => snr / (snr + 1.0),
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_snr_matches_the_papers_three_forms() {
        let s = NoiseSchedule::ddpm();
        let w = LossWeight::MinSnr { gamma: 5.0 };
        for t in [0, 10, 100, 500, 999] {
            let snr = s.snr(t);
            let m = snr.min(5.0);
            assert!((w.weight(&s, t, Prediction::Eps) - m / snr).abs() < 1e-12);
            assert!((w.weight(&s, t, Prediction::X0) - m).abs() < 1e-9);
            assert!((w.weight(&s, t, Prediction::V) - m / (snr + 1.0)).abs() < 1e-12);
        }
        // Low t (high SNR) is down-weighted; high t keeps weight 1 for eps.
        assert!(w.weight(&s, 0, Prediction::Eps) < 1e-3);
        assert_eq!(w.weight(&s, 999, Prediction::Eps), 1.0);
    }

    #[test]
    fn p2_and_uniform() {
        let s = NoiseSchedule::ddpm();
        let w = LossWeight::P2 { k: 1.0, gamma: 1.0 };
        let t = 300;
        assert!((w.weight(&s, t, Prediction::Eps) - 1.0 / (1.0 + s.snr(t))).abs() < 1e-12);
        assert_eq!(
            LossWeight::P2 { k: 1.0, gamma: 0.0 }.weight(&s, t, Prediction::Eps),
            1.0
        );
        assert_eq!(LossWeight::Uniform.weight(&s, t, Prediction::V), 1.0);
        assert!(LossWeight::MinSnr { gamma: 0.0 }.validate().is_err());
        assert!(
            LossWeight::P2 {
                k: -1.0,
                gamma: 1.0
            }
            .validate()
            .is_err()
        );
        assert!(w.validate().is_ok());
    }
}
