//! The op-by-op profile of a UNet's training step (`hayate bench throughput --phases`): every
//! distinct layer of [`UNetConfig::layers`] timed alone at the step's batch size, forward and
//! backward apart (a convolution's input and weight gradients apart too), so a table can set
//! each beside PyTorch's time for the same shapes (`benches/torch_throughput.py --ops`). Each
//! layer runs as the model runs it: hayate's fused ops where they are on (`--composed-ops`
//! times Burn's instead).

use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::linear;
use hayate_model::{AttentionBlock, Layer, UNetConfig, fused};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// One distinct layer of a step, how often a forward pass runs it, and the seconds of each part
/// of its work on the whole batch.
#[derive(Debug, Clone, Serialize)]
pub struct OpTiming {
    /// The layer and its shapes.
    pub layer: Layer,
    /// What the table calls it (`conv 3x3 128->128 s1 @32`).
    pub name: String,
    /// Occurrences in one forward pass.
    pub count: usize,
    /// (part, seconds per call): `forward`, then `backward`, or for a convolution
    /// `input gradient` and `weight gradient` (with the bias's).
    pub parts: Vec<(String, f64)>,
}

/// What a profile table names `layer`.
pub fn layer_name(layer: &Layer) -> String {
    match *layer {
        Layer::Conv {
            in_channels,
            out_channels,
            kernel,
            stride,
            resolution,
        } => {
            format!("conv {kernel}x{kernel} {in_channels}->{out_channels} s{stride} @{resolution}")
        }
        Layer::Linear { inputs, outputs } => format!("linear {inputs}->{outputs}"),
        Layer::GroupNorm {
            channels,
            resolution,
            silu,
        } => format!(
            "groupnorm{} {channels} @{resolution}",
            if silu { "+silu" } else { "" }
        ),
        Layer::Attention {
            channels,
            resolution,
            heads,
        } => format!("attention block {channels} @{resolution}, {heads} head(s)"),
    }
}

/// The distinct layers of `unet` in first-seen order, with their counts.
pub fn distinct_layers(unet: &UNetConfig) -> Vec<(Layer, usize)> {
    let mut out: Vec<(Layer, usize)> = Vec::new();
    for layer in unet.layers() {
        match out.iter_mut().find(|(l, _)| *l == layer) {
            Some((_, n)) => *n += 1,
            None => out.push((layer, 1)),
        }
    }
    out
}

/// Times every distinct layer of `unet` at `batch` on `device` (its autodiff form, as in
/// training), the median of at least `repeats` calls after one warm-up (see [`MIN_SECONDS`]);
/// reports progress on stderr.
pub fn profile(unet: &UNetConfig, batch: usize, repeats: usize, device: &Device) -> Vec<OpTiming> {
    let layers = distinct_layers(unet);
    let device = device.clone().autodiff();
    let total = layers.len();
    layers
        .into_iter()
        .enumerate()
        .map(|(i, (layer, count))| {
            let name = layer_name(&layer);
            eprint!("\r  profiling op {}/{total}: {name:<48}", i + 1);
            let parts = time_layer(unet, &layer, batch, repeats, &device);
            if i + 1 == total {
                eprintln!();
            }
            OpTiming {
                layer,
                name,
                count,
                parts,
            }
        })
        .collect()
}

/// Writes the layers of `profile` with the settings they were timed at as JSON to `path`, for
/// `benches/torch_throughput.py --ops` to time the same shapes.
pub fn write_spec(
    path: &Path,
    unet: &UNetConfig,
    profile: &[OpTiming],
    batch: usize,
    repeats: usize,
) -> std::io::Result<()> {
    let spec = serde_json::json!({
        "batch": batch,
        "repeats": repeats,
        "norm_groups": unet.norm_groups,
        "norm_eps": unet.norm_eps,
        "layers": profile.iter().map(|op| op.layer).collect::<Vec<_>>(),
    });
    std::fs::write(path, spec.to_string())
}

/// Calls of an op are timed until both this many seconds and `repeats` calls have passed (at
/// most [`MAX_CALLS`]): an op of a tenth of a millisecond timed over five calls gave numbers
/// that moved 3x between runs, and a backward part, which is a difference of two such times,
/// came out at impossible rates.
const MIN_SECONDS: f64 = 0.2;
const MAX_CALLS: usize = 1000;

/// The median seconds per call of `run`, which must wait for its own result, after one warm-up
/// (the median: a call the machine interrupted does not move it).
fn seconds(repeats: usize, mut run: impl FnMut()) -> f64 {
    run();
    let started = Instant::now();
    let mut calls = Vec::new();
    while calls.len() < MAX_CALLS
        && (calls.len() < repeats.max(1) || started.elapsed().as_secs_f64() < MIN_SECONDS)
    {
        let call = Instant::now();
        run();
        calls.push(call.elapsed().as_secs_f64());
    }
    calls.sort_by(f64::total_cmp);
    calls[calls.len() / 2]
}

fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Reading one value waits for everything queued before it.
fn wait<const D: usize>(t: Tensor<D>) {
    t.sum().into_data();
}

fn time_layer(
    unet: &UNetConfig,
    layer: &Layer,
    batch: usize,
    repeats: usize,
    device: &Device,
) -> Vec<(String, f64)> {
    match *layer {
        Layer::Conv {
            in_channels,
            out_channels,
            kernel,
            stride,
            resolution,
        } => {
            let pad = kernel / 2;
            let config = Conv2dConfig::new([in_channels, out_channels], [kernel; 2])
                .with_stride([stride; 2])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad));
            let conv = config.init(device);
            // The input gradient alone: the parameters held constant. (A second module: a
            // clone would share the first's lazily initialised, tracked parameters.)
            let frozen = config.init(device).no_grad();
            let x = random([batch, in_channels, resolution, resolution], device);
            let forward = seconds(repeats, || wait(fused::conv2d(&frozen, x.clone())));
            let input = seconds(repeats, || {
                let x = x.clone().require_grad();
                let grads = fused::conv2d(&frozen, x.clone()).sum().backward();
                wait(x.grad(&grads).expect("x is tracked"));
            });
            let weight = seconds(repeats, || {
                let grads = fused::conv2d(&conv, x.clone()).sum().backward();
                wait(conv.weight.grad(&grads).expect("the weight is tracked"));
                let bias = conv.bias.as_ref().expect("the convolution has a bias");
                wait(bias.grad(&grads).expect("the bias is tracked"));
            });
            vec![
                ("forward".into(), forward),
                backward("input gradient", input, forward),
                backward("weight gradient", weight, forward),
            ]
        }
        Layer::Linear { inputs, outputs } => {
            let x = random([batch, inputs], device);
            let w = random([inputs, outputs], device);
            let b = random([outputs], device);
            let forward = seconds(repeats, || {
                wait(linear(x.clone(), w.clone(), Some(b.clone())))
            });
            let both = seconds(repeats, || {
                let (x, w, b) = (
                    x.clone().require_grad(),
                    w.clone().require_grad(),
                    b.clone().require_grad(),
                );
                let grads = linear(x.clone(), w.clone(), Some(b.clone()))
                    .sum()
                    .backward();
                wait(x.grad(&grads).expect("x is tracked"));
                wait(w.grad(&grads).expect("w is tracked"));
            });
            vec![
                ("forward".into(), forward),
                backward("backward", both, forward),
            ]
        }
        Layer::GroupNorm {
            channels,
            resolution,
            silu: with_silu,
        } => {
            let norm = GroupNormConfig::new(unet.norm_groups, channels)
                .with_epsilon(unet.norm_eps)
                .init(device);
            let x = random([batch, channels, resolution, resolution], device);
            forward_and_backward(repeats, &x, |x| fused::group_norm(&norm, x, with_silu))
        }
        Layer::Attention {
            channels,
            resolution,
            heads,
        } => {
            let block =
                AttentionBlock::new(channels, heads, unet.norm_groups, unet.norm_eps, device);
            let x = random([batch, channels, resolution, resolution], device);
            forward_and_backward(repeats, &x, |x| block.forward(x))
        }
    }
}

/// The forward pass of `run` on `x`, and its backward pass to `x`'s gradient (with the
/// module's own parameters' gradients, as in training).
fn forward_and_backward(
    repeats: usize,
    x: &Tensor<4>,
    run: impl Fn(Tensor<4>) -> Tensor<4>,
) -> Vec<(String, f64)> {
    let forward = seconds(repeats, || wait(run(x.clone())));
    let both = seconds(repeats, || {
        let x = x.clone().require_grad();
        let grads = run(x.clone()).sum().backward();
        wait(x.grad(&grads).expect("x is tracked"));
    });
    vec![
        ("forward".into(), forward),
        backward("backward", both, forward),
    ]
}

/// A backward part, timed with its forward and the forward's time taken off: the graph a
/// backward pass walks exists only after a forward pass.
fn backward(name: &str, both: f64, forward: f64) -> (String, f64) {
    (name.to_string(), (both - forward).max(0.0))
}

