//! DDIM sampling (Song et al. 2021): any number of steps, with `eta` from deterministic (0) to
//! DDPM-like (1).

use crate::sampler::{Sampler, trailing_timesteps, x0_and_eps};
use crate::{NoiseSchedule, Prediction};
use serde::{Deserialize, Serialize};

/// The DDIM sampler over `steps` evenly spaced timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ddim {
    /// Number of reverse steps (1..=T).
    pub steps: usize,
    /// Stochasticity: 0 is the deterministic DDIM, 1 matches the DDPM posterior variance.
    pub eta: f64,
    /// Clip the predicted x_0 to [-1, 1].
    pub clip_x0: bool,
}

impl Ddim {
    /// DDIM over `steps` timesteps with stochasticity `eta`, clipping the predicted x_0 as
    /// every hayate sampler does: the one constructor grids, `hayate sample`, FID and the
    /// benchmarks build their sampler with.
    pub fn new(steps: usize, eta: f64) -> Self {
        Self {
            steps,
            eta,
            clip_x0: true,
        }
    }

    fn alpha_bar_prev(schedule: &NoiseSchedule, t_prev: Option<usize>) -> f64 {
        t_prev.map_or(1.0, |p| schedule.alpha_bar(p))
    }
}

impl Sampler for Ddim {
    fn timesteps(&self, schedule: &NoiseSchedule) -> Vec<usize> {
        trailing_timesteps(schedule, self.steps)
    }

    fn noise_std(&self, schedule: &NoiseSchedule, t: usize, t_prev: Option<usize>) -> f64 {
        let ab = schedule.alpha_bar(t);
        let ab_prev = Self::alpha_bar_prev(schedule, t_prev);
        self.eta * ((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)).sqrt()
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
        let (x0, eps) = x0_and_eps(schedule, prediction, t, x_t, out, self.clip_x0);
        let ab_prev = Self::alpha_bar_prev(schedule, t_prev);
        let sigma = self.noise_std(schedule, t, t_prev);
        let direction = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
        ab_prev.sqrt() * x0 + direction * eps + sigma * z
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddpm::{Ddpm, PosteriorVariance};
    use crate::{Denoiser, HostRng};
    use rand::SeedableRng;

    /// A deterministic stand-in for a network: a smooth function of x and t.
    fn toy_model() -> impl Denoiser {
        |x: &[f32], t: &[f64]| {
            let per = x.len() / t.len();
            x.iter()
                .enumerate()
                .map(|(i, &v)| 0.5 * v + 0.001 * t[i / per] as f32 - 0.1)
                .collect()
        }
    }

    #[test]
    fn timesteps_cover_the_range_evenly() {
        let s = NoiseSchedule::ddpm();
        let ts = Ddim {
            steps: 50,
            eta: 0.0,
            clip_x0: true,
        }
        .timesteps(&s);
        assert_eq!(ts.len(), 50);
        assert_eq!(ts[0], 999);
        assert_eq!(ts[49], 19);
        assert!(ts.windows(2).all(|w| w[0] - w[1] == 20));
        let all = Ddim {
            steps: 1000,
            eta: 0.0,
            clip_x0: true,
        }
        .timesteps(&s);
        assert_eq!(all, (0..1000).rev().collect::<Vec<_>>());
    }

    #[test]
    fn full_ddim_with_eta_one_is_ddpm_with_the_posterior_variance() {
        let s = NoiseSchedule::ddpm();
        let ddim = Ddim {
            steps: 1000,
            eta: 1.0,
            clip_x0: true,
        };
        let ddpm = Ddpm {
            variance: PosteriorVariance::FixedSmall,
            clip_x0: true,
        };
        for t in 1..1000 {
            let a = ddim.noise_std(&s, t, Some(t - 1)).powi(2);
            let b = s.posterior_variance(t);
            assert!((a - b).abs() <= 1e-12 * b.max(1e-12), "t={t}: {a} vs {b}");
        }
        let n = 4;
        let start: Vec<f32> = {
            let mut rng = HostRng::seed_from_u64(3);
            let mut v = vec![0f32; n * 12];
            crate::fill_standard_normal(&mut rng, &mut v);
            v
        };
        let run = |sampler: &dyn Sampler| {
            let mut rng = HostRng::seed_from_u64(9);
            sampler.sample(
                &s,
                Prediction::Eps,
                &mut toy_model(),
                start.clone(),
                n,
                &mut rng,
            )
        };
        let (a, b) = (run(&ddim), run(&ddpm));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-4,
            "DDIM(eta=1, all steps) and DDPM differ by {worst}"
        );
    }

    #[test]
    fn deterministic_ddim_ignores_the_noise_and_inverts_a_perfect_model() {
        let s = NoiseSchedule::ddpm();
        let ddim = Ddim {
            steps: 20,
            eta: 0.0,
            clip_x0: false,
        };
        assert_eq!(ddim.noise_std(&s, 500, Some(450)), 0.0);
        // A model that knows x_0 = 0.25 everywhere recovers it from any noise in any step count.
        let target = 0.25f64;
        let mut oracle = |x: &[f32], t: &[f64]| -> Vec<f32> {
            let ab = s.alpha_bar_at(t[0]);
            x.iter()
                .map(|&v| ((v as f64 - ab.sqrt() * target) / (1.0 - ab).sqrt()) as f32)
                .collect()
        };
        let mut rng = HostRng::seed_from_u64(5);
        let out = ddim.sample(
            &s,
            Prediction::Eps,
            &mut oracle,
            vec![1.3, -0.7, 0.1],
            1,
            &mut rng,
        );
        assert!(
            out.iter().all(|&v| (v as f64 - target).abs() < 1e-3),
            "{out:?}"
        );
    }
}
