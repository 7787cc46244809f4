//! `hayate bench`.

use super::flags::{DataArgs, DeviceArgs, default_run_dir};
use anyhow::{Result, bail};
use burn::prelude::*;
use clap::Subcommand;
use hayate_bench::ops::OpTiming;
use hayate_bench::processor::Processor;
use hayate_bench::throughput::Throughput;
use hayate_data::Split;
use hayate_model::{NetworkConfig, UNetConfig};
use hayate_train::backend::BackendChoice;
use hayate_train::config::RunConfig;
use serde_json::{Value, json};
use std::path::PathBuf;

/// `hayate bench` benchmarks.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Images per second of full training steps (forward, backward, optimiser, EMA, host-side
    /// batches) after warm-up, the FLOP rate from the analytic count, peak memory, and sampling
    /// steps per second; beside PyTorch's figures for the same UNet (benches/torch_throughput.py)
    /// when PyTorch and diffusers are installed.
    Throughput(ThroughputArgs),
    /// The convergence benchmark: trains one small model with each method of the config over
    /// its seeds on real CIFAR-10, scores samples at fixed steps with the Frechet distance in
    /// the features of a small CIFAR-10 classifier (and, for some checkpoints, Inception FID, to
    /// show the two rank alike), and reports each method's speed-up over the baseline. Finished
    /// runs are kept, so an interrupted benchmark continues where it stopped.
    Convergence(ConvergenceArgs),
    /// Trains the convergence benchmark's feature network (a small CIFAR-10 classifier) and
    /// writes its weights with its test accuracy.
    FeatureNet(FeatureNetArgs),
}

impl Command {
    /// Runs the benchmark.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Throughput(args) => args.run(),
            Self::Convergence(args) => args.run(),
            Self::FeatureNet(args) => args.run(),
        }
    }
}

