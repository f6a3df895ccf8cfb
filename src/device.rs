//! `-g/--gpu`: the reference takes GPU ids (`-g 0`, `-g 0 1`) and sets
//! `CUDA_VISIBLE_DEVICES`; agd picks the first listed CUDA device when one exists and
//! otherwise runs on the CPU, saying so once — unless an NVIDIA GPU is there and this
//! libtorch cannot use it (a driver older than its CUDA needs): then a run that asked for
//! the GPU would train for days on the CPU without anyone noticing, so it is an error.

use crate::error::Setting;
use anyhow::Result;
use tch::Device;

/// The device for `-g` values: `[]` or `["cpu"]` → CPU; `["N", …]` → CUDA device N when
/// available, else the CPU with a notice on stderr.
pub fn select(gpu: &[String]) -> Result<Device> {
    select_for(gpu, None)
}

/// [`select`] for rank `local_rank` of its machine in a data-parallel run: the GPU of its
/// local rank, or the local_rank-th of the ids `-g` lists when it lists several.
pub fn select_for(gpu: &[String], local_rank: Option<usize>) -> Result<Device> {
    let Some(first) = gpu.first() else {
        return Ok(Device::Cpu);
    };
    if first.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let ids = gpu
        .iter()
        .flat_map(|g| g.split(',').map(|id| id.trim().parse::<usize>()))
        .collect::<Result<Vec<usize>, _>>();
    let Ok(ids) = ids else {
        crate::bad_setting!(
            Setting::Gpu,
            gpu.join(" "),
            "expected GPU ids (e.g. 0) or `cpu`"
        );
    };
    let count = tch::Cuda::device_count() as usize;
    if count == 0 {
        let hardware = Nvidia::probe();
        if let Some(why) = unusable_gpu(&hardware, &Libtorch::BUILT) {
            crate::bad_setting!(Setting::Gpu, gpu.join(" "), "{why}");
        }
        eprintln!("note: no CUDA device found; running on the CPU");
        return Ok(Device::Cpu);
    }
    let id = match local_rank {
        Some(local) if ids.len() > 1 => match ids.get(local) {
            Some(&id) => id,
            None => crate::bad_setting!(
                Setting::Gpu,
                gpu.join(" "),
                "names {} GPUs but this is local rank {local}: list one per process of the machine",
                ids.len()
            ),
        },
        Some(local) => local,
        None => ids[0],
    };
    if id >= count {
        crate::bad_setting!(
            Setting::Gpu,
            id,
            "only {count} CUDA device(s) (0..{}) exist",
            count - 1
        );
    }
    if ids.len() > 1 && local_rank.is_none() {
        eprintln!(
            "note: one process uses one device; using cuda:{id} of -g {} (--nproc-per-node N \
             runs N processes, one per GPU listed)",
            gpu.join(" ")
        );
    }
    // Batch shapes are fixed: cuDNN's benchmark search pays for itself after one batch.
    // A training stage asked for --deterministic turns it off again.
    set_deterministic(false);
    Ok(Device::Cuda(id))
}

/// NVIDIA hardware as the kernel driver shows it, whatever libtorch makes of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nvidia {
    /// `/proc/driver/nvidia` or `/dev/nvidia0` exists.
    pub present: bool,
    /// The kernel module's version (`580.65.06`), from `/proc/driver/nvidia/version`.
    pub driver: Option<String>,
}

impl Nvidia {
    pub fn probe() -> Self {
        let present = ["/proc/driver/nvidia", "/dev/nvidia0"]
            .iter()
            .any(|p| std::path::Path::new(p).exists());
        let driver = std::fs::read_to_string("/proc/driver/nvidia/version")
            .ok()
            .and_then(|text| driver_version(&text));
        Self { present, driver }
    }
}

/// The driver version in `/proc/driver/nvidia/version`'s first line ("NVRM version: NVIDIA
/// UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 …"): its first dotted number.
pub fn driver_version(text: &str) -> Option<String> {
    text.lines().next()?.split_whitespace().find_map(|w| {
        let numeric = w.split('.').count() >= 2
            && w.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        numeric.then(|| w.to_string())
    })
}

/// The libtorch agd was built against (read by build.rs from its version file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Libtorch {
    /// `2.13.0+cu130`, or "unknown".
    pub version: &'static str,
    /// The CUDA version it was built for (`13.0`); `None` for a CPU-only build.
    pub cuda: Option<&'static str>,
}

impl Libtorch {
    pub const BUILT: Libtorch = Libtorch {
        version: match option_env!("AGD_TORCH_VERSION") {
            Some(v) => v,
            None => "unknown",
        },
        cuda: option_env!("AGD_TORCH_CUDA"),
    };
}

/// The oldest Linux driver that runs a CUDA major version (NVIDIA's minor-version
/// compatibility table: 13.x needs 580, 12.x 525, 11.x 450).
fn minimum_driver(cuda: &str) -> Option<u32> {
    match cuda.split('.').next()?.parse::<u32>().ok()? {
        13 => Some(580),
        12 => Some(525),
        11 => Some(450),
        _ => None,
    }
}

