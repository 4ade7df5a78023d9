//! bf16 matrix products on the CPU with f32 accumulation, for models whose weights are kept in
//! bf16 (`--dtype bf16`).
//!
//! Why our own: neither candle nor gemm 0.19 has a bf16 kernel (candle's CPU bf16 matmul widens
//! both operands to f32, multiplies, and rounds the product back to bf16), and the crates that do
//! either take and return bf16 only or are part of a whole inference framework. Here each
//! operand is packed straight from its stored precision (f32 activations are rounded to bf16,
//! nearest-even, while packing; bf16 weights are copied) into panels of bf16 pairs, the layout
//! AVX512_BF16's `vdpbf16ps` reads: one instruction multiplies 16 pairs of one row of A by 16
//! pairs of B's columns and adds both products to 16 f32 accumulators. The product comes out in
//! f32, so the rest of the model (norms, softmax, residuals) stays f32, as under PyTorch's
//! autocast. A layer packs its weight once ([`Packed`], kept by the layer) and only the
//! activations per call.
//!
//! Blocking (Goto's): the micro-kernel keeps an `MR x NR` tile of C in 28 of the 32 zmm
//! registers while it walks `KC` pairs of one A panel and one B panel; C is split into tiles of
//! `MC_PANELS x NC_PANELS` micro-tiles which the rayon threads share, each tile written by one
//! thread only. Runs where [`available`] says so (AVX-512F/BW and AVX512_BF16, checked at run
//! time); callers keep their f32 path otherwise. AMX is not used: its intrinsics and even its
//! feature detection are unstable in Rust 1.95.
//!
//! This is the one module of the crate with `unsafe` (SIMD intrinsics and the disjoint writes
//! into C); each block says why it holds.
#![allow(unsafe_code)]

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use half::bf16;
use rayon::prelude::*;

/// Rows of A per micro-tile.
const MR: usize = 14;
/// zmm registers (16 f32 lanes each) across a micro-tile's columns.
const NV: usize = 2;
/// Columns of B per micro-tile.
const NR: usize = 16 * NV;
/// k pairs per block: one B micro-panel (KC * NR * 4 bytes = 16 KiB) stays in L1.
const KC: usize = 128;
/// A panels per tile: the tile's A block (MC_PANELS * MR rows * KC pairs * 4 = 56 KiB) in L2.
const MC_PANELS: usize = 8;
/// B panels per tile.
const NC_PANELS: usize = 8;

/// Whether this CPU runs the bf16 kernel (AVX-512F, AVX-512BW and AVX512_BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::env::var_os("WEFT_NO_BF16_GEMM").is_none()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether a layer with weights `weight` should run `xs` through this module: both on the CPU,
/// f32 activations, bf16 weights, and a CPU with the instructions.
pub fn applies(xs: &Tensor, weight: &Tensor) -> bool {
    matches!(xs.device(), Device::Cpu)
        && matches!(weight.device(), Device::Cpu)
        && xs.dtype() == DType::F32
        && weight.dtype() == DType::BF16
        && available()
}

/// One operand packed for the kernel: its `lines` (rows of A, or columns of B) in panels of
/// `width` lines, each panel holding, pair by pair along k, `width` u32 words of two bf16
/// (the even k in the low half), zero past the last line and past an odd k.
#[derive(Debug, Clone)]
pub struct Packed {
    data: Vec<u32>,
    lines: usize,
    depth: usize,
    width: usize,
}

impl Packed {
    fn pairs(&self) -> usize {
        self.depth.div_ceil(2)
    }

    fn panels(&self) -> usize {
        self.lines.div_ceil(self.width)
    }

    /// The words of panel `panel` from pair `first` on.
    fn panel_from(&self, panel: usize, first: usize) -> &[u32] {
        let len = self.pairs() * self.width;
        &self.data[panel * len + first * self.width..(panel + 1) * len]
    }

    /// k, the length each line was packed with.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The number of lines (rows of A, columns of B).
    pub fn lines(&self) -> usize {
        self.lines
    }
}

/// The stored elements of an operand.
#[derive(Clone, Copy)]
enum Elems<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

