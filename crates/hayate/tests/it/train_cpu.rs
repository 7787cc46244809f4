//! End to end on the CPU backend with real CIFAR-10 images: the loss is finite and falls,
//! checkpoints and grids are written, and a resumed run matches one trained straight through.

use crate::common;

use burn::prelude::*;
use clap::Parser;
use common::train;
use common::{metrics, parameters};
use hayate_schedule::{Compensation, MomentumDecay, MomentumShape};
use hayate_train::checkpoint::Checkpoint;
use hayate_train::config::RunConfig;
use hayate_train::train::TrainOptions;

fn options(
    config: hayate_train::config::RunConfig,
    out: &std::path::Path,
    data: &std::path::Path,
    resume: bool,
) -> TrainOptions {
    TrainOptions {
        config,
        data_dir: Some(data.to_path_buf()),
        out: out.to_path_buf(),
        resume,
        init: None,
        allow_config_change: false,
        devices: Vec::new(),
        images: None,
    }
}

/// The shared CIFAR-10 folder (or `None`, with the reason printed), this binary's training lock
/// and a scratch folder.
fn setup() -> Option<(
    std::path::PathBuf,
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
)> {
    let data = common::shared_cifar10()?;
    Some((
        data,
        common::one_run_at_a_time(),
        tempfile::tempdir().unwrap(),
    ))
}

