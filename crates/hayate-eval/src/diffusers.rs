//! Models to and from diffusers: a checkpoint's EMA network written as a `UNet2DModel` folder
//! (`config.json`, `diffusion_pytorch_model.safetensors`) with the `DDPMScheduler` config of
//! its noise schedule, and such a folder (or a whole pipeline folder, with `unet/` and
//! `scheduler/`) read back into a hayate checkpoint that `sample`, `eval fid` and
//! `train --init` take. The network mapping itself is `hayate_model::diffusers`.

use crate::weights;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use hayate_model::diffusers::{CONFIG_FILE, DIFFUSERS_VERSION, WEIGHTS_FILE};
use hayate_model::{Network, NetworkConfig, UNet, UNetConfig};
use hayate_schedule::{BetaSchedule, Prediction};
use hayate_train::batches::SourceState;
use hayate_train::checkpoint::{Checkpoint, CheckpointMeta, write_atomic};
use hayate_train::config::{DiffusionConfig, ModelSection, RunConfig};
use hayate_train::train::{load_ema, record_bytes};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The noise schedule's config file beside the model's.
pub const SCHEDULER_FILE: &str = "scheduler_config.json";
/// The older PyTorch-pickle weights name, read when there is no safetensors file.
const PICKLE_WEIGHTS_FILE: &str = "diffusion_pytorch_model.bin";

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The checkpoint it read.
    pub checkpoint: PathBuf,
    /// Its training step.
    pub step: u64,
    /// Tensors written.
    pub tensors: usize,
}

/// Writes the EMA network of the newest checkpoint of `checkpoint` (a file or a run folder) to
/// `out` as a diffusers `UNet2DModel` folder, with `scheduler_config.json` for `DDPMPipeline`.
pub fn export(checkpoint: &Path, out: &Path, device: &Device) -> Result<Exported> {
    let (path, ckpt) = Checkpoint::load_newest_valid(checkpoint)?;
    let config = &ckpt.meta.config;
    let NetworkConfig::UNet(unet_config) = config.model.resolve()? else {
        bail!(
            "{}: its network is a DiT, which diffusers' UNet2DModel cannot hold (only UNets \
             export)",
            path.display()
        );
    };
    let model_json = unet_config.to_diffusers().with_context(|| {
        format!(
            "{}: its network cannot be written as a diffusers UNet2DModel",
            path.display()
        )
    })?;
    let scheduler_json = scheduler_config(config)?;
    let Network::UNet(unet) = load_ema(&ckpt, device)? else {
        bail!(
            "{}: the checkpoint's [model] is a UNet but its network is not",
            path.display()
        );
    };
    let tensors = unet.to_diffusers_tensors(&unet_config)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "hayate_checkpoint_step".to_string(),
            ckpt.step().to_string(),
        ),
    ]);
    weights::write_safetensors(&out.join(WEIGHTS_FILE), &tensors, metadata)?;
    write_json(&out.join(CONFIG_FILE), &model_json)?;
    write_json(&out.join(SCHEDULER_FILE), &scheduler_json)?;
    Ok(Exported {
        checkpoint: path,
        step: ckpt.step(),
        tensors: tensors.len(),
    })
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// The `DDPMScheduler` config of a run: its schedule, target and DDPM sampling settings.
pub fn scheduler_config(config: &RunConfig) -> Result<Value> {
    let diffusion = &config.diffusion;
    let (beta_start, beta_end, schedule) = match diffusion.beta_schedule {
        BetaSchedule::Linear {
            beta_start,
            beta_end,
        } => (beta_start, beta_end, "linear"),
        // diffusers' "squaredcos_cap_v2" is Nichol & Dhariwal's with s = 0.008, as hayate's.
        BetaSchedule::Cosine { s: 0.008 } => (0.0001, 0.02, "squaredcos_cap_v2"),
        BetaSchedule::Cosine { s } => bail!(
            "diffusion.beta_schedule: diffusers' cosine schedule has s = 0.008, this run's has \
             s = {s}"
        ),
    };
    let variance = match config.sampling.ddpm_variance {
        hayate_schedule::ddpm::PosteriorVariance::FixedLarge => "fixed_large",
        hayate_schedule::ddpm::PosteriorVariance::FixedSmall => "fixed_small",
    };
    Ok(json!({
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": diffusion.timesteps,
        "beta_start": beta_start,
        "beta_end": beta_end,
        "beta_schedule": schedule,
        "trained_betas": null,
        "variance_type": variance,
        "clip_sample": true,
        "clip_sample_range": 1.0,
        "prediction_type": prediction_name(diffusion.prediction),
    }))
}

