//! The training run: wires data, schedule, model, optimiser, EMA and checkpoints into a
//! burn-train `Learner`, with a learning strategy whose "epoch" is the interval between
//! checkpoints.

use crate::batches::{BatchSource, SourceState, StepLoader};
use crate::checkpoint::{Checkpoint, CheckpointMeta, write_atomic};
use crate::config::RunConfig;
use crate::ema::Ema;
use crate::metric::{Beta1, HostValue, ImagesPerSecond, MeanT};
use crate::run_dir::{self, Event};
use crate::step::DenoisingModel;
use anyhow::{Context, Result, bail, ensure};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::train::checkpoint::{
    Checkpoint as BurnCheckpoint, Checkpointer, CheckpointerError, CheckpointingAction,
    CheckpointingStrategy,
};
use burn::train::metric::store::EventStoreClient;
use burn::train::metric::{LearningRateMetric, LossMetric};
use burn::train::{
    EventProcessorTraining, Learner, LearnerEvent, SupervisedLearningStrategy, SupervisedTraining,
    SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents, TrainingItem,
    TrainingStrategy, ValidLoader,
};
use hayate_model::{Network, NetworkConfig};
use hayate_schedule::NoiseSchedule;
use std::io::IsTerminal;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How to run one training job.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The resolved config (with `--steps` and `--seed` applied).
    pub config: RunConfig,
    /// `--data-dir`: overrides `data.dir`.
    pub data_dir: Option<PathBuf>,
    /// The run folder: config, checkpoints, samples, metrics.
    pub out: PathBuf,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
    /// A fresh run (not a resume) starts from the EMA weights of this checkpoint (a file or a
    /// run folder, such as one `hayate import diffusers` wrote) instead of random ones: fine
    /// tuning. Its network must have the config's shape.
    pub init: Option<PathBuf>,
    /// On resume, accept a config that differs from the checkpoint's in settings that change
    /// the run (they are listed, and logged to metrics.jsonl); otherwise such a resume is
    /// refused.
    pub allow_config_change: bool,
    /// Data parallelism: every device of the run, the first being the one passed to [`train`]
    /// (which keeps the model, optimiser and EMA); each step's batch is split across them. Empty
    /// or one device: no splitting.
    pub devices: Vec<Device>,
    /// The training images, given directly (benchmarks, programs embedding hayate); `None`
    /// opens those of `config.data`.
    pub images: Option<Arc<dyn hayate_data::ImageSource>>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The global step reached.
    pub step: u64,
    /// Mean training loss over each checkpoint interval, in order.
    pub interval_losses: Vec<f64>,
    /// Training images per second in each checkpoint interval (checkpointing and sampling
    /// excluded), in order.
    pub interval_images_per_second: Vec<f64>,
    /// Training images per second over the run's steps (checkpointing and sampling excluded).
    pub images_per_second: f64,
    /// The newest checkpoint.
    pub checkpoint: Option<PathBuf>,
}

/// What the end of a checkpoint interval hands to the work registered for it: the run as it
/// stands just after its checkpoint was written.
pub struct IntervalEnd<'a> {
    /// The step just checkpointed.
    pub step: u64,
    /// The run's config.
    pub config: &'a RunConfig,
    /// The run folder ([`run_dir`] has its layout).
    pub out: &'a Path,
    /// The checkpoint just written.
    pub checkpoint: &'a Path,
    /// The EMA network, on the run's first device (without autodiff).
    pub ema: &'a Network,
    /// That device.
    pub device: &'a Device,
    /// The run's noise schedule.
    pub schedule: &'a NoiseSchedule,
    /// The training images.
    pub images: &'a Arc<dyn hayate_data::ImageSource>,
}

/// Work done at the end of every checkpoint interval, after the checkpoint and its metrics line
/// (`hayate-eval`'s `interval` module has the sample grid, FID and chart hooks). Hooks run in the
/// order given to [`train`]; an error stops the run, with the checkpoint just written kept.
pub trait IntervalHook: Send {
    /// Does the hook's work for the interval that just ended.
    fn run(&mut self, end: &IntervalEnd<'_>) -> Result<()>;
}

/// The folder downloads are cached in: `$HAYATE_CACHE`, else `~/.cache/hayate`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HAYATE_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("hayate")
}

