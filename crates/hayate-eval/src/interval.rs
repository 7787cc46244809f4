//! The training run's end-of-interval work that needs evaluation code: the EMA model's sample
//! grid, FID every `eval.fid_every` steps, and the run's charts. `hayate-train` calls them as
//! [`IntervalHook`]s; [`standard`] is what `hayate train` registers.

use crate::fid::FidEvaluator;
use crate::sample::{Guidance, Sampling, generate, save_grid};
use anyhow::Result;
use hayate_train::run_dir::{self, Event};
use hayate_train::train::{IntervalEnd, IntervalHook, cache_dir};

/// The hooks of a `hayate train` run, in order: the sample grid, FID when `eval.fid_every` is
/// set, the charts (last, so they draw the lines the others logged).
pub fn standard() -> Vec<Box<dyn IntervalHook>> {
    vec![
        Box::new(SampleGrid),
        Box::new(Fid::default()),
        Box::new(Charts),
    ]
}

fn ema_sampling<'a>(end: &IntervalEnd<'a>) -> Sampling<'a> {
    Sampling {
        model: end.ema,
        device: end.device,
        schedule: end.schedule,
        prediction: end.config.diffusion.prediction,
    }
}

/// `sampling.grid_images` samples of the EMA model (the `[sampling]` sampler, the run's seed, so
/// every grid of a run starts from the same noise), written to the run folder's grid for the step
/// and logged as a `grid` event.
pub struct SampleGrid;

impl IntervalHook for SampleGrid {
    fn run(&mut self, end: &IntervalEnd<'_>) -> Result<()> {
        let sampling = &end.config.sampling;
        let images = generate(
            ema_sampling(end),
            sampling.sampler().build().as_ref(),
            sampling.grid_images,
            end.config.train.seed,
            Guidance::for_grid(end.ema, sampling.grid_images, sampling.cfg_scale).as_ref(),
        );
        let grid = run_dir::grid_path(end.out, end.step);
        save_grid(&images, end.ema.resolution(), &grid)?;
        let relative = grid.strip_prefix(end.out).unwrap_or(&grid);
        run_dir::append(
            end.out,
            &Event::Grid {
                step: end.step,
                grid: relative.display().to_string(),
            },
        )
    }
}

/// FID of the EMA model's samples against the training images at every multiple of
/// `eval.fid_every` (none when it is 0), logged as a `fid` event. The Inception network and the
/// reference statistics are loaded at the first evaluation and kept.
#[derive(Default)]
pub struct Fid {
    evaluator: Option<FidEvaluator>,
}

impl IntervalHook for Fid {
    fn run(&mut self, end: &IntervalEnd<'_>) -> Result<()> {
        let eval = &end.config.eval;
        if eval.fid_every == 0 || !end.step.is_multiple_of(eval.fid_every) {
            return Ok(());
        }
        let evaluator = match &mut self.evaluator {
            Some(evaluator) => evaluator,
            slot => slot.insert(FidEvaluator::new(
                eval,
                end.images.as_ref(),
                end.device,
                &cache_dir(),
            )?),
        };
        let model = ema_sampling(end);
        let fid = evaluator.evaluate(
            model.model,
            model.schedule,
            model.prediction,
            end.config.sampling.cfg_scale,
        )?;
        eprintln!("step {}: FID {fid:.3} (n = {})", end.step, eval.fid_n);
        run_dir::append(
            end.out,
            &Event::Fid {
                step: end.step,
                fid,
                n: eval.fid_n,
                reference: end.images.name(),
                sampler: eval.fid_sampler.name().into(),
                ddim_steps: eval.fid_ddim_steps,
            },
        )
    }
}

/// Redraws the run's charts from its metrics log. They are a view of that log, so failing to draw
/// them warns and does not stop training.
pub struct Charts;

impl IntervalHook for Charts {
    fn run(&mut self, end: &IntervalEnd<'_>) -> Result<()> {
        if let Err(e) = crate::plot::plot_run(end.out) {
            eprintln!("warning: charts not refreshed: {e:#}");
        }
        Ok(())
    }
}