fn prediction_name(prediction: Prediction) -> &'static str {
    match prediction {
        Prediction::Eps => "epsilon",
        Prediction::V => "v_prediction",
        Prediction::X0 => "sample",
    }
}

/// The diffusion section a scheduler config describes: its schedule and the network's target.
/// Sampler settings (variance, clipping, spacing) do not change what the network means and are
/// not read.
pub fn diffusion_from_scheduler(json: &Value, file: &Path) -> Result<DiffusionConfig> {
    let name = || file.display().to_string();
    let get = |key: &str| json.get(key).filter(|v| !v.is_null());
    let timesteps = match get("num_train_timesteps") {
        None => 1000,
        Some(v) => v
            .as_u64()
            .with_context(|| format!("{}: num_train_timesteps must be an integer", name()))?
            as usize,
    };
    if get("rescale_betas_zero_snr") == Some(&json!(true)) {
        bail!(
            "{}: rescale_betas_zero_snr changes the schedule in a way hayate's schedules do not",
            name()
        );
    }
    if get("trained_betas").is_some() {
        bail!(
            "{}: trained_betas (an explicit beta list) is not one of hayate's schedules",
            name()
        );
    }
    let number = |key: &str, default: f64| -> Result<f64> {
        get(key).map_or(Ok(default), |v| {
            v.as_f64()
                .with_context(|| format!("{}: {key} must be a number", name()))
        })
    };
    let beta_schedule = match get("beta_schedule")
        .and_then(Value::as_str)
        .unwrap_or("linear")
    {
        "linear" => BetaSchedule::Linear {
            beta_start: number("beta_start", 0.0001)?,
            beta_end: number("beta_end", 0.02)?,
        },
        "squaredcos_cap_v2" => BetaSchedule::Cosine { s: 0.008 },
        other => bail!(
            "{}: beta_schedule {other:?} is not one of hayate's (\"linear\", \
             \"squaredcos_cap_v2\")",
            name()
        ),
    };
    let prediction = match get("prediction_type")
        .and_then(Value::as_str)
        .unwrap_or("epsilon")
    {
        "epsilon" => Prediction::Eps,
        "v_prediction" => Prediction::V,
        "sample" => Prediction::X0,
        other => bail!(
            "{}: prediction_type {other:?} is not one of hayate's",
            name()
        ),
    };
    let diffusion = DiffusionConfig {
        timesteps,
        beta_schedule,
        prediction,
        ..DiffusionConfig::default()
    };
    diffusion
        .validate()
        .with_context(|| format!("{}: the noise schedule", name()))?;
    Ok(diffusion)
}

/// What [`import`] read and wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The network it describes.
    pub model: UNetConfig,
    /// The run config the checkpoint carries.
    pub config: RunConfig,
    /// The scheduler config it read, if the folder had one.
    pub scheduler: Option<PathBuf>,
    /// Tensors read.
    pub tensors: usize,
}