/// A strided operand seen as `lines` lines of `depth` elements: element `(i, kk)` is at
/// `i * line_stride + kk * depth_stride` in `data`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: Elems<'a>,
    lines: usize,
    depth: usize,
    line_stride: usize,
    depth_stride: usize,
}

impl View<'_> {
    /// Element `(line, kk)` as bf16 bits; 0 past the depth (the odd k's partner).
    fn bits(&self, line: usize, kk: usize) -> u16 {
        if kk >= self.depth {
            return 0;
        }
        let at = line * self.line_stride + kk * self.depth_stride;
        match self.data {
            Elems::F32(d) => bf16::from_f32(d[at]).to_bits(),
            Elems::Bf16(d) => d[at].to_bits(),
        }
    }
}

/// Reads a 2-D CPU tensor's elements as a [`View`]: as A (`lines` = rows, `depth` = columns)
/// or, `as_rhs`, as B (`lines` = columns, `depth` = rows).
fn with_view<R>(t: &Tensor, as_rhs: bool, f: impl FnOnce(View) -> R) -> Result<R> {
    let (rows, cols) = t.dims2()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("the bf16 matmul runs on the CPU only");
    };
    let start = layout.start_offset();
    let data = match cpu {
        CpuStorage::F32(v) => Elems::F32(&v[start..]),
        CpuStorage::BF16(v) => Elems::Bf16(&v[start..]),
        _ => candle_core::bail!("the bf16 matmul takes f32 or bf16, not {:?}", t.dtype()),
    };
    let (row_stride, col_stride) = match layout.stride() {
        [r, c] => (*r, *c),
        _ => candle_core::bail!("the bf16 matmul takes 2-D operands"),
    };
    let view = if as_rhs {
        View {
            data,
            lines: cols,
            depth: rows,
            line_stride: col_stride,
            depth_stride: row_stride,
        }
    } else {
        View {
            data,
            lines: rows,
            depth: cols,
            line_stride: row_stride,
            depth_stride: col_stride,
        }
    };
    Ok(f(view))
}

/// `t` `[m, k]` packed as the left operand (a convolution's weight).
pub fn pack_lhs(t: &Tensor) -> Result<Packed> {
    with_view(t, false, |v| pack(v, MR))
}

/// `t` `[k, n]` packed as the right operand (a linear layer's weight, transposed).
pub fn pack_rhs(t: &Tensor) -> Result<Packed> {
    with_view(t, true, |v| pack(v, NR))
}

/// `a` `[m, k]` (packed by [`pack_lhs`]) times `b` `[k, n]` (f32 or bf16, any strides): `[m, n]`
/// in f32.
pub fn matmul_packed_lhs(a: &Packed, b: &Tensor) -> Result<Tensor> {
    let b = with_view(b, true, |v| pack(v, NR))?;
    product(a, &b)
}

/// `a` `[m, k]` (f32 or bf16, any strides) times `b` `[k, n]` (packed by [`pack_rhs`]): `[m, n]`
/// in f32.
pub fn matmul_packed_rhs(a: &Tensor, b: &Packed) -> Result<Tensor> {
    let a = with_view(a, false, |v| pack(v, MR))?;
    product(&a, b)
}

/// `a` `[m, k]` times `b` `[k, n]`, each f32 or bf16 with any strides: `[m, n]` in f32, both
/// rounded to bf16 first. Without the instructions, both widened to f32 and multiplied by
/// candle.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !available() || !matches!(a.device(), Device::Cpu) {
        let a = crate::ops::cast::to_dtype(a, DType::F32)?;
        let b = crate::ops::cast::to_dtype(b, DType::F32)?;
        return a.matmul(&b);
    }
    let a = with_view(a, false, |v| pack(v, MR))?;
    matmul_packed_lhs(&a, b)
}

fn product(a: &Packed, b: &Packed) -> Result<Tensor> {
    if a.depth != b.depth {
        candle_core::bail!(
            "bf16 matmul: the left operand has {} columns, the right {} rows",
            a.depth,
            b.depth
        );
    }
    let (m, n) = (a.lines, b.lines);
    let mut c = vec![0f32; m * n];
    gemm(a, b, &mut c);
    Tensor::from_vec(c, (m, n), &Device::Cpu)
}

