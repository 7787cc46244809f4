//! The reverse-process loop shared by the DDPM and DDIM samplers.

use crate::{Denoiser, NoiseSchedule, Prediction, fill_standard_normal};
use rand::RngCore;

/// A reverse-process sampler: which timesteps it visits, and how it steps between them.
pub trait Sampler {
    /// The timesteps visited, from the noisiest down.
    fn timesteps(&self, schedule: &NoiseSchedule) -> Vec<usize>;

    /// One reverse step of a single element from timestep `t` to `t_prev` (`None` after the last
    /// step), given the network's output `out` and the noise draw `z` (0 where the step adds
    /// none). Returns x_{t_prev}.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        schedule: &NoiseSchedule,
        prediction: Prediction,
        t: usize,
        t_prev: Option<usize>,
        x_t: f64,
        out: f64,
        z: f64,
    ) -> f64;

    /// Standard deviation of the noise the step from `t` to `t_prev` adds.
    fn noise_std(&self, schedule: &NoiseSchedule, t: usize, t_prev: Option<usize>) -> f64;

    /// Runs the reverse process from `x_t` (`n` images laid out one after another, usually
    /// N(0, I) noise) down to x_0. Noise for each step comes from `rng`, one standard normal per
    /// element, drawn only on steps that add noise, so two samplers that add noise on the same
    /// steps see the same draws.
    fn sample(
        &self,
        schedule: &NoiseSchedule,
        prediction: Prediction,
        denoiser: &mut dyn Denoiser,
        mut x: Vec<f32>,
        n: usize,
        rng: &mut dyn RngCore,
    ) -> Vec<f32> {
        let steps = self.timesteps(schedule);
        let mut z = vec![0f32; x.len()];
        for (i, &t) in steps.iter().enumerate() {
            let t_prev = steps.get(i + 1).copied();
            let out = denoiser.predict(&x, &vec![t; n]);
            assert_eq!(
                out.len(),
                x.len(),
                "the denoiser must return one value per input value"
            );
            if self.noise_std(schedule, t, t_prev) > 0.0 {
                fill_standard_normal(rng, &mut z);
            } else {
                z.fill(0.0);
            }
            for ((xv, &o), &zv) in x.iter_mut().zip(&out).zip(&z) {
                *xv = self.step(
                    schedule, prediction, t, t_prev, *xv as f64, o as f64, zv as f64,
                ) as f32;
            }
        }
        x
    }
}

/// (x_0, eps) from the network output at `t`, with x_0 clipped to [-1, 1] when `clip` is set and
/// eps recomputed from the clipped x_0 so the two stay consistent.
pub(crate) fn x0_and_eps(
    schedule: &NoiseSchedule,
    prediction: Prediction,
    t: usize,
    x_t: f64,
    out: f64,
    clip: bool,
) -> (f64, f64) {
    let ab = schedule.alpha_bar(t);
    let (x0, eps) = prediction.to_x0_eps(out, x_t, ab);
    if !clip {
        return (x0, eps);
    }
    let x0 = x0.clamp(-1.0, 1.0);
    (x0, (x_t - ab.sqrt() * x0) / (1.0 - ab).sqrt())
}
