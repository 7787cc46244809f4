//! DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095): a deterministic multistep solver of the
//! diffusion ODE in the data-prediction form, second order from the x_0 predictions of the
//! current and the previous step, so 15-25 network evaluations give what DDIM needs far more
//! for. The same algorithm as diffusers' `DPMSolverMultistepScheduler` with `solver_order=2`,
//! `algorithm_type="dpmsolver++"`, `solver_type="midpoint"`, `final_sigmas_type="zero"` and
//! `lower_order_final=True` (tested against its numbers): first order at the first step (no
//! history yet) and at the last, whose target is sigma = 0, the predicted x_0 itself.

use crate::sampler::{Sampler, predict, trailing_timesteps, x0_and_eps};
use crate::{Denoiser, NoiseSchedule, Prediction};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// DPM-Solver++(2M) over `steps` evenly spaced ("trailing") timesteps, as [`crate::ddim::Ddim`]
/// visits them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpmSolverPp {
    /// Number of steps, each one network evaluation (1..=T).
    pub steps: usize,
    /// Clip the predicted x_0 to [-1, 1] (every hayate sampler does; diffusers does not).
    pub clip_x0: bool,
}

impl DpmSolverPp {
    /// DPM-Solver++(2M) over `steps` timesteps, clipping the predicted x_0 as hayate's other
    /// samplers do.
    pub fn new(steps: usize) -> Self {
        Self {
            steps,
            clip_x0: true,
        }
    }
}

/// alpha_t = sqrt(alpha_bar), sigma_t = sqrt(1 - alpha_bar) and lambda_t = ln(alpha_t / sigma_t),
/// the half log-SNR the solver steps in.
fn coefficients(schedule: &NoiseSchedule, t: usize) -> (f64, f64, f64) {
    let ab = schedule.alpha_bar(t);
    let (alpha, sigma) = (ab.sqrt(), (1.0 - ab).sqrt());
    (alpha, sigma, (alpha / sigma).ln())
}

impl Sampler for DpmSolverPp {
    fn timesteps(&self, schedule: &NoiseSchedule) -> Vec<usize> {
        trailing_timesteps(schedule, self.steps)
    }

