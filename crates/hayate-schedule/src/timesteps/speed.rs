//! SpeeD's asymmetric timestep sampling (Wang et al. 2024, "A Closer Look at Time Steps is
//! Worthy of Triple Speed-Up for Diffusion Model Training").

use super::{Tabulated, normalise};

/// p(t) proportional to k for t < tau and to 1 for t >= tau: the easy, near-converged high-noise
/// steps are drawn k times less often.
pub fn speed(steps: usize, tau: usize, k: f64) -> Tabulated {
    Tabulated(normalise(
        (0..steps).map(|t| if t < tau { k } else { 1.0 }).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timesteps::TimestepSampler;
    use crate::timesteps::tests::check_histogram;

    #[test]
    fn below_tau_is_k_times_as_likely_and_draws_follow_it() {
        let s = speed(1000, 700, 5.0);
        let p = s.probabilities(0, 1);
        assert!((p[0] / p[999] - 5.0).abs() < 1e-12);
        assert!((p[699] / p[700] - 5.0).abs() < 1e-12);
        // 700 * 5 / (700 * 5 + 300) of the mass lies below tau.
        let below: f64 = p[..700].iter().sum();
        assert!((below - 3500.0 / 3800.0).abs() < 1e-12);
        check_histogram(&s, 0, 1);
    }
}
