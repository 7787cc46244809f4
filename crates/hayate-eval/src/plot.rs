//! PNG line charts: the schedules a config will run (`hayate schedule plot`) and the curves a run
//! has logged (`hayate plot`, refreshed at every checkpoint).

use crate::sample::write_png;
use anyhow::{Context, Result, anyhow, bail};
use hayate_schedule::TimestepSampler;
use hayate_train::config::RunConfig;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Chart size in pixels.
const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;
/// The font family name charts ask for; registered once from a bundled font.
const FONT: &str = "sans-serif";
/// Series colours, in order.
const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(230, 171, 2),
];

/// One named curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry (empty: no legend).
    pub name: String,
    /// (x, y) points in drawing order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A line chart of one or more series against a common x axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Caption above the plot.
    pub title: String,
    /// x axis label.
    pub x_label: String,
    /// y axis label.
    pub y_label: String,
    /// The curves.
    pub series: Vec<Series>,
    /// A logarithmic y axis (points with y <= 0 are skipped).
    pub log_y: bool,
}

impl Chart {
    fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0))
    }

    /// Draws the chart into an RGB image.
    pub fn render(&self) -> Result<image::RgbImage> {
        static REGISTER: Once = Once::new();
        REGISTER.call_once(|| {
            // The bundled font is valid TrueType; a failure here would leave text undrawn, which
            // the render below then reports.
            let _ = plotters::style::register_font(
                FONT,
                FontStyle::Normal,
                epaint_default_fonts::UBUNTU_LIGHT,
            );
        });
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in self.points() {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            bail!("chart \"{}\": no finite points to draw", self.title);
        }
        if x0 == x1 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        let (y0, y1) = if self.log_y {
            (y0 / 1.25, y1 * 1.25)
        } else {
            let pad = ((y1 - y0) * 0.05)
                .max(y1.abs().max(y0.abs()) * 0.01)
                .max(1e-12);
            (y0 - pad, y1 + pad)
        };
        let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
            let mut builder = ChartBuilder::on(&root);
            builder
                .caption(&self.title, (FONT, 19))
                .margin(14)
                .x_label_area_size(46)
                .y_label_area_size(84);
            if self.log_y {
                let chart = builder
                    .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                    .map_err(|e| anyhow!("{e}"))?;
                self.draw(chart)
            } else {
                let chart = builder
                    .build_cartesian_2d(x0..x1, y0..y1)
                    .map_err(|e| anyhow!("{e}"))?;
                self.draw(chart)
            }
            .with_context(|| format!("drawing chart \"{}\"", self.title))?;
            root.present().map_err(|e| anyhow!("{e}"))?;
        }
        image::RgbImage::from_raw(WIDTH, HEIGHT, buffer).context("chart buffer size")
    }

    fn draw<'a, Y>(
        &self,
        mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    ) -> Result<()>
    where
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let mut legend = false;
        for (i, series) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0))
                .collect();
            let drawn = chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?;
            if !series.name.is_empty() {
                legend = true;
                drawn.label(series.name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
                });
            }
        }
        if legend {
            chart
                .configure_series_labels()
                .label_font((FONT, 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    }

    /// Renders the chart and writes it as a PNG, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_png(&self.render()?, path)
    }
}

/// A short tick label: plain decimals for ordinary magnitudes, scientific notation otherwise.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Writes `charts` as `<name>.png` into `dir` (created if needed) and returns the paths.
pub fn save_all(charts: &[(&str, Chart)], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    charts
        .iter()
        .map(|(name, chart)| {
            let path = dir.join(format!("{name}.png"));
            chart.save(&path)?;
            Ok(path)
        })
        .collect()
}

/// At most this many points per curve: plenty for a 900-pixel-wide chart.
const CURVE_POINTS: u64 = 600;

