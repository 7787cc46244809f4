//! CLTS, the curriculum timestep schedule of Xu et al. 2024 (arXiv 2404.07946), in hayate's
//! parametrisation (see docs/method.md).

use super::{TimestepSampler, normalise};
use crate::NoiseSchedule;
use serde::{Deserialize, Serialize};

/// The axis on which CLTS places its Gaussian band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CurriculumAxis {
    /// t / T, as the paper's reviewers describe it (mu = 0.3 means t = 0.3 T).
    #[default]
    #[serde(rename = "t_over_T")]
    TOverT,
    /// The noise rate 1 - alpha_bar_t, the paper's "explicit indicator of learning difficulty".
    NoiseRate,
}

/// p_k(t) = (1 - lambda_k) / T + lambda_k g(t) / sum g, with g(t) = N(u_t; mu, sigma^2) and
/// lambda_k = lambda_max min(1, k / ramp_steps): training starts uniform and moves mass from the
/// easy, high-noise end to a band around mu, keeping a uniform floor while lambda_max < 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Clts {
    /// The Gaussian band g, normalised over t.
    band: Vec<f64>,
    lambda_max: f64,
    ramp_steps: u64,
}

impl Clts {
    /// The sampler for `schedule` (parameters are validated by
    /// [`TimestepSamplerConfig::build`](super::TimestepSamplerConfig::build)).
    pub fn new(
        schedule: &NoiseSchedule,
        mu: f64,
        sigma: f64,
        lambda_max: f64,
        ramp_steps: u64,
        axis: CurriculumAxis,
    ) -> Self {
        let steps = schedule.steps();
        let position = |t: usize| match axis {
            CurriculumAxis::TOverT => t as f64 / steps as f64,
            CurriculumAxis::NoiseRate => schedule.noise_rate(t),
        };
        // Divides by sigma^2 (a third-party version multiplied by T^2 instead).
        let band = (0..steps)
            .map(|t| (-(position(t) - mu).powi(2) / (2.0 * sigma * sigma)).exp())
            .collect();
        Self {
            band: normalise(band),
            lambda_max,
            ramp_steps,
        }
    }

    /// lambda_k, clipped at lambda_max once the ramp is done.
    pub fn lambda(&self, step: u64) -> f64 {
        if self.ramp_steps == 0 {
            return self.lambda_max;
        }
        self.lambda_max * (step as f64 / self.ramp_steps as f64).min(1.0)
    }
}

impl TimestepSampler for Clts {
    fn steps(&self) -> usize {
        self.band.len()
    }

    fn probabilities(&self, step: u64, _total_steps: u64) -> Vec<f64> {
        let lambda = self.lambda(step);
        let floor = (1.0 - lambda) / self.band.len() as f64;
        self.band.iter().map(|g| floor + lambda * g).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timesteps::tests::check_histogram;

    fn clts(axis: CurriculumAxis) -> Clts {
        Clts::new(&NoiseSchedule::ddpm(), 0.3, 0.15, 0.8, 1000, axis)
    }

    fn mass(p: &[f64], range: std::ops::Range<usize>) -> f64 {
        p[range].iter().sum()
    }

    #[test]
    fn starts_uniform_and_moves_mass_from_high_t_to_the_band() {
        let s = clts(CurriculumAxis::TOverT);
        let p0 = s.probabilities(0, 5000);
        assert!(p0.iter().all(|&p| (p - 1e-3).abs() < 1e-12));
        let mut previous_high = f64::INFINITY;
        let mut previous_band = 0.0;
        for k in [0, 250, 500, 1000] {
            let p = s.probabilities(k, 5000);
            let (high, band) = (mass(&p, 700..1000), mass(&p, 250..350));
            assert!(high < previous_high || k == 0);
            assert!(band > previous_band);
            previous_high = high;
            previous_band = band;
        }
        // The band holds most of its weight near mu = 0.3 T.
        let p = s.probabilities(1000, 5000);
        let argmax = (0..1000).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        assert!((295..=305).contains(&argmax), "{argmax}");
    }

    #[test]
    fn weights_sum_to_one_stay_positive_and_lambda_is_clipped_past_the_ramp() {
        for axis in [CurriculumAxis::TOverT, CurriculumAxis::NoiseRate] {
            let s = clts(axis);
            for k in [0, 1, 500, 1000, 1001, 100_000] {
                let p = s.probabilities(k, 5000);
                assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                assert!(p.iter().all(|&x| x > 0.0), "k={k}");
            }
            assert_eq!(s.lambda(100_000), 0.8);
            assert_eq!(s.probabilities(1000, 1), s.probabilities(50_000, 1));
        }
        let instant = Clts::new(
            &NoiseSchedule::ddpm(),
            0.3,
            0.1,
            0.5,
            0,
            CurriculumAxis::TOverT,
        );
        assert_eq!(instant.lambda(0), 0.5);
    }

    #[test]
    fn the_noise_rate_axis_centres_the_band_where_one_minus_alpha_bar_is_mu() {
        let schedule = NoiseSchedule::ddpm();
        let p = clts(CurriculumAxis::NoiseRate).probabilities(1000, 1);
        let argmax = (0..1000).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        assert!((schedule.noise_rate(argmax) - 0.3).abs() < 0.01);
        // On the linear schedule the noise rate reaches 0.3 long before t = 0.3 T.
        assert!(argmax < 200, "{argmax}");
    }

    #[test]
    fn draws_follow_p_k() {
        let s = clts(CurriculumAxis::TOverT);
        for k in [0, 500, 2000] {
            check_histogram(&s, k, 5000);
        }
    }
}