/// `hayate bench throughput`.
#[derive(Debug, clap::Args)]
pub struct ThroughputArgs {
    /// A model preset (its default training settings); or give --config.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// An experiment config whose model and training step are measured.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed training steps, run after as many untimed warm-up steps.
    #[arg(long, default_value_t = 5)]
    pub steps: u64,
    /// Timed sampling steps (DDIM), after a warm-up pass.
    #[arg(long, default_value_t = 5)]
    pub sample_steps: usize,
    /// Where to run.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The type the forward computes in (overrides the config's train.precision): f32, or bf16
    /// with f32 weights (CPU and CUDA backends).
    #[arg(long)]
    pub precision: Option<hayate_model::Precision>,
    /// The Python with torch and diffusers for the comparison ($HAYATE_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<String>,
    /// Skip the PyTorch comparison.
    #[arg(long)]
    pub no_torch: bool,
    /// Also time each phase of a step on its own (host batch, transfer, forward, backward,
    /// Adam, EMA): where the time goes.
    #[arg(long)]
    pub phases: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl ThroughputArgs {
    /// Measures, prints the figures beside PyTorch's, and writes the JSON if asked.
    pub fn run(self) -> Result<()> {
        let (steps, sample_steps, batch) = (self.steps, self.sample_steps, self.batch);
        if steps == 0 || sample_steps == 0 || batch == 0 {
            bail!("--batch, --steps and --sample-steps must be positive");
        }
        let mut run_config = match (&self.preset, &self.config) {
            (_, Some(path)) => RunConfig::load(path)?,
            (Some(p), None) => RunConfig::parse(&format!("[model]\npreset = {p:?}\n"))?,
            (None, None) => bail!("give --preset or --config"),
        };
        run_config.train.batch_size = batch;
        if let Some(precision) = self.precision {
            run_config.train.precision = precision;
        }
        let name = run_config.model.preset.clone();
        let (device, why) = self.device.select()?;
        // Every CPU figure names its processor: ratios to PyTorch differ between processors.
        let processor = Processor::detect();
        println!("processor: {}", processor.describe());
        let ours = hayate_bench::throughput::throughput(&run_config, steps, sample_steps, &device)?;
        print_ours(&name, batch, &why, &ours);
        let mut result = json!({ "hayate": ours, "device": why, "processor": processor });
        let profile = if self.phases {
            self.phases(&run_config, &device, &mut result)?
        } else {
            None
        };
        // The op list travels to PyTorch as a file, so it times the same shapes.
        let spec = std::env::temp_dir().join(format!("hayate-ops-{}.json", std::process::id()));
        if let Some((unet, ops)) = &profile {
            hayate_bench::ops::write_spec(&spec, unet, ops, batch, self.steps as usize)?;
        }
        if !self.no_torch {
            let spec = profile.as_ref().map(|_| spec.as_path());
            self.compare_with_torch(&name, &ours, &mut result, spec);
        }
        let _ = std::fs::remove_file(&spec);
        if let Some((_, ops)) = &profile {
            print_profile(ops, &result, batch);
        }
        if let Some(out) = &self.out {
            hayate_train::checkpoint::write_atomic(out, format!("{result:#}\n").as_bytes())?;
        }
        Ok(())
    }

    /// Times each phase of a step alone, one 3x3 convolution, and (for a UNet) every distinct
    /// layer, into `result`; returns the layer profile.
    fn phases(
        &self,
        config: &RunConfig,
        device: &Device,
        result: &mut Value,
    ) -> Result<Option<(UNetConfig, Vec<OpTiming>)>> {
        let times = hayate_bench::throughput::phases(config, self.steps as usize, device)?;
        let total: f64 = times.iter().map(|(_, t)| t).sum();
        println!("  phases of a step, each timed alone ({total:.3} s in all):");
        for (name, t) in &times {
            println!("    {name:<40} {t:>8.4} s  {:>5.1}%", 100.0 * t / total);
        }
        result["phases"] = json!(times);
        let (forward, both) =
            hayate_bench::throughput::conv_kernel(self.batch, self.steps as usize, device);
        println!(
            "  one 3x3 convolution 128->128 at 32x32, batch {}: forward {forward:.4} s, \
             forward+backward {both:.4} s",
            self.batch
        );
        result["conv3x3"] = json!({ "forward": forward, "forward_backward": both });
        let NetworkConfig::UNet(unet) = config.model.resolve()? else {
            println!("  (the op-by-op profile lists a UNet's layers; this network is a DiT)");
            return Ok(None);
        };
        let ops = hayate_bench::ops::profile(&unet, self.batch, self.steps as usize, device);
        result["ops"] = json!(ops);
        Ok(Some((unet, ops)))
    }

    /// PyTorch's figures for the same network, where it runs, and the ratios, into `result`.
    fn compare_with_torch(
        &self,
        name: &str,
        ours: &Throughput,
        result: &mut Value,
        ops: Option<&std::path::Path>,
    ) {
        let python = self
            .python
            .clone()
            .or_else(|| std::env::var("HAYATE_PYTHON").ok())
            .unwrap_or_else(|| "python3".into());
        let script = [
            "benches/torch_throughput.py",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../benches/torch_throughput.py"
            ),
        ]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("benches/torch_throughput.py"));
        // PyTorch runs where hayate ran: the CPU, or the GPU through CUDA.
        let on_gpu = self.device.backend != BackendChoice::Cpu
            && hayate_train::backend::hardware_gpu().is_some();
        let torch_device = if on_gpu { "cuda" } else { "cpu" };
        let torch = hayate_bench::throughput::torch_throughput(
            &python,
            &script,
            name,
            self.batch,
            self.steps,
            self.sample_steps,
            torch_device,
            ours.precision,
            ops,
        );
        match torch {
            Ok(torch) => {
                print_ratios(ours, &torch, result);
                result["torch"] = torch;
            }
            Err(why) => println!("PyTorch comparison skipped: {why}"),
        }
    }
}

/// hayate's own figures.
fn print_ours(name: &str, batch: usize, why: &str, ours: &Throughput) {
    println!(
        "hayate: {name} ({} parameters), batch {batch}, {}, on {why}",
        ours.params, ours.precision
    );
    let memory = ours.peak_rss_bytes.map_or("not reported".into(), |b| {
        format!("{:.2} GB", b as f64 / 1e9)
    });
    println!(
        "  training: {:.2} img/s ({:.3} s/step, {:.2} GFLOP/s); sampling: {:.2} image-steps/s; \
         peak RSS {memory}",
        ours.train_images_per_second,
        batch as f64 / ours.train_images_per_second,
        ours.train_flops / 1e9,
        ours.sample_image_steps_per_second,
    );
}

