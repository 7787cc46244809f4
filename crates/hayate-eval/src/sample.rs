//! Sampling from a trained network and writing image grids.

use anyhow::{Context, Result};
use burn::prelude::*;
use hayate_model::Network;
use hayate_schedule::{
    Denoiser, HostRng, NoiseSchedule, Prediction, Sampler, fill_standard_normal,
};
use hayate_train::checkpoint::{Checkpoint, write_atomic};
use hayate_train::config::RunConfig;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// A run's EMA network on a device with what drawing from it needs (its config and noise
/// schedule): the one way `hayate sample`, `eval fid`, `consistency` and the convergence
/// benchmark get from a checkpoint to images.
pub struct TrainedModel {
    /// The checkpoint file it was read from.
    pub path: PathBuf,
    /// The training step it was saved at.
    pub step: u64,
    /// The config it was trained with.
    pub config: RunConfig,
    /// Its noise schedule.
    pub schedule: NoiseSchedule,
    /// The EMA network.
    pub model: Network,
    /// Where it runs.
    pub device: Device,
}

impl TrainedModel {
    /// The newest checkpoint of `path` (a checkpoint file, or a run folder) that loads.
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        let (path, checkpoint) = Checkpoint::load_newest_valid(path)?;
        Self::from_checkpoint(path, &checkpoint, device)
    }

    /// The EMA network of `checkpoint`, read from `path`, on `device`.
    pub fn from_checkpoint(
        path: PathBuf,
        checkpoint: &Checkpoint,
        device: &Device,
    ) -> Result<Self> {
        let config = checkpoint.meta.config.clone();
        let schedule = config.diffusion.schedule()?;
        let model = hayate_train::train::load_ema(checkpoint, device)?;
        Ok(Self {
            path,
            step: checkpoint.step(),
            config,
            schedule,
            model,
            device: device.clone(),
        })
    }

    /// What the network predicts (eps, v or x_0).
    pub fn prediction(&self) -> Prediction {
        self.config.diffusion.prediction
    }

    /// The network as the samplers draw from it.
    pub fn sampling(&self) -> Sampling<'_> {
        Sampling {
            model: &self.model,
            device: &self.device,
            schedule: &self.schedule,
            prediction: self.prediction(),
        }
    }
}

/// A network ready to draw from: the network, its device, schedule and prediction.
#[derive(Clone, Copy)]
pub struct Sampling<'a> {
    /// The network.
    pub model: &'a Network,
    /// Its device.
    pub device: &'a Device,
    /// Its noise schedule.
    pub schedule: &'a NoiseSchedule,
    /// What it predicts.
    pub prediction: Prediction,
}

/// The seed of batch `i` of a batched draw from `seed`: each batch has its own noise stream, so
/// a draw of any size runs in bounded memory and a batch can be redrawn alone.
pub fn batch_seed(seed: u64, i: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(i as u64)
}

/// `n` images drawn `batch` at a time (batch i from [`batch_seed`]`(seed, i)`), labels taken in
/// order from `guidance`; flattened `[n, 3, size, size]` in [-1, 1]. `done` hears the count
/// drawn after each batch.
pub fn generate_batched(
    model: Sampling,
    sampler: &dyn Sampler,
    n: usize,
    batch: usize,
    seed: u64,
    guidance: Option<&Guidance>,
    done: &mut dyn FnMut(usize),
) -> Vec<f32> {
    let batch = batch.max(1);
    let mut images = Vec::new();
    for i in 0..n.div_ceil(batch) {
        let range = i * batch..n.min((i + 1) * batch);
        let labels = guidance.map(|g| Guidance {
            labels: g.labels[range.clone()].to_vec(),
            scale: g.scale,
        });
        images.extend(generate(
            model,
            sampler,
            range.len(),
            batch_seed(seed, i),
            labels.as_ref(),
        ));
        done(range.end);
    }
    images
}

/// Class labels for sampling from a class-conditional model, and the classifier-free guidance
/// scale s: the prediction is eps_uncond + s (eps_cond - eps_uncond), so s = 1 is the plain
/// conditional model and s = 0 the unconditional one.
#[derive(Debug, Clone, PartialEq)]
pub struct Guidance {
    /// One label per image.
    pub labels: Vec<u32>,
    /// The guidance scale s.
    pub scale: f64,
}

impl Guidance {
    /// Labels 0, 1, 2, ... cycling through `classes`, so a grid shows the classes in turn.
    pub fn cycling(n: usize, classes: usize, scale: f64) -> Self {
        Self {
            labels: (0..n).map(|i| (i % classes.max(1)) as u32).collect(),
            scale,
        }
    }

