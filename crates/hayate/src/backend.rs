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

/// The devices of a data-parallel run: the GPUs with these indices (WGPU's discrete adapters, in
/// the order WGPU lists them), the first keeping the model. `Auto` means WGPU here; the CPU
/// backend has a single device.
pub fn select_devices(choice: BackendChoice, indices: &[usize]) -> Result<(Vec<Device>, String)> {
    if indices.is_empty() {
        anyhow::bail!("--devices needs at least one index");
    }
    if choice == BackendChoice::Cpu {
        anyhow::bail!(
            "--devices: the CPU backend has a single device; data parallelism needs WGPU and \
             several GPUs (--backend wgpu)"
        );
    }
    let mut seen = indices.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != indices.len() {
        anyhow::bail!("--devices lists a device twice: {indices:?}");
    }
    gpu_devices(indices)
}

#[cfg(feature = "wgpu")]
fn gpu_devices(indices: &[usize]) -> Result<(Vec<Device>, String)> {
    let devices = indices
        .iter()
        .map(|&i| Device::wgpu(DeviceKind::DiscreteGpu(i)))
        .collect();
    Ok((
        devices,
        format!("WGPU on discrete GPUs {indices:?}, data parallel"),
    ))
}

#[cfg(not(feature = "wgpu"))]
fn gpu_devices(_indices: &[usize]) -> Result<(Vec<Device>, String)> {
    wgpu_device(String::new()).map(|(d, w)| (vec![d], w))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_are_checked() {
        let err = select_devices(BackendChoice::Cpu, &[0, 1]).unwrap_err();
        assert!(err.to_string().contains("single device"), "{err}");
        let err = select_devices(BackendChoice::Wgpu, &[0, 1, 0]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        assert!(select_devices(BackendChoice::Wgpu, &[]).is_err());
    }
}
