//! FID: Inception features of two image sets, their mean and covariance in f64, and the
//! Frechet distance between the two Gaussians, with the matrix square root taken from
//! symmetric eigendecompositions in f64.

use crate::inception::{FEATURES, FidInception};
use anyhow::{Context, Result, ensure};
use burn::prelude::*;
use hayate_data::ImageSource;
use hayate_train::checkpoint::write_atomic;
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The public pytorch-fid weights (the TensorFlow 2015-12-05 Inception, ported).
pub const INCEPTION_URL: &str = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
/// The file name, which carries the first 8 hex digits of its SHA-256 (torch hub's convention).
pub const INCEPTION_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";
const INCEPTION_SHA256_PREFIX: &str = "6726825d";

/// The Inception weights to use: `explicit`, else `$HAYATE_INCEPTION_WEIGHTS`, else the cached
/// download (fetched and checked on first use).
pub fn inception_weights(explicit: Option<&Path>, cache: &Path) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("HAYATE_INCEPTION_WEIGHTS") {
        return Ok(PathBuf::from(path));
    }
    let path = cache.join(INCEPTION_FILE);
    if !path.is_file() {
        eprintln!("downloading the FID Inception weights from {INCEPTION_URL} (92 MB)");
        hayate_data::fetch(INCEPTION_URL, &path)?;
        if let Err(e) = crate::inception::check_sha256_prefix(&path, INCEPTION_SHA256_PREFIX) {
            let kept = path.with_extension("pth.bad");
            let _ = std::fs::rename(&path, &kept);
            return Err(e.context(format!("the download was kept aside as {}", kept.display())));
        }
    }
    Ok(path)
}

/// A network whose features FID-style statistics are taken of: Inception for FID, or the
/// benchmark's small CIFAR-10 classifier.
pub trait FeatureExtractor {
    /// Features `[n, dims]` of images `[n, 3, h, w]` in [-1, 1].
    fn features(&self, images: Tensor<4>) -> Tensor<2>;
    /// Feature dimensions.
    fn dims(&self) -> usize;
    /// Where the network runs.
    fn device(&self) -> &Device;
    /// SHA-256 of the weights, which keys cached reference statistics.
    fn weights_sha256(&self) -> &[u8; 32];
}

impl FeatureExtractor for FidInception {
    fn features(&self, images: Tensor<4>) -> Tensor<2> {
        FidInception::features(self, images)
    }

    fn dims(&self) -> usize {
        FEATURES
    }

    fn device(&self) -> &Device {
        FidInception::device(self)
    }

    fn weights_sha256(&self) -> &[u8; 32] {
        FidInception::weights_sha256(self)
    }
}

/// Mean and covariance of a set's features.
#[derive(Debug, Clone, PartialEq)]
pub struct Statistics {
    /// Images.
    pub n: usize,
    /// Feature means.
    pub mean: DVector<f64>,
    /// Feature covariance (unbiased, n - 1).
    pub cov: DMatrix<f64>,
    /// The features themselves less their mean (`n` rows), kept when there are fewer images
    /// than features: a distance to them then needs an n x n eigendecomposition instead of a
    /// d x d one (see [`Reference::distance`]). Not saved to statistics files.
    pub centred: Option<DMatrix<f64>>,
}

/// Running sums for [`Statistics`], in f64. Features are taken relative to the first image's,
/// which keeps the sums of products from cancelling.
#[derive(Debug, Clone)]
pub struct Accumulator {
    n: usize,
    shift: Option<DVector<f64>>,
    sum: DVector<f64>,
    outer: DMatrix<f64>,
    /// The shifted features, row-major, while fewer than `dims` images have been added.
    rows: Option<Vec<f64>>,
}

impl Accumulator {
    /// Empty sums for `dims`-dimensional features.
    pub fn new(dims: usize) -> Self {
        Self {
            n: 0,
            shift: None,
            sum: DVector::zeros(dims),
            outer: DMatrix::zeros(dims, dims),
            rows: Some(Vec::new()),
        }
    }

    /// Images added so far.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True before the first image.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Adds a batch of features, row-major `[rows, dims]`.
    pub fn add(&mut self, features: &[f32]) {
        let dims = self.sum.len();
        let rows = features.len() / dims;
        if rows == 0 {
            return;
        }
        let shift = self
            .shift
            .get_or_insert_with(|| {
                DVector::from_iterator(dims, features[..dims].iter().map(|&v| v as f64))
            })
            .clone();
        let x = DMatrix::from_fn(rows, dims, |r, c| features[r * dims + c] as f64 - shift[c]);
        for r in 0..rows {
            self.sum += x.row(r).transpose();
        }
        self.outer.gemm_tr(1.0, &x, &x, 1.0);
        self.n += rows;
        if self.n >= dims {
            self.rows = None;
        } else if let Some(kept) = &mut self.rows {
            // x is column-major: its transpose's storage is x row by row.
            kept.extend(x.transpose().iter().copied());
        }
    }

