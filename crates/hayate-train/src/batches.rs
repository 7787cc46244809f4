//! Host-side batch preparation: data order, flips, timesteps and noise, each from its own seeded
//! stream, so every backend sees the same inputs and a resumed run continues the same sequence.

use crate::config::RunConfig;
use crate::step::DenoisingBatch;
use anyhow::Result;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::prelude::*;
use hayate_data::{DataError, ImageSource, image_to_unit_range};
use hayate_model::DropoutKey;
use hayate_schedule::timesteps::{Adaptive, AdaptiveState, draw};
use hayate_schedule::{HostRng, NoiseAssignment, NoiseSchedule, Prediction, TimestepSampler};
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// The random streams of a run, one per purpose, all derived from the run's seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Streams {
    /// Data order and flips.
    pub data: HostRng,
    /// Training timesteps.
    pub timestep: HostRng,
    /// Training noise.
    pub noise: HostRng,
    /// The seeds of the steps' dropout masks.
    pub dropout: HostRng,
}

impl Streams {
    /// Independent streams of one seed (ChaCha stream ids 1 to 4).
    pub fn new(seed: u64) -> Self {
        let stream = |id: u64| {
            let mut rng = HostRng::seed_from_u64(seed);
            rng.set_stream(id);
            rng
        };
        Self {
            data: stream(1),
            timestep: stream(2),
            noise: stream(3),
            dropout: stream(4),
        }
    }
}

/// Everything that decides the next batch; saved in each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    /// Optimiser steps taken so far: the true global step.
    pub step: u64,
    /// The random streams.
    pub streams: Streams,
    /// The current epoch's permutation of the dataset.
    pub order: Vec<u32>,
    /// Position in `order`.
    pub cursor: usize,
    /// What an adaptive timestep curriculum has measured (absent for the other samplers, and
    /// in checkpoints written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveState>,
}

impl SourceState {
    /// The start of a run with `seed`: step 0, fresh streams, no epoch drawn yet.
    pub fn new(seed: u64) -> Self {
        Self {
            step: 0,
            streams: Streams::new(seed),
            order: Vec::new(),
            cursor: 0,
            adaptive: None,
        }
    }
}

/// Builds training batches from a dataset, a noise schedule and a timestep sampler.
pub struct BatchSource {
    /// The images.
    pub dataset: Arc<dyn ImageSource>,
    /// The noise schedule.
    pub schedule: NoiseSchedule,
    /// What the network is trained to predict.
    pub prediction: Prediction,
    /// How t is drawn.
    pub sampler: Box<dyn TimestepSampler>,
    /// An adaptive curriculum, which then draws t instead of `sampler` from `state.adaptive`.
    pub adaptive: Option<Adaptive>,
    /// Weight each loss by 1 / (T p(t)).
    pub importance_weights: bool,
    /// The adaptive curriculum's updates since the trainer last took them: the first step
    /// (counting from 1) drawn with each, and its band masses.
    pub updates: Vec<(u64, Vec<f64>)>,
    /// The loss weight of each timestep (the config's `loss_weight` for the run's prediction).
    pub loss_weights: Vec<f32>,
    /// Images per batch.
    pub batch_size: usize,
    /// Total steps of the run (the curriculum samplers read it).
    pub total_steps: u64,
    /// Mirror images at random.
    pub random_flip: bool,
    /// Classes of a class-conditional model (0: labels are not used).
    pub num_classes: usize,
    /// Probability of replacing a label by "no label" (`num_classes`).
    pub label_dropout: f64,
    /// How the noise draws are matched to the images.
    pub noise_assignment: NoiseAssignment,
    /// The sequence position.
    pub state: SourceState,
}

/// A batch on the host, before it is moved to a device.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// Side length of the images.
    pub size: usize,
    /// Noisy images, flattened `[N, 3, size, size]`.
    pub x_t: Vec<f32>,
    /// Class labels for a class-conditional model (`num_classes` meaning "no label").
    pub labels: Option<Vec<u32>>,
    /// Timesteps.
    pub t: Vec<usize>,
    /// Regression targets, flattened like `x_t`.
    pub target: Vec<f32>,
    /// Loss weight of each sample.
    pub weight: Vec<f32>,
    /// Mean of t / T over the batch, for the progress display.
    pub mean_t_over_t: f64,
    /// The seed of this step's dropout masks.
    pub dropout_seed: u64,
}