/// Builds the network with weights drawn from `seed` on the CPU backend when it is built in, so
/// every backend starts from the same numbers, then places it on `device`.
pub fn init_network(config: &NetworkConfig, seed: u64, device: &Device) -> Network {
    init_seeded(seed, device, |d| config.init(d))
}

/// A module built by `build` with its random draws seeded by `seed`: on the CPU backend when it
/// is built in (then moved to `device`), so every backend starts from the same numbers.
pub fn init_seeded<M: Module>(seed: u64, device: &Device, build: impl Fn(&Device) -> M) -> M {
    // Backends may keep one generator per process: hold it from seeding to the last draw, so two
    // runs in one process (tests, sweeps) cannot interleave their draws.
    static BACKEND_RNG: Mutex<()> = Mutex::new(());
    let _guard = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    #[cfg(feature = "cpu")]
    {
        let host = Device::flex();
        host.seed(seed);
        let record = build(&host).into_record();
        build(device).load_record(record)
    }
    #[cfg(not(feature = "cpu"))]
    {
        device.seed(seed);
        build(device)
    }
}

/// A record's bytes, as stored in hayate's checkpoint file.
pub fn record_bytes<R: BurnCheckpoint>(record: R) -> Result<Vec<u8>> {
    let bytes = record
        .checkpoint_into_bytes()
        .map_err(|e| anyhow::anyhow!("serialising a record: {e}"))?;
    Ok(bytes.to_vec())
}

/// A record read back from its bytes in a checkpoint; `what` names it in the error.
pub fn record_from<R: BurnCheckpoint>(bytes: &[u8], what: &str) -> Result<R> {
    R::checkpoint_from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| anyhow::anyhow!("checkpoint's {what} record: {e}"))
}

/// Loads the EMA network of a checkpoint onto `device`.
pub fn load_ema(checkpoint: &Checkpoint, device: &Device) -> Result<Network> {
    let config = checkpoint.meta.config.model.resolve()?;
    let record: ModuleRecord = record_from(checkpoint.section("ema")?, "EMA")?;
    Ok(config.init(device).load_record(record))
}

/// `unet` with the EMA weights of the newest checkpoint of `path`, whose network must have the
/// shape of `config` (dropout may differ: it has no weights).
fn init_from(path: &Path, config: &NetworkConfig, unet: Network) -> Result<Network> {
    let (file, checkpoint) = Checkpoint::load_newest_valid(path)?;
    let theirs = checkpoint.meta.config.model.resolve()?;
    let same_shape = theirs.with_dropout(config.dropout()) == *config;
    ensure!(
        same_shape,
        "--init {}: its network differs from the config's [model] in more than dropout:\n  \
         checkpoint: {theirs:?}\n  config:     {config:?}",
        file.display()
    );
    let record: ModuleRecord = record_from(checkpoint.section("ema")?, "EMA")?;
    eprintln!(
        "starting from the EMA weights of {} (step {})",
        file.display(),
        checkpoint.step()
    );
    Ok(unet.load_record(record))
}