    /// The statistics of everything added (needs two images or more).
    pub fn finish(self) -> Result<Statistics> {
        ensure!(self.n >= 2, "FID needs at least 2 images, got {}", self.n);
        let n = self.n as f64;
        let centred_mean = &self.sum / n;
        let cov = (&self.outer - &centred_mean * centred_mean.transpose() * n) / (n - 1.0);
        let dims = centred_mean.len();
        let centred = self.rows.map(|rows| {
            DMatrix::from_row_slice(self.n, dims, &rows)
                - DMatrix::from_fn(self.n, dims, |_, c| centred_mean[c])
        });
        let mean = centred_mean + self.shift.expect("set with the first image");
        Ok(Statistics {
            n: self.n,
            mean,
            cov,
            centred,
        })
    }
}

/// The eigenvalues of a symmetric positive semi-definite matrix with those at rounding level
/// (below max * d * 10 eps, negative ones included) set to 0: with fewer images than features
/// the covariance is singular, and the square roots of a few thousand rounding-level
/// eigenvalues would otherwise add up to a visible error.
fn clean_eigenvalues(values: &DVector<f64>) -> DVector<f64> {
    let top = values.iter().fold(0f64, |m, &l| m.max(l));
    let floor = top * values.len() as f64 * 10.0 * f64::EPSILON;
    values.map(|l| if l > floor { l } else { 0.0 })
}

/// A symmetric positive semi-definite matrix's square root.
fn symmetric_sqrt(m: &DMatrix<f64>) -> DMatrix<f64> {
    let eig = SymmetricEigen::new(m.clone());
    let roots = clean_eigenvalues(&eig.eigenvalues).map(f64::sqrt);
    // V diag(roots) V^T, scaling V's columns rather than multiplying by a dense diagonal.
    let mut scaled = eig.eigenvectors.clone();
    for (mut column, root) in scaled.column_iter_mut().zip(roots.iter()) {
        column *= *root;
    }
    scaled * eig.eigenvectors.transpose()
}

/// The Frechet distance |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). The trace of
/// (S_a S_b)^(1/2) is that of (A S_b A)^(1/2) with A = S_a^(1/2), a symmetric positive
/// semi-definite matrix, so the trace comes from symmetric eigenvalues; for a `b` of fewer
/// images than features, from those of an n x n matrix instead (see [`Reference::distance`]).
pub fn frechet_distance(a: &Statistics, b: &Statistics) -> f64 {
    Reference::new(a.clone()).distance(b)
}

/// Statistics compared with many others. Against a set of fewer images than features the
/// distance needs no square root of these; otherwise the square root of their covariance (an
/// eigendecomposition, about 10 s for Inception's 2048 features on a 2-core CPU) is taken once,
/// at the first such distance, and each distance then needs only eigenvalues (about 4 s).
#[derive(Debug, Clone)]
pub struct Reference {
    /// The statistics.
    pub stats: Statistics,
    root: std::sync::OnceLock<DMatrix<f64>>,
}

impl Reference {
    /// Statistics to compare others with.
    pub fn new(stats: Statistics) -> Self {
        Self {
            stats,
            root: std::sync::OnceLock::new(),
        }
    }

    /// The Frechet distance between these statistics and `b` (see [`frechet_distance`]).
    ///
    /// Tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of A S_b A with
    /// A = S_a^(1/2). When `b` kept its centred features X (n rows, n < d), S_b = X^T X / (n - 1),
    /// and the nonzero eigenvalues of A X^T X A / (n - 1) are those of X S_a X^T / (n - 1): an
    /// n x n matrix, and no square root of S_a at all.
    pub fn distance(&self, b: &Statistics) -> f64 {
        let a = &self.stats;
        let diff = &a.mean - &b.mean;
        let middle = match &b.centred {
            Some(x) => x * &a.cov * x.transpose() / (b.n as f64 - 1.0),
            None => {
                let root = self.root.get_or_init(|| symmetric_sqrt(&a.cov));
                root * &b.cov * root
            }
        };
        let middle = (&middle + middle.transpose()) * 0.5;
        // Only the eigenvalues: without the eigenvectors the decomposition is 2-3x faster.
        let trace_root: f64 = clean_eigenvalues(&middle.symmetric_eigenvalues())
            .iter()
            .map(|l| l.sqrt())
            .sum();
        diff.dot(&diff) + a.cov.trace() + b.cov.trace() - 2.0 * trace_root
    }
}

