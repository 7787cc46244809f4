//! The same few training steps on WGPU, on WGPU data-parallel over two devices, and on the CPU
//! backend give the same losses, for the UNet (dropout included) and for the DiT.
//!
//! On software Vulkan (Mesa's lavapipe, as in CI) every kernel is compiled by LLVM, and autotune
//! compiles and times each candidate of each operation at each shape. So the runs share their
//! shapes: the one-device run trains at batch 4, the two-device run at batch 8 (a shard of 4 on
//! each device), and the sample grids hold 4 images, so the first device compiles one set of
//! kernels for all of them. CI also sets `CUBECL_AUTOTUNE_LEVEL=minimal` (see `.ci/run`): the
//! speed ranking of kernels on a software rasterizer means nothing, and the losses must match
//! whichever kernel runs. Set `HAYATE_REQUIRE_WGPU=1` to make a missing WGPU adapter a failure
//! instead of a skip.

#![cfg(feature = "wgpu")]

use crate::common;

use burn::prelude::*;
use common::train;
use hayate_train::train::TrainOptions;

/// Whether a WGPU adapter exists; `HAYATE_REQUIRE_WGPU` (set in CI) makes a missing one a
/// failure instead of a skip.
fn wgpu_adapter_present() -> bool {
    if !hayate_train::backend::adapters().is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("HAYATE_REQUIRE_WGPU").is_none(),
        "HAYATE_REQUIRE_WGPU is set but no WGPU adapter was found"
    );
    eprintln!("skipped: no WGPU adapter (install mesa-vulkan-drivers for software Vulkan)");
    false
}

#[test]
fn the_device_line_names_the_adapter_and_says_when_it_is_software() {
    use burn::tensor::wgpu::wgpu::DeviceType;
    if !wgpu_adapter_present() {
        return;
    }
    let (_, line) =
        hayate_train::backend::select(hayate_train::backend::BackendChoice::Wgpu).unwrap();
    let adapters = hayate_train::backend::adapters();
    let adapter = adapters
        .iter()
        .find(|a| line.contains(&a.name))
        .unwrap_or_else(|| panic!("{line:?} names none of {adapters:?}"));
    assert!(line.contains(&format!("{:?}", adapter.backend)), "{line}");
    assert_eq!(
        line.contains("software"),
        adapter.device_type == DeviceType::Cpu,
        "{line}"
    );
}

#[test]
fn wgpu_losses_match_the_cpu_backend() {
    // The adapter first: in CI a missing adapter must fail even where the data is missing too.
    if !wgpu_adapter_present() {
        return;
    }
    let Some(data) = common::shared_cifar10() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unet = || {
        let mut config = common::tiny_config(2, 1);
        // Dropout masks are hashed on the device in integers (32-bit on WGPU, 64-bit on flex):
        // the second step's loss depends on them.
        config.model.dropout = Some(0.3);
        config
    };
    let run = |mut config: hayate_train::config::RunConfig,
               devices: Vec<Device>,
               batch: usize,
               name: &str| {
        config.train.batch_size = batch;
        config.sampling.grid_images = 4;
        train(
            &TrainOptions {
                config,
                data_dir: Some(data.clone()),
                out: dir.path().join(name),
                resume: false,
                init: None,
                allow_config_change: false,
                devices: devices.clone(),
                images: None,
            },
            &devices[0],
        )
        .unwrap()
        .interval_losses
    };
    // The CPU runs wait for the other tests' CPU training in this binary (see
    // `one_run_at_a_time`); the WGPU runs, the long part, go beside them.
    let cpu = {
        let _serial = common::one_run_at_a_time();
        run(unet(), vec![Device::flex()], 4, "cpu")
    };
    // Through `Device::vulkan` in a build with `vulkan` (as `--backend vulkan` opens it): the
    // SPIR-V compiler's kernels against the CPU's losses, on a real Vulkan driver. CI's build
    // has no `vulkan`: Debian 12's lavapipe crashes creating those kernels' pipelines.
    #[cfg(feature = "vulkan")]
    let one_gpu = Device::vulkan(DeviceKind::DefaultDevice);
    #[cfg(not(feature = "vulkan"))]
    let one_gpu = Device::wgpu(DeviceKind::DefaultDevice);
    let gpu = run(unet(), vec![one_gpu], 4, "wgpu");
    // The DiT's own kernels (layer norm, attention over patches, tanh GELU, adaLN modulation).
    let dit_cpu = {
        let _serial = common::one_run_at_a_time();
        run(common::dit_config(2, 1), vec![Device::flex()], 4, "dit-cpu")
    };
    let dit_gpu = run(
        common::dit_config(2, 1),
        vec![Device::wgpu(DeviceKind::DefaultDevice)],
        4,
        "dit-wgpu",
    );
    // Two WGPU devices with their own memory and queues (on a machine with one adapter, both
    // are that adapter): the batch is split, gradients move to the first and are summed there.
    let cpu8 = {
        let _serial = common::one_run_at_a_time();
        run(unet(), vec![Device::flex()], 8, "cpu8")
    };
    let two = run(
        unet(),
        vec![
            Device::wgpu(DeviceKind::DefaultDevice),
            Device::wgpu(DeviceKind::Cpu),
        ],
        8,
        "wgpu-two",
    );
    eprintln!(
        "losses at batch 4: cpu {cpu:?}, wgpu {gpu:?}; at batch 8: cpu {cpu8:?}, wgpu on two \
         devices {two:?}; DiT: cpu {dit_cpu:?}, wgpu {dit_gpu:?}"
    );
    assert_eq!(
        (
            cpu.len(),
            gpu.len(),
            cpu8.len(),
            two.len(),
            dit_cpu.len(),
            dit_gpu.len()
        ),
        (2, 2, 2, 2, 2, 2)
    );
    // Same inputs and weights; only float summation order differs between the backends.
    for (c, g) in cpu.iter().zip(&gpu).chain(dit_cpu.iter().zip(&dit_gpu)) {
        assert!((c - g).abs() <= 1e-5 * c.abs(), "cpu {c} vs wgpu {g}");
    }
    for (c, t) in cpu8.iter().zip(&two) {
        assert!(
            (c - t).abs() <= 1e-5 * c.abs(),
            "cpu {c} vs two devices {t}"
        );
    }
}