/// The steps at which a curve over `0..steps` is evaluated: evenly spaced, ending at the last.
fn sample_steps(steps: u64) -> Vec<u64> {
    let stride = steps.div_ceil(CURVE_POINTS).max(1);
    let mut ks: Vec<u64> = (0..steps).step_by(stride as usize).collect();
    if ks.last() != Some(&(steps.saturating_sub(1))) {
        ks.push(steps.saturating_sub(1));
    }
    ks
}

/// The steps at which p_k(t) is drawn: the start, then four points up to the step from which
/// the distribution stops changing (just the start when it never changes).
fn curriculum_steps(sampler: &dyn TimestepSampler, total: u64) -> Vec<u64> {
    let last = total.saturating_sub(1);
    let settled = sampler.probabilities(last, total);
    let is_settled = |k: u64| {
        sampler
            .probabilities(k, total)
            .iter()
            .zip(&settled)
            .all(|(a, b)| (a - b).abs() < 1e-12)
    };
    // Evenly spaced candidates, plus halvings toward 0 for curricula short against the run.
    let mut candidates: Vec<u64> = (0..=256u64)
        .map(|i| last * i / 256)
        .chain((1..64).map(|i| last >> i))
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    let mut settle = last;
    let mut moving = None;
    for &k in candidates.iter().rev() {
        if !is_settled(k) {
            moving = Some(k);
            break;
        }
        settle = k;
    }
    // Between the last moving candidate and the first settled one, bisect to the exact step.
    if let Some(mut lo) = moving {
        while settle - lo > 1 {
            let mid = lo + (settle - lo) / 2;
            if is_settled(mid) {
                settle = mid;
            } else {
                lo = mid;
            }
        }
    }
    let mut ks: Vec<u64> = (0..=4).map(|i| settle * i / 4).collect();
    ks.dedup();
    ks
}

/// The schedules a config will train with, before any GPU time is spent: the timestep
/// distribution p_k(t) at five points of the run, the loss weight w(t), beta1(k) and lr(k).
pub fn schedule_charts(config: &RunConfig) -> Result<Vec<(&'static str, Chart)>> {
    let schedule = config.diffusion.schedule()?;
    let sampler = config.diffusion.timestep_sampler.build(&schedule)?;
    let total = config.train.steps;
    let big_t = schedule.steps();
    let shown = curriculum_steps(sampler.as_ref(), total);
    let mut timesteps: Vec<Series> = shown
        .iter()
        .map(|&k| {
            let p = sampler.probabilities(k, total);
            let settled = k > 0 && Some(&k) == shown.last() && k + 1 < total;
            Series {
                name: match (shown.len(), settled) {
                    (1, _) => "every step k".into(),
                    (_, true) => format!("k >= {k}"),
                    _ => format!("k = {k}"),
                },
                // Scaled by T so the uniform distribution reads as 1 whatever T is.
                points: p
                    .iter()
                    .enumerate()
                    .map(|(t, &p)| (t as f64, p * big_t as f64))
                    .collect(),
            }
        })
        .collect();
    let mut timesteps_title = format!("p_k(t): {:?}", config.diffusion.timestep_sampler);
    if let hayate_schedule::TimestepSamplerConfig::Adaptive { floor, .. } =
        config.diffusion.timestep_sampler
    {
        // Where it goes depends on the training signal: only the start and the floor are known.
        timesteps[0].name = "the start".into();
        timesteps.push(Series {
            name: "the floor, the least any t keeps".into(),
            points: vec![(0.0, floor), ((big_t - 1) as f64, floor)],
        });
        timesteps_title = "p_k(t), adaptive: starts uniform, then follows the run's losses (hayate plot of the run charts it)".into();
    }
    let weight = &config.diffusion.loss_weight;
    let prediction = config.diffusion.prediction;
    let momentum = config.train.momentum_schedule();
    let lr = config.train.lr_schedule(0);
    let ks = sample_steps(total);
    let over_steps = |name: &str, f: &dyn Fn(u64) -> f64| Series {
        name: name.into(),
        points: ks.iter().map(|&k| (k as f64, f(k))).collect(),
    };
    Ok(vec![
        (
            "timesteps",
            Chart {
                title: timesteps_title,
                x_label: "timestep t".into(),
                y_label: "T x probability (uniform = 1)".into(),
                series: timesteps,
                log_y: false,
            },
        ),
        (
            "loss_weight",
            Chart {
                title: format!("Loss weight w(t): {weight:?}, {prediction:?} prediction"),
                x_label: "timestep t".into(),
                y_label: "weight".into(),
                series: vec![Series {
                    name: String::new(),
                    points: weight
                        .table(&schedule, prediction)
                        .into_iter()
                        .enumerate()
                        .map(|(t, w)| (t as f64, w))
                        .collect(),
                }],
                log_y: false,
            },
        ),
        (
            "beta1",
            Chart {
                title: "Adam beta1(k)".into(),
                x_label: "training step k".into(),
                y_label: "beta1".into(),
                series: vec![over_steps("", &|k| momentum.beta1(k))],
                log_y: false,
            },
        ),
        (
            "lr",
            Chart {
                title: "Learning rate lr(k) (warm-up x compensation)".into(),
                x_label: "training step k".into(),
                y_label: "learning rate".into(),
                // WarmupLr counts steps from 1.
                series: vec![over_steps("", &|k| lr.at(k + 1))],
                log_y: false,
            },
        ),
    ])
}

