//! Euler and Heun solvers of the diffusion ODE on the Karras sigma grid (Karras et al. 2022,
//! "Elucidating the Design Space of Diffusion-Based Generative Models", arXiv 2206.00364, Algorithm
//! 1 without churn).
//!
//! They step in the variance-exploding view of the schedule, s = x_t / sqrt(alpha_bar_t) =
//! x_0 + sigma eps with sigma = sqrt((1 - alpha_bar) / alpha_bar), along dx/dsigma = (s - x_0) /
//! sigma, over sigmas spaced evenly in sigma^(1/7) from the schedule's largest to its smallest and
//! then 0. Heun corrects each Euler step with the slope at its end (second order, two network
//! evaluations a step), except the last, whose end is sigma = 0. The same algorithms as diffusers'
//! `EulerDiscreteScheduler` and `HeunDiscreteScheduler` with `use_karras_sigmas=True` and
//! `timestep_spacing="linspace"` (tested against their numbers): the network sees the real
//! timestep of each sigma (interpolated in ln sigma) and the input s / sqrt(1 + sigma^2), which is
//! the VP image x_t at that noise level, so a network trained on whole timesteps needs nothing
//! new.

use crate::sampler::{Sampler, predict_at, x0_and_eps_at};
use crate::{Denoiser, NoiseSchedule, Prediction};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Karras et al.'s rho: the grid is even in sigma^(1 / rho), dense at low noise.
pub const RHO: f64 = 7.0;

/// An Euler or Heun solver over `steps` Karras sigmas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Karras {
    /// Sigmas on the grid before the final 0 (1..=T): Euler's network evaluations; Heun takes
    /// 2 steps - 1.
    pub steps: usize,
    /// Heun's second-order correction (else Euler).
    pub heun: bool,
    /// Clip the predicted x_0 to [-1, 1] (every hayate sampler does; diffusers does not).
    pub clip_x0: bool,
}

impl Karras {
    /// Euler over `steps` sigmas, clipping x_0 as hayate's other samplers do.
    pub fn euler(steps: usize) -> Self {
        Self {
            steps,
            heun: false,
            clip_x0: true,
        }
    }

    /// Heun over `steps` sigmas (2 steps - 1 network evaluations), clipping x_0.
    pub fn heun(steps: usize) -> Self {
        Self {
            heun: true,
            ..Self::euler(steps)
        }
    }

    /// The grid: `steps` sigmas from sigma_{T-1} down to sigma_0, even in sigma^(1/rho), then 0.
    pub fn sigmas(&self, schedule: &NoiseSchedule) -> Vec<f64> {
        let steps = self.steps.clamp(1, schedule.steps());
        let (max, min) = (
            schedule.sigma(schedule.steps() - 1).powf(1.0 / RHO),
            schedule.sigma(0).powf(1.0 / RHO),
        );
        let mut sigmas: Vec<f64> = (0..steps)
            .map(|i| {
                let ramp = if steps == 1 {
                    0.0
                } else {
                    i as f64 / (steps - 1) as f64
                };
                (max + ramp * (min - max)).powf(RHO)
            })
            .collect();
        sigmas.push(0.0);
        sigmas
    }

    /// The sigma of every network evaluation, in order: each grid sigma but the final 0, and for
    /// Heun also the end of each step before the last (its correction).
    fn evaluation_sigmas(&self, schedule: &NoiseSchedule) -> Vec<f64> {
        let sigmas = self.sigmas(schedule);
        let mut out = Vec::new();
        for pair in sigmas.windows(2) {
            out.push(pair[0]);
            if self.heun && pair[1] > 0.0 {
                out.push(pair[1]);
            }
        }
        out
    }

    /// The real timestep of every network evaluation, in order (what the network is given).
    pub fn evaluation_times(&self, schedule: &NoiseSchedule) -> Vec<f64> {
        self.evaluation_sigmas(schedule)
            .into_iter()
            .map(|sigma| schedule.timestep_of_sigma(sigma))
            .collect()
    }

    /// The network's predicted x_0 for the VE images `s` at `sigma`, with the network given the
    /// VP images s / sqrt(1 + sigma^2) at the real timestep of sigma.
    fn denoise(
        &self,
        schedule: &NoiseSchedule,
        prediction: Prediction,
        denoiser: &mut dyn Denoiser,
        s: &[f64],
        sigma: f64,
        n: usize,
    ) -> Vec<f64> {
        let scale = (1.0 + sigma * sigma).sqrt();
        let x: Vec<f32> = s.iter().map(|&v| (v / scale) as f32).collect();
        let out = predict_at(denoiser, &x, schedule.timestep_of_sigma(sigma), n);
        let ab = 1.0 / (1.0 + sigma * sigma);
        x.iter()
            .zip(&out)
            .map(|(&xv, &o)| x0_and_eps_at(prediction, ab, xv as f64, o as f64, self.clip_x0).0)
            .collect()
    }
}

