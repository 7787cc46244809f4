//! The consistency phenomenon (Xu et al. 2024): two diffusion models given the same starting
//! noise and the same per-step noise produce nearly the same images, and their predictions of
//! x_0 agree most at high noise. This module measures that agreement, in pixels and, as the
//! reproducibility score of Zhang et al. (ICML 2024), in a feature network's space.

use crate::fid::{FeatureExtractor, features_of, quantize};
use crate::plot::{Chart, Series};
use crate::sample::{
    NetworkDenoiser, TrainedModel, batch_seed, generate_with, save_grid_with_columns,
};
use anyhow::{Result, ensure};
use hayate_schedule::{Denoiser, NoiseSchedule, Prediction, Sampler};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How close two sets of images are, pair by pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// 1 - normalised MSE: the pairs' mean squared difference over twice the pooled per-pixel
    /// variance of both sets, so identical pairs score 1 and independent draws from one
    /// distribution score about 0.
    pub agreement: f64,
    /// Mean PSNR of the pairs in dB, for images in [-1, 1] (peak-to-peak 2), capped at 100.
    pub psnr: f64,
}

/// The agreement of pairs (`a[i]`, `b[i]`) of images of `per` values each.
pub fn agreement(a: &[f32], b: &[f32], per: usize) -> Agreement {
    let mut sums = AgreementSums::new(per);
    sums.add(a, b);
    sums.finish()
}

/// [`Agreement`] gathered a batch of pairs at a time, in memory of one image: per-pixel sums
/// for the pooled variance, and the pairs' squared differences and PSNRs.
#[derive(Debug, Clone)]
pub struct AgreementSums {
    per: usize,
    pairs: usize,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    mse: f64,
    psnr: f64,
}

impl AgreementSums {
    /// No pairs yet, of images of `per` values.
    pub fn new(per: usize) -> Self {
        Self {
            per,
            pairs: 0,
            sum: vec![0.0; per],
            sum_sq: vec![0.0; per],
            mse: 0.0,
            psnr: 0.0,
        }
    }

    /// Adds the pairs (`a[i]`, `b[i]`).
    pub fn add(&mut self, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "paired sets must have the same size");
        let per = self.per;
        for img in a.chunks_exact(per).chain(b.chunks_exact(per)) {
            for ((s, q), &v) in self.sum.iter_mut().zip(&mut self.sum_sq).zip(img) {
                *s += v as f64;
                *q += (v as f64).powi(2);
            }
        }
        for (x, y) in a.chunks_exact(per).zip(b.chunks_exact(per)) {
            let mse = x
                .iter()
                .zip(y)
                .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
                .sum::<f64>()
                / per as f64;
            self.mse += mse;
            self.psnr += if mse > 0.0 {
                (10.0 * (4.0 / mse).log10()).min(100.0)
            } else {
                100.0
            };
            self.pairs += 1;
        }
    }

    /// The agreement of every pair added.
    pub fn finish(&self) -> Agreement {
        let (n, images) = (self.pairs as f64, 2.0 * self.pairs as f64);
        // Pooled per-pixel variance around the per-pixel mean of all 2n images.
        let variance = self
            .sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(s, q)| (q - s * s / images).max(0.0))
            .sum::<f64>()
            / (images * self.per as f64);
        Agreement {
            agreement: 1.0 - self.mse / (2.0 * variance).max(1e-30) / n,
            psnr: self.psnr / n,
        }
    }
}

/// The quantile of the mismatched pairs' similarities that a pair must pass to count as
/// reproduced: unrelated images pass with probability 1 - this.
pub const REPRODUCIBILITY_QUANTILE: f64 = 0.99;

/// Mismatched pairs (a[i], b[i + k mod n]) taken for the threshold, for k = 1 up to this: every
/// mismatched pair while n <= 1024, and memory linear in n beyond.
const MISMATCH_OFFSETS: usize = 1023;

