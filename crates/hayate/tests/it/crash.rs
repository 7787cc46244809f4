//! Crashes, through the real binary: a training process killed (SIGKILL) at many moments, also
//! while it writes a checkpoint, always leaves a newest complete checkpoint that loads, and the
//! run resumed after every kill ends bit-identical to one trained straight through. A checkpoint
//! write that fails part way (a file size limit, as on a full disk) stops the run with a clear
//! message and loses no earlier checkpoint. A `hayate prepare` killed part way resumes to the
//! same file.

use crate::common;

use common::{hayate_train as hayate, metrics, parameters};
use hayate_train::checkpoint::Checkpoint;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A tiny run that checkpoints after every step, so kills land in checkpoint writes often.
fn write_config(dir: &Path, steps: u64) -> std::path::PathBuf {
    let mut config = common::tiny_config(steps, 1);
    config.train.batch_size = 4;
    config.train.log_every = 1;
    config.sampling.grid_images = 1;
    config.sampling.ddim_steps = 1;
    let path = dir.join("config.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    path
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string() + &String::from_utf8_lossy(&output.stdout)
}

#[test]
fn killed_runs_always_leave_a_loadable_checkpoint_and_resume_exactly() {
    let Some(data) = common::shared_cifar10() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let steps = 24;
    let config = write_config(dir.path(), steps);

    let straight = dir.path().join("straight");
    let output = hayate(&config, &straight, &data, false).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));

    // Every other kill comes the moment a checkpoint file (final or temporary) is seen part
    // written; the others after a delay spread over start-up, steps and writes (a fixed
    // sequence, so a failure reproduces). Each time the run resumes from what the last process
    // left.
    let full_size = std::fs::metadata(Checkpoint::latest(&straight).unwrap())
        .unwrap()
        .len();
    let run = dir.path().join("killed");
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut steps_seen = Vec::new();
    let mut mid_write_kills = 0;
    for round in 0..16 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay = Duration::from_millis(700 + state % 3300);
        let resume = Checkpoint::latest(&run).is_ok();
        let mut child = hayate(&config, &run, &data, resume)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The first kill waits for a write: a run fast enough to finish within one delay
        // (the fused CPU ops made it so) still gets killed mid-write.
        if round % 2 == 1 {
            std::thread::sleep(delay);
        } else if wait_for_partial_checkpoint(&run, full_size, Duration::from_secs(8)) {
            mid_write_kills += 1;
        }
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap_or(());
        child.wait().unwrap();
        if let Ok(latest) = Checkpoint::latest(&run) {
            let checkpoint =
                Checkpoint::load(&latest).unwrap_or_else(|e| panic!("after kill {round}: {e:#}"));
            steps_seen.push(checkpoint.step());
        }
        if finished {
            break;
        }
    }
    assert!(mid_write_kills > 0, "no kill landed in a checkpoint write");
    assert!(
        steps_seen.windows(2).all(|w| w[0] <= w[1]),
        "checkpoints went backwards: {steps_seen:?}"
    );
    let output = hayate(&config, &run, &data, Checkpoint::latest(&run).is_ok())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));

    let a = Checkpoint::load(&Checkpoint::latest(&straight).unwrap()).unwrap();
    let b = Checkpoint::load(&Checkpoint::latest(&run).unwrap()).unwrap();
    assert_eq!((a.step(), b.step()), (steps, steps));
    assert_eq!(a.meta.source, b.meta.source);
    for section in ["model", "ema"] {
        assert!(
            parameters(&a, section) == parameters(&b, section),
            "{section} differs after kills at checkpoints {steps_seen:?}"
        );
    }
    // The resumed run's log reads as if it had never been interrupted.
    assert_eq!(metrics(&straight, "log"), metrics(&run, "log"));
    eprintln!(
        "checkpoints found after each kill: {steps_seen:?}; {mid_write_kills} kills during a write"
    );
}

