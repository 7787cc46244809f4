//! Helpers shared by the trainer's integration tests.

use hayate::config::RunConfig;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Serialises the training runs of one test binary. Bit-exact comparisons need one run at a
/// time per process: concurrent runs interleave the backend's global generator and change the
/// CPU backend's memory layout, which can change float rounding.
#[allow(dead_code)] // not every test file trains more than once
pub fn one_run_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The real CIFAR-10 subset in `../shared/datasets/cifar10` (or `$HAYATE_CIFAR10_DIR`), or `None`
/// with a printed reason.
pub fn shared_cifar10() -> Option<PathBuf> {
    let dir = std::env::var_os("HAYATE_CIFAR10_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/cifar10")
        });
    if dir.join("data_batch_1.bin").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: no CIFAR-10 training file in {} (set HAYATE_CIFAR10_DIR)",
            dir.display()
        );
        None
    }
}

/// The tiny model with a small batch, `steps` steps, a checkpoint every `every` and a metrics
/// line every 4 steps.
#[allow(dead_code)] // not every test file uses both helpers
pub fn tiny_config(steps: u64, every: u64) -> RunConfig {
    tiny_config_with(steps, every, "")
}

/// [`tiny_config`] with extra lines in its `[diffusion]` table.
pub fn tiny_config_with(steps: u64, every: u64, diffusion: &str) -> RunConfig {
    RunConfig::parse(&format!(
        r#"
[model]
preset = "tiny"

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