/// Runs (or resumes) training on `device` and returns what it measured; `hooks` run at the end
/// of every checkpoint interval.
pub fn train(
    options: &TrainOptions,
    device: &Device,
    hooks: Vec<Box<dyn IntervalHook>>,
) -> Result<TrainReport> {
    let config = &options.config;
    let out = &options.out;
    std::fs::create_dir_all(run_dir::samples_dir(out))
        .with_context(|| format!("cannot create run folder {}", out.display()))?;

    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    let resume_from = if options.resume {
        let (path, checkpoint) = Checkpoint::load_newest_valid(out)?;
        let changes = checkpoint.meta.config.differences(config);
        if !changes.is_empty() && !options.allow_config_change {
            bail!(
                "the config differs from the one {} was trained with, in settings that change \
                 the run:\n  {}\nresume with the run folder's config.toml, or pass \
                 --allow-config-change to accept the change",
                path.display(),
                changes.join("\n  ")
            );
        }
        eprintln!(
            "resuming from {} (step {})",
            path.display(),
            checkpoint.step()
        );
        run_dir::forget_after(out, checkpoint.step())?;
        if !changes.is_empty() {
            eprintln!("config changed on resume: {}", changes.join("; "));
            run_dir::append(
                out,
                &Event::ConfigChange {
                    step: checkpoint.step(),
                    changes,
                },
            )?;
        }
        Some((path, checkpoint))
    } else {
        if Checkpoint::latest(out).is_ok() {
            bail!(
                "{} already holds checkpoints: pass --resume to continue that run, or choose another --out",
                out.display()
            );
        }
        // Lines of an earlier attempt that died before its first checkpoint.
        run_dir::forget_after(out, 0)?;
        None
    };
    write_atomic(&run_dir::config_path(out), config.to_toml().as_bytes())?;

    if options.devices.len() > config.train.batch_size {
        bail!(
            "train.batch_size ({}) is smaller than the number of devices ({}): each device needs \
             at least one image per step",
            config.train.batch_size,
            options.devices.len()
        );
    }
    let dataset = match &options.images {
        Some(images) => images.clone(),
        None => crate::dataset::open_training_images(
            &config.data,
            options.data_dir.as_deref(),
            config.model.resolve()?.resolution(),
            &cache_dir(),
        )?,
    };
    eprintln!("training images: {}", dataset.describe());

    let unet_config = config.model.resolve()?;
    let schedule = config.diffusion.schedule()?;
    let train_device = device.clone().autodiff();
    let unet = init_network(&unet_config, config.train.seed, &train_device);
    let unet = match (&options.init, &resume_from) {
        (Some(path), None) => init_from(path, &unet_config, unet)?,
        _ => unet,
    };
    let precision = config.train.precision;
    if !precision.supported_on(device) {
        bail!(
            "train.precision = \"{precision}\": the device ({device:?}) has no {precision} \
             arithmetic (WGSL has no bf16; Vulkan stores it but cannot compute in it); use \
             --backend cuda or cpu for {precision}, or precision \"f32\""
        );
    }
    let model = DenoisingModel {
        unet,
        grad_clip: config.train.grad_clip,
        precision,
    };
    let optimizer = config.train.optimizer();
    let start_step = resume_from.as_ref().map_or(0, |(_, c)| c.step());
    let seconds_before = resume_from
        .as_ref()
        .map_or(0.0, |(_, c)| c.meta.train_seconds);
    let scheduler = config.train.lr_schedule(start_step);
    let mut learner = Learner::new(model, optimizer, scheduler);

    let inner_device = device.clone();
    let (state, ema) = match &resume_from {
        Some((_, checkpoint)) => {
            learner.load_model(record_from(checkpoint.section("model")?, "model")?);
            learner.load_optim(record_from(checkpoint.section("optimizer")?, "optimizer")?);
            let ema = Ema::resume(
                load_ema(checkpoint, &inner_device)?,
                config.train.ema_schedule(),
            );
            (checkpoint.meta.source.clone(), ema)
        }
        None => (
            SourceState::new(config.train.seed),
            Ema::new(&learner.model().unet, config.train.ema_schedule()),
        ),
    };

    let source = Arc::new(Mutex::new(BatchSource::new(
        dataset.clone(),
        config,
        state,
    )?));
    let every = config.train.checkpoint_every;
    let loader = StepLoader {
        source: source.clone(),
        steps: every as usize,
        device: train_device.clone(),
    };
    let no_validation = StepLoader {
        steps: 0,
        ..loader.clone()
    };

    let model_slot = Slot::default();
    let optim_slot = Slot::default();
    let strategy = Arc::new(DiffusionStrategy {
        run: Mutex::new(Some(RunState {
            source,
            ema,
            schedule,
            config: config.clone(),
            out: out.clone(),
            inner_device,
            model_slot: model_slot.clone(),
            optim_slot: optim_slot.clone(),
            dataset,
            devices: options
                .devices
                .iter()
                .map(|d| d.clone().autodiff())
                .collect(),
            hooks,
            report: TrainReport {
                step: start_step,
                interval_losses: Vec::new(),
                interval_images_per_second: Vec::new(),
                images_per_second: 0.0,
                checkpoint: resume_from.map(|(path, _)| path),
            },
            train_seconds: seconds_before,
            error: None,
        })),
        result: Mutex::new(None),
    });

    let epochs = config.train.steps.div_ceil(every) as usize;
    let training = SupervisedTraining::new(out, Arc::new(loader), Arc::new(no_validation));
    let training = match crate::progress::renderer(config.train.log_every as usize) {
        Some(lines) => training.renderer(lines),
        None => training,
    };
    let result = training
        .metric_train_numeric(LossMetric::new())
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(ImagesPerSecond::new())
        .metric_train_numeric(HostValue::<MeanT>::new("Mean t over T"))
        .metric_train_numeric(HostValue::<Beta1>::new("Beta1"))
        .num_epochs(epochs)
        // Burn asks for a scheduler checkpointer too; the rate is rebuilt from the step on
        // resume, so that record is not kept.
        .with_custom_checkpointers(
            Capture::<ModuleRecord>::new(model_slot),
            Capture::new(optim_slot),
            Capture::new(Slot::default()),
        )
        .with_checkpointing_strategy(EveryEpoch)
        .with_training_strategy(TrainingStrategy::Custom(strategy.clone()))
        .launch(learner);
    if let Some(error) = result.error {
        bail!("training failed: {error}");
    }
    let run = strategy
        .result
        .lock()
        .expect("strategy result lock")
        .take()
        .context("the training strategy did not run")?;
    if let Some(error) = run.error {
        return Err(error);
    }
    Ok(run.report)
}

