//! Element-wise maths for the CPU kernels: an exp that vectorises, and softmax rows built on it
//! (GroupNorm's fused SiLU uses it too).
//!
//! Why our own: `f32::exp` is a libm call per element, which no loop around it can vectorise;
//! softmax over the UNet's 4096x4096 attention scores and the SiLU after every GroupNorm spent
//! most of their time there. [`exp`] is plain arithmetic (Cephes' `expf`: range reduction by
//! ln 2, a degree-5 polynomial, the exponent written into the float's bits), about 1e-7 relative
//! error, and the loops run under [`pulp::Arch::dispatch`], which compiles them for the widest
//! vector instructions the CPU has. No fused multiply-add is introduced implicitly, so every
//! instruction set gives the same bits ([`exp_fused`] asks for them where its callers are
//! compiled with FMA).

/// e^x for x in [-87, 88] (inputs outside are clamped, giving about 1.6e-38 and 1.65e38).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with::<false>(x)
}

/// [`exp`] with its multiply-adds fused: a quarter fewer instructions for the attention's
/// softmax, which computes one per score. The same bits on every CPU (a fused multiply-add is
/// rounded once everywhere), but only fast where the loop is compiled with FMA, as a pulp
/// `WithSimd` task is on AVX2, AVX-512 and NEON; elsewhere each is a libm call.
#[inline(always)]
pub fn exp_fused(x: f32) -> f32 {
    exp_with::<true>(x)
}

/// `a * b + c`, rounded once when `FUSED`.
#[inline(always)]
fn mul_add<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn exp_with<const FUSED: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let fma = mul_add::<FUSED>;
    let x = x.clamp(-87.0, 88.0);
    let shifted = fma(x, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = fma(n, -LN2_LO, fma(n, -LN2_HI, x));
    let mut p = 1.987_569_1e-4;
    p = fma(p, r, 1.398_199_9e-3);
    p = fma(p, r, 8.333_452e-3);
    p = fma(p, r, 4.166_579_6e-2);
    p = fma(p, r, 1.666_666_5e-1);
    p = fma(p, r, 5.000_000_1e-1);
    let y = fma(p * r, r, r) + 1.0;
    let exponent = (shifted.to_bits() as i32) - 0x4B40_0000;
    y * f32::from_bits(((exponent + 127) as u32) << 23)
}

/// The exact (erf) GELU, `x/2 (1 + erf(x/√2))`, as plain arithmetic that vectorises (libm's
/// `erff` is a call per element). `erfc(|x|/√2)` comes from Numerical Recipes' Chebyshev fit
/// (`erfcc`, fractional error under 1.2e-7) on [`exp`]; the negative side is `x/2 erfc`, so its
/// small tail keeps its relative precision instead of cancelling in `1 + erf`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77;
    p = p * t - 0.822_152_23;
    p = p * t + 1.488_515_9;
    p = p * t - 1.135_203_98;
    p = p * t + 0.278_868_07;
    p = p * t - 0.186_288_06;
    p = p * t + 0.096_784_18;
    p = p * t + 0.374_091_96;
    p = p * t + 1.000_023_7;
    p = p * t - 1.265_512_2;
    let half_x_erfc = 0.5 * x * t * exp(p - z * z);
    if x >= 0.0 {
        x - half_x_erfc
    } else {
        half_x_erfc
    }
}

/// Softmax of each `len`-long row of `xs`, in place.
pub fn softmax_rows_in_place(xs: &mut [f32], len: usize) {
    if len == 0 {
        return;
    }
    pulp::Arch::new().dispatch(|| {
        for row in xs.chunks_exact_mut(len) {
            let max = lanes_max(row);
            let inv = 1.0 / exp_minus_sum::<false>(row, max);
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    })
}

/// Replaces every x of `xs` by e^(x - `shift`) and returns their sum, in one pass (sixteen
/// independent lanes so that it vectorises); `FUSED` picks [`exp_fused`] over [`exp`].
#[inline(always)]
pub(crate) fn exp_minus_sum<const FUSED: bool>(xs: &mut [f32], shift: f32) -> f32 {
    let exp = exp_with::<FUSED>;
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *x = exp(*x - shift);
            *lane += *x;
        }
    }
    let mut rest = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - shift);
        rest += *x;
    }
    lanes.iter().sum::<f32>() + rest
}

/// Largest value, sixteen independent lanes so that it vectorises.
#[inline(always)]
pub(crate) fn lanes_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    lanes.iter().fold(rest, |m, &v| m.max(v))
}

