//! Deterministic synthetic weights shared by the Rust tests and the python reference scripts.
//!
//! Every parameter is a pure function of its canonical key name and shape (see COMMON.md): the seed
//! is FNV-1a 64 of the key, element `i` is `splitmix64(seed + i)` mapped to `[0, 1)`, then scaled by
//! the tensor's role. Tests build the same tiny model the python script used without committing
//! any weights.

use candle_core::{DType, Device, Result, Shape, Tensor};

/// FNV-1a 64 of the key's UTF-8 bytes.
fn fnv1a64(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn splitmix64(x: u64) -> u64 {
    let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The values of the synthetic tensor `key` with `dims`, row-major, as f32.
pub fn synth_values(key: &str, dims: &[usize]) -> Vec<f32> {
    let numel: usize = dims.iter().product();
    let seed = fnv1a64(key);
    // The scale depends on the tensor's role: fan-in scaling for matrices and kernels, a value
    // near one for norm scales, and a small value for biases and other vectors.
    let (scale, offset) = if dims.len() >= 2 {
        let fan_in = numel / dims[0].max(1);
        (1.0 / (fan_in.max(1) as f64).sqrt(), 0.0)
    } else if dims.len() == 1 && key.ends_with("weight") {
        (0.1, 1.0)
    } else {
        (0.1, 0.0)
    };
    (0..numel)
        .map(|i| {
            let z = splitmix64(seed.wrapping_add(i as u64));
            let u = (z >> 11) as f64 / (1u64 << 53) as f64;
            (offset + scale * (2.0 * u - 1.0)) as f32
        })
        .collect()
}

/// The synthetic tensor for `key` with `shape`, f32 on the CPU.
pub fn synth_tensor<S: Into<Shape>>(key: &str, shape: S) -> Result<Tensor> {
    let shape = shape.into();
    let values = synth_values(key, shape.dims());
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// A `VarBuilder` backend that fills every requested parameter with [`synth_tensor`].
///
/// Use it as `VarBuilder::from_backend(Box::new(SynthBackend), DType::F32, &device)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SynthBackend;

impl candle_nn::var_builder::SimpleBackend for SynthBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _hints: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        synth_tensor(name, s)?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        // The generator needs a shape; callers that do not know it cannot use synthetic weights.
        candle_core::bail!("synthetic weights need a shape, none given for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A `VarBuilder` over synthetic weights.
pub fn synth_var_builder(dtype: DType, device: &Device) -> candle_nn::VarBuilder<'static> {
    candle_nn::VarBuilder::from_backend(Box::new(SynthBackend), dtype, device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected f32 bit patterns from the python `synth` in unet/scripts/synth.py, written to
    // tests/fixtures/synth_expected.txt by unet/scripts/unet_vae_reference.py; bit-exact.
    #[test]
    fn matches_python_generator() {
        let w = synth_values("conv_in.weight", &[2, 3]);
        let b = synth_values("conv_in.bias", &[3]);
        let n = synth_values("norm.weight", &[2]);
        let expected_bits: [u32; 11] = include!("../../../tests/fixtures/unet/synth_expected.txt");
        let got: Vec<f32> = w.iter().chain(b.iter()).chain(n.iter()).copied().collect();
        assert_eq!(got.len(), expected_bits.len());
        for (g, e) in got.iter().zip(expected_bits.iter()) {
            assert_eq!(g.to_bits(), *e, "got {g} expected {}", f32::from_bits(*e));
        }
    }
}
