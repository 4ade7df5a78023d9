//! `x Wᵀ + b` in f32 on the CPU: one gemm call into an output that starts as the bias.
//!
//! Why not candle's matmul and broadcast add: candle zeroes the product's buffer with one
//! `memset` on the calling thread while the other cores wait, and then adds the bias in a
//! second pass that reads and writes the whole output again (1.5% of an f32 SD1.5 step between
//! them, perf). Here every core writes the bias rows into the fresh buffer and gemm adds the
//! product to them: one pass before the product instead of two, none of it on one thread. The
//! product is the same gemm call candle makes, so the sums are the same.
#![allow(unsafe_code)]

use candle_core::Result;
use gemm::Parallelism;
use rayon::prelude::*;

/// `x` (`rows x depth`, row-major) times `weight`ᵀ (`weight`: `out x depth`, row-major), plus
/// `bias` (`out` values, zeros where `None`): `rows x out`, row-major.
pub(crate) fn linear(
    x: &[f32],
    (rows, depth): (usize, usize),
    weight: &[f32],
    out: usize,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    if x.len() != rows * depth || weight.len() != out * depth {
        candle_core::bail!(
            "linear: {} inputs are not {rows} rows, or {} weights not {out} rows of {depth}",
            x.len(),
            weight.len()
        );
    }
    if bias.is_some_and(|b| b.len() != out) {
        candle_core::bail!(
            "linear: a bias of {} values for {out} outputs",
            bias.map_or(0, <[f32]>::len)
        );
    }
    let len = rows * out;
    let mut ys: Vec<f32> = Vec::with_capacity(len);
    if out > 0 {
        ys.spare_capacity_mut()[..len]
            .par_chunks_mut(out)
            .with_min_len(64)
            .for_each(|row| match bias {
                Some(bias) => row.iter_mut().zip(bias).for_each(|(y, &b)| {
                    y.write(b);
                }),
                None => row.iter_mut().for_each(|y| {
                    y.write(0.0);
                }),
            });
    }
    // SAFETY: the loop above wrote each of the `len` elements (`len` rows of `out`, or none).
    unsafe { ys.set_len(len) };
    if len == 0 || depth == 0 {
        return Ok(ys);
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: `ys` holds `rows x out` f32s (row stride `out`, column stride 1), `x` `rows x
    // depth` (strides `depth`, 1) and `weight` `out x depth` read as its transpose `depth x
    // out` (row stride 1, column stride `depth`), all checked above; gemm reads and writes
    // only inside those bounds, and `ys` is borrowed mutably for the call.
    unsafe {
        gemm::gemm(
            rows,
            out,
            depth,
            ys.as_mut_ptr(),
            1,
            out as isize,
            true,
            x.as_ptr(),
            1,
            depth as isize,
            weight.as_ptr(),
            depth as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(ys)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::linear;

    #[test]
    fn matches_candle_with_and_without_a_bias() {
        let dev = Device::Cpu;
        // A row count past gemm's threading threshold, and small odd ones.
        for (rows, depth, out) in [(1, 1, 1), (7, 13, 5), (300, 64, 48), (2048, 96, 160)] {
            let x = Tensor::randn(0f32, 1.0, (rows, depth), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out, depth), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out, &dev).unwrap();
            let product = x.matmul(&w.t().unwrap()).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (xs, ws, bs) = (flat(&x), flat(&w), flat(&b));
            for (bias, expected) in [
                (None, product.clone()),
                (Some(&bs[..]), product.broadcast_add(&b).unwrap()),
            ] {
                let got = linear(&xs, (rows, depth), &ws, out, bias).unwrap();
                let got = Tensor::from_vec(got, (rows, out), &dev).unwrap();
                let diff = crate::ops::max_abs_diff(&got, &expected);
                assert!(diff < 1e-4, "{rows}x{depth}x{out}: {diff}");
            }
        }
    }

    #[test]
    fn empty_and_mismatched_operands() {
        assert!(linear(&[], (0, 3), &[1.0; 6], 2, None).unwrap().is_empty());
        assert_eq!(linear(&[], (2, 0), &[], 3, None).unwrap(), vec![0.0; 6]);
        let err = linear(&[1.0; 6], (2, 3), &[1.0; 8], 2, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not 2 rows of 3"), "{err}");
        let err = linear(&[1.0; 6], (2, 3), &[1.0; 6], 2, Some(&[0.0]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bias of 1 values for 2 outputs"), "{err}");
    }
}
