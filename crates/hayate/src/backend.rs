//! Choosing the device: WGPU on a hardware GPU, or Burn's `flex` CPU backend.

use anyhow::Result;
use burn::prelude::*;
use clap::ValueEnum;

/// The `--backend` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// WGPU if a hardware GPU adapter is found, otherwise the CPU backend.
    Auto,
    /// WGPU (Vulkan, Metal, DX12), also on a software adapter.
    Wgpu,
    /// Burn's `flex` CPU backend.
    Cpu,
}

/// The device for `choice`, with a line saying what was chosen and why.
pub fn select(choice: BackendChoice) -> Result<(Device, String)> {
    match choice {
        BackendChoice::Wgpu => wgpu_device("WGPU (requested)".into()),
        BackendChoice::Cpu => cpu_device("CPU backend flex (requested)".into()),
        BackendChoice::Auto => match hardware_gpu() {
            Some(name) => wgpu_device(format!("WGPU on {name}")),
            None => cpu_device(
                "no hardware GPU adapter found: falling back to the CPU backend flex".into(),
            ),
        },
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device(why: String) -> Result<(Device, String)> {
    Ok((Device::wgpu(DeviceKind::DefaultDevice), why))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(_why: String) -> Result<(Device, String)> {
    anyhow::bail!("this build of hayate has no WGPU backend (build with the `wgpu` feature)")
}

#[cfg(feature = "cpu")]
fn cpu_device(why: String) -> Result<(Device, String)> {
    Ok((Device::flex(), why))
}

#[cfg(not(feature = "cpu"))]
fn cpu_device(_why: String) -> Result<(Device, String)> {
    anyhow::bail!("this build of hayate has no CPU backend (build with the `cpu` feature)")
}

/// The name of the first non-CPU WGPU adapter, if any.
#[cfg(feature = "wgpu")]
pub fn hardware_gpu() -> Option<String> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::all(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters
        .iter()
        .map(|a| a.get_info())
        .find(|info| info.device_type != wgpu::DeviceType::Cpu)
        .map(|info| format!("{} ({:?})", info.name, info.backend))
}

/// Without WGPU there is no GPU to find.
#[cfg(not(feature = "wgpu"))]
pub fn hardware_gpu() -> Option<String> {
    None
}
