//! The command line: one module per subcommand, each a clap `Args` struct with its own `run`,
//! and the flag groups several share (device, data, sampler) declared once in [`flags`] and
//! flattened in. Parsing and checking flags happens here; the work is the library's.

pub mod bench;
pub mod consistency;
pub mod eval;
pub mod export;
pub mod flags;
pub mod import;
pub mod info;
pub mod plot;
pub mod prepare;
pub mod sample;
pub mod schedule;
pub mod train;

pub use flags::{DataArgs, DeviceArgs, SamplerArgs, SamplerChoice};

use anyhow::Result;
use clap::{Parser, Subcommand};

/// hayate: train image diffusion models fast, on any GPU Burn's WGPU backend reaches.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Run Burn's composed ops where hayate has fused ones (GroupNorm with SiLU on the CPU
    /// backend): the path to time or check the fused ops against.
    #[arg(long, global = true)]
    pub composed_ops: bool,
    /// On the CPU backend, compute the input gradient of a stride-1 convolution into few
    /// channels (a UNet's last layer) as Burn's transposed convolution, as every other layer's,
    /// rather than as a forward convolution by the turned kernel: the path to time or check
    /// the turned one against.
    #[arg(long, global = true)]
    pub transposed_input_gradient: bool,
    /// On the CPU backend, run 1x1 convolutions through the column matrix, as the 3x3 ones,
    /// rather than as one product per image on the tensors as they lie: the path to time or check
    /// the products against.
    #[arg(long, global = true)]
    pub im2col_pointwise: bool,
    /// On the CPU backend, run stride-1 convolutions with kernels larger than 1x1 through the
    /// column matrix (and Burn's transposed convolution for the input gradient) throughout,
    /// rather than as one product per kernel position on the shifted padded input where that
    /// measured faster: the path to time or check the shifted products against.
    #[arg(long, global = true)]
    pub im2col_3x3: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model from a TOML config.
    Train(train::Args),
    /// Write a grid of samples from a checkpoint's EMA weights.
    Sample(sample::Args),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::Command),
    /// Evaluate a model or an image set.
    #[command(subcommand)]
    Eval(eval::Command),
    /// Two models, the same starting and per-step noise: how alike are their samples, and
    /// their predictions of x_0 along the way? (The consistency phenomenon.)
    Consistency(consistency::Args),
    /// Look at a config's schedules before training with it.
    #[command(subcommand)]
    Schedule(schedule::Command),
    /// Pack an image folder into a prepared file that training reads without decoding.
    #[command(subcommand)]
    Prepare(prepare::Command),
    /// Redraw a run's charts (loss, lr, beta1, mean t/T against step) into RUN_DIR/plots.
    Plot(plot::Args),
    /// Print a config's parameter count, FLOPs and resolved settings.
    Info(info::Args),
    /// Write a checkpoint's EMA network as a diffusers UNet2DModel folder (with its
    /// scheduler config), which UNet2DModel.from_pretrained and DDPMPipeline load.
    Export(export::Args),
    /// Read a model from another format into a hayate checkpoint.
    #[command(subcommand)]
    Import(import::Command),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    hayate_model::fused::set_fused(!cli.composed_ops);
    hayate_model::fused::set_turned_input_gradient(!cli.transposed_input_gradient);
    hayate_model::fused::set_pointwise_products(!cli.im2col_pointwise);
    hayate_model::fused::set_shifted_products(!cli.im2col_3x3);
    match cli.command {
        Command::Train(args) => args.run(),
        Command::Sample(args) => args.run(),
        Command::Bench(command) => command.run(),
        Command::Eval(command) => command.run(),
        Command::Consistency(args) => args.run(),
        Command::Schedule(command) => command.run(),
        Command::Prepare(command) => command.run(),
        Command::Plot(args) => args.run(),
        Command::Info(args) => args.run(),
        Command::Export(args) => args.run(),
        Command::Import(command) => command.run(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hayate_train::backend::BackendChoice;

    #[test]
    fn command_line_flags_parse() {
        let cli = Cli::try_parse_from([
            "hayate",
            "train",
            "--config",
            "x.toml",
            "--backend",
            "cpu",
            "--steps",
            "5",
            "--seed",
            "2",
            "--resume",
        ])
        .unwrap();
        let Command::Train(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.device.backend, BackendChoice::Cpu);
        assert_eq!(
            (args.steps, args.seed, args.resume),
            (Some(5), Some(2), true)
        );
        assert!(Cli::try_parse_from(["hayate", "sample", "--sampler", "euler"]).is_err());
        let dpm = [
            "hayate",
            "sample",
            "--checkpoint",
            "r",
            "--sampler",
            "dpmpp-2m",
        ];
        let Command::Sample(args) = Cli::try_parse_from(dpm).unwrap().command else {
            panic!("{dpm:?} is not a sample command");
        };
        assert_eq!(args.sampler.sampler, Some(SamplerChoice::DpmPp2m));
        // Flags override the run's choice one by one; DPM-Solver++ refuses an eta.
        let config =
            hayate_train::config::RunConfig::parse("[model]\npreset = \"tiny\"\n").unwrap();
        let schedule = config.diffusion.schedule().unwrap();
        let default = config.sampling.sampler();
        let sampler = args.sampler.build(default, &schedule, &config).unwrap();
        assert_eq!(sampler.timesteps(&schedule).len(), default.steps);
        assert_eq!(args.sampler.name(default), "dpmpp-2m");
        let mut noisy = args.sampler.clone();
        noisy.eta = Some(0.3);
        let err = noisy
            .build(default, &schedule, &config)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--eta") && err.contains("dpmpp-2m"), "{err}");
        noisy.sampler = None;
        assert_eq!(noisy.name(default), "ddim");
        assert!(noisy.build(default, &schedule, &config).is_ok());
        // Heun on the Karras grid: 6 sigmas, 11 network evaluations; no eta either.
        let heun = [
            "hayate",
            "sample",
            "--checkpoint",
            "r",
            "--sampler",
            "heun-karras",
            "--steps",
            "6",
        ];
        let Command::Sample(args) = Cli::try_parse_from(heun).unwrap().command else {
            panic!("{heun:?} is not a sample command");
        };
        let sampler = args.sampler.build(default, &schedule, &config).unwrap();
        assert_eq!(sampler.timesteps(&schedule).len(), 11);
        assert_eq!(args.sampler.name(default), "heun-karras");
        let mut noisy = args.sampler.clone();
        noisy.eta = Some(0.3);
        let err = noisy
            .build(default, &schedule, &config)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--eta") && err.contains("heun-karras"),
            "{err}"
        );
        // The shared groups parse the same way in every subcommand that flattens them.
        let heads: [&[&str]; 3] = [
            &["sample", "--checkpoint", "r"],
            &["consistency", "--a", "r", "--b", "s"],
            &["eval", "fid", "--checkpoint", "r"],
        ];
        for head in heads {
            let line: Vec<&str> = std::iter::once("hayate")
                .chain(head.iter().copied())
                .chain(["--steps", "7", "--eta", "0.5"])
                .collect();
            let cli = Cli::try_parse_from(&line).unwrap();
            let sampler = match cli.command {
                Command::Sample(a) => a.sampler,
                Command::Consistency(a) => a.sampler,
                Command::Eval(eval::Command::Fid(a)) => a.sampler,
                other => panic!("{line:?} parsed as {other:?}"),
            };
            assert_eq!(
                (sampler.steps, sampler.eta),
                (Some(7), Some(0.5)),
                "{line:?}"
            );
        }
    }
}
