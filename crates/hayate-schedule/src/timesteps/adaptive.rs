//! An adaptive timestep curriculum: p(t) updated online from a training signal measured per band
//! of t, the direction Xu et al. 2024 point to ("design the noise-rate curriculum automatically
//! from data"); formulas in docs/method.md.
//!
//! The state is plain host data, saved in every checkpoint. Its updates are deterministic given
//! the losses: the draw of step i uses only the losses of steps up to i - 2, whatever moment the
//! trainer reads them back from the device (it reads each one step late), so a resumed run
//! continues the same sequence. Across backends the losses, and so p(t), differ in their last
//! bits.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// What the curriculum measures in each band of t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptiveSignal {
    /// The loss's second moment, as iDDPM's loss-aware resampler (Nichol & Dhariwal 2021):
    /// band mass proportional to width x sqrt(E[L^2]).
    LossSecondMoment,
    /// Learning progress: the loss's recent relative decrease in the band, the difference of a
    /// slow and a fast running mean (Graves et al. 2017's progress signal).
    LearningProgress,
}

/// The curriculum's settings (validated by
/// [`TimestepSamplerConfig::build`](super::TimestepSamplerConfig::build)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptive {
    /// T.
    pub steps: usize,
    /// The signal.
    pub signal: AdaptiveSignal,
    /// Bands of equal width over 0..T (the last takes the remainder).
    pub bands: usize,
    /// The uniform part of p(t), in [0, 1): every t keeps at least floor / T.
    pub floor: f64,
    /// Steps between updates of p(t).
    pub update_every: u64,
    /// Decay of the slow running means, per update, in [0, 1); the fast one decays as its square.
    pub smoothing: f64,
}

/// One step's draws, kept until the step's losses are folded into the band statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingStep {
    /// The step index (0 for the first step of the run).
    pub step: u64,
    /// The timesteps drawn.
    pub t: Vec<u32>,
    /// Each sample's loss, once read from the device.
    pub losses: Option<Vec<f32>>,
}

/// Running statistics of one band.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct BandStats {
    /// Slow running mean of the band's mean loss (None before its first window with a draw).
    pub slow: Option<f64>,
    /// Fast running mean of the same.
    pub fast: Option<f64>,
    /// Running mean of the band's mean squared loss.
    pub second: Option<f64>,
    /// The current window's sum of losses.
    pub sum: f64,
    /// The current window's sum of squared losses.
    pub sum_sq: f64,
    /// The current window's draws.
    pub count: u64,
}

/// Everything the curriculum has learnt: saved in checkpoints, restored on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveState {
    /// Probability of each band; sums to 1 (the floor included).
    pub band_mass: Vec<f64>,
    /// Each band's statistics.
    pub stats: Vec<BandStats>,
    /// Steps drawn whose losses are not yet folded in, oldest first.
    pub pending: VecDeque<PendingStep>,
    /// Updates of `band_mass` so far.
    pub updates: u64,
}

impl Adaptive {
    /// The band of timestep `t`.
    pub fn band_of(&self, t: usize) -> usize {
        (t * self.bands / self.steps).min(self.bands - 1)
    }

    /// The timesteps of band `b`: `start..end`.
    pub fn band_range(&self, b: usize) -> std::ops::Range<usize> {
        let start = |b: usize| (b * self.steps).div_ceil(self.bands);
        start(b)..start(b + 1).min(self.steps)
    }

    /// The state at the start of a run: uniform over t, no statistics.
    pub fn initial_state(&self) -> AdaptiveState {
        AdaptiveState {
            band_mass: (0..self.bands)
                .map(|b| self.band_range(b).len() as f64 / self.steps as f64)
                .collect(),
            stats: vec![BandStats::default(); self.bands],
            pending: VecDeque::new(),
            updates: 0,
        }
    }

    /// p(t) over 0..T: each band's mass spread evenly over its timesteps.
    pub fn probabilities(&self, state: &AdaptiveState) -> Vec<f64> {
        let mut p = vec![0.0; self.steps];
        for (b, &mass) in state.band_mass.iter().enumerate() {
            let range = self.band_range(b);
            let each = mass / range.len() as f64;
            p[range].fill(each);
        }
        p
    }

