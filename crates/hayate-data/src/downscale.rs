//! Smaller images from a source by averaging `factor` x `factor` pixel blocks: CIFAR-10 at
//! 16x16 (or 8x8) for benchmarks and quick experiments, with no resampling choices to make.

use crate::{DataError, ImageSource};
use std::sync::Arc;

/// `inner`'s images shrunk by an integer factor with a box filter (each output pixel the rounded
/// mean of a block), labels unchanged.
#[derive(Debug, Clone)]
pub struct BoxDownscaled {
    inner: Arc<dyn ImageSource>,
    factor: usize,
}

impl BoxDownscaled {
    /// `inner` at `size` x `size`; `None` unless `size` divides its resolution.
    pub fn new(inner: Arc<dyn ImageSource>, size: usize) -> Option<Self> {
        let from = inner.resolution();
        (size > 0 && from.is_multiple_of(size)).then(|| Self {
            factor: from / size,
            inner,
        })
    }
}

/// Averages `factor` x `factor` blocks of planar `[3, from, from]` bytes into `out`.
pub fn box_downscale(pixels: &[u8], from: usize, factor: usize, out: &mut [u8]) {
    let to = from / factor;
    let area = (factor * factor) as u32;
    for c in 0..3 {
        let plane = &pixels[c * from * from..(c + 1) * from * from];
        for y in 0..to {
            for x in 0..to {
                let sum: u32 = (0..factor)
                    .flat_map(|dy| {
                        let row = (y * factor + dy) * from + x * factor;
                        plane[row..row + factor].iter().map(|&v| v as u32)
                    })
                    .sum();
                // Round half up, so a flat block keeps its value exactly.
                out[c * to * to + y * to + x] = ((sum + area / 2) / area) as u8;
            }
        }
    }
}

impl ImageSource for BoxDownscaled {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn resolution(&self) -> usize {
        self.inner.resolution() / self.factor
    }

    fn classes(&self) -> &[String] {
        self.inner.classes()
    }

    fn read(&self, index: usize, pixels: &mut [u8]) -> Result<u32, DataError> {
        let from = self.inner.resolution();
        let mut full = vec![0u8; 3 * from * from];
        let label = self.inner.read(index, &mut full)?;
        box_downscale(&full, from, self.factor, pixels);
        Ok(label)
    }

    fn describe(&self) -> String {
        let s = self.resolution();
        format!(
            "{}, averaged over {f}x{f} blocks to {s}x{s}",
            self.inner.describe(),
            f = self.factor
        )
    }

    fn name(&self) -> String {
        format!("{}-{}", self.inner.name(), self.resolution())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_average_with_rounding_per_channel() {
        // 4x4, three channels: channel c holds c*100 + the pixel's index.
        let pixels: Vec<u8> = (0..3)
            .flat_map(|c| (0..16).map(move |i| (c * 100 + i) as u8))
            .collect();
        let mut out = vec![0u8; 3 * 4];
        box_downscale(&pixels, 4, 2, &mut out);
        // Top-left block of channel 0: 0, 1, 4, 5 -> mean 2.5, rounded up to 3.
        assert_eq!(&out[..4], &[3, 5, 11, 13]);
        assert_eq!(&out[4..8], &[103, 105, 111, 113]);
        let mut flat = vec![0u8; 3];
        box_downscale(&[7u8; 3 * 16], 4, 4, &mut flat);
        assert_eq!(flat, [7, 7, 7]);
    }
}
