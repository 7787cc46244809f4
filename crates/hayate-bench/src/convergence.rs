//! `hayate bench convergence`: does a method reach the baseline's sample quality in fewer steps?
//! Each method of a benchmark config is the base run with some settings changed; each is trained
//! over several seeds, its EMA scored at fixed steps by the Frechet distance in a small CIFAR-10
//! classifier's features (the proxy), and compared with the baseline (the first method) of the
//! same seed. Some checkpoints are also scored with Inception FID, and the two rankings compared.

use crate::feature_net::FeatureNetFile;
use anyhow::{Context, Result, bail, ensure};
use burn::prelude::*;
use hayate_data::ImageSource;
use hayate_eval::fid::{
    FeatureExtractor, Reference, dataset_statistics, sample_batches, statistics_of,
};
use hayate_eval::plot::{Chart, Series};
use hayate_eval::sample::TrainedModel;
use hayate_schedule::{SamplerSpec, Solver};
use hayate_train::checkpoint::{Checkpoint, write_atomic};
use hayate_train::config::RunConfig;
use hayate_train::train::{TrainOptions, cache_dir, train};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A benchmark: the base run, the methods (changes to it), the seeds and the evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchConfig {
    /// Every method is trained once per seed (`train.seed`).
    pub seeds: Vec<u64>,
    /// Score the EMA every this many steps (`train.steps` must be a multiple).
    pub eval_every: u64,
    /// Samples per score.
    pub eval_n: usize,
    /// The sampler of those samples: `"ddim"` (eta 0, the default), `"dpmpp-2m"`,
    /// `"euler-karras"` or `"heun-karras"`.
    #[serde(default)]
    pub eval_sampler: Solver,
    /// Its steps.
    pub eval_ddim_steps: usize,
    /// Seed of the evaluation noise: the same for every checkpoint and method, so scores differ
    /// by the models only.
    #[serde(default)]
    pub eval_seed: u64,
    /// The feature network's weights (`hayate bench feature-net`); relative paths are from the
    /// config file's folder.
    pub feature_net: PathBuf,
    /// Training images the samples are compared with (the first ones of the training set).
    pub ref_n: usize,
    /// A folder of finished runs' scores kept with the benchmark (committed beside it; relative
    /// paths are from the config file's folder): a run whose scores are there is not trained
    /// again, and each newly scored run is written there too, so a benchmark that takes days
    /// carries over to a fresh machine whose cache is empty.
    #[serde(default)]
    pub scores: Option<PathBuf>,
    /// Inception FID of some checkpoints, to check that the proxy ranks them alike.
    pub inception: Option<InceptionCheck>,
    /// The quality levels speed-ups are measured at: the baseline's score at these fractions
    /// of its run (1: its final score).
    #[serde(default = "default_levels")]
    pub levels: Vec<f64>,
    /// The full-size recipe the speed-ups are translated to, in GPU hours.
    pub full_recipe: Option<FullRecipe>,
    /// The base run: a full run config (model, diffusion, train, data, sampling).
    pub run: toml::Table,
    /// The methods; the first is the baseline the others are measured against.
    pub method: Vec<Method>,
}

/// Which checkpoints get Inception FID, and at what n: of the first seed, every evaluation of
/// the baseline and the last of every other method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InceptionCheck {
    /// Samples per checkpoint (the first of the proxy's samples).
    pub n: usize,
    /// Training images in the reference.
    pub ref_n: usize,
}

/// A full training recipe and a measured throughput for it, to say what a speed-up saves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullRecipe {
    /// What it is, and where the throughput comes from.
    pub name: String,
    /// Its training steps.
    pub steps: u64,
    /// Its images per step.
    pub batch_size: u64,
    /// Training images per second on one accelerator.
    pub images_per_second: f64,
}

impl FullRecipe {
    /// Accelerator hours of the whole recipe.
    pub fn hours(&self) -> f64 {
        (self.steps * self.batch_size) as f64 / self.images_per_second / 3600.0
    }
}

fn default_levels() -> Vec<f64> {
    vec![0.25, 0.5, 1.0]
}

/// One method: a name and the settings it changes in the base run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Method {
    /// Shown in tables and plots.
    pub name: String,
    /// Tables merged into the base run (same layout as a run config).
    #[serde(default)]
    pub run: toml::Table,
    /// Settings of the base run this method removes, as dotted paths
    /// (`"train.ema_sigma_rel"`), so that their defaults apply.
    #[serde(default)]
    pub unset: Vec<String>,
}

/// `over` merged into `base`: tables recursively, anything else replaced.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

impl BenchConfig {
    /// Reads and checks a benchmark file; relative paths in it become relative to its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config = Self::parse(&text).with_context(|| format!("{}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        if config.feature_net.is_relative() {
            config.feature_net = dir.join(&config.feature_net);
        }
        if let Some(scores) = &mut config.scores
            && scores.is_relative()
        {
            *scores = dir.join(&*scores);
        }
        Ok(config)
    }

    /// Parses and checks a benchmark.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        ensure!(!config.seeds.is_empty(), "seeds: give at least one");
        ensure!(
            !config.method.is_empty(),
            "method: give at least one (the baseline first)"
        );
        ensure!(
            config.eval_every > 0 && config.eval_n >= 2 && config.eval_ddim_steps > 0,
            "eval_every, eval_ddim_steps must be positive and eval_n at least 2"
        );
        ensure!(config.ref_n >= 2, "ref_n must be at least 2");
        ensure!(
            !config.levels.is_empty()
                && config.levels.iter().all(|&f| f > 0.0 && f <= 1.0)
                && config.levels.windows(2).all(|w| w[0] < w[1]),
            "levels: give increasing fractions of the baseline's run in (0, 1], got {:?}",
            config.levels
        );
        if let Some(r) = &config.full_recipe {
            ensure!(
                r.steps > 0 && r.batch_size > 0 && r.images_per_second > 0.0,
                "full_recipe: steps, batch_size and images_per_second must be positive"
            );
        }
        if let Some(check) = &config.inception {
            ensure!(
                check.n >= 2 && check.n <= config.eval_n && check.ref_n >= 2,
                "inception.n must be in 2..=eval_n and inception.ref_n at least 2"
            );
        }
        for (i, method) in config.method.iter().enumerate() {
            ensure!(
                !method.name.trim().is_empty()
                    && config.method[..i]
                        .iter()
                        .all(|m| slug(&m.name) != slug(&method.name)),
                "method {}: names must be non-empty and distinct as run folder names ({:?})",
                i + 1,
                slug(&method.name)
            );
            let run = config.run_config(i, config.seeds[0])?;
            ensure!(
                run.train.steps.is_multiple_of(config.eval_every),
                "method {:?}: train.steps ({}) must be a multiple of eval_every ({})",
                method.name,
                run.train.steps,
                config.eval_every
            );
        }
        Ok(config)
    }

    /// Method `index`'s full run config for `seed`, checkpointing at every evaluation.
    pub fn run_config(&self, index: usize, seed: u64) -> Result<RunConfig> {
        let method = &self.method[index];
        let mut table = self.run.clone();
        for path in &method.unset {
            let (parents, key) = path.rsplit_once('.').unwrap_or(("", path));
            let mut at = &mut table;
            for part in parents.split('.').filter(|p| !p.is_empty()) {
                at = match at.get_mut(part) {
                    Some(toml::Value::Table(t)) => t,
                    _ => bail!(
                        "method {:?}: unset {path:?}: the base run has no such table",
                        method.name
                    ),
                };
            }
            ensure!(
                at.remove(key).is_some(),
                "method {:?}: unset {path:?}: the base run does not set it",
                method.name
            );
        }
        merge(&mut table, &method.run);
        let mut config: RunConfig = toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("method {:?}", method.name))?;
        config.train.seed = seed;
        config.train.checkpoint_every = self.eval_every;
        config.train.keep_checkpoints = (config.train.steps / self.eval_every).max(1) as usize;
        config.eval.fid_every = 0;
        config
            .validate()
            .with_context(|| format!("method {:?}", method.name))?;
        Ok(config)
    }

    /// What a stored result must match to be reused: the run and the evaluation.
    fn digest(&self, run: &RunConfig, features: &[u8; 32], inception: bool) -> String {
        let mut h = Sha256::new();
        h.update(run.to_toml());
        h.update(format!(
            "{} {} {} {} {:?}",
            self.eval_n,
            self.eval_ddim_steps,
            self.eval_seed,
            self.ref_n,
            self.inception.as_ref().filter(|_| inception)
        ));
        // Results scored with DDIM, from before the sampler could be chosen, stay valid.
        if self.eval_sampler != Solver::Ddim {
            h.update(self.eval_sampler.name());
        }
        h.update(features);
        short_hex(h)
    }
}