/// Everything the strategy owns during the run.
struct RunState {
    source: Arc<Mutex<BatchSource>>,
    ema: Ema,
    schedule: NoiseSchedule,
    config: RunConfig,
    out: PathBuf,
    inner_device: Device,
    model_slot: Slot,
    optim_slot: Slot,
    report: TrainReport,
    /// Seconds in training steps since the run began, over every resume.
    train_seconds: f64,
    error: Option<anyhow::Error>,
    /// The autodiff devices of a data-parallel run (empty or one: a single device).
    devices: Vec<Device>,
    /// The training images.
    dataset: Arc<dyn hayate_data::ImageSource>,
    /// The caller's end-of-interval work.
    hooks: Vec<Box<dyn IntervalHook>>,
}

/// The learning strategy: one "epoch" per checkpoint interval, EMA after every step, and a
/// checkpoint, a metrics line and the caller's hooks at the end of each interval.
struct DiffusionStrategy {
    run: Mutex<Option<RunState>>,
    result: Mutex<Option<RunState>>,
}

impl SupervisedLearningStrategy<DenoisingModel> for DiffusionStrategy {
    fn fit(
        &self,
        components: TrainingComponents<DenoisingModel>,
        mut learner: Learner<DenoisingModel>,
        loader: TrainLoader<DenoisingModel>,
        _validation: ValidLoader<DenoisingModel>,
        _starting_epoch: usize,
    ) -> (
        DenoisingModel,
        SupervisedTrainingEventProcessor<DenoisingModel>,
    ) {
        let mut run = self
            .run
            .lock()
            .expect("run lock")
            .take()
            .expect("fit runs once");
        let mut processor = components.event_processor;
        let interrupter = components.interrupter;
        let mut checkpointer = components.checkpointer;
        let every = run.config.train.checkpoint_every;
        let total = run.config.train.steps;
        let momentum = run.config.train.momentum_schedule();
        let log_every = run.config.train.log_every;
        let mut train_time = Duration::ZERO;
        let mut images = 0usize;
        let first_step = run.report.step;
        let mut window = LogWindow::default();
        let mut unread: Option<Unread> = None;
        let wants_losses = run.source.lock().expect("batch source lock").wants_losses();

        while run.report.step < total && !interrupter.should_stop() {
            let epoch = (run.report.step / every) as usize + 1;
            interrupter.fail_on_error(processor.process_train(LearnerEvent::StartSplit {
                epoch_number: epoch,
                total_items: loader.num_items(),
            }));
            let started = Instant::now();
            let mut interval_loss = 0.0;
            let mut steps_in_interval = 0u64;
            let mut images_in_interval = 0usize;
            let mut iter = loader.iter();
            while let Some(item) = iter.next() {
                let batch = match item {
                    Ok(batch) => batch,
                    Err(e) => {
                        run.error = Some(anyhow::anyhow!(
                            "training data error at step {}: {e}",
                            run.report.step + 1
                        ));
                        break;
                    }
                };
                learner.lr_step();
                let mut output = if run.devices.len() > 1 {
                    learner.model().data_parallel_step(batch, &run.devices)
                } else {
                    learner.train_step(batch)
                };
                learner.optimizer_step(output.grads);
                let (step, updates) = {
                    let mut source = run.source.lock().expect("batch source lock");
                    (source.state.step, std::mem::take(&mut source.updates))
                };
                run.ema.update(&learner.model().unet, step - 1);
                images_in_interval += output.item.images;
                steps_in_interval += 1;
                run.report.step = step;
                output.item.beta1 = momentum.beta1(step - 1);
                window.add(&output.item);
                // The loss is read one step late, so the host never waits for the step it has
                // just launched, except where a log line needs the newest value.
                let log_now = step.is_multiple_of(log_every) || step == total;
                let this = Unread {
                    step,
                    loss: output.item.loss.clone().without_autodiff(),
                    per_sample: wants_losses
                        .then(|| output.item.per_sample.clone().without_autodiff()),
                };
                let mut read = vec![];
                read.extend(unread.replace(this));
                if log_now {
                    read.extend(unread.take());
                }
                let last_good = run.report.checkpoint.as_deref();
                let checked = updates
                    .into_iter()
                    .try_for_each(|(step, band_mass)| {
                        run_dir::append(&run.out, &Event::Timesteps { step, band_mass })
                    })
                    .and_then(|()| {
                        read.into_iter().try_for_each(|u| {
                            u.record(&run.source, last_good, &mut interval_loss, &mut window)
                        })
                    });
                let logged = checked.and_then(|()| {
                    if log_now {
                        let line = window.take_line(step, learner.lr_current().base());
                        run_dir::append(&run.out, &line)
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = logged {
                    interrupter.stop(Some(&format!("{e:#}")));
                    run.error = Some(e);
                    break;
                }
                let item = TrainingItem::new(
                    output.item,
                    iter.progress(),
                    Some(step as usize),
                    Some(learner.lr_current()),
                );
                interrupter
                    .fail_on_error(processor.process_train(LearnerEvent::ProcessedItem(item)));
                if interrupter.should_stop() {
                    break;
                }
            }
            if let Some(u) = unread.take()
                && run.error.is_none()
            {
                let last_good = run.report.checkpoint.as_deref();
                if let Err(e) = u.record(&run.source, last_good, &mut interval_loss, &mut window) {
                    run.error = Some(e);
                }
            }
            if run.error.is_some() {
                break;
            }
            let mean_loss = interval_loss / steps_in_interval.max(1) as f64;
            // Reading the loss waits for the device, so the time includes all the interval's work.
            let elapsed = started.elapsed();
            train_time += elapsed;
            run.train_seconds += elapsed.as_secs_f64();
            images += images_in_interval;
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndSplit(epoch)));
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndEpoch(epoch)));
            if steps_in_interval == 0 {
                break;
            }
            run.report.interval_losses.push(mean_loss);
            run.report
                .interval_images_per_second
                .push(images_in_interval as f64 / elapsed.as_secs_f64().max(1e-9));
            run.report.images_per_second = images as f64 / train_time.as_secs_f64().max(1e-9);
            let saved = checkpointer
                .as_mut()
                .context("the Learner was built without checkpointers")
                .and_then(|c| {
                    c.checkpoint(&learner, epoch, &components.event_store);
                    end_of_interval(&mut run, epoch, mean_loss)
                });
            if let Err(e) = saved {
                let kept = match &run.report.checkpoint {
                    Some(path) => format!(
                        "the newest complete checkpoint, {}, is intact",
                        path.display()
                    ),
                    None => "no checkpoint had been completed yet".into(),
                };
                let e = e.context(format!(
                    "checkpoint at step {} not written; {kept}",
                    run.report.step
                ));
                interrupter.stop(Some(&format!("{e:#}")));
                run.error = Some(e);
                break;
            }
        }
        if run.report.step == first_step && run.error.is_none() && first_step < total {
            run.error = Some(anyhow::anyhow!(
                "no training step ran (interrupted: {:?})",
                interrupter.get_message()
            ));
        }
        *self.result.lock().expect("result lock") = Some(run);
        (learner.model(), processor)
    }
}