#[test]
fn trains_checkpoints_and_resumes_exactly() {
    let Some((data, _serial, dir)) = setup() else {
        return;
    };
    let device = Device::flex();

    // Straight through: 24 steps, a checkpoint every 8.
    let straight = dir.path().join("straight");
    let report = train(
        &options(common::tiny_config(24, 8), &straight, &data, false),
        &device,
    )
    .unwrap();
    assert_eq!(report.step, 24);
    assert_eq!(report.interval_losses.len(), 3);
    assert!(
        report.interval_losses.iter().all(|l| l.is_finite()),
        "{:?}",
        report.interval_losses
    );
    let (first, last) = (report.interval_losses[0], report.interval_losses[2]);
    assert!(
        last < first,
        "loss did not fall: {:?}",
        report.interval_losses
    );
    // Only the newest two checkpoints are kept.
    let kept: Vec<_> = std::fs::read_dir(&straight)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ckpt-"))
        .collect();
    assert_eq!(kept.len(), 2);
    assert!(straight.join("samples/step-000000024.png").is_file());
    assert!(straight.join("config.toml").is_file());
    let checkpoints = metrics(&straight, "checkpoint");
    let steps: Vec<_> = checkpoints.iter().map(|l| l["step"].as_u64()).collect();
    assert_eq!(steps, [Some(8), Some(16), Some(24)]);
    for chart in ["loss", "lr", "beta1", "mean_t"] {
        assert!(straight.join(format!("plots/{chart}.png")).is_file());
    }

    // Stopped at 16, then resumed to 24. The stopped run had logged two more steps before it
    // died; the resumed run must forget them.
    let resumed = dir.path().join("resumed");
    train(
        &options(common::tiny_config(16, 8), &resumed, &data, false),
        &device,
    )
    .unwrap();
    let mut log = std::fs::read_to_string(resumed.join("metrics.jsonl")).unwrap();
    log.push_str("{\"event\":\"log\",\"step\":20,\"loss\":9.0}\n");
    std::fs::write(resumed.join("metrics.jsonl"), log).unwrap();
    let again = train(
        &options(common::tiny_config(24, 8), &resumed, &data, true),
        &device,
    )
    .unwrap();
    assert_eq!(again.step, 24);
    assert_eq!(again.interval_losses.len(), 1);
    assert_eq!(again.interval_losses[0], report.interval_losses[2]);
    // The log lines (loss, lr, beta1, mean t/T every 4 steps) match the straight run's exactly.
    let logged = metrics(&resumed, "log");
    assert_eq!(logged.len(), 6);
    assert_eq!(logged, metrics(&straight, "log"));

    let a = Checkpoint::load(&Checkpoint::latest(&straight).unwrap()).unwrap();
    let b = Checkpoint::load(&Checkpoint::latest(&resumed).unwrap()).unwrap();
    assert_eq!(a.step(), 24);
    assert_eq!(
        a.meta.source, b.meta.source,
        "RNG streams and data order differ"
    );
    // Records carry parameter ids, which differ between processes' runs, so compare values. The
    // weights match bit for bit only if the optimiser's moments were restored too: the eight
    // steps after the resume all depend on them.
    for section in ["model", "ema"] {
        let (va, vb) = (parameters(&a, section), parameters(&b, section));
        assert_eq!(va.len(), 177_427);
        assert!(
            va == vb,
            "{section} differs between the straight and the resumed run"
        );
    }
    assert!(!a.section("optimizer").unwrap().is_empty());
    // The training time carries over the resume: the resumed run's checkpoint at 24 counts the
    // first run's 16 steps too, and each checkpoint line logs the running total.
    let seconds: Vec<f64> = metrics(&resumed, "checkpoint")
        .iter()
        .map(|l| l["train_seconds"].as_f64().unwrap())
        .collect();
    assert_eq!(seconds.len(), 3);
    assert!(
        seconds[0] > 0.0 && seconds[0] < seconds[1] && seconds[1] < seconds[2],
        "{seconds:?}"
    );
    assert_eq!(b.meta.train_seconds, seconds[2]);

    // A run folder with checkpoints is not overwritten by accident.
    let err = train(
        &options(common::tiny_config(24, 8), &straight, &data, false),
        &device,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
    // Resuming with a different model is refused, naming the section.
    let mut wider = common::tiny_config(32, 8);
    wider.model.base_channels = Some(64);
    let err = train(&options(wider, &straight, &data, true), &device).unwrap_err();
    assert!(format!("{err:#}").contains("model"), "{err:#}");

    // `hayate sample` writes a grid from the run folder.
    let grid = dir.path().join("grid.png");
    let line = [
        "hayate",
        "sample",
        "--n",
        "4",
        "--steps",
        "3",
        "--seed",
        "1",
        "--backend",
        "cpu",
    ];
    let line = line.iter().map(Into::into).chain([
        "--checkpoint".into(),
        straight.clone().into_os_string(),
        "--out".into(),
        grid.clone().into_os_string(),
    ]);
    let cli = hayate::cli::Cli::try_parse_from(line.collect::<Vec<std::ffi::OsString>>()).unwrap();
    hayate::cli::run(cli).unwrap();
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (2 * 18 + 2, 2 * 18 + 2));
}

/// The error of a run into `out` reading data from `data`, as text.
fn failure(out: &std::path::Path, data: &std::path::Path) -> String {
    let options = options(common::tiny_config(2, 1), out, data, false);
    format!("{:#}", train(&options, &Device::flex()).unwrap_err())
}

