//! `-g/--gpu`: the reference takes GPU ids (`-g 0`, `-g 0 1`) and sets
//! `CUDA_VISIBLE_DEVICES`; agd picks the first listed CUDA device when one exists and
//! otherwise runs on the CPU, saying so once.

use crate::error::Setting;
use anyhow::Result;
use tch::Device;

/// The device for `-g` values: `[]` or `["cpu"]` → CPU; `["N", …]` → CUDA device N when
/// available, else the CPU with a notice on stderr.
pub fn select(gpu: &[String]) -> Result<Device> {
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
        eprintln!("note: no CUDA device found; running on the CPU");
        return Ok(Device::Cpu);
    }
    let id = ids[0];
    if id >= count {
        crate::bad_setting!(
            Setting::Gpu,
            id,
            "only {count} CUDA device(s) (0..{}) exist",
            count - 1
        );
    }
    if ids.len() > 1 {
        eprintln!(
            "note: agd trains on one device; using cuda:{id} of -g {}",
            gpu.join(" ")
        );
    }
    Ok(Device::Cuda(id))
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
    fn falls_back_to_cpu_without_cuda() {
        if !tch::Cuda::is_available() {
            assert_eq!(select(&["0".into()]).unwrap(), Device::Cpu);
        }
    }
}