/// Writes the checkpoint and the metrics line for the interval just done, then runs the hooks.
fn end_of_interval(run: &mut RunState, epoch: usize, mean_loss: f64) -> Result<()> {
    let step = run.report.step;
    let model = run.model_slot.take(epoch)?;
    let optimizer = run.optim_slot.take(epoch)?;
    let source = run.source.lock().expect("batch source lock").state.clone();
    let checkpoint = Checkpoint {
        meta: CheckpointMeta {
            config: run.config.clone(),
            source,
            sections: Vec::new(),
            train_seconds: run.train_seconds,
        },
        sections: vec![
            ("model".into(), model),
            (
                "ema".into(),
                record_bytes(run.ema.model().clone().into_record())?,
            ),
            ("optimizer".into(), optimizer),
        ],
    };
    let path = checkpoint.save(&run.out, run.config.train.keep_checkpoints)?;
    run.report.checkpoint = Some(path.clone());
    let line = Event::Checkpoint {
        step,
        loss: mean_loss,
        ema_decay: run.ema.decay_at(step.saturating_sub(1)),
        images_per_second: run.report.images_per_second,
        train_seconds: run.train_seconds,
        checkpoint: path.file_name().map(|n| n.to_string_lossy().to_string()),
    };
    run_dir::append(&run.out, &line)?;
    let end = IntervalEnd {
        step,
        config: &run.config,
        out: &run.out,
        checkpoint: &path,
        ema: run.ema.model(),
        device: &run.inner_device,
        schedule: &run.schedule,
        images: &run.dataset,
    };
    for hook in &mut run.hooks {
        hook.run(&end)?;
    }
    // In a terminal Burn's live display owns the screen; elsewhere this line goes to the log.
    if !std::io::stdout().is_terminal() {
        eprintln!(
            "step {step}: loss {mean_loss:.5}, checkpoint {}",
            path.display()
        );
    }
    Ok(())
}