impl Sampler for Karras {
    /// The evaluation times rounded to whole timesteps: one per network evaluation, for what
    /// counts them or shows them; the solver itself evaluates at the real ones.
    fn timesteps(&self, schedule: &NoiseSchedule) -> Vec<usize> {
        self.evaluation_times(schedule)
            .into_iter()
            .map(|t| t.round() as usize)
            .collect()
    }

    /// One Euler step between whole timesteps, in the VP variables: (with x_0 from `out`)
    /// s = x_t / sqrt(alpha_bar_t), s' = s + (sigma' - sigma) (s - x_0) / sigma, back by
    /// sqrt(alpha_bar_t'); x_0 itself after the last step. [`Sampler::sample`] steps over the
    /// Karras grid instead.
    fn step(
        &self,
        schedule: &NoiseSchedule,
        prediction: Prediction,
        t: usize,
        t_prev: Option<usize>,
        x_t: f64,
        out: f64,
        _z: f64,
    ) -> f64 {
        let ab = schedule.alpha_bar(t);
        let (x0, _) = x0_and_eps_at(prediction, ab, x_t, out, self.clip_x0);
        let Some(next) = t_prev else {
            return x0;
        };
        let (sigma, sigma_next) = (schedule.sigma(t), schedule.sigma(next));
        let s = x_t / ab.sqrt();
        (s + (sigma_next - sigma) * (s - x0) / sigma) * schedule.alpha_bar(next).sqrt()
    }

    fn noise_std(&self, _schedule: &NoiseSchedule, _t: usize, _t_prev: Option<usize>) -> f64 {
        0.0
    }

    /// Starts from x sqrt(1 + sigma_max^2) (the VE image of the N(0, I) start at the top of the
    /// grid; the VP image there is x itself, up to sigma_max^2 / (1 + sigma_max^2)), steps down
    /// the grid and returns the final s, which at sigma = 0 is the image. Draws no noise.
    fn sample(
        &self,
        schedule: &NoiseSchedule,
        prediction: Prediction,
        denoiser: &mut dyn Denoiser,
        x: Vec<f32>,
        n: usize,
        _rng: &mut dyn RngCore,
    ) -> Vec<f32> {
        let sigmas = self.sigmas(schedule);
        let start = (1.0 + sigmas[0] * sigmas[0]).sqrt();
        let mut s: Vec<f64> = x.iter().map(|&v| v as f64 * start).collect();
        for pair in sigmas.windows(2) {
            let (sigma, next) = (pair[0], pair[1]);
            let x0 = self.denoise(schedule, prediction, denoiser, &s, sigma, n);
            let slope: Vec<f64> = s.iter().zip(&x0).map(|(&v, &d)| (v - d) / sigma).collect();
            let dt = next - sigma;
            let euler: Vec<f64> = s.iter().zip(&slope).map(|(&v, &d)| v + d * dt).collect();
            if !self.heun || next == 0.0 {
                s = euler;
                continue;
            }
            let x0_end = self.denoise(schedule, prediction, denoiser, &euler, next, n);
            for (((v, &d), &e), &d0) in s.iter_mut().zip(&slope).zip(&euler).zip(&x0_end) {
                let d_end = (e - d0) / next;
                *v += 0.5 * (d + d_end) * dt;
            }
        }
        s.into_iter().map(|v| v as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostRng;
    use crate::sampler::goldens::{Case, cases, toy};
    use rand::SeedableRng;

    #[test]
    fn matches_diffusers_euler_and_heun_schedulers_with_karras_sigmas() {
        let schedule = NoiseSchedule::ddpm();
        let mut checked = 0;
        for (sampler, heun) in [("euler-karras", false), ("heun-karras", true)] {
            for case in cases(sampler) {
                checked += 1;
                check_karras_case(&schedule, &case, heun);
            }
        }
        assert_eq!(checked, 12, "the goldens hold 12 Karras cases");
    }

    /// One golden case: the evaluation times, every network input and the final sample.
    fn check_karras_case(schedule: &NoiseSchedule, case: &Case, heun: bool) {
        let prediction = case.prediction();
        let solver = Karras {
            steps: case.steps,
            heun,
            clip_x0: false,
        };
        let name = format!("{} {} {} steps", case.sampler, case.prediction, case.steps);
        let times = solver.evaluation_times(schedule);
        assert_eq!(times.len(), case.timesteps.len(), "{name}");
        for (a, b) in times.iter().zip(&case.timesteps) {
            // diffusers' sigmas come from an f32 cumulative product of the alphas: ln sigma
            // off by ~1e-5, which moves a timestep by up to ~5e-3.
            assert!(
                (a - b).abs() < 1e-2,
                "{name}: {times:?} vs {:?}",
                case.timesteps
            );
        }
        // diffusers records every network input (scale_model_input's output), then the final
        // sample: the same from a recording denoiser.
        let mut seen = Vec::new();
        let mut recorder = |x: &[f32], t: &[f64]| {
            seen.push(x.to_vec());
            toy(x, t)
        };
        let last = solver.sample(
            schedule,
            prediction,
            &mut recorder,
            case.start.clone(),
            1,
            &mut HostRng::seed_from_u64(0),
        );
        seen.push(last);
        assert_eq!(seen.len(), case.trajectory.len(), "{name}");
        for (i, (a, b)) in seen.iter().zip(&case.trajectory).enumerate() {
            // diffusers works in f32 (its start is off by 2e-5 already, from sigma_max); the
            // worst record, a Heun correction point after a long 5-step Euler step, is off
            // by 6e-4, the final samples by at most 3e-4.
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-3 * y.abs().max(1.0),
                    "{name}, record {i}: {a:?} vs diffusers {b:?}"
                );
            }
        }
    }

