//! What the network predicts, and conversions between the three parametrisations.

use serde::{Deserialize, Serialize};

/// The network's output space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The added noise eps (DDPM).
    #[default]
    Eps,
    /// The velocity v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022).
    V,
    /// The clean image x_0.
    X0,
}

impl Prediction {
    /// The regression target for one element, given the clean value `x0`, the noise `eps` and
    /// alpha_bar_t.
    pub fn target(self, x0: f64, eps: f64, alpha_bar: f64) -> f64 {
        match self {
            Self::Eps => eps,
            Self::X0 => x0,
            Self::V => alpha_bar.sqrt() * eps - (1.0 - alpha_bar).sqrt() * x0,
        }
    }

    /// Recovers (x_0, eps) from the noisy value `x_t` and a prediction `out` of this kind.
    pub fn to_x0_eps(self, out: f64, x_t: f64, alpha_bar: f64) -> (f64, f64) {
        let (a, b) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
        match self {
            Self::Eps => ((x_t - b * out) / a, out),
            Self::X0 => (out, (x_t - a * out) / b),
            Self::V => (a * x_t - b * out, b * x_t + a * out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prediction_round_trips_through_its_target() {
        for p in [Prediction::Eps, Prediction::V, Prediction::X0] {
            for &(x0, eps, ab) in &[
                (0.3f64, -1.2f64, 0.9f64),
                (-0.9, 0.4, 0.01),
                (1.0, 2.5, 0.5),
            ] {
                let x_t = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps;
                let (x0_hat, eps_hat) = p.to_x0_eps(p.target(x0, eps, ab), x_t, ab);
                assert!((x0_hat - x0).abs() < 1e-12, "{p:?}");
                assert!((eps_hat - eps).abs() < 1e-12, "{p:?}");
            }
        }
    }
}
