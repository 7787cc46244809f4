//! Noise schedules (beta_t) and the forward-process coefficients derived from them.

use serde::{Deserialize, Serialize};

/// How beta_t is laid out over the `T` steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BetaSchedule {
    /// Ho et al. 2020: beta rises linearly from `beta_start` to `beta_end`.
    Linear {
        /// beta_0 (DDPM: 1e-4).
        beta_start: f64,
        /// beta_{T-1} (DDPM: 0.02).
        beta_end: f64,
    },
    /// Nichol & Dhariwal 2021: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas capped
    /// at 0.999.
    Cosine {
        /// The offset `s` (0.008 in the paper) that keeps beta_0 from being too small.
        s: f64,
    },
}

impl Default for BetaSchedule {
    fn default() -> Self {
        Self::Linear {
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }
}

/// A schedule that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid noise schedule: {0}")]
pub struct ScheduleError(pub String);

/// beta_t and alpha_bar_t for t = 0..T-1, held in f64, with the coefficients that the forward
/// process, the losses and the samplers read from them.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alpha_bars: Vec<f64>,
}

impl NoiseSchedule {
    /// The most steps a schedule may have (DDPM uses 1000; beyond this the tables only cost
    /// memory).
    pub const MAX_STEPS: usize = 100_000;

