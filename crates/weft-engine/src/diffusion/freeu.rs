//! FreeU and FreeU_V2 (`comfy_extras/nodes_freelunch.py`): an output-block patch that scales the
//! first half of the backbone features and damps the lowest frequencies of the skip connection,
//! at the two up-path levels whose hidden state has 4x and 2x the UNet's base channels.

use candle_core::{DType, Device, Result, Tensor, D};

use super::patches::OutputBlockPatch;

/// Which FreeU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeUVersion {
    /// `FreeU`: the backbone half is multiplied by `b`.
    V1,
    /// `FreeU_V2`: by `(b - 1) * m + 1`, `m` the channel mean rescaled to 0..1 per image.
    V2,
}

/// The patch: `(b, s)` for hidden states of `4 * base` channels and for `2 * base` channels.
#[derive(Debug, Clone)]
pub struct FreeU {
    /// V1 or V2 backbone scaling.
    pub version: FreeUVersion,
    /// The UNet's `model_channels` (its first block's width).
    pub base_channels: usize,
    /// `(b1, s1)`: backbone and skip factors at `4 * base` channels.
    pub level1: (f64, f64),
    /// `(b2, s2)`: at `2 * base` channels.
    pub level2: (f64, f64),
}

impl OutputBlockPatch for FreeU {
    fn patch(&self, h: Tensor, skip: Tensor) -> Result<(Tensor, Tensor)> {
        let channels = h.dim(1)?;
        let (b, s) = if channels == self.base_channels * 4 {
            self.level1
        } else if channels == self.base_channels * 2 {
            self.level2
        } else {
            return Ok((h, skip));
        };
        let half = channels / 2;
        let front = h.narrow(1, 0, half)?;
        let front = match self.version {
            FreeUVersion::V1 => front.affine(b, 0.0)?,
            FreeUVersion::V2 => {
                let mean = h.to_dtype(DType::F32)?.mean_keepdim(1)?;
                let (batch, _, hh, ww) = mean.dims4()?;
                let flat = mean.reshape((batch, hh * ww))?;
                let max = flat.max_keepdim(D::Minus1)?.reshape((batch, 1, 1, 1))?;
                let min = flat.min_keepdim(D::Minus1)?.reshape((batch, 1, 1, 1))?;
                let norm = mean.broadcast_sub(&min)?.broadcast_div(&(max - &min)?)?;
                let factor = norm.affine(b - 1.0, 1.0)?.to_dtype(front.dtype())?;
                front.broadcast_mul(&factor)?
            }
        };
        let h = Tensor::cat(&[&front, &h.narrow(1, half, channels - half)?], 1)?;
        Ok((h, fourier_filter(&skip, s)?))
    }
}

/// ComfyUI's `Fourier_filter(x, threshold=1, scale)`: after `fftshift`, the 2x2 block at the
/// centre of the spectrum is multiplied by `scale`. Those are the frequencies {0, -1} on each
/// axis, so the result is `x + (scale - 1) * P(x)`, with `P` the real part of the inverse
/// transform of just those four coefficients, computed here with 2-row DFT matrices (in f32,
/// like torch's `fftn(x.float())`).
pub fn fourier_filter(x: &Tensor, scale: f64) -> Result<Tensor> {
    if scale == 1.0 {
        return Ok(x.clone());
    }
    let (b, c, h, w) = x.dims4()?;
    let device = x.device();
    let xf = x.to_dtype(DType::F32)?.reshape((b * c, h, w))?;
    let (cy, sy) = dft_rows(h, device)?; // [2, H]
    let (cx, sx) = dft_rows(w, device)?; // [2, W]
    let bc = b * c;
    let batch = |m: &Tensor| {
        m.unsqueeze(0)?
            .broadcast_as((bc, m.dim(0)?, m.dim(1)?))?
            .contiguous()
    };
    let (cy_b, sy_b, cx_b, sx_b) = (batch(&cy)?, batch(&sy)?, batch(&cx)?, batch(&sx)?);
    let (cx_t, sx_t) = (cx_b.transpose(1, 2)?, sx_b.transpose(1, 2)?);
    // Forward: A = x (Cx - i Sx)^T, X = (Cy - i Sy) A.
    let a_re = xf.matmul(&cx_t)?; // [BC, H, 2]
    let a_im = xf.matmul(&sx_t)?.neg()?;
    let x_re = (cy_b.matmul(&a_re)? + sy_b.matmul(&a_im)?)?; // [BC, 2, 2]
    let x_im = (cy_b.matmul(&a_im)? - sy_b.matmul(&a_re)?)?;
    // Inverse of those coefficients, real part: Cy^T (X_re Cx - X_im Sx) - Sy^T (X_re Sx + X_im Cx).
    let b_re = (x_re.matmul(&cx_b)? - x_im.matmul(&sx_b)?)?; // [BC, 2, W]
    let b_im = (x_re.matmul(&sx_b)? + x_im.matmul(&cx_b)?)?;
    let low = (cy_b.transpose(1, 2)?.matmul(&b_re)? - sy_b.transpose(1, 2)?.matmul(&b_im)?)?;
    let low = low.affine((scale - 1.0) / (h * w) as f64, 0.0)?;
    (xf + low)?.reshape((b, c, h, w))?.to_dtype(x.dtype())
}

/// cos and sin rows of the DFT at the frequencies ComfyUI's mask covers on an axis of length `n`
/// (0 and -1; a length-1 axis has only 0, and counting it twice would double it).
fn dft_rows(n: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let freqs: &[f64] = if n == 1 { &[0.0] } else { &[0.0, -1.0] };
    let mut cos = Vec::with_capacity(freqs.len() * n);
    let mut sin = Vec::with_capacity(freqs.len() * n);
    for k in freqs {
        for i in 0..n {
            let theta = 2.0 * std::f64::consts::PI * k * i as f64 / n as f64;
            cos.push(theta.cos() as f32);
            sin.push(theta.sin() as f32);
        }
    }
    let rows = freqs.len();
    Ok((
        Tensor::from_vec(cos, (rows, n), device)?,
        Tensor::from_vec(sin, (rows, n), device)?,
    ))
}
