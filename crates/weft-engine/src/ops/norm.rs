//! GroupNorm, optionally followed by SiLU.
//!
//! Why our own: candle-nn's GroupNorm is eight separate tensor ops (sum, sub, sqr, sum, div, sqrt,
//! mul, add), each a full pass over the activations with its own allocation, and the SiLU that
//! follows it in every resnet is one more. On the CPU in f32 this does it in one kernel: per
//! (image, group), the mean and variance (accumulated in f64) over a contiguous block, then one
//! pass that writes `x * scale + shift`, with the SiLU fused when asked (and vectorised, see
//! [`crate::ops::math`]). Other devices and dtypes
//! use candle-nn's GroupNorm (and candle's SiLU).

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::ops::{buffer, cast, math};

/// GroupNorm over [B, C, ...] with a per-channel scale and shift, read from `vb` like
/// `candle_nn::group_norm` (`weight`, `bias`).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    num_groups: usize,
}

impl GroupNorm {
    /// A GroupNorm of `num_channels` channels in `num_groups` groups; `weight` and `bias` are
    /// `[num_channels]`. Fails when their size differs or the groups do not divide the channels.
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        num_channels: usize,
        num_groups: usize,
        eps: f64,
    ) -> Result<Self> {
        if weight.dims1()? != num_channels || bias.dims1()? != num_channels {
            candle_core::bail!("group norm of {num_channels} channels got other-sized weights");
        }
        if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
            candle_core::bail!("{num_channels} channels do not split into {num_groups} groups");
        }
        Ok(Self {
            weight,
            bias,
            eps,
            num_groups,
        })
    }

    /// The scale and shift on the input's device in its dtype, for the kernel or candle-nn's layer.
    fn params(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            cast::operand(&self.weight, xs)?,
            cast::operand(&self.bias, xs)?,
        ))
    }

    /// candle-nn's GroupNorm, for devices and dtypes without our kernel.
    fn fallback(&self, xs: &Tensor) -> Result<Tensor> {
        let (weight, bias) = self.params(xs)?;
        let channels = weight.dims1()?;
        candle_nn::GroupNorm::new(weight, bias, channels, self.num_groups, self.eps)?.forward(xs)
    }

    /// `silu(group_norm(xs))`, the pre-activation of every resnet convolution.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        if self.uses_cpu_kernel(xs) {
            self.cpu_forward(xs, true)
        } else {
            self.fallback(xs)?.silu()
        }
    }

    fn uses_cpu_kernel(&self, xs: &Tensor) -> bool {
        matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32 && xs.rank() >= 3
    }

    fn cpu_forward(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        let channels = xs.dim(1)?;
        let weight = self.weight.dims1()?;
        if channels != weight || channels % self.num_groups != 0 {
            candle_core::bail!(
                "group norm of {weight} channels in {} groups got {channels} channels",
                self.num_groups
            );
        }
        let op = GroupNormOp {
            num_groups: self.num_groups,
            eps: self.eps,
            silu,
        };
        let (weight, bias) = self.params(xs)?;
        xs.contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.uses_cpu_kernel(xs) {
            self.cpu_forward(xs, false)
        } else {
            self.fallback(xs)
        }
    }
}

/// Reads a GroupNorm's `weight` and `bias` from `vb`, as `candle_nn::group_norm` does.
pub fn group_norm(
    num_groups: usize,
    num_channels: usize,
    eps: f64,
    vb: VarBuilder,
) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(num_channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(num_channels, "bias", candle_nn::Init::Const(0.))?;
    GroupNorm::new(weight, bias, num_channels, num_groups, eps)
}