impl BatchSource {
    /// The batch source of a run: schedule, timestep sampler and loss weight from `config`,
    /// continuing from `state`.
    pub fn new(
        dataset: Arc<dyn ImageSource>,
        config: &RunConfig,
        state: SourceState,
    ) -> Result<Self> {
        let schedule = config.diffusion.schedule()?;
        let loss_weights = config
            .diffusion
            .loss_weight
            .table(&schedule, config.diffusion.prediction)
            .into_iter()
            .map(|w| w as f32)
            .collect();
        let sampler = config.diffusion.timestep_sampler.build(&schedule)?;
        let adaptive = config.diffusion.timestep_sampler.adaptive(&schedule);
        let mut state = state;
        // A fresh run starts the curriculum's statistics; a resume keeps them, unless a changed
        // config (accepted on resume) made them another shape or dropped the curriculum.
        state.adaptive = match (adaptive, state.adaptive.take()) {
            (Some(a), Some(kept)) if kept.band_mass.len() == a.bands => Some(kept),
            (Some(a), _) => Some(a.initial_state()),
            (None, _) => None,
        };
        let num_classes = config.model.resolve()?.num_classes();
        let classes = dataset.classes().len();
        if num_classes > 0 && classes != num_classes {
            anyhow::bail!(
                "model.num_classes is {num_classes}, but the training images have {}: {} \
                 (set model.num_classes = {classes}, or 0 for an unconditional model)",
                if classes == 0 {
                    "no classes".into()
                } else {
                    format!("{classes} classes")
                },
                dataset.describe()
            );
        }
        Ok(Self {
            num_classes,
            label_dropout: config.train.label_dropout,
            dataset,
            schedule,
            prediction: config.diffusion.prediction,
            sampler,
            adaptive,
            importance_weights: config.diffusion.timestep_sampler.importance_weights(),
            updates: Vec::new(),
            loss_weights,
            batch_size: config.train.batch_size,
            total_steps: config.train.steps,
            random_flip: config.data.random_flip,
            noise_assignment: config.diffusion.noise_assignment,
            state,
        })
    }

    /// Draws the next batch and advances the step; an image that cannot be read is an error
    /// (and the step is not taken).
    pub fn next_batch(&mut self) -> Result<HostBatch, DataError> {
        let n = self.batch_size;
        let size = self.dataset.resolution();
        let per = 3 * size * size;
        let state = &mut self.state;
        let mut x0 = vec![0f32; n * per];
        let mut labels = Vec::with_capacity(n);
        let mut pixels = vec![0u8; per];
        for dst in x0.chunks_exact_mut(per) {
            if state.cursor >= state.order.len() {
                state.order = shuffled(self.dataset.len(), &mut state.streams.data);
                state.cursor = 0;
            }
            let index = state.order[state.cursor] as usize;
            state.cursor += 1;
            let flip = self.random_flip && state.streams.data.random::<bool>();
            let mut label = self.dataset.read(index, &mut pixels)?;
            // Drawn only when used, so unconditional runs keep their data order.
            if self.num_classes > 0
                && self.label_dropout > 0.0
                && state.streams.data.random::<f64>() < self.label_dropout
            {
                label = self.num_classes as u32;
            }
            labels.push(label);
            image_to_unit_range(&pixels, size, flip, dst);
        }
        let steps = self.schedule.steps() as f64;
        let (t, weight) = match (&self.adaptive, &mut state.adaptive) {
            (Some(a), Some(curriculum)) => {
                if a.advance(curriculum, state.step) {
                    self.updates
                        .push((state.step + 1, curriculum.band_mass.clone()));
                }
                let p = a.probabilities(curriculum);
                let t = draw(&p, n, &mut state.streams.timestep);
                a.record_draws(curriculum, state.step, &t);
                let weight = t
                    .iter()
                    .map(|&t| {
                        let w = self.loss_weights[t];
                        if self.importance_weights {
                            (w as f64 / (steps * p[t])) as f32
                        } else {
                            w
                        }
                    })
                    .collect();
                (t, weight)
            }
            _ => {
                let t = self.sampler.sample(
                    state.step,
                    self.total_steps,
                    n,
                    &mut state.streams.timestep,
                );
                let weight = t.iter().map(|&t| self.loss_weights[t]).collect();
                (t, weight)
            }
        };
        let t_sum = t.iter().map(|&t| t as f64 / steps).sum::<f64>();
        let eps = self
            .noise_assignment
            .draw(&x0, per, &mut state.streams.noise);
        let mut x_t = vec![0f32; n * per];
        let mut target = vec![0f32; n * per];
        for (i, &ti) in t.iter().enumerate() {
            let ab = self.schedule.alpha_bar(ti);
            let (a, b) = self.schedule.forward_coefficients(ti);
            for j in i * per..(i + 1) * per {
                let (x, e) = (x0[j] as f64, eps[j] as f64);
                x_t[j] = (a * x + b * e) as f32;
                target[j] = self.prediction.target(x, e, ab) as f32;
            }
        }
        let dropout_seed = state.streams.dropout.next_u64();
        state.step += 1;
        Ok(HostBatch {
            size,
            x_t,
            labels: (self.num_classes > 0).then_some(labels),
            t,
            target,
            weight,
            mean_t_over_t: t_sum / n as f64,
            dropout_seed,
        })
    }
}