    /// Labels drawn uniformly from `classes` with `seed` (for FID, which wants the class mix
    /// of the data).
    pub fn random(n: usize, classes: usize, seed: u64, scale: f64) -> Self {
        let mut rng = HostRng::seed_from_u64(seed);
        Self {
            labels: (0..n)
                .map(|_| rng.random_range(0..classes.max(1)) as u32)
                .collect(),
            scale,
        }
    }

    /// What a run's sampling settings ask of `model`: `None` for an unconditional model, else
    /// cycling labels at `scale`.
    pub fn for_grid(model: &Network, n: usize, scale: f64) -> Option<Self> {
        (model.num_classes() > 0).then(|| Self::cycling(n, model.num_classes(), scale))
    }
}

/// A network (UNet or DiT) on a device, as the host-side samplers see it.
pub struct NetworkDenoiser<'a> {
    /// The network (an inference copy: no autodiff, dropout off).
    pub model: &'a Network,
    /// Its device.
    pub device: Device,
    /// Labels and guidance of a class-conditional model.
    pub guidance: Option<&'a Guidance>,
}

impl NetworkDenoiser<'_> {
    fn run(&self, x: Vec<f32>, t: &[f64], labels: Option<Vec<i64>>) -> Vec<f32> {
        let n = t.len();
        let size = self.model.resolution();
        let x = Tensor::<4>::from_data(TensorData::new(x, [n, 3, size, size]), &self.device);
        let t: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        let t = Tensor::<1>::from_data(TensorData::new(t, [n]), &self.device);
        let labels =
            labels.map(|l| Tensor::<1, Int>::from_data(TensorData::new(l, [n]), &self.device));
        self.model
            .forward_labelled(x, t, labels)
            .into_data()
            .try_to_vec::<f32>()
            .expect("the network outputs f32")
    }
}

impl Denoiser for NetworkDenoiser<'_> {
    fn predict(&mut self, x: &[f32], t: &[f64]) -> Vec<f32> {
        let Some(guidance) = self.guidance.filter(|_| self.model.num_classes() > 0) else {
            return self.run(x.to_vec(), t, None);
        };
        let n = t.len();
        assert_eq!(guidance.labels.len(), n, "one label per image");
        let labels: Vec<i64> = guidance.labels.iter().map(|&l| l as i64).collect();
        if guidance.scale == 1.0 {
            return self.run(x.to_vec(), t, Some(labels));
        }
        // Conditional and unconditional predictions in one batch of 2n.
        let none = self.model.num_classes() as i64;
        let both = self.run(
            [x, x].concat(),
            &[t, t].concat(),
            Some(
                labels
                    .into_iter()
                    .chain(std::iter::repeat_n(none, n))
                    .collect(),
            ),
        );
        let (cond, uncond) = both.split_at(both.len() / 2);
        let s = guidance.scale as f32;
        cond.iter()
            .zip(uncond)
            .map(|(&c, &u)| u + s * (c - u))
            .collect()
    }
}

/// Draws `n` images with `sampler`, starting noise and per-step noise from one seeded stream,
/// with the labels and guidance of `guidance` for a class-conditional model. Returns them
/// flattened `[n, 3, size, size]` in [-1, 1].
pub fn generate(
    model: Sampling,
    sampler: &dyn Sampler,
    n: usize,
    seed: u64,
    guidance: Option<&Guidance>,
) -> Vec<f32> {
    let mut denoiser = NetworkDenoiser {
        model: model.model,
        device: model.device.clone(),
        guidance,
    };
    let size = model.model.resolution();
    generate_with(
        &mut denoiser,
        model.schedule,
        model.prediction,
        sampler,
        n,
        seed,
        size,
    )
}

/// [`generate`] with any denoiser (one that also records what it sees, say).
pub fn generate_with(
    denoiser: &mut dyn Denoiser,
    schedule: &NoiseSchedule,
    prediction: Prediction,
    sampler: &dyn Sampler,
    n: usize,
    seed: u64,
    size: usize,
) -> Vec<f32> {
    let mut rng = HostRng::seed_from_u64(seed);
    let mut x = vec![0f32; n * 3 * size * size];
    fill_standard_normal(&mut rng, &mut x);
    sampler.sample(schedule, prediction, denoiser, x, n, &mut rng)
}

/// Writes images (flattened `[n, 3, size, size]` in [-1, 1]) as a square-ish PNG grid with a
/// 2-pixel border, atomically.
pub fn save_grid(images: &[f32], size: usize, path: &Path) -> Result<()> {
    let n = images.len() / (3 * size * size);
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    save_grid_with_columns(images, size, cols, path)
}

