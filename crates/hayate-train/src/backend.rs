//! Choosing the device: CUDA, Vulkan or WGPU on a hardware GPU, or Burn's `flex` CPU backend.

use anyhow::Result;
use burn::prelude::*;
use clap::ValueEnum;

/// The `--backend` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The fastest GPU runtime present (CUDA on an NVIDIA driver, else Vulkan, else WGPU on a
    /// hardware adapter), otherwise the CPU backend.
    Auto,
    /// WGPU on the graphics API it prefers (Vulkan, Metal, DX12), also on a software adapter;
    /// on Vulkan it compiles SPIR-V where the build has the `vulkan` feature, WGSL otherwise.
    Wgpu,
    /// WGPU pinned to Vulkan, compiling SPIR-V (cooperative-matrix tensor cores where the
    /// driver offers them).
    Vulkan,
    /// CUDA (burn-cuda), loading the NVIDIA driver and NVRTC at run time.
    Cuda,
    /// Burn's `flex` CPU backend.
    Cpu,
}

/// The device for `choice`, with a line saying what was chosen and why.
pub fn select(choice: BackendChoice) -> Result<(Device, String)> {
    match choice {
        BackendChoice::Wgpu => wgpu_device("WGPU (requested)".into()),
        BackendChoice::Vulkan => vulkan_device("Vulkan (requested)".into()),
        BackendChoice::Cuda => cuda_device("CUDA (requested)".into(), 0),
        BackendChoice::Cpu => cpu_device("CPU backend flex (requested)".into()),
        BackendChoice::Auto => auto_device(),
    }
}

const NO_HARDWARE_GPU: &str = "no hardware GPU adapter found: falling back to the CPU backend flex";

/// The fastest GPU runtime present, else the CPU backend: CUDA where the NVIDIA driver and a
/// device are found, else Vulkan on a hardware adapter, else WGPU on a hardware adapter (Metal,
/// DX12). The adapters are listed once.
fn auto_device() -> Result<(Device, String)> {
    if let Some(count) = cuda_devices() {
        return cuda_device(
            format!("CUDA (the NVIDIA driver sees {count} device(s))"),
            0,
        );
    }
    #[cfg(feature = "wgpu")]
    {
        use burn::tensor::wgpu::wgpu::{Backend, DeviceType};
        let adapters = adapters();
        let hardware =
            |a: &&burn::tensor::wgpu::wgpu::AdapterInfo| a.device_type != DeviceType::Cpu;
        if cfg!(feature = "vulkan")
            && adapters
                .iter()
                .filter(hardware)
                .any(|a| a.backend == Backend::Vulkan)
        {
            return open(
                GpuApi::Vulkan,
                "Vulkan (a hardware Vulkan adapter was found)".into(),
                &adapters,
            );
        }
        if adapters.iter().any(|a| hardware(&a)) {
            return open(
                GpuApi::Wgpu,
                "WGPU (a hardware GPU was found)".into(),
                &adapters,
            );
        }
    }
    cpu_device(NO_HARDWARE_GPU.into())
}

/// The devices of a data-parallel run: the GPUs with these indices (CUDA's devices, or WGPU's
/// discrete adapters of one graphics API, in the order WGPU lists them), the first keeping the
/// model. `Auto` means the runtime [`select`] would pick for one GPU; the CPU backend has a
/// single device.
pub fn select_devices(choice: BackendChoice, indices: &[usize]) -> Result<(Vec<Device>, String)> {
    if indices.is_empty() {
        anyhow::bail!("--devices needs at least one index");
    }
    if choice == BackendChoice::Cpu {
        anyhow::bail!(
            "--devices: the CPU backend has a single device; data parallelism needs several \
             GPUs (--backend cuda, vulkan or wgpu)"
        );
    }
    let mut seen = indices.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != indices.len() {
        anyhow::bail!("--devices lists a device twice: {indices:?}");
    }
    let choice = match choice {
        BackendChoice::Auto if cuda_devices().is_some() => BackendChoice::Cuda,
        BackendChoice::Auto if cfg!(feature = "vulkan") => BackendChoice::Vulkan,
        other => other,
    };
    match choice {
        BackendChoice::Cuda => {
            if !cfg!(feature = "cuda") {
                anyhow::bail!(
                    "--devices {}: this build of hayate has no CUDA backend (build with the \
                     `cuda` feature)",
                    indices[0]
                );
            }
            let count = cuda_devices().unwrap_or(0);
            if let Some(&missing) = indices.iter().find(|&&i| i >= count) {
                anyhow::bail!(
                    "--devices {missing}: the NVIDIA driver sees {count} CUDA device(s) \
                     (indices from 0){}",
                    cuda_missing_why()
                        .map(|w| format!("; {w}"))
                        .unwrap_or_default()
                );
            }
            let devices = indices.iter().map(|&i| cuda_device(String::new(), i));
            let devices = devices.map(|d| d.map(|(d, _)| d)).collect::<Result<_>>()?;
            Ok((devices, format!("CUDA devices {indices:?}, data parallel")))
        }
        BackendChoice::Vulkan => gpu_devices(GpuApi::Vulkan, indices),
        _ => gpu_devices(GpuApi::Wgpu, indices),
    }
}