/// Where the data, results and Inception weights come from.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The training images' folder (else the run config's, or the default).
    pub data_dir: Option<PathBuf>,
    /// Results folder.
    pub out: PathBuf,
    /// Where the trained runs are kept (see [`default_runs_dir`]). Benchmarks given the same
    /// folder share the runs they have in common (same method name, seed and settings).
    pub runs: PathBuf,
    /// Train and score only these methods (by name; empty: all). The others' finished runs
    /// still enter the report, so a long benchmark can be run a part at a time.
    pub only_methods: Vec<String>,
    /// Train and score only these seeds (empty: all).
    pub only_seeds: Vec<u64>,
    /// Train and score nothing: report the finished runs (the kept scores) alone.
    pub report_only: bool,
    /// Run the Inception check (when the config has one).
    pub inception: bool,
    /// Inception weights (else the default lookup).
    pub inception_weights: Option<PathBuf>,
    /// Measure every method's step rate side by side first (see [`measure_step_rates`]).
    pub step_rates: Option<RateSettings>,
}

/// The step rates' file, in the results folder and in the benchmark's scores folder (so that a
/// fresh machine reports them too).
pub const RATES_FILE: &str = "step-rates.json";

/// How [`measure_step_rates`] times the methods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSettings {
    /// Steps timed per method and round (after as many untimed ones).
    pub steps: u64,
    /// Rounds over all methods; each method's rate is its median over them.
    pub rounds: usize,
}

/// Every method's training speed, measured side by side in one process: wall-clock figures of
/// runs trained in different sessions are not comparable (shared virtual machines of one kind
/// differed by 1.32x), so a method's time to quality is its images to quality over its own rate
/// from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRates {
    /// Where they were measured (`hayate bench throughput`'s description).
    pub processor: String,
    /// Steps timed per method and round.
    pub steps: u64,
    /// Rounds over all methods.
    pub rounds: usize,
    /// Per method, in config order.
    pub methods: Vec<MethodRate>,
}

/// One method's measured training speed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodRate {
    /// The method.
    pub method: String,
    /// Matches the run settings it was measured with (a changed method is measured again).
    pub digest: String,
    /// Training images per second in each round.
    pub images_per_second: Vec<f64>,
}

impl MethodRate {
    /// The median over rounds: one round disturbed by the machine does not move it.
    pub fn median(&self) -> f64 {
        let mut v = self.images_per_second.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
        }
    }
}

impl StepRates {
    /// The rate of `method`, if measured.
    pub fn of(&self, method: &str) -> Option<f64> {
        self.methods
            .iter()
            .find(|m| m.method == method)
            .map(MethodRate::median)
    }
}

/// What a method's step rate depends on: its run settings, less the ones that do not change
/// the cost of a step (length, seed, checkpointing, logging).
fn rate_digest(run: &RunConfig) -> String {
    let mut run = run.clone();
    run.train.steps = 0;
    run.train.seed = 0;
    run.train.checkpoint_every = 0;
    run.train.keep_checkpoints = 0;
    run.train.log_every = 0;
    let mut h = Sha256::new();
    h.update(run.to_toml());
    short_hex(h)
}

/// The first 12 bytes of a digest in hex: enough to tell settings apart in a file name.
fn short_hex(h: Sha256) -> String {
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Times every method's training steps in one process, in rounds that visit each method in
/// turn, so that a drift in the machine's speed falls on all of them alike. Each visit trains
/// a fresh run of the method (first seed) in a scratch folder under `scratch` for
/// `2 * settings.steps` steps and keeps the rate of the second half, past the first steps'
/// allocations; checkpointing is excluded and no sample grids are drawn.
pub fn measure_step_rates(
    bench: &BenchConfig,
    settings: RateSettings,
    images: &Arc<dyn ImageSource>,
    scratch: &Path,
    device: &Device,
) -> Result<StepRates> {
    ensure!(
        settings.steps > 0 && settings.rounds > 0,
        "step rates: give at least one step and one round"
    );
    let seed = bench.seeds[0];
    let mut methods: Vec<MethodRate> = Vec::new();
    for (index, method) in bench.method.iter().enumerate() {
        methods.push(MethodRate {
            method: method.name.clone(),
            digest: rate_digest(&bench.run_config(index, seed)?),
            images_per_second: Vec::new(),
        });
    }
    for round in 0..settings.rounds {
        for (index, method) in bench.method.iter().enumerate() {
            let mut config = bench.run_config(index, seed)?;
            config.train.steps = 2 * settings.steps;
            config.train.checkpoint_every = settings.steps;
            config.train.keep_checkpoints = 1;
            config.train.log_every = settings.steps;
            let dir = scratch.join(slug(&method.name));
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot clear {}", dir.display()))?;
            }
            let report = train(
                &TrainOptions {
                    config,
                    data_dir: None,
                    out: dir.clone(),
                    resume: false,
                    init: None,
                    allow_config_change: false,
                    devices: Vec::new(),
                    images: Some(images.clone()),
                },
                device,
                Vec::new(),
            )
            .with_context(|| format!("step rate of {}", method.name))?;
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
            let rate = *report
                .interval_images_per_second
                .last()
                .context("the timing run reported no interval")?;
            eprintln!(
                "step rate, round {}/{}: {}: {rate:.1} img/s",
                round + 1,
                settings.rounds,
                method.name
            );
            methods[index].images_per_second.push(rate);
        }
    }
    Ok(StepRates {
        processor: crate::processor::Processor::detect().describe(),
        steps: settings.steps,
        rounds: settings.rounds,
        methods,
    })
}