/// Why a present NVIDIA GPU is unusable by this libtorch, when it is; `None` without NVIDIA
/// hardware (a CPU machine: the notice and the CPU are what the user expects).
pub fn unusable_gpu(hardware: &Nvidia, torch: &Libtorch) -> Option<String> {
    if !hardware.present {
        return None;
    }
    let driver = hardware.driver.as_deref().unwrap_or("unknown");
    let needs = match torch.cuda {
        None => "is a CPU-only build".to_string(),
        Some(cuda) => match minimum_driver(cuda) {
            Some(min) => format!("was built for CUDA {cuda}, which needs driver {min} or newer"),
            None => format!("was built for CUDA {cuda}"),
        },
    };
    Some(format!(
        "an NVIDIA GPU is present (driver {driver}) but libtorch {} cannot use it: it {needs}. \
         Ways out: `-g cpu` to run on the CPU; rebuild agd against a torch for your driver's \
         CUDA (`AGD_TORCH_CUDA=cu126 make build`, any variant of PyTorch's wheel index); or \
         set LIBTORCH to a libtorch that matches the driver and rebuild",
        torch.version
    ))
}

extern "C" {
    fn agd_set_deterministic(on: std::os::raw::c_int);
    fn agd_deterministic_algorithms() -> std::os::raw::c_int;
    fn agd_deterministic_cudnn() -> std::os::raw::c_int;
    fn agd_benchmark_cudnn() -> std::os::raw::c_int;
}

/// ATen's reproducibility switches, as `--deterministic` sets them and a test reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Determinism {
    /// `torch.use_deterministic_algorithms(True, warn_only=True)`.
    pub algorithms: bool,
    /// `torch.backends.cudnn.deterministic`.
    pub cudnn: bool,
    /// `torch.backends.cudnn.benchmark`: cuDNN times several convolution algorithms per
    /// shape and keeps the fastest (batch shapes are fixed, so it searches once).
    pub benchmark: bool,
}

/// `--deterministic` (or not) for this process: deterministic ATen and cuDNN algorithms,
/// benchmark off and cuBLAS's fixed workspace (`CUBLAS_WORKSPACE_CONFIG=:4096:8`, unless
/// set), so a seeded GPU run and its resume repeat; otherwise cuDNN's benchmark on. An op
/// with no deterministic CUDA kernel warns once (warn-only mode) instead of failing the
/// run. Call before the first CUDA operation.
pub fn set_deterministic(on: bool) -> Determinism {
    if on && std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
    // SAFETY: plain setters of ATen's global context (src/shim/context.cpp).
    unsafe { agd_set_deterministic(on as std::os::raw::c_int) };
    determinism()
}

/// The switches as ATen has them now.
pub fn determinism() -> Determinism {
    // SAFETY: plain getters of ATen's global context (src/shim/context.cpp).
    unsafe {
        Determinism {
            algorithms: agd_deterministic_algorithms() != 0,
            cudnn: agd_deterministic_cudnn() != 0,
            benchmark: agd_benchmark_cudnn() != 0,
        }
    }
}

/// Human name of a device for logs and tables.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_spellings_and_bad_ids() {
        assert_eq!(select(&[]).unwrap(), Device::Cpu);
        assert_eq!(select(&["cpu".into()]).unwrap(), Device::Cpu);
        let err = crate::cli::message(&select(&["zero".into()]).unwrap_err());
        assert!(err.contains("-g/--gpu zero"), "{err}");
    }

    #[test]
    fn an_unusable_gpu_is_named_not_skipped() {
        let torch = Libtorch {
            version: "2.13.0+cu130",
            cuda: Some("13.0"),
        };
        assert_eq!(unusable_gpu(&Nvidia::default(), &torch), None);
        let old = Nvidia {
            present: true,
            driver: driver_version(
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc 12\n",
            ),
        };
        assert_eq!(old.driver.as_deref(), Some("535.104.05"));
        let why = unusable_gpu(&old, &torch).unwrap();
        for part in [
            "driver 535.104.05",
            "2.13.0+cu130",
            "CUDA 13.0",
            "580",
            "-g cpu",
            "AGD_TORCH_CUDA",
            "LIBTORCH",
        ] {
            assert!(why.contains(part), "{part} missing from: {why}");
        }
        let cpu_build = Libtorch {
            version: "2.13.0+cpu",
            cuda: None,
        };
        let why = unusable_gpu(
            &Nvidia {
                present: true,
                driver: None,
            },
            &cpu_build,
        )
        .unwrap();
        assert!(
            why.contains("driver unknown") && why.contains("CPU-only"),
            "{why}"
        );
    }

    #[test]
    fn deterministic_sets_and_clears_atens_switches() {
        let on = set_deterministic(true);
        assert_eq!(
            on,
            Determinism {
                algorithms: true,
                cudnn: true,
                benchmark: false
            }
        );
        assert!(std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_some());
        let off = set_deterministic(false);
        assert_eq!(
            off,
            Determinism {
                algorithms: false,
                cudnn: false,
                benchmark: true
            }
        );
        assert_eq!(determinism(), off);
    }

    #[test]
    fn falls_back_to_cpu_without_cuda() {
        if !tch::Cuda::is_available() && !Nvidia::probe().present {
            assert_eq!(select(&["0".into()]).unwrap(), Device::Cpu);
        }
    }
}
