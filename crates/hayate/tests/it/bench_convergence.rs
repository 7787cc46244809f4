//! The convergence benchmark end to end: the shipped feature network tells CIFAR-10 classes
//! apart, and `hayate bench convergence` trains, scores, summarises and continues where it
//! stopped. Needs the CIFAR-10 subset; skipped with a reason without it.

use crate::common;

use burn::prelude::*;
use hayate_bench::convergence::ConvergenceReport;
use hayate_bench::feature_net::FeatureNetFile;
use hayate_data::Split;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/cifar10-16-features.hfn")
}

#[test]
fn the_shipped_feature_network_classifies_cifar10() {
    let Some(data) = common::shared_cifar10() else {
        return;
    };
    let device = Device::flex();
    let net = FeatureNetFile::load(&fixture(), &device).unwrap();
    assert_eq!(net.info.resolution, 16);
    assert_eq!(net.info.classes, 10);
    let test =
        hayate_train::dataset::cifar10_images(Some(&data), Split::Test, 16, Path::new("/none"))
            .unwrap();
    // Chance is 10%; the file records its accuracy on all 10,000 test images.
    let accuracy = net.accuracy(test.as_ref(), 1000).unwrap();
    assert!(accuracy > 0.5, "accuracy {accuracy}");
    assert!(
        (accuracy - net.info.test_accuracy).abs() < 0.05,
        "{accuracy} vs recorded {}",
        net.info.test_accuracy
    );
}

