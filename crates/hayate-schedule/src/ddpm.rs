//! DDPM ancestral sampling (Ho et al. 2020): every step t = T-1..0, drawing from the model's
//! estimate of q(x_{t-1} | x_t, x_0).

use crate::sampler::{Sampler, x0_and_eps};
use crate::{NoiseSchedule, Prediction};
use serde::{Deserialize, Serialize};

/// The variance of each reverse step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosteriorVariance {
    /// beta_t: DDPM's "fixedlarge", its choice for CIFAR-10.
    #[default]
    FixedLarge,
    /// The true posterior variance beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t):
    /// "fixedsmall".
    FixedSmall,
}

/// The DDPM ancestral sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ddpm {
    /// Variance of each reverse step.
    pub variance: PosteriorVariance,
    /// Clip the predicted x_0 to [-1, 1] (DDPM's `clip_denoised`).
    pub clip_x0: bool,
}

impl Sampler for Ddpm {
    fn timesteps(&self, schedule: &NoiseSchedule) -> Vec<usize> {
        (0..schedule.steps()).rev().collect()
    }

    fn noise_std(&self, schedule: &NoiseSchedule, t: usize, t_prev: Option<usize>) -> f64 {
        if t_prev.is_none() {
            return 0.0;
        }
        match self.variance {
            PosteriorVariance::FixedLarge => schedule.beta(t).sqrt(),
            PosteriorVariance::FixedSmall => schedule.posterior_variance(t).sqrt(),
        }
    }

    fn step(
        &self,
        schedule: &NoiseSchedule,
        prediction: Prediction,
        t: usize,
        t_prev: Option<usize>,
        x_t: f64,
        out: f64,
        z: f64,
    ) -> f64 {
        let (x0, _) = x0_and_eps(schedule, prediction, t, x_t, out, self.clip_x0);
        let (c0, ct) = schedule.posterior_mean_coefficients(t);
        c0 * x0 + ct * x_t + self.noise_std(schedule, t, t_prev) * z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_on_known_inputs_matches_the_posterior_formula() {
        let s = NoiseSchedule::ddpm();
        let sampler = Ddpm {
            variance: PosteriorVariance::FixedSmall,
            clip_x0: false,
        };
        let (t, x_t, eps, z) = (487, 0.7, -0.3, 0.5);
        let ab = s.alpha_bar(t);
        let x0 = (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt();
        // mu = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t), DDPM's eq. 11.
        let mu = (x_t - s.beta(t) / (1.0 - ab).sqrt() * eps) / s.alpha(t).sqrt();
        let expected = mu + s.posterior_variance(t).sqrt() * z;
        let got = sampler.step(&s, Prediction::Eps, t, Some(t - 1), x_t, eps, z);
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        // And the mean is c0 x0 + ct x_t.
        let (c0, ct) = s.posterior_mean_coefficients(t);
        assert!((c0 * x0 + ct * x_t - mu).abs() < 1e-12);
    }

    #[test]
    fn the_last_step_adds_no_noise_and_returns_the_clipped_x0() {
        let s = NoiseSchedule::ddpm();
        let sampler = Ddpm {
            variance: PosteriorVariance::FixedLarge,
            clip_x0: true,
        };
        assert_eq!(sampler.noise_std(&s, 0, None), 0.0);
        // At t = 0 the posterior mean is x_0 itself, and a wild prediction is clipped.
        let got = sampler.step(&s, Prediction::X0, 0, None, 0.2, 3.0, 10.0);
        assert!((got - 1.0).abs() < 1e-12, "{got}");
    }
}