impl BatchSource {
    /// Whether the trainer should hand each step's per-sample losses to
    /// [`observe`](Self::observe).
    pub fn wants_losses(&self) -> bool {
        self.adaptive.is_some()
    }

    /// The per-sample losses of step `index` (0 for the run's first), in the batch's order.
    pub fn observe(&mut self, index: u64, losses: Vec<f32>) {
        if let (Some(a), Some(state)) = (&self.adaptive, &mut self.state.adaptive) {
            a.observe(state, index, losses);
        }
    }
}

/// A permutation of 0..n by Fisher-Yates from `rng`.
fn shuffled(n: usize, rng: &mut impl Rng) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    order
}

impl HostBatch {
    /// Moves the batch to `device`.
    pub fn to_device(&self, device: &Device) -> DenoisingBatch {
        let n = self.t.len();
        let shape = [n, 3, self.size, self.size];
        let t: Vec<f32> = self.t.iter().map(|&t| t as f32).collect();
        DenoisingBatch {
            x_t: Tensor::from_data(TensorData::new(self.x_t.clone(), shape), device),
            t: Tensor::from_data(TensorData::new(t, [n]), device),
            target: Tensor::from_data(TensorData::new(self.target.clone(), shape), device),
            weight: Tensor::from_data(TensorData::new(self.weight.clone(), [n]), device),
            labels: self.labels.as_ref().map(|labels| {
                let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
                Tensor::from_data(TensorData::new(labels, [n]), device)
            }),
            mean_t_over_t: self.mean_t_over_t,
            dropout: DropoutKey {
                seed: self.dropout_seed,
                first_image: 0,
            },
        }
    }
}

/// Burn's view of the batch source: each pass over it is one "epoch" of up to `steps` steps,
/// ending at the next multiple of `steps`: the interval between checkpoints.
#[derive(Clone)]
pub struct StepLoader {
    /// The shared source; the training strategy reads its state for checkpoints.
    pub source: Arc<Mutex<BatchSource>>,
    /// Steps per pass.
    pub steps: usize,
    /// Where batches go.
    pub device: Device,
}

struct StepIter<'a> {
    loader: &'a StepLoader,
    done: usize,
}

impl Iterator for StepIter<'_> {
    type Item = Result<DenoisingBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done >= self.loader.steps {
            return None;
        }
        let mut source = self.loader.source.lock().expect("batch source lock");
        let step = source.state.step;
        // A pass ends at the run's end or at a multiple of the interval, so a run resumed from an
        // interrupted interval realigns with the checkpoint schedule.
        let boundary = self.done > 0 && step.is_multiple_of(self.loader.steps as u64);
        if step >= source.total_steps || boundary {
            return None;
        }
        self.done += 1;
        Some(
            source
                .next_batch()
                .map(|batch| batch.to_device(&self.loader.device))
                .map_err(DatasetError::new),
        )
    }
}

impl StepLoader {
    /// Steps left in the pass that starts at the source's current step: up to the next multiple
    /// of `steps`, or the run's end.
    fn steps_in_pass(&self, source: &BatchSource) -> usize {
        let every = self.steps as u64;
        if every == 0 {
            return 0;
        }
        let step = source.state.step;
        let end = ((step / every + 1) * every).min(source.total_steps.max(step));
        (end - step) as usize
    }
}

impl DataLoaderIterator<DenoisingBatch> for StepIter<'_> {
    fn progress(&self) -> Progress {
        let source = self.loader.source.lock().expect("batch source lock");
        let batch = source.batch_size;
        Progress {
            items_processed: self.done * batch,
            items_total: (self.done + self.loader.steps_in_pass(&source)) * batch,
            unit: Some("images".into()),
        }
    }
}

