//! `hayate bench throughput`: images per second of full training steps and of sampling steps,
//! the FLOP rate they imply, peak memory, and the same figures from PyTorch on the same machine.

use anyhow::{Context, Result};
use burn::prelude::*;
use hayate_data::{DataError, ImageSource};
use hayate_eval::sample::{Sampling, generate};
use hayate_schedule::ddim::Ddim;
use hayate_train::config::RunConfig;
use hayate_train::train::{TrainOptions, count_params, init_network, train};
use rand::{RngCore, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// In-memory random images: what a throughput benchmark trains on, so any preset can be measured
/// without its dataset (pixel values do not change the work of a step).
#[derive(Debug)]
pub struct RandomImages {
    size: usize,
    pixels: Vec<u8>,
    classes: Vec<String>,
}

impl RandomImages {
    /// `count` images of `size` x `size` from `seed`, labelled with `classes` classes in turn.
    pub fn new(count: usize, size: usize, classes: usize, seed: u64) -> Self {
        let mut pixels = vec![0u8; count * 3 * size * size];
        hayate_schedule::HostRng::seed_from_u64(seed).fill_bytes(&mut pixels);
        Self {
            size,
            pixels,
            classes: (0..classes).map(|c| format!("class{c}")).collect(),
        }
    }
}

impl ImageSource for RandomImages {
    fn len(&self) -> usize {
        self.pixels.len() / (3 * self.size * self.size)
    }

    fn resolution(&self) -> usize {
        self.size
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn read(&self, index: usize, pixels: &mut [u8]) -> Result<u32, DataError> {
        let per = pixels.len();
        let len = self.len();
        let image = self
            .pixels
            .get(index * per..(index + 1) * per)
            .ok_or(DataError::OutOfRange { index, len })?;
        pixels.copy_from_slice(image);
        Ok((index % self.classes.len().max(1)) as u32)
    }

    fn describe(&self) -> String {
        format!(
            "{} random images of {s}x{s} (benchmark data)",
            self.len(),
            s = self.size
        )
    }

    fn name(&self) -> String {
        "random".into()
    }
}

/// What one throughput measurement found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Throughput {
    /// Parameters of the network.
    pub params: usize,
    /// Images per step.
    pub batch: usize,
    /// Training images per second over the timed steps (after as many warm-up steps).
    pub train_images_per_second: f64,
    /// Achieved FLOP/s of training: 3x the analytic forward FLOPs (forward plus a backward of
    /// twice its cost) per image, times the rate.
    pub train_flops: f64,
    /// Sampling throughput: images times network evaluations per second (one DDIM step each).
    pub sample_image_steps_per_second: f64,
    /// Peak resident memory of the process in bytes, where the OS reports it (Linux).
    pub peak_rss_bytes: Option<u64>,
    /// The type the forward computed in.
    pub precision: hayate_model::Precision,
    /// Mean training loss over the warm-up steps and over the timed steps: every backend draws
    /// the same batches, timesteps and noise, so these agree across backends.
    pub losses: Vec<f64>,
}

/// Measures `config`'s training step at its batch size (`steps` warm-up steps, then `steps`
/// timed ones) on random images, then `sample_steps` DDIM steps of sampling from the same
/// network, on `device`.
pub fn throughput(
    config: &RunConfig,
    steps: u64,
    sample_steps: usize,
    device: &Device,
) -> Result<Throughput> {
    let mut config = config.clone();
    config.train.steps = 2 * steps;
    config.train.checkpoint_every = steps;
    config.train.keep_checkpoints = 1;
    // Full learning rate from the first step: a step costs the same at any rate, and under a
    // warm-up of thousands of steps the zero-initialised output layer would barely move, so
    // the losses that backends and precisions are compared by would not either.
    config.train.warmup_steps = 0;
    config.validate()?;
    let unet = config.model.resolve()?;
    let batch = config.train.batch_size;
    let images = RandomImages::new(batch.max(64), unet.resolution(), unet.num_classes(), 0);
    let out = std::env::temp_dir().join(format!("hayate-bench-{}", std::process::id()));
    let report = train(
        &TrainOptions {
            config: config.clone(),
            data_dir: None,
            out: out.clone(),
            resume: false,
            init: None,
            allow_config_change: false,
            devices: Vec::new(),
            images: Some(Arc::new(images)),
        },
        device,
        // Only the steps are measured: no grids, FID or charts between the intervals.
        Vec::new(),
    );
    let _ = std::fs::remove_dir_all(&out);
    let report = report?;
    let rate = *report
        .interval_images_per_second
        .get(1)
        .context("the timed interval did not run")?;

    // Sampling in the training precision too (the EMA network cast as a training step casts).
    let model = hayate_model::cast_params(
        init_network(&unet, 0, device),
        config.train.precision.dtype(),
    );
    let schedule = config.diffusion.schedule()?;
    let sampler = Ddim::new(sample_steps.clamp(1, schedule.steps()), 0.0);
    let run = || {
        let model = Sampling {
            model: &model,
            device,
            schedule: &schedule,
            prediction: config.diffusion.prediction,
        };
        generate(model, &sampler, batch, 0, None)
    };
    run(); // warm-up: kernel compilation and autotuning
    let started = Instant::now();
    run();
    let sample_rate = (batch * sampler.steps) as f64 / started.elapsed().as_secs_f64();
    Ok(Throughput {
        params: count_params(&unet),
        batch,
        train_images_per_second: rate,
        train_flops: 3.0 * unet.forward_flops() as f64 * rate,
        sample_image_steps_per_second: sample_rate,
        peak_rss_bytes: peak_rss(),
        precision: config.train.precision,
        losses: report.interval_losses,
    })
}

/// Seconds per training step spent in each phase, measured one phase at a time with the device
/// drained after each (so, unlike [`throughput`], nothing overlaps): where a step's time goes.
/// Averages over `steps` steps after one warm-up step.
pub fn phases(config: &RunConfig, steps: usize, device: &Device) -> Result<Vec<(String, f64)>> {
    use hayate_train::batches::{BatchSource, SourceState};
    use hayate_train::ema::Ema;
    use hayate_train::step::DenoisingModel;

    let unet = config.model.resolve()?;
    let train_device = device.clone().autodiff();
    let mut model = DenoisingModel {
        unet: init_network(&unet, 0, &train_device),
        grad_clip: config.train.grad_clip,
        precision: config.train.precision,
    };
    let batch = config.train.batch_size;
    let images = Arc::new(RandomImages::new(
        batch.max(64),
        unet.resolution(),
        unet.num_classes(),
        0,
    ));
    let mut source = BatchSource::new(images, config, SourceState::new(0))?;
    let mut optim = config.train.optimizer();
    let mut ema = Ema::new(&model.unet, config.train.ema_schedule());
    // Reading one value waits for everything queued before it on an in-order device.
    let drain = |t: Tensor<1>| t.sum().into_data();
    let names = [
        "host batch (data, t, noise, targets)",
        "to device",
        "forward and loss",
        "backward and gradient clipping",
        "optimiser (Adam)",
        "EMA update",
    ];
    let mut totals = [0f64; 6];
    for step in 0..=steps {
        let mut times = [0f64; 6];
        let mut clock = Instant::now();
        let mut lap = |i: usize, times: &mut [f64; 6]| {
            times[i] = clock.elapsed().as_secs_f64();
            clock = Instant::now();
        };
        let host = source.next_batch()?;
        lap(0, &mut times);
        let on_device = host.to_device(&train_device);
        drain(on_device.weight.clone());
        lap(1, &mut times);
        let loss = model.loss(&on_device);
        drain(loss.clone().without_autodiff());
        lap(2, &mut times);
        let grads = model.gradients(&loss);
        drain(grads_probe(&model, &grads));
        lap(3, &mut times);
        model = optim.step(1e-4, model, grads);
        drain(first_param(&model));
        lap(4, &mut times);
        ema.update(&model.unet, step as u64);
        drain(first_param(ema.model()));
        lap(5, &mut times);
        if step > 0 {
            for (t, x) in totals.iter_mut().zip(times) {
                *t += x;
            }
        }
    }
    Ok(names
        .iter()
        .zip(totals)
        .map(|(n, t)| (n.to_string(), t / steps.max(1) as f64))
        .collect())
}

/// Seconds for one 3x3 convolution (128 to 128 channels at 32x32, padding 1: the most common
/// layer of the DDPM CIFAR-10 UNet, 2.4 GFLOP at batch 8) forward, and forward plus backward, at
/// `batch`: the kernel that dominates a step, timed alone, as the model runs it (hayate's
/// im2col convolution on the CPU unless `--composed-ops`). Averages over `repeats` after one
/// warm-up.
pub fn conv_kernel(batch: usize, repeats: usize, device: &Device) -> (f64, f64) {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    let train_device = device.clone().autodiff();
    let conv = Conv2dConfig::new([128, 128], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&train_device);
    let x = Tensor::<4>::random(
        [batch, 128, 32, 32],
        burn::tensor::Distribution::Default,
        &train_device,
    );
    let time = |backward: bool| {
        let mut total = 0.0;
        for i in 0..=repeats {
            let started = Instant::now();
            let y = hayate_model::fused::conv2d(&conv, x.clone()).sum();
            if backward {
                let grads = y.backward();
                let g = conv.weight.grad(&grads).expect("the weight has a gradient");
                g.sum().into_data();
            } else {
                y.without_autodiff().into_data();
            }
            if i > 0 {
                total += started.elapsed().as_secs_f64();
            }
        }
        total / repeats.max(1) as f64
    };
    (time(false), time(true))
}

/// The first float parameter of a module, flattened (to wait on).
struct Probe(Option<Tensor<1>>);

impl burn::module::ModuleVisitor for Probe {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        if self.0.is_none() {
            let value = param.val().without_autodiff();
            let n = value.shape().num_elements();
            self.0 = Some(value.reshape([n]));
        }
    }
}

