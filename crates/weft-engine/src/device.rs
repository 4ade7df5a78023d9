//! Which device the models run on and in which dtype (`weft serve --device cuda:0 --dtype f16`).
//!
//! Convention: tensors passed between nodes (LATENT, IMAGE, MASK, CONDITIONING) are f32 on the CPU;
//! models live on the compute device in the compute dtype, and move their inputs there and their
//! outputs back at their entry points (`to_compute`, `to_host`). Transfers are per model call on
//! latent-sized tensors, small beside the model's own work, and every node stays device-agnostic.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Result, Tensor};

use crate::memory::{self, MemoryReading};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (`cpu`); the default.
    #[default]
    Cpu,
    /// A CUDA GPU by index (`cuda`, `cuda:N`, `gpu:N`); needs the `cuda` feature.
    Cuda(usize),
    /// A Metal GPU by index (`metal`, `metal:N`, `mps`); needs the `metal` feature.
    Metal(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let (kind, index) = match s.split_once(':') {
            Some((kind, index)) => (
                kind.to_owned(),
                index
                    .parse::<usize>()
                    .map_err(|_| format!("device index '{index}' is not a number"))?,
            ),
            None => (s.clone(), 0),
        };
        match kind.as_str() {
            "cpu" if index == 0 => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(index)),
            "metal" | "mps" => Ok(DeviceChoice::Metal(index)),
            _ => Err(format!(
                "unknown device '{s}'; use cpu, cuda, cuda:N, metal or metal:N"
            )),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceChoice::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The backend for this device was not compiled into the binary.
    #[error("this weft was built without {feature} support; rebuild with `cargo build --release --features {feature}`")]
    NotCompiled {
        /// The cargo feature that enables it (`cuda` or `metal`).
        feature: &'static str,
    },
    /// The backend is built in but the device is not there (no GPU, no driver, a wrong index).
    #[error("{reason}")]
    Open {
        /// The device that failed to open.
        device: DeviceChoice,
        /// The backend's error, without its backtrace.
        // Not a `source`: the message is the reason (callers say which device), and error chains
        // would print it twice.
        reason: candle_core::Error,
    },
    /// The requested weight dtype is not supported on this device.
    #[error("{dtype:?} is not supported on {device}; use {supported}")]
    Dtype {
        /// The dtype asked for.
        dtype: DType,
        /// The device it was asked for on.
        device: DeviceChoice,
        /// The dtypes that device accepts, for the message.
        supported: &'static str,
    },
}

impl DeviceChoice {
    /// Opens the device; a backend this binary was built without is a clear error.
    pub fn open(self) -> std::result::Result<Device, DeviceError> {
        let opened = match self {
            DeviceChoice::Cpu => return Ok(Device::Cpu),
            DeviceChoice::Cuda(_) if !cfg!(feature = "cuda") => {
                return Err(DeviceError::NotCompiled { feature: "cuda" })
            }
            DeviceChoice::Metal(_) if !cfg!(feature = "metal") => {
                return Err(DeviceError::NotCompiled { feature: "metal" })
            }
            DeviceChoice::Cuda(i) => Device::new_cuda(i),
            DeviceChoice::Metal(i) => Device::new_metal(i),
        };
        opened.map_err(|reason| DeviceError::Open {
            device: self,
            // candle prints the backtrace it captured (under RUST_BACKTRACE) inside the message;
            // the driver's reason is what a user needs.
            reason: match reason {
                candle_core::Error::WithBacktrace { inner, .. } => *inner,
                other => other,
            },
        })
    }

    /// The weights' dtype when none is asked for: on the CPU `None`, the precision each file is
    /// stored in (f16 and bf16 kept, half the memory of f32; the arithmetic is f32 all the same,
    /// see [`compute_dtype`]); f16 on GPUs (SD weights ship in f16).
    pub fn default_dtype(self) -> Option<DType> {
        match self {
            DeviceChoice::Cpu => None,
            DeviceChoice::Cuda(_) | DeviceChoice::Metal(_) => Some(DType::F16),
        }
    }

    /// Checks a requested weight dtype: f32 and f16 everywhere, bf16 on CUDA and on the CPU
    /// (where convolutions and linear layers multiply in bf16 with f32 sums on CPUs where that
    /// outruns f32, `ops::gemm_bf16::outruns_f32`, and widen to f32 elsewhere), not on Metal
    /// (its bf16 support depends on the chip).
    pub fn check_dtype(self, dtype: DType) -> std::result::Result<DType, DeviceError> {
        match (self, dtype) {
            (_, DType::F32 | DType::F16)
            | (DeviceChoice::Cuda(_) | DeviceChoice::Cpu, DType::BF16) => Ok(dtype),
            (device, dtype) => Err(DeviceError::Dtype {
                dtype,
                device,
                supported: match device {
                    DeviceChoice::Metal(_) => "f32 or f16",
                    _ => "f32, f16 or bf16",
                },
            }),
        }
    }
}