#[test]
fn bf16_training_tracks_f32_and_checkpoints_hold_f32_weights() {
    use hayate_model::Precision;
    let Some((data, _serial, dir)) = setup() else {
        return;
    };
    let device = Device::flex();
    let run = |precision: Precision| {
        let mut config = common::tiny_config(8, 4);
        config.train.precision = precision;
        let out = dir.path().join(precision.name());
        let report = train(&options(config, &out, &data, false), &device).unwrap();
        (report, out)
    };
    let (f32_run, _) = run(Precision::F32);
    let (bf16_run, out) = run(Precision::Bf16);
    // The same batches, timesteps and noise: bf16's 8-bit mantissa moves each interval's mean
    // loss by well under 5% over these steps (about 1% seen), while a forward that was not
    // cast at all would match exactly.
    let (a, b) = (&f32_run.interval_losses, &bf16_run.interval_losses);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(b.len(), 2, "{b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!(
            y.is_finite() && (x - y).abs() <= 0.05 * x.abs(),
            "f32 {a:?}, bf16 {b:?}"
        );
    }
    assert_ne!(a, b, "the bf16 run computed exactly as f32");
    // The weights and their EMA stay f32 (the gradients too: Adam adds them to f32 weights).
    let checkpoint = Checkpoint::load(&bf16_run.checkpoint.unwrap()).unwrap();
    for section in ["model", "ema"] {
        let dtypes = common::parameter_dtypes(&checkpoint, section);
        assert!(!dtypes.is_empty());
        assert!(
            dtypes.iter().all(|d| *d == burn::tensor::DType::F32),
            "{section}: {dtypes:?}"
        );
    }
    // The run's config says how it trained, so a resume keeps it.
    let written = RunConfig::load(&hayate_train::run_dir::config_path(&out)).unwrap();
    assert_eq!(written.train.precision, Precision::Bf16);
}

#[test]
fn unusable_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the run folder should be: its subfolders cannot be created.
    let taken = dir.path().join("taken");
    std::fs::write(&taken, b"not a folder").unwrap();
    let msg = failure(&taken, dir.path());
    assert!(
        msg.contains("cannot create run folder") && msg.contains("taken"),
        "{msg}"
    );
    let msg = failure(&dir.path().join("run"), &dir.path().join("no-such-cifar"));
    assert!(
        msg.contains("no-such-cifar") && msg.contains("data_batch_1.bin"),
        "{msg}"
    );
}

/// Resume passes the true global step to the timestep sampler and the optimiser: with the CLTS
/// curriculum, Min-SNR weights and a decaying beta1 with lr compensation (MDLRC), a run stopped
/// at step 8 and resumed to 24 matches one trained straight through; the logged beta1 and lr
/// follow their formulas, and the mean t/T falls as the curriculum moves mass to t = 0.3 T.
#[test]
fn curriculum_runs_resume_exactly_and_log_the_drawn_t() {
    let Some((data, _serial, dir)) = setup() else {
        return;
    };
    let device = Device::flex();
    let diffusion = r#"
timestep_sampler = { kind = "clts", mu = 0.3, sigma = 0.05, lambda_max = 1.0, ramp_steps = 8 }
loss_weight = { kind = "min_snr", gamma = 5.0 }
"#;
    let config = |steps| {
        let mut config = common::tiny_config_with(steps, 8, diffusion);
        config.train.momentum = Some(MomentumDecay {
            beta_end: 0.5,
            k_start: 4,
            k_end: 12,
            shape: MomentumShape::Cosine,
            compensation: Compensation::Noise,
        });
        config
    };
    let straight = dir.path().join("straight");
    train(&options(config(24), &straight, &data, false), &device).unwrap();
    let resumed = dir.path().join("resumed");
    train(&options(config(8), &resumed, &data, false), &device).unwrap();
    train(&options(config(24), &resumed, &data, true), &device).unwrap();
    let a = Checkpoint::load(&Checkpoint::latest(&straight).unwrap()).unwrap();
    let b = Checkpoint::load(&Checkpoint::latest(&resumed).unwrap()).unwrap();
    assert!(parameters(&a, "model") == parameters(&b, "model"));

    // beta1 and the compensated lr of the last update of each log window (steps 4, 8, ..., 24).
    let logged = metrics(&straight, "log");
    assert_eq!(logged, metrics(&resumed, "log"));
    let schedule = config(24).train.momentum_schedule();
    for (line, step) in logged.iter().zip((4u64..=24).step_by(4)) {
        assert_eq!(line["step"].as_u64(), Some(step));
        assert_eq!(line["beta1"].as_f64().unwrap(), schedule.beta1(step - 1));
        let lr = 0.001 * schedule.lr_factor(step - 1);
        assert!((line["lr"].as_f64().unwrap() - lr).abs() < 1e-12, "{line}");
    }
    assert_eq!(logged[5]["beta1"].as_f64().unwrap(), 0.5);
    let mean_t: Vec<f64> = logged
        .iter()
        .map(|l| l["mean_t_over_T"].as_f64().unwrap())
        .collect();
    // Steps 1-8 ramp lambda from 0 to 1 (mean t/T near 0.5, then 0.35); afterwards all draws
    // fall in the band around 0.3.
    assert_eq!(mean_t.len(), 6);
    assert!(mean_t[5] < mean_t[0], "{mean_t:?}");
    assert!((mean_t[4] + mean_t[5] - 0.6).abs() < 0.1, "{mean_t:?}");
}