/// Packs `view` in panels of `width` lines, the panels in parallel.
fn pack(view: View, width: usize) -> Packed {
    let pairs = view.depth.div_ceil(2);
    let panels = view.lines.div_ceil(width);
    let mut data = vec![0u32; panels * pairs * width];
    if pairs > 0 {
        data.par_chunks_mut(pairs * width)
            .enumerate()
            .for_each(|(panel, dst)| pack_panel(&view, panel * width, width, dst));
    }
    Packed {
        data,
        lines: view.lines,
        depth: view.depth,
        width,
    }
}

/// Packs lines `first..first + width` (those that exist) into `dst` (zero on entry).
fn pack_panel(view: &View, first: usize, width: usize, dst: &mut [u32]) {
    let lines = width.min(view.lines - first);
    let pairs = view.depth.div_ceil(2);
    #[cfg(target_arch = "x86_64")]
    if available() {
        if view.depth_stride == 1 {
            // Pairs lie next to each other (A row-major, a linear weight): line by line.
            for l in 0..lines {
                let start = (first + l) * view.line_stride;
                match view.data {
                    Elems::F32(d) => {
                        let line = &d[start..start + view.depth];
                        // SAFETY: `available()` checked AVX-512F/BW/BF16 on this CPU.
                        unsafe { simd::pack_line_f32(line, l, width, dst) }
                    }
                    Elems::Bf16(d) => {
                        let line = &d[start..start + view.depth];
                        for (p, pair) in line.chunks(2).enumerate() {
                            let hi = pair.get(1).map_or(0, |v| v.to_bits());
                            dst[p * width + l] = word(pair[0].to_bits(), hi);
                        }
                    }
                }
            }
            return;
        }
        if view.line_stride == 1 && lines == width && width % 16 == 0 {
            // Lines lie next to each other (B row-major: im2col columns): two k rows at a
            // time, interleaved.
            let rows = |kk: usize| kk * view.depth_stride + first..kk * view.depth_stride + first + width;
            for p in 0..pairs {
                let out = &mut dst[p * width..(p + 1) * width];
                let (k0, k1) = (2 * p, 2 * p + 1);
                match view.data {
                    Elems::F32(d) => {
                        let hi = (k1 < view.depth).then(|| &d[rows(k1)]);
                        // SAFETY: as above.
                        unsafe { simd::interleave_f32(&d[rows(k0)], hi, out) }
                    }
                    Elems::Bf16(d) => {
                        let hi = (k1 < view.depth).then(|| &d[rows(k1)]);
                        for (l, o) in out.iter_mut().enumerate() {
                            *o = word(d[rows(k0)][l].to_bits(), hi.map_or(0, |h| h[l].to_bits()));
                        }
                    }
                }
            }
            return;
        }
    }
    for l in 0..lines {
        for p in 0..pairs {
            dst[p * width + l] = word(view.bits(first + l, 2 * p), view.bits(first + l, 2 * p + 1));
        }
    }
}

