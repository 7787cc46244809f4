/// The model as the samplers see it: a batch of noisy images in, the network's prediction out.
///
/// `x` holds `t.len()` images laid out one after another; the result has the same length and is
/// read as the [`Prediction`](crate::Prediction) the sampler is given. Timesteps are real numbers
/// in [0, T): DDPM, DDIM and DPM-Solver++ visit whole ones, the Karras-grid solvers
/// ([`crate::karras`]) the fractional timesteps of their sigmas, as diffusers feeds its UNets.
/// Closures of the right
/// shape implement it, so a test can pass `|x, t| ...` and the trainer a wrapper around a UNet.
pub trait Denoiser {
    /// Predicts for the images `x` at the timesteps `t`.
    fn predict(&mut self, x: &[f32], t: &[f64]) -> Vec<f32>;
}

impl<F: FnMut(&[f32], &[f64]) -> Vec<f32>> Denoiser for F {
    fn predict(&mut self, x: &[f32], t: &[f64]) -> Vec<f32> {
        self(x, t)
    }
}
