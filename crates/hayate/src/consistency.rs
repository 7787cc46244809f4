//! The consistency phenomenon (Xu et al. 2024): two diffusion models given the same starting
//! noise and the same per-step noise produce nearly the same images, and their predictions of
//! x_0 agree most at high noise. This module measures that agreement.

use crate::plot::{Chart, Series};
use crate::sample::{UNetDenoiser, generate_with, save_grid_with_columns};
use anyhow::{Result, ensure};
use burn::prelude::*;
use hayate_model::UNet;
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
    assert_eq!(a.len(), b.len(), "paired sets must have the same size");
    let n = a.len() / per;
    // Pooled per-pixel variance around the per-pixel mean of all 2n images.
    let mut mean = vec![0f64; per];
    for img in a.chunks_exact(per).chain(b.chunks_exact(per)) {
        for (m, &v) in mean.iter_mut().zip(img) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= (2 * n) as f64);
    let variance = a
        .chunks_exact(per)
        .chain(b.chunks_exact(per))
        .flat_map(|img| img.iter().zip(&mean).map(|(&v, m)| (v as f64 - m).powi(2)))
        .sum::<f64>()
        / (2 * n * per) as f64;
    let mut nmse = 0.0;
    let mut psnr = 0.0;
    for (x, y) in a.chunks_exact(per).zip(b.chunks_exact(per)) {
        let mse = x
            .iter()
            .zip(y)
            .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
            .sum::<f64>()
            / per as f64;
        nmse += mse / (2.0 * variance).max(1e-30);
        psnr += if mse > 0.0 {
            (10.0 * (4.0 / mse).log10()).min(100.0)
        } else {
            100.0
        };
    }
    Agreement {
        agreement: 1.0 - nmse / n as f64,
        psnr: psnr / n as f64,
    }
}

/// The pairing (a[i], b[i + 1 mod n]): same models, different noise, the chance level.
pub fn shuffled(b: &[f32], per: usize) -> Vec<f32> {
    let mut out = b[per..].to_vec();
    out.extend_from_slice(&b[..per]);
    out
}

/// A denoiser that keeps the predicted x_0 (clipped to [-1, 1]) of every `every`-th call.
struct Recorder<'a> {
    inner: UNetDenoiser<'a>,
    schedule: &'a NoiseSchedule,
    prediction: Prediction,
    every: usize,
    calls: usize,
    x0: Vec<(usize, Vec<f32>)>,
}

impl Denoiser for Recorder<'_> {
    fn predict(&mut self, x: &[f32], t: &[usize]) -> Vec<f32> {
        let out = self.inner.predict(x, t);
        if self.calls.is_multiple_of(self.every) {
            let per = x.len() / t.len();
            let x0 = x
                .iter()
                .zip(&out)
                .enumerate()
                .map(|(i, (&xt, &o))| {
                    let ab = self.schedule.alpha_bar(t[i / per]);
                    // Clipped as the samplers use it: at high t the unclipped estimate is the
                    // network's noise error magnified by 1 / sqrt(alpha_bar).
                    (self.prediction.to_x0_eps(o as f64, xt as f64, ab).0 as f32).clamp(-1.0, 1.0)
                })
                .collect();
            self.x0.push((t[0], x0));
        }
        self.calls += 1;
        out
    }
}

/// One model's samples and the x_0 it predicted along the way, as (t, images).
pub struct Trajectory {
    /// Side length of the images.
    pub size: usize,
    /// Final samples, `[n, 3, size, size]` flattened.
    pub images: Vec<f32>,
    /// Predicted x_0 at recorded steps, highest t first.
    pub x0: Vec<(usize, Vec<f32>)>,
}

/// Samples `n` images from `model` with `seed`'s starting and per-step noise, recording the
/// predicted x_0 at up to about 100 of the sampler's steps.
pub fn trajectory(
    model: &UNet,
    device: &Device,
    schedule: &NoiseSchedule,
    prediction: Prediction,
    sampler: &dyn Sampler,
    n: usize,
    seed: u64,
) -> Trajectory {
    let steps = sampler.timesteps(schedule).len();
    let mut recorder = Recorder {
        inner: UNetDenoiser {
            model,
            device: device.clone(),
            guidance: None,
        },
        schedule,
        prediction,
        every: steps.div_ceil(100).max(1),
        calls: 0,
        x0: Vec::new(),
    };
    let size = model.resolution();
    let images = generate_with(&mut recorder, schedule, prediction, sampler, n, seed, size);
    Trajectory {
        size,
        images,
        x0: recorder.x0,
    }
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

/// Compares two trajectories drawn from the same noise.
pub fn compare(a: &Trajectory, b: &Trajectory) -> Result<Report> {
    let per = 3 * a.size * a.size;
    ensure!(
        a.size == b.size && a.images.len() == b.images.len() && a.x0.len() == b.x0.len(),
        "the two runs differ in size"
    );
    let per_step =
        a.x0.iter()
            .zip(&b.x0)
            .map(|((t, xa), (tb, xb))| {
                ensure!(t == tb, "the two runs visited different timesteps");
                Ok(StepAgreement {
                    t: *t,
                    agreement: agreement(xa, xb, per),
                })
            })
            .collect::<Result<Vec<_>>>()?;
    Ok(Report {
        n: a.images.len() / per,
        paired: agreement(&a.images, &b.images, per),
        shuffled: agreement(&a.images, &shuffled(&b.images, per), per),
        per_step,
    })
}

/// Writes `consistency.json`, `pairs.png` (A's samples in the first row, B's below, up to 16
/// pairs) and `agreement.png` (x_0 agreement against t, with the final samples' paired and
/// chance levels) into `dir`; the JSON also records the `setup`.
pub fn write(
    setup: &Setup,
    report: &Report,
    a: &Trajectory,
    b: &Trajectory,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    #[derive(Serialize)]
    struct Record<'a> {
        #[serde(flatten)]
        setup: &'a Setup,
        #[serde(flatten)]
        report: &'a Report,
    }
    std::fs::create_dir_all(dir)?;
    let json = dir.join("consistency.json");
    crate::checkpoint::write_atomic(
        &json,
        format!("{:#}\n", serde_json::to_value(Record { setup, report })?).as_bytes(),
    )?;
    let per = 3 * a.size * a.size;
    let k = report.n.min(16);
    let mut pairs = a.images[..k * per].to_vec();
    pairs.extend_from_slice(&b.images[..k * per]);
    let grid = dir.join("pairs.png");
    save_grid_with_columns(&pairs, a.size, k, &grid)?;
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
    fn shuffling_pairs_each_image_with_the_next() {
        let b = vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0];
        assert_eq!(shuffled(&b, 2), vec![1.0, 1.0, 2.0, 2.0, 0.0, 0.0]);
    }
}