/// Where a benchmark's trained runs are kept by default: in the cache
/// (`$HAYATE_CACHE/bench-runs/<benchmark file name>`), outside any clone, so that days of
/// training survive a fresh checkout and a later invocation continues them.
pub fn default_runs_dir(config: &Path) -> PathBuf {
    let name = config
        .file_stem()
        .map_or_else(|| "bench".into(), |s| s.to_string_lossy().into_owned());
    cache_dir().join("bench-runs").join(name)
}

/// One scored checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Training step.
    pub step: u64,
    /// Frechet distance in the feature network's features.
    pub proxy: f64,
    /// Inception FID, where checked.
    pub inception: Option<f64>,
    /// Seconds of training up to this checkpoint, over every resume (absent in checkpoints
    /// written before hayate kept it).
    #[serde(default)]
    pub seconds: Option<f64>,
}

/// One method trained with one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The method's name.
    pub method: String,
    /// Its seed.
    pub seed: u64,
    /// Scores in step order.
    pub scores: Vec<Score>,
    /// Seconds spent training (checkpoints and grids included).
    pub train_seconds: f64,
    /// Seconds spent scoring.
    pub eval_seconds: f64,
    /// Matches the config and evaluation it came from.
    pub digest: String,
    /// Training images per step.
    #[serde(default)]
    pub images_per_step: u64,
    /// The processor it was trained on (`hayate bench throughput`'s description).
    #[serde(default)]
    pub processor: String,
}

/// A method's figures over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSummary {
    /// The method.
    pub method: String,
    /// Final proxy score of each seed.
    pub finals: Vec<f64>,
    /// Speed-up over the baseline for each seed (`None`: the baseline's final score not
    /// reached).
    pub speedups: Vec<Option<f64>>,
    /// The same and the time to quality at each of the benchmark's quality levels.
    #[serde(default)]
    pub levels: Vec<LevelSummary>,
    /// Relative improvement of the score over the last quarter of the run, per seed: how
    /// flat the curve has become (the long benchmark's length is chosen by the baseline's).
    #[serde(default)]
    pub last_quarter_gain: Vec<Option<f64>>,
}

/// A method at one quality level (the baseline's score at a fraction of its run), per seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSummary {
    /// The fraction of the baseline's run.
    pub fraction: f64,
    /// The baseline's steps over the method's to reach that score (`None`: not reached).
    pub speedups: Vec<Option<f64>>,
    /// Training seconds the method took to reach it.
    pub seconds: Vec<Option<f64>>,
    /// Training images it saw until then.
    pub images: Vec<Option<f64>>,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvergenceReport {
    /// Every run.
    pub runs: Vec<RunResult>,
    /// Per method, in config order (the baseline first).
    pub methods: Vec<MethodSummary>,
    /// Spearman rank correlation of proxy and Inception FID over the checked checkpoints.
    pub spearman: Option<f64>,
    /// The same over the checked final checkpoints alone (the methods' ranking).
    pub spearman_finals: Option<f64>,
    /// Wall time of this invocation in seconds (runs reused from an earlier one excluded).
    pub wall_seconds: f64,
    /// The full recipe the speed-ups are translated to.
    #[serde(default)]
    pub full_recipe: Option<FullRecipe>,
    /// The methods' step rates measured side by side, where measured (for the methods whose
    /// settings match).
    #[serde(default)]
    pub rates: Option<StepRates>,
}

/// Steps a curve needs to reach `target` or lower: the first evaluation at or below it, with
/// linear interpolation from the evaluation before; `None` if it never does.
pub fn steps_to_reach(curve: &[(u64, f64)], target: f64) -> Option<f64> {
    let i = curve.iter().position(|&(_, v)| v <= target)?;
    if i == 0 {
        return Some(curve[0].0 as f64);
    }
    let ((s0, v0), (s1, v1)) = (curve[i - 1], curve[i]);
    let fraction = (v0 - target) / (v0 - v1);
    Some(s0 as f64 + fraction * (s1 - s0) as f64)
}

/// The steps the baseline needs to reach its final score, over the steps `method` needs to
/// reach it (both the first time: a baseline whose curve turns up again reaches its final
/// score before its end, and is 1x against itself all the same).
pub fn speedup(baseline: &[(u64, f64)], method: &[(u64, f64)]) -> Option<f64> {
    let &(_, target) = baseline.last()?;
    Some(steps_to_reach(baseline, target)? / steps_to_reach(method, target)?)
}

/// A piecewise-linear curve's value at `x`, between its first and last points.
pub fn value_at(curve: &[(f64, f64)], x: f64) -> Option<f64> {
    let i = curve.iter().position(|&(cx, _)| cx >= x)?;
    let (x1, y1) = curve[i];
    if i == 0 {
        return (x1 == x).then_some(y1);
    }
    let (x0, y0) = curve[i - 1];
    Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
}

/// At quality level `fraction` (the baseline's score at that fraction of its run): the steps
/// the baseline first reaches that score at, over the steps `method` needs to reach it, and
/// those steps.
pub fn speedup_at(
    baseline: &[(u64, f64)],
    method: &[(u64, f64)],
    fraction: f64,
) -> Option<(f64, f64)> {
    let last = baseline.last()?.0 as f64;
    let points: Vec<(f64, f64)> = baseline.iter().map(|&(s, v)| (s as f64, v)).collect();
    let target = value_at(&points, fraction * last)?;
    let steps = steps_to_reach(method, target)?;
    Some((steps_to_reach(baseline, target)? / steps, steps))
}

/// (score at 3/4 of the run - final score) / score at 3/4: what the last quarter still gained.
pub fn last_quarter_gain(curve: &[(u64, f64)]) -> Option<f64> {
    let &(last, end) = curve.last()?;
    let points: Vec<(f64, f64)> = curve.iter().map(|&(s, v)| (s as f64, v)).collect();
    let at = value_at(&points, 0.75 * last as f64)?;
    Some((at - end) / at)
}

/// Spearman's rank correlation (average ranks for ties); `None` under 3 points.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 3 {
        return None;
    }
    let ranks = |v: &[f64]| {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0f64; v.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
                j += 1;
            }
            for &k in &order[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    };
    let (rx, ry) = (ranks(x), ranks(y));
    let mean = (x.len() - 1) as f64 / 2.0;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mean) * (b - mean);
        sxx += (a - mean) * (a - mean);
        syy += (b - mean) * (b - mean);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// The mean (min-max) of the values that are there, and how many are when some are not.