/// The steps since the last `log` line of metrics.jsonl.
#[derive(Default)]
struct LogWindow {
    loss: f64,
    losses: u64,
    mean_t: f64,
    beta1: f64,
    steps: u64,
}

impl LogWindow {
    fn add(&mut self, item: &crate::step::DenoisingOutput) {
        self.mean_t += item.mean_t_over_t;
        self.beta1 = item.beta1;
        self.steps += 1;
    }

    /// Adds a step's loss once it has been read from the device.
    fn add_loss(&mut self, loss: f64) {
        self.loss += loss;
        self.losses += 1;
    }

    /// The window's `log` line (mean loss and mean t/T over its steps; beta1 and `lr` of its
    /// last step), emptying the window.
    fn take_line(&mut self, step: u64, lr: f64) -> Event {
        let window = std::mem::take(self);
        let n = window.steps.max(1) as f64;
        Event::Log {
            step,
            loss: window.loss / window.losses.max(1) as f64,
            lr,
            beta1: window.beta1,
            mean_t_over_t: window.mean_t / n,
        }
    }
}

/// A step's outputs still on the device: read one step late.
struct Unread {
    /// The step (1 for the run's first).
    step: u64,
    loss: Tensor<1>,
    /// Each sample's loss, when the batch source asks for them.
    per_sample: Option<Tensor<1>>,
}