/// The reproducibility score of Zhang et al. (ICML 2024, arXiv 2310.05264): the fraction of
/// pairs drawn from the same noise whose feature similarity passes a threshold. Their feature
/// network, SSCD, is not available offline; here the features are Inception's pool3 (FID's),
/// centred on the mean of both sets, since the raw features are all non-negative and share a
/// large common component, and the similarity is their cosine. A fixed threshold (their 0.6)
/// means nothing in another space, so it is calibrated: the [`REPRODUCIBILITY_QUANTILE`]
/// quantile of the similarities of mismatched pairs (a[i], b[j]), i != j, from the same sets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reproducibility {
    /// What the similarity is computed on.
    pub features: String,
    /// See [`REPRODUCIBILITY_QUANTILE`].
    pub quantile: f64,
    /// Mismatched pairs the threshold was calibrated on.
    pub mismatched_pairs: usize,
    /// The calibrated threshold on the cosine similarity.
    pub threshold: f64,
    /// The fraction of pairs (a[i], b[i]) whose similarity exceeds the threshold.
    pub score: f64,
    /// The same fraction over the mismatched pairs: 1 - quantile up to ties (the chance level).
    pub chance: f64,
    /// Mean similarity of the pairs from the same noise.
    pub mean_paired: f64,
    /// Mean similarity of the mismatched pairs.
    pub mean_mismatched: f64,
}

/// The reproducibility score of features `fa[i]` and `fb[i]` (`dims` each) of pairs from the
/// same noise; `features` names them.
pub fn reproducibility(
    fa: &[f32],
    fb: &[f32],
    dims: usize,
    features: &str,
) -> Result<Reproducibility> {
    ensure!(
        fa.len() == fb.len() && dims > 0 && fa.len().is_multiple_of(dims),
        "paired feature sets must have the same number of {dims}-value rows"
    );
    let n = fa.len() / dims;
    ensure!(
        n >= 2,
        "a reproducibility score needs at least 2 pairs, got {n}"
    );
    let mut mean = vec![0f64; dims];
    for row in fa.chunks_exact(dims).chain(fb.chunks_exact(dims)) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64 / (2 * n) as f64;
        }
    }
    // Centred rows of unit length, so a dot product is the cosine (0 for a zero row).
    let unit = |set: &[f32]| -> Vec<Vec<f64>> {
        set.chunks_exact(dims)
            .map(|row| {
                let c: Vec<f64> = row.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect();
                let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
                c.iter()
                    .map(|v| if norm > 0.0 { v / norm } else { 0.0 })
                    .collect()
            })
            .collect()
    };
    let (ua, ub) = (unit(fa), unit(fb));
    let cosine = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
    let paired: Vec<f64> = ua.iter().zip(&ub).map(|(x, y)| cosine(x, y)).collect();
    let mut mismatched: Vec<f64> = (1..n.min(MISMATCH_OFFSETS + 1))
        .flat_map(|k| (0..n).map(move |i| (i, (i + k) % n)))
        .map(|(i, j)| cosine(&ua[i], &ub[j]))
        .collect();
    mismatched.sort_by(f64::total_cmp);
    let m = mismatched.len();
    let threshold =
        mismatched[((REPRODUCIBILITY_QUANTILE * m as f64).ceil() as usize).clamp(1, m) - 1];
    let above = |s: &[f64]| s.iter().filter(|&&v| v > threshold).count() as f64 / s.len() as f64;
    Ok(Reproducibility {
        features: features.into(),
        quantile: REPRODUCIBILITY_QUANTILE,
        mismatched_pairs: m,
        threshold,
        score: above(&paired),
        chance: above(&mismatched),
        mean_paired: paired.iter().sum::<f64>() / n as f64,
        mean_mismatched: mismatched.iter().sum::<f64>() / m as f64,
    })
}

/// The agreement of the pairs (a[i], b[i + 1 mod n]), same models and different noise (the
/// chance level), gathered a batch at a time: A's last image of a batch waits for the next
/// batch's first B image, and the very last A image meets the very first B image.
struct ShiftedPairs {
    sums: AgreementSums,
    last_a: Option<Vec<f32>>,
    first_b: Option<Vec<f32>>,
}

impl ShiftedPairs {
    fn new(per: usize) -> Self {
        Self {
            sums: AgreementSums::new(per),
            last_a: None,
            first_b: None,
        }
    }

