//! SpeeD's asymmetric timestep sampling (Wang et al. 2024, "A Closer Look at Time Steps is
//! Worthy of Triple Speed-Up for Diffusion Model Training").

use super::{TimestepSampler, normalise};

/// p(t) proportional to k for t < tau and to 1 for t >= tau: the easy, near-converged high-noise
/// steps are drawn k times less often.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// T.
    pub steps: usize,
    /// The boundary timestep.
    pub tau: usize,
    /// The over-sampling factor below tau.
    pub k: f64,
}

impl TimestepSampler for Speed {
    fn steps(&self) -> usize {
        self.steps
    }

    fn probabilities(&self, _step: u64, _total_steps: u64) -> Vec<f64> {
        normalise(
            (0..self.steps)
                .map(|t| if t < self.tau { self.k } else { 1.0 })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timesteps::tests::check_histogram;

    #[test]
    fn below_tau_is_k_times_as_likely_and_draws_follow_it() {
        let s = Speed {
            steps: 1000,
            tau: 700,
            k: 5.0,
        };
        let p = s.probabilities(0, 1);
        assert!((p[0] / p[999] - 5.0).abs() < 1e-12);
        assert!((p[699] / p[700] - 5.0).abs() < 1e-12);
        // 700 * 5 / (700 * 5 + 300) of the mass lies below tau.
        let below: f64 = p[..700].iter().sum();
        assert!((below - 3500.0 / 3800.0).abs() < 1e-12);
        check_histogram(&s, 0, 1);
    }
}
