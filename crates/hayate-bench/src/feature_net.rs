//! A small CIFAR-10 classifier whose penultimate features give a cheap Frechet distance: the
//! convergence benchmark's sample-quality metric, where Inception (2-3 images/s on a 2-core CPU)
//! is too slow to evaluate dozens of checkpoints. Trained once by `hayate bench feature-net` and
//! shipped as `benches/cifar10-16-features.hfn`; the benchmark reports how its distance ranks
//! checkpoints against Inception FID's.

use anyhow::{Context, Result, bail, ensure};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::activation::relu;
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::AvgPoolOptions;
use hayate_data::ImageSource;
use hayate_eval::fid::FeatureExtractor;
use hayate_schedule::HostRng;
use hayate_train::checkpoint::write_atomic;
use hayate_train::train::{init_seeded, record_bytes, record_from};
use rand::{Rng, SeedableRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Channels of each stage; a 2x2 average pool sits between stages.
const WIDTHS: [usize; 3] = [32, 64, 128];
/// 3x3 convolutions (each followed by ReLU) in each stage.
const CONVS: [usize; 3] = [2, 2, 1];
/// The layout above, recorded in the file so a changed layout cannot load old weights.
const LAYOUT: &str = "relu-cnn 32x2 64x2 128x1, global mean, linear";
const MAGIC: &[u8; 8] = b"HAYATEFN";

/// The network: the feature layers and the classifier head used to train them.
#[derive(Module, Debug)]
pub struct FeatureNet {
    convs: Vec<Conv2d>,
    head: Linear,
}

impl FeatureNet {
    /// A freshly initialised network for `classes` classes.
    pub fn new(classes: usize, device: &Device) -> Self {
        let mut convs = Vec::new();
        let mut cin = 3;
        for (&width, &count) in WIDTHS.iter().zip(&CONVS) {
            for _ in 0..count {
                convs.push(
                    Conv2dConfig::new([cin, width], [3, 3])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device),
                );
                cin = width;
            }
        }
        Self {
            convs,
            head: LinearConfig::new(cin, classes).init(device),
        }
    }

    /// Features `[n, 128]` of images `[n, 3, h, w]` in [-1, 1] (h and w divisible by 4): the
    /// last stage's activations averaged over space.
    pub fn embed(&self, images: Tensor<4>) -> Tensor<2> {
        let n = images.shape().dims::<4>()[0];
        let mut x = images;
        let mut convs = self.convs.iter();
        for (stage, &count) in CONVS.iter().enumerate() {
            if stage > 0 {
                x = avg_pool2d(x, AvgPoolOptions::new([2, 2]));
            }
            for conv in convs.by_ref().take(count) {
                x = relu(conv.forward(x));
            }
        }
        x.mean_dim(3).mean_dim(2).reshape([n, WIDTHS[2]])
    }

    /// Class logits `[n, classes]`.
    pub fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.embed(images))
    }
}

/// What the weights file says about how its network was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureNetInfo {
    /// The layers (must equal this build's).
    pub layout: String,
    /// Side of the images it was trained on.
    pub resolution: usize,
    /// Classes of its head.
    pub classes: usize,
    /// The training images (`ImageSource::describe`).
    pub trained_on: String,
    /// Training settings.
    pub training: FeatureNetTraining,
    /// Top-1 accuracy on the held-out images.
    pub test_accuracy: f64,
    /// How many held-out images that is.
    pub test_images: usize,
}

/// How to train the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureNetTraining {
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam's learning rate at the start; it follows a cosine to 0.
    pub lr: f64,
    /// Weight initialisation, shuffling and flips.
    pub seed: u64,
}

impl Default for FeatureNetTraining {
    fn default() -> Self {
        Self {
            epochs: 15,
            batch_size: 64,
            lr: 2e-3,
            seed: 0,
        }
    }
}

/// A loaded network with its description, ready to extract features.
#[derive(Debug)]
pub struct FeatureNetFile {
    /// The network (inference only).
    pub net: FeatureNet,
    /// How it was made.
    pub info: FeatureNetInfo,
    device: Device,
    sha256: [u8; 32],
}

