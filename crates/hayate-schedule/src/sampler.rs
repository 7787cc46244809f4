//! The reverse-process loop shared by the one-step samplers (DDPM, DDIM), and what every sampler
//! uses: the trailing timesteps and (x_0, eps) from the network's output.

use crate::{Denoiser, NoiseSchedule, Prediction, fill_standard_normal};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The samplers that take a step count, as a config names them (`"ddim"`, `"dpmpp-2m"`,
/// `"euler-karras"`, `"heun-karras"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Solver {
    /// DDIM ([`crate::ddim::Ddim`]), stochastic with eta > 0.
    #[default]
    #[serde(rename = "ddim")]
    Ddim,
    /// DPM-Solver++(2M) ([`crate::dpm_solver::DpmSolverPp`]), deterministic.
    #[serde(rename = "dpmpp-2m")]
    DpmPp2m,
    /// Euler on the Karras sigma grid ([`crate::karras::Karras`]), deterministic.
    #[serde(rename = "euler-karras")]
    EulerKarras,
    /// Heun on the Karras sigma grid ([`crate::karras::Karras`]): two network evaluations per
    /// step but the last, deterministic.
    #[serde(rename = "heun-karras")]
    HeunKarras,
}

impl Solver {
    /// How configs and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::DpmPp2m => "dpmpp-2m",
            Self::EulerKarras => "euler-karras",
            Self::HeunKarras => "heun-karras",
        }
    }

    /// Whether it takes DDIM's eta (the others draw no noise).
    pub fn takes_eta(self) -> bool {
        matches!(self, Self::Ddim)
    }
}

/// A [`Solver`] with its settings: what a run's `[sampling]` or `[eval]` section, or the command
/// line, chooses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerSpec {
    /// Which sampler.
    pub solver: Solver,
    /// Its steps: network evaluations, but for Heun, which takes 2 steps - 1.
    pub steps: usize,
    /// DDIM's eta (the other solvers draw no noise and take none).
    pub eta: f64,
}

impl SamplerSpec {
    /// The sampler, clipping the predicted x_0 as every hayate sampler does: the one place the
    /// grids, `hayate sample`, FID and the benchmarks build theirs.
    pub fn build(&self) -> Box<dyn Sampler> {
        match self.solver {
            Solver::Ddim => Box::new(crate::ddim::Ddim::new(self.steps, self.eta)),
            Solver::DpmPp2m => Box::new(crate::dpm_solver::DpmSolverPp::new(self.steps)),
            Solver::EulerKarras => Box::new(crate::karras::Karras::euler(self.steps)),
            Solver::HeunKarras => Box::new(crate::karras::Karras::heun(self.steps)),
        }
    }
}

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
            let out = predict(denoiser, &x, t, n);
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

/// The network's output for the `n` images `x`, all at timestep `t`: one value per input value.
pub(crate) fn predict(denoiser: &mut dyn Denoiser, x: &[f32], t: usize, n: usize) -> Vec<f32> {
    predict_at(denoiser, x, t as f64, n)
}

/// [`predict`] at a real timestep.
pub(crate) fn predict_at(denoiser: &mut dyn Denoiser, x: &[f32], t: f64, n: usize) -> Vec<f32> {
    let out = denoiser.predict(x, &vec![t; n]);
    assert_eq!(
        out.len(),
        x.len(),
        "the denoiser must return one value per input value"
    );
    out
}

/// `steps` timesteps (clamped to 1..=T) evenly spaced ("trailing"), from the noisiest down: the
/// first is T-1 and the last reaches 0's neighbourhood, t_i = round((i + 1) T / S) - 1. What DDIM
/// and DPM-Solver++ visit, as diffusers' `timestep_spacing="trailing"` does.
pub(crate) fn trailing_timesteps(schedule: &NoiseSchedule, steps: usize) -> Vec<usize> {
    let total = schedule.steps();
    let steps = steps.clamp(1, total);
    let mut ts: Vec<usize> = (0..steps)
        .map(|i| (((i + 1) * total) as f64 / steps as f64).round() as usize - 1)
        .collect();
    ts.dedup();
    ts.reverse();
    ts
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
    x0_and_eps_at(prediction, schedule.alpha_bar(t), x_t, out, clip)
}

/// [`x0_and_eps`] at a noise level given by its alpha_bar (one that need not be a whole
/// timestep's).
pub(crate) fn x0_and_eps_at(
    prediction: Prediction,
    ab: f64,
    x_t: f64,
    out: f64,
    clip: bool,
) -> (f64, f64) {
    let (x0, eps) = prediction.to_x0_eps(out, x_t, ab);
    if !clip {
        return (x0, eps);
    }
    let x0 = x0.clamp(-1.0, 1.0);
    (x0, (x_t - ab.sqrt() * x0) / (1.0 - ab).sqrt())
}

/// The goldens `scripts/make_sampler_goldens.py` wrote from diffusers' schedulers, and the toy
/// network it gave them, for the solvers' tests.
#[cfg(test)]
pub(crate) mod goldens {
    use crate::Prediction;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Goldens {
        cases: Vec<Case>,
    }

    /// One scheduler run: its timesteps and what it recorded along the way.
    #[derive(Deserialize)]
    pub(crate) struct Case {
        pub sampler: String,
        pub prediction: String,
        pub steps: usize,
        pub timesteps: Vec<f64>,
        pub start: Vec<f32>,
        pub trajectory: Vec<Vec<f32>>,
    }

    impl Case {
        /// The case's prediction, as hayate names it.
        pub fn prediction(&self) -> Prediction {
            match self.prediction.as_str() {
                "epsilon" => Prediction::Eps,
                "v_prediction" => Prediction::V,
                "sample" => Prediction::X0,
                other => panic!("unknown prediction {other}"),
            }
        }
    }

    /// The cases of `sampler` (as the script names it).
    pub(crate) fn cases(sampler: &str) -> Vec<Case> {
        let goldens: Goldens =
            serde_json::from_str(include_str!("../fixtures/diffusers_samplers.json")).unwrap();
        goldens
            .cases
            .into_iter()
            .filter(|c| c.sampler == sampler)
            .collect()
    }

    /// The toy stand-in for a network that the script gives diffusers.
    pub(crate) fn toy(x: &[f32], t: &[f64]) -> Vec<f32> {
        x.iter()
            .map(|&v| 0.5 * v + 0.001 * t[0] as f32 - 0.1)
            .collect()
    }
}