/// A module's first float parameter, flattened (to wait on).
fn first_param<M: burn::module::Module>(module: &M) -> Tensor<1> {
    let mut probe = Probe(None);
    module.visit(&mut probe);
    probe.0.expect("the model has parameters")
}

/// The gradient of a module's first parameter, flattened (to wait on).
fn grads_probe<M: burn::module::Module>(
    module: &M,
    grads: &burn::optim::GradientsParams,
) -> Tensor<1> {
    struct First<'a>(&'a burn::optim::GradientsParams, Option<Tensor<1>>);
    impl burn::module::ModuleVisitor for First<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if self.1.is_none()
                && let Some(g) = self.0.get::<D>(param.id)
            {
                let n = g.shape().num_elements();
                self.1 = Some(g.reshape([n]));
            }
        }
    }
    let mut first = First(grads, None);
    module.visit(&mut first);
    first.1.expect("the model has gradients")
}

/// The process's peak resident set size (`VmHWM`), on Linux.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// PyTorch's figures for the same preset and batch from `benches/torch_throughput.py`, run with
/// `python`; `None` with the reason when PyTorch or diffusers is not installed there. With
/// `ops` (a file from [`crate::ops::write_spec`]) the script also times those layers one by one
/// and the phases of a step.
#[allow(clippy::too_many_arguments)]
pub fn torch_throughput(
    python: &str,
    script: &Path,
    preset: &str,
    batch: usize,
    steps: u64,
    sample_steps: usize,
    device: &str,
    precision: hayate_model::Precision,
    ops: Option<&Path>,
) -> Result<serde_json::Value, String> {
    let mut command = std::process::Command::new(python);
    command
        .arg(script)
        .args(["--preset", preset, "--device", device])
        .args(["--batch", &batch.to_string(), "--steps", &steps.to_string()])
        .args(["--sample-steps", &sample_steps.to_string()])
        // bf16 against autocast to bf16; f32 against f32 with TF32 off.
        .args(["--precision", precision.name()]);
    if let Some(ops) = ops {
        command.arg("--ops").arg(ops);
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let last = err.lines().last().unwrap_or("no output");
        return Err(format!("{} failed: {last}", script.display()));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("unreadable output {line:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_images_read_like_a_dataset() {
        let images = RandomImages::new(5, 4, 3, 1);
        assert_eq!((images.len(), images.resolution()), (5, 4));
        let (mut a, mut b) = (vec![0u8; 48], vec![0u8; 48]);
        assert_eq!(images.read(4, &mut a).unwrap(), 1);
        images.read(3, &mut b).unwrap();
        assert_ne!(a, b);
        assert!(images.read(5, &mut a).is_err());
    }

    #[test]
    fn throughput_runs_the_tiny_model_and_reports_consistent_figures() {
        let config = RunConfig::parse("[model]\npreset = \"tiny\"\n[train]\nbatch_size = 2\n")
            .expect("valid");
        let started = Instant::now();
        let t = throughput(&config, 1, 2, &Device::flex()).unwrap();
        let wall = started.elapsed().as_secs_f64();
        assert_eq!((t.params, t.batch), (702_499, 2));
        // The FLOP rate is the analytic count (3x the forward pass per image) at the measured
        // rate; the timed step (2 images) and the timed sampling pass (2 images x 2 steps)
        // each took a positive part of the call's own wall time.
        let forward = config.model.resolve().unwrap().forward_flops() as f64;
        assert_eq!(t.train_flops, 3.0 * forward * t.train_images_per_second);
        assert!(2.0 / t.train_images_per_second < wall, "{t:?} in {wall} s");
        assert!(
            4.0 / t.sample_image_steps_per_second < wall,
            "{t:?} in {wall} s"
        );
        if cfg!(target_os = "linux") {
            assert!(t.peak_rss_bytes.unwrap() > 1 << 20);
        }
        let (forward, both) = conv_kernel(1, 1, &Device::flex());
        assert!(forward > 0.0 && both > forward);
        let phases = phases(&config, 1, &Device::flex()).unwrap();
        assert_eq!(phases.len(), 6);
        assert!(phases.iter().all(|(_, t)| *t > 0.0), "{phases:?}");
    }
}