impl FeatureNetFile {
    /// Wraps a trained network.
    pub fn new(net: FeatureNet, info: FeatureNetInfo, device: &Device) -> Result<Self> {
        let mut file = Self {
            net,
            info,
            device: device.clone(),
            sha256: [0; 32],
        };
        file.sha256 = Sha256::digest(file.to_bytes()?).into();
        Ok(file)
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = serde_json::to_vec(&self.info)?;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&record_bytes(self.net.clone().into_record())?);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        Ok(out)
    }

    /// Writes the weights file atomically (magic, JSON description, Burn record, SHA-256).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads and checks a weights file written by [`save`](Self::save).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_bytes(&bytes, device)
            .with_context(|| format!("feature network {}", path.display()))
    }

    fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        ensure!(
            bytes.len() > 12 + 32 && &bytes[..8] == MAGIC,
            "not a hayate feature-network file"
        );
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        ensure!(
            Sha256::digest(body).as_slice() == digest,
            "checksum mismatch (damaged or truncated)"
        );
        let header_len = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
        ensure!(12 + header_len <= body.len(), "header longer than the file");
        let info: FeatureNetInfo =
            serde_json::from_slice(&body[12..12 + header_len]).context("description")?;
        if info.layout != LAYOUT {
            bail!(
                "layout {:?} is not this build's {LAYOUT:?}; retrain with hayate bench feature-net",
                info.layout
            );
        }
        let record: ModuleRecord = record_from(&body[12 + header_len..], "feature network")?;
        let net = FeatureNet::new(info.classes, device).load_record(record);
        Ok(Self {
            net,
            info,
            device: device.clone(),
            sha256: Sha256::digest(bytes).into(),
        })
    }

    /// Top-1 accuracy on the first `n` images of `images`.
    pub fn accuracy(&self, images: &dyn ImageSource, n: usize) -> Result<f64> {
        accuracy(&self.net, images, n, &self.device)
    }
}

impl FeatureExtractor for FeatureNetFile {
    fn features(&self, images: Tensor<4>) -> Tensor<2> {
        self.net.embed(images)
    }