/// How a WGPU device is opened: on the graphics API WGPU prefers, or pinned to Vulkan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GpuApi {
    Wgpu,
    Vulkan,
}

impl GpuApi {
    fn name(self) -> &'static str {
        match self {
            GpuApi::Wgpu => "WGPU",
            GpuApi::Vulkan => "Vulkan",
        }
    }

    /// Whether an adapter is one this API opens.
    #[cfg(feature = "wgpu")]
    fn reaches(self, adapter: &burn::tensor::wgpu::wgpu::AdapterInfo) -> bool {
        self == GpuApi::Wgpu || adapter.backend == burn::tensor::wgpu::wgpu::Backend::Vulkan
    }

    #[cfg(feature = "wgpu")]
    fn device(self, kind: DeviceKind) -> Result<Device> {
        match self {
            GpuApi::Wgpu => Ok(Device::wgpu(kind)),
            #[cfg(feature = "vulkan")]
            GpuApi::Vulkan => Ok(Device::vulkan(kind)),
            #[cfg(not(feature = "vulkan"))]
            GpuApi::Vulkan => anyhow::bail!(
                "this build of hayate has no Vulkan backend (build with the `vulkan` feature); \
                 --backend wgpu runs WGSL on Vulkan"
            ),
        }
    }
}

#[cfg(feature = "wgpu")]
fn gpu_devices(api: GpuApi, indices: &[usize]) -> Result<(Vec<Device>, String)> {
    // WGPU numbers the discrete GPUs of one graphics API; an index past them would fail inside
    // the GPU runtime, so it is checked here against what the machine has.
    let adapters = adapters();
    let reached: Vec<_> = adapters
        .iter()
        .filter(|a| api.reaches(a))
        .cloned()
        .collect();
    let discrete = most_discrete_gpus(&reached);
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
            "--devices {missing}: this machine has {discrete} discrete GPU{} on {} (indices from \
             0); WGPU adapters found: {found}",
            if discrete == 1 { "" } else { "s" },
            api.name()
        );
    }
    let devices = indices
        .iter()
        .map(|&i| api.device(DeviceKind::DiscreteGpu(i)))
        .collect::<Result<_>>()?;
    Ok((
        devices,
        format!("{} on discrete GPUs {indices:?}, data parallel", api.name()),
    ))
}

