//! Which noise draw goes with which training image.
//!
//! DDPM pairs every image with an independent draw, so each draw may diffuse toward any image.
//! Immiscible Diffusion (Li et al. 2024, arXiv 2406.12303) pairs the batch's images with the
//! batch's draws by a minimum-cost assignment on their L2 distance, which keeps each image's
//! noise near it; its KNN form (Li et al. 2025, arXiv 2505.18521) draws k candidates per image and
//! keeps the nearest, which costs no assignment. Both draw on the host from the noise stream, so
//! a seed fixes them and a resumed run continues them.

use crate::{ScheduleError, fill_standard_normal};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// How a batch's noise draws are matched to its images (a config's
/// `diffusion.noise_assignment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NoiseAssignment {
    /// One independent draw per image, in order (DDPM).
    #[default]
    Independent,
    /// The batch's draws permuted to minimise the summed L2 distance to their images.
    Immiscible,
    /// `k` draws per image, keeping the one nearest to it (k = 1 is `independent`).
    Knn {
        /// Candidates per image.
        k: usize,
    },
}

impl NoiseAssignment {
    /// The most candidates `knn` may draw per image (each costs a full draw).
    pub const MAX_K: usize = 256;

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match *self {
            Self::Knn { k } if !(1..=Self::MAX_K).contains(&k) => Err(ScheduleError(format!(
                "noise_assignment: knn k must be in 1..={}, got {k}",
                Self::MAX_K
            ))),
            _ => Ok(()),
        }
    }

    /// The noise for the images `x0` (`x0.len() / per` images of `per` values each), drawn from
    /// `rng`: `independent` draws exactly what plain sampling draws, `immiscible` the same
    /// values regrouped, `knn` k times as many.
    pub fn draw(&self, x0: &[f32], per: usize, rng: &mut dyn RngCore) -> Vec<f32> {
        let n = x0.len() / per;
        match *self {
            Self::Independent => {
                let mut eps = vec![0f32; x0.len()];
                fill_standard_normal(rng, &mut eps);
                eps
            }
            Self::Immiscible => {
                let mut eps = vec![0f32; x0.len()];
                fill_standard_normal(rng, &mut eps);
                let columns = linear_assignment(&distances(x0, &eps, per), n);
                let mut out = vec![0f32; x0.len()];
                for (i, &j) in columns.iter().enumerate() {
                    out[i * per..][..per].copy_from_slice(&eps[j * per..][..per]);
                }
                out
            }
            Self::Knn { k } => {
                let mut out = vec![0f32; x0.len()];
                let mut candidates = vec![0f32; k * per];
                for (image, dst) in x0.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
                    fill_standard_normal(rng, &mut candidates);
                    let nearest = candidates
                        .chunks_exact(per)
                        .map(|c| squared_distance(image, c))
                        .enumerate()
                        .fold(
                            (0, f64::INFINITY),
                            |best, (c, d)| {
                                if d < best.1 { (c, d) } else { best }
                            },
                        )
                        .0;
                    dst.copy_from_slice(&candidates[nearest * per..][..per]);
                }
                out
            }
        }
    }
}

/// The n x n L2 distances between the images `x0` and the draws `eps` (row i: image i), rows
/// split over the machine's threads: n^2 d multiply-adds, 3e9 for a batch of 256 at 128x128,
/// which one thread would take seconds over. Each entry is summed in order by one thread, so the
/// result does not depend on the thread count.
fn distances(x0: &[f32], eps: &[f32], per: usize) -> Vec<f64> {
    let n = x0.len() / per;
    let mut cost = vec![0f64; n * n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let rows = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (block, out) in cost.chunks_mut(rows * n).enumerate() {
            scope.spawn(move || {
                for (r, row) in out.chunks_exact_mut(n).enumerate() {
                    let image = &x0[(block * rows + r) * per..][..per];
                    for (j, d) in row.iter_mut().enumerate() {
                        *d = squared_distance(image, &eps[j * per..][..per]).sqrt();
                    }
                }
            });
        }
    });
    cost
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum()
}