/// PyTorch's figures and hayate's ratio to them, measured in the same run.
fn print_ratios(ours: &Throughput, torch: &Value, result: &Value) {
    let rate = |key: &str| torch[key].as_f64().unwrap_or(f64::NAN);
    let (train, sample) = (
        rate("train_images_per_second"),
        rate("sample_image_steps_per_second"),
    );
    println!(
        "PyTorch {} on {} ({} parameters, CPU kernels {}): training {train:.2} img/s; sampling \
         {sample:.2} image-steps/s",
        torch["torch"],
        torch["device"],
        torch["params"],
        torch["cpu_capability"].as_str().unwrap_or("not reported")
    );
    println!(
        "hayate / PyTorch: training {:.3}x, sampling {:.3}x",
        ours.train_images_per_second / train,
        ours.sample_image_steps_per_second / sample
    );
    if let (Some(ours), Some(theirs)) = (result.get("conv3x3"), torch.get("conv3x3")) {
        let t = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "3x3 convolution, PyTorch / hayate time: forward {:.3}x, forward+backward {:.3}x",
            t(theirs, "forward") / t(ours, "forward"),
            t(theirs, "forward_backward") / t(ours, "forward_backward")
        );
    }
}

/// The op-by-op table, PyTorch's times beside hayate's where it ran, and the phases side by side.
fn print_profile(ops: &[OpTiming], result: &Value, batch: usize) {
    let torch = &result["torch"];
    let torch_ops: Option<Vec<Vec<(String, f64)>>> =
        serde_json::from_value(torch["ops"].clone()).ok();
    println!(
        "\nop by op, batch {batch}, each timed alone (ms per call; speed = PyTorch time / hayate time):\n"
    );
    print!(
        "{}",
        hayate_bench::ops::table(ops, torch_ops.as_deref(), batch)
    );
    if let (Some(ours), Some(theirs)) = (result["phases"].as_array(), torch["phases"].as_object()) {
        println!("\nphases of a step, each timed alone (s):\n");
        println!("| phase | hayate s | PyTorch s | hayate speed |\n| --- | --- | --- | --- |");
        for phase in ours {
            let (Some(name), Some(t)) = (phase[0].as_str(), phase[1].as_f64()) else {
                continue;
            };
            let (theirs, speed) = match theirs.get(name).and_then(Value::as_f64) {
                Some(p) => (format!("{p:.4}"), format!("{:.2}x", p / t.max(1e-12))),
                None => ("-".into(), "-".into()),
            };
            println!("| {name} | {t:.4} | {theirs} | {speed} |");
        }
    }
}