    /// Readies the state for drawing step `step`: folds in the losses of every pending step up
    /// to `step - 2` (a step whose losses never arrived counts for nothing), and at a multiple
    /// of `update_every` updates the band masses from the window just closed. Returns whether
    /// the masses were updated.
    pub fn advance(&self, state: &mut AdaptiveState, step: u64) -> bool {
        while let Some(front) = state.pending.front() {
            if front.step + 2 > step {
                break;
            }
            let done = state.pending.pop_front().expect("front exists");
            if let Some(losses) = done.losses {
                for (&t, &loss) in done.t.iter().zip(&losses) {
                    let s = &mut state.stats[self.band_of(t as usize)];
                    let loss = loss as f64;
                    s.sum += loss;
                    s.sum_sq += loss * loss;
                    s.count += 1;
                }
            }
        }
        if step == 0 || !step.is_multiple_of(self.update_every) {
            return false;
        }
        self.update(state);
        true
    }

    /// Closes the window: folds each band's window means into its running means, then sets the
    /// band masses from the signal, mixed with the uniform floor. Until every band has been
    /// measured the masses stay where they are.
    fn update(&self, state: &mut AdaptiveState) {
        let beta = self.smoothing;
        let ema = |old: Option<f64>, new: f64, decay: f64| {
            Some(old.map_or(new, |o| decay * o + (1.0 - decay) * new))
        };
        for s in &mut state.stats {
            if s.count > 0 {
                let n = s.count as f64;
                s.slow = ema(s.slow, s.sum / n, beta);
                s.fast = ema(s.fast, s.sum / n, beta * beta);
                s.second = ema(s.second, s.sum_sq / n, beta);
            }
            (s.sum, s.sum_sq, s.count) = (0.0, 0.0, 0);
        }
        state.updates += 1;
        let widths: Vec<f64> = (0..self.bands)
            .map(|b| self.band_range(b).len() as f64)
            .collect();
        let signal: Option<Vec<f64>> = state
            .stats
            .iter()
            .zip(&widths)
            .map(|(s, &w)| match self.signal {
                AdaptiveSignal::LossSecondMoment => Some(w * s.second?.max(0.0).sqrt()),
                AdaptiveSignal::LearningProgress => {
                    let (slow, fast) = (s.slow?, s.fast?);
                    Some(if slow > 0.0 {
                        w * ((slow - fast) / slow).max(0.0)
                    } else {
                        0.0
                    })
                }
            })
            .collect();
        let Some(signal) = signal else { return };
        let total: f64 = signal.iter().sum();
        let t = self.steps as f64;
        state.band_mass = signal
            .iter()
            .zip(&widths)
            .map(|(&g, &w)| {
                // No signal anywhere (nothing improving): the uniform distribution.
                let q = if total > 0.0 && total.is_finite() {
                    g / total
                } else {
                    w / t
                };
                self.floor * w / t + (1.0 - self.floor) * q
            })
            .collect();
    }

    /// Records the timesteps drawn for `step`.
    pub fn record_draws(&self, state: &mut AdaptiveState, step: u64, t: &[usize]) {
        state.pending.push_back(PendingStep {
            step,
            t: t.iter().map(|&t| t as u32).collect(),
            losses: None,
        });
    }

