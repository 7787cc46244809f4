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
    /// SpeeD's change-aware weight (Wang et al. 2024), as its authors' sampler computes it:
    /// below `tau`, the rate of change d(1 - alpha_bar_t)/dt of the noise variance, min-max
    /// normalised over all t and mapped onto [1 - lambda, lambda]; 1 from `tau` on.
    SpeedChangeAware {
        /// The weight range's upper end, in [0.5, 1] (0.5: every t below tau weighs 0.5;
        /// SpeeD's ablation found 0.6 best and 1.0 harmful).
        lambda: f64,
        /// Where the weighting stops (SpeeD: the sampler's tau, 700 of 1000).
        tau: usize,
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
            Self::SpeedChangeAware { lambda, tau } if (0.5..=1.0).contains(&lambda) && tau > 0 => {
                Ok(())
            }
            other => Err(ScheduleError(format!(
                "loss_weight: invalid parameters in {other:?}"
            ))),
        }
    }

    /// The weight of every timestep 0..T, in order (what a training run looks up).
    pub fn table(&self, schedule: &NoiseSchedule, prediction: Prediction) -> Vec<f64> {
        let change = match *self {
            Self::SpeedChangeAware { lambda, tau } => Some(change_aware(schedule, lambda, tau)),
            _ => None,
        };
        (0..schedule.steps())
            .map(|t| self.converted(schedule, t, prediction, change.as_deref()))
            .collect()
    }

    /// The weight of a sample at timestep `t` for a network that predicts `prediction`.
    pub fn weight(&self, schedule: &NoiseSchedule, t: usize, prediction: Prediction) -> f64 {
        let change = match *self {
            Self::SpeedChangeAware { lambda, tau } => Some(change_aware(schedule, lambda, tau)),
            _ => None,
        };
        self.converted(schedule, t, prediction, change.as_deref())
    }

    /// The eps-space weight of `t`, converted to `prediction`; `change` is the change-aware
    /// table when this is SpeeD's weight.
    fn converted(
        &self,
        schedule: &NoiseSchedule,
        t: usize,
        prediction: Prediction,
        change: Option<&[f64]>,
    ) -> f64 {
        let snr = schedule.snr(t);
        let eps_weight = match *self {
            Self::Uniform => return 1.0,
            Self::MinSnr { gamma } => snr.min(gamma) / snr,
            Self::P2 { k, gamma } => (k + snr).powf(-gamma),
            Self::SpeedChangeAware { .. } => change.expect("the change-aware table")[t],
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

/// Central differences, one-sided at the ends (numpy's `gradient`).
fn gradient(f: &[f64]) -> Vec<f64> {
    let n = f.len();
    (0..n)
        .map(|i| match i {
            _ if n < 2 => 0.0,
            0 => f[1] - f[0],
            _ if i == n - 1 => f[n - 1] - f[n - 2],
            _ => (f[i + 1] - f[i - 1]) / 2.0,
        })
        .collect()
}

/// SpeeD's change-aware eps weights of every t: d(1 - alpha_bar_t)/dt min-max normalised over
/// all t and mapped onto [1 - lambda, lambda] below `tau`; 1 from `tau` on.
fn change_aware(schedule: &NoiseSchedule, lambda: f64, tau: usize) -> Vec<f64> {
    let variance: Vec<f64> = (0..schedule.steps())
        .map(|t| 1.0 - schedule.alpha_bar(t))
        .collect();
    let change = gradient(&variance);
    let (lo, hi) = change
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &c| (lo.min(c), hi.max(c)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    change
        .iter()
        .enumerate()
        .map(|(t, c)| {
            if t < tau {
                (1.0 - lambda) + (2.0 * lambda - 1.0) * (c - lo) / span
            } else {
                1.0
            }
        })
        .collect()
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

    #[test]
    fn speed_change_aware_weights_follow_the_noise_variance_below_tau() {
        let s = NoiseSchedule::ddpm();
        let w = LossWeight::SpeedChangeAware {
            lambda: 0.6,
            tau: 700,
        };
        let table = w.table(&s, Prediction::Eps);
        assert_eq!(table.len(), 1000);
        assert!(table[700..].iter().all(|&v| v == 1.0));
        let below = &table[..700];
        assert!(below.iter().all(|&v| (0.4..=0.6).contains(&v)), "{below:?}");
        // d(1 - alpha_bar)/dt = alpha_bar_t beta_t (about) peaks in the middle of the linear
        // schedule, where the noise level changes fastest; it is the global maximum, so the
        // weight there is lambda.
        let (peak, &top) = below
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        assert!((top - 0.6).abs() < 1e-12);
        let rate = |t: usize| s.alpha_bar(t) * s.beta(t);
        let expected = (1..999)
            .max_by(|&a, &b| rate(a).total_cmp(&rate(b)))
            .unwrap();
        assert!(
            peak.abs_diff(expected) <= 2,
            "peak {peak}, expected {expected}"
        );
        assert!(below[0] < below[peak / 2] && below[peak / 2] < top);
        // The single-t lookup agrees with the table, and other predictions convert as usual.
        assert_eq!(w.weight(&s, 123, Prediction::Eps), table[123]);
        let x0 = w.weight(&s, 123, Prediction::X0);
        assert!((x0 - table[123] * s.snr(123)).abs() < 1e-9 * x0);
        // lambda = 0.5 weighs every t below tau the same.
        let flat = LossWeight::SpeedChangeAware {
            lambda: 0.5,
            tau: 700,
        }
        .table(&s, Prediction::Eps);
        assert!(flat[..700].iter().all(|&v| (v - 0.5).abs() < 1e-15));
        for (lambda, tau) in [(0.4, 700), (1.1, 700), (f64::NAN, 700), (0.6, 0)] {
            assert!(
                LossWeight::SpeedChangeAware { lambda, tau }
                    .validate()
                    .is_err()
            );
        }
    }

    #[test]
    fn gradient_matches_numpy() {
        assert_eq!(gradient(&[1.0, 2.0, 4.0, 7.0]), vec![1.0, 1.5, 2.5, 3.0]);
        assert_eq!(gradient(&[5.0]), vec![0.0]);
    }
}
