//! End to end on the CPU backend with real CIFAR-10 images: the loss is finite and falls,
//! checkpoints and grids are written, and a resumed run matches one trained straight through.

mod common;

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use hayate::checkpoint::Checkpoint;

use hayate::step::DenoisingModel;
use hayate::train::{TrainOptions, train};
use hayate_schedule::{Compensation, MomentumDecay, MomentumShape};

fn options(
    config: hayate::config::RunConfig,
    out: &std::path::Path,
    data: &std::path::Path,
    resume: bool,
) -> TrainOptions {
    TrainOptions {
        config,
        data_dir: Some(data.to_path_buf()),
        out: out.to_path_buf(),
        resume,
    }
}

/// Every parameter value of a checkpoint's `model` (training) or `ema` network, in order.
fn parameters(checkpoint: &Checkpoint, section: &str) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(param.val().into_data().iter::<f32>());
        }
    }
    let device = Device::flex();
    let config = checkpoint.meta.config.model.resolve().unwrap();
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(
        checkpoint.section(section).unwrap().to_vec(),
    ))
    .unwrap();
    let mut collect = Collect(Vec::new());
    if section == "ema" {
        config.init(&device).load_record(record).visit(&mut collect);
    } else {
        let model = DenoisingModel {
            unet: config.init(&device),
            grad_clip: 1.0,
        };
        model.load_record(record).visit(&mut collect);
    }
    collect.0
}

/// The lines of a run's metrics.jsonl whose event is `event`.
fn metrics(run: &std::path::Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["event"] == event)
        .collect()
}

#[test]
fn trains_checkpoints_and_resumes_exactly() {
    let Some(data) = common::shared_cifar10() else {
        return;
    };
    let _serial = common::one_run_at_a_time();
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();

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
        assert_eq!(va.len(), 702_499);
        assert!(
            va == vb,
            "{section} differs between the straight and the resumed run"
        );
    }
    assert!(!a.section("optimizer").unwrap().is_empty());

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
    let cli = hayate::cli::Cli {
        command: hayate::cli::Command::Sample {
            checkpoint: straight.clone(),
            n: 4,
            sampler: hayate::cli::SamplerChoice::Ddim,
            steps: 3,
            eta: 0.0,
            seed: 1,
            out: grid.clone(),
            backend: hayate::backend::BackendChoice::Cpu,
        },
    };
    hayate::cli::run(cli).unwrap();
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (2 * 34 + 2, 2 * 34 + 2));
}

#[test]
fn a_missing_data_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-cifar");
    let err = train(
        &options(
            common::tiny_config(2, 1),
            &dir.path().join("run"),
            &missing,
            false,
        ),
        &Device::flex(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
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
    let Some(data) = common::shared_cifar10() else {
        return;
    };
    let _serial = common::one_run_at_a_time();
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
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