/// The numeric `field` of every `event` line of a metrics log, as (step, value).
fn logged(lines: &[serde_json::Value], event: &str, field: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l["event"] == event)
        .filter_map(|l| Some((l["step"].as_f64()?, l[field].as_f64()?)))
        .collect()
}

/// Charts of a run's logged curves: loss, learning rate, beta1 and mean t/T against step.
pub fn run_charts(run_dir: &Path) -> Result<Vec<(&'static str, Chart)>> {
    let path = hayate_train::run_dir::metrics_path(run_dir);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a JSON object", path.display(), i + 1))
        })
        .collect::<Result<Vec<serde_json::Value>>>()?;
    let chart = |title: &str, y_label: &str, field: &str, log_y: bool| Chart {
        title: title.into(),
        x_label: "training step".into(),
        y_label: y_label.into(),
        series: vec![Series {
            name: String::new(),
            points: logged(&lines, "log", field),
        }],
        log_y,
    };
    let mut charts = vec![
        (
            "loss",
            chart(
                "Training loss (mean over each log window)",
                "loss",
                "loss",
                true,
            ),
        ),
        ("lr", chart("Learning rate", "learning rate", "lr", false)),
        ("beta1", chart("Adam beta1", "beta1", "beta1", false)),
        (
            "mean_t",
            chart(
                "Mean t / T of the drawn timesteps",
                "mean t / T",
                "mean_t_over_T",
                false,
            ),
        ),
    ];
    let fid = logged(&lines, "fid", "fid");
    if !fid.is_empty() {
        // The FID lines name their n and their reference set (the run's own training images).
        let fid_lines = || lines.iter().filter(|l| l["event"] == "fid");
        let same =
            |values: Vec<String>, default: &str| match values.windows(2).all(|w| w[0] == w[1]) {
                true => values.into_iter().next().unwrap_or_else(|| default.into()),
                false => "mixed".into(),
            };
        let n = same(
            fid_lines()
                .filter_map(|l| l["n"].as_u64())
                .map(|n| n.to_string())
                .collect(),
            "?",
        );
        let reference = same(
            fid_lines()
                .filter_map(|l| l["reference"].as_str().map(str::to_owned))
                .collect(),
            "the training images",
        );
        charts.push((
            "fid",
            Chart {
                title: format!("FID of EMA samples against {reference} (n = {n})"),
                x_label: "training step".into(),
                y_label: "FID".into(),
                series: vec![Series {
                    name: String::new(),
                    points: fid,
                }],
                log_y: true,
            },
        ));
    }
    if charts[0].1.points().next().is_none() {
        bail!("{}: no training log lines to plot yet", path.display());
    }
    charts.extend(curriculum_charts(&lines, &path)?);
    Ok(charts)
}