/// Reads a diffusers `UNet2DModel` folder (or a pipeline folder holding `unet/` and
/// `scheduler/`) into a hayate checkpoint at `out`: the weights as its EMA network, the
/// schedule from the scheduler config (DDPM's linear one when there is none), the other
/// settings from `base` (hayate's defaults when `None`).
pub fn import(
    dir: &Path,
    out: &Path,
    base: Option<RunConfig>,
    device: &Device,
) -> Result<Imported> {
    if out.exists() {
        bail!(
            "{} already exists; hayate import writes a new checkpoint and overwrites none",
            out.display()
        );
    }
    let (model_dir, scheduler_file) = if dir.join("unet").join(CONFIG_FILE).is_file() {
        (dir.join("unet"), dir.join("scheduler").join(SCHEDULER_FILE))
    } else {
        (dir.to_path_buf(), dir.join(SCHEDULER_FILE))
    };
    let config_file = model_dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_file).with_context(|| {
        format!(
            "reading {} (a diffusers model folder has one)",
            config_file.display()
        )
    })?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not JSON", config_file.display()))?;
    let unet_config =
        UNetConfig::from_diffusers(&json).with_context(|| format!("{}", config_file.display()))?;

    let weights_file = [WEIGHTS_FILE, PICKLE_WEIGHTS_FILE]
        .iter()
        .map(|f| model_dir.join(f))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{} holds neither {WEIGHTS_FILE} nor {PICKLE_WEIGHTS_FILE}",
                model_dir.display()
            )
        })?;
    let tensors = weights::read(&weights_file)?;
    let count = tensors.len();
    let model = UNet::from_diffusers_tensors(&unet_config, tensors, device)
        .with_context(|| format!("{}", weights_file.display()))?;

    let (diffusion, scheduler) = if scheduler_file.is_file() {
        let text = std::fs::read_to_string(&scheduler_file)
            .with_context(|| format!("reading {}", scheduler_file.display()))?;
        let json: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", scheduler_file.display()))?;
        (
            diffusion_from_scheduler(&json, &scheduler_file)?,
            Some(scheduler_file),
        )
    } else {
        eprintln!(
            "warning: {} not found; assuming DDPM's linear schedule (1000 steps, 1e-4 to 0.02) \
             and noise prediction",
            scheduler_file.display()
        );
        (DiffusionConfig::default(), None)
    };
    let mut config = match base {
        Some(base) => base,
        None => RunConfig {
            model: ModelSection::exact(&NetworkConfig::UNet(unet_config.clone())),
            diffusion: DiffusionConfig::default(),
            train: Default::default(),
            data: Default::default(),
            sampling: Default::default(),
            eval: Default::default(),
        },
    };
    config.model = ModelSection::exact(&NetworkConfig::UNet(unet_config.clone()));
    config.diffusion = DiffusionConfig {
        timestep_sampler: config.diffusion.timestep_sampler,
        loss_weight: config.diffusion.loss_weight,
        ..diffusion
    };
    config
        .validate()
        .context("the imported model's run config")?;
    let checkpoint = Checkpoint {
        meta: CheckpointMeta {
            source: SourceState::new(config.train.seed),
            config: config.clone(),
            sections: Vec::new(),
            train_seconds: 0.0,
        },
        sections: vec![("ema".into(), record_bytes(model.into_record())?)],
    };
    checkpoint.write_file(out)?;
    Ok(Imported {
        model: unet_config,
        config,
        scheduler,
        tensors: count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Int;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/diffusers")
            .join(name)
    }

    fn unet_of(section: &ModelSection) -> UNetConfig {
        let NetworkConfig::UNet(config) = section.resolve().unwrap() else {
            panic!("an imported network is a UNet")
        };
        config
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// The imported network's output on the fixture's input, and diffusers' output there.
    fn outputs(checkpoint: &Path, io: &Path, device: &Device) -> (Vec<f32>, Vec<f32>) {
        let model = load_ema(&Checkpoint::load(checkpoint).unwrap(), device).unwrap();
        let io = weights::read(io).unwrap();
        let x = &io["x"];
        let dims: [usize; 4] = x.shape.clone().try_into().unwrap();
        let x = Tensor::<4>::from_data(TensorData::new(x.values.clone(), dims), device);
        let t = Tensor::<1>::from_data(TensorData::new(io["t"].values.clone(), [2]), device);
        let labels = io.get("labels").map(|l| {
            let ints: Vec<i64> = l.values.iter().map(|v| *v as i64).collect();
            Tensor::<1, Int>::from_data(TensorData::new(ints, [2]), device)
        });
        let y = model.forward_labelled(x, t, labels);
        (
            y.into_data().try_to_vec::<f32>().unwrap(),
            io["out"].values.clone(),
        )
    }

    #[test]
    fn imported_diffusers_models_compute_what_diffusers_computes() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        for name in ["ddpm", "plain", "adm"] {
            let ckpt = dir.path().join(format!("{name}.hayate"));
            let done = import(&fixture(name), &ckpt, None, &device).unwrap();
            assert!(done.scheduler.is_some());
            let (ours, theirs) = outputs(&ckpt, &fixture(name).join("io.safetensors"), &device);
            let diff = max_diff(&ours, &theirs);
            assert!(diff < 1e-4, "{name}: max |hayate - diffusers| = {diff}");
        }
        // What the scheduler configs say reached the run config.
        let adm = Checkpoint::load(&dir.path().join("adm.hayate")).unwrap();
        assert_eq!(adm.meta.config.diffusion.prediction, Prediction::V);
        assert_eq!(
            adm.meta.config.diffusion.beta_schedule,
            BetaSchedule::Cosine { s: 0.008 }
        );
        let model = unet_of(&adm.meta.config.model);
        assert!(model.scale_shift_norm && model.resblock_updown);
        assert_eq!((model.num_classes, model.head_channels), (4, Some(4)));
        let ddpm = Checkpoint::load(&dir.path().join("ddpm.hayate")).unwrap();
        let model = unet_of(&ddpm.meta.config.model);
        assert_eq!(model.norm_eps, 1e-6);
        assert_eq!(
            model.downsample_padding,
            hayate_model::DownsamplePadding::After
        );
    }

    #[test]
    fn karras_sampling_of_an_imported_model_draws_what_diffusers_draws() {
        use hayate_schedule::{HostRng, Sampler, karras::Karras};
        use rand::SeedableRng;
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("ddpm.hayate");
        import(&fixture("ddpm"), &ckpt, None, &device).unwrap();
        let checkpoint = Checkpoint::load(&ckpt).unwrap();
        let schedule = checkpoint.meta.config.diffusion.schedule().unwrap();
        let model = load_ema(&checkpoint, &device).unwrap();
        let io = weights::read(&fixture("ddpm").join("karras.safetensors")).unwrap();
        for (name, heun) in [("heun", true), ("euler", false)] {
            let solver = Karras {
                steps: 4,
                heun,
                clip_x0: false,
            };
            let mut denoiser = crate::sample::NetworkDenoiser {
                model: &model,
                device: device.clone(),
                guidance: None,
            };
            let ours = solver.sample(
                &schedule,
                Prediction::Eps,
                &mut denoiser,
                io["start"].values.clone(),
                1,
                &mut HostRng::seed_from_u64(0),
            );
            let theirs = &io[name].values;
            let scale = theirs.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = max_diff(&ours, theirs);
            // The samples reach ~500 (a random network's x_0, unclipped): relative to that.
            assert!(
                diff <= 1e-4 * scale,
                "{name}: max |hayate - diffusers| = {diff} of {scale}"
            );
        }
    }

    #[test]
    fn export_then_import_round_trips_bit_for_bit() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        for name in ["ddpm", "plain", "adm"] {
            let first = dir.path().join(format!("{name}-1.hayate"));
            import(&fixture(name), &first, None, &device).unwrap();
            let exported = dir.path().join(format!("{name}-export"));
            let done = export(&first, &exported, &device).unwrap();
            assert_eq!(done.step, 0);
            let second = dir.path().join(format!("{name}-2.hayate"));
            import(&exported, &second, None, &device).unwrap();
            let (a, b) = (
                Checkpoint::load(&first).unwrap(),
                Checkpoint::load(&second).unwrap(),
            );
            // The records also hold Burn's random parameter ids, so compare the tensors.
            let config = unet_of(&a.meta.config.model);
            let tensors = |c: &Checkpoint| {
                let Network::UNet(unet) = load_ema(c, &device).unwrap() else {
                    panic!("an imported network is a UNet")
                };
                unet.to_diffusers_tensors(&config).unwrap()
            };
            assert!(tensors(&a) == tensors(&b), "{name}: the weights changed");
            assert_eq!(a.meta.config, b.meta.config, "{name}");
            // The exported weights are the fixture's, value for value (under today's names).
            let ours = weights::read(&exported.join(WEIGHTS_FILE)).unwrap();
            let theirs = weights::read(&fixture(name).join(WEIGHTS_FILE)).unwrap();
            assert_eq!(ours.len(), theirs.len());
            for (key, tensor) in &theirs {
                let key = [
                    ("query", "to_q"),
                    ("key", "to_k"),
                    ("value", "to_v"),
                    ("proj_attn", "to_out.0"),
                ]
                .iter()
                .fold(key.clone(), |k, (old, new)| {
                    k.replace(&format!(".{old}."), &format!(".{new}."))
                });
                assert_eq!(ours[&key], *tensor, "{name}: {key}");
            }
            // And so is every config field the fixture's diffusers wrote.
            let read = |p: PathBuf| -> Value {
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
            };
            let (ours, theirs) = (
                read(exported.join(CONFIG_FILE)),
                read(fixture(name).join(CONFIG_FILE)),
            );
            for (key, value) in theirs.as_object().unwrap() {
                let same = ours[key] == *value
                    || ours[key].as_f64().is_some() && ours[key].as_f64() == value.as_f64();
                // A null attn_norm_num_groups means the resnets' groups, which hayate writes out.
                let implied = key == "attn_norm_num_groups" && value.is_null();
                assert!(
                    same || implied,
                    "{name}: {key}: ours {} theirs {value}",
                    ours[key]
                );
            }
        }
    }

    #[test]
    fn bad_folders_give_errors_that_name_the_file_and_the_field() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let copy = |name: &str| -> PathBuf {
            let to = dir.path().join(name);
            std::fs::create_dir_all(&to).unwrap();
            for f in [CONFIG_FILE, WEIGHTS_FILE, SCHEDULER_FILE] {
                std::fs::copy(fixture("ddpm").join(f), to.join(f)).unwrap();
            }
            to
        };
        let out = dir.path().join("out.hayate");
        let error =
            |folder: &Path| format!("{:#}", import(folder, &out, None, &device).unwrap_err());

        let unknown = copy("unknown");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(unknown.join(CONFIG_FILE)).unwrap())
                .unwrap();
        config["cross_attention_dim"] = json!(64);
        std::fs::write(unknown.join(CONFIG_FILE), config.to_string()).unwrap();
        let e = error(&unknown);
        assert!(
            e.contains("cross_attention_dim") && e.contains("unknown/config.json"),
            "{e}"
        );

        let tensors = copy("tensors");
        let mut weights_map = weights::read(&tensors.join(WEIGHTS_FILE)).unwrap();
        weights_map.remove("conv_in.bias");
        let t = weights_map.get_mut("conv_out.weight").unwrap();
        t.shape = vec![3, 8, 9];
        let sorted = weights_map.into_iter().collect();
        weights::write_safetensors(&tensors.join(WEIGHTS_FILE), &sorted, HashMap::new()).unwrap();
        let e = error(&tensors);
        assert!(
            e.contains("conv_in.bias") && e.contains("conv_out.weight") && e.contains(WEIGHTS_FILE),
            "{e}"
        );

        let schedule = copy("schedule");
        std::fs::write(
            schedule.join(SCHEDULER_FILE),
            r#"{"beta_schedule": "scaled_linear"}"#,
        )
        .unwrap();
        let e = error(&schedule);
        assert!(
            e.contains("scaled_linear") && e.contains(SCHEDULER_FILE),
            "{e}"
        );

        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let e = error(&empty);
        assert!(e.contains("config.json"), "{e}");
        assert!(!out.exists(), "a failed import writes nothing");

        // An existing checkpoint is never overwritten, even by a good import.
        std::fs::write(&out, b"someone's checkpoint").unwrap();
        let e = error(&fixture("ddpm"));
        assert!(
            e.contains("already exists") && e.contains("out.hayate"),
            "{e}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"someone's checkpoint");
    }
}
