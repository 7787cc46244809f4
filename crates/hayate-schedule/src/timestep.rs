//! Timestep samplers: the one place where training draws t.

use rand::Rng;

/// Draws training timesteps t in 0..T, given how far training has come.
///
/// Every training step draws its t through this trait, from an explicit generator, so that the
/// curriculum samplers can depend on the step `k` and a resumed run continues the same sequence.
pub trait TimestepSampler: Send + Sync {
    /// p_k(t) for t = 0..T-1 at training step `step` of `total_steps`; sums to 1.
    fn probabilities(&self, steps: usize, step: u64, total_steps: u64) -> Vec<f64>;

    /// Draws `n` timesteps in 0..`steps` at training step `step` of `total_steps`.
    fn sample(
        &self,
        steps: usize,
        step: u64,
        total_steps: u64,
        n: usize,
        rng: &mut dyn rand::RngCore,
    ) -> Vec<usize> {
        let p = self.probabilities(steps, step, total_steps);
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
                cdf.partition_point(|&c| c <= u).min(steps - 1)
            })
            .collect()
    }
}

/// t uniform over 0..T, as in DDPM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uniform;

impl TimestepSampler for Uniform {
    fn probabilities(&self, steps: usize, _step: u64, _total_steps: u64) -> Vec<f64> {
        vec![1.0 / steps as f64; steps]
    }

    fn sample(
        &self,
        steps: usize,
        _step: u64,
        _total_steps: u64,
        n: usize,
        rng: &mut dyn rand::RngCore,
    ) -> Vec<usize> {
        (0..n).map(|_| rng.random_range(0..steps)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostRng;
    use rand::SeedableRng;

    /// Total-variation distance between the empirical histogram of `draws` and `p`.
    fn total_variation(draws: &[usize], p: &[f64]) -> f64 {
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

    /// A sampler that uses the trait's generic inverse-CDF draw.
    struct Ramp;
    impl TimestepSampler for Ramp {
        fn probabilities(&self, steps: usize, _: u64, _: u64) -> Vec<f64> {
            let z = (steps * (steps + 1) / 2) as f64;
            (0..steps).map(|t| (t + 1) as f64 / z).collect()
        }
    }

    #[test]
    fn uniform_histogram_matches_its_probabilities() {
        let mut rng = HostRng::seed_from_u64(1);
        let draws = Uniform.sample(100, 0, 10, 200_000, &mut rng);
        let p = Uniform.probabilities(100, 0, 10);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // With 200k draws over 100 bins the expected TV is about 0.009.
        assert!(total_variation(&draws, &p) < 0.02);
    }

    #[test]
    fn inverse_cdf_draws_follow_a_skewed_distribution() {
        let mut rng = HostRng::seed_from_u64(2);
        let draws = Ramp.sample(50, 0, 1, 200_000, &mut rng);
        let tv = total_variation(&draws, &Ramp.probabilities(50, 0, 1));
        assert!(tv < 0.015, "tv {tv}");
        assert!(draws.iter().all(|&t| t < 50));
        // And far from uniform, so the test can fail.
        assert!(total_variation(&draws, &Uniform.probabilities(50, 0, 1)) > 0.1);
    }
}