    /// The solver's first-order step (DDIM's, eta 0), which is what it takes without a previous
    /// prediction; [`Sampler::sample`] takes the second-order steps in between.
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
        let (x0, _) = x0_and_eps(schedule, prediction, t, x_t, out, self.clip_x0);
        let Some(next) = t_prev else {
            return x0;
        };
        let (_, sigma_s, lambda_s) = coefficients(schedule, t);
        let (alpha_t, sigma_t, lambda_t) = coefficients(schedule, next);
        let h = lambda_t - lambda_s;
        sigma_t / sigma_s * x_t - alpha_t * (-h).exp_m1() * x0
    }

    fn noise_std(&self, _schedule: &NoiseSchedule, _t: usize, _t_prev: Option<usize>) -> f64 {
        0.0
    }

    /// The multistep solver: at each step the x_0 predicted there (D0) and its change since the
    /// previous step, scaled by the ratio of the two steps in lambda (D1 = (D0 - D0_prev) / r),
    /// give x_next = (sigma_next / sigma) x - alpha_next (e^-h - 1) (D0 + D1 / 2). Draws no noise.
    fn sample(
        &self,
        schedule: &NoiseSchedule,
        prediction: Prediction,
        denoiser: &mut dyn Denoiser,
        mut x: Vec<f32>,
        n: usize,
        _rng: &mut dyn RngCore,
    ) -> Vec<f32> {
        let steps = self.timesteps(schedule);
        // The previous step's x_0 predictions and its step size in lambda.
        let mut previous: Option<(Vec<f64>, f64)> = None;
        for (i, &t) in steps.iter().enumerate() {
            let out = predict(denoiser, &x, t, n);
            let x0: Vec<f64> = x
                .iter()
                .zip(&out)
                .map(|(&xv, &o)| {
                    x0_and_eps(schedule, prediction, t, xv as f64, o as f64, self.clip_x0).0
                })
                .collect();
            let Some(&next) = steps.get(i + 1) else {
                // The last step lands on sigma = 0: the predicted x_0.
                return x0.iter().map(|&v| v as f32).collect();
            };
            let (_, sigma_s, lambda_s) = coefficients(schedule, t);
            let (alpha_t, sigma_t, lambda_t) = coefficients(schedule, next);
            let h = lambda_t - lambda_s;
            let (decay, gain) = (sigma_t / sigma_s, -alpha_t * (-h).exp_m1());
            match &previous {
                Some((x0_prev, h_prev)) => {
                    let r = h_prev / h;
                    for ((xv, &d0), &d0_prev) in x.iter_mut().zip(&x0).zip(x0_prev) {
                        let d1 = (d0 - d0_prev) / r;
                        *xv = (decay * *xv as f64 + gain * (d0 + 0.5 * d1)) as f32;
                    }
                }
                None => {
                    for (xv, &d0) in x.iter_mut().zip(&x0) {
                        *xv = (decay * *xv as f64 + gain * d0) as f32;
                    }
                }
            }
            previous = Some((x0, h));
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostRng;
    use crate::sampler::goldens::{cases, toy};
    use rand::SeedableRng;

    /// Runs the first `k` steps of `solver` by sampling with a schedule whose timesteps stop
    /// there: the trajectory after each step, from one full run.
    fn trajectory(solver: &DpmSolverPp, prediction: Prediction, start: &[f32]) -> Vec<Vec<f32>> {
        let schedule = NoiseSchedule::ddpm();
        let mut seen = Vec::new();
        let mut recorder = |x: &[f32], t: &[f64]| {
            seen.push(x.to_vec());
            toy(x, t)
        };
        let last = solver.sample(
            &schedule,
            prediction,
            &mut recorder,
            start.to_vec(),
            1,
            &mut HostRng::seed_from_u64(0),
        );
        // The inputs of steps 2.. are the outputs of steps 1..; then the final output.
        seen.remove(0);
        seen.push(last);
        seen
    }

    #[test]
    fn matches_diffusers_dpm_solver_multistep_scheduler() {
        let cases = cases("dpm-solver++(2m)");
        assert_eq!(cases.len(), 6);
        for case in cases {
            let prediction = case.prediction();
            let solver = DpmSolverPp {
                steps: case.steps,
                clip_x0: false,
            };
            let timesteps: Vec<f64> = solver
                .timesteps(&NoiseSchedule::ddpm())
                .into_iter()
                .map(|t| t as f64)
                .collect();
            assert_eq!(timesteps, case.timesteps);
            let ours = trajectory(&solver, prediction, &case.start);
            assert_eq!(ours.len(), case.trajectory.len());
            for (step, (a, b)) in ours.iter().zip(&case.trajectory).enumerate() {
                for (x, y) in a.iter().zip(b) {
                    // diffusers computes in f32 (its alpha_bar is an f32 cumulative product).
                    assert!(
                        (x - y).abs() <= 2e-4 * y.abs().max(1.0),
                        "{} with {} steps, after step {}: {a:?} vs diffusers {b:?}",
                        case.prediction,
                        case.steps,
                        step + 1
                    );
                }
            }
        }
    }

    #[test]
    fn the_multistep_correction_matters_and_a_perfect_model_is_inverted() {
        let s = NoiseSchedule::ddpm();
        let start = vec![1.3f32, -0.7, 0.1];
        let solver = DpmSolverPp::new(10);
        // With one-step (DDIM-like) updates only, the same toy gives another trajectory.
        let first_order_only = {
            let ts = solver.timesteps(&s);
            let mut x: Vec<f64> = start.iter().map(|&v| v as f64).collect();
            for (i, &t) in ts.iter().enumerate() {
                let xs: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let out = toy(&xs, &[t as f64]);
                for (xv, &o) in x.iter_mut().zip(&out) {
                    *xv = solver.step(
                        &s,
                        Prediction::Eps,
                        t,
                        ts.get(i + 1).copied(),
                        *xv,
                        o as f64,
                        0.0,
                    );
                }
            }
            x
        };
        let mut rng = HostRng::seed_from_u64(1);
        let full = solver.sample(&s, Prediction::Eps, &mut toy, start.clone(), 1, &mut rng);
        let gap = full
            .iter()
            .zip(&first_order_only)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(gap > 1e-3, "second order changed nothing ({gap})");
        // A model that knows x_0 = 0.25 everywhere: every D0 is 0.25, so the solver lands on it.
        let target = 0.25f64;
        let mut oracle = |x: &[f32], t: &[f64]| -> Vec<f32> {
            let ab = s.alpha_bar_at(t[0]);
            x.iter()
                .map(|&v| ((v as f64 - ab.sqrt() * target) / (1.0 - ab).sqrt()) as f32)
                .collect()
        };
        let out = solver.sample(&s, Prediction::Eps, &mut oracle, start, 1, &mut rng);
        assert!(
            out.iter().all(|&v| (v as f64 - target).abs() < 1e-4),
            "{out:?}"
        );
    }
}