/// An adaptive curriculum's logged band masses (`timesteps` lines): T x p(t) over t / T at the
/// start and at four updates spread over the run, and the mass of each quarter of t against
/// step. None when the run logged no such lines.
fn curriculum_charts(
    lines: &[serde_json::Value],
    path: &Path,
) -> Result<Vec<(&'static str, Chart)>> {
    let updates = lines
        .iter()
        .filter(|l| l["event"] == "timesteps")
        .map(|l| {
            let step = l["step"].as_u64();
            let mass: Option<Vec<f64>> = l["band_mass"]
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_f64()).collect());
            match (step, mass) {
                (Some(step), Some(mass)) if !mass.is_empty() => Ok((step, mass)),
                _ => Err(anyhow!(
                    "{}: a timesteps line without a step and a list of band masses: {l}",
                    path.display()
                )),
            }
        })
        .collect::<Result<Vec<(u64, Vec<f64>)>>>()?;
    let Some((_, first)) = updates.first() else {
        return Ok(Vec::new());
    };
    let bands = first.len();
    let uniform = vec![1.0 / bands as f64; bands];
    // The start, then four updates evenly spread, the last included.
    let mut shown = vec![(1u64, &uniform)];
    let n = updates.len();
    let mut picks: Vec<usize> = (1..=4).map(|i| (i * n).div_ceil(4) - 1).collect();
    picks.dedup();
    shown.extend(picks.into_iter().map(|i| (updates[i].0, &updates[i].1)));
    let profile = |step: u64, mass: &[f64]| Series {
        name: format!("from step {step}"),
        // Equal-width bands: each is a flat stretch of T x p(t) = bands x mass.
        points: mass
            .iter()
            .enumerate()
            .flat_map(|(b, &m)| {
                let (lo, hi) = (
                    b as f64 / mass.len() as f64,
                    (b + 1) as f64 / mass.len() as f64,
                );
                let y = m * mass.len() as f64;
                [(lo, y), (hi, y)]
            })
            .collect(),
    };
    let quarters = (0..4)
        .map(|q| Series {
            name: format!(
                "t/T in [{:.2}, {:.2})",
                q as f64 / 4.0,
                (q + 1) as f64 / 4.0
            ),
            points: std::iter::once((0.0, 0.25))
                .chain(updates.iter().map(|(step, mass)| {
                    let share: f64 = mass
                        .iter()
                        .enumerate()
                        .filter(|(b, _)| b * 4 / mass.len() == q)
                        .map(|(_, m)| m)
                        .sum();
                    (*step as f64, share)
                }))
                .collect(),
        })
        .collect();
    Ok(vec![
        (
            "curriculum",
            Chart {
                title: format!("Adaptive curriculum: T x p(t) over {bands} bands"),
                x_label: "t / T".into(),
                y_label: "T x probability (uniform = 1)".into(),
                series: shown.into_iter().map(|(k, m)| profile(k, m)).collect(),
                log_y: false,
            },
        ),
        (
            "curriculum_quarters",
            Chart {
                title: "Adaptive curriculum: probability of each quarter of t".into(),
                x_label: "training step".into(),
                y_label: "probability".into(),
                series: quarters,
                log_y: false,
            },
        ),
    ])
}

