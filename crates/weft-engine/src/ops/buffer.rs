//! The CPU buffers the ops' kernels read and write.
//!
//! Why: `vec![0f32; n]` zeroes a reused block with one `memset` on the calling thread while
//! every other core waits. In the f32 UNet step those waits were 2% of the time (perf, the
//! main thread's samples). [`zeros`] writes a large buffer's zeros on every core instead.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Below this many floats (1 MiB) a plain `vec!` is as fast: fanning out costs more.
const PARALLEL_FROM: usize = 1 << 18;

/// `n` zeros (`T::default()`); a large buffer is zeroed by every core.
pub(crate) fn zeros<T: Default + Clone + Send>(n: usize) -> Vec<T> {
    if n < PARALLEL_FROM {
        return vec![T::default(); n];
    }
    let mut out = Vec::with_capacity(n);
    // An indexed iterator: rayon writes each part in its place in the spare capacity.
    out.par_extend(rayon::iter::repeat_n(T::default(), n));
    out
}

/// A contiguous f32 tensor's elements, read in place; `op` names the op in the error.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op} needs contiguous tensors")))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// `f` of a CPU f32 tensor's elements, made contiguous first if need be; `op` names the op in
/// the error.
pub(crate) fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op} reads CPU tensors only");
    };
    Ok(f(contiguous_f32(cpu, layout, op)?))
}

#[cfg(test)]
mod tests {
    use super::zeros;

    #[test]
    fn zeros_are_zeros_at_every_size() {
        for n in [0, 1, 1000, (1 << 18) - 1, 1 << 18, 3 << 19] {
            let v = zeros::<f32>(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0), "{n}");
        }
    }
}
