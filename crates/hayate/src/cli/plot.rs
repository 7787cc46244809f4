//! `hayate plot`.

use anyhow::Result;
use std::path::PathBuf;

/// Redraw a run's charts (loss, lr, beta1, mean t/T against step) into RUN_DIR/plots.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run folder (holding metrics.jsonl).
    pub run_dir: PathBuf,
}

impl Args {
    /// Redraws the charts.
    pub fn run(self) -> Result<()> {
        for path in hayate_eval::plot::plot_run(&self.run_dir)? {
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}
