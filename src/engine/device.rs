//! Which device the models run on and in which dtype (`weft serve --device cuda:0 --dtype f16`).
//!
//! Convention: tensors passed between nodes (LATENT, IMAGE, MASK, CONDITIONING) are f32 on the CPU;
//! models live on the compute device in the compute dtype, and move their inputs there and their
//! outputs back at their entry points (`to_compute`, `to_host`). Transfers are per model call on
//! latent-sized tensors, small beside the model's own work, and every node stays device-agnostic.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Result, Tensor};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
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
    #[error("this weft was built without {feature} support; rebuild with `cargo build --release --features {feature}`")]
    NotCompiled { feature: &'static str },
    /// The backend is built in but the device is not there (no GPU, no driver, a wrong index).
    #[error("{reason}")]
    Open {
        device: DeviceChoice,
        // Not a `source`: the message is the reason (callers say which device), and error chains
        // would print it twice.
        reason: candle_core::Error,
    },
    #[error("{dtype:?} is not supported on {device}; use {supported}")]
    Dtype {
        dtype: DType,
        device: DeviceChoice,
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

    /// The dtype models use when none is asked for: f32 on the CPU (candle's CPU kernels are
    /// fastest and exact there), f16 on GPUs (half the memory; SD weights ship in f16).
    pub fn default_dtype(self) -> DType {
        match self {
            DeviceChoice::Cpu => DType::F32,
            DeviceChoice::Cuda(_) | DeviceChoice::Metal(_) => DType::F16,
        }
    }

    /// Checks a requested dtype: f32 and f16 everywhere, bf16 on CUDA only (candle's CPU matmul
    /// has no bf16 kernel, and Metal's bf16 support depends on the chip).
    pub fn check_dtype(self, dtype: DType) -> std::result::Result<DType, DeviceError> {
        match (self, dtype) {
            (_, DType::F32 | DType::F16) | (DeviceChoice::Cuda(_), DType::BF16) => Ok(dtype),
            (device, dtype) => Err(DeviceError::Dtype {
                dtype,
                device,
                supported: match device {
                    DeviceChoice::Cuda(_) => "f32, f16 or bf16",
                    _ => "f32 or f16",
                },
            }),
        }
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

/// The model budget when none is given: 16 GiB, or three quarters of a GPU's own memory when
/// that is less (the rest is for activations while sampling).
pub fn default_model_budget(device: &Device) -> usize {
    model_budget_for(gpu_memory(device).map(|(total, _)| total))
}

fn model_budget_for(gpu_total: Option<u64>) -> usize {
    const DEFAULT: usize = 16 << 30;
    match gpu_total {
        Some(total) => DEFAULT.min((total / 4 * 3) as usize),
        None => DEFAULT,
    }
}

/// A model input moved to the model's device and dtype (no copy when it is already there).
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
    fn the_default_model_budget_fits_the_gpu() {
        let gib = 1u64 << 30;
        assert_eq!(model_budget_for(None), 16 << 30);
        assert_eq!(model_budget_for(Some(8 * gib)), 6 << 30);
        assert_eq!(model_budget_for(Some(141 * gib)), 16 << 30);
        assert_eq!(default_model_budget(&Device::Cpu), 16 << 30);
    }

    #[test]
    fn dtypes() {
        assert_eq!(parse_dtype("fp16").unwrap(), DType::F16);
        assert_eq!(DeviceChoice::Cpu.default_dtype(), DType::F32);
        assert_eq!(DeviceChoice::Cuda(0).default_dtype(), DType::F16);
        assert!(DeviceChoice::Metal(0).check_dtype(DType::BF16).is_err());
        assert!(DeviceChoice::Cpu.check_dtype(DType::BF16).is_err());
        assert!(DeviceChoice::Cuda(0).check_dtype(DType::BF16).is_ok());
        assert!(DeviceChoice::Cpu.check_dtype(DType::U8).is_err());
    }
}
