//! `hayate schedule`.

use anyhow::Result;
use clap::Subcommand;
use hayate_train::config::RunConfig;
use std::path::PathBuf;

/// `hayate schedule` actions.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write PNG charts of p_k(t) at several steps k, the loss weight w(t), beta1(k) and lr(k).
    Plot {
        /// The experiment config.
        #[arg(long)]
        config: PathBuf,
        /// The folder the charts go to.
        #[arg(long)]
        out: PathBuf,
    },
}

impl Command {
    /// Writes the charts.
    pub fn run(self) -> Result<()> {
        let Self::Plot { config, out } = self;
        let run_config = RunConfig::load(&config)?;
        run_config.validate()?;
        let charts = hayate_eval::plot::schedule_charts(&run_config)?;
        for path in hayate_eval::plot::save_all(&charts, &out)? {
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}