/// `hayate bench convergence`.
#[derive(Debug, clap::Args)]
pub struct ConvergenceArgs {
    /// The benchmark (experiments/bench-*.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Where the images come from.
    #[command(flatten)]
    pub data: DataArgs,
    /// Where results, the table and the plot go (default runs/<config name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the trained runs are kept (default $HAYATE_CACHE/bench-runs/<config name>, outside
    /// the clone); give two benchmarks the same folder to share the runs they have in common
    /// (same method name, seed and settings).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    /// Train and score only this method (repeatable; default all): the others' finished runs
    /// still enter the report, so a long benchmark runs a part at a time.
    #[arg(long = "method")]
    pub methods: Vec<String>,
    /// Train and score only this seed (repeatable; default all).
    #[arg(long = "seed")]
    pub seeds: Vec<u64>,
    /// Train and score nothing: print the report of the finished runs (the benchmark's kept
    /// scores), the unfinished ones listed as such.
    #[arg(long, conflicts_with_all = ["methods", "seeds"])]
    pub report_only: bool,
    /// Skip the Inception FID check of the proxy metric.
    #[arg(long)]
    pub no_inception: bool,
    /// FID's Inception weights (else $HAYATE_INCEPTION_WEIGHTS, else the cached download).
    #[arg(long)]
    pub inception_weights: Option<PathBuf>,
    /// First time every method's training steps side by side in this process (kept with the
    /// scores), so that the report gives each method's time to quality at its own step rate.
    #[arg(long)]
    pub step_rates: bool,
    /// With --step-rates: steps timed per method and round (after as many untimed ones).
    #[arg(long, default_value_t = 30, requires = "step_rates")]
    pub rate_steps: u64,
    /// With --step-rates: rounds over all methods (each rate is the median over them).
    #[arg(long, default_value_t = 3, requires = "step_rates")]
    pub rate_rounds: usize,
    /// Where to run.
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ConvergenceArgs {
    /// Runs (or continues) the benchmark and prints its table.
    pub fn run(self) -> Result<()> {
        let bench = hayate_bench::convergence::BenchConfig::load(&self.config)?;
        let out = self.out.unwrap_or_else(|| default_run_dir(&self.config));
        let (device, _) = self.device.select()?;
        let report = hayate_bench::convergence::run(
            &bench,
            &hayate_bench::convergence::BenchOptions {
                data_dir: self.data.data_dir,
                out: out.clone(),
                runs: self
                    .runs
                    .unwrap_or_else(|| hayate_bench::convergence::default_runs_dir(&self.config)),
                only_methods: self.methods,
                only_seeds: self.seeds,
                report_only: self.report_only,
                inception: !self.no_inception,
                inception_weights: self.inception_weights,
                step_rates: self
                    .step_rates
                    .then_some(hayate_bench::convergence::RateSettings {
                        steps: self.rate_steps,
                        rounds: self.rate_rounds,
                    }),
            },
            &device,
        )?;
        println!("{}", report.table());
        println!("results, table and plot in {}", out.display());
        eprintln!(
            "benchmark took {:.0} s (runs finished earlier excluded)",
            report.wall_seconds
        );
        Ok(())
    }
}

/// `hayate bench feature-net`.
#[derive(Debug, clap::Args)]
pub struct FeatureNetArgs {
    /// Where the images come from.
    #[command(flatten)]
    pub data: DataArgs,
    /// Image side: 32, or 16 / 8 (CIFAR-10 averaged over blocks).
    #[arg(long, default_value_t = 16)]
    pub resolution: usize,
    /// Passes over the training images.
    #[arg(long, default_value_t = 15)]
    pub epochs: usize,
    /// Seed of the initialisation, shuffling and flips.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The weights file to write.
    #[arg(long, default_value = "benches/cifar10-16-features.hfn")]
    pub out: PathBuf,
    /// Where to run.
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl FeatureNetArgs {
    /// Trains the classifier and writes its weights with its test accuracy.
    pub fn run(self) -> Result<()> {
        if ![32, 16, 8].contains(&self.resolution) {
            bail!("--resolution must be 32, 16 or 8");
        }
        let (device, _) = self.device.select()?;
        let cache = hayate_train::train::cache_dir();
        let open = |split| {
            let dir = self.data.data_dir.as_deref();
            hayate_train::dataset::cifar10_images(dir, split, self.resolution, &cache)
        };
        let (train_images, test_images) = (open(Split::Train)?, open(Split::Test)?);
        eprintln!("training on {}", train_images.describe());
        let settings = hayate_bench::feature_net::FeatureNetTraining {
            epochs: self.epochs,
            seed: self.seed,
            ..Default::default()
        };
        let start = std::time::Instant::now();
        let epochs = self.epochs;
        let file = hayate_bench::feature_net::train_feature_net(
            train_images.as_ref(),
            test_images.as_ref(),
            &settings,
            &device,
            |epoch, loss| {
                eprintln!(
                    "epoch {epoch}/{epochs}: loss {loss:.4} ({:.0} s)",
                    start.elapsed().as_secs_f64()
                )
            },
        )?;
        file.save(&self.out)?;
        println!(
            "wrote {}: test accuracy {:.2}% on {} CIFAR-10 test images, trained in {:.0} s",
            self.out.display(),
            100.0 * file.info.test_accuracy,
            file.info.test_images,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