    #[test]
    fn the_grid_runs_from_the_largest_sigma_to_zero_even_in_its_seventh_root() {
        let s = NoiseSchedule::ddpm();
        let sigmas = Karras::euler(10).sigmas(&s);
        assert_eq!(sigmas.len(), 11);
        assert!((sigmas[0] - s.sigma(999)).abs() < 1e-9 * s.sigma(999));
        assert!((sigmas[9] - s.sigma(0)).abs() < 1e-12);
        assert_eq!(sigmas[10], 0.0);
        let roots: Vec<f64> = sigmas[..10].iter().map(|v| v.powf(1.0 / RHO)).collect();
        let gap = roots[0] - roots[1];
        assert!(gap > 0.0);
        assert!(roots.windows(2).all(|w| ((w[0] - w[1]) - gap).abs() < 1e-9));
        // Times: 999 first, 0 last, falling; Heun adds each step's end but the last.
        let euler = Karras::euler(10).evaluation_times(&s);
        assert!((euler[0] - 999.0).abs() < 1e-9 && euler[9].abs() < 1e-9);
        assert!(euler.windows(2).all(|w| w[0] > w[1]));
        let heun = Karras::heun(10);
        assert_eq!(heun.evaluation_times(&s).len(), 19);
        assert_eq!(heun.timesteps(&s).len(), 19);
        assert_eq!(Karras::heun(1).timesteps(&s), vec![999]);
    }

    #[test]
    fn a_perfect_model_is_inverted_and_heun_beats_euler() {
        let s = NoiseSchedule::ddpm();
        // A model that knows x_0 = 0.25 everywhere: the first step lands on it exactly.
        let target = 0.25f64;
        let mut oracle = |x: &[f32], t: &[f64]| -> Vec<f32> {
            let ab = s.alpha_bar_at(t[0]);
            x.iter()
                .map(|&v| ((v as f64 - ab.sqrt() * target) / (1.0 - ab).sqrt()) as f32)
                .collect()
        };
        let mut rng = HostRng::seed_from_u64(5);
        for solver in [Karras::euler(8), Karras::heun(8)] {
            let out = solver.sample(
                &s,
                Prediction::Eps,
                &mut oracle,
                vec![1.3, -0.7],
                1,
                &mut rng,
            );
            assert!(
                out.iter().all(|&v| (v as f64 - target).abs() < 1e-3),
                "{solver:?}: {out:?}"
            );
        }
        // On a smooth toy, against a 300-step Heun reference, Heun at 8 steps errs less than
        // Euler at 8 steps.
        let start = vec![1.3f32, -0.7, 0.1, 2.2];
        let solve = |solver: Karras| {
            let mut rng = HostRng::seed_from_u64(0);
            solver.sample(
                &s,
                Prediction::Eps,
                &mut |x: &[f32], t: &[f64]| {
                    x.iter()
                        .map(|&v| 0.3 * v + 0.0005 * t[0] as f32 - 0.05)
                        .collect::<Vec<f32>>()
                },
                start.clone(),
                1,
                &mut rng,
            )
        };
        let unclipped = |mut k: Karras| {
            k.clip_x0 = false;
            k
        };
        let reference = solve(unclipped(Karras::heun(300)));
        let err = |out: Vec<f32>| {
            out.iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let (euler, heun) = (
            err(solve(unclipped(Karras::euler(8)))),
            err(solve(unclipped(Karras::heun(8)))),
        );
        assert!(heun < euler, "Heun {heun} vs Euler {euler}");
    }

    #[test]
    fn one_euler_step_between_whole_timesteps_is_ddim_without_noise() {
        let s = NoiseSchedule::ddpm();
        let ddim = crate::ddim::Ddim {
            steps: 10,
            eta: 0.0,
            clip_x0: true,
        };
        let euler = Karras::euler(10);
        for &(t, next, x, out) in &[(999usize, 899usize, 1.3f64, 0.4f64), (300, 200, -0.2, 0.9)] {
            let a = euler.step(&s, Prediction::Eps, t, Some(next), x, out, 0.0);
            let b = ddim.step(&s, Prediction::Eps, t, Some(next), x, out, 0.0);
            assert!((a - b).abs() < 1e-9, "{t}: {a} vs {b}");
        }
    }
}
