//! Helpers shared by the trainer's integration tests.

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use hayate_train::checkpoint::Checkpoint;
use hayate_train::config::RunConfig;
use hayate_train::step::DenoisingModel;
use hayate_train::train::{TrainOptions, TrainReport};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

/// Trains as `hayate train` does: with the sample grid, FID and chart hooks.
pub fn train(options: &TrainOptions, device: &Device) -> anyhow::Result<TrainReport> {
    hayate_train::train::train(options, device, hayate_eval::interval::standard())
}

/// Serialises the training runs of one test binary. Bit-exact comparisons need one run at a
/// time per process: concurrent runs interleave the backend's global generator and change the
/// CPU backend's memory layout, which can change float rounding.
pub fn one_run_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The FID Inception weights, `$HAYATE_INCEPTION_WEIGHTS` (see `scripts/convert_fid_weights.py`),
/// or `None` with a printed reason (a failure where `HAYATE_REQUIRE_FID_WEIGHTS` is set, as in CI).
pub fn inception_weights() -> Option<PathBuf> {
    match std::env::var_os("HAYATE_INCEPTION_WEIGHTS").map(PathBuf::from) {
        Some(path) if path.is_file() => Some(path),
        _ => {
            // CI provides the weights; there a missing file is a failure, not a skip.
            assert!(
                std::env::var_os("HAYATE_REQUIRE_FID_WEIGHTS").is_none(),
                "HAYATE_REQUIRE_FID_WEIGHTS is set but HAYATE_INCEPTION_WEIGHTS is not a file"
            );
            eprintln!(
                "skipped: set HAYATE_INCEPTION_WEIGHTS to the FID Inception weights \
                 (scripts/convert_fid_weights.py writes them)"
            );
            None
        }
    }
}

/// The real CIFAR-10 subset in `../shared/datasets/cifar10` (or `$HAYATE_CIFAR10_DIR`), or `None`
/// with a printed reason (a failure where `HAYATE_REQUIRE_DATA` is set, as in CI).
pub fn shared_cifar10() -> Option<PathBuf> {
    let dir = std::env::var_os("HAYATE_CIFAR10_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/cifar10")
        });
    if dir.join("data_batch_1.bin").is_file() {
        return Some(dir);
    }
    // CI sets this: there a missing data set fails the run instead of skipping in silence.
    assert!(
        std::env::var_os("HAYATE_REQUIRE_DATA").is_none(),
        "HAYATE_REQUIRE_DATA is set but there is no CIFAR-10 training file in {} \
         (set HAYATE_CIFAR10_DIR)",
        dir.display()
    );
    eprintln!(
        "skipped: no CIFAR-10 training file in {} (set HAYATE_CIFAR10_DIR)",
        dir.display()
    );
    None
}

/// The tiny model's layout made smaller still (16x16 images, 16 base channels, attention at
/// 8x8: about a sixteenth of its work per image) with a small batch, `steps` steps, a checkpoint
/// every `every` and a metrics line every 4 steps. Every block kind is still there; what these
/// tests check (resuming, checkpoints, logs, agreement across backends) does not depend on size.
pub fn tiny_config(steps: u64, every: u64) -> RunConfig {
    tiny_config_with(steps, every, "")
}

/// [`tiny_config`] with a two-block DiT of width 32 (50,028 parameters) in place of the UNet.
pub fn dit_config(steps: u64, every: u64) -> RunConfig {
    let mut config = tiny_config(steps, every);
    config.model = RunConfig::parse(
        "[model]\npreset = \"dit_tiny\"\nresolution = 16\nhidden_size = 32\ndepth = 2\n\
         num_heads = 2\n",
    )
    .unwrap()
    .model;
    config
}

/// [`tiny_config`] with extra lines in its `[diffusion]` table.
pub fn tiny_config_with(steps: u64, every: u64, diffusion: &str) -> RunConfig {
    RunConfig::parse(&format!(
        r#"
[model]
preset = "tiny"
resolution = 16
base_channels = 16
attention_resolutions = [8]

[diffusion]
{diffusion}

[train]
steps = {steps}
batch_size = 8
lr = 0.001
warmup_steps = 2
ema_decay = 0.99
checkpoint_every = {every}
log_every = 4
keep_checkpoints = 2
seed = 11

[sampling]
grid_images = 2
ddim_steps = 2
"#
    ))
    .expect("the test config is valid")
}

struct Collect(Vec<f32>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.extend(param.val().into_data().iter::<f32>());
    }
}

/// Every parameter value of `module`, in order.
pub fn module_parameters<M: Module>(module: &M) -> Vec<f32> {
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// Every parameter value of a checkpoint's `model` (training) or `ema` network, in order.
pub fn parameters(checkpoint: &Checkpoint, section: &str) -> Vec<f32> {
    let mut collect = Collect(Vec::new());
    visit_section(checkpoint, section, &mut collect);
    collect.0
}

struct Dtypes(Vec<burn::tensor::DType>);

impl ModuleVisitor for Dtypes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().dtype());
    }
}

/// The type of every parameter of a checkpoint's `model` or `ema` network, as stored.
pub fn parameter_dtypes(checkpoint: &Checkpoint, section: &str) -> Vec<burn::tensor::DType> {
    let mut dtypes = Dtypes(Vec::new());
    visit_section(checkpoint, section, &mut dtypes);
    dtypes.0
}

/// Loads a checkpoint's `model` (training) or `ema` network on the CPU and visits it.
fn visit_section<V: ModuleVisitor>(checkpoint: &Checkpoint, section: &str, visitor: &mut V) {
    let device = Device::flex();
    let config = checkpoint.meta.config.model.resolve().unwrap();
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(
        checkpoint.section(section).unwrap().to_vec(),
    ))
    .unwrap();
    if section == "ema" {
        config.init(&device).load_record(record).visit(visitor)
    } else {
        let model = DenoisingModel {
            unet: config.init(&device),
            grad_clip: 1.0,
            precision: Default::default(),
        };
        model.load_record(record).visit(visitor)
    }
}

/// `hayate train` on the CPU backend for `config` into `run`, as a child process.
pub fn hayate_train(config: &Path, run: &Path, data: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hayate"));
    cmd.args(["train", "--backend", "cpu", "--config"])
        .arg(config)
        .arg("--out")
        .arg(run)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null());
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

/// The lines of a run's metrics.jsonl whose event is `event`.
pub fn metrics(run: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["event"] == event)
        .collect()
}