    fn dims(&self) -> usize {
        WIDTHS[2]
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn weights_sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
}

/// Images `indices` of `images` as a `[n, 3, s, s]` tensor in [-1, 1] (flipped where `flips`
/// says) and their labels.
fn load_batch(
    images: &dyn ImageSource,
    indices: &[usize],
    flips: &[bool],
    device: &Device,
) -> Result<(Tensor<4>, Tensor<1, Int>)> {
    let size = images.resolution();
    let per = 3 * size * size;
    let mut values = vec![0f32; indices.len() * per];
    let mut labels = Vec::with_capacity(indices.len());
    let mut pixels = vec![0u8; per];
    for ((&i, &flip), out) in indices.iter().zip(flips).zip(values.chunks_exact_mut(per)) {
        labels.push(images.read(i, &mut pixels)? as i64);
        hayate_data::image_to_unit_range(&pixels, size, flip, out);
    }
    let x = Tensor::from_data(
        TensorData::new(values, [indices.len(), 3, size, size]),
        device,
    );
    let y = Tensor::from_data(TensorData::new(labels, [indices.len()]), device);
    Ok((x, y))
}

fn accuracy(net: &FeatureNet, images: &dyn ImageSource, n: usize, device: &Device) -> Result<f64> {
    let n = n.min(images.len());
    ensure!(n > 0, "{} has no images to test on", images.describe());
    let mut correct = 0usize;
    for start in (0..n).step_by(256) {
        let indices: Vec<usize> = (start..n.min(start + 256)).collect();
        let (x, y) = load_batch(images, &indices, &vec![false; indices.len()], device)?;
        let predicted = net.logits(x).argmax(1).reshape([indices.len()]);
        let hits = predicted.equal(y).int().sum().into_scalar::<i64>();
        correct += hits as usize;
    }
    Ok(correct as f64 / n as f64)
}

/// Trains the network on `train` (random flips, Adam with a cosine learning rate, seeded) and
/// measures its accuracy on `test`. `progress` gets each epoch's mean loss.
pub fn train_feature_net(
    train: &dyn ImageSource,
    test: &dyn ImageSource,
    settings: &FeatureNetTraining,
    device: &Device,
    mut progress: impl FnMut(usize, f64),
) -> Result<FeatureNetFile> {
    let classes = train.classes().len();
    ensure!(classes >= 2, "{} has no class labels", train.describe());
    ensure!(
        train.resolution().is_multiple_of(4) && train.resolution() == test.resolution(),
        "the feature network needs images whose side is a multiple of 4, the same for training \
         and testing ({} and {})",
        train.resolution(),
        test.resolution()
    );
    ensure!(
        settings.batch_size > 0 && settings.epochs > 0,
        "batch size and epochs must be positive"
    );
    let ad = device.clone().autodiff();
    let mut net = init_seeded(settings.seed, &ad, |d| FeatureNet::new(classes, d));
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let mut rng = HostRng::seed_from_u64(settings.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let steps_per_epoch = train.len().div_ceil(settings.batch_size);
    let total = (settings.epochs * steps_per_epoch) as f64;
    let mut step = 0usize;
    for epoch in 0..settings.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for indices in order.chunks(settings.batch_size) {
            let flips: Vec<bool> = indices.iter().map(|_| rng.random::<bool>()).collect();
            let (x, y) = load_batch(train, indices, &flips, &ad)?;
            let loss = loss_fn.forward(net.logits(x), y);
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            let lr = settings.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total).cos());
            net = optim.step(lr, net, grads);
            step += 1;
        }
        let mean = loss_sum / steps_per_epoch as f64;
        if !mean.is_finite() {
            bail!(
                "the feature network's loss is {mean} in epoch {}",
                epoch + 1
            );
        }
        progress(epoch + 1, mean);
    }
    let net = net.valid();
    let test_accuracy = accuracy(&net, test, test.len(), device)?;
    let info = FeatureNetInfo {
        layout: LAYOUT.into(),
        resolution: train.resolution(),
        classes,
        trained_on: train.describe(),
        training: settings.clone(),
        test_accuracy,
        test_images: test.len(),
    };
    FeatureNetFile::new(net, info, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throughput::RandomImages;

    /// Two classes told apart by brightness: the network must learn them, and its file must
    /// round-trip and refuse damage.
    #[test]
    fn learns_a_separable_task_and_round_trips() {
        #[derive(Debug)]
        struct Bright(RandomImages);
        impl ImageSource for Bright {
            fn len(&self) -> usize {
                self.0.len()
            }
            fn resolution(&self) -> usize {
                self.0.resolution()
            }
            fn classes(&self) -> &[String] {
                self.0.classes()
            }
            fn read(&self, i: usize, px: &mut [u8]) -> Result<u32, hayate_data::DataError> {
                let label = self.0.read(i, px)?;
                for v in px.iter_mut() {
                    *v = *v / 2 + if label == 1 { 128 } else { 0 };
                }
                Ok(label)
            }
            fn describe(&self) -> String {
                "bright and dark noise".into()
            }
            fn name(&self) -> String {
                "bright".into()
            }
        }
        let device = Device::flex();
        let train = Bright(RandomImages::new(128, 8, 2, 1));
        let test = Bright(RandomImages::new(64, 8, 2, 2));
        let settings = FeatureNetTraining {
            epochs: 8,
            batch_size: 32,
            lr: 3e-3,
            seed: 3,
        };
        let mut losses = Vec::new();
        let file =
            train_feature_net(&train, &test, &settings, &device, |_, l| losses.push(l)).unwrap();
        assert_eq!(losses.len(), 8);
        assert!(losses[7] < 0.5 * losses[0], "{losses:?}");
        assert!(file.info.test_accuracy > 0.9, "{:?}", file.info);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.hfn");
        file.save(&path).unwrap();
        let loaded = FeatureNetFile::load(&path, &device).unwrap();
        assert_eq!(loaded.info, file.info);
        assert_eq!(loaded.weights_sha256(), file.weights_sha256());
        assert_eq!(loaded.accuracy(&test, 64).unwrap(), file.info.test_accuracy);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", FeatureNetFile::load(&path, &device).unwrap_err());
        assert!(err.contains("checksum") && err.contains("net.hfn"), "{err}");
    }
}