    /// Adds the next batch of A's and B's images (the same number of each).
    fn add(&mut self, a: &[f32], b: &[f32]) {
        let per = self.sums.per;
        let count = a.len() / per;
        if count == 0 {
            return;
        }
        if let Some(previous) = self.last_a.take() {
            self.sums.add(&previous, &b[..per]);
        }
        self.sums.add(&a[..(count - 1) * per], &b[per..]);
        self.last_a = Some(a[(count - 1) * per..].to_vec());
        self.first_b.get_or_insert_with(|| b[..per].to_vec());
    }

    fn finish(mut self) -> Agreement {
        if let (Some(last), Some(first)) = (self.last_a.take(), self.first_b.take()) {
            self.sums.add(&last, &first);
        }
        self.sums.finish()
    }
}

/// A denoiser that keeps the predicted x_0 (clipped to [-1, 1]) of every `every`-th call.
struct Recorder<'a> {
    inner: NetworkDenoiser<'a>,
    schedule: &'a NoiseSchedule,
    prediction: Prediction,
    every: usize,
    calls: usize,
    x0: Vec<(usize, Vec<f32>)>,
}

impl Denoiser for Recorder<'_> {
    fn predict(&mut self, x: &[f32], t: &[f64]) -> Vec<f32> {
        let out = self.inner.predict(x, t);
        if self.calls.is_multiple_of(self.every) {
            let per = x.len() / t.len();
            let x0 = x
                .iter()
                .zip(&out)
                .enumerate()
                .map(|(i, (&xt, &o))| {
                    let ab = self.schedule.alpha_bar_at(t[i / per]);
                    // Clipped as the samplers use it: at high t the unclipped estimate is the
                    // network's noise error magnified by 1 / sqrt(alpha_bar).
                    (self.prediction.to_x0_eps(o as f64, xt as f64, ab).0 as f32).clamp(-1.0, 1.0)
                })
                .collect();
            // Keyed by the whole timestep nearest the network's (the Karras solvers' are real).
            self.x0.push((t[0].round() as usize, x0));
        }
        self.calls += 1;
        out
    }
}

/// One model's samples and the x_0 it predicted along the way, as (t, images).
struct Trajectory {
    /// Final samples, `[n, 3, size, size]` flattened.
    images: Vec<f32>,
    /// Predicted x_0 at recorded steps, highest t first.
    x0: Vec<(usize, Vec<f32>)>,
}

/// Samples `n` images from `model` with `seed`'s starting and per-step noise, recording the
/// predicted x_0 at up to about 100 of the sampler's steps.
fn trajectory(model: &TrainedModel, sampler: &dyn Sampler, n: usize, seed: u64) -> Trajectory {
    let steps = sampler.timesteps(&model.schedule).len();
    let mut recorder = Recorder {
        inner: NetworkDenoiser {
            model: &model.model,
            device: model.device.clone(),
            guidance: None,
        },
        schedule: &model.schedule,
        prediction: model.prediction(),
        every: steps.div_ceil(100).max(1),
        calls: 0,
        x0: Vec::new(),
    };
    let size = model.model.resolution();
    let images = generate_with(
        &mut recorder,
        &model.schedule,
        model.prediction(),
        sampler,
        n,
        seed,
        size,
    );
    Trajectory {
        images,
        x0: recorder.x0,
    }
}

/// Pairs shown in `pairs.png`.
const SHOWN_PAIRS: usize = 16;

/// What two models drew from the same noise: the report, and the first pairs of final samples.
pub struct Measured {
    /// The agreements.
    pub report: Report,
    /// Side length of the images.
    pub size: usize,
    /// A's first (up to 16) final samples, `[k, 3, size, size]` flattened.
    pub first_a: Vec<f32>,
    /// B's, from the same noise.
    pub first_b: Vec<f32>,
}