/// Resuming with a config that changes the run is refused with the changed settings named;
/// with consent it goes ahead, and a run whose loss stops being finite stops at that step,
/// naming it and the last good checkpoint, which stays intact.
#[test]
fn config_changes_need_consent_and_a_diverging_run_stops_at_its_first_bad_step() {
    let Some((data, _serial, dir)) = setup() else {
        return;
    };
    let device = Device::flex();
    let run = dir.path().join("run");
    train(
        &options(common::tiny_config(4, 4), &run, &data, false),
        &device,
    )
    .unwrap();

    let mut diverging = common::tiny_config(12, 4);
    diverging.train.lr = 1e30;
    let refused = train(&options(diverging.clone(), &run, &data, true), &device).unwrap_err();
    let msg = format!("{refused:#}");
    assert!(
        msg.contains("train.lr: 0.001 -> 1e+30") && msg.contains("--allow-config-change"),
        "{msg}"
    );

    let mut consenting = options(diverging, &run, &data, true);
    consenting.allow_config_change = true;
    let stopped = format!("{:#}", train(&consenting, &device).unwrap_err());
    assert!(
        stopped.contains("the loss at step") && stopped.contains("ckpt-000000004.hayate"),
        "{stopped}"
    );
    let step: u64 = stopped
        .split("the loss at step ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((5..=8).contains(&step), "{stopped}");
    eprintln!("{stopped}");
    // Nothing was written after the bad step: the last good checkpoint is the newest and loads.
    let (path, kept) = Checkpoint::load_newest_valid(&run).unwrap();
    assert!(path.ends_with("ckpt-000000004.hayate"));
    assert_eq!(kept.step(), 4);
    assert!(parameters(&kept, "model").iter().all(|v| v.is_finite()));
    let changes = metrics(&run, "config_change");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["step"], 4);
}