/// The profile as a Markdown table, each part's time beside PyTorch's (`torch`: the script's
/// `ops`, one list of (part, seconds) per layer, in the profile's order) where given, then the
/// totals per kind of op and part; `batch` turns FLOPs into the rate a row reaches.
pub fn table(profile: &[OpTiming], torch: Option<&[Vec<(String, f64)>]>, batch: usize) -> String {
    let ms = |t: f64| format!("{:.3}", 1e3 * t);
    let theirs = |i: usize, j: usize| torch.and_then(|t| t.get(i)?.get(j)).map(|(_, s)| *s);
    let speed = |ours: f64, theirs: Option<f64>| {
        theirs.map_or("-".into(), |t| format!("{:.2}x", t / ours.max(1e-12)))
    };
    let mut out = String::from(
        "| op | part | count | hayate ms | PyTorch ms | hayate speed | hayate ms/step | \
         PyTorch ms/step | hayate GFLOP/s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    // (kind, part) -> (hayate, PyTorch) seconds per step, in first-seen order.
    let mut totals: Vec<(String, f64, Option<f64>)> = Vec::new();
    for (i, op) in profile.iter().enumerate() {
        let kind = op.name.split(' ').next().unwrap_or_default();
        for (j, (part, ours)) in op.parts.iter().enumerate() {
            let theirs = theirs(i, j);
            let n = op.count as f64;
            let rate = match op.layer.flops() {
                0 => "-".into(),
                f => format!("{:.1}", f as f64 * batch as f64 / ours.max(1e-12) / 1e9),
            };
            out += &format!(
                "| {} | {part} | {} | {} | {} | {} | {} | {} | {rate} |\n",
                op.name,
                op.count,
                ms(*ours),
                theirs.map_or("-".into(), ms),
                speed(*ours, theirs),
                ms(n * ours),
                theirs.map_or("-".into(), |t| ms(n * t)),
            );
            let key = format!("{kind} {part}");
            match totals.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, a, b)) => {
                    *a += n * ours;
                    *b = b.zip(theirs).map(|(b, t)| b + n * t);
                }
                None => totals.push((key, n * ours, theirs.map(|t| n * t))),
            }
        }
    }
    let all_ours: f64 = totals.iter().map(|(_, a, _)| a).sum();
    let all_theirs: Option<f64> = totals.iter().map(|(_, _, b)| *b).sum();
    out += "\n| kind and part | hayate ms/step | PyTorch ms/step | hayate speed | share of hayate's |\n\
            | --- | --- | --- | --- | --- |\n";
    for (key, ours, theirs) in totals.iter().chain(std::iter::once(&(
        "all profiled ops".to_string(),
        all_ours,
        all_theirs,
    ))) {
        out += &format!(
            "| {key} | {} | {} | {} | {:.1}% |\n",
            ms(*ours),
            theirs.map_or("-".into(), ms),
            speed(*ours, *theirs),
            100.0 * ours / all_ours.max(1e-12)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_times_every_distinct_layer_of_the_tiny_model() {
        let unet = UNetConfig::tiny();
        let layers = distinct_layers(&unet);
        // Every layer of the forward pass is counted once, under one distinct entry.
        assert_eq!(
            layers.iter().map(|(_, n)| n).sum::<usize>(),
            unet.layers().len()
        );
        let profile = profile(&unet, 2, 1, &Device::flex());
        assert_eq!(profile.len(), layers.len());
        for op in &profile {
            let parts: Vec<&str> = op.parts.iter().map(|(p, _)| p.as_str()).collect();
            match op.layer {
                Layer::Conv { .. } => {
                    assert_eq!(parts, ["forward", "input gradient", "weight gradient"])
                }
                _ => assert_eq!(parts, ["forward", "backward"]),
            }
            assert!(op.parts[0].1 > 0.0, "{op:?}");
            assert!(op.parts.iter().all(|(_, t)| t.is_finite() && *t >= 0.0));
        }
        assert!(
            profile
                .iter()
                .any(|op| op.name.starts_with("attention block"))
        );

        // The table has a row per part, PyTorch's columns filled where its times are given.
        let rows: usize = profile.iter().map(|op| op.parts.len()).sum();
        let torch: Vec<Vec<(String, f64)>> = profile
            .iter()
            .map(|op| op.parts.iter().map(|(p, t)| (p.clone(), 2.0 * t)).collect())
            .collect();
        let text = table(&profile, Some(&torch), 2);
        // (A backward part measured as no slower than its forward reads 0 s, so 0.00x.)
        let speeds = text
            .lines()
            .filter(|l| l.contains("| 2.00x |") || l.contains("| 0.00x |"))
            .count();
        assert!(speeds >= rows, "{text}");
        assert!(text.contains("| all profiled ops |"), "{text}");
        let bare = table(&profile, None, 2);
        assert_eq!(bare.lines().count(), text.lines().count());
        assert!(!bare.contains("x |"), "{bare}");
    }
}