const STATS_MAGIC: &[u8; 8] = b"HAYATEFS";

impl Statistics {
    /// Writes the statistics (f64, little-endian, SHA-256 at the end), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let d = self.mean.len();
        let mut out = Vec::with_capacity(24 + 8 * (d + d * d) + 32);
        out.extend_from_slice(STATS_MAGIC);
        out.extend_from_slice(&(self.n as u64).to_le_bytes());
        out.extend_from_slice(&(d as u64).to_le_bytes());
        for v in self.mean.iter().chain(self.cov.iter()) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write_atomic(path, &out)
    }

    /// Reads statistics written by [`save`](Self::save), checking their checksum.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bad = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
        if bytes.len() < 24 + 32 || &bytes[..8] != STATS_MAGIC {
            return Err(bad("not a hayate FID statistics file"));
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != digest {
            return Err(bad("checksum mismatch"));
        }
        let word = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let (n, d) = (word(8) as usize, word(16) as usize);
        let expected = d
            .checked_mul(d)
            .and_then(|dd| dd.checked_add(d))
            .and_then(|k| k.checked_mul(8))
            .and_then(|k| k.checked_add(24));
        if expected != Some(body.len()) {
            return Err(bad("length does not match its dimensions"));
        }
        let values: Vec<f64> = body[24..]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(Self {
            n,
            mean: DVector::from_column_slice(&values[..d]),
            cov: DMatrix::from_column_slice(d, d, &values[d..]),
            centred: None,
        })
    }
}

/// Features `[b, dims]` (flattened, on the host) of images `[b, 3, h, w]` in [-1, 1].
pub fn features_of(
    net: &dyn FeatureExtractor,
    values: Vec<f32>,
    shape: [usize; 4],
) -> Result<Vec<f32>> {
    let images = Tensor::<4>::from_data(TensorData::new(values, shape), net.device());
    net.features(images)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading features: {e:?}"))
}

/// Features of `batches` of images (`[b, 3, h, w]` flattened, in [-1, 1]), summed into
/// statistics. With `total` (the images expected), prints progress as it goes.
pub fn statistics_of(
    net: &dyn FeatureExtractor,
    batches: impl Iterator<Item = Result<(Vec<f32>, [usize; 4])>>,
    total: Option<usize>,
) -> Result<Statistics> {
    let mut acc = Accumulator::new(net.dims());
    let mut progress = total.map(|n| hayate_train::progress::Countdown::new("images", n));
    for batch in batches {
        let (values, shape) = batch?;
        acc.add(&features_of(net, values, shape)?);
        if let Some(line) = progress.as_mut().and_then(|p| p.update(acc.len())) {
            eprintln!("  features: {line}");
        }
    }
    acc.finish()
}

/// Statistics of the first `n` of `images`, cached in `cache` under their name, n and a hash of
/// those images' bytes and of the weights file, so each reference set is computed once.
pub fn dataset_statistics(
    net: &dyn FeatureExtractor,
    images: &dyn ImageSource,
    n: usize,
    batch: usize,
    cache: &Path,
) -> Result<Statistics> {
    ensure!(
        n <= images.len(),
        "{} has {} images, fewer than the {n} asked for",
        images.describe(),
        images.len()
    );
    let size = images.resolution();
    let per = 3 * size * size;
    let mut pixels = vec![0u8; per];
    let mut hasher = Sha256::new();
    hasher.update(b"hayate-fid-v1");
    hasher.update(net.weights_sha256());
    for i in 0..n {
        images.read(i, &mut pixels)?;
        hasher.update(&pixels);
    }
    let key: String = hasher.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = cache
        .join("fid")
        .join(format!("{}-{n}-{key}.stats", images.name()));
    if let Ok(stats) = Statistics::load(&path) {
        eprintln!("reference statistics from {}", path.display());
        return Ok(stats);
    }
    eprintln!(
        "computing reference statistics of {n} images: {}",
        images.describe()
    );
    let batches = (0..n).step_by(batch).map(|start| {
        let count = batch.min(n - start);
        let mut values = vec![0f32; count * per];
        let mut pixels = vec![0u8; per];
        for (k, out) in values.chunks_exact_mut(per).enumerate() {
            // Read (and checksummed) once above; a failure now means the file changed.
            images.read(start + k, &mut pixels)?;
            hayate_data::image_to_unit_range(&pixels, size, false, out);
        }
        Ok((values, [count, 3, size, size]))
    });
    let stats = statistics_of(net, batches, Some(n))?;
    stats.save(&path)?;
    Ok(stats)
}