/// [`lanes_max`] inside a pulp `WithSimd` task (the attention's softmax, once per row of
/// scores): four vectors of maxima instead of one. `lanes_max`'s `f32::max` compiles to a max,
/// a NaN test and a blend per vector, each waiting on the last; `max_f32s` is the bare
/// instruction (`cargo bench --bench ops -- attention`, 4096 keys, 40 wide, alternating: f32
/// 278-292 -> 265-278 ms, bf16 210-211 -> 195-207 ms).
#[inline(always)]
pub(crate) fn row_max<S: pulp::Simd>(simd: S, xs: &[f32]) -> f32 {
    let (vectors, rest) = S::as_simd_f32s(xs);
    let mut acc = [simd.splat_f32s(f32::NEG_INFINITY); 4];
    let mut fours = vectors.chunks_exact(4);
    for four in &mut fours {
        for (a, &v) in acc.iter_mut().zip(four) {
            *a = simd.max_f32s(v, *a);
        }
    }
    for (a, &v) in acc.iter_mut().zip(fours.remainder()) {
        *a = simd.max_f32s(v, *a);
    }
    let [a, b, c, d] = acc;
    let max = simd.max_f32s(simd.max_f32s(a, b), simd.max_f32s(c, d));
    rest.iter()
        .fold(simd.reduce_max_f32s(max), |m, &v| m.max(v))
}

/// One block of a row's attention scores through the online softmax: `row` becomes
/// e^(x - max) for the running maximum `max`, updated, and `sum` gains their sum (an f32
/// multiply-add chain compiled for the task's vectors, [`exp_fused`]). Returns the factor the
/// row's earlier outputs are to be scaled by: 1 where the maximum stayed, as it mostly does past
/// a row's first blocks, without the scalar exp (a chain of some twenty dependent instructions
/// per row).
#[inline(always)]
pub(crate) fn online_softmax_block<S: pulp::Simd>(
    simd: S,
    row: &mut [f32],
    max: &mut f32,
    sum: &mut f32,
) -> f32 {
    let new = max.max(row_max(simd, row));
    let rescale = if new > *max { exp(*max - new) } else { 1.0 };
    *sum = *sum * rescale + exp_minus_sum::<true>(row, new);
    *max = new;
    rescale
}

/// `torch.round` of every element: halves go to the even neighbour (candle's `round` takes them
/// away from zero, which rounds a mask's 0.5 the other way). Computed in f32 on the host; the
/// result has `t`'s shape, dtype and device.
pub fn round_half_even(t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    let values: Vec<f32> = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::round_ties_even)
        .collect();
    candle_core::Tensor::from_vec(values, t.shape(), t.device())?.to_dtype(t.dtype())
}

#[cfg(test)]
mod tests {
    use crate::ops::math::{exp, exp_fused, gelu_erf, lanes_max, row_max, softmax_rows_in_place};

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        for exp in [exp, exp_fused] {
            let mut worst = 0f64;
            for i in -870_000..=880_000 {
                let x = i as f32 * 1e-4;
                let expected = f64::from(x).exp();
                let rel = ((f64::from(exp(x)) - expected) / expected).abs();
                worst = worst.max(rel);
            }
            assert!(worst < 3e-7, "worst relative error {worst}");
            assert!(exp(-1000.0) < 2e-38 && exp(-1000.0) >= 0.0);
            assert!(exp(1000.0).is_finite());
        }
    }

    #[test]
    fn row_max_finds_the_largest_value() {
        struct Max<'a>(&'a [f32]);
        impl pulp::WithSimd for Max<'_> {
            type Output = f32;
            fn with_simd<S: pulp::Simd>(self, simd: S) -> f32 {
                row_max(simd, self.0)
            }
        }
        for len in [1, 7, 15, 16, 17, 40, 63, 64, 77, 200, 256] {
            for at in 0..len {
                let mut xs: Vec<f32> = (0..len).map(|i| -((i * 7919 % 101) as f32)).collect();
                xs[at] = 3.5;
                assert_eq!(
                    pulp::Arch::new().dispatch(Max(&xs)),
                    3.5,
                    "len {len}, at {at}"
                );
                assert_eq!(lanes_max(&xs), 3.5);
            }
        }
    }

    #[test]
    fn gelu_erf_matches_candles_libm_form() {
        let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 2.5e-3).collect();
        let want = candle_core::Tensor::new(xs.as_slice(), &candle_core::Device::Cpu)
            .and_then(|t| t.gelu_erf())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap();
        for (&x, &w) in xs.iter().zip(&want) {
            let got = gelu_erf(x);
            assert!(
                (got - w).abs() <= 4e-7 * w.abs().max(1.0),
                "gelu({x}) = {got}, want {w}"
            );
        }
        assert!(gelu_erf(-200.0).abs() < 1e-30);
        assert_eq!(gelu_erf(200.0), 200.0);
        assert!(gelu_erf(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_matches_the_plain_formula() {
        let xs: Vec<f32> = (0..103).map(|i| (i as f32 - 51.0) * 0.37).collect();
        let mut soft = xs.clone();
        softmax_rows_in_place(&mut soft[..100], 25);
        for (row, out) in xs[..100].chunks(25).zip(soft.chunks(25)) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            for (&x, &y) in row.iter().zip(out) {
                assert!((y - (x - max).exp() / sum).abs() < 1e-6);
            }
        }
        assert_eq!(soft[100..], xs[100..]);
    }
}
