/// The model as the samplers see it: a batch of noisy images in, the network's prediction out.
///
/// `x` holds `t.len()` images laid out one after another; the result has the same length and is
/// read as the [`Prediction`](crate::Prediction) the sampler is given. Closures of the right
/// shape implement it, so a test can pass `|x, t| ...` and the trainer a wrapper around a UNet.
pub trait Denoiser {
    /// Predicts for the images `x` at the timesteps `t`.
    fn predict(&mut self, x: &[f32], t: &[usize]) -> Vec<f32>;
}

impl<F: FnMut(&[f32], &[usize]) -> Vec<f32>> Denoiser for F {
    fn predict(&mut self, x: &[f32], t: &[usize]) -> Vec<f32> {
        self(x, t)
    }
}