/// `n` images drawn by `model` with `sampler`, `batch` at a time, each batch from its own seed
/// derived from `seed` (so the batch size does not decide which noise is drawn first), rounded
/// to 8-bit levels: `[b, 3, size, size]` batches. A class-conditional model draws labels
/// uniformly (from the same seeds) and is guided with `cfg_scale`.
pub fn sample_batches<'a>(
    model: crate::sample::Sampling<'a>,
    sampler: &'a dyn hayate_schedule::Sampler,
    n: usize,
    batch: usize,
    seed: u64,
    cfg_scale: f64,
) -> impl Iterator<Item = (Vec<f32>, [usize; 4])> + 'a {
    let size = model.model.resolution();
    let classes = model.model.num_classes();
    (0..n.div_ceil(batch)).map(move |i| {
        let count = batch.min(n - i * batch);
        let batch_seed = crate::sample::batch_seed(seed, i);
        let guidance = (classes > 0)
            .then(|| crate::sample::Guidance::random(count, classes, batch_seed, cfg_scale));
        let mut values =
            crate::sample::generate(model, sampler, count, batch_seed, guidance.as_ref());
        quantize(&mut values);
        (values, [count, 3, size, size])
    })
}

/// FID during training: the network and the reference statistics, loaded once.
pub struct FidEvaluator {
    net: FidInception,
    reference: Reference,
    config: hayate_train::config::EvalConfig,
}

impl FidEvaluator {
    /// Loads the network and the reference statistics (the first `fid_n` training images,
    /// cached).
    pub fn new(
        config: &hayate_train::config::EvalConfig,
        images: &dyn ImageSource,
        device: &Device,
        cache: &Path,
    ) -> Result<Self> {
        let weights = inception_weights(config.inception_weights.as_deref(), cache)?;
        let net = FidInception::load(&weights, device)?;
        let reference = Reference::new(dataset_statistics(
            &net,
            images,
            config.fid_n,
            config.fid_batch,
            cache,
        )?);
        Ok(Self {
            net,
            reference,
            config: config.clone(),
        })
    }

    /// The FID of `model`'s samples (`eval`'s deterministic sampler, seed 0: the same noise every
    /// time).
    pub fn evaluate(
        &self,
        model: &hayate_model::Network,
        schedule: &hayate_schedule::NoiseSchedule,
        prediction: hayate_schedule::Prediction,
        cfg_scale: f64,
    ) -> Result<f64> {
        let sampler = self.config.sampler().build();
        let model = crate::sample::Sampling {
            model,
            device: self.net.device(),
            schedule,
            prediction,
        };
        let batches = sample_batches(
            model,
            sampler.as_ref(),
            self.config.fid_n,
            self.config.fid_batch,
            0,
            cfg_scale,
        );
        let stats = statistics_of(&self.net, batches.map(Ok), Some(self.config.fid_n))?;
        Ok(self.reference.distance(&stats))
    }
}

