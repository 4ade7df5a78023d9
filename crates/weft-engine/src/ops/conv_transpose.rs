//! 2-D transposed convolution (torch's `ConvTranspose2d`, one group, no dilation) as one matmul.
//!
//! Why our own: candle 0.11's CPU `conv_transpose2d` computes one `C_in`-long dot product per
//! output pixel and kernel tap, scattering each into the output, with the pixels of one output
//! channel per thread. Here the kernel seen as `[C_out * kh * kw, C_in]` multiplies the input
//! `[C_in, H * W]` (gemm), and each tap's `[C_out, H, W]` plane is added into the output's
//! stride phase it lands on, shifted by whole input pixels; the phases are then interleaved. Only
//! candle ops, so it runs on every device.

use candle_core::{Result, Tensor};

/// `xs` `[B, C_in, H, W]`, `weight` `[C_in, C_out, kh, kw]` (torch's layout), `bias` `[C_out]`:
/// `[B, C_out, (H - 1) * stride - 2 * padding + kh + output_padding, (same for W)]`.
pub fn conv_transpose2d(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Result<Tensor> {
    let (batch, c_in, h, w) = xs.dims4()?;
    let (w_in, c_out, kh, kw) = weight.dims4()?;
    if w_in != c_in {
        candle_core::bail!("conv_transpose2d input has {c_in} channels, the kernel expects {w_in}");
    }
    if stride == 0 || output_padding >= stride || h == 0 || w == 0 {
        candle_core::bail!(
            "conv_transpose2d: stride {stride}, output padding {output_padding} on {h}x{w}"
        );
    }
    let out_len =
        |len: usize, k: usize| ((len - 1) * stride + k + output_padding).checked_sub(2 * padding);
    let (Some(out_h), Some(out_w)) = (out_len(h, kh), out_len(w, kw)) else {
        candle_core::bail!("conv_transpose2d: padding {padding} exceeds the output");
    };
    // [C_out * kh * kw, C_in] @ [B, C_in, H * W] -> per tap, the input's contribution.
    let kernel = weight
        .permute((1, 2, 3, 0))?
        .reshape((c_out * kh * kw, c_in))?
        .contiguous()?;
    let taps = kernel
        .broadcast_left(batch)?
        .matmul(&xs.reshape((batch, c_in, h * w))?.contiguous()?)?
        .reshape((batch, c_out, kh, kw, h, w))?;
    // Output row u = i * stride + ky (before cropping `padding`): phase ky % stride, row
    // i + ky / stride of that phase, which has H + shift rows.
    let shift = |k: usize| k.div_ceil(stride).saturating_sub(1);
    let (sy, sx) = (shift(kh), shift(kw));
    let mut rows = Vec::with_capacity(stride);
    for ry in 0..stride {
        let mut cols = Vec::with_capacity(stride);
        for rx in 0..stride {
            let mut phase: Option<Tensor> = None;
            for ky in (ry..kh).step_by(stride) {
                for kx in (rx..kw).step_by(stride) {
                    let (qy, qx) = (ky / stride, kx / stride);
                    let plane = taps
                        .narrow(2, ky, 1)?
                        .narrow(3, kx, 1)?
                        .reshape((batch, c_out, h, w))?
                        .pad_with_zeros(2, qy, sy - qy)?
                        .pad_with_zeros(3, qx, sx - qx)?;
                    phase = Some(match phase {
                        Some(p) => (p + plane)?,
                        None => plane,
                    });
                }
            }
            let phase = match phase {
                Some(p) => p,
                None => Tensor::zeros((batch, c_out, h + sy, w + sx), xs.dtype(), xs.device())?,
            };
            cols.push(phase);
        }
        // [B, C_out, M, N, stride] -> columns interleaved.
        rows.push(Tensor::stack(&cols, 4)?.reshape((batch, c_out, h + sy, (w + sx) * stride))?);
    }
    let canvas =
        Tensor::stack(&rows, 3)?.reshape((batch, c_out, (h + sy) * stride, (w + sx) * stride))?;
    // Crop `padding` from the start; output padding past the canvas is zeros.
    let fit = |t: Tensor, dim: usize, want: usize| -> Result<Tensor> {
        let Some(have) = t.dim(dim)?.checked_sub(padding) else {
            candle_core::bail!("conv_transpose2d: padding {padding} exceeds the output");
        };
        if have >= want {
            t.narrow(dim, padding, want)
        } else {
            t.narrow(dim, padding, have)?
                .pad_with_zeros(dim, 0, want - have)
        }
    };
    let out = fit(fit(canvas, 2, out_h)?, 3, out_w)?;
    match bias {
        None => Ok(out),
        Some(b) => out.broadcast_add(&b.reshape((1, c_out, 1, 1))?),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::conv_transpose2d;

    fn check(
        (batch, c_in, h, w): (usize, usize, usize, usize),
        (c_out, kh, kw): (usize, usize, usize),
        (stride, padding, output_padding): (usize, usize, usize),
    ) {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1.0, (batch, c_in, h, w), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1.0, (c_in, c_out, kh, kw), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c_out, &dev).unwrap();
        let expected = xs
            .conv_transpose2d(&weight, padding, output_padding, stride, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
            .unwrap();
        let got =
            conv_transpose2d(&xs, &weight, Some(&bias), stride, padding, output_padding).unwrap();
        assert_eq!(got.dims(), expected.dims());
        let diff = crate::ops::max_abs_diff(&got, &expected);
        assert!(diff < 1e-4, "max abs diff {diff}");
    }

    #[test]
    fn matches_candle() {
        // The line-art generator's upsampler and the pix2pix U-Net's.
        check((1, 6, 5, 7), (4, 3, 3), (2, 1, 1));
        check((2, 5, 4, 6), (3, 4, 4), (2, 1, 0));
        // Odd shapes: stride 3, non-square kernels, no padding, stride 1.
        check((1, 3, 4, 5), (2, 2, 5), (3, 0, 2));
        check((1, 3, 4, 5), (2, 3, 3), (1, 1, 0));
        check((1, 2, 1, 1), (2, 4, 4), (2, 1, 0));
    }
}