struct GroupNormOp {
    num_groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "weft-group-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let src = buffer::contiguous_f32(xs, xs_layout, "group norm")?;
        let weight = buffer::contiguous_f32(weight, weight_layout, "group norm")?;
        let bias = buffer::contiguous_f32(bias, bias_layout, "group norm")?;
        let dims = xs_layout.dims();
        let channels = dims[1];
        let spatial: usize = dims[2..].iter().product();
        let group_channels = channels / self.num_groups;
        let group_len = group_channels * spatial;
        let mut dst = buffer::zeros(src.len());
        if group_len > 0 {
            dst.par_chunks_mut(group_len)
                .zip(src.par_chunks(group_len))
                .enumerate()
                .for_each(|(index, (dst, src))| {
                    let first_channel = (index % self.num_groups) * group_channels;
                    let n = src.len() as f64;
                    let mean = sum_f64(src) / n;
                    let var = sum_squares_f64(src, mean) / n;
                    let inv_std = 1.0 / (var + self.eps).sqrt();
                    for (c, (dst, src)) in dst
                        .chunks_exact_mut(spatial)
                        .zip(src.chunks_exact(spatial))
                        .enumerate()
                    {
                        let scale = f64::from(weight[first_channel + c]) * inv_std;
                        let shift = f64::from(bias[first_channel + c]) - mean * scale;
                        let (scale, shift) = (scale as f32, shift as f32);
                        if self.silu {
                            scale_shift_silu(src, scale, shift, dst);
                        } else {
                            scale_shift(src, scale, shift, dst);
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(dst), Shape::from_dims(dims)))
    }
}

/// `dst = src * scale + shift`.
fn scale_shift(src: &[f32], scale: f32, shift: f32, dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s * scale + shift;
    }
}

/// `dst = silu(src * scale + shift)`, vectorised (see [`crate::ops::math`]).
fn scale_shift_silu(src: &[f32], scale: f32, shift: f32, dst: &mut [f32]) {
    pulp::Arch::new().dispatch(|| {
        for (d, &s) in dst.iter_mut().zip(src) {
            let y = s * scale + shift;
            *d = y / (1.0 + math::exp(-y));
        }
    })
}

/// Sum of `xs` in f64, eight independent lanes so that it vectorises.
fn sum_f64(xs: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(v);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// Sum of `(xs - mean)^2` in f64, eight independent lanes.
fn sum_squares_f64(xs: &[f32], mean: f64) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            let d = f64::from(v) - mean;
            *lane += d * d;
        }
    }
    lanes.iter().sum::<f64>() + rest
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module, Tensor};

    use crate::ops::norm::GroupNorm;

    /// Compares [`GroupNorm`] (plain and with SiLU) with candle-nn's on a random input whose mean
    /// is far from zero.
    fn check(dims: &[usize], groups: usize, eps: f64) {
        let dev = Device::Cpu;
        let channels = dims[1];
        let xs = (Tensor::randn(0f32, 3.0, dims, &dev).unwrap() + 5.0).unwrap();
        let weight = Tensor::randn(1f32, 0.5, channels, &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.5, channels, &dev).unwrap();
        let reference =
            candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps).unwrap();
        let ours = GroupNorm::new(weight, bias, channels, groups, eps).unwrap();
        let expected = reference.forward(&xs).unwrap();
        let diff = crate::ops::max_abs_diff(&ours.forward(&xs).unwrap(), &expected);
        assert!(diff < 1e-4, "group norm max abs diff {diff}");
        let diff =
            crate::ops::max_abs_diff(&ours.forward_silu(&xs).unwrap(), &expected.silu().unwrap());
        assert!(diff < 1e-4, "group norm + silu max abs diff {diff}");
    }

    #[test]
    fn matches_candle_on_images() {
        check(&[2, 8, 5, 7], 4, 1e-5);
        check(&[1, 6, 3, 3], 6, 1e-6);
        check(&[3, 64, 16, 16], 32, 1e-6);
    }

    #[test]
    fn matches_candle_on_other_ranks() {
        check(&[2, 12, 10], 3, 1e-5);
        check(&[2, 4, 3, 2, 5], 2, 1e-5);
    }

    #[test]
    fn non_contiguous_input_matches_candle() {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1.0, (2, 6, 5, 8), &dev)
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap();
        let weight = Tensor::randn(1f32, 0.5, 8, &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.5, 8, &dev).unwrap();
        let reference =
            candle_nn::GroupNorm::new(weight.clone(), bias.clone(), 8, 4, 1e-5).unwrap();
        let ours = GroupNorm::new(weight, bias, 8, 4, 1e-5).unwrap();
        let diff = crate::ops::max_abs_diff(
            &ours.forward(&xs).unwrap(),
            &reference.forward(&xs).unwrap(),
        );
        assert!(diff < 1e-4, "group norm max abs diff {diff}");
    }

    #[test]
    fn wrong_channel_count_is_an_error() {
        let dev = Device::Cpu;
        let ours = GroupNorm::new(
            Tensor::ones(8, candle_core::DType::F32, &dev).unwrap(),
            Tensor::zeros(8, candle_core::DType::F32, &dev).unwrap(),
            8,
            4,
            1e-5,
        )
        .unwrap();
        let xs = Tensor::zeros((1, 6, 2, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(ours.forward(&xs).is_err());
    }
}