/// Rounds images in [-1, 1] to 8-bit levels, as saving them as PNG would: FID is defined on
/// image files.
pub fn quantize(images: &mut [f32]) {
    for v in images {
        *v = ((*v).clamp(-1.0, 1.0) * 127.5 + 127.5).round() / 127.5 - 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Features drawn from a correlated Gaussian (seeded), `[n, d]`.
    fn features(n: usize, d: usize, seed: u64, offset: f32) -> Vec<f32> {
        let mut rng = <hayate_schedule::HostRng as rand::SeedableRng>::seed_from_u64(seed);
        let mut z = vec![0f32; n * d];
        hayate_schedule::fill_standard_normal(&mut rng, &mut z);
        // Mix neighbouring coordinates so the covariance is not diagonal.
        (0..n * d)
            .map(|i| {
                let (r, c) = (i / d, i % d);
                z[i] + 0.5 * z[r * d + (c + 1) % d] + offset
            })
            .collect()
    }

    fn stats(values: &[f32], d: usize) -> Statistics {
        let mut acc = Accumulator::new(d);
        for chunk in values.chunks(7 * d) {
            acc.add(chunk);
        }
        acc.finish().unwrap()
    }

    #[test]
    fn statistics_match_a_direct_computation() {
        let (n, d) = (50, 4);
        let x = features(n, d, 1, 3.0);
        let s = stats(&x, d);
        assert_eq!(s.n, n);
        for i in 0..d {
            let mean: f64 = (0..n).map(|r| x[r * d + i] as f64).sum::<f64>() / n as f64;
            assert!((s.mean[i] - mean).abs() < 1e-12);
            for j in 0..d {
                let mj: f64 = (0..n).map(|r| x[r * d + j] as f64).sum::<f64>() / n as f64;
                let cov: f64 = (0..n)
                    .map(|r| (x[r * d + i] as f64 - mean) * (x[r * d + j] as f64 - mj))
                    .sum::<f64>()
                    / (n - 1) as f64;
                assert!((s.cov[(i, j)] - cov).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift() {
        let d = 64;
        let a = stats(&features(500, d, 2, 0.0), d);
        assert!(
            frechet_distance(&a, &a).abs() < 1e-6,
            "{}",
            frechet_distance(&a, &a)
        );
        // A mean shift of 0.1 in every coordinate adds |shift|^2 = d * 0.01 and nothing else.
        let mut shifted = a.clone();
        shifted.mean.add_scalar_mut(0.1);
        let fid = frechet_distance(&a, &shifted);
        assert!((fid - d as f64 * 0.01).abs() < 1e-6, "{fid}");
        // Two samples of one distribution are closer than samples of two different ones.
        let b = stats(&features(500, d, 3, 0.0), d);
        let c = stats(&features(500, d, 4, 0.3), d);
        assert!(frechet_distance(&a, &b) < frechet_distance(&a, &c));
        // Symmetric.
        let (ab, ba) = (frechet_distance(&a, &b), frechet_distance(&b, &a));
        assert!((ab - ba).abs() < 1e-8 * ab.max(1.0), "{ab} {ba}");
    }

    #[test]
    fn fewer_images_than_features_still_give_zero_with_themselves() {
        // 10 images of 300 features: a covariance of rank 9.
        let d = 300;
        let a = stats(&features(10, d, 6, 0.0), d);
        let fid = frechet_distance(&a, &a);
        assert!(fid.abs() < 1e-6, "{fid}");
    }

    #[test]
    fn the_small_set_shortcut_gives_the_full_distance() {
        // 12 and 40 images of 60 features: both keep their centred features.
        let d = 60;
        let (a, b) = (
            stats(&features(40, d, 7, 0.0), d),
            stats(&features(12, d, 8, 0.2), d),
        );
        assert_eq!(a.centred.as_ref().map(|x| x.shape()), Some((40, d)));
        let full = |s: &Statistics| Statistics {
            centred: None,
            ..s.clone()
        };
        for (x, y) in [(&a, &b), (&b, &a), (&a, &a)] {
            let (short, long) = (frechet_distance(x, y), frechet_distance(x, &full(y)));
            assert!(
                (short - long).abs() < 1e-9 * long.max(1.0),
                "{short} vs {long}"
            );
        }
        // From `d` images on the features are not kept.
        assert!(stats(&features(d, d, 9, 0.0), d).centred.is_none());
    }

    #[test]
    fn the_trace_term_matches_a_closed_form() {
        // Diagonal covariances: Tr((S_a S_b)^(1/2)) = sum sqrt(a_i b_i).
        let d = 3;
        let diag = |v: [f64; 3]| Statistics {
            n: 10,
            mean: DVector::zeros(d),
            cov: DMatrix::from_diagonal(&DVector::from_row_slice(&v)),
            centred: None,
        };
        let (a, b) = (diag([1.0, 4.0, 9.0]), diag([4.0, 1.0, 1.0]));
        let want = 14.0 + 6.0 - 2.0 * (2.0 + 2.0 + 3.0);
        assert!((frechet_distance(&a, &b) - want).abs() < 1e-12);
    }

    #[test]
    fn statistics_files_round_trip_and_reject_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.stats");
        let s = stats(&features(20, 5, 5, 1.0), 5);
        s.save(&path).unwrap();
        assert_eq!(Statistics::load(&path).unwrap(), s);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = Statistics::load(&path).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn quantizing_rounds_to_eight_bit_levels() {
        let mut x = vec![-1.5, -1.0, 0.0, 0.3, 1.0];
        quantize(&mut x);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[1], -1.0);
        // 0 maps to level 127.5, rounded to 128.
        assert!((x[2] - (128.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert!(((x[3] + 1.0) * 127.5 - ((0.3f32 + 1.0) * 127.5).round()).abs() < 1e-4);
        assert_eq!(x[4], 1.0);
    }
}
