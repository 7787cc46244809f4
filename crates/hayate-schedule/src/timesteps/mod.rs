//! Timestep samplers: the one place where training draws t.
//!
//! Each sampler knows its p_k(t) over t = 0..T-1 at training step k, and draws from it with an
//! explicit generator. Build one from a [`TimestepSamplerConfig`].

mod adaptive;
mod clts;
mod lognormal;
mod speed;

pub use adaptive::{Adaptive, AdaptiveSignal, AdaptiveState, BandStats, PendingStep};
pub use clts::{Clts, CurriculumAxis};
pub use lognormal::{laplace, log_normal, logit_normal};
pub use speed::speed;

use crate::{NoiseSchedule, ScheduleError};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Draws training timesteps t in 0..T, given how far training has come.
///
/// Every training step draws its t through this trait, from an explicit generator, so that the
/// curriculum samplers can depend on the step `k` and a resumed run continues the same sequence.
pub trait TimestepSampler: Send + Sync {
    /// Number of timesteps T.
    fn steps(&self) -> usize;

    /// p_k(t) for t = 0..T-1 at training step `step` of `total_steps`; sums to 1.
    fn probabilities(&self, step: u64, total_steps: u64) -> Vec<f64>;

    /// Draws `n` timesteps in 0..T at training step `step` of `total_steps`, by inverting the
    /// cumulative distribution of [`probabilities`](Self::probabilities).
    fn sample(
        &self,
        step: u64,
        total_steps: u64,
        n: usize,
        rng: &mut dyn rand::RngCore,
    ) -> Vec<usize> {
        draw(&self.probabilities(step, total_steps), n, rng)
    }
}

/// Draws `n` timesteps from the distribution `p` over 0..p.len() by inverting its cumulative
/// distribution: one uniform draw each.
pub fn draw(p: &[f64], n: usize, rng: &mut dyn rand::RngCore) -> Vec<usize> {
    let cdf: Vec<f64> = p
        .iter()
        .scan(0.0, |acc, x| {
            *acc += x;
            Some(*acc)
        })
        .collect();
    let total = cdf[cdf.len() - 1];
    (0..n)
        .map(|_| {
            let u = rng.random::<f64>() * total;
            cdf.partition_point(|&c| c <= u).min(p.len() - 1)
        })
        .collect()
}

/// Scales non-negative weights to sum to 1.
pub(crate) fn normalise(weights: Vec<f64>) -> Vec<f64> {
    let sum: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / sum).collect()
}

/// t uniform over 0..T, as in DDPM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uniform {
    /// T.
    pub steps: usize,
}

impl TimestepSampler for Uniform {
    fn steps(&self) -> usize {
        self.steps
    }

    fn probabilities(&self, _step: u64, _total_steps: u64) -> Vec<f64> {
        vec![1.0 / self.steps as f64; self.steps]
    }

    fn sample(&self, _: u64, _: u64, n: usize, rng: &mut dyn rand::RngCore) -> Vec<usize> {
        (0..n).map(|_| rng.random_range(0..self.steps)).collect()
    }
}

/// A sampler whose p(t) does not change during training, held as a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Tabulated(pub Vec<f64>);

impl TimestepSampler for Tabulated {
    fn steps(&self) -> usize {
        self.0.len()
    }

    fn probabilities(&self, _step: u64, _total_steps: u64) -> Vec<f64> {
        self.0.clone()
    }
}

/// Which timestep sampler a run uses, and its parameters (the `timestep_sampler` table of a
/// config).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimestepSamplerConfig {
    /// Uniform over 0..T (DDPM).
    #[default]
    Uniform,
    /// The CLTS curriculum (Xu et al. 2024): see [`Clts`].
    Clts {
        /// Centre of the Gaussian band on the curriculum axis (the paper's best: 0.3).
        mu: f64,
        /// Width of the band on the same axis.
        sigma: f64,
        /// Final weight of the band against the uniform floor, in [0, 1].
        lambda_max: f64,
        /// Steps over which the band's weight ramps up linearly from 0 (0: at once).
        ramp_steps: u64,
        /// What the band is placed on: t/T, or the noise rate 1 - alpha_bar_t.
        #[serde(default)]
        axis: CurriculumAxis,
    },
    /// Logit-normal over t/T (SD3): t/T = sigmoid(n), n ~ N(mean, std^2).
    LogitNormal {
        /// Mean of n.
        mean: f64,
        /// Standard deviation of n.
        std: f64,
    },
    /// EDM's log-normal over the noise level: ln sigma_t ~ N(p_mean, p_std^2), with
    /// sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t).
    LogNormal {
        /// EDM's P_mean (-1.2).
        p_mean: f64,
        /// EDM's P_std (1.2).
        p_std: f64,
    },
    /// The Laplace log-SNR distribution (Hang et al. 2024): ln SNR_t ~ Laplace(mu, b).
    Laplace {
        /// Centre, in ln SNR (theirs: 0, SNR = 1).
        mu: f64,
        /// Scale (theirs: 0.5).
        b: f64,
    },
    /// SpeeD's asymmetric sampling (Wang et al. 2024): t below `tau` is drawn `k` times as often
    /// as t at or above it.
    Speed {
        /// The boundary timestep (SpeeD: 700 of 1000).
        tau: usize,
        /// How much more often t below tau is drawn (SpeeD: 5).
        k: f64,
    },
    /// An adaptive curriculum (see [`Adaptive`]): p(t) starts uniform and is updated every
    /// `update_every` steps from a signal measured per band of t.
    Adaptive {
        /// The signal: `loss_second_moment` or `learning_progress`.
        signal: AdaptiveSignal,
        /// Bands of equal width over 0..T.
        bands: usize,
        /// The uniform part of p(t), in (0, 1].
        floor: f64,
        /// Steps between updates.
        update_every: u64,
        /// Decay of the slow running means per update, in [0, 1).
        smoothing: f64,
        /// Weight each sample's loss by 1 / (T p(t)), so the objective stays the uniform one
        /// and only its variance changes (iDDPM's importance sampling).
        #[serde(default)]
        importance_weights: bool,
    },
}

