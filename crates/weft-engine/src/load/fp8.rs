//! UNETLoader's `weight_dtype` fp8 formats: the diffusion model's weights rounded as torch's
//! `.to(torch.float8_e4m3fn)` / `.to(torch.float8_e5m2)` round them (to nearest, ties to even,
//! saturating at the largest finite value), and kept in a narrower dtype; layers widen them to
//! f32 (`ops::cast`) as they do f16 weights, as ComfyUI's `manual_cast` does.
//!
//! e4m3fn is stored as candle's `F8E4M3`, a quarter of f32. candle has no e5m2 type, and every
//! e5m2 value is an f16 value (same exponent range, fewer mantissa bits), so e5m2 weights are
//! stored as f16: the same numbers as ComfyUI's, in twice its memory.

use candle_core::{DType, Result, Tensor};

/// An fp8 weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp8Format {
    /// 4 exponent bits (bias 7), 3 mantissa bits, no infinities; largest value 448.
    E4M3Fn,
    /// 5 exponent bits (bias 15), 2 mantissa bits; largest finite value 57344.
    E5M2,
}

impl Fp8Format {
    /// UNETLoader's `weight_dtype` names (`fp8_e4m3fn_fast` computes as e4m3fn does here).
    pub fn parse(name: &str) -> Option<Fp8Format> {
        match name {
            "fp8_e4m3fn" | "fp8_e4m3fn_fast" => Some(Fp8Format::E4M3Fn),
            "fp8_e5m2" => Some(Fp8Format::E5M2),
            _ => None,
        }
    }

    /// The dtype the rounded weights are kept in.
    pub fn storage(self) -> DType {
        match self {
            Fp8Format::E4M3Fn => DType::F8E4M3,
            Fp8Format::E5M2 => DType::F16,
        }
    }

    /// (mantissa bits, exponent of the smallest normal value, largest finite value).
    fn grid(self) -> (i32, i32, f32) {
        match self {
            Fp8Format::E4M3Fn => (3, -6, 448.0),
            Fp8Format::E5M2 => (2, -14, 57344.0),
        }
    }

    /// `x` rounded to this format's nearest value (ties to even), saturated; NaN stays NaN.
    pub fn round(self, x: f32) -> f32 {
        if x == 0.0 || !x.is_finite() {
            return if x.is_nan() {
                x
            } else {
                x.clamp(-self.grid().2, self.grid().2)
            };
        }
        let (mantissa, min_exp, max) = self.grid();
        // The binade's exponent (subnormal f32s are far below every fp8 value: they round to 0).
        let exp = ((x.to_bits() >> 23) & 0xff) as i32 - 127;
        // Below the smallest normal the step stays that of the subnormals.
        let step = 2f32.powi(exp.max(min_exp) - mantissa);
        // Scaling by a power of two is exact, so this is the one rounding.
        ((x / step).round_ties_even() * step).clamp(-max, max)
    }

    /// A weight rounded to this format, in [`Fp8Format::storage`]. Exact in storage: every
    /// rounded value is representable there.
    pub fn quantize(self, weight: &Tensor) -> Result<Tensor> {
        if !weight.dtype().is_float() {
            return Ok(weight.clone());
        }
        let shape = weight.shape().clone();
        let values: Vec<f32> = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|x| self.round(x))
            .collect();
        Tensor::from_vec(values, shape, weight.device())?.to_dtype(self.storage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values and what torch 2.x's casts give (`x.to(torch.float8_e4m3fn).float()`, e5m2 alike):
    /// ties to even, subnormals, saturation.
    #[test]
    fn rounds_as_torch() {
        let x = [
            0.0,
            1.0,
            -1.0,
            0.3,
            1.125,
            1.0625,
            1.1875,
            3.14159,
            -0.0001,
            1e-5,
            3e-6,
            2.5e-3,
            0.0156,
            300.0,
            447.0,
            460.0,
            500.0,
            57344.0,
            60000.0,
            1e-9,
            0.013671875,
            0.01416015625,
        ];
        let e4m3 = [
            0.0,
            1.0,
            -1.0,
            0.3125,
            1.125,
            1.0,
            1.25,
            3.25,
            -0.0,
            0.0,
            0.0,
            0.001953125,
            0.015625,
            288.0,
            448.0,
            448.0,
            448.0,
            448.0,
            448.0,
            0.0,
            0.013671875,
            0.013671875,
        ];
        let e5m2 = [
            0.0,
            1.0,
            -1.0,
            0.3125,
            1.0,
            1.0,
            1.25,
            3.0,
            -0.0001068115234375,
            1.52587890625e-05,
            0.0,
            0.00244140625,
            0.015625,
            320.0,
            448.0,
            448.0,
            512.0,
            57344.0,
            57344.0,
            0.0,
            0.013671875,
            0.013671875,
        ];
        for ((&v, &a), &b) in x.iter().zip(&e4m3).zip(&e5m2) {
            assert_eq!(Fp8Format::E4M3Fn.round(v), a, "e4m3fn of {v}");
            assert_eq!(Fp8Format::E5M2.round(v), b, "e5m2 of {v}");
        }
    }

    #[test]
    fn storage_holds_the_rounded_values_exactly() {
        let x: Vec<f32> = (0..4000)
            .map(|i| ((i as f32) * 0.731).sin() * 3.0)
            .collect();
        let t = Tensor::from_vec(x.clone(), (40, 100), &candle_core::Device::Cpu).unwrap();
        for f in [Fp8Format::E4M3Fn, Fp8Format::E5M2] {
            let q = f.quantize(&t).unwrap();
            assert_eq!(q.dtype(), f.storage());
            let back: Vec<f32> = q
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want: Vec<f32> = x.iter().map(|&v| f.round(v)).collect();
            assert_eq!(back, want);
        }
    }
}