/// Draws `n` images from each of `a` and `b` with the same starting and per-step noise, `batch`
/// at a time (batch i from [`batch_seed`]`(seed, i)`, so memory is bounded whatever `n`, but
/// for the features), and measures how alike they are: the final samples, paired and shifted
/// by one (the chance level), the predicted x_0 at up to about 100 of the sampler's steps and,
/// with `features` (a network and how the report names its features), the [`Reproducibility`]
/// score of the final samples, each rounded to 8 bits as an image file would be.
pub fn measure(
    a: &TrainedModel,
    b: &TrainedModel,
    sampler: &dyn Sampler,
    n: usize,
    batch: usize,
    seed: u64,
    features: Option<(&dyn FeatureExtractor, &str)>,
) -> Result<Measured> {
    ensure!(n >= 2, "consistency needs at least 2 image pairs, got {n}");
    let size = a.model.resolution();
    ensure!(
        b.model.resolution() == size,
        "{} draws {size}x{size} images and {} {}x{}: the same noise cannot be given to both",
        a.path.display(),
        b.path.display(),
        b.model.resolution(),
        b.model.resolution()
    );
    let per = 3 * size * size;
    let batch = batch.max(1);
    let (mut paired, mut shuffled) = (AgreementSums::new(per), ShiftedPairs::new(per));
    let mut per_step: Vec<(usize, AgreementSums)> = Vec::new();
    let (mut first_a, mut first_b) = (Vec::new(), Vec::new());
    let (mut features_a, mut features_b) = (Vec::new(), Vec::new());
    let mut progress = hayate_train::progress::Countdown::new("pairs", n);
    for i in 0..n.div_ceil(batch) {
        let count = batch.min(n - i * batch);
        let ta = trajectory(a, sampler, count, batch_seed(seed, i));
        let tb = trajectory(b, sampler, count, batch_seed(seed, i));
        if per_step.is_empty() {
            per_step = ta
                .x0
                .iter()
                .map(|(t, _)| (*t, AgreementSums::new(per)))
                .collect();
        }
        for ((t, sums), ((ta_t, xa), (tb_t, xb))) in
            per_step.iter_mut().zip(ta.x0.iter().zip(&tb.x0))
        {
            ensure!(
                t == ta_t && t == tb_t,
                "the two runs visited different timesteps"
            );
            sums.add(xa, xb);
        }
        if let Some((net, _)) = features {
            for (images, out) in [(&ta.images, &mut features_a), (&tb.images, &mut features_b)] {
                let mut images = images.clone();
                quantize(&mut images);
                out.extend(features_of(net, images, [count, 3, size, size])?);
            }
        }
        paired.add(&ta.images, &tb.images);
        shuffled.add(&ta.images, &tb.images);
        let keep = SHOWN_PAIRS.saturating_sub(first_a.len() / per).min(count);
        first_a.extend_from_slice(&ta.images[..keep * per]);
        first_b.extend_from_slice(&tb.images[..keep * per]);
        if let Some(line) = progress.update(i * batch + count) {
            eprintln!("consistency: {line}");
        }
    }
    let reproducibility = match features {
        Some((net, name)) => Some(reproducibility(&features_a, &features_b, net.dims(), name)?),
        None => None,
    };
    Ok(Measured {
        report: Report {
            n,
            reproducibility,
            paired: paired.finish(),
            shuffled: shuffled.finish(),
            per_step: per_step
                .into_iter()
                .map(|(t, sums)| StepAgreement {
                    t,
                    agreement: sums.finish(),
                })
                .collect(),
        },
        size,
        first_a,
        first_b,
    })
}

/// Agreement of two models' predicted x_0 at one timestep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepAgreement {
    /// The timestep.
    pub t: usize,
    /// Agreement and PSNR of the two models' x_0 predictions there.
    #[serde(flatten)]
    pub agreement: Agreement,
}

/// What `hayate consistency` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Image pairs.
    pub n: usize,
    /// The final samples of A and B from the same noise.
    pub paired: Agreement,
    /// The same with B's samples shifted by one: the chance level.
    pub shuffled: Agreement,
    /// The reproducibility score of the final samples, when features were computed.
    pub reproducibility: Option<Reproducibility>,
    /// Per recorded timestep, highest t first.
    pub per_step: Vec<StepAgreement>,
}

/// What was compared, and how: recorded in `consistency.json` beside the figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setup {
    /// The checkpoint files of A and B.
    pub a: PathBuf,
    /// See `a`.
    pub b: PathBuf,
    /// The reverse process, "ddim" or "ddpm".
    pub sampler: String,
    /// The sampler's number of steps.
    pub steps: usize,
    /// Seed of the shared noise.
    pub seed: u64,
}