    /// Hands over the per-sample losses of `step` (in the order of its draws). Losses of a step
    /// that is not pending (already folded, or never drawn) are ignored.
    pub fn observe(&self, state: &mut AdaptiveState, step: u64, losses: Vec<f32>) {
        if let Some(p) = state.pending.iter_mut().find(|p| p.step == step)
            && p.t.len() == losses.len()
        {
            p.losses = Some(losses);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timesteps::Tabulated;
    use crate::timesteps::tests::check_histogram;

    fn curriculum(signal: AdaptiveSignal) -> Adaptive {
        Adaptive {
            steps: 10,
            signal,
            bands: 2,
            floor: 0.2,
            update_every: 2,
            smoothing: 0.5,
        }
    }

    /// Draws and observes steps `from..to`, the losses of a step read one step late (as the
    /// trainer does), each draw's loss given by `loss(step, t)`.
    fn run(
        c: &Adaptive,
        state: &mut AdaptiveState,
        steps: std::ops::Range<u64>,
        draws: &[usize],
        loss: impl Fn(u64, usize) -> f32,
    ) {
        for step in steps {
            c.advance(state, step);
            c.record_draws(state, step, draws);
            if step > 0 {
                let prev = draws.iter().map(|&t| loss(step - 1, t)).collect();
                c.observe(state, step - 1, prev);
            }
        }
    }

    #[test]
    fn bands_cover_every_timestep_once() {
        let c = Adaptive {
            steps: 1000,
            bands: 7,
            ..curriculum(AdaptiveSignal::LearningProgress)
        };
        let mut covered = 0;
        for b in 0..7 {
            let r = c.band_range(b);
            assert_eq!(r.start, covered);
            covered = r.end;
            assert!(r.clone().all(|t| c.band_of(t) == b), "band {b}: {r:?}");
        }
        assert_eq!(covered, 1000);
        let p = c.probabilities(&c.initial_state());
        assert!(
            p.iter().all(|&x| (x - 1e-3).abs() < 1e-15),
            "starts uniform"
        );
    }

    #[test]
    fn second_moment_masses_match_hand_computed_numbers() {
        let c = curriculum(AdaptiveSignal::LossSecondMoment);
        let mut s = c.initial_state();
        // Band 0 (t 0..5) always sees loss 3, band 1 (t 5..10) loss 1.
        let draws = [1, 7];
        let loss = |_, t: usize| if t < 5 { 3.0 } else { 1.0 };
        run(&c, &mut s, 0..2, &draws, loss);
        assert_eq!(s.updates, 0);
        // Drawing step 2 folds in step 0 only (step 1's losses are one step late) and updates.
        assert!(c.advance(&mut s, 2));
        assert_eq!(s.updates, 1);
        assert_eq!(s.stats[0].second, Some(9.0));
        // sqrt(E[L^2]) = 3 and 1 over equal widths: q = (0.75, 0.25); 0.2 x 0.5 + 0.8 q.
        assert!((s.band_mass[0] - 0.7).abs() < 1e-12, "{:?}", s.band_mass);
        assert!((s.band_mass[1] - 0.3).abs() < 1e-12);
        let p = c.probabilities(&s);
        assert!((p[0] - 0.14).abs() < 1e-12 && (p[9] - 0.06).abs() < 1e-12);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn learning_progress_follows_the_band_that_improves() {
        let c = curriculum(AdaptiveSignal::LearningProgress);
        let mut s = c.initial_state();
        // Band 1's loss halves every step; band 0's stays.
        let draws = [2, 8];
        let loss = |step: u64, t: usize| if t < 5 { 1.0 } else { 0.5f32.powi(step as i32) };
        run(&c, &mut s, 0..5, &draws, loss);
        // Updates at steps 2 and 4. First window: step 0 (band 1 loss 1), so slow = fast = 1:
        // no progress anywhere, uniform. Second window: steps 1 and 2 (0.5, 0.25), mean 0.375:
        // slow = 0.5 + 0.5 x 0.375 = 0.6875, fast = 0.25 + 0.75 x 0.375 = 0.53125,
        // progress (slow - fast) / slow = 0.2273; band 0 none: q = (0, 1).
        assert_eq!(s.updates, 2);
        assert_eq!(s.stats[1].slow, Some(0.6875));
        assert_eq!(s.stats[1].fast, Some(0.53125));
        assert!((s.band_mass[0] - 0.1).abs() < 1e-12, "{:?}", s.band_mass);
        assert!((s.band_mass[1] - 0.9).abs() < 1e-12);
        check_histogram(&Tabulated(c.probabilities(&s)), 0, 1);
    }

    #[test]
    fn masses_stay_uniform_until_every_band_is_measured_and_late_losses_count_in_order() {
        let c = curriculum(AdaptiveSignal::LossSecondMoment);
        let mut s = c.initial_state();
        run(&c, &mut s, 0..5, &[1, 2], |_, _| 2.0);
        assert_eq!(s.updates, 2);
        assert_eq!(s.band_mass, vec![0.5, 0.5], "band 1 never drawn");
        // Losses read at a different moment (all at once, at the end) give the same state, as
        // long as each arrives before the draw that needs it; the state serialises exactly.
        let mut early = c.initial_state();
        let mut late = c.initial_state();
        let loss = |step: u64, t: usize| (step as f32 + 1.0) * (t as f32 + 0.5);
        run(&c, &mut early, 0..9, &[1, 6, 7], loss);
        for step in 0..9u64 {
            c.advance(&mut late, step);
            c.record_draws(&mut late, step, &[1, 6, 7]);
            c.observe(&mut late, step, [1, 6, 7].map(|t| loss(step, t)).to_vec());
        }
        c.observe(&mut early, 8, [1, 6, 7].map(|t| loss(8, t)).to_vec());
        assert_eq!(early, late);
        assert_ne!(early.band_mass, vec![0.5, 0.5]);
        let json = serde_json::to_string(&early).unwrap();
        assert_eq!(serde_json::from_str::<AdaptiveState>(&json).unwrap(), early);
        // A step's losses of the wrong length are ignored rather than misattributed.
        c.observe(&mut late, 8, vec![1.0]);
        assert_eq!(early, late);
    }
}