#[test]
fn the_benchmark_trains_scores_and_resumes() {
    let Some(data) = common::shared_cifar10() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let inception =
        std::env::var_os("HAYATE_INCEPTION_WEIGHTS").is_some_and(|p| Path::new(&p).is_file());
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            r#"
seeds = [3]
eval_every = 2
eval_n = 12
eval_ddim_steps = 2
feature_net = {:?}
ref_n = 64
scores = "kept"
{}
[run.model]
preset = "tiny"
resolution = 16
base_channels = 16
attention_resolutions = []

[run.train]
steps = 4
batch_size = 4
lr = 0.001
warmup_steps = 1

[run.sampling]
grid_images = 2
ddim_steps = 2

[[method]]
name = "baseline"

[[method]]
name = "CLTS+MDLRC"
[method.run.diffusion]
timestep_sampler = {{ kind = "clts", mu = 0.3, sigma = 0.2, lambda_max = 0.5, ramp_steps = 2, axis = "t_over_T" }}
[method.run.train]
momentum = {{ beta_end = 0.5, k_start = 1, k_end = 3, shape = "cosine", compensation = "noise" }}
"#,
            fixture(),
            if inception {
                "[inception]\nn = 4\nref_n = 8\n"
            } else {
                ""
            }
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let run_with = |config: &Path, extra: &[&Path]| {
        let output = Command::new(env!("CARGO_BIN_EXE_hayate"))
            .args(["bench", "convergence", "--backend", "cpu", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env("HAYATE_CACHE", dir.path().join("cache"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{text}");
        text
    };
    let run = || run_with(&config, &[Path::new("--out"), &out]);
    let first = run();
    let report: ConvergenceReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(report.runs.len(), 2);
    for r in &report.runs {
        let steps: Vec<u64> = r.scores.iter().map(|s| s.step).collect();
        assert_eq!(steps, [2, 4], "{r:?}");
        assert!(
            r.scores
                .iter()
                .all(|s| s.proxy.is_finite() && s.proxy > 0.0)
        );
    }
    // Each method's speed-up is the one its logged scores give against the baseline's (the
    // rule itself is unit-tested in convergence.rs).
    let curve = |r: &hayate_bench::convergence::RunResult| -> Vec<(u64, f64)> {
        r.scores.iter().map(|s| (s.step, s.proxy)).collect()
    };
    let baseline = curve(&report.runs[0]);
    for (method, run) in report.methods.iter().zip(&report.runs) {
        assert_eq!(method.method, run.method);
        let expected = hayate_bench::convergence::speedup(&baseline, &curve(run));
        assert_eq!(method.speedups, [expected], "{}", method.method);
    }
    assert_eq!(report.methods[1].method, "CLTS+MDLRC");
    // Two samplings of different models give different scores.
    assert_ne!(
        report.runs[0].scores[1].proxy,
        report.runs[1].scores[1].proxy
    );
    if inception {
        // Seed 3 is the first seed: both baseline checkpoints and the other's last are checked.
        let checked: Vec<bool> = report
            .runs
            .iter()
            .flat_map(|r| r.scores.iter().map(|s| s.inception.is_some()))
            .collect();
        assert_eq!(checked, [true, true, false, true]);
        assert!(report.spearman.is_some());
    }
    assert!(first.contains("| CLTS+MDLRC |"), "{first}");
    assert!(out.join("convergence.png").is_file() && out.join("table.md").is_file());

    // A second invocation reuses every finished run and gives the same figures.
    let second = run();
    assert_eq!(second.matches("done earlier").count(), 2, "{second}");
    let again: ConvergenceReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(again.runs, report.runs);

    // An interrupted run (its result missing, a checkpoint left) is continued, not restarted,
    // and scores the same.
    // Runs are kept in the cache by default, under the benchmark's name, not in --out.
    let runs = dir.path().join("cache/bench-runs/bench");
    assert!(!out.join("runs").exists());
    let run_dir = runs.join("clts-mdlrc-seed3");
    for entry in std::fs::read_dir(&run_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("scores-") {
            std::fs::remove_file(path).unwrap();
        }
    }
    std::fs::remove_file(run_dir.join("ckpt-000000004.hayate")).unwrap();
    // The benchmark's own copy of the scores (its `scores` folder) goes too.
    let kept = dir.path().join("kept");
    for entry in std::fs::read_dir(&kept).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("clts-mdlrc-seed3-") {
            std::fs::remove_file(path).unwrap();
        }
    }
    // Run a part at a time: only the baseline is selected, so the unfinished run waits.
    let part = run_with(
        &config,
        &[
            Path::new("--out"),
            &out,
            Path::new("--method"),
            Path::new("baseline"),
        ],
    );
    assert!(
        part.contains("CLTS+MDLRC seed 3: not finished, not selected"),
        "{part}"
    );
    // The report alone: nothing trained, the unfinished run listed, the finished one reported.
    let only = run_with(
        &config,
        &[Path::new("--out"), &out, Path::new("--report-only")],
    );
    assert!(
        only.contains("CLTS+MDLRC seed 3: not finished (--report-only)")
            && only.contains("baseline seed 3: done earlier")
            && !only.contains(": training "),
        "{only}"
    );
    let reported: ConvergenceReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(reported.runs, report.runs[..1]);
    let third = run();
    assert!(third.contains("resuming at 2"), "{third}");
    let resumed: ConvergenceReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let proxies = |r: &ConvergenceReport| -> Vec<f64> {
        r.runs
            .iter()
            .flat_map(|r| r.scores.iter().map(|s| s.proxy))
            .collect()
    };
    assert_eq!(proxies(&resumed), proxies(&report));

    // Another benchmark with other scoring, given the same runs folder, trains nothing and keeps
    // its scores beside the first one's.
    let other = dir.path().join("other.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&other, text.replace("eval_n = 12", "eval_n = 10")).unwrap();
    let shared = run_with(
        &other,
        &[
            Path::new("--out"),
            &dir.path().join("out2"),
            Path::new("--runs"),
            &runs,
        ],
    );
    assert!(!shared.contains("training 4 steps"), "{shared}");
    let scores = std::fs::read_dir(&run_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("scores-")
        })
        .count();
    assert_eq!(scores, 2);

    // A method renamed to the same folder name reuses its run and reports the new name.
    let renamed = dir.path().join("renamed.toml");
    std::fs::write(
        &renamed,
        text.replace(r#"name = "CLTS+MDLRC""#, r#"name = "CLTS MDLRC""#),
    )
    .unwrap();
    let out3 = dir.path().join("out3");
    let reused = run_with(
        &renamed,
        &[Path::new("--out"), &out3, Path::new("--runs"), &runs],
    );
    assert_eq!(reused.matches("done earlier").count(), 2, "{reused}");
    let named: ConvergenceReport =
        serde_json::from_str(&std::fs::read_to_string(out3.join("results.json")).unwrap()).unwrap();
    assert_eq!(named.runs[1].method, "CLTS MDLRC");
    assert_eq!(proxies(&named), proxies(&report));

    // A fresh machine (no runs in its cache) finds the finished runs in the benchmark's scores
    // folder and trains nothing.
    let fresh = run_with(
        &config,
        &[
            Path::new("--out"),
            &dir.path().join("out4"),
            Path::new("--runs"),
            &dir.path().join("empty-cache"),
        ],
    );
    assert_eq!(fresh.matches("done earlier").count(), 2, "{fresh}");
    assert!(!fresh.contains("training 4 steps"), "{fresh}");

    // Step rates: every method timed side by side in rounds, kept with the scores, and the
    // report gives each method's time to quality at its own rate.
    let out5 = dir.path().join("out5");
    let timed = run_with(
        &config,
        &[
            Path::new("--out"),
            &out5,
            Path::new("--report-only"),
            Path::new("--step-rates"),
            Path::new("--rate-steps"),
            Path::new("1"),
            Path::new("--rate-rounds"),
            Path::new("2"),
        ],
    );
    assert!(
        timed.contains("step rate, round 2/2: CLTS+MDLRC")
            && timed.contains("Step rates side by side (2 rounds of 1 timed steps each, on ")
            && timed.contains("| baseline | ")
            && !timed.contains("not measured"),
        "{timed}"
    );
    assert!(!out5.join("step-rate-runs/baseline").exists());
    let rates: hayate_bench::convergence::StepRates =
        serde_json::from_str(&std::fs::read_to_string(kept.join("step-rates.json")).unwrap())
            .unwrap();
    assert_eq!(rates.methods.len(), 2);
    for m in &rates.methods {
        assert_eq!(m.images_per_second.len(), 2, "{m:?}");
        assert!(
            m.images_per_second
                .iter()
                .all(|r| r.is_finite() && *r > 0.0)
        );
    }
    let report: ConvergenceReport =
        serde_json::from_str(&std::fs::read_to_string(out5.join("results.json")).unwrap()).unwrap();
    assert_eq!(report.rates.as_ref(), Some(&rates));
    // A later report finds them kept; a method whose settings changed since is not measured.
    let changed = dir.path().join("changed.toml");
    std::fs::write(
        &changed,
        text.replace("lambda_max = 0.5", "lambda_max = 0.6"),
    )
    .unwrap();
    let out6 = dir.path().join("out6");
    let later = run_with(
        &changed,
        &[Path::new("--out"), &out6, Path::new("--report-only")],
    );
    assert!(later.contains("Step rates side by side"), "{later}");
    let report: ConvergenceReport =
        serde_json::from_str(&std::fs::read_to_string(out6.join("results.json")).unwrap()).unwrap();
    let kept_rates: Vec<&str> = report
        .rates
        .as_ref()
        .unwrap()
        .methods
        .iter()
        .map(|m| m.method.as_str())
        .collect();
    assert_eq!(kept_rates, ["baseline"]);
}