/// Two bf16 as one kernel word, `lo` (the even k) in the low half.
fn word(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

/// A raw pointer to C that the tile tasks share; each writes only its own tile.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);

// SAFETY: the tasks that receive it write disjoint tiles of C (see `gemm`), and C outlives them
// (the parallel loop returns before `gemm` does).
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

impl CPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `c` (`a.lines x b.lines`, row-major) = A B.
fn gemm(a: &Packed, b: &Packed, c: &mut [f32]) {
    let (m, n, pairs) = (a.lines, b.lines, a.pairs());
    assert_eq!(c.len(), m * n, "C has room for the product");
    assert!(a.width == MR && b.width == NR && b.pairs() == pairs);
    if pairs == 0 || m == 0 || n == 0 {
        c.fill(0.0);
        return;
    }
    let (a_panels, b_panels) = (a.panels(), b.panels());
    let tiles_m = a_panels.div_ceil(MC_PANELS);
    let tiles_n = b_panels.div_ceil(NC_PANELS);
    let c_ptr = CPtr(c.as_mut_ptr());
    (0..tiles_m * tiles_n).into_par_iter().for_each(|tile| {
        let (tm, tn) = (tile / tiles_n, tile % tiles_n);
        let a_range = tm * MC_PANELS..((tm + 1) * MC_PANELS).min(a_panels);
        let b_range = tn * NC_PANELS..((tn + 1) * NC_PANELS).min(b_panels);
        for first in (0..pairs).step_by(KC) {
            let depth = KC.min(pairs - first);
            for jp in b_range.clone() {
                let b_panel = b.panel_from(jp, first);
                let cols = NR.min(n - jp * NR);
                for ip in a_range.clone() {
                    let a_panel = a.panel_from(ip, first);
                    let rows = MR.min(m - ip * MR);
                    // SAFETY: the micro-tile at (ip * MR, jp * NR), `rows x cols`, lies inside C
                    // (`rows`, `cols` are clipped to m, n) and belongs to this task's tile only;
                    // the panels hold at least `depth` pairs past `first`; `available()` held
                    // when the operands were packed for this kernel.
                    unsafe {
                        let c_tile = c_ptr.get().add(ip * MR * n + jp * NR);
                        simd::kernel(depth, a_panel, b_panel, c_tile, n, rows, cols, first > 0)
                    }
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{MR, NR, NV};

    /// Packs one line of `depth` f32 (pairs adjacent) as line `l` of a panel `width` wide.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `dst` holds `depth.div_ceil(2) * width` words.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pack_line_f32(line: &[f32], l: usize, width: usize, dst: &mut [u32]) {
        let mut p = 0;
        while 2 * p + 32 <= line.len() {
            // SAFETY: 32 floats from 2p lie inside `line` (loop condition).
            let words: [u32; 16] = unsafe {
                let lo = _mm512_loadu_ps(line.as_ptr().add(2 * p));
                let hi = _mm512_loadu_ps(line.as_ptr().add(2 * p + 16));
                std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo))
            };
            for (j, w) in words.into_iter().enumerate() {
                dst[(p + j) * width + l] = w;
            }
            p += 16;
        }
        for (q, pair) in line[2 * p..].chunks(2).enumerate() {
            let lo = half::bf16::from_f32(pair[0]).to_bits();
            let hi = pair.get(1).map_or(0, |&v| half::bf16::from_f32(v).to_bits());
            dst[(p + q) * width + l] = super::word(lo, hi);
        }
    }

    /// `out[l]` = the pair (`lo[l]`, `hi[l]`) rounded to bf16 (`hi` zero when `None`).
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW and AVX512_BF16; all slices are as long as `out`, a multiple of 16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn interleave_f32(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
        // 16-bit lane 2j takes lo[j] (lane j of the converted vector), 2j + 1 takes hi[j]
        // (lane 16 + j).
        let index: [u16; 32] = std::array::from_fn(|j| ((j % 2) * 16 + j / 2) as u16);
        assert!(lo.len() >= out.len() && hi.is_none_or(|h| h.len() >= out.len()));
        // SAFETY: `index` is 64 bytes.
        let index = unsafe { _mm512_loadu_si512(index.as_ptr().cast()) };
        for g in (0..out.len()).step_by(16) {
            // SAFETY: g + 16 <= out.len() <= the lengths of lo and hi (out.len() % 16 == 0).
            unsafe {
                let l = _mm512_loadu_ps(lo.as_ptr().add(g));
                let h = match hi {
                    Some(h) => _mm512_loadu_ps(h.as_ptr().add(g)),
                    None => _mm512_setzero_ps(),
                };
                let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(h, l));
                let words = _mm512_permutexvar_epi16(index, both);
                _mm512_storeu_si512(out.as_mut_ptr().add(g).cast(), words);
            }
        }
    }

    /// C[..rows, ..cols] (+)= A B over `depth` pairs of one A panel and one B panel; C's rows
    /// are `ldc` apart; `accumulate` adds to C instead of overwriting it.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `a` and `b` hold `depth` pairs of a panel;
    /// `c` points to `rows x cols` writable floats, rows `ldc` apart; rows <= MR, cols <= NR.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        depth: usize,
        a: &[u32],
        b: &[u32],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        assert!(a.len() >= depth * MR && b.len() >= depth * NR);
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for p in 0..depth {
            // SAFETY: pair p of each panel is inside it (asserted above).
            unsafe {
                let mut bv = [_mm512_setzero_si512(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_loadu_si512(b.add(p * NR + v * 16).cast());
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let av: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + r) as i32));
                    for (x, bx) in row.iter_mut().zip(bv) {
                        *x = _mm512_dpbf16_ps(*x, av, std::mem::transmute::<__m512i, __m512bh>(bx));
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate().take(rows) {
            for (v, &x) in row.iter().enumerate() {
                let from = v * 16;
                if from >= cols {
                    break;
                }
                let mask: __mmask16 = if cols - from >= 16 {
                    0xffff
                } else {
                    (1u16 << (cols - from)) - 1
                };
                // SAFETY: the masked lanes are columns < cols of row r < rows.
                unsafe {
                    let at = c.add(r * ldc + from);
                    let x = if accumulate {
                        _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, at))
                    } else {
                        x
                    };
                    _mm512_mask_storeu_ps(at, mask, x);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    pub(super) unsafe fn pack_line_f32(_: &[f32], _: usize, _: usize, _: &mut [u32]) {
        unreachable!("available() is false off x86_64")
    }
    pub(super) unsafe fn interleave_f32(_: &[f32], _: Option<&[f32]>, _: &mut [u32]) {
        unreachable!("available() is false off x86_64")
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        _: usize,
        _: &[u32],
        _: &[u32],
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: bool,
    ) {
        unreachable!("available() is false off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// The f32 product of the operands rounded to bf16: what the kernel computes up to f32
    /// summation order.
    fn reference(a: &Tensor, b: &Tensor) -> Tensor {
        let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        round(a).matmul(&round(b)).unwrap()
    }

    fn check(m: usize, k: usize, n: usize) {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
        let expected = reference(&a, &b);
        let exact = a.matmul(&b).unwrap();
        // f32 activations times bf16 weights, both layouts; transposed (strided) operands.
        let cases = [
            matmul(&a, &b).unwrap(),
            matmul_packed_lhs(&pack_lhs(&a.to_dtype(DType::BF16).unwrap()).unwrap(), &b).unwrap(),
            matmul_packed_rhs(&a, &pack_rhs(&b.to_dtype(DType::BF16).unwrap()).unwrap()).unwrap(),
            matmul(&a.t().unwrap().contiguous().unwrap().t().unwrap(), &b.t().unwrap().contiguous().unwrap().t().unwrap()).unwrap(),
            matmul(&a, &b.to_dtype(DType::BF16).unwrap().t().unwrap().contiguous().unwrap().t().unwrap()).unwrap(),
        ];
        // Summation order only: relative to the size of the sum of |products|, ~k * 2^-24.
        let scale = (k as f32).sqrt().max(1.0);
        for got in &cases {
            assert_eq!(got.dims(), &[m, n]);
            let diff = crate::ops::max_abs_diff(got, &expected);
            assert!(diff < 1e-4 * scale, "{m}x{k}x{n}: {diff} from the bf16-rounded product");
            // And from the exact f32 product, by bf16 rounding (2^-8 relative per operand).
            let diff = crate::ops::max_abs_diff(got, &exact);
            assert!(diff < 0.02 * scale, "{m}x{k}x{n}: {diff} from the f32 product");
        }
    }

    #[test]
    fn odd_shapes_match_the_rounded_f32_product() {
        if !available() {
            eprintln!("no AVX512_BF16 here: only the fallback is tested");
        }
        for (m, k, n) in [
            (1, 1, 1),
            (14, 2, 32),
            (15, 3, 33),
            (13, 31, 31),
            (29, 33, 65),
            (3, 257, 5),
            (113, 300, 257),
            (40, 513, 96),
        ] {
            check(m, k, n);
        }
    }

    #[test]
    fn empty_depth_gives_zeros() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((3, 0), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((0, 4), DType::F32, &dev).unwrap();
        let c = matmul(&a, &b).unwrap();
        assert_eq!(c.dims(), &[3, 4]);
        assert_eq!(c.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
