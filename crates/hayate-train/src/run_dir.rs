//! A run folder's layout, in one place: where the resolved config, the sample grids, the
//! metrics log and the charts go (checkpoints: [`crate::checkpoint`]), and the typed events of
//! `metrics.jsonl`, one JSON object per line with its kind in `event`.

use crate::checkpoint::write_atomic;
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The resolved config a run was started with.
pub fn config_path(run_dir: &Path) -> PathBuf {
    run_dir.join("config.toml")
}

/// The folder of the EMA sample grids.
pub fn samples_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("samples")
}

/// The sample grid drawn at `step`.
pub fn grid_path(run_dir: &Path, step: u64) -> PathBuf {
    samples_dir(run_dir).join(format!("step-{step:09}.png"))
}

/// The metrics log.
pub fn metrics_path(run_dir: &Path) -> PathBuf {
    run_dir.join("metrics.jsonl")
}

/// The folder the charts go to.
pub fn plots_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("plots")
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Every `log_every` steps: the window's mean loss and mean t/T, its last step's lr and
    /// beta1.
    Log {
        /// The step that ends the window.
        step: u64,
        /// Mean loss over the window's steps.
        loss: f64,
        /// The learning rate of its last step.
        lr: f64,
        /// Adam's beta1 of its last step.
        beta1: f64,
        /// Mean t / T of the timesteps drawn in the window.
        #[serde(rename = "mean_t_over_T")]
        mean_t_over_t: f64,
    },
    /// At each checkpoint: the interval's mean loss, the EMA decay, the throughput and the
    /// checkpoint's file name.
    Checkpoint {
        /// The step checkpointed.
        step: u64,
        /// Mean loss over the interval.
        loss: f64,
        /// The EMA decay of the last step.
        ema_decay: f64,
        /// Training images per second in this process so far.
        images_per_second: f64,
        /// Seconds in training steps since the run began, over every resume.
        train_seconds: f64,
        /// The checkpoint file.
        checkpoint: Option<String>,
    },
    /// The EMA model's sample grid drawn at a checkpoint.
    Grid {
        /// The step checkpointed.
        step: u64,
        /// The grid's file, relative to the run folder.
        grid: String,
    },
    /// FID of the EMA model's samples at a checkpoint.
    Fid {
        /// The step evaluated.
        step: u64,
        /// The Frechet distance.
        fid: f64,
        /// Images on each side.
        n: usize,
        /// The reference set (the run's training images).
        reference: String,
        /// The samples' sampler (`ddim`, `dpmpp-2m`).
        sampler: String,
        /// Its steps (the name is DDIM's, kept for the logs of earlier runs).
        ddim_steps: usize,
    },
    /// An adaptive timestep curriculum's update: the band masses drawn from this step on.
    Timesteps {
        /// The first step (counting from 1) drawn with these masses, so a resume from the
        /// checkpoint just before it forgets the line and writes it again.
        step: u64,
        /// Probability of each band of t (equal widths over 0..T), summing to 1.
        band_mass: Vec<f64>,
    },
    /// A resume that accepted a changed config.
    ConfigChange {
        /// The step resumed from.
        step: u64,
        /// The settings that changed.
        changes: Vec<String>,
    },
}

/// Appends `event` to the run's metrics log.
pub fn append(run_dir: &Path, event: &Event) -> Result<()> {
    let metrics = metrics_path(run_dir);
    let line = serde_json::to_string(event).context("serialising a metrics event")?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics)
        .with_context(|| format!("cannot open {}", metrics.display()))?;
    writeln!(file, "{line}").with_context(|| format!("cannot write {}", metrics.display()))
}

/// Drops the metrics lines of steps after `step` (logged by a run that stopped before its next
/// checkpoint), so a resumed run's log reads as if it had never stopped.
pub fn forget_after(run_dir: &Path, step: u64) -> Result<()> {
    let metrics = metrics_path(run_dir);
    let Ok(text) = std::fs::read_to_string(&metrics) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    if kept.len() != text.len() {
        write_atomic(&metrics, kept.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_lines_tagged_with_their_kind_and_forgetting_keeps_earlier_steps() {
        let dir = tempfile::tempdir().unwrap();
        let log = |step| Event::Log {
            step,
            loss: 0.5,
            lr: 1e-4,
            beta1: f64::NAN,
            mean_t_over_t: 0.25,
        };
        append(dir.path(), &log(4)).unwrap();
        append(
            dir.path(),
            &Event::ConfigChange {
                step: 4,
                changes: vec!["train.lr".into()],
            },
        )
        .unwrap();
        append(dir.path(), &log(8)).unwrap();
        let text = std::fs::read_to_string(metrics_path(dir.path())).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event"], "log");
        assert_eq!(lines[0]["mean_t_over_T"], 0.25);
        // A beta1 that does not apply (no schedule) reads as null, not as an invalid NaN.
        assert!(lines[0]["beta1"].is_null());
        assert_eq!(lines[1]["event"], "config_change");
        assert_eq!(lines[1]["changes"][0], "train.lr");
        forget_after(dir.path(), 4).unwrap();
        let kept = std::fs::read_to_string(metrics_path(dir.path())).unwrap();
        assert_eq!(kept.lines().count(), 2, "{kept}");
        assert_eq!(
            grid_path(dir.path(), 12),
            dir.path().join("samples/step-000000012.png")
        );
    }
}