/// The minimum-cost perfect matching of an `n` x `n` cost matrix (row-major): for each row, its
/// column. The Hungarian method with potentials (Kuhn-Munkres, in the O(n^3) form of Jonker and
/// Volgenant's shortest augmenting paths), so a batch of 256 takes a few milliseconds.
pub fn linear_assignment(cost: &[f64], n: usize) -> Vec<usize> {
    assert_eq!(cost.len(), n * n, "a square cost matrix");
    // 1-based with index 0 as the virtual start: u, v the potentials, row_of[j] the row matched
    // to column j, via[j] the previous column on the augmenting path.
    let (mut u, mut v) = (vec![0f64; n + 1], vec![0f64; n + 1]);
    let mut row_of = vec![0usize; n + 1];
    let mut via = vec![0usize; n + 1];
    for row in 1..=n {
        row_of[0] = row;
        let mut j0 = 0;
        let mut min_slack = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = row_of[j0];
            let (mut delta, mut j1) = (f64::INFINITY, 0);
            for j in 1..=n {
                if used[j] {
                    continue;
                }
                let slack = cost[(i0 - 1) * n + j - 1] - u[i0] - v[j];
                if slack < min_slack[j] {
                    min_slack[j] = slack;
                    via[j] = j0;
                }
                if min_slack[j] < delta {
                    delta = min_slack[j];
                    j1 = j;
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[row_of[j]] += delta;
                    v[j] -= delta;
                } else {
                    min_slack[j] -= delta;
                }
            }
            j0 = j1;
            if row_of[j0] == 0 {
                break;
            }
        }
        // Flip the augmenting path.
        while j0 != 0 {
            let j1 = via[j0];
            row_of[j0] = row_of[j1];
            j0 = j1;
        }
    }
    let mut column_of = vec![0usize; n];
    for j in 1..=n {
        column_of[row_of[j] - 1] = j - 1;
    }
    column_of
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostRng;
    use rand::{Rng, SeedableRng};

    fn total(cost: &[f64], n: usize, columns: &[usize]) -> f64 {
        columns
            .iter()
            .enumerate()
            .map(|(i, &j)| cost[i * n + j])
            .sum()
    }

    /// Every permutation of 0..n (Heap's algorithm).
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        fn heap(k: usize, p: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if k <= 1 {
                out.push(p.clone());
                return;
            }
            for i in 0..k {
                heap(k - 1, p, out);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                p.swap(j, k - 1);
            }
        }
        let mut out = Vec::new();
        heap(n, &mut (0..n).collect(), &mut out);
        out
    }

    #[test]
    fn the_assignment_is_the_cheapest_of_all_permutations() {
        let mut rng = HostRng::seed_from_u64(3);
        for n in 1..=7 {
            for _ in 0..20 {
                // Integer costs make ties common, which the method must survive too.
                let cost: Vec<f64> = (0..n * n).map(|_| rng.random_range(0..6) as f64).collect();
                let columns = linear_assignment(&cost, n);
                let mut sorted = columns.clone();
                sorted.sort();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
                let best = permutations(n)
                    .iter()
                    .map(|p| total(&cost, n, p))
                    .fold(f64::INFINITY, f64::min);
                assert_eq!(total(&cost, n, &columns), best, "n = {n}: {cost:?}");
            }
        }
        // By hand: the diagonal is dear, the anti-diagonal cheap.
        let cost = [9.0, 1.0, 9.0, 9.0, 9.0, 1.0, 1.0, 9.0, 9.0];
        assert_eq!(linear_assignment(&cost, 3), vec![1, 2, 0]);
    }

    fn images(n: usize, per: usize) -> Vec<f32> {
        let mut rng = HostRng::seed_from_u64(11);
        (0..n * per).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn paired_distance(x0: &[f32], eps: &[f32], per: usize) -> f64 {
        x0.chunks_exact(per)
            .zip(eps.chunks_exact(per))
            .map(|(a, b)| squared_distance(a, b).sqrt())
            .sum()
    }

    #[test]
    fn independent_draws_what_plain_sampling_draws() {
        let (n, per) = (4, 12);
        let x0 = images(n, per);
        let ours = NoiseAssignment::Independent.draw(&x0, per, &mut HostRng::seed_from_u64(5));
        let mut plain = vec![0f32; n * per];
        fill_standard_normal(&mut HostRng::seed_from_u64(5), &mut plain);
        assert_eq!(ours, plain);
        let knn1 = NoiseAssignment::Knn { k: 1 }.draw(&x0, per, &mut HostRng::seed_from_u64(5));
        assert_eq!(knn1, plain, "knn with k = 1 is independent");
    }

    #[test]
    fn immiscible_regroups_the_same_draws_at_the_least_total_distance() {
        let (n, per) = (6, 48);
        let x0 = images(n, per);
        let plain = NoiseAssignment::Independent.draw(&x0, per, &mut HostRng::seed_from_u64(8));
        let ours = NoiseAssignment::Immiscible.draw(&x0, per, &mut HostRng::seed_from_u64(8));
        // The same noise vectors, each whole, in another order.
        let mut a: Vec<&[f32]> = plain.chunks_exact(per).collect();
        let mut b: Vec<&[f32]> = ours.chunks_exact(per).collect();
        a.sort_by(|x, y| x.partial_cmp(y).unwrap());
        b.sort_by(|x, y| x.partial_cmp(y).unwrap());
        assert_eq!(a, b);
        // No other order of them is closer to the images.
        let ours_total = paired_distance(&x0, &ours, per);
        for p in permutations(n) {
            let regrouped: Vec<f32> = p
                .iter()
                .flat_map(|&j| plain[j * per..][..per].iter().copied())
                .collect();
            assert!(ours_total <= paired_distance(&x0, &regrouped, per) + 1e-9);
        }
        assert!(ours_total < paired_distance(&x0, &plain, per));
    }

    #[test]
    fn the_threaded_distance_matrix_is_every_pair_in_order() {
        // 37 images: rows do not split evenly over any thread count above 1.
        let (n, per) = (37, 10);
        let x0 = images(n, per);
        let mut eps = vec![0f32; n * per];
        fill_standard_normal(&mut HostRng::seed_from_u64(4), &mut eps);
        let cost = distances(&x0, &eps, per);
        for i in 0..n {
            for j in 0..n {
                let direct = squared_distance(&x0[i * per..][..per], &eps[j * per..][..per]).sqrt();
                assert_eq!(cost[i * n + j], direct, "({i}, {j})");
            }
        }
    }

    #[test]
    fn knn_keeps_the_nearest_of_k_candidates() {
        let (n, per, k) = (5, 20, 4);
        let x0 = images(n, per);
        let ours = NoiseAssignment::Knn { k }.draw(&x0, per, &mut HostRng::seed_from_u64(2));
        let mut all = vec![0f32; n * k * per];
        fill_standard_normal(&mut HostRng::seed_from_u64(2), &mut all);
        for i in 0..n {
            let image = &x0[i * per..][..per];
            let candidates: Vec<&[f32]> = all[i * k * per..][..k * per].chunks_exact(per).collect();
            let chosen = &ours[i * per..][..per];
            assert!(
                candidates.contains(&chosen),
                "image {i}: not one of its candidates"
            );
            let d = squared_distance(image, chosen);
            assert!(candidates.iter().all(|c| d <= squared_distance(image, c)));
        }
        assert_eq!(
            ours,
            NoiseAssignment::Knn { k }.draw(&x0, per, &mut HostRng::seed_from_u64(2)),
            "reproducible"
        );
    }

    #[test]
    fn bad_k_is_refused() {
        for k in [0, NoiseAssignment::MAX_K + 1] {
            let e = NoiseAssignment::Knn { k }
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains("knn k"), "{e}");
        }
        assert!(NoiseAssignment::Knn { k: 8 }.validate().is_ok());
        assert!(NoiseAssignment::Immiscible.validate().is_ok());
    }
}