#[cfg(not(feature = "wgpu"))]
fn gpu_devices(api: GpuApi, _indices: &[usize]) -> Result<(Vec<Device>, String)> {
    match api {
        GpuApi::Wgpu => wgpu_device(String::new()),
        GpuApi::Vulkan => vulkan_device(String::new()),
    }
    .map(|(d, w)| (vec![d], w))
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

/// WGPU's default device, described by the adapter it opened.
#[cfg(feature = "wgpu")]
fn wgpu_device(why: String) -> Result<(Device, String)> {
    open(GpuApi::Wgpu, why, &adapters())
}

/// WGPU's default device pinned to Vulkan (SPIR-V), described by the adapter it opened.
#[cfg(feature = "wgpu")]
fn vulkan_device(why: String) -> Result<(Device, String)> {
    open(GpuApi::Vulkan, why, &adapters())
}

/// The default device of `api`, described by the adapter it opened: name, graphics API, kind
/// and shader language. A software adapter (Mesa's lavapipe or llvmpipe, say) gets a warning:
/// it runs kernels on the CPU, far slower than the CPU backend.
#[cfg(feature = "wgpu")]
fn open(
    api: GpuApi,
    why: String,
    adapters: &[burn::tensor::wgpu::wgpu::AdapterInfo],
) -> Result<(Device, String)> {
    use burn::tensor::wgpu::wgpu::{Backend, DeviceType};
    if !adapters.iter().any(|a| api.reaches(a)) {
        let wanted = match api {
            GpuApi::Wgpu => "no WGPU adapter found (a GPU driver with Vulkan, Metal or DX12",
            GpuApi::Vulkan => "no Vulkan adapter found (a GPU driver with Vulkan",
        };
        anyhow::bail!(
            "{wanted}; for software Vulkan, Mesa's mesa-vulkan-drivers); --backend cpu runs \
             without one"
        );
    }
    let device = api.device(DeviceKind::DefaultDevice)?;
    let name = device.identity().map(|identity| identity.name);
    let adapter = name
        .as_ref()
        .and_then(|name| adapters.iter().find(|a| &a.name == name && api.reaches(a)));
    let line = match (adapter, name) {
        (Some(a), _) => {
            if a.device_type == DeviceType::Cpu {
                eprintln!(
                    "warning: the adapter {} is a software rasterizer: every kernel runs on \
                     the CPU, much slower than --backend cpu",
                    a.name
                );
            }
            // The shader language follows the build: SPIR-V needs the `vulkan` feature (and a
            // driver with the extensions it asks for, else the runtime compiles WGSL).
            let language = match a.backend {
                Backend::Vulkan if cfg!(feature = "vulkan") => "SPIR-V",
                _ => "WGSL",
            };
            format!(
                "{why}: {} ({:?}, {}, {language})",
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

#[cfg(not(feature = "wgpu"))]
fn vulkan_device(_why: String) -> Result<(Device, String)> {
    anyhow::bail!("this build of hayate has no Vulkan backend (build with the `vulkan` feature)")
}

/// How many CUDA devices the NVIDIA driver sees; `None` where the driver (or NVRTC, which
/// burn-cuda compiles its kernels with) cannot be loaded or sees no device.
#[cfg(feature = "cuda")]
pub fn cuda_devices() -> Option<usize> {
    use cudarc::driver::result;
    // Both probes only try to open the shared libraries; every later driver call would panic
    // where they are missing.
    // SAFETY: loading a system library by name, as cudarc does on first use.
    let present = unsafe {
        cudarc::driver::sys::is_culib_present() && cudarc::nvrtc::sys::is_culib_present()
    };
    if !present {
        return None;
    }
    result::init().ok()?;
    let count = result::device::get_count().ok()?;
    (count > 0).then_some(count as usize)
}

/// How many CUDA devices the NVIDIA driver sees: none in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn cuda_devices() -> Option<usize> {
    None
}

/// Why CUDA is not usable here, for error messages; `None` where it is.
#[cfg(feature = "cuda")]
fn cuda_missing_why() -> Option<String> {
    // SAFETY: as in `cuda_devices`.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some(
            "the NVIDIA driver library (libcuda.so) was not found: install the NVIDIA driver"
                .into(),
        );
    }
    // SAFETY: as in `cuda_devices`.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Some(
            "NVRTC (libnvrtc.so, which compiles burn-cuda's kernels) was not found: install the \
             CUDA runtime (or PyTorch's nvidia-cuda-nvrtc wheel) and put its lib folder on \
             LD_LIBRARY_PATH"
                .into(),
        );
    }
    match cuda_devices() {
        Some(_) => None,
        None => Some("the NVIDIA driver loads but sees no CUDA device".into()),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_missing_why() -> Option<String> {
    Some("this build of hayate has no CUDA backend (build with the `cuda` feature)".into())
}

/// CUDA device `index`, named as the driver names it.
#[cfg(feature = "cuda")]
fn cuda_device(why: String, index: usize) -> Result<(Device, String)> {
    if let Some(missing) = cuda_missing_why() {
        anyhow::bail!("--backend cuda: {missing}; --backend vulkan or cpu runs without CUDA");
    }
    let count = cuda_devices().unwrap_or(0);
    if index >= count {
        anyhow::bail!("CUDA device {index}: the NVIDIA driver sees {count} (indices from 0)");
    }
    let device = Device::cuda(index);
    let name = device.identity().map(|identity| identity.name);
    let line = match name {
        Some(name) => format!("{why}: {name} (CUDA device {index})"),
        None => format!("{why}: CUDA device {index}"),
    };
    Ok((device, line))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_why: String, _index: usize) -> Result<(Device, String)> {
    anyhow::bail!("this build of hayate has no CUDA backend (build with the `cuda` feature)")
}

#[cfg(feature = "cpu")]
fn cpu_device(why: String) -> Result<(Device, String)> {
    Ok((Device::flex(), why))
}

#[cfg(not(feature = "cpu"))]
fn cpu_device(_why: String) -> Result<(Device, String)> {
    anyhow::bail!("this build of hayate has no CPU backend (build with the `cpu` feature)")
}

/// The name of the first hardware GPU (a CUDA device, or a non-CPU WGPU adapter), if any.
pub fn hardware_gpu() -> Option<String> {
    if cuda_devices().is_some() {
        return Some("an NVIDIA GPU (CUDA)".into());
    }
    #[cfg(feature = "wgpu")]
    {
        adapters()
            .into_iter()
            .find(|info| info.device_type != burn::tensor::wgpu::wgpu::DeviceType::Cpu)
            .map(|info| format!("{} ({:?})", info.name, info.backend))
    }
    #[cfg(not(feature = "wgpu"))]
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

    /// Without the NVIDIA driver (every CI machine), `--backend cuda` is a clear error naming
    /// what is missing, not a panic inside the driver loader; with it, a device opens.
    #[test]
    fn cuda_opens_or_says_what_is_missing() {
        match cuda_devices() {
            None => {
                let err = select(BackendChoice::Cuda).unwrap_err().to_string();
                assert!(err.contains("cuda") || err.contains("CUDA"), "{err}");
                assert!(cuda_missing_why().is_some());
                let err = select_devices(BackendChoice::Cuda, &[0])
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("--devices 0"), "{err}");
            }
            Some(_) => {
                let (_, line) = select(BackendChoice::Cuda).unwrap();
                assert!(line.contains("CUDA device 0"), "{line}");
            }
        }
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