/// [`save_grid`] with `cols` images per row.
pub fn save_grid_with_columns(images: &[f32], size: usize, cols: usize, path: &Path) -> Result<()> {
    let per = 3 * size * size;
    let n = images.len() / per;
    let cols = cols.max(1);
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (w, h) = (cols * (size + pad) + pad, rows * (size + pad) + pad);
    let mut grid = image::RgbImage::new(w as u32, h as u32);
    for (i, img) in images.chunks_exact(per).enumerate() {
        let (ox, oy) = (
            pad + (i % cols) * (size + pad),
            pad + (i / cols) * (size + pad),
        );
        for y in 0..size {
            for x in 0..size {
                let px = |c: usize| {
                    let v = img[c * size * size + y * size + x];
                    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
                };
                grid.put_pixel(
                    (ox + x) as u32,
                    (oy + y) as u32,
                    image::Rgb([px(0), px(1), px(2)]),
                );
            }
        }
    }
    write_png(&grid, path)
}

/// Encodes `image` as PNG and writes it atomically.
pub fn write_png(image: &image::RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .context("encoding PNG")?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A class-conditional tiny UNet with every parameter nudged by host-drawn noise, so that
    /// its zero-initialised output layers do not hide the labels. (Host draws, and the weights
    /// through `init_network`'s lock, keep other tests' backend draws undisturbed.)
    fn conditional_model(device: &Device) -> Network {
        struct Nudge(HostRng);
        impl burn::module::ModuleMapper for Nudge {
            fn map_float<const D: usize>(
                &mut self,
                param: burn::module::Param<Tensor<D>>,
            ) -> burn::module::Param<Tensor<D>> {
                param.map(|t| {
                    let shape = t.shape();
                    let mut noise = vec![0f32; shape.num_elements()];
                    fill_standard_normal(&mut self.0, &mut noise);
                    noise.iter_mut().for_each(|v| *v *= 0.05);
                    let noise = Tensor::from_data(TensorData::new(noise, shape), &t.device());
                    t + noise
                })
            }
        }
        let config = hayate_model::NetworkConfig::UNet(hayate_model::UNetConfig {
            num_classes: 3,
            ..hayate_model::UNetConfig::tiny()
        });
        hayate_train::train::init_network(&config, 5, device)
            .map(&mut Nudge(HostRng::seed_from_u64(9)))
    }

    #[test]
    fn guidance_mixes_the_conditional_and_unconditional_predictions() {
        let device = Device::flex();
        let model = conditional_model(&device);
        let n = 2;
        let mut x = vec![0f32; n * 3 * 32 * 32];
        fill_standard_normal(&mut HostRng::seed_from_u64(1), &mut x);
        let t = [100.0, 700.0];
        let predict = |scale: f64| {
            let guidance = Guidance {
                labels: vec![0, 2],
                scale,
            };
            let mut denoiser = NetworkDenoiser {
                model: &model,
                device: device.clone(),
                guidance: Some(&guidance),
            };
            denoiser.predict(&x, &t)
        };
        let (uncond, cond, guided) = (predict(0.0), predict(1.0), predict(3.0));
        let unlabelled = NetworkDenoiser {
            model: &model,
            device: device.clone(),
            guidance: None,
        }
        .predict(&x, &t);
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        // Scale 0 is the "no label" prediction; labels change the prediction; scale 3 is
        // uncond + 3 (cond - uncond).
        assert!(max_diff(&uncond, &unlabelled) < 1e-5);
        assert!(max_diff(&uncond, &cond) > 1e-3);
        let want: Vec<f32> = uncond
            .iter()
            .zip(&cond)
            .map(|(u, c)| u + 3.0 * (c - u))
            .collect();
        assert!(
            max_diff(&guided, &want) < 1e-4,
            "{}",
            max_diff(&guided, &want)
        );
    }

    #[test]
    fn guidance_labels_cycle_or_are_drawn_in_range() {
        assert_eq!(Guidance::cycling(5, 3, 1.0).labels, vec![0, 1, 2, 0, 1]);
        let drawn = Guidance::random(200, 7, 3, 2.0);
        assert!(drawn.labels.iter().all(|&l| l < 7));
        assert!((0..7).all(|c| drawn.labels.contains(&c)));
        assert_eq!(drawn, Guidance::random(200, 7, 3, 2.0));
    }

    #[test]
    fn grid_has_the_expected_layout_and_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let size = 4;
        let mut images = vec![-1f32; 5 * 3 * size * size];
        images[0] = 1.0; // first image, red channel, top-left pixel
        save_grid(&images, size, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // 5 images: 3 columns, 2 rows.
        assert_eq!(img.dimensions(), (3 * 6 + 2, 2 * 6 + 2));
        assert_eq!(img.get_pixel(2, 2).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(3, 2).0, [0, 0, 0]);
    }
}