impl DataLoader<DenoisingBatch> for StepLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<DenoisingBatch> + 'a> {
        Box::new(StepIter {
            loader: self,
            done: 0,
        })
    }

    fn num_items(&self) -> usize {
        let source = self.source.lock().expect("batch source lock");
        self.steps_in_pass(&source) * source.batch_size
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<DenoisingBatch>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<DenoisingBatch>> {
        Arc::new(Self {
            steps: end.min(self.steps).saturating_sub(start),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight 8x8 images, image i all of grey level 30 i.
    #[derive(Debug)]
    struct Greys;

    impl ImageSource for Greys {
        fn len(&self) -> usize {
            8
        }
        fn resolution(&self) -> usize {
            8
        }
        fn classes(&self) -> &[String] {
            &[]
        }
        fn read(&self, index: usize, pixels: &mut [u8]) -> Result<u32, DataError> {
            pixels.fill(30 * index as u8);
            Ok(0)
        }
        fn describe(&self) -> String {
            "eight grey images".into()
        }
        fn name(&self) -> String {
            "greys".into()
        }
    }

    fn batch(assignment: &str) -> HostBatch {
        let config = RunConfig::parse(&format!(
            "[model]\npreset = \"tiny\"\nresolution = 8\nattention_resolutions = []\n[data]\nrandom_flip = false\n\
             [train]\nbatch_size = 8\n[diffusion]\nnoise_assignment = {assignment}\n"
        ))
        .unwrap();
        BatchSource::new(Arc::new(Greys), &config, SourceState::new(3))
            .unwrap()
            .next_batch()
            .unwrap()
    }

    #[test]
    fn an_adaptive_curriculum_draws_from_its_state_and_weights_by_importance() {
        let config = RunConfig::parse(
            "[model]\npreset = \"tiny\"\nresolution = 8\nattention_resolutions = []\n\
             [train]\nbatch_size = 8\n[diffusion.timestep_sampler]\nkind = \"adaptive\"\n\
             signal = \"loss_second_moment\"\nbands = 2\nfloor = 0.5\nupdate_every = 1\n\
             smoothing = 0.0\nimportance_weights = true\n",
        )
        .unwrap();
        let mut source = BatchSource::new(Arc::new(Greys), &config, SourceState::new(3)).unwrap();
        assert!(source.wants_losses());
        // Band 0 (t < 500) always loses 4, band 1 loses 1.
        let loss = |t: &[usize]| t.iter().map(|&t| if t < 500 { 4.0 } else { 1.0 }).collect();
        for step in 0..6 {
            let batch = source.next_batch().unwrap();
            source.observe(step, loss(&batch.t));
        }
        // sqrt E[L^2] = 4 and 1: q = (0.8, 0.2), mass = 0.5 x 0.5 + 0.5 q = (0.65, 0.35).
        let mass = source.state.adaptive.as_ref().unwrap().band_mass.clone();
        assert!(
            (mass[0] - 0.65).abs() < 1e-12 && (mass[1] - 0.35).abs() < 1e-12,
            "{mass:?}"
        );
        let batch = source.next_batch().unwrap();
        // Each loss weighs 1 / (T p(t)) = 500 / (1000 mass).
        for (&t, &w) in batch.t.iter().zip(&batch.weight) {
            let expected = 0.5 / mass[usize::from(t >= 500)];
            assert!(
                (w as f64 - expected).abs() < 1e-6,
                "t {t}: {w} vs {expected}"
            );
        }
        // One update per step from step 1 on, each logged with the first step that uses it.
        let steps: Vec<u64> = source.updates.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [2, 3, 4, 5, 6, 7]);
        // A checkpoint's state round-trips exactly, the curriculum's included.
        let json = serde_json::to_string(&source.state).unwrap();
        assert_eq!(
            serde_json::from_str::<SourceState>(&json).unwrap(),
            source.state
        );
        // Without the curriculum the state carries none, and none is written.
        let plain = RunConfig::parse("[model]\npreset = \"tiny\"\n").unwrap();
        let other = BatchSource::new(Arc::new(Greys), &plain, source.state.clone()).unwrap();
        assert!(other.state.adaptive.is_none() && !other.wants_losses());
        assert!(
            !serde_json::to_string(&other.state)
                .unwrap()
                .contains("adaptive")
        );
    }

    #[test]
    fn the_configured_noise_assignment_shapes_the_batch() {
        let plain = batch("{ kind = \"independent\" }");
        assert_eq!(batch("{ kind = \"knn\", k = 1 }"), plain);
        let immiscible = batch("{ kind = \"immiscible\" }");
        // Same images and timesteps; the eps targets are the same draws, regrouped.
        assert_eq!(immiscible.t, plain.t);
        let per = 3 * 8 * 8;
        let mut a: Vec<&[f32]> = plain.target.chunks_exact(per).collect();
        let mut b: Vec<&[f32]> = immiscible.target.chunks_exact(per).collect();
        assert_ne!(
            a, b,
            "eight draws for eight distinct images were left in order"
        );
        a.sort_by(|x, y| x.partial_cmp(y).unwrap());
        b.sort_by(|x, y| x.partial_cmp(y).unwrap());
        assert_eq!(a, b);
        // And more than one candidate per image moves the draws toward their images.
        assert_ne!(batch("{ kind = \"knn\", k = 4 }").target, plain.target);
    }
}
