//! `hayate info`.

use anyhow::Result;
use hayate_train::config::RunConfig;
use std::path::PathBuf;

/// Print a config's parameter count, FLOPs and resolved settings.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The experiment config.
    #[arg(long)]
    pub config: PathBuf,
}

impl Args {
    /// Prints the figures and the resolved config.
    pub fn run(self) -> Result<()> {
        let run_config = RunConfig::load(&self.config)?;
        let unet = run_config.model.resolve()?;
        let params = hayate_train::train::count_params(&unet);
        let forward = unet.forward_flops();
        let batch = run_config.train.batch_size as u64;
        println!("config: {}", self.config.display());
        println!(
            "network: {} (preset {})",
            unet.architecture(),
            run_config.model.preset
        );
        println!("parameters: {params} ({:.2}M)", params as f64 / 1e6);
        println!(
            "forward FLOPs per image: {:.3} GFLOPs",
            forward as f64 / 1e9
        );
        // Backward costs about twice the forward pass.
        println!(
            "training FLOPs per step (batch {batch}, forward + backward = 3x forward): {:.3} TFLOPs",
            (3 * forward * batch) as f64 / 1e12
        );
        println!(
            "whole run ({} steps): {:.3e} FLOPs",
            run_config.train.steps,
            (3 * forward * batch) as f64 * run_config.train.steps as f64
        );
        println!("\n# resolved config\n{}", run_config.to_toml());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, run};
    use clap::Parser;

    #[test]
    fn info_and_schedule_plot_run_on_every_experiment() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let plots = tempfile::tempdir().unwrap();
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let config = entry.unwrap().path();
            if config.extension().is_some_and(|e| e == "toml")
                && !hayate_train::config::is_benchmark_file(&config)
            {
                let path = config.to_str().unwrap();
                run(Cli::try_parse_from(["hayate", "info", "--config", path]).unwrap()).unwrap();
                let out = plots.path().join(config.file_stem().unwrap());
                let line = ["hayate", "schedule", "plot", "--config", path, "--out"];
                let line = line
                    .iter()
                    .map(Into::into)
                    .chain([out.clone().into_os_string()]);
                run(Cli::try_parse_from(line.collect::<Vec<std::ffi::OsString>>()).unwrap())
                    .unwrap();
                for chart in ["timesteps", "loss_weight", "beta1", "lr"] {
                    image::open(out.join(format!("{chart}.png"))).unwrap();
                }
                count += 1;
            }
        }
        assert!(count >= 12, "only {count} experiment configs");
    }
}