/// Polls `run` until a checkpoint file, final or temporary, exists with fewer than `full`
/// bytes (a write in progress); false if none is seen within `limit`.
fn wait_for_partial_checkpoint(run: &Path, full: u64, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        let partial = std::fs::read_dir(run)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.contains("ckpt-")
                    && e.metadata()
                        .is_ok_and(|m| m.len() > 0 && m.len() < full * 9 / 10)
            });
        if partial {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

#[test]
fn a_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_one() {
    let Some(data) = common::shared_cifar10() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 2);
    let run = dir.path().join("run");
    let output = hayate(&config, &run, &data, false).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));

    // Resume to step 4 with files capped at 1 MiB (a checkpoint is about 11 MB), with SIGXFSZ
    // ignored so the write fails with EFBIG the way a full disk fails with ENOSPC.
    let config4 = write_config(dir.path(), 4);
    let inner = hayate(&config4, &run, &data, true);
    let output = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 2048; trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let msg = text(&output);
    assert!(!output.status.success(), "{msg}");
    assert!(
        msg.contains("cannot write") && msg.contains("ckpt-000000003.hayate"),
        "{msg}"
    );
    assert!(msg.contains("ckpt-000000002.hayate, is intact"), "{msg}");
    eprintln!("{msg}");
    let (path, kept) = Checkpoint::load_newest_valid(&run).unwrap();
    assert!(path.ends_with("ckpt-000000002.hayate"));
    assert_eq!(kept.step(), 2);
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// `hayate prepare` killed (SIGKILL) part way, several times, then run to the end: the file is
/// byte-identical to an uninterrupted prepare, and no output file exists before the end.
#[test]
fn killed_prepares_resume_to_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for class in ["a", "b", "c", "d"] {
        std::fs::create_dir_all(src.join(class)).unwrap();
    }
    // Enough images that a prepare takes a while (one thread, 32 per chunk).
    for i in 0..2400u32 {
        let class = ["a", "b", "c", "d"][i as usize % 4];
        image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, (i % 251) as u8])
        })
        .save(src.join(class).join(format!("{i:05}.png")))
        .unwrap();
    }
    let folder = hayate_data::ImageFolder::scan(&src).unwrap();
    let straight = tmp.path().join("straight.hds");
    hayate_data::prepare(&folder, 32, &straight, 1, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();

    let out = tmp.path().join("killed.hds");
    let journal = tmp.path().join("killed.hds.progress");
    let prepare = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hayate"));
        cmd.args([
            "prepare",
            "imagenet",
            "--size",
            "32",
            "--threads",
            "1",
            "--src",
        ])
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd
    };
    let mut kills = 0;
    let mut last_size = 0;
    let mut finished = None;
    for attempt in 0..40 {
        let mut child = prepare().spawn().unwrap();
        // Wait for the journal to move past what the previous attempt reached, then kill at a
        // moment that varies with the attempt.
        let started = std::time::Instant::now();
        while std::fs::metadata(&journal).map_or(0, |m| m.len()) <= last_size
            && child.try_wait().unwrap().is_none()
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(7 * (attempt % 5)));
        if kills == 4 || child.try_wait().unwrap().is_some() {
            finished = Some(child.wait_with_output().unwrap());
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        assert!(!out.exists(), "a killed prepare left {}", out.display());
        last_size = std::fs::metadata(&journal).map_or(0, |m| m.len());
    }
    eprintln!("{kills} prepares killed before the one that finished");
    assert!(kills >= 1, "no prepare was caught before its end");
    let finish = finished.expect("the last prepare ran to its end");
    let log = String::from_utf8_lossy(&finish.stderr);
    assert!(finish.status.success(), "{log}");
    assert!(
        log.contains("resumed an interrupted prepare after"),
        "{log}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&straight).unwrap(),
        "after {kills} kills"
    );
    assert!(!journal.exists());
}