/// Redraws a run's charts into its `plots/` folder and returns their paths.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    save_all(
        &run_charts(run_dir)?,
        &hayate_train::run_dir::plots_dir(run_dir),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dark_pixels(img: &image::RgbImage) -> usize {
        img.pixels()
            .filter(|p| p.0.iter().all(|&c| c < 128))
            .count()
    }

    #[test]
    fn charts_draw_lines_and_text() {
        let empty = Chart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: vec![Series {
                name: String::new(),
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            }],
            log_y: false,
        };
        let labelled = Chart {
            title: "A title".into(),
            x_label: "x axis".into(),
            y_label: "y axis".into(),
            series: vec![Series {
                name: "a curve".into(),
                ..empty.series[0].clone()
            }],
            ..empty.clone()
        };
        let plain = empty.render().unwrap();
        let text = labelled.render().unwrap();
        assert_eq!(plain.dimensions(), (WIDTH, HEIGHT));
        // The curve is drawn in the first palette colour.
        assert!(plain.pixels().any(|p| p.0 == [31, 119, 180]));
        // Captions, axis names and the legend put dark glyph pixels on the canvas.
        assert!(dark_pixels(&text) > dark_pixels(&plain) + 200);
    }

    #[test]
    fn a_log_chart_skips_non_positive_values_and_empty_charts_are_errors() {
        let chart = Chart {
            title: "log".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![Series {
                name: String::new(),
                points: vec![(0.0, 0.0), (1.0, 1.0), (2.0, 0.01), (3.0, f64::NAN)],
            }],
            log_y: true,
        };
        chart.render().unwrap();
        let nothing = Chart {
            series: vec![Series {
                name: String::new(),
                points: vec![(0.0, -1.0)],
            }],
            ..chart
        };
        let err = nothing.render().unwrap_err().to_string();
        assert!(err.contains("no finite points"), "{err}");
    }

    #[test]
    fn tick_labels_stay_short() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(2e-4), "2.00e-4");
        assert_eq!(tick(50000.0), "50000");
    }

    #[test]
    fn the_timestep_chart_shows_the_curriculum_while_it_moves() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let config = RunConfig::load(&dir.join("cifar10-clts.toml")).unwrap();
        let charts = schedule_charts(&config).unwrap();
        let curves = &charts[0].1.series;
        // The ramp lasts 50k of 800k steps: curves at 0, 12.5k, 25k, 37.5k and from 50k on.
        let names: Vec<&str> = curves.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["k = 0", "k = 12500", "k = 25000", "k = 37500", "k >= 50000"]
        );
        // Uniform at the start (T x p = 1), most mass near t = 0.3 T at the end.
        assert!(
            curves[0]
                .points
                .iter()
                .all(|&(_, y)| (y - 1.0).abs() < 1e-9)
        );
        let peak = curves[4]
            .points
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert!((peak.0 - 300.0).abs() <= 1.0, "{peak:?}");
        let baseline = RunConfig::load(&dir.join("cifar10-baseline.toml")).unwrap();
        let uniform = &schedule_charts(&baseline).unwrap()[0].1.series;
        assert_eq!(uniform.len(), 1);
        assert_eq!(uniform[0].name, "every step k");
        let adaptive = RunConfig::parse(
            "[model]\npreset = \"tiny\"\n[diffusion.timestep_sampler]\nkind = \"adaptive\"\n\
             signal = \"learning_progress\"\n\
             bands = 20\nfloor = 0.3\nupdate_every = 50\nsmoothing = 0.9\n",
        )
        .unwrap();
        let charts = schedule_charts(&adaptive).unwrap();
        let names: Vec<&str> = charts[0].1.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["the start", "the floor, the least any t keeps"]);
        assert_eq!(charts[0].1.series[1].points, vec![(0.0, 0.3), (999.0, 0.3)]);
    }

    #[test]
    fn sampled_steps_cover_the_run() {
        assert_eq!(sample_steps(5), vec![0, 1, 2, 3, 4]);
        let ks = sample_steps(100_000);
        assert!(ks.len() <= CURVE_POINTS as usize + 1);
        assert_eq!((ks[0], *ks.last().unwrap()), (0, 99_999));
    }

    #[test]
    fn run_charts_read_the_log_lines_and_name_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = hayate_train::run_dir::metrics_path(dir.path());
        std::fs::write(
            &metrics,
            concat!(
                r#"{"event":"log","step":10,"loss":0.5,"lr":1e-4,"beta1":0.9,"mean_t_over_T":0.5}"#,
                "\n",
                r#"{"event":"log","step":20,"loss":0.2,"lr":2e-4,"beta1":0.8,"mean_t_over_T":0.4}"#,
                "\n",
                r#"{"event":"checkpoint","step":20,"loss":0.35}"#,
                "\n",
                r#"{"event":"fid","step":20,"fid":80.5,"n":5000,"reference":"flowers-64"}"#,
                "\n"
            ),
        )
        .unwrap();
        let charts = run_charts(dir.path()).unwrap();
        let loss = &charts.iter().find(|(n, _)| *n == "loss").unwrap().1;
        assert_eq!(loss.series[0].points, vec![(10.0, 0.5), (20.0, 0.2)]);
        let fid = &charts.iter().find(|(n, _)| *n == "fid").unwrap().1;
        assert_eq!(fid.series[0].points, vec![(20.0, 80.5)]);
        // Titled with the reference the run logged (an image folder here), not CIFAR-10.
        assert_eq!(
            fid.title,
            "FID of EMA samples against flowers-64 (n = 5000)"
        );
        let paths = plot_run(dir.path()).unwrap();
        assert_eq!(paths.len(), 5, "no curriculum lines, no curriculum charts");
        // An adaptive curriculum's lines add its two charts.
        let mut text = std::fs::read_to_string(&metrics).unwrap();
        for (step, mass) in [(11, "[0.1, 0.2, 0.3, 0.4]"), (21, "[0.4, 0.3, 0.2, 0.1]")] {
            text += &format!("{{\"event\":\"timesteps\",\"step\":{step},\"band_mass\":{mass}}}\n");
        }
        std::fs::write(&metrics, &text).unwrap();
        let charts = run_charts(dir.path()).unwrap();
        let profile = &charts.iter().find(|(n, _)| *n == "curriculum").unwrap().1;
        let names: Vec<&str> = profile.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["from step 1", "from step 11", "from step 21"]);
        // Four bands: T x p = 4 x mass, flat over each quarter.
        assert_eq!(profile.series[2].points[..2], [(0.0, 1.6), (0.25, 1.6)]);
        let quarters = &charts
            .iter()
            .find(|(n, _)| *n == "curriculum_quarters")
            .unwrap()
            .1;
        assert_eq!(
            quarters.series[3].points,
            vec![(0.0, 0.25), (11.0, 0.4), (21.0, 0.1)]
        );
        std::fs::write(&metrics, text + "{\"event\":\"timesteps\",\"step\":31}\n").unwrap();
        let err = format!("{:#}", run_charts(dir.path()).unwrap_err());
        assert!(err.contains("band masses"), "{err}");
        let paths = plot_run(dir.path());
        assert!(paths.is_err());
        std::fs::write(
            &metrics,
            concat!(
                r#"{"event":"log","step":10,"loss":0.5,"lr":1e-4,"beta1":0.9,"mean_t_over_T":0.5}"#,
                "\n",
                r#"{"event":"timesteps","step":11,"band_mass":[0.5,0.5]}"#,
                "\n"
            ),
        )
        .unwrap();
        let paths = plot_run(dir.path()).unwrap();
        assert_eq!(paths.len(), 6);
        for path in paths {
            assert_eq!(image::open(&path).unwrap().width(), WIDTH);
        }
        std::fs::write(&metrics, "{\"event\":\"log\"\nnot json\n").unwrap();
        let err = format!("{:#}", run_charts(dir.path()).unwrap_err());
        assert!(err.contains("metrics.jsonl line 1"), "{err}");
    }
}
