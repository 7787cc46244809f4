//! Helpers shared by the trainer's integration tests.

use hayate::config::RunConfig;
use std::path::{Path, PathBuf};

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

/// The tiny model with a small batch, `steps` steps and a checkpoint every `every`.
pub fn tiny_config(steps: u64, every: u64) -> RunConfig {
    RunConfig::parse(&format!(
        r#"
[model]
preset = "tiny"

[train]
steps = {steps}
batch_size = 8
lr = 0.001
warmup_steps = 2
ema_decay = 0.99
checkpoint_every = {every}
keep_checkpoints = 2
seed = 11

[sampling]
grid_images = 2
ddim_steps = 2
"#
    ))
    .expect("the test config is valid")
}