fn spread(values: &[Option<f64>], show: impl Fn(f64) -> String) -> String {
    let there: Vec<f64> = values.iter().flatten().copied().collect();
    if there.is_empty() {
        return "not reached".into();
    }
    let lo = there.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = there.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut text = format!("{} ({}-{})", show(mean_sd(&there).0), show(lo), show(hi));
    if there.len() < values.len() {
        text += &format!(" [{}/{}]", there.len(), values.len());
    }
    text
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

impl ConvergenceReport {
    /// The results as a Markdown table.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| method | final proxy FD (mean ± sd) | speed-up (mean, min-max) | seeds reaching the baseline |\n|---|---|---|---|\n",
        );
        for m in &self.methods {
            let (fm, fs) = mean_sd(&m.finals);
            let reached: Vec<f64> = m.speedups.iter().flatten().copied().collect();
            let speed = if reached.is_empty() {
                "not reached".to_string()
            } else {
                let (sm, _) = mean_sd(&reached);
                let lo = reached.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = reached.iter().copied().fold(0f64, f64::max);
                format!("{sm:.2}x ({lo:.2}-{hi:.2})")
            };
            out += &format!(
                "| {} | {fm:.3} ± {fs:.3} | {speed} | {}/{} |\n",
                m.method,
                reached.len(),
                m.speedups.len()
            );
        }
        if let Some(r) = self.spearman {
            out += &format!(
                "\nProxy vs Inception FID over {} checkpoints: Spearman {r:.3}",
                self.runs
                    .iter()
                    .flat_map(|r| &r.scores)
                    .filter(|s| s.inception.is_some())
                    .count()
            );
            if let Some(f) = self.spearman_finals {
                out += &format!("; over the methods' final checkpoints alone: {f:.3}");
            }
            out += "\n";
        }
        out += &self.time_to_quality();
        out
    }

    /// Speed-ups at every quality level, time and images to the baseline's final score, how
    /// much the last quarter still gained, and the full recipe's accelerator hours.
    fn time_to_quality(&self) -> String {
        let Some(first) = self.methods.first() else {
            return String::new();
        };
        let mut out = String::from("\n| method |");
        for level in &first.levels {
            out += &format!(
                " speed-up at the baseline's {:.0}% score |",
                100.0 * level.fraction
            );
        }
        out += " training time to the baseline's final score | images to it | last-quarter gain |\n|---|";
        out += &"---|".repeat(first.levels.len() + 3);
        out += "\n";
        let final_level = |m: &MethodSummary| m.levels.iter().find(|l| l.fraction == 1.0).cloned();
        for m in &self.methods {
            out += &format!("| {} |", m.method);
            for level in &m.levels {
                out += &format!(" {} |", spread(&level.speedups, |v| format!("{v:.2}x")));
            }
            let (secs, images) = final_level(m).map_or((vec![], vec![]), |l| (l.seconds, l.images));
            out += &format!(
                " {} | {} | {} |\n",
                spread(&secs, |v| format!("{v:.0} s")),
                spread(&images, |v| format!("{:.1}k", v / 1000.0)),
                spread(&m.last_quarter_gain, |v| format!("{:.1}%", 100.0 * v)),
            );
        }
        out += "\nEach cell: the mean over seeds (min-max); [k/n]: only k of n seeds reached it. \
                Training time excludes checkpoints and scoring.\n";
        let mut processors: Vec<&str> = self
            .runs
            .iter()
            .map(|r| r.processor.as_str())
            .filter(|p| !p.is_empty())
            .collect();
        processors.sort_unstable();
        processors.dedup();
        if !processors.is_empty() {
            out += &format!("Trained on: {}.\n", processors.join("; "));
        }
        out += &self.wall_clock();
        if let Some(recipe) = &self.full_recipe {
            let hours = recipe.hours();
            out += &format!(
                "\nIn {} ({} steps of batch {} at {} images/s: {hours:.1} accelerator hours), \
                 if the speed-up at the baseline's final score carried over:\n\n\
                 | method | accelerator hours | saved |\n|---|---|---|\n",
                recipe.name, recipe.steps, recipe.batch_size, recipe.images_per_second
            );
            for m in &self.methods {
                let reached: Vec<f64> = final_level(m)
                    .map(|l| l.speedups.into_iter().flatten().collect())
                    .unwrap_or_default();
                if reached.is_empty() {
                    out += &format!("| {} | not reached | - |\n", m.method);
                } else {
                    let speed = mean_sd(&reached).0;
                    out += &format!(
                        "| {} | {:.1} | {:.1} |\n",
                        m.method,
                        hours / speed,
                        hours - hours / speed
                    );
                }
            }
        }
        out
    }

    /// Time to the baseline's final score at each method's own step rate, measured beside the
    /// baseline's in one run: the images to it over that rate, and the wall-clock speed-up (the
    /// speed-up in steps times the method's rate over the baseline's).
    fn wall_clock(&self) -> String {
        let (Some(rates), Some(baseline)) = (&self.rates, self.methods.first()) else {
            return String::new();
        };
        let Some(base_rate) = rates.of(&baseline.method) else {
            return String::new();
        };
        let mut out = format!(
            "\nStep rates side by side ({} rounds of {} timed steps each, on {}):\n\n\
             | method | images/s (median, min-max over rounds) | time per step against the baseline | time to the baseline's \
             final score at this rate | wall-clock speed-up at it |\n|---|---|---|---|---|\n",
            rates.rounds, rates.steps, rates.processor
        );
        for m in &self.methods {
            let Some(measured) = rates.methods.iter().find(|r| r.method == m.method) else {
                out += &format!("| {} | not measured | | | |\n", m.method);
                continue;
            };
            let rate = measured.median();
            let Some(level) = m.levels.iter().find(|l| l.fraction == 1.0) else {
                continue;
            };
            let seconds: Vec<Option<f64>> =
                level.images.iter().map(|i| i.map(|i| i / rate)).collect();
            let wall: Vec<Option<f64>> = level
                .speedups
                .iter()
                .map(|s| s.map(|s| s * rate / base_rate))
                .collect();
            let rounds = &measured.images_per_second;
            let lo = rounds.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            out += &format!(
                "| {} | {rate:.1} ({lo:.1}-{hi:.1}) | {:.2}x | {} | {} |\n",
                m.method,
                base_rate / rate,
                spread(&seconds, |v| format!("{v:.0} s")),
                spread(&wall, |v| format!("{v:.2}x")),
            );
        }
        out
    }

    /// Proxy score against step, the mean over seeds of each method.
    pub fn chart(&self) -> Chart {
        let series = self
            .methods
            .iter()
            .map(|m| {
                let runs: Vec<&RunResult> =
                    self.runs.iter().filter(|r| r.method == m.method).collect();
                let points = runs[0]
                    .scores
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let values: Vec<f64> = runs.iter().map(|r| r.scores[i].proxy).collect();
                        (s.step as f64, mean_sd(&values).0)
                    })
                    .collect();
                Series {
                    name: m.method.clone(),
                    points,
                }
            })
            .collect();
        Chart {
            title: "Convergence: proxy FD of EMA samples (mean over seeds)".into(),
            x_label: "step".into(),
            y_label: "Frechet distance, feature network".into(),
            series,
            log_y: true,
        }
    }
}

