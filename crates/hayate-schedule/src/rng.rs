//! The host-side generator every random draw in hayate comes from.

use rand::Rng;

/// The generator type behind every stream: ChaCha8, portable, seedable, and serialisable, so a
/// checkpoint can store its exact position.
pub type HostRng = rand_chacha::ChaCha8Rng;

/// One draw from N(0, 1) by the Box-Muller transform, in f64.
///
/// Written out rather than taken from a distributions crate so the sequence is fixed by this
/// code alone, whatever crate versions a build resolves.
pub fn standard_normal(rng: &mut (impl Rng + ?Sized)) -> f64 {
    // 1 - u maps [0, 1) to (0, 1], keeping ln() finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Fills `out` with independent N(0, 1) draws.
pub fn fill_standard_normal(rng: &mut (impl Rng + ?Sized), out: &mut [f32]) {
    for v in out {
        *v = standard_normal(rng) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn normal_draws_have_unit_moments_and_are_reproducible() {
        let mut rng = HostRng::seed_from_u64(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| standard_normal(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
        let mut again = HostRng::seed_from_u64(7);
        assert_eq!(standard_normal(&mut again), xs[0]);
    }
}