/// Resume is bit-exact for every timestep sampler (uniform and CLTS are covered above), the
/// adaptive curriculum included, the other loss weights, the noise assignments and the power
/// EMA: a run stopped at step 4 and resumed to 8 ends with the same weights, EMA, random streams
/// and curriculum state as one trained straight through.
#[test]
fn every_timestep_sampler_resumes_exactly() {
    let Some((data, _serial, dir)) = setup() else {
        return;
    };
    let device = Device::flex();
    let samplers = [
        r#"timestep_sampler = { kind = "logit_normal", mean = 0.0, std = 1.0 }
noise_assignment = { kind = "immiscible" }
prediction = "v"
loss_weight = { kind = "p2", k = 1.0, gamma = 1.0 }"#,
        r#"timestep_sampler = { kind = "log_normal", p_mean = -1.2, p_std = 1.2 }
prediction = "x0"
loss_weight = { kind = "min_snr", gamma = 5.0 }"#,
        r#"timestep_sampler = { kind = "speed", tau = 700, k = 5.0 }
loss_weight = { kind = "speed_change_aware", lambda = 0.6, tau = 700 }"#,
        r#"timestep_sampler = { kind = "laplace", mu = 0.0, b = 0.5 }
noise_assignment = { kind = "knn", k = 3 }"#,
        r#"timestep_sampler = { kind = "adaptive", signal = "loss_second_moment", bands = 2, floor = 0.2, update_every = 2, smoothing = 0.5, importance_weights = true }"#,
    ];
    for (i, diffusion) in samplers.iter().enumerate() {
        let config = |steps| {
            let mut config = common::tiny_config_with(steps, 4, diffusion);
            // The power EMA, whose decay depends on the update count, resumes exactly too.
            if diffusion.contains("laplace") {
                config.train.ema_sigma_rel = Some(0.1);
            }
            config
        };
        let straight = dir.path().join(format!("straight-{i}"));
        train(&options(config(8), &straight, &data, false), &device).unwrap();
        let resumed = dir.path().join(format!("resumed-{i}"));
        train(&options(config(4), &resumed, &data, false), &device).unwrap();
        train(&options(config(8), &resumed, &data, true), &device).unwrap();
        let a = Checkpoint::load(&Checkpoint::latest(&straight).unwrap()).unwrap();
        let b = Checkpoint::load(&Checkpoint::latest(&resumed).unwrap()).unwrap();
        assert_eq!(a.meta.source, b.meta.source, "{diffusion}");
        for section in ["model", "ema"] {
            assert!(
                parameters(&a, section) == parameters(&b, section),
                "{section} differs for {diffusion}"
            );
        }
        assert_eq!(metrics(&straight, "log"), metrics(&resumed, "log"));
        let updates = metrics(&straight, "timesteps");
        assert_eq!(updates, metrics(&resumed, "timesteps"), "{diffusion}");
        if diffusion.contains("adaptive") {
            // Updates drawn from steps 3, 5 and 7 on (every 2 steps, the first once step 1's
            // losses are in), from the losses read back; the last has left the uniform start.
            let steps: Vec<u64> = updates
                .iter()
                .map(|l| l["step"].as_u64().unwrap())
                .collect();
            assert_eq!(steps, [3, 5, 7]);
            let mass: Vec<f64> = serde_json::from_value(updates[2]["band_mass"].clone()).unwrap();
            assert!((mass.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{mass:?}");
            assert!((mass[0] - 0.5).abs() > 1e-6, "{mass:?}");
            assert!(
                mass.iter().all(|&m| m >= 0.1 - 1e-12),
                "the floor holds: {mass:?}"
            );
            let state = a
                .meta
                .source
                .adaptive
                .as_ref()
                .expect("the curriculum's state is saved");
            assert_eq!(state.updates, 3);
        } else {
            assert!(updates.is_empty() && a.meta.source.adaptive.is_none());
        }
    }
}

/// Two runs of one model from the same noise agree exactly (so both really see the same
/// starting and per-step noise); another seed's model agrees less; pairing with shifted noise is
/// the chance level; with the Inception weights, a model reproduces itself in features too.
/// Written through `hayate consistency`.
#[test]
fn consistency_compares_models_from_shared_noise() {
    let Some((data, _serial, dir)) = setup() else {
        return;
    };
    let weights = common::inception_weights();
    let device = Device::flex();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(
        &options(common::tiny_config(4, 4), &a, &data, false),
        &device,
    )
    .unwrap();
    let mut other = common::tiny_config(4, 4);
    other.train.seed = 12;
    train(&options(other, &b, &data, false), &device).unwrap();
    let compare = |b: &std::path::Path, out: &std::path::Path| -> serde_json::Value {
        // Batches of 4: the shifted (chance) pairing and the per-step sums cross a batch.
        let line = [
            "hayate",
            "consistency",
            "--n",
            "6",
            "--batch",
            "4",
            "--steps",
            "3",
        ];
        let line = line.iter().map(Into::into).chain([
            "--seed".into(),
            "5".into(),
            "--backend".into(),
            "cpu".into(),
            "--a".into(),
            a.clone().into_os_string(),
            "--b".into(),
            b.as_os_str().to_owned(),
            "--out".into(),
            out.as_os_str().to_owned(),
        ]);
        let inception: Vec<std::ffi::OsString> = match &weights {
            Some(w) => vec!["--inception-weights".into(), w.clone().into_os_string()],
            None => vec!["--no-inception".into()],
        };
        let line = line.chain(inception);
        let line: Vec<std::ffi::OsString> = line.collect();
        hayate::cli::run(hayate::cli::Cli::try_parse_from(line).unwrap()).unwrap();
        assert!(out.join("pairs.png").is_file() && out.join("agreement.png").is_file());
        serde_json::from_str(&std::fs::read_to_string(out.join("consistency.json")).unwrap())
            .unwrap()
    };
    let itself = compare(&a, &dir.path().join("itself"));
    assert_eq!(itself["sampler"], "ddim");
    assert_eq!(itself["steps"], 3);
    assert_eq!(itself["seed"], 5);
    assert_eq!(itself["a"], itself["b"]);
    assert!(
        itself["a"].as_str().unwrap().ends_with(".hayate"),
        "{itself}"
    );
    assert_eq!(itself["paired"]["agreement"], 1.0);
    assert_eq!(itself["per_step"].as_array().unwrap().len(), 3);
    assert!(
        itself["per_step"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["agreement"] == 1.0)
    );
    let shuffled = itself["shuffled"]["agreement"].as_f64().unwrap();
    assert!(shuffled < 0.9, "{itself}");
    let seeds = compare(&b, &dir.path().join("seeds"));
    let paired = seeds["paired"]["agreement"].as_f64().unwrap();
    assert!(paired < 1.0 && paired > shuffled, "{seeds}");
    if weights.is_some() {
        // 6 pairs: the threshold is the most similar of the 30 mismatched pairs.
        let same = &itself["reproducibility"];
        assert_eq!(same["score"], 1.0, "{itself}");
        assert_eq!(same["mismatched_pairs"], 30, "{itself}");
        assert_eq!(same["chance"], 0.0, "{itself}");
        assert!((same["mean_paired"].as_f64().unwrap() - 1.0).abs() < 1e-6);
        let other = &seeds["reproducibility"];
        let score = other["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score), "{seeds}");
        assert!(
            other["mean_paired"].as_f64().unwrap() < 1.0 - 1e-6,
            "{seeds}"
        );
    } else {
        assert!(itself["reproducibility"].is_null(), "{itself}");
    }
}

/// The L2 norm of `a - b`.
fn distance(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn data_parallel_steps_over_three_devices_match_one_device_with_dropout() {
    let Some((data, _serial, dir)) = setup() else {
        return;
    };
    // The flex backend has one device, so the "devices" are all it: this runs the whole
    // data-parallel path (shards, replicas on threads, gradient transfer and sum, weighting,
    // clipping, dropout masks per shard) but not a transfer between two memories. Three devices
    // split the batch of 8 into shards of 2, 3 and 3, so a shard weighted by anything but its
    // share of the batch turns the gradient, which Adam would not forgive as it does a scale.
    let mut config = common::tiny_config(8, 8);
    config.model.dropout = Some(0.3);
    let run = |config: &RunConfig, name: &str, devices: usize| {
        let out = dir.path().join(name);
        let mut options = options(config.clone(), &out, &data, false);
        options.devices = vec![Device::flex(); devices];
        train(&options, &Device::flex()).unwrap();
        (
            out.clone(),
            Checkpoint::load(&Checkpoint::latest(&out).unwrap()).unwrap(),
        )
    };
    let (one, a) = run(&config, "one", 1);
    let (three, b) = run(&config, "three", 3);
    let mut no_dropout = config.clone();
    no_dropout.model.dropout = Some(0.0);
    let (_, c) = run(&no_dropout, "no-dropout", 1);
    assert_eq!((a.step(), b.step()), (8, 8));

    let initial = common::module_parameters(&hayate_train::train::init_network(
        &config.model.resolve().unwrap(),
        config.train.seed,
        &Device::flex(),
    ));
    for section in ["model", "ema"] {
        let (pa, pb, pc) = (
            common::parameters(&a, section),
            common::parameters(&b, section),
            common::parameters(&c, section),
        );
        // Relative to how far training moved the parameters; only the order of float additions
        // differs (three shard gradients, summed).
        let moved = distance(&pa, &initial);
        let split = distance(&pa, &pb) / moved;
        // Other dropout masks (here: none) move the parameters elsewhere by far more.
        let masks = distance(&pa, &pc) / moved;
        eprintln!("{section}: relative difference {split:.2e}; without dropout {masks:.2e}");
        assert!(
            split < 1e-3,
            "{section}: split run differs by {split:.2e} of the update"
        );
        assert!(
            masks > 30.0 * split.max(1e-4),
            "{section}: dropout changed little ({masks:.2e})"
        );
    }
    let (la, lb) = (common::metrics(&one, "log"), common::metrics(&three, "log"));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        let (x, y) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((x - y).abs() < 1e-4 * x.abs(), "logged losses {x} and {y}");
    }
    assert_eq!(
        a.meta.source, b.meta.source,
        "the same data, timesteps and noise"
    );
}

#[test]
fn a_dit_trains_resumes_exactly_and_samples() {
    let Some((data, _serial, dir)) = setup() else {
        return;
    };
    let device = Device::flex();
    let straight = dir.path().join("straight");
    let report = train(
        &options(common::dit_config(16, 8), &straight, &data, false),
        &device,
    )
    .unwrap();
    assert_eq!(report.step, 16);
    let losses = &report.interval_losses;
    assert!(
        losses.iter().all(|l| l.is_finite()) && losses[1] < losses[0],
        "{losses:?}"
    );

    let resumed = dir.path().join("resumed");
    train(
        &options(common::dit_config(8, 8), &resumed, &data, false),
        &device,
    )
    .unwrap();
    let again = train(
        &options(common::dit_config(16, 8), &resumed, &data, true),
        &device,
    )
    .unwrap();
    assert_eq!(again.interval_losses[0], report.interval_losses[1]);
    let a = Checkpoint::load(&Checkpoint::latest(&straight).unwrap()).unwrap();
    let b = Checkpoint::load(&Checkpoint::latest(&resumed).unwrap()).unwrap();
    for section in ["model", "ema"] {
        let (va, vb) = (parameters(&a, section), parameters(&b, section));
        // 2 blocks of 18,912 (q, k, v, projection, MLP, adaLN modulation), the timestep MLP
        // (9,280), the patch embedding (416) and the output layer (2,508).
        assert_eq!(va.len(), 50_028);
        assert!(
            va == vb,
            "{section} differs between the straight and the resumed run"
        );
    }

    // `hayate sample` takes it; `hayate export` (diffusers' UNet2DModel) says why it cannot.
    let grid = dir.path().join("grid.png");
    let cli = |args: Vec<std::ffi::OsString>| {
        let line = std::iter::once("hayate".into()).chain(args);
        hayate::cli::run(hayate::cli::Cli::try_parse_from(line.collect::<Vec<_>>()).unwrap())
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    cli(vec![
        os("sample"),
        os("--n"),
        os("4"),
        os("--steps"),
        os("2"),
        os("--backend"),
        os("cpu"),
        os("--checkpoint"),
        straight.clone().into_os_string(),
        os("--out"),
        grid.clone().into_os_string(),
    ])
    .unwrap();
    assert!(image::open(&grid).is_ok());
    let err = cli(vec![
        os("export"),
        os("--checkpoint"),
        straight.clone().into_os_string(),
        os("--out"),
        dir.path().join("exported").into_os_string(),
        os("--backend"),
        os("cpu"),
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("DiT"), "{err:#}");
}