/// Scores one checkpoint's EMA: the proxy on `eval_n` samples, Inception on the first of them.
fn score(
    bench: &BenchConfig,
    path: &Path,
    features: &FeatureNetFile,
    reference: &Reference,
    inception: Option<&(hayate_eval::inception::FidInception, Reference, usize)>,
    device: &Device,
) -> Result<Score> {
    let checkpoint = Checkpoint::load(path)?;
    let seconds = checkpoint.meta.train_seconds;
    let trained = TrainedModel::from_checkpoint(path.to_path_buf(), &checkpoint, device)?;
    let sampler = SamplerSpec {
        solver: bench.eval_sampler,
        steps: bench.eval_ddim_steps,
        eta: 0.0,
    }
    .build();
    let batches: Vec<_> = sample_batches(
        trained.sampling(),
        sampler.as_ref(),
        bench.eval_n,
        64,
        bench.eval_seed,
        trained.config.sampling.cfg_scale,
    )
    .collect();
    let stats = statistics_of(features, batches.iter().cloned().map(Ok), None)?;
    let inception = match inception {
        Some((net, reference, n)) => {
            let size = trained.model.resolution();
            let per = 3 * size * size;
            let mut left = *n;
            let firsts = batches.iter().filter_map(|(values, shape)| {
                let take = left.min(shape[0]);
                left -= take;
                (take > 0).then(|| Ok((values[..take * per].to_vec(), [take, 3, size, size])))
            });
            let firsts: Vec<_> = firsts.collect();
            let stats = statistics_of(net, firsts.into_iter(), None)?;
            Some(reference.distance(&stats))
        }
        None => None,
    };
    Ok(Score {
        step: trained.step,
        proxy: reference.distance(&stats),
        inception,
        seconds: (seconds > 0.0).then_some(seconds),
    })
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

/// Runs (or continues) the benchmark and writes `results.json`, `table.md` and
/// `convergence.png` into `options.out`.
pub fn run(
    bench: &BenchConfig,
    options: &BenchOptions,
    device: &Device,
) -> Result<ConvergenceReport> {
    let start = Instant::now();
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    write_atomic(
        &options.out.join("bench.toml"),
        toml::to_string(bench)?.as_bytes(),
    )?;
    let cache = cache_dir();
    let first = bench.run_config(0, bench.seeds[0])?;
    let resolution = first.model.resolve()?.resolution();
    let images: Arc<dyn ImageSource> = hayate_train::dataset::open_training_images(
        &first.data,
        options.data_dir.as_deref(),
        resolution,
        &cache,
    )?;
    eprintln!("training images: {}", images.describe());
    let rates_paths: Vec<PathBuf> = bench
        .scores
        .iter()
        .map(|folder| folder.join(RATES_FILE))
        .chain([options.out.join(RATES_FILE)])
        .collect();
    let rates = match options.step_rates {
        Some(settings) => {
            let rates = measure_step_rates(
                bench,
                settings,
                &images,
                &options.out.join("step-rate-runs"),
                device,
            )?;
            let json = serde_json::to_string_pretty(&rates)?;
            for path in &rates_paths {
                if let Some(folder) = path.parent() {
                    std::fs::create_dir_all(folder)
                        .with_context(|| format!("cannot create {}", folder.display()))?;
                }
                write_atomic(path, json.as_bytes())?;
            }
            Some(rates)
        }
        None => rates_paths.iter().find_map(|path| {
            serde_json::from_str::<StepRates>(&std::fs::read_to_string(path).ok()?).ok()
        }),
    };
    // Kept rates of methods whose settings have changed since are dropped.
    let rates = match rates {
        Some(mut rates) => {
            let digests: Vec<(String, String)> = (0..bench.method.len())
                .map(|i| -> Result<_> {
                    Ok((
                        bench.method[i].name.clone(),
                        rate_digest(&bench.run_config(i, bench.seeds[0])?),
                    ))
                })
                .collect::<Result<_>>()?;
            rates.methods.retain(|m| {
                digests
                    .iter()
                    .any(|(n, d)| *n == m.method && *d == m.digest)
            });
            (!rates.methods.is_empty()).then_some(rates)
        }
        None => None,
    };
    let features = FeatureNetFile::load(&bench.feature_net, device)?;
    if features.info.resolution != resolution {
        bail!(
            "{} was trained on {r}x{r} images but the benchmark's model makes {resolution}x{resolution}",
            bench.feature_net.display(),
            r = features.info.resolution
        );
    }
    let reference = Reference::new(dataset_statistics(
        &features,
        images.as_ref(),
        bench.ref_n,
        256,
        &cache,
    )?);
    // The Inception check, loaded when the first checkpoint that it scores comes up: a
    // benchmark whose runs are all scored already loads no network and takes no square root.
    let inception_check = bench.inception.as_ref().filter(|_| options.inception);
    type Check = (hayate_eval::inception::FidInception, Reference, usize);
    let mut check: Option<Check> = None;
    let load_check = |check: &mut Option<Check>| -> Result<()> {
        if check.is_none()
            && let Some(settings) = inception_check
        {
            let weights =
                hayate_eval::fid::inception_weights(options.inception_weights.as_deref(), &cache)?;
            let net = hayate_eval::inception::FidInception::load(&weights, device)?;
            let reference = Reference::new(dataset_statistics(
                &net,
                images.as_ref(),
                settings.ref_n,
                50,
                &cache,
            )?);
            *check = Some((net, reference, settings.n));
        }
        Ok(())
    };

    let runs_dir = &options.runs;
    for name in &options.only_methods {
        ensure!(
            bench.method.iter().any(|m| slug(&m.name) == slug(name)),
            "--method {name:?}: the benchmark has no such method (it has {})",
            bench
                .method
                .iter()
                .map(|m| format!("{:?}", m.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for seed in &options.only_seeds {
        ensure!(
            bench.seeds.contains(seed),
            "--seed {seed}: the benchmark's seeds are {:?}",
            bench.seeds
        );
    }
    let processor = crate::processor::Processor::detect().describe();
    let mut runs = Vec::new();
    for (index, method) in bench.method.iter().enumerate() {
        for (seed_index, &seed) in bench.seeds.iter().enumerate() {
            let config = bench.run_config(index, seed)?;
            let dir = runs_dir.join(format!("{}-seed{seed}", slug(&method.name)));
            let digest = bench.digest(
                &config,
                features.weights_sha256(),
                inception_check.is_some(),
            );
            // Named by the evaluation, so benchmarks sharing a run keep their own scores.
            let result_path = dir.join(format!("scores-{digest}.json"));
            let kept_path = bench.scores.as_ref().map(|folder| {
                folder.join(format!("{}-seed{seed}-{digest}.json", slug(&method.name)))
            });
            let finished = [Some(&result_path), kept_path.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|path| {
                    let done: RunResult =
                        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
                    (done.digest == digest).then_some(done)
                });
            if let Some(mut done) = finished {
                eprintln!("{} seed {seed}: done earlier", method.name);
                // A run shared through --runs may have been stored under another benchmark's name.
                done.method = method.name.clone();
                done.images_per_step = config.train.batch_size as u64;
                runs.push(done);
                continue;
            }
            let selected = (options.only_methods.is_empty()
                || options
                    .only_methods
                    .iter()
                    .any(|m| slug(m) == slug(&method.name)))
                && (options.only_seeds.is_empty() || options.only_seeds.contains(&seed));
            if options.report_only {
                eprintln!("{} seed {seed}: not finished (--report-only)", method.name);
                continue;
            }
            if !selected {
                eprintln!("{} seed {seed}: not finished, not selected", method.name);
                continue;
            }
            let trained = hayate_train::checkpoint::list(&dir).unwrap_or_default();
            let done_steps = match trained.last() {
                Some(_) => {
                    let (_, newest) = Checkpoint::load_newest_valid(&dir)?;
                    let changes = newest.meta.config.differences(&config);
                    if !changes.is_empty() {
                        bail!(
                            "{} was trained with other settings ({}); delete it or choose \
                             another --out",
                            dir.display(),
                            changes.join("; ")
                        );
                    }
                    newest.step()
                }
                None => 0,
            };
            let clock = Instant::now();
            let trained_now = done_steps < config.train.steps;
            if trained_now {
                eprintln!(
                    "{} seed {seed}: training {} steps{}",
                    method.name,
                    config.train.steps,
                    if done_steps > 0 {
                        format!(" (resuming at {done_steps})")
                    } else {
                        String::new()
                    }
                );
                train(
                    &TrainOptions {
                        config: config.clone(),
                        data_dir: None,
                        out: dir.clone(),
                        resume: done_steps > 0,
                        init: None,
                        allow_config_change: false,
                        devices: Vec::new(),
                        images: Some(images.clone()),
                    },
                    device,
                    hayate_eval::interval::standard(),
                )
                .with_context(|| format!("{} seed {seed}", method.name))?;
            }
            let train_seconds = clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            let paths = hayate_train::checkpoint::list(&dir)?;
            let last = paths.len().saturating_sub(1);
            let mut scores = Vec::new();
            for (i, path) in paths.iter().enumerate() {
                let checked = seed_index == 0 && (index == 0 || i == last);
                if checked {
                    load_check(&mut check)?;
                }
                let score = score(
                    bench,
                    path,
                    &features,
                    &reference,
                    check.as_ref().filter(|_| checked),
                    device,
                )?;
                eprintln!(
                    "{} seed {seed} step {}: proxy FD {:.4}{}",
                    method.name,
                    score.step,
                    score.proxy,
                    score
                        .inception
                        .map_or(String::new(), |f| format!(", Inception FID {f:.2}"))
                );
                scores.push(score);
            }
            let result = RunResult {
                method: method.name.clone(),
                seed,
                scores,
                train_seconds,
                eval_seconds: clock.elapsed().as_secs_f64(),
                digest,
                images_per_step: config.train.batch_size as u64,
                // Where its steps ran (a run trained before this invocation: not known here).
                processor: if trained_now {
                    processor.clone()
                } else {
                    String::new()
                },
            };
            let json = serde_json::to_string_pretty(&result)?;
            write_atomic(&result_path, json.as_bytes())?;
            if let Some(kept) = &kept_path {
                if let Some(folder) = kept.parent() {
                    std::fs::create_dir_all(folder)
                        .with_context(|| format!("cannot create {}", folder.display()))?;
                }
                write_atomic(kept, json.as_bytes())?;
            }
            runs.push(result);
        }
    }

    let mut report = summarize(
        runs,
        &bench.method[0].name,
        &bench.levels,
        bench.full_recipe.clone(),
        start.elapsed().as_secs_f64(),
    );
    report.rates = rates;
    write_atomic(
        &options.out.join("results.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    write_atomic(&options.out.join("table.md"), report.table().as_bytes())?;
    report.chart().save(&options.out.join("convergence.png"))?;
    Ok(report)
}

/// Speed-ups per method and seed (against the `baseline` method's run of the same seed) at the
/// quality `levels`, the time to each, and the proxy's agreement with Inception FID.
pub fn summarize(
    runs: Vec<RunResult>,
    baseline: &str,
    levels: &[f64],
    full_recipe: Option<FullRecipe>,
    wall_seconds: f64,
) -> ConvergenceReport {
    let curve =
        |r: &RunResult| -> Vec<(u64, f64)> { r.scores.iter().map(|s| (s.step, s.proxy)).collect() };
    // Training seconds against step, from the start of the run.
    let clock = |r: &RunResult| -> Option<Vec<(f64, f64)>> {
        std::iter::once(Some((0.0, 0.0)))
            .chain(r.scores.iter().map(|s| Some((s.step as f64, s.seconds?))))
            .collect()
    };
    let mut methods: Vec<MethodSummary> = Vec::new();
    for run in &runs {
        let baseline = runs
            .iter()
            .find(|b| b.method == baseline && b.seed == run.seed)
            .map(curve)
            .unwrap_or_default();
        let mine = curve(run);
        let speed = speedup(&baseline, &mine);
        let last = run.scores.last().map_or(f64::NAN, |s| s.proxy);
        let seconds = clock(run);
        let gain = last_quarter_gain(&mine);
        let m = match methods.iter().position(|m| m.method == run.method) {
            Some(i) => &mut methods[i],
            None => {
                methods.push(MethodSummary {
                    method: run.method.clone(),
                    finals: Vec::new(),
                    speedups: Vec::new(),
                    levels: levels
                        .iter()
                        .map(|&fraction| LevelSummary {
                            fraction,
                            speedups: Vec::new(),
                            seconds: Vec::new(),
                            images: Vec::new(),
                        })
                        .collect(),
                    last_quarter_gain: Vec::new(),
                });
                methods.last_mut().expect("just pushed")
            }
        };
        m.finals.push(last);
        m.speedups.push(speed);
        m.last_quarter_gain.push(gain);
        for level in &mut m.levels {
            let reached = speedup_at(&baseline, &mine, level.fraction);
            level.speedups.push(reached.map(|(speed, _)| speed));
            level
                .seconds
                .push(reached.and_then(|(_, steps)| value_at(seconds.as_ref()?, steps)));
            level
                .images
                .push(reached.map(|(_, steps)| steps * run.images_per_step as f64));
        }
    }
    let checked: Vec<&Score> = runs
        .iter()
        .flat_map(|r| &r.scores)
        .filter(|s| s.inception.is_some())
        .collect();
    let pairs = |scores: &[&Score]| -> (Vec<f64>, Vec<f64>) {
        scores
            .iter()
            .map(|s| (s.proxy, s.inception.unwrap_or(f64::NAN)))
            .unzip()
    };
    let (p, i) = pairs(&checked);
    let finals: Vec<&Score> = runs
        .iter()
        .filter_map(|r| r.scores.last())
        .filter(|s| s.inception.is_some())
        .collect();
    let (pf, fi) = pairs(&finals);
    ConvergenceReport {
        spearman: spearman(&p, &i),
        spearman_finals: spearman(&pf, &fi),
        runs,
        methods,
        wall_seconds,
        full_recipe,
        rates: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every benchmark in `experiments/` loads, its feature network is committed beside it, and
    /// each of its methods is a valid run config that round-trips.
    #[test]
    fn every_benchmark_file_in_experiments_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if !hayate_train::config::is_benchmark_file(&path) {
                continue;
            }
            let bench = BenchConfig::load(&path).unwrap();
            assert!(bench.feature_net.is_file(), "{}", path.display());
            for i in 0..bench.method.len() {
                let config = bench.run_config(i, bench.seeds[0]).unwrap();
                assert_eq!(RunConfig::parse(&config.to_toml()).unwrap(), config);
            }
            seen += 1;
        }
        assert!(seen >= 1, "expected a benchmark in {}", dir.display());
    }

    #[test]
    fn steps_to_reach_interpolates_between_evaluations() {
        let curve = [(100, 5.0), (200, 3.0), (300, 2.0), (400, 1.0)];
        assert_eq!(steps_to_reach(&curve, 6.0), Some(100.0));
        assert_eq!(steps_to_reach(&curve, 4.0), Some(150.0));
        assert_eq!(steps_to_reach(&curve, 1.0), Some(400.0));
        assert_eq!(steps_to_reach(&curve, 0.5), None);
        // Reaching the baseline's final value at half its steps is a 2x speed-up.
        let baseline = [(100, 5.0), (200, 4.0), (300, 3.5), (400, 3.0)];
        assert_eq!(speedup(&baseline, &curve), Some(2.0));
        assert_eq!(speedup(&baseline, &baseline), Some(1.0));
        assert_eq!(speedup(&curve, &baseline), None);
        // A baseline whose curve turns up reaches its final score first at step 250: 1x
        // against itself, and a method reaching it at 125 is 2x.
        let turning = [(100, 5.0), (200, 3.0), (300, 2.0), (400, 2.5)];
        assert_eq!(speedup(&turning, &turning), Some(1.0));
        assert_eq!(speedup_at(&turning, &turning, 1.0), Some((1.0, 250.0)));
        let early = [(100, 4.0), (150, 1.0)];
        assert_eq!(speedup(&turning, &early), Some(2.0));
    }

    #[test]
    fn spearman_ranks_with_ties() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&x, &[10.0, 20.0, 30.0, 40.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        // One swap of neighbours among four: 1 - 6 * 2 / (4 * 15) = 0.8.
        assert!((spearman(&x, &[1.0, 3.0, 2.0, 4.0]).unwrap() - 0.8).abs() < 1e-12);
        let tied = spearman(&x, &[1.0, 1.0, 2.0, 3.0]).unwrap();
        assert!(tied > 0.9 && tied < 1.0, "{tied}");
        assert_eq!(spearman(&x[..2], &x[..2]), None);
        assert_eq!(spearman(&x, &[1.0; 4]), None);
    }

    const BENCH: &str = r#"
seeds = [0, 1]
eval_every = 2
eval_n = 8
eval_ddim_steps = 2
feature_net = "features.hfn"
ref_n = 16

[run.model]
preset = "tiny"
resolution = 16

[run.train]
steps = 4
batch_size = 4

[[method]]
name = "baseline"

[[method]]
name = "CLTS"
[method.run.diffusion]
timestep_sampler = { kind = "clts", mu = 0.3, sigma = 0.2, lambda_max = 0.5, ramp_steps = 2, axis = "t_over_T" }
"#;

    #[test]
    fn methods_are_the_base_run_with_their_changes() {
        let bench = BenchConfig::parse(BENCH).unwrap();
        let base = bench.run_config(0, 1).unwrap();
        let clts = bench.run_config(1, 1).unwrap();
        assert_eq!(base.train.seed, 1);
        assert_eq!(base.train.checkpoint_every, 2);
        assert_eq!(base.train.keep_checkpoints, 2);
        assert_eq!(base.model, clts.model);
        assert_eq!(base.train, clts.train);
        assert_ne!(
            base.diffusion.timestep_sampler,
            clts.diffusion.timestep_sampler
        );
        assert_eq!(
            base.diffusion.timestep_sampler,
            hayate_schedule::TimestepSamplerConfig::Uniform
        );
    }

    #[test]
    fn step_rates_are_kept_per_method_settings_not_per_run_length_or_seed() {
        let bench = BenchConfig::parse(BENCH).unwrap();
        let base = bench.run_config(0, 1).unwrap();
        let mut longer = bench.run_config(0, 2).unwrap();
        longer.train.steps *= 4;
        longer.train.checkpoint_every += 1;
        assert_eq!(rate_digest(&base), rate_digest(&longer));
        // Other timesteps or a larger batch cost another amount per step.
        assert_ne!(
            rate_digest(&base),
            rate_digest(&bench.run_config(1, 1).unwrap())
        );
        let mut bigger = base.clone();
        bigger.train.batch_size *= 2;
        assert_ne!(rate_digest(&base), rate_digest(&bigger));
        let rate = |v: &[f64]| MethodRate {
            method: "m".into(),
            digest: String::new(),
            images_per_second: v.to_vec(),
        };
        assert_eq!(rate(&[80.0, 200.0, 70.0]).median(), 80.0);
        assert_eq!(rate(&[80.0, 200.0, 70.0, 100.0]).median(), 90.0);
        assert!(rate(&[]).median().is_nan());
    }

    #[test]
    fn bad_benchmarks_are_refused_with_the_reason() {
        let err = |text: &str| format!("{:#}", BenchConfig::parse(text).unwrap_err());
        let e = err(&BENCH.replace("steps = 4", "steps = 5"));
        assert!(e.contains("multiple of eval_every"), "{e}");
        let e = err(&BENCH.replace("name = \"CLTS\"", "name = \"baseline\""));
        assert!(e.contains("distinct"), "{e}");
        // Names that differ only in case or punctuation would share a run folder.
        let e = err(&BENCH.replace("name = \"CLTS\"", "name = \"Baseline\""));
        assert!(e.contains("distinct") && e.contains("\"baseline\""), "{e}");
        let e = err(&BENCH.replace("ramp_steps = 2", "ramp_steps = 2, bogus = 1"));
        assert!(e.contains("CLTS") && e.contains("bogus"), "{e}");
        let e = err(&BENCH.replace("name = \"CLTS\"", "name = \"CLTS\"\nunset = [\"train.lr\"]"));
        assert!(e.contains("CLTS") && e.contains("does not set it"), "{e}");
        let e = err(&BENCH.replace(
            "name = \"CLTS\"",
            "name = \"CLTS\"\nunset = [\"nothing.lr\"]",
        ));
        assert!(e.contains("no such table"), "{e}");
        let unset = BenchConfig::parse(&BENCH.replace(
            "name = \"CLTS\"",
            "name = \"CLTS\"\nunset = [\"train.batch_size\"]",
        ))
        .unwrap();
        let default = RunConfig::parse("[model]\npreset = \"tiny\"\n")
            .unwrap()
            .train
            .batch_size;
        assert_eq!(unset.run_config(1, 0).unwrap().train.batch_size, default);
        assert_eq!(unset.run_config(0, 0).unwrap().train.batch_size, 4);
        let e = err(&BENCH.replace("seeds = [0, 1]", "seeds = []"));
        assert!(e.contains("seeds"), "{e}");
        let e = err(&BENCH.replace("ref_n = 16", "ref_n = 16\ncolour = 1"));
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn summaries_pair_each_seed_with_the_baseline_of_that_seed() {
        let run = |method: &str, seed, proxies: [f64; 3]| RunResult {
            method: method.into(),
            seed,
            scores: proxies
                .iter()
                .enumerate()
                .map(|(i, &p)| Score {
                    step: 100 * (i as u64 + 1),
                    proxy: p,
                    inception: (seed == 0).then_some(10.0 * p),
                    // Seed 1 trains at 2 s per step, seed 0 at 1 s.
                    seconds: Some(100.0 * (i as f64 + 1.0) * (seed as f64 + 1.0)),
                })
                .collect(),
            train_seconds: 0.0,
            eval_seconds: 0.0,
            digest: String::new(),
            images_per_step: 32,
            processor: "a test processor".into(),
        };
        let recipe = FullRecipe {
            name: "DDPM's CIFAR-10 recipe".into(),
            steps: 800_000,
            batch_size: 128,
            images_per_second: 1280.0,
        };
        let report = summarize(
            vec![
                run("base", 0, [5.0, 4.0, 3.0]),
                run("base", 1, [6.0, 5.0, 4.0]),
                run("fast", 0, [4.0, 3.0, 2.0]),
                run("fast", 1, [7.0, 6.5, 6.0]),
            ],
            "base",
            &[0.5, 1.0],
            Some(recipe.clone()),
            1.0,
        );
        assert_eq!(recipe.hours(), 800_000.0 * 128.0 / 1280.0 / 3600.0);
        assert_eq!(report.methods.len(), 2);
        assert_eq!(report.methods[0].speedups, vec![Some(1.0), Some(1.0)]);
        // Seed 0 reaches 3.0 at step 200 (1.5x); seed 1 never reaches 4.0.
        assert_eq!(report.methods[1].speedups, vec![Some(1.5), None]);
        assert_eq!(report.methods[1].finals, vec![2.0, 6.0]);
        assert_eq!(report.spearman, Some(1.0));
        assert_eq!(report.spearman_finals, None); // two checked finals only
        let table = report.table();
        assert!(
            table.contains("| fast | 4.000 ± 2.828 | 1.50x (1.50-1.50) | 1/2 |"),
            "{table}"
        );
        assert_eq!(
            report.chart().series[1].points,
            vec![(100.0, 5.5), (200.0, 4.75), (300.0, 4.0)]
        );
        // Half-way, the baseline of seed 0 scores 4.5 at step 150 (between 5 at 100 and 4 at
        // 200); "fast" has reached 4.5 by its first evaluation,
        // so at step 100: 1.5x. Seed 1's baseline: 5.5 at 150, never reached by "fast".
        let fast = &report.methods[1];
        assert_eq!(fast.levels[0].fraction, 0.5);
        assert_eq!(fast.levels[0].speedups, vec![Some(1.5), None]);
        // At the final level, seed 0 reaches 3.0 at step 200: 200 s and 6400 images.
        assert_eq!(fast.levels[1].seconds, vec![Some(200.0), None]);
        assert_eq!(fast.levels[1].images, vec![Some(6400.0), None]);
        // The last quarter (score at step 225, 3.75, to 3.0) still gained 20%.
        assert_eq!(report.methods[0].last_quarter_gain[0], Some(0.2));
        assert!(
            table.contains(
                "| fast | 1.50x (1.50x-1.50x) [1/2] | 1.50x (1.50x-1.50x) [1/2] | \
                 200 s (200 s-200 s) [1/2] | 6.4k (6.4k-6.4k) [1/2] | 16.6% (5.9%-27.3%) |"
            ),
            "{table}"
        );
        assert!(table.contains("Trained on: a test processor."), "{table}");
        // 22.2 hours for the baseline; 1.5x leaves 14.8.
        assert!(table.contains("| fast | 14.8 | 7.4 |"), "{table}");
        assert!(table.contains("| base | 22.2 | 0.0 |"), "{table}");
        // Without measured rates there is no wall-clock table.
        assert!(!table.contains("Step rates side by side"), "{table}");
        let mut timed = report.clone();
        let rate = |method: &str, v: &[f64]| MethodRate {
            method: method.into(),
            digest: String::new(),
            images_per_second: v.to_vec(),
        };
        timed.rates = Some(StepRates {
            processor: "a test processor".into(),
            steps: 30,
            rounds: 3,
            methods: vec![
                rate("base", &[100.0, 90.0, 110.0]),
                rate("fast", &[80.0, 200.0, 70.0]),
            ],
        });
        let table = timed.table();
        assert!(
            table.contains(
                "Step rates side by side (3 rounds of 30 timed steps each, on a test processor)"
            ),
            "{table}"
        );
        // The baseline reaches its final score at step 300 on both seeds: 9,600 images at 100
        // images/s. "fast" needs 6,400 images on seed 0 at 80 images/s: 80 s, and its 1.5x in
        // steps is 1.5 * 80 / 100 = 1.2x in wall-clock time; each of its steps costs 1.25x.
        assert!(
            table.contains(
                "| base | 100.0 (90.0-110.0) | 1.00x | 96 s (96 s-96 s) | 1.00x (1.00x-1.00x) |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| fast | 80.0 (70.0-200.0) | 1.25x | 80 s (80 s-80 s) [1/2] | 1.20x (1.20x-1.20x) [1/2] |"
            ),
            "{table}"
        );
        assert_eq!(value_at(&[(0.0, 0.0), (10.0, 5.0)], 4.0), Some(2.0));
        assert_eq!(value_at(&[(1.0, 0.0), (10.0, 5.0)], 0.5), None);
        assert_eq!(value_at(&[(1.0, 0.0), (10.0, 5.0)], 11.0), None);
    }
}
