//! Samplers that concentrate t with a bell curve on a transformed axis: logit-normal over t/T
//! (SD3), log-normal over the noise level sigma_t (EDM) and Laplace over the log-SNR (Hang et al.
//! 2024).

use super::{Tabulated, normalise};
use crate::NoiseSchedule;

/// The standard normal CDF, by the Abramowitz & Stegun 7.1.26 erf approximation (absolute
/// error below 1.5e-7: ample for sampling weights).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// Probabilities of the bins of a monotone axis `values` (one per t) under N(mean, std^2).
fn binned_normal(values: &[f64], mean: f64, std: f64) -> Vec<f64> {
    binned(values, |x| normal_cdf((x - mean) / std))
}

/// Probabilities of the bins of a monotone axis `values` (one per t) under the distribution with
/// CDF `cdf`: each t owns the interval between the midpoints to its neighbours, the two ends
/// reach to infinity.
fn binned(values: &[f64], cdf: impl Fn(f64) -> f64) -> Vec<f64> {
    let n = values.len();
    let decreasing = values[n - 1] < values[0];
    let mut sorted = values.to_vec();
    if decreasing {
        sorted.reverse();
    }
    let mut p: Vec<f64> = (0..n)
        .map(|i| {
            let lo = if i == 0 {
                f64::NEG_INFINITY
            } else {
                0.5 * (sorted[i - 1] + sorted[i])
            };
            let hi = if i + 1 == n {
                f64::INFINITY
            } else {
                0.5 * (sorted[i] + sorted[i + 1])
            };
            // A floor keeps every t reachable even far in the tails.
            (cdf(hi) - cdf(lo)).max(1e-300)
        })
        .collect();
    if decreasing {
        p.reverse();
    }
    normalise(p)
}

/// Logit-normal over t/T: t/T = sigmoid(n), n ~ N(mean, std^2), binned over the `steps`
/// timesteps.
pub fn logit_normal(steps: usize, mean: f64, std: f64) -> Tabulated {
    let logits: Vec<f64> = (0..steps)
        .map(|t| {
            let u = (t as f64 + 0.5) / steps as f64;
            (u / (1.0 - u)).ln()
        })
        .collect();
    Tabulated(binned_normal(&logits, mean, std))
}

/// EDM's log-normal noise-level distribution mapped onto the discrete schedule: t's probability
/// is the mass of ln sigma ~ N(p_mean, p_std^2) that falls nearest to ln sigma_t.
pub fn log_normal(schedule: &NoiseSchedule, p_mean: f64, p_std: f64) -> Tabulated {
    let log_sigma: Vec<f64> = (0..schedule.steps())
        .map(|t| -0.5 * schedule.snr(t).ln())
        .collect();
    Tabulated(binned_normal(&log_sigma, p_mean, p_std))
}

/// The Laplace log-SNR distribution of Hang et al. 2024 ("Improved Noise Schedule for Diffusion
/// Training", arXiv 2407.03297): lambda = ln SNR ~ Laplace(mu, b), density e^(-|lambda - mu| / b)
/// / 2b, which puts its mass around SNR = e^mu (their best: mu = 0, b = 0.5), mapped onto the
/// discrete schedule as [`log_normal`] is: t's probability is the mass nearest to ln SNR_t.
pub fn laplace(schedule: &NoiseSchedule, mu: f64, b: f64) -> Tabulated {
    let log_snr: Vec<f64> = (0..schedule.steps())
        .map(|t| schedule.snr(t).ln())
        .collect();
    Tabulated(binned(&log_snr, |x| {
        let z = (x - mu) / b;
        if z < 0.0 {
            0.5 * z.exp()
        } else {
            1.0 - 0.5 * (-z).exp()
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timesteps::TimestepSampler;
    use crate::timesteps::tests::check_histogram;

    #[test]
    fn normal_cdf_matches_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.0) - 0.841_344_746).abs() < 2e-7);
        assert!((normal_cdf(-1.96) - 0.024_997_895).abs() < 2e-7);
    }

    #[test]
    fn laplace_puts_half_its_mass_each_side_of_mu_and_falls_off_exponentially() {
        let schedule = NoiseSchedule::ddpm();
        let (mu, b) = (0.0, 0.5);
        let s = laplace(&schedule, mu, b);
        let p = s.probabilities(0, 1);
        let mass = |pred: &dyn Fn(f64) -> bool| -> f64 {
            (0..1000)
                .filter(|&t| pred(schedule.snr(t).ln()))
                .map(|t| p[t])
                .sum()
        };
        // Laplace(0, 0.5): P(lambda > 0) = 1/2, P(lambda > 1) = e^-2 / 2 = 0.0677,
        // P(|lambda| < 0.5) = 1 - e^-1 = 0.632; up to the binning (ln SNR moves by ~0.01 a step
        // there).
        assert!((mass(&|l| l > 0.0) - 0.5).abs() < 0.01);
        assert!((mass(&|l| l > 1.0) - 0.0677).abs() < 0.005);
        assert!((mass(&|l| l.abs() < 0.5) - 0.632).abs() < 0.01);
        // A larger mu moves the mass toward high SNR (small t).
        let shifted = laplace(&schedule, 2.0, b).probabilities(0, 1);
        let mean_t = |q: &[f64]| q.iter().enumerate().map(|(t, w)| t as f64 * w).sum::<f64>();
        assert!(mean_t(&shifted) < mean_t(&p) - 50.0);
        check_histogram(&s, 0, 1);
    }

    #[test]
    fn logit_normal_is_symmetric_about_the_middle_and_draws_follow_it() {
        let s = logit_normal(1000, 0.0, 1.0);
        let p = s.probabilities(0, 1);
        let worst = (0..500)
            .map(|t| (p[t] - p[999 - t]).abs())
            .fold(0.0, f64::max);
        // Symmetric up to the erf approximation, which is 1e-9 off at 0.
        assert!(worst < 1e-8, "asymmetry {worst}");
        assert!(p[500] > 10.0 * p[10]);
        check_histogram(&s, 0, 1);
    }

    #[test]
    fn log_normal_puts_its_mass_where_ln_sigma_is_near_p_mean() {
        let schedule = NoiseSchedule::ddpm();
        let s = log_normal(&schedule, -1.2, 1.2);
        let p = s.probabilities(0, 1);
        // Half the mass lies below the t whose ln sigma_t is p_mean.
        let mut cumulative = 0.0;
        let median = (0..1000)
            .find(|&t| {
                cumulative += p[t];
                cumulative >= 0.5
            })
            .unwrap();
        let log_sigma = -0.5 * schedule.snr(median).ln();
        assert!(
            (log_sigma + 1.2).abs() < 0.05,
            "median t {median}, ln sigma {log_sigma}"
        );
        // About 16% of the mass lies above ln sigma = p_mean + p_std.
        let above: f64 = (0..1000)
            .filter(|&t| -0.5 * schedule.snr(t).ln() > 0.0)
            .map(|t| p[t])
            .sum();
        assert!((above - 0.1587).abs() < 0.01, "{above}");
        check_histogram(&s, 0, 1);
    }
}
