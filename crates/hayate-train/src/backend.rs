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
        BackendChoice::Auto => auto_device(),
    }
}

const NO_HARDWARE_GPU: &str = "no hardware GPU adapter found: falling back to the CPU backend flex";

/// WGPU where a hardware GPU adapter exists, else the CPU backend; the adapters are listed once.
#[cfg(feature = "wgpu")]
fn auto_device() -> Result<(Device, String)> {
    let adapters = adapters();
    match adapters
        .iter()
        .any(|a| a.device_type != burn::tensor::wgpu::wgpu::DeviceType::Cpu)
    {
        true => open_default("WGPU (a hardware GPU was found)".into(), &adapters),
        false => cpu_device(NO_HARDWARE_GPU.into()),
    }
}

#[cfg(not(feature = "wgpu"))]
fn auto_device() -> Result<(Device, String)> {
    cpu_device(NO_HARDWARE_GPU.into())
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
    // WGPU numbers the discrete GPUs of one graphics API; an index past them would fail inside
    // the GPU runtime, so it is checked here against what the machine has.
    let adapters = adapters();
    let discrete = most_discrete_gpus(&adapters);
    if let Some(&missing) = indices.iter().find(|&&i| i >= discrete) {
        let found = if adapters.is_empty() {
            "none".to_string()
        } else {
            adapters
                .iter()
                .map(|a| format!("{} ({:?}, {})", a.name, a.backend, kind(a.device_type)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        anyhow::bail!(
            "--devices {missing}: this machine has {discrete} discrete GPU{} (indices from 0); \
             WGPU adapters found: {found}",
            if discrete == 1 { "" } else { "s" }
        );
    }
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

/// Every WGPU adapter of every graphics API, as WGPU lists them.
#[cfg(feature = "wgpu")]
pub fn adapters() -> Vec<burn::tensor::wgpu::wgpu::AdapterInfo> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::all(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.iter().map(|a| a.get_info()).collect()
}

/// The most discrete GPUs any one graphics API reaches.
#[cfg(feature = "wgpu")]
fn most_discrete_gpus(adapters: &[burn::tensor::wgpu::wgpu::AdapterInfo]) -> usize {
    use burn::tensor::wgpu::wgpu::DeviceType;
    let discrete: Vec<_> = adapters
        .iter()
        .filter(|a| a.device_type == DeviceType::DiscreteGpu)
        .collect();
    discrete
        .iter()
        .map(|a| discrete.iter().filter(|b| b.backend == a.backend).count())
        .max()
        .unwrap_or(0)
}

/// How an adapter runs: on a GPU, or in software on the CPU.
#[cfg(feature = "wgpu")]
fn kind(device_type: burn::tensor::wgpu::wgpu::DeviceType) -> &'static str {
    use burn::tensor::wgpu::wgpu::DeviceType;
    match device_type {
        DeviceType::DiscreteGpu => "discrete GPU",
        DeviceType::IntegratedGpu => "integrated GPU",
        DeviceType::VirtualGpu => "virtual GPU",
        DeviceType::Cpu => "software, on the CPU",
        DeviceType::Other => "unknown kind",
    }
}

/// WGPU's default device, described by the adapter it opened: name, graphics API and kind. A
/// software adapter (Mesa's lavapipe or llvmpipe, say) gets a warning: it runs kernels on the
/// CPU, far slower than the CPU backend.
#[cfg(feature = "wgpu")]
fn wgpu_device(why: String) -> Result<(Device, String)> {
    open_default(why, &adapters())
}

/// [`wgpu_device`], given the machine's adapters.
#[cfg(feature = "wgpu")]
fn open_default(
    why: String,
    adapters: &[burn::tensor::wgpu::wgpu::AdapterInfo],
) -> Result<(Device, String)> {
    if adapters.is_empty() {
        anyhow::bail!(
            "no WGPU adapter found (a GPU driver with Vulkan, Metal or DX12; for software Vulkan, \
             Mesa's mesa-vulkan-drivers); --backend cpu runs without one"
        );
    }
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let name = device.identity().map(|identity| identity.name);
    let adapter = name
        .as_ref()
        .and_then(|name| adapters.iter().find(|a| &a.name == name));
    let line = match (adapter, name) {
        (Some(a), _) => {
            if a.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu {
                eprintln!(
                    "warning: WGPU's adapter {} is a software rasterizer: every kernel runs on \
                     the CPU, much slower than --backend cpu",
                    a.name
                );
            }
            format!(
                "{why}: {} ({:?}, {})",
                a.name,
                a.backend,
                kind(a.device_type)
            )
        }
        (None, Some(name)) => format!("{why}: {name}"),
        (None, None) => why,
    };
    Ok((device, line))
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
    adapters()
        .into_iter()
        .find(|info| info.device_type != burn::tensor::wgpu::wgpu::DeviceType::Cpu)
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

    /// An index past the machine's GPUs is a clear error listing the adapters, not a panic in
    /// the GPU runtime (no machine here has 64 discrete GPUs).
    #[test]
    #[cfg(feature = "wgpu")]
    fn a_missing_gpu_index_lists_the_adapters() {
        let err = select_devices(BackendChoice::Wgpu, &[0, 63]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("--devices "), "{text}");
        assert!(
            text.contains("discrete GPU") && text.contains("adapters found: "),
            "{text}"
        );
        for adapter in adapters() {
            assert!(
                text.contains(&adapter.name),
                "{text} misses {}",
                adapter.name
            );
        }
    }
}
