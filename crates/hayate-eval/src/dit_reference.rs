//! hayate's DiT against the official DiT code (fixtures/dit, written by
//! scripts/make_dit_fixture.py from a checkout of github.com/facebookresearch/DiT).

use crate::weights;
use burn::prelude::*;
use hayate_model::{DiT, DiTConfig, HostTensor};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/dit")
        .join(name)
}

/// The fixture's model: 8x8 RGB, patch 2, width 16, 2 blocks, 2 heads, 4 classes.
fn config() -> DiTConfig {
    DiTConfig {
        resolution: 8,
        image_channels: 3,
        patch_size: 2,
        hidden_size: 16,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 4.0,
        num_classes: 4,
    }
}

#[test]
fn the_official_dit_code_and_hayate_compute_the_same_output() {
    let device = Device::flex();
    let tensors = weights::read(&fixture("weights.safetensors")).unwrap();
    let model = DiT::from_reference_tensors(&config(), tensors.clone(), &device).unwrap();
    let io = weights::read(&fixture("io.safetensors")).unwrap();
    let x = Tensor::<4>::from_data(
        TensorData::new(io["x"].values.clone(), [2, 3, 8, 8]),
        &device,
    );
    let t = Tensor::<1>::from_data(TensorData::new(io["t"].values.clone(), [2]), &device);
    let ints: Vec<i64> = io["labels"].values.iter().map(|v| *v as i64).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(ints, [2]), &device);
    let got = model
        .forward_labelled(x.clone(), t.clone(), Some(labels))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let want = &io["out"].values;
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        scale > 0.1,
        "the fixture's output is too small to test anything: {scale}"
    );
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-5 * scale.max(1.0) * 10.0,
        "max |difference| {worst} (scale {scale})"
    );

    // The second image's label is the "no label" row, which an absent label also picks.
    let unlabelled = model
        .forward(x.narrow(0, 1, 1), t.narrow(0, 1, 1))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let half = got.len() / 2;
    let worst = unlabelled
        .iter()
        .zip(&got[half..])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-5, "{worst}");

    // Exported again under the official names, every tensor comes back bit for bit.
    let back = model.to_reference_tensors(&config()).unwrap();
    assert_eq!(back.len(), tensors.len());
    for (name, tensor) in &tensors {
        let mine = &back[name];
        assert_eq!(mine.shape, tensor.shape, "{name}");
        let exact = name == "pos_embed" || mine.values == tensor.values;
        assert!(exact, "{name} differs after the round trip");
    }
}

#[test]
fn missing_misshapen_and_extra_reference_tensors_are_named() {
    let device = Device::flex();
    let mut tensors = weights::read(&fixture("weights.safetensors")).unwrap();
    tensors.remove("blocks.1.mlp.fc2.bias");
    tensors.insert(
        "final_layer.linear.weight".into(),
        HostTensor {
            shape: vec![24, 16],
            values: vec![0.5; 24 * 16],
        },
    );
    let extra = tensors["t_embedder.mlp.0.bias"].clone();
    tensors.insert("blocks.2.attn.qkv.bias".into(), extra);
    let e = DiT::from_reference_tensors(&config(), tensors, &device)
        .unwrap_err()
        .0;
    for needle in [
        "missing tensors: blocks.1.mlp.fc2.bias",
        "final_layer.linear.weight (expected [12, 16], found [24, 16])",
        "no place for: blocks.2.attn.qkv.bias",
    ] {
        assert!(e.contains(needle), "{needle} not in {e}");
    }
    // A position embedding of another grid is refused by name.
    let mut tensors = weights::read(&fixture("weights.safetensors")).unwrap();
    tensors.get_mut("pos_embed").unwrap().values[3] += 0.5;
    let e = DiT::from_reference_tensors(&config(), tensors, &device)
        .unwrap_err()
        .0;
    assert!(e.contains("pos_embed"), "{e}");
}