    /// Builds `steps` (T) betas of the given kind.
    pub fn new(kind: BetaSchedule, steps: usize) -> Result<Self, ScheduleError> {
        if !(2..=Self::MAX_STEPS).contains(&steps) {
            return Err(ScheduleError(format!(
                "needs 2 to {} steps, got {steps}",
                Self::MAX_STEPS
            )));
        }
        let betas: Vec<f64> = match kind {
            BetaSchedule::Linear {
                beta_start,
                beta_end,
            } => {
                let valid = |b: f64| b > 0.0 && b < 1.0;
                if !valid(beta_start) || !valid(beta_end) || beta_start > beta_end {
                    return Err(ScheduleError(format!(
                        "linear betas need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}"
                    )));
                }
                let span = (steps - 1) as f64;
                (0..steps)
                    .map(|i| beta_start + (beta_end - beta_start) * i as f64 / span)
                    .collect()
            }
            BetaSchedule::Cosine { s } => {
                if !(s > 0.0 && s < 1.0) {
                    return Err(ScheduleError(format!(
                        "cosine offset s must be in (0, 1), got {s}"
                    )));
                }
                let f = |t: f64| {
                    ((t + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                let n = steps as f64;
                (0..steps)
                    .map(|i| (1.0 - f((i + 1) as f64 / n) / f(i as f64 / n)).min(0.999))
                    .collect()
            }
        };
        let alpha_bars = betas
            .iter()
            .scan(1.0, |acc, b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        Ok(Self { betas, alpha_bars })
    }

    /// The DDPM schedule: linear betas from 1e-4 to 0.02 over 1000 steps.
    pub fn ddpm() -> Self {
        Self::new(BetaSchedule::default(), 1000).expect("the DDPM schedule is valid")
    }

    /// Number of steps T.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// beta_t.
    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t]
    }

    /// alpha_t = 1 - beta_t.
    pub fn alpha(&self, t: usize) -> f64 {
        1.0 - self.betas[t]
    }

    /// alpha_bar_t = prod_{s <= t} (1 - beta_s).
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alpha_bars[t]
    }

    /// alpha_bar_{t-1}, with alpha_bar_{-1} = 1 (the clean image).
    pub fn alpha_bar_prev(&self, t: usize) -> f64 {
        if t == 0 { 1.0 } else { self.alpha_bars[t - 1] }
    }

    /// The forward process's coefficients at t: x_t = a x_0 + b eps with
    /// (a, b) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)).
    pub fn forward_coefficients(&self, t: usize) -> (f64, f64) {
        let ab = self.alpha_bars[t];
        (ab.sqrt(), (1.0 - ab).sqrt())
    }

    /// Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t).
    pub fn snr(&self, t: usize) -> f64 {
        let ab = self.alpha_bars[t];
        ab / (1.0 - ab)
    }

    /// The noise level of the variance-exploding view, sigma_t = sqrt((1 - alpha_bar_t) /
    /// alpha_bar_t): x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps. What the Karras-grid solvers
    /// step in ([`crate::karras`]).
    pub fn sigma(&self, t: usize) -> f64 {
        let ab = self.alpha_bars[t];
        ((1.0 - ab) / ab).sqrt()
    }

    /// sigma at a real timestep in [0, T - 1], interpolated linearly in ln sigma between the two
    /// whole timesteps around it: the inverse of [`Self::timestep_of_sigma`].
    pub fn sigma_at(&self, t: f64) -> f64 {
        let last = self.steps() - 1;
        let t = t.clamp(0.0, last as f64);
        let low = (t.floor() as usize).min(last - 1);
        let w = t - low as f64;
        ((1.0 - w) * self.sigma(low).ln() + w * self.sigma(low + 1).ln()).exp()
    }

    /// alpha_bar at a real timestep, 1 / (1 + sigma_at(t)^2): alpha_bar_t itself at whole ones.
    pub fn alpha_bar_at(&self, t: f64) -> f64 {
        1.0 / (1.0 + self.sigma_at(t).powi(2))
    }

    /// The real timestep whose sigma is `sigma`, interpolating ln sigma between whole timesteps
    /// and clamped to [0, T - 1] outside the table: what diffusers' `_sigma_to_t` gives, so a
    /// network sees the timesteps it sees there.
    pub fn timestep_of_sigma(&self, sigma: f64) -> f64 {
        let ln = sigma.max(1e-10).ln();
        let last = self.steps() - 1;
        // The last whole timestep at or below ln sigma (sigma rises with t).
        let low = (0..=last)
            .rev()
            .find(|&t| self.sigma(t).ln() <= ln)
            .unwrap_or(0)
            .min(last - 1);
        let (lo, hi) = (self.sigma(low).ln(), self.sigma(low + 1).ln());
        let w = ((lo - ln) / (lo - hi)).clamp(0.0, 1.0);
        low as f64 + w
    }

    /// Noise rate 1 - alpha_bar_t, in (0, 1).
    pub fn noise_rate(&self, t: usize) -> f64 {
        1.0 - self.alpha_bars[t]
    }

    /// Variance of the true posterior q(x_{t-1} | x_t, x_0):
    /// beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).
    pub fn posterior_variance(&self, t: usize) -> f64 {
        self.betas[t] * (1.0 - self.alpha_bar_prev(t)) / (1.0 - self.alpha_bars[t])
    }

    /// Coefficients (c0, ct) of the posterior mean c0 x_0 + ct x_t.
    pub fn posterior_mean_coefficients(&self, t: usize) -> (f64, f64) {
        let ab = self.alpha_bars[t];
        let ab_prev = self.alpha_bar_prev(t);
        (
            self.betas[t] * ab_prev.sqrt() / (1.0 - ab),
            (1.0 - ab_prev) * self.alpha(t).sqrt() / (1.0 - ab),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn linear_schedule_golden_values() {
        let s = NoiseSchedule::ddpm();
        assert_eq!(s.steps(), 1000);
        assert!(close(s.beta(0), 1e-4, 1e-12));
        assert!(close(s.beta(999), 0.02, 1e-12));
        // Reference values from an independent float64 Python computation of the same formulas.
        assert!(close(s.alpha_bar(0), 0.9999, 1e-12));
        assert!(
            close(s.alpha_bar(499), 0.078_587_242_881_778_21, 1e-9),
            "{}",
            s.alpha_bar(499)
        );
        assert!(
            close(s.alpha_bar(999), 4.035_829_765_375_675_4e-5, 1e-9),
            "{}",
            s.alpha_bar(999)
        );
        // diffusers' DDPM scheduler test pins this variance at 0.00979 (t = 487).
        assert!(
            close(s.posterior_variance(487), 0.009_791_571_985_690_04, 1e-9),
            "{}",
            s.posterior_variance(487)
        );
    }

    #[test]
    fn cosine_schedule_golden_values() {
        let s = NoiseSchedule::new(BetaSchedule::Cosine { s: 0.008 }, 1000).unwrap();
        // Reference values from improved-diffusion's betas_for_alpha_bar, recomputed in float64 Python.
        assert!(
            close(s.beta(0), 4.128_422_482_196_914e-5, 1e-9),
            "{}",
            s.beta(0)
        );
        assert!(
            close(s.alpha_bar(499), 0.493_843_590_440_638_2, 1e-9),
            "{}",
            s.alpha_bar(499)
        );
        assert!(close(s.beta(999), 0.999, 1e-12));
        // Not the 999 zeros an integer division would give.
        assert!((1..999).all(|t| s.beta(t) > 0.0));
    }

    #[test]
    fn alpha_bar_is_decreasing_and_inside_the_unit_interval() {
        for kind in [BetaSchedule::default(), BetaSchedule::Cosine { s: 0.008 }] {
            let s = NoiseSchedule::new(kind, 1000).unwrap();
            for t in 0..s.steps() {
                let ab = s.alpha_bar(t);
                assert!(ab > 0.0 && ab < 1.0, "{kind:?} t={t} alpha_bar={ab}");
                if t > 0 {
                    assert!(ab < s.alpha_bar(t - 1));
                }
                let (a, b) = s.forward_coefficients(t);
                assert!(close(a * a + b * b, 1.0, 1e-12));
                assert!(s.posterior_variance(t) <= s.beta(t) + 1e-15);
            }
        }
    }

    #[test]
    fn sigma_and_real_timesteps_invert_each_other() {
        for kind in [BetaSchedule::default(), BetaSchedule::Cosine { s: 0.008 }] {
            let s = NoiseSchedule::new(kind, 1000).unwrap();
            // sigma_999 of the DDPM schedule, by hand: sqrt((1 - ab) / ab) with ab = 4.0358e-5.
            if kind == BetaSchedule::default() {
                assert!(
                    close(s.sigma(999), 157.407_280_810_4, 1e-9),
                    "{}",
                    s.sigma(999)
                );
            }
            for t in [0usize, 1, 17, 500, 998, 999] {
                assert!(close(s.sigma_at(t as f64), s.sigma(t), 1e-12));
                assert!(close(s.alpha_bar_at(t as f64), s.alpha_bar(t), 1e-9));
                assert!(
                    (s.timestep_of_sigma(s.sigma(t)) - t as f64).abs() < 1e-9,
                    "{t}"
                );
            }
            for t in [0.25f64, 3.5, 411.8, 998.99] {
                let sigma = s.sigma_at(t);
                assert!(sigma > s.sigma(t.floor() as usize) && sigma < s.sigma(t.ceil() as usize));
                assert!((s.timestep_of_sigma(sigma) - t).abs() < 1e-9, "{t}");
            }
            // Outside the table: clamped to the ends.
            assert_eq!(s.timestep_of_sigma(1e-6), 0.0);
            assert_eq!(s.timestep_of_sigma(1e6), 999.0);
        }
    }

    #[test]
    fn bad_schedules_are_rejected() {
        let linear = |a, b| BetaSchedule::Linear {
            beta_start: a,
            beta_end: b,
        };
        assert!(NoiseSchedule::new(linear(0.0, 0.02), 1000).is_err());
        assert!(NoiseSchedule::new(linear(0.02, 1e-4), 1000).is_err());
        assert!(NoiseSchedule::new(linear(1e-4, 1.0), 1000).is_err());
        assert!(NoiseSchedule::new(BetaSchedule::Cosine { s: -1.0 }, 1000).is_err());
        assert!(NoiseSchedule::new(BetaSchedule::default(), 1).is_err());
    }
}