/// The dtype a model with weights in `weights` computes in on `device`: f32 on the CPU whatever
/// the weights (each layer widens its weights per call, [`crate::ops::cast`]; f16
/// arithmetic there is slower and less exact; bf16 weights multiply in bf16 where the CPU can,
/// [`crate::ops::gemm_bf16`], with f32 activations in and out), the weights' own on a GPU.
pub fn compute_dtype(device: &Device, weights: DType) -> DType {
    match weights {
        _ if device.is_cpu() => DType::F32,
        // fp8 weights compute in f16, as ComfyUI's manual cast does on GPUs.
        DType::F8E4M3 => DType::F16,
        _ => weights,
    }
}

/// The dtype weights stored in `stored` are kept in: `requested` (`--dtype`) when given, else
/// `stored` itself when it is f16 or bf16 and f32 otherwise (f64 and integer tensors).
pub fn weight_dtype(requested: Option<DType>, stored: DType) -> DType {
    match (requested, stored) {
        (Some(dtype), _) => dtype,
        (None, DType::F16 | DType::BF16) => stored,
        (None, _) => DType::F32,
    }
}

/// Parses `f32`, `f16`/`fp16`/`half`, `bf16`.
pub fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(format!("unknown dtype '{other}'; use f32, f16 or bf16")),
    }
}

/// `(total, free)` bytes of a GPU's own memory, as its driver reports them; `None` for the CPU
/// and for Metal, whose memory is the system's (unified), and when the driver cannot say.
pub fn gpu_memory(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some((total as u64, free as u64));
    }
    let _ = device;
    None
}

/// The model budget when none is given, and why: on the CPU (and Metal's unified memory)
/// [`memory::MODEL_BUDGET_FRACTION`] of the smaller of the memory limit in force (a container's
/// cgroup limit, or the machine's memory) and what is available now; on a CUDA GPU three
/// quarters of its own memory (the rest is for activations while sampling).
pub fn default_model_budget(device: &Device, memory: &MemoryReading) -> (usize, String) {
    model_budget_for(gpu_memory(device).map(|(total, _)| total), memory)
}

fn model_budget_for(gpu_total: Option<u64>, reading: &MemoryReading) -> (usize, String) {
    match gpu_total {
        Some(total) => (
            (total / 4 * 3) as usize,
            format!("three quarters of the GPU's {}", memory::human(total)),
        ),
        None => {
            let budget = memory::default_model_budget(reading);
            let why = format!(
                "{:.0}% of the smaller of {} ({}) and the {} available at start",
                memory::MODEL_BUDGET_FRACTION * 100.0,
                reading.source,
                memory::human(reading.limit),
                memory::human(reading.available)
            );
            (budget.min(usize::MAX as u64) as usize, why)
        }
    }
}

/// A model input moved to the model's device and compute dtype (no copy when it is already there).
pub fn to_compute(t: &Tensor, device: &Device, dtype: DType) -> Result<Tensor> {
    t.to_device(device)?.to_dtype(dtype)
}

/// A model output as nodes keep values: f32 on the CPU.
pub fn to_host(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)?.to_device(&Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        for (text, choice) in [
            ("cpu", DeviceChoice::Cpu),
            ("CUDA", DeviceChoice::Cuda(0)),
            ("cuda:1", DeviceChoice::Cuda(1)),
            ("metal", DeviceChoice::Metal(0)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice);
        }
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn a_backend_that_is_not_built_in_is_a_clear_error() {
        if !cfg!(feature = "cuda") {
            let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
        if !cfg!(feature = "metal") {
            let e = DeviceChoice::Metal(0).open().unwrap_err().to_string();
            assert!(e.contains("--features metal"), "{e}");
        }
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
    }

    #[test]
    fn the_default_model_budget_fits_the_memory() {
        let gib = 1u64 << 30;
        let reading = MemoryReading {
            limit: 12 * gib,
            available: 20 * gib,
            source: memory::LimitSource::CgroupV2,
        };
        let (budget, why) = model_budget_for(None, &reading);
        assert_eq!(budget, 9 << 30);
        assert!(
            why.contains("memory.max") && why.contains("12.0 GiB"),
            "{why}"
        );
        assert_eq!(model_budget_for(Some(8 * gib), &reading).0, 6 << 30);
        assert_eq!(
            model_budget_for(Some(141 * gib), &reading).0,
            (141 * gib / 4 * 3) as usize
        );
    }

    #[test]
    fn dtypes() {
        assert_eq!(parse_dtype("fp16").unwrap(), DType::F16);
        assert_eq!(DeviceChoice::Cpu.default_dtype(), None);
        assert_eq!(DeviceChoice::Cuda(0).default_dtype(), Some(DType::F16));
        assert!(DeviceChoice::Metal(0).check_dtype(DType::BF16).is_err());
        assert!(DeviceChoice::Cpu.check_dtype(DType::BF16).is_ok());
        assert_eq!(weight_dtype(None, DType::F16), DType::F16);
        assert_eq!(weight_dtype(None, DType::BF16), DType::BF16);
        assert_eq!(weight_dtype(None, DType::F64), DType::F32);
        assert_eq!(weight_dtype(Some(DType::F32), DType::F16), DType::F32);
        assert_eq!(compute_dtype(&Device::Cpu, DType::F16), DType::F32);
        assert!(DeviceChoice::Cuda(0).check_dtype(DType::BF16).is_ok());
        assert!(DeviceChoice::Cpu.check_dtype(DType::U8).is_err());
    }
}
