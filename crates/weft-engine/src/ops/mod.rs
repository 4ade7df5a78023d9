//! Weft's own versions of the tensor ops where candle's generic CPU op was measurably slow at the
//! SD shapes (`benches/ops.rs`): convolution, GroupNorm(+SiLU) and attention. Each op runs its own
//! kernel on the CPU in f32 and falls back to candle's op on every other device and dtype, so
//! CUDA and Metal builds go through candle as before. Each file says what candle's op did wrong.

pub mod attention;
pub mod cast;
pub mod conv;
pub mod layers;
pub mod math;
pub mod norm;

/// The largest absolute difference between two tensors, for the ops' tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}