/// Writes `consistency.json`, `pairs.png` (A's samples in the first row, B's below, up to 16
/// pairs) and `agreement.png` (x_0 agreement against t, with the final samples' paired and
/// chance levels) into `dir`; the JSON also records the `setup`.
pub fn write(setup: &Setup, measured: &Measured, dir: &Path) -> Result<Vec<PathBuf>> {
    let report = &measured.report;
    #[derive(Serialize)]
    struct Record<'a> {
        #[serde(flatten)]
        setup: &'a Setup,
        #[serde(flatten)]
        report: &'a Report,
    }
    std::fs::create_dir_all(dir)?;
    let json = dir.join("consistency.json");
    hayate_train::checkpoint::write_atomic(
        &json,
        format!("{:#}\n", serde_json::to_value(Record { setup, report })?).as_bytes(),
    )?;
    let k = measured.first_a.len() / (3 * measured.size * measured.size);
    let pairs = [measured.first_a.as_slice(), &measured.first_b].concat();
    let grid = dir.join("pairs.png");
    save_grid_with_columns(&pairs, measured.size, k, &grid)?;
    let level = |name: &str, value: f64| Series {
        name: name.into(),
        points: vec![(0.0, value), (report.per_step[0].t as f64, value)],
    };
    let chart = Chart {
        title: format!(
            "Agreement of two models from the same noise (n = {}, {} {} steps)",
            report.n,
            setup.sampler.to_uppercase(),
            setup.steps
        ),
        x_label: "timestep t of the prediction".into(),
        y_label: "1 - normalised MSE".into(),
        series: vec![
            Series {
                name: "predicted x_0 at t".into(),
                points: report
                    .per_step
                    .iter()
                    .map(|s| (s.t as f64, s.agreement.agreement))
                    .collect(),
            },
            level("final samples, paired", report.paired.agreement),
            level(
                "final samples, shuffled (chance)",
                report.shuffled.agreement,
            ),
        ],
        log_y: false,
    };
    let plot = dir.join("agreement.png");
    chart.save(&plot)?;
    Ok(vec![json, grid, plot])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_sets_agree_fully_and_independent_ones_about_not_at_all() {
        let per = 48;
        let mut rng = <hayate_schedule::HostRng as rand::SeedableRng>::seed_from_u64(1);
        let mut a = vec![0f32; 200 * per];
        let mut b = vec![0f32; 200 * per];
        hayate_schedule::fill_standard_normal(&mut rng, &mut a);
        hayate_schedule::fill_standard_normal(&mut rng, &mut b);
        let same = agreement(&a, &a, per);
        assert_eq!(same.agreement, 1.0);
        assert_eq!(same.psnr, 100.0);
        let independent = agreement(&a, &b, per);
        assert!(independent.agreement.abs() < 0.05, "{independent:?}");
        // Half signal, half independent noise: variance 1.25 each, MSE 2 * 0.25 = 0.5 of 2.5.
        let c: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + 0.5 * y).collect();
        let d: Vec<f32> = a
            .iter()
            .zip(b.iter().rev())
            .map(|(x, y)| x + 0.5 * y)
            .collect();
        let half = agreement(&c, &d, per);
        assert!((half.agreement - 0.8).abs() < 0.03, "{half:?}");
        assert!(half.psnr > independent.psnr);
    }

    #[test]
    fn reproducibility_counts_pairs_above_the_mismatched_pairs_quantile() {
        let (dims, n) = (32, 300);
        let mut rng = <hayate_schedule::HostRng as rand::SeedableRng>::seed_from_u64(7);
        let (mut a, mut b) = (vec![0f32; n * dims], vec![0f32; n * dims]);
        hayate_schedule::fill_standard_normal(&mut rng, &mut a);
        hayate_schedule::fill_standard_normal(&mut rng, &mut b);
        let same = reproducibility(&a, &a, dims, "test").unwrap();
        assert_eq!(same.score, 1.0);
        assert!((same.mean_paired - 1.0).abs() < 1e-9, "{same:?}");
        assert_eq!(same.mismatched_pairs, n * (n - 1));
        assert_eq!(same.features, "test");
        // Unrelated pairs pass about as often as mismatched ones, 1 - quantile by construction.
        let unrelated = reproducibility(&a, &b, dims, "test").unwrap();
        assert!(unrelated.score < 0.04, "{unrelated:?}");
        assert!((unrelated.chance - 0.01).abs() < 1e-3, "{unrelated:?}");
        assert!(unrelated.mean_paired.abs() < 0.05 && unrelated.mean_mismatched.abs() < 0.01);
        // Half signal: cosine about 0.9, far above the mismatched pairs' 99% quantile (about
        // 2.3 / sqrt(32)); a large offset shared by every feature (as Inception's non-negative
        // features have) changes nothing, since the features are centred first.
        let related: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + 0.5 * y).collect();
        let close = reproducibility(&a, &related, dims, "test").unwrap();
        assert_eq!(close.score, 1.0);
        assert!(close.threshold > 0.2 && close.threshold < 0.6, "{close:?}");
        let offset = |v: &[f32]| v.iter().map(|x| x + 50.0).collect::<Vec<f32>>();
        let moved = reproducibility(&offset(&a), &offset(&related), dims, "test").unwrap();
        assert!(
            (moved.threshold - close.threshold).abs() < 1e-4,
            "{moved:?} {close:?}"
        );
        assert_eq!(moved.score, 1.0);
        // Half the pairs related, half not: about half pass.
        let mixed: Vec<f32> = related[..n / 2 * dims]
            .iter()
            .chain(&b[n / 2 * dims..])
            .copied()
            .collect();
        let half = reproducibility(&a, &mixed, dims, "test").unwrap();
        assert!((half.score - 0.5).abs() < 0.02, "{half:?}");
        assert!(reproducibility(&a[..dims], &b[..dims], dims, "test").is_err());
        assert!(reproducibility(&a, &b[..dims], dims, "test").is_err());
    }

    #[test]
    fn reproducibility_bounds_the_mismatched_pairs_of_large_sets() {
        let (dims, n) = (4, 1100);
        let mut rng = <hayate_schedule::HostRng as rand::SeedableRng>::seed_from_u64(8);
        let mut a = vec![0f32; n * dims];
        hayate_schedule::fill_standard_normal(&mut rng, &mut a);
        let r = reproducibility(&a, &a, dims, "test").unwrap();
        assert_eq!(r.mismatched_pairs, n * MISMATCH_OFFSETS);
    }

    /// The pairing (a[i], b[i + 1 mod n]) of whole sets, as the shifted pairs define it.
    fn shuffled(b: &[f32], per: usize) -> Vec<f32> {
        let mut out = b[per..].to_vec();
        out.extend_from_slice(&b[..per]);
        out
    }

    #[test]
    fn shifted_pairs_gathered_in_batches_equal_the_whole_sets_shifted() {
        let per = 12;
        let mut rng = <hayate_schedule::HostRng as rand::SeedableRng>::seed_from_u64(3);
        let (mut a, mut b) = (vec![0f32; 7 * per], vec![0f32; 7 * per]);
        hayate_schedule::fill_standard_normal(&mut rng, &mut a);
        hayate_schedule::fill_standard_normal(&mut rng, &mut b);
        let whole = agreement(&a, &shuffled(&b, per), per);
        for sizes in [&[7][..], &[3, 3, 1], &[1, 1, 5]] {
            let mut pairs = ShiftedPairs::new(per);
            let mut start = 0;
            for &size in sizes {
                let range = start * per..(start + size) * per;
                pairs.add(&a[range.clone()], &b[range]);
                start += size;
            }
            let batched = pairs.finish();
            assert!(
                (batched.agreement - whole.agreement).abs() < 1e-12
                    && (batched.psnr - whole.psnr).abs() < 1e-9,
                "batches {sizes:?}: {batched:?} vs {whole:?}"
            );
        }
    }

    #[test]
    fn shuffling_pairs_each_image_with_the_next() {
        let b = vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0];
        assert_eq!(shuffled(&b, 2), vec![1.0, 1.0, 2.0, 2.0, 0.0, 0.0]);
    }
}