impl TimestepSamplerConfig {
    /// The adaptive curriculum of this config for `schedule`, if it is one (unvalidated: see
    /// [`build`](Self::build)).
    pub fn adaptive(&self, schedule: &NoiseSchedule) -> Option<Adaptive> {
        match *self {
            Self::Adaptive {
                signal,
                bands,
                floor,
                update_every,
                smoothing,
                ..
            } => Some(Adaptive {
                steps: schedule.steps(),
                signal,
                bands,
                floor,
                update_every,
                smoothing,
            }),
            _ => None,
        }
    }

    /// Whether each loss is weighted by 1 / (T p(t)) (adaptive curricula that ask for it).
    pub fn importance_weights(&self) -> bool {
        matches!(
            self,
            Self::Adaptive {
                importance_weights: true,
                ..
            }
        )
    }

    /// Builds the sampler for `schedule`, checking every parameter. An adaptive curriculum's
    /// sampler is its starting distribution, the uniform one; the trainer draws from its state.
    pub fn build(
        &self,
        schedule: &NoiseSchedule,
    ) -> Result<Box<dyn TimestepSampler>, ScheduleError> {
        let steps = schedule.steps();
        let err = |m: String| Err(ScheduleError(format!("timestep_sampler: {m}")));
        Ok(match *self {
            Self::Uniform => Box::new(Uniform { steps }),
            Self::Clts {
                mu,
                sigma,
                lambda_max,
                ramp_steps,
                axis,
            } => {
                if !(0.0..=1.0).contains(&mu) {
                    return err(format!("clts mu must be in [0, 1], got {mu}"));
                }
                if !(sigma > 0.0 && sigma.is_finite()) {
                    return err(format!("clts sigma must be positive, got {sigma}"));
                }
                if !(0.0..=1.0).contains(&lambda_max) {
                    return err(format!(
                        "clts lambda_max must be in [0, 1], got {lambda_max}"
                    ));
                }
                Box::new(Clts::new(schedule, mu, sigma, lambda_max, ramp_steps, axis))
            }
            Self::LogitNormal { mean, std } => {
                if !(std > 0.0 && std.is_finite() && mean.is_finite()) {
                    return err(format!(
                        "logit_normal needs a finite mean and std > 0, got {mean}, {std}"
                    ));
                }
                Box::new(logit_normal(steps, mean, std))
            }
            Self::LogNormal { p_mean, p_std } => {
                if !(p_std > 0.0 && p_std.is_finite() && p_mean.is_finite()) {
                    return err(format!(
                        "log_normal needs a finite p_mean and p_std > 0, got {p_mean}, {p_std}"
                    ));
                }
                Box::new(log_normal(schedule, p_mean, p_std))
            }
            Self::Laplace { mu, b } => {
                if !(b > 0.0 && b.is_finite() && mu.is_finite()) {
                    return err(format!(
                        "laplace needs a finite mu and b > 0, got {mu}, {b}"
                    ));
                }
                Box::new(laplace(schedule, mu, b))
            }
            Self::Speed { tau, k } => {
                if tau == 0 || tau >= steps {
                    return err(format!("speed tau must be in 1..{steps}, got {tau}"));
                }
                if !(k > 0.0 && k.is_finite()) {
                    return err(format!("speed k must be positive, got {k}"));
                }
                Box::new(speed(steps, tau, k))
            }
            Self::Adaptive {
                bands,
                floor,
                update_every,
                smoothing,
                ..
            } => {
                if bands == 0 || bands > steps {
                    return err(format!(
                        "adaptive bands must be in 1..={steps}, got {bands}"
                    ));
                }
                if !(floor > 0.0 && floor <= 1.0) {
                    return err(format!(
                        "adaptive floor must be in (0, 1] (a band with no mass would never be \
                         measured again), got {floor}"
                    ));
                }
                if update_every == 0 {
                    return err("adaptive update_every must be at least 1".into());
                }
                if !(0.0..1.0).contains(&smoothing) {
                    return err(format!(
                        "adaptive smoothing must be in [0, 1), got {smoothing}"
                    ));
                }
                Box::new(Uniform { steps })
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::HostRng;
    use rand::SeedableRng;

    /// Total-variation distance between the empirical histogram of `draws` and `p`.
    pub(crate) fn total_variation(draws: &[usize], p: &[f64]) -> f64 {
        let mut counts = vec![0usize; p.len()];
        for &t in draws {
            counts[t] += 1;
        }
        let n = draws.len() as f64;
        0.5 * counts
            .iter()
            .zip(p)
            .map(|(&c, &q)| (c as f64 / n - q).abs())
            .sum::<f64>()
    }

    /// Draws 200,000 timesteps at `step` and checks the histogram against p_k (with 1000 bins
    /// the expected TV of an exact sampler is about 0.028) and that p_k is a distribution.
    pub(crate) fn check_histogram(sampler: &dyn TimestepSampler, step: u64, total: u64) {
        let p = sampler.probabilities(step, total);
        assert_eq!(p.len(), sampler.steps());
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(p.iter().all(|&x| x > 0.0), "every t keeps some mass");
        let mut rng = HostRng::seed_from_u64(step + 1);
        let draws = sampler.sample(step, total, 200_000, &mut rng);
        let tv = total_variation(&draws, &p);
        assert!(tv < 0.04, "total variation {tv}");
    }

    #[test]
    fn uniform_histogram_matches_its_probabilities() {
        check_histogram(&Uniform { steps: 1000 }, 0, 10);
        // And the test can fail: uniform draws are far from a skewed distribution.
        let mut rng = HostRng::seed_from_u64(1);
        let draws = Uniform { steps: 50 }.sample(0, 1, 100_000, &mut rng);
        let ramp = normalise((1..=50).map(|t| t as f64).collect());
        assert!(total_variation(&draws, &ramp) > 0.1);
    }

    #[test]
    fn configs_are_validated() {
        let s = NoiseSchedule::ddpm();
        let bad = [
            TimestepSamplerConfig::Clts {
                mu: 1.5,
                sigma: 0.1,
                lambda_max: 0.5,
                ramp_steps: 10,
                axis: CurriculumAxis::TOverT,
            },
            TimestepSamplerConfig::Clts {
                mu: 0.3,
                sigma: 0.0,
                lambda_max: 0.5,
                ramp_steps: 10,
                axis: CurriculumAxis::TOverT,
            },
            TimestepSamplerConfig::Clts {
                mu: 0.3,
                sigma: 0.1,
                lambda_max: 1.5,
                ramp_steps: 10,
                axis: CurriculumAxis::TOverT,
            },
            TimestepSamplerConfig::LogitNormal {
                mean: 0.0,
                std: -1.0,
            },
            TimestepSamplerConfig::LogNormal {
                p_mean: -1.2,
                p_std: 0.0,
            },
            TimestepSamplerConfig::Laplace { mu: 0.0, b: 0.0 },
            TimestepSamplerConfig::Laplace {
                mu: f64::NAN,
                b: 0.5,
            },
            TimestepSamplerConfig::Speed { tau: 1000, k: 5.0 },
            TimestepSamplerConfig::Speed { tau: 700, k: 0.0 },
            adaptive(0, 0.1, 50, 0.9),
            adaptive(1001, 0.1, 50, 0.9),
            adaptive(10, 0.0, 50, 0.9),
            adaptive(10, 1.5, 50, 0.9),
            adaptive(10, 0.1, 0, 0.9),
            adaptive(10, 0.1, 50, 1.0),
        ];
        for config in bad {
            let msg = config.build(&s).err().expect("rejected").to_string();
            assert!(msg.contains("timestep_sampler"), "{msg}");
        }
        assert!(TimestepSamplerConfig::Uniform.build(&s).is_ok());
        let laplace = TimestepSamplerConfig::Laplace { mu: 0.0, b: 0.5 };
        assert!(laplace.build(&s).is_ok());
        let good = adaptive(20, 0.25, 50, 0.9);
        assert!(good.build(&s).is_ok());
        assert_eq!(good.adaptive(&s).map(|a| a.bands), Some(20));
        assert_eq!(laplace.adaptive(&s), None);
    }

    fn adaptive(
        bands: usize,
        floor: f64,
        update_every: u64,
        smoothing: f64,
    ) -> TimestepSamplerConfig {
        TimestepSamplerConfig::Adaptive {
            signal: AdaptiveSignal::LearningProgress,
            bands,
            floor,
            update_every,
            smoothing,
            importance_weights: false,
        }
    }
}
