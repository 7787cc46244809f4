//! The same few training steps on WGPU, on WGPU data-parallel over two devices, and on the CPU
//! backend give the same losses.
//!
//! On software Vulkan (Mesa's lavapipe, as in CI) shaders take minutes to compile, so the run is
//! two steps of the tiny model at batch 8. Set `HAYATE_REQUIRE_WGPU=1` to make a missing WGPU
//! adapter a failure instead of a skip.

#![cfg(feature = "wgpu")]

mod common;

use burn::prelude::*;
use hayate::train::{TrainOptions, train};

fn any_wgpu_adapter() -> bool {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::all(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    !pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all())).is_empty()
}

#[test]
fn wgpu_losses_match_the_cpu_backend() {
    let Some(data) = common::shared_cifar10() else {
        return;
    };
    if !any_wgpu_adapter() {
        assert!(
            std::env::var_os("HAYATE_REQUIRE_WGPU").is_none(),
            "HAYATE_REQUIRE_WGPU is set but no WGPU adapter was found"
        );
        eprintln!("skipped: no WGPU adapter (install mesa-vulkan-drivers for software Vulkan)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |devices: Vec<Device>, name: &str| {
        let config = common::tiny_config(2, 1);
        train(
            &TrainOptions {
                config,
                data_dir: Some(data.clone()),
                out: dir.path().join(name),
                resume: false,
                allow_config_change: false,
                devices: devices.clone(),
                images: None,
            },
            &devices[0],
        )
        .unwrap()
        .interval_losses
    };
    let cpu = run(vec![Device::flex()], "cpu");
    let gpu = run(vec![Device::wgpu(DeviceKind::DefaultDevice)], "wgpu");
    // Two WGPU devices with their own memory and queues (on a machine with one adapter, both
    // are that adapter): the batch is split, gradients move to the first and are summed there.
    let two = run(
        vec![
            Device::wgpu(DeviceKind::DefaultDevice),
            Device::wgpu(DeviceKind::Cpu),
        ],
        "wgpu-two",
    );
    eprintln!("losses: cpu {cpu:?}, wgpu {gpu:?}, wgpu on two devices {two:?}");
    assert_eq!((cpu.len(), two.len()), (2, 2));
    // Same inputs and weights; only float summation order differs between the backends.
    for ((c, g), t) in cpu.iter().zip(&gpu).zip(&two) {
        assert!((c - g).abs() <= 1e-5 * c.abs(), "cpu {c} vs wgpu {g}");
        assert!(
            (c - t).abs() <= 1e-5 * c.abs(),
            "cpu {c} vs two devices {t}"
        );
    }
}
