//! A diffusers model through the command line: imported, sampled, fine-tuned from
//! (`train --init`, on real CIFAR-10 images) and exported again.

use crate::common;

use burn::prelude::*;
use clap::Parser;
use hayate_model::UNetConfig;
use hayate_train::checkpoint::Checkpoint;
use hayate_train::config::RunConfig;
use hayate_train::train::TrainOptions;
use std::path::{Path, PathBuf};

fn hayate(args: &[&Path]) {
    let line = std::iter::once(Path::new("hayate"))
        .chain(args.iter().copied())
        .chain([Path::new("--backend"), Path::new("cpu")]);
    let cli = hayate::cli::Cli::try_parse_from(line).unwrap();
    hayate::cli::run(cli).unwrap();
}

fn model_config(dir: &Path) -> UNetConfig {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    UNetConfig::from_diffusers(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[test]
fn a_diffusers_model_imports_samples_fine_tunes_and_exports() {
    let Some(data) = common::shared_cifar10() else {
        return;
    };
    let _serial = common::one_run_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hayate-eval/fixtures/diffusers/ddpm");
    let imported = p("ddpm.hayate");
    let s = |x: &str| PathBuf::from(x);
    hayate(&[
        &s("import"),
        &s("diffusers"),
        &fixture,
        &s("--out"),
        &imported,
    ]);
    hayate(&[
        &s("sample"),
        &s("--checkpoint"),
        &imported,
        &s("--n"),
        &s("2"),
        &s("--steps"),
        &s("2"),
        &s("--out"),
        &p("grid.png"),
    ]);
    assert!(p("grid.png").is_file());

    // Fine-tuning starts from the imported weights: after one Adam step (each weight moves by
    // about lr) the network is still the imported one to within a few lr, where a random start
    // would be ~0.2 away (the fixture's weights are N(0, 0.2^2)).
    let mut config = RunConfig::load(&p("ddpm.toml")).unwrap();
    config.train.steps = 1;
    config.train.batch_size = 4;
    config.train.checkpoint_every = 1;
    config.train.warmup_steps = 0;
    config.train.lr = 1e-3;
    config.sampling.grid_images = 2;
    config.sampling.ddim_steps = 2;
    let run = p("run");
    common::train(
        &TrainOptions {
            config,
            data_dir: Some(data),
            out: run.clone(),
            resume: false,
            init: Some(imported.clone()),
            allow_config_change: false,
            devices: Vec::new(),
            images: None,
        },
        &Device::flex(),
    )
    .unwrap();
    let before = common::parameters(&Checkpoint::load(&imported).unwrap(), "ema");
    let trained = Checkpoint::load(&Checkpoint::latest(&run).unwrap()).unwrap();
    let after = common::parameters(&trained, "model");
    assert_eq!(before.len(), after.len());
    let moved = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 0.0 && moved < 5e-3, "max weight change {moved}");

    // The fine-tuned run exports as the same diffusers network.
    hayate(&[
        &s("export"),
        &s("--checkpoint"),
        &run,
        &s("--out"),
        &p("export"),
    ]);
    assert_eq!(model_config(&p("export")), model_config(&fixture));
    assert!(p("export/diffusion_pytorch_model.safetensors").is_file());
    assert!(p("export/scheduler_config.json").is_file());
}
