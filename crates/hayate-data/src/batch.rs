//! Image bytes to floats in [-1, 1], with the horizontal flip.

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
}