impl Unread {
    /// Reads the loss (see [`finite_loss`]) into the interval's sum and the log window, and
    /// hands the per-sample losses to the batch source.
    fn record(
        self,
        source: &Mutex<BatchSource>,
        last_good: Option<&Path>,
        interval: &mut f64,
        window: &mut LogWindow,
    ) -> Result<()> {
        let value = finite_loss(self.step, self.loss, last_good)?;
        *interval += value;
        window.add_loss(value);
        if let Some(per_sample) = self.per_sample {
            let losses = per_sample
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading the per-sample losses: {e:?}"))?;
            source
                .lock()
                .expect("batch source lock")
                .observe(self.step - 1, losses);
        }
        Ok(())
    }
}

/// Reads a step's loss from the device, or stops the run if it is not finite: the parameters
/// are then poisoned, so no checkpoint may be written after it.
fn finite_loss(step: u64, loss: Tensor<1>, last_good: Option<&Path>) -> Result<f64> {
    let value = loss.into_scalar::<f32>() as f64;
    if value.is_finite() {
        return Ok(value);
    }
    let kept = match last_good {
        Some(path) => format!(
            "the last good checkpoint, {}, is kept: resume from it (--resume) after lowering \
             train.lr or fixing the data, passing --allow-config-change to accept the change",
            path.display()
        ),
        None => "no checkpoint had been written yet".into(),
    };
    bail!("the loss at step {step} is {value}: training stopped there; {kept}")
}

/// Save on every "epoch" (checkpoint interval); hayate prunes old checkpoints itself.
struct EveryEpoch;

impl CheckpointingStrategy for EveryEpoch {
    fn checkpointing(
        &mut self,
        _epoch: usize,
        _store: &EventStoreClient,
    ) -> Vec<CheckpointingAction> {
        vec![CheckpointingAction::Save]
    }
}

/// A hand-off point between Burn's checkpointer thread and the strategy.
#[derive(Clone, Default)]
struct Slot(Arc<(Mutex<Option<Delivered>>, Condvar)>);

/// A record's bytes and the interval ("epoch") it was taken at.
type Delivered = (usize, Vec<u8>);

impl Slot {
    fn put(&self, epoch: usize, bytes: Vec<u8>) {
        let (lock, ready) = &*self.0;
        *lock.lock().expect("slot lock") = Some((epoch, bytes));
        ready.notify_all();
    }

    /// Waits (up to ten minutes) for the record of `epoch`.
    fn take(&self, epoch: usize) -> Result<Vec<u8>> {
        let (lock, ready) = &*self.0;
        let guard = lock.lock().expect("slot lock");
        let (mut guard, timeout) = ready
            .wait_timeout_while(
                guard,
                Duration::from_secs(600),
                |slot| !matches!(slot, Some((e, _)) if *e == epoch),
            )
            .expect("slot lock");
        if timeout.timed_out() {
            bail!("Burn's checkpointer did not deliver the record of interval {epoch}");
        }
        Ok(guard.take().expect("checked above").1)
    }
}

/// Receives the Learner's records through Burn's checkpointer interface, so hayate can write
/// them, with its own state, into one atomic checkpoint file.
struct Capture<R> {
    slot: Slot,
    _record: PhantomData<fn() -> R>,
}

impl<R> Capture<R> {
    fn new(slot: Slot) -> Self {
        Self {
            slot,
            _record: PhantomData,
        }
    }
}

impl<R: BurnCheckpoint> Checkpointer<R> for Capture<R> {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        self.slot.put(epoch, bytes.to_vec());
        Ok(())
    }

    fn delete(&self, _epoch: usize) -> Result<(), CheckpointerError> {
        Ok(())
    }

    fn restore(&self, _epoch: usize) -> Result<R, CheckpointerError> {
        Err(CheckpointerError::Unknown(
            "hayate restores from its own checkpoint files (--resume)".into(),
        ))
    }
}

/// Parameters of the network `config` describes (built on the CPU when available).
pub fn count_params(config: &NetworkConfig) -> usize {
    #[cfg(feature = "cpu")]
    let device = Device::flex();
    #[cfg(not(feature = "cpu"))]
    let device = Device::default();
    config.init(&device).num_params()
}
