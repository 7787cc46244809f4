//! Images to tensors: bytes to [-1, 1], horizontal flip, and a Burn batcher.

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;

/// One training image with its augmentation decided: planar `[channels, size, size]` bytes and
/// whether to mirror it left to right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Planar bytes, channel after channel, each row-major.
    pub pixels: Vec<u8>,
    /// Mirror the image horizontally.
    pub hflip: bool,
}

/// Writes `pixels` (planar `[channels, size, size]` bytes) into `out` as floats in [-1, 1],
/// mirrored left to right when `hflip` is set.
pub fn image_to_unit_range(pixels: &[u8], size: usize, hflip: bool, out: &mut [f32]) {
    assert_eq!(
        pixels.len(),
        out.len(),
        "output buffer must match the image"
    );
    for (src_row, dst_row) in pixels.chunks_exact(size).zip(out.chunks_exact_mut(size)) {
        for (x, dst) in dst_row.iter_mut().enumerate() {
            let sx = if hflip { size - 1 - x } else { x };
            *dst = src_row[sx] as f32 / 127.5 - 1.0;
        }
    }
}

/// Stacks [`Sample`]s into `[N, channels, size, size]` tensors in [-1, 1].
#[derive(Debug, Clone, Copy)]
pub struct ImageBatcher {
    /// Channels per image.
    pub channels: usize,
    /// Side length of the square images.
    pub size: usize,
}

impl ImageBatcher {
    /// The host-side values of a batch, `[N, channels, size, size]` flattened.
    pub fn to_host(&self, items: &[Sample]) -> Vec<f32> {
        let per = self.channels * self.size * self.size;
        let mut out = vec![0f32; items.len() * per];
        for (item, dst) in items.iter().zip(out.chunks_exact_mut(per)) {
            image_to_unit_range(&item.pixels, self.size, item.hflip, dst);
        }
        out
    }
}

impl Batcher<Sample, Tensor<4>> for ImageBatcher {
    fn batch(&self, items: Vec<Sample>, device: &Device) -> Tensor<4> {
        let shape = [items.len(), self.channels, self.size, self.size];
        Tensor::from_data(TensorData::new(self.to_host(&items), shape), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_map_to_the_unit_range_and_flip_mirrors_rows() {
        let pixels: Vec<u8> = vec![0, 255, 51, 102, 0, 0, 0, 0];
        let mut out = vec![0f32; 8];
        image_to_unit_range(&pixels, 2, false, &mut out);
        assert_eq!(&out[..2], &[-1.0, 1.0]);
        assert!((out[2] - (51.0 / 127.5 - 1.0)).abs() < 1e-7);
        image_to_unit_range(&pixels, 2, true, &mut out);
        assert_eq!(&out[..2], &[1.0, -1.0]);
        assert!((out[3] - (51.0 / 127.5 - 1.0)).abs() < 1e-7);
    }

    #[test]
    fn batcher_builds_nchw_tensors() {
        let batcher = ImageBatcher {
            channels: 3,
            size: 2,
        };
        let a = Sample {
            pixels: (0..12).map(|v| v * 20).collect(),
            hflip: false,
        };
        let b = Sample {
            pixels: vec![255; 12],
            hflip: true,
        };
        let t = batcher.batch(vec![a, b], &Device::flex());
        assert_eq!(t.dims(), [2, 3, 2, 2]);
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v[0], -1.0);
        assert!(v[12..].iter().all(|&x| x == 1.0));
    }
}
