//! Sampling from a trained network and writing image grids.

use crate::checkpoint::write_atomic;
use anyhow::{Context, Result};
use burn::prelude::*;
use hayate_model::UNet;
use hayate_schedule::{
    Denoiser, HostRng, NoiseSchedule, Prediction, Sampler, fill_standard_normal,
};
use rand::SeedableRng;
use std::path::Path;

/// A UNet on a device, as the host-side samplers see it.
pub struct UNetDenoiser<'a> {
    /// The network (an inference copy: no autodiff, dropout off).
    pub model: &'a UNet,
    /// Its device.
    pub device: Device,
    /// Image side length.
    pub size: usize,
}

impl Denoiser for UNetDenoiser<'_> {
    fn predict(&mut self, x: &[f32], t: &[usize]) -> Vec<f32> {
        let n = t.len();
        let x = Tensor::<4>::from_data(
            TensorData::new(x.to_vec(), [n, 3, self.size, self.size]),
            &self.device,
        );
        let t: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        let t = Tensor::<1>::from_data(TensorData::new(t, [n]), &self.device);
        self.model
            .forward(x, t)
            .into_data()
            .try_to_vec::<f32>()
            .expect("the UNet outputs f32")
    }
}

/// Draws `n` images with `sampler`, starting noise and per-step noise from one seeded stream.
/// Returns them flattened `[n, 3, size, size]` in [-1, 1].
pub fn generate(
    model: &UNet,
    device: &Device,
    schedule: &NoiseSchedule,
    prediction: Prediction,
    sampler: &dyn Sampler,
    n: usize,
    seed: u64,
) -> Vec<f32> {
    let size = 32;
    let mut denoiser = UNetDenoiser {
        model,
        device: device.clone(),
        size,
    };
    generate_with(&mut denoiser, schedule, prediction, sampler, n, seed, size)
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
