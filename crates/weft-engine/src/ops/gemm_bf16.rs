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
//! Two kernels, picked at run time ([`available`]; callers keep their f32 path where neither
//! runs):
//! - AMX-BF16 (Sapphire Rapids and later): `tdpbf16ps` multiplies a 16x32 bf16 tile of A by a
//!   32x16 tile of B into a 16x16 f32 tile; a 32x32 block of C stays in four tile registers over
//!   the whole of k. A is packed row-major (a tile is 16 rows of 16 pairs), B in the panels
//!   above (a tile is 16 pairs of one half-panel), k padded to whole tiles. Its intrinsics (and
//!   its feature detection) are unstable in Rust 1.95, so the instructions are `asm!`, the
//!   feature is read with CPUID, and the kernel's permission to use tile state is asked for
//!   once with `arch_prctl(ARCH_REQ_XCOMP_PERM)`.
//! - AVX512_BF16: the micro-kernel keeps an `MR x NR` tile of C in 28 of the 32 zmm registers
//!   while it walks `KC` pairs of one A panel and one B panel. On Sapphire Rapids `vdpbf16ps`
//!   issues at about half the rate of f32 FMAs (measured), so there it is slower than the f32
//!   path and only AMX pays; on Zen 4 it runs at twice the f32 rate.
//!
//! Either way C is split into tiles (a task's chunk of A's rows by a group of B panels) which
//! the rayon threads share, each summed by one thread in passes over k ([`sum_tile`]) into a
//! buffer of its own and written once. A convolution's tasks pack their own B panels straight
//! from the image, a linear layer's their own rows of A. The AVX512_BF16 kernel has an f32 twin
//! (`vfmadd` on f32 words in the same panels) that only [`crate::ops::winograd`] uses.
//!
//! With `allocator.rs`, the crate's only module with `unsafe` (SIMD intrinsics, AMX `asm!` and the
//! disjoint writes into C); each block says why it holds.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::ops::buffer;

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

/// Rows of C per AMX block (two tiles).
const AMX_ROWS: usize = 32;
/// k pairs per AMX tile.
const AMX_PAIRS: usize = 16;

/// The kernel an operand is packed for: the bf16 kernel the CPU runs, or (for
/// [`pack_lhs_stack`] and [`pack_rhs_f32`] only) the f32 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Amx,
    Avx512,
    /// AVX-512F multiply-adds on f32 words, the AVX512_BF16 kernel's blocking and tasks
    /// (Winograd's f32 products, [`crate::ops::winograd`]).
    F32,
}

/// The best kernel this CPU runs: AMX-BF16 (with AVX512_BF16 for the packing), else
/// AVX512_BF16, else none. `WEFT_BF16_GEMM=avx512` skips AMX; `=off` turns both off.
fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let choice = std::env::var("WEFT_BF16_GEMM").unwrap_or_default();
            let avx512 = choice != "off"
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16");
            match () {
                _ if !avx512 => None,
                _ if choice != "avx512" && amx::enable() => Some(Isa::Amx),
                _ => Some(Isa::Avx512),
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Set by [`enable`].
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets layers with bf16 weights multiply through this module (the server does so for an
/// explicit `--dtype bf16` on a CPU where the kernel [`outruns_f32`]; `WEFT_BF16_GEMM=on`, `amx`
/// or `avx512` does too, on any CPU with the instructions). Off by
/// default because each layer then keeps a packed copy of its weights beside the stored one
/// (+1.7 GB for SD1.5), which the model manager's budget does not count yet: a checkpoint that
/// merely happens to be stored in bf16 must not grow by half.
pub fn enable() {
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
thread_local! {
    static TEST_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`enable`] for the calling thread only, so the crate's bf16 tests use the kernels without
/// changing what other tests running beside them compute.
#[cfg(test)]
pub(crate) fn enable_in_this_test() {
    TEST_THREAD.with(|t| t.set(true));
}

fn enabled() -> bool {
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    #[cfg(test)]
    if TEST_THREAD.with(|t| t.get()) {
        return true;
    }
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
        || *FROM_ENV.get_or_init(|| {
            matches!(
                std::env::var("WEFT_BF16_GEMM").as_deref(),
                Ok("on" | "amx" | "avx512")
            )
        })
}

/// Whether layers with bf16 weights multiply here: [`enable`]d, on a CPU with AMX-BF16 or
/// AVX512_BF16.
pub fn available() -> bool {
    enabled() && isa().is_some()
}

/// Whether this CPU's bf16 kernel outruns its f32 arithmetic, so that `--dtype bf16` should
/// [`enable`] it: AMX always; AVX512_BF16 everywhere but on Intel's cores. Those (Cooper Lake,
/// Sapphire, Emerald and Granite Rapids) issue `vdpbf16ps` on one port and 512-bit f32 FMAs on
/// two, so the bf16 kernel does half the f32 rate: on an Emerald Rapids VM without AMX, 120-137
/// GFLOP/s against gemm's 165-245 in f32 at the UNet's shapes (`--bench gemm_bf16`), and a bf16
/// UNet step took 13.5 s against 9.7-11.9 s with the weights widened per layer instead. Zen 4
/// runs it at twice its f32 rate. `WEFT_BF16_GEMM=avx512` still forces the kernel.
pub fn outruns_f32() -> bool {
    match isa() {
        Some(Isa::Amx) => true,
        Some(Isa::Avx512) => !intel(),
        Some(Isa::F32) | None => false,
    }
}

/// Whether CPUID's vendor string (leaf 0: EBX, EDX, ECX) is Intel's.
fn intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 0 exists on every x86_64 CPU.
        let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
        let vendor = [leaf.ebx, leaf.edx, leaf.ecx].map(u32::to_le_bytes);
        vendor.concat() == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The kernel in use, for benchmarks' headers: "amx", "avx512bf16" or "none".
pub fn kernel_name() -> &'static str {
    match isa() {
        Some(Isa::Amx) => "amx",
        Some(Isa::Avx512) => "avx512bf16",
        Some(Isa::F32) | None => "none",
    }
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
/// (the even k in the low half), zero past the last line and past an odd k. For AMX, A's
/// panels are single rows (so A is row-major), k is padded to whole tiles and A's rows to
/// whole blocks and put in tile order ([`amx_tile_order`]).
#[derive(Clone)]
pub struct Packed {
    data: Vec<u32>,
    lines: usize,
    depth: usize,
    width: usize,
    /// Pairs per line, padding included.
    pairs: usize,
    isa: Isa,
}

/// Which operand a [`Packed`] is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Lhs,
    Rhs,
}

impl Packed {
    /// Pairs per line, padding included.
    pub(crate) fn pairs(&self) -> usize {
        self.pairs
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

/// A layer's weight packed for the kernel on first use and kept (shared by the layer's clones).
/// It is a second copy of the weight: a bf16 UNet holds 1.7 GB of panels beside its 1.7 GB of
/// weights, which buys not repacking every weight at every step. `T` is [`Packed`], or another
/// packing of it (a convolution's Winograd transform).
pub struct PackedWeight<T = Packed>(std::sync::Arc<std::sync::OnceLock<T>>);

impl<T> Clone for PackedWeight<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for PackedWeight<T> {
    fn default() -> Self {
        Self(Default::default())
    }
}

impl<T> PackedWeight<T> {
    /// The packed weight, packing it with `pack` on first use.
    pub fn get_or_pack(&self, pack: impl FnOnce() -> Result<T>) -> Result<&T> {
        if let Some(packed) = self.0.get() {
            return Ok(packed);
        }
        let packed = pack()?;
        Ok(self.0.get_or_init(|| packed))
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for PackedWeight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(p) => write!(f, "PackedWeight({p:?})"),
            None => f.write_str("PackedWeight(not yet)"),
        }
    }
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.lines, self.depth)
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

/// The kernel in use, or an error for the packing entry points (callers check [`applies`]).
fn isa_or_err() -> Result<Isa> {
    isa().ok_or_else(|| candle_core::Error::Msg("no bf16 kernel on this CPU".into()))
}

/// `t` `[m, k]` packed as the left operand (a convolution's weight).
pub fn pack_lhs(t: &Tensor) -> Result<Packed> {
    let isa = isa_or_err()?;
    with_view(t, false, |v| pack(v, Role::Lhs, isa))
}

/// Whether [`pack_rhs_f32`] and [`pack_lhs_stack`] can use the f32 kernel: a CPU with
/// AVX-512F. `WEFT_F32_KERNEL=off` says no.
pub fn f32_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::env::var("WEFT_F32_KERNEL").as_deref() != Ok("off")
                && is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `t` `[k, n]` (f32 or bf16) packed as the right operand of the f32 kernel.
pub fn pack_rhs_f32(t: &Tensor) -> Result<Packed> {
    if !f32_available() {
        candle_core::bail!("no AVX-512F on this CPU for the f32 kernel");
    }
    with_view(t, true, |v| pack(v, Role::Rhs, Isa::F32))
}

/// `t` `[k, n]` packed as the right operand (a linear layer's weight, transposed).
pub fn pack_rhs(t: &Tensor) -> Result<Packed> {
    let isa = isa_or_err()?;
    with_view(t, true, |v| pack(v, Role::Rhs, isa))
}

/// `a` `[m, k]` (packed by [`pack_lhs`]) times `b` `[k, n]` (f32 or bf16, any strides): `[m, n]`
/// in f32.
pub fn matmul_packed_lhs(a: &Packed, b: &Tensor) -> Result<Tensor> {
    let b = with_view(b, true, |v| pack(v, Role::Rhs, a.isa))?;
    product(a, &b)
}

/// `a` `[m, k]` (f32 or bf16, any strides) times `b` `[k, n]` (packed by [`pack_rhs`]): `[m, n]`
/// in f32.
pub fn matmul_packed_rhs(a: &Tensor, b: &Packed) -> Result<Tensor> {
    let a = with_view(a, false, |v| pack(v, Role::Lhs, b.isa))?;
    product(&a, b)
}

/// Columns of B per panel.
pub const PANEL: usize = NR;
/// Most panels a [`RhsPanels::pack`] call asks for.
pub const MAX_PANELS: usize = NC_PANELS;

/// The right operand of [`matmul_packed_lhs_panels`], `[k, n]` for each of several images, which
/// its owner packs one panel at a time as the product needs it: a convolution packs its im2col
/// columns straight from the image, so the `[k, n]` matrix (nine times the input for a 3x3
/// kernel) is never stored in f32, and each panel is multiplied while it is in cache.
pub trait RhsPanels: Sync {
    /// k, the rows of each image's B.
    fn depth(&self) -> usize;
    /// n, the columns of each image's B.
    fn columns(&self) -> usize;
    /// The number of images.
    fn images(&self) -> usize;
    /// Packs the `panels` panels of columns from `first` (a multiple of `PANEL`) of image
    /// `image`'s B into `dst`, one after the other: each `pairs = dst.len() / (panels * PANEL)`
    /// pairs long, for every pair `p` the `PANEL` words of rows `2p` and `2p + 1`
    /// ([`pack_pair`]), zero past the last row and the last column. At most `MAX_PANELS`.
    fn pack(&self, image: usize, first: usize, panels: usize, dst: &mut [u32]);
}

/// Packs two rows of one panel, `lo` (row 2p) and `hi` (row 2p + 1, zero when `None`), rounded
/// to bf16, into the panel's `PANEL` words of pair p.
pub fn pack_pair(lo: &[f32; PANEL], hi: Option<&[f32; PANEL]>, dst: &mut [u32]) {
    let dst = &mut dst[..PANEL];
    #[cfg(target_arch = "x86_64")]
    if isa().is_some() {
        // SAFETY: `isa()` checked AVX-512F/BW/BF16 on this CPU; all three are PANEL (a multiple
        // of 16) long.
        unsafe { simd::interleave_f32(lo, hi.map(|h| &h[..]), dst) };
        return;
    }
    for (l, d) in dst.iter_mut().enumerate() {
        let hi = hi.map_or(0, |h| bf16::from_f32(h[l]).to_bits());
        *d = word(bf16::from_f32(lo[l]).to_bits(), hi);
    }
}

/// Rounds `src` to bf16 pairs: `dst[w]` holds `src[2w]` (low half) and `src[2w + 1]` (0 past
/// the end); `dst` is `src.len().div_ceil(2)` long.
pub fn round_to_pairs(src: &[f32], dst: &mut [u32]) {
    assert_eq!(dst.len(), src.len().div_ceil(2), "one word per pair");
    #[cfg(target_arch = "x86_64")]
    if isa().is_some() {
        // SAFETY: `isa()` checked AVX-512F and AVX512_BF16; `dst` holds a word per pair (above);
        // a panel one line wide is the line's words in order.
        unsafe { simd::pack_line_f32(src, 0, 1, dst) };
        return;
    }
    for (d, pair) in dst.iter_mut().zip(src.chunks(2)) {
        let hi = pair.get(1).map_or(0, |&v| bf16::from_f32(v).to_bits());
        *d = word(bf16::from_f32(pair[0]).to_bits(), hi);
    }
}

/// Rounds `TILE_ROWS` rows of `src` (`stride` floats apart, `cols` each, a multiple of
/// `2 * TILE_PAIRS`) to bf16 pairs in tile order, as [`AmxTiles::block`] reads its `a`: for
/// each `TILE_PAIRS` pairs, the rows' `TILE_PAIRS` words.
pub fn round_rows_to_tiles(src: &[f32], stride: usize, cols: usize, dst: &mut [u32]) {
    let group = 2 * TILE_PAIRS;
    assert!(cols.is_multiple_of(group) && stride >= cols);
    assert!(src.len() >= (TILE_ROWS - 1) * stride + cols && dst.len() >= TILE_ROWS * cols / 2);
    #[cfg(target_arch = "x86_64")]
    if isa().is_some() {
        // SAFETY: `isa()` checked AVX-512F and AVX512_BF16; the sizes are asserted above.
        unsafe { simd::round_rows_to_tiles(src, stride, cols, dst) };
        return;
    }
    for r in 0..TILE_ROWS {
        for g in 0..cols / group {
            let at = (g * TILE_ROWS + r) * TILE_PAIRS;
            let from = r * stride + g * group;
            round_to_pairs(&src[from..from + group], &mut dst[at..at + TILE_PAIRS]);
        }
    }
}

/// Puts one row's bf16 pairs `words` as row `row` of the tile-ordered blocks `tiles` (`pairs`
/// per row, a multiple of `TILE_PAIRS`; blocks of `TILE_ROWS` rows), zero past the words.
pub fn place_row_in_tiles(words: &[u32], row: usize, pairs: usize, tiles: &mut [u32]) {
    let (block, r) = (row / TILE_ROWS, row % TILE_ROWS);
    for g in 0..pairs / TILE_PAIRS {
        let at = block * TILE_ROWS * pairs + (g * TILE_ROWS + r) * TILE_PAIRS;
        let dst = &mut tiles[at..at + TILE_PAIRS];
        let from = (g * TILE_PAIRS).min(words.len());
        let have = (words.len() - from).min(TILE_PAIRS);
        dst[..have].copy_from_slice(&words[from..from + have]);
        dst[have..].fill(0);
    }
}

/// Rows of A (and of C) in one [`AmxTiles::block`].
pub const TILE_ROWS: usize = AMX_ROWS;
/// k pairs in one AMX tile: [`AmxTiles::block`]'s depth is a multiple of this.
pub const TILE_PAIRS: usize = AMX_PAIRS;

/// Columns a folded panel holds at most ([`Panel::Folded`]).
pub const FOLDED_COLS: usize = 8;

/// Whether [`Panel::Folded`] multiplies here: on the AVX512_BF16 kernel. AMX multiplies whole
/// tiles, so its panels are never folded.
pub fn folds_panels() -> bool {
    isa() == Some(Isa::Avx512)
}

/// Two pairs' words of a panel of at most [`FOLDED_COLS`] columns, folded into the 16 words of a
/// folded panel's pair of pairs: word `2i` is column `i` of the first pair (`even`), word
/// `2i + 1` of the second (`odd`).
pub fn fold_pairs(even: &[u32], odd: &[u32], dst: &mut [u32]) {
    for (i, (&e, &o)) in even.iter().zip(odd).take(FOLDED_COLS).enumerate() {
        dst[2 * i] = e;
        dst[2 * i + 1] = o;
    }
}

/// Blocks of `TILE_ROWS` rows of A times a panel of B, on AMX tiles or with the AVX512_BF16
/// micro-kernel, for kernels other than the matmul's (the bf16 flash attention). Not `Send`: AMX
/// tiles are configured per thread.
pub struct Tiles(Kernel);

impl Tiles {
    /// The kernel of this CPU (configuring AMX tiles on this thread where it has them); `None`
    /// where it has neither AMX-BF16 nor AVX512_BF16. Callers decide with [`available`] whether
    /// to use it at all.
    pub fn new() -> Option<Self> {
        isa().map(|isa| Self(Kernel::new(isa)))
    }

    /// `out` (a `TILE_ROWS x PANEL` block, rows `ldo` floats apart) (+)= `a` times `b` over
    /// `pairs` pairs: `a` the block's rows as bf16 pairs in tile order (for each `TILE_PAIRS`
    /// pairs, the `TILE_ROWS` rows' `TILE_PAIRS` words), `b` a panel ([`Panel`]), both zero
    /// from `pairs` to the next multiple of `TILE_PAIRS` (AMX multiplies whole tiles; the
    /// AVX512_BF16 kernel stops at `pairs`); `accumulate` adds to `out` instead of overwriting
    /// it. Only the first `cols` columns are needed: the AVX512_BF16 kernel computes half a
    /// panel where that covers them, and a folded panel's 8 columns two pairs to a vector (a
    /// head of 40 values is one panel and 8 columns), AMX whole tiles.
    #[allow(clippy::too_many_arguments)]
    pub fn block(
        &mut self,
        a: &[u32],
        b: Panel,
        pairs: usize,
        cols: usize,
        out: &mut [f32],
        ldo: usize,
        accumulate: bool,
    ) {
        let tiles = match &mut self.0 {
            Kernel::Amx(tiles) => tiles,
            Kernel::F32 => unreachable!("`Tiles::new` takes the CPU's bf16 kernel"),
            Kernel::Avx512 => {
                assert!(
                    cols <= b.columns() && out.len() >= (TILE_ROWS - 1) * ldo + cols,
                    "the block lies inside `out`"
                );
                // 16 accumulators each way: eight rows by two vectors, or sixteen by one.
                // A's rows are 16 words apart.
                const GROUP: usize = TILE_ROWS * TILE_PAIRS;
                let rows = if matches!(b, Panel::Plain(_)) && cols > 16 {
                    8
                } else {
                    16
                };
                for r0 in (0..TILE_ROWS).step_by(rows) {
                    let (a, c) = (&a[r0 * TILE_PAIRS..], out[r0 * ldo..].as_mut_ptr());
                    // SAFETY: `Kernel::Avx512` exists only after `isa()` found AVX-512F and
                    // AVX512_BF16; the kernels assert that `a` and `b` hold `pairs` pairs; the
                    // block's rows r0..r0 + rows, `cols` columns each, lie inside `out` (above).
                    unsafe {
                        match b {
                            Panel::Folded(b) => simd::kernel_folded::<16, TILE_PAIRS, GROUP>(
                                pairs, a, b, c, ldo, cols, accumulate,
                            ),
                            Panel::Plain(b) if rows == 16 => {
                                simd::kernel::<16, TILE_PAIRS, 1, GROUP, 1>(
                                    pairs, a, b, c, ldo, 16, cols, accumulate,
                                )
                            }
                            Panel::Plain(b) => simd::kernel::<8, TILE_PAIRS, 1, GROUP, NV>(
                                pairs, a, b, c, ldo, 8, cols, accumulate,
                            ),
                        }
                    }
                }
                return;
            }
        };
        let Panel::Plain(b) = b else {
            unreachable!("panels are folded only where `folds_panels` says")
        };
        tiles.block(
            a,
            b,
            pairs.next_multiple_of(TILE_PAIRS),
            out,
            ldo,
            accumulate,
        );
    }
}

/// The B operand of [`Tiles::block`]: one panel's words.
#[derive(Clone, Copy)]
pub enum Panel<'a> {
    /// `PANEL` words per pair.
    Plain(&'a [u32]),
    /// At most [`FOLDED_COLS`] columns, each two pairs' words in 16 ([`fold_pairs`]): a vector
    /// then does two pairs' work where a plain panel leaves half its lanes zero. Only where
    /// [`folds_panels`], and over an even number of pairs.
    Folded(&'a [u32]),
}

impl Panel<'_> {
    /// The most columns the panel holds.
    fn columns(&self) -> usize {
        match self {
            Panel::Plain(_) => PANEL,
            Panel::Folded(_) => FOLDED_COLS,
        }
    }
}

/// The AMX tile registers, configured on this thread while the value lives. Not `Send`: the
/// configuration is per thread.
pub(crate) struct AmxTiles(std::marker::PhantomData<*const ()>);

impl AmxTiles {
    /// Configures the tiles on this thread; `None` unless the CPU has AMX-BF16 (and it is not
    /// turned off).
    fn new() -> Option<Self> {
        if isa() != Some(Isa::Amx) {
            return None;
        }
        // SAFETY: the AMX kernel is in use, so `amx::enable` found AMX-BF16 and got the
        // kernel's permission for tile state.
        unsafe { amx::load_config() };
        Some(Self(std::marker::PhantomData))
    }

    /// `out` (a `TILE_ROWS x PANEL` block, rows `ldo` floats apart) (+)= `a` times `b`: `a` the
    /// block's rows as bf16 pairs in tile order (for each `TILE_PAIRS` pairs, the `TILE_ROWS`
    /// rows' `TILE_PAIRS` words), `b` `pairs` rows of `PANEL` words (a panel); `accumulate`
    /// adds to `out` instead of overwriting it.
    fn block(
        &mut self,
        a: &[u32],
        b: &[u32],
        pairs: usize,
        out: &mut [f32],
        ldo: usize,
        accumulate: bool,
    ) {
        assert!(pairs.is_multiple_of(TILE_PAIRS), "whole tiles of pairs");
        // SAFETY: tiles are configured on this thread (this value exists); `block` asserts the
        // operands' sizes itself.
        unsafe { amx::block(a, b, pairs, out, ldo, accumulate) }
    }
}

impl Drop for AmxTiles {
    fn drop(&mut self) {
        // SAFETY: `new` configured the tiles on this thread (the value cannot leave it).
        unsafe { amx::release() }
    }
}

/// Most bytes of B panels one task packs at a time (its share of L2, beside A's pass and the
/// tile of C).
const PANELS_BYTES: usize = 1 << 20;

/// `a` `[m, k]` (packed by [`pack_lhs`]) times each image's `b` `[k, n]`, plus `bias[row]` when
/// given: `[images, m, n]` in f32. Each task packs a group of B panels of one image, multiplies
/// all of A's rows (or its share of them) by them and writes its columns of the output, so B
/// goes from its source to the kernel through the cache only.
pub fn matmul_packed_lhs_panels(
    a: &Packed,
    b: &impl RhsPanels,
    bias: Option<&[f32]>,
) -> Result<Tensor> {
    let (m, k, n, images) = (a.lines, b.depth(), b.columns(), b.images());
    if a.depth != k {
        candle_core::bail!(
            "bf16 matmul: the left operand has {} columns, the right {k} rows",
            a.depth
        );
    }
    if bias.is_some_and(|bias| bias.len() != m) {
        candle_core::bail!(
            "bf16 matmul: a bias of {} values for {m} rows",
            bias.map_or(0, <[f32]>::len)
        );
    }
    let len = images * m * n;
    let mut c: Vec<f32> = Vec::with_capacity(len);
    if a.pairs() > 0 && len > 0 {
        panel_tasks(a, b, bias, &mut c.spare_capacity_mut()[..len]);
        // SAFETY: `panel_tasks` wrote every one of the `len` floats (its tasks cover every
        // image, every column and every row).
        unsafe { c.set_len(len) };
    } else {
        // k = 0: the product is zero, plus the bias.
        c.resize(len, 0.0);
        if let Some(bias) = bias {
            for (row, &b) in c.chunks_mut(n.max(1)).zip(bias.iter().cycle()) {
                row.fill(b);
            }
        }
    }
    Tensor::from_vec(c, (images, m, n), &Device::Cpu)
}

/// [`matmul_packed_lhs_panels`] into `c` (`[images, m, n]`, every float written): tasks of one
/// image, one group of B panels and a share of A's row units.
fn panel_tasks(a: &Packed, b: &impl RhsPanels, bias: Option<&[f32]>, c: &mut [MaybeUninit<f32>]) {
    let (m, n, pairs, images) = (a.lines, b.columns(), a.pairs(), b.images());
    let (unit, chunk) = (unit_rows(a.isa), chunk_units(a.isa));
    assert!(c.len() == images * m * n);
    let panels_n = n.div_ceil(NR);
    let group = (PANELS_BYTES / (pairs * NR * 4))
        .clamp(1, NC_PANELS)
        .min(panels_n);
    let groups = panels_n.div_ceil(group);
    let units_m = m.div_ceil(unit);
    let chunks_m = units_m.div_ceil(chunk);
    // Enough tasks for every thread twice over: at the deep levels (8x8 pixels, one group) the
    // row units are shared out too, each share packing the same panels.
    let splits = (2 * rayon::current_num_threads())
        .div_ceil(images * groups)
        .clamp(1, chunks_m);
    let chunks_per_split = chunks_m.div_ceil(splits);
    let c_ptr = CPtr(c.as_mut_ptr().cast());
    let buffers = || {
        (
            vec![0u32; group * pairs * NR],
            vec![0f32; chunk * unit * group * NR],
        )
    };
    (0..images * groups * splits)
        .into_par_iter()
        .for_each_init(buffers, |(panels, acc), task| {
            let (image, rest) = (task / (groups * splits), task % (groups * splits));
            let (g, split) = (rest / splits, rest % splits);
            let group_panels = g * group..((g + 1) * group).min(panels_n);
            let panel_len = pairs * NR;
            b.pack(
                image,
                group_panels.start * NR,
                group_panels.len(),
                &mut panels[..group_panels.len() * panel_len],
            );
            let acc_cols = group_panels.len() * NR;
            let col0 = group_panels.start * NR;
            let cols = acc_cols.min(n - col0);
            let mut kernel = Kernel::new(a.isa);
            let chunks = split * chunks_per_split..((split + 1) * chunks_per_split).min(chunks_m);
            for ch in chunks {
                let units = ch * chunk..((ch + 1) * chunk).min(units_m);
                let panels = &panels[..];
                let row0 = units.start * unit;
                let to = Dest {
                    c: c_ptr,
                    at: ((image * m + row0) * n + col0, n),
                    rows: (units.len() * unit).min(m - row0),
                    cols,
                    bias: bias.map_or(Bias::None, |bias| Bias::Rows(&bias[row0..])),
                };
                let panel = |j, first| &panels[j * panel_len + first * NR..(j + 1) * panel_len];
                // SAFETY: rows row0..row0 + rows < m, columns col0..col0 + cols <= n of image
                // `image` are this task's (tasks differ in image, column group or row chunk).
                unsafe {
                    tile_into(
                        &mut kernel,
                        a.into(),
                        units,
                        group_panels.len(),
                        panel,
                        acc,
                        to,
                    )
                };
            }
        });
}

/// `a` `[m, k]` (f32 or bf16, any strides) times `b` `[k, n]` (packed by [`pack_rhs`]), plus
/// `bias[column]` when given: `[m, n]` in f32 (a linear layer). Each task rounds its own rows of
/// A straight into the kernel's order and writes its rows of the product once, bias added: no
/// packed copy of A, no zeroed product and no separate pass for the bias.
pub fn matmul_packed_rhs_bias(a: &Tensor, b: &Packed, bias: Option<&[f32]>) -> Result<Tensor> {
    let n = b.lines;
    if let Some(bias) = bias.filter(|bias| bias.len() != n) {
        candle_core::bail!(
            "bf16 matmul: a bias of {} values for {n} columns",
            bias.len()
        );
    }
    with_view(a, false, |view| row_tasks(view, b, bias))?
}

/// [`matmul_packed_rhs_bias`]: tasks of a chunk of A's row units and a share of B's panel
/// groups (the groups are shared out only when there are too few row chunks to keep every
/// thread busy, each share rounding the same rows).
fn row_tasks(view: View, b: &Packed, bias: Option<&[f32]>) -> Result<Tensor> {
    let (m, k, n, pairs) = (view.lines, view.depth, b.lines, b.pairs());
    if k != b.depth {
        candle_core::bail!(
            "bf16 matmul: the left operand has {k} columns, the right {} rows",
            b.depth
        );
    }
    let len = m * n;
    let mut c: Vec<f32> = Vec::with_capacity(len);
    if len > 0 && pairs > 0 {
        let (unit, chunk) = (unit_rows(b.isa), chunk_units(b.isa));
        let units_m = m.div_ceil(unit);
        let chunks = units_m.div_ceil(chunk);
        let (b_panels, threads) = (b.panels(), rayon::current_num_threads());
        let groups = b_panels.div_ceil(NC_PANELS);
        let splits = (2 * threads).div_ceil(chunks).clamp(1, groups);
        let groups_per_split = groups.div_ceil(splits);
        let c_ptr = CPtr(c.spare_capacity_mut().as_mut_ptr().cast());
        let buffers = || {
            (
                vec![0u32; chunk * unit * pairs],
                vec![0f32; chunk * unit * NC_PANELS * NR],
                vec![0u32; k.div_ceil(2)],
            )
        };
        (0..chunks * splits).into_par_iter().for_each_init(
            buffers,
            |(a_rows, acc, words), task| {
                let (ch, split) = (task / splits, task % splits);
                let units = ch * chunk..((ch + 1) * chunk).min(units_m);
                let row0 = units.start * unit;
                let rows = (units.len() * unit).min(m - row0);
                match b.isa {
                    Isa::Amx => {
                        for r in 0..units.len() * AMX_ROWS {
                            let words: &[u32] = if r < rows {
                                round_line(&view, row0 + r, words);
                                words
                            } else {
                                &[]
                            };
                            place_row_in_tiles(words, r, pairs, a_rows);
                        }
                    }
                    Isa::Avx512 | Isa::F32 => {
                        for (i, dst) in a_rows.chunks_mut(MR * pairs).take(units.len()).enumerate()
                        {
                            if (i + 1) * MR > rows {
                                dst.fill(0);
                            }
                            pack_lines(&view, row0 + i * MR, MR, b.isa, dst);
                        }
                    }
                }
                let mut kernel = Kernel::new(b.isa);
                let a = ARows {
                    data: a_rows,
                    pairs,
                    unit,
                };
                let mine = split * groups_per_split..((split + 1) * groups_per_split).min(groups);
                for g in mine {
                    let b_range = g * NC_PANELS..((g + 1) * NC_PANELS).min(b_panels);
                    let col0 = b_range.start * NR;
                    let cols = (b_range.len() * NR).min(n - col0);
                    let to = Dest {
                        c: c_ptr,
                        at: (row0 * n + col0, n),
                        rows,
                        cols,
                        bias: bias
                            .map_or(Bias::None, |bias| Bias::Columns(&bias[col0..col0 + cols])),
                    };
                    let panel = |j, first| b.panel_from(b_range.start + j, first);
                    // SAFETY: rows row0..row0 + rows <= m and columns col0..col0 + cols <= n are
                    // this task's (tasks differ in row chunk or panel group).
                    unsafe {
                        tile_into(
                            &mut kernel,
                            a,
                            0..units.len(),
                            b_range.len(),
                            panel,
                            acc,
                            to,
                        )
                    };
                }
            },
        );
        // SAFETY: the tasks wrote every float: each row chunk with every panel group.
        unsafe { c.set_len(len) };
    } else {
        c.resize(len, 0.0);
        if let Some(bias) = bias {
            for row in c.chunks_mut(n.max(1)) {
                row.copy_from_slice(bias);
            }
        }
    }
    Tensor::from_vec(c, (m, n), &Device::Cpu)
}

/// Line `line` of `view` rounded to bf16 pairs into `words` (`depth.div_ceil(2)` long).
fn round_line(view: &View, line: usize, words: &mut [u32]) {
    if let (Elems::F32(d), 1) = (view.data, view.depth_stride) {
        let start = line * view.line_stride;
        round_to_pairs(&d[start..start + view.depth], words);
        return;
    }
    for (p, w) in words.iter_mut().enumerate() {
        *w = word(view.bits(line, 2 * p), view.bits(line, 2 * p + 1));
    }
}

/// `a` `[m, k]` times `b` `[k, n]`, each f32 or bf16 with any strides: `[m, n]` in f32, both
/// rounded to bf16 first. Without the instructions, both widened to f32 and multiplied by
/// candle.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match isa() {
        Some(isa) if matches!(a.device(), Device::Cpu) => {
            let a = with_view(a, false, |v| pack(v, Role::Lhs, isa))?;
            matmul_packed_lhs(&a, b)
        }
        _ => {
            let a = crate::ops::cast::to_dtype(a, DType::F32)?;
            let b = crate::ops::cast::to_dtype(b, DType::F32)?;
            a.matmul(&b)
        }
    }
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
    let mut c = buffer::zeros(m * n);
    gemm(a, b, &mut c);
    Tensor::from_vec(c, (m, n), &Device::Cpu)
}

/// Packs `view` as `role` for `isa`'s kernel, the panels in parallel.
fn pack(view: View, role: Role, isa: Isa) -> Packed {
    let (width, pairs, panels) = shape(isa, role, view.lines, view.depth);
    let mut data = vec![0u32; panels * pairs * width];
    if pairs > 0 && view.lines > 0 {
        // Small panels (AMX's single rows) go to the threads in groups.
        let per_task = (4096 / (pairs * width)).max(1);
        data.par_chunks_mut(per_task * pairs * width)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (i, dst) in chunk.chunks_mut(pairs * width).enumerate() {
                    let first = (task * per_task + i) * width;
                    pack_lines(&view, first, width, isa, dst);
                }
            });
    }
    if (isa, role) == (Isa::Amx, Role::Lhs) && pairs > 0 {
        data = amx_tile_order(&data, pairs);
    }
    Packed {
        data,
        lines: view.lines,
        depth: view.depth,
        width,
        pairs,
        isa,
    }
}

/// How an operand of `lines` lines of `depth` is packed for `isa`'s kernel: (lines per panel,
/// words per line with padding, panels).
fn shape(isa: Isa, role: Role, lines: usize, depth: usize) -> (usize, usize, usize) {
    let (width, pair_multiple, line_multiple) = match (isa, role) {
        (Isa::Avx512 | Isa::F32, Role::Lhs) => (MR, 1, 1),
        (Isa::Avx512 | Isa::F32, Role::Rhs) => (NR, 1, 1),
        (Isa::Amx, Role::Lhs) => (1, AMX_PAIRS, AMX_ROWS),
        (Isa::Amx, Role::Rhs) => (NR, AMX_PAIRS, 1),
    };
    let words = match isa {
        Isa::F32 => depth,
        Isa::Amx | Isa::Avx512 => depth.div_ceil(2),
    };
    let panels = lines.next_multiple_of(line_multiple).div_ceil(width);
    (width, words.next_multiple_of(pair_multiple), panels)
}

/// Several left operands of one shape packed one after the other in one buffer (a Winograd
/// weight's 16 terms): a weight transformed at every call is then one allocation, which the
/// allocator's kept blocks serve again at the next call, instead of 16 whose pages the kernel
/// may zero afresh each time.
pub(crate) struct PackedStack {
    data: Vec<u32>,
    /// Words per operand.
    len: usize,
    pairs: usize,
    isa: Isa,
}

impl PackedStack {
    /// Operand `i`'s rows, for [`sum_tile`].
    pub(crate) fn term(&self, i: usize) -> ARows<'_> {
        ARows {
            data: &self.data[i * self.len..(i + 1) * self.len],
            pairs: self.pairs,
            unit: unit_rows(self.isa),
        }
    }

    /// Words per line, padding included.
    pub(crate) fn pairs(&self) -> usize {
        self.pairs
    }

    /// Rows per unit of these A (an AMX block or an AVX512_BF16 panel; see [`sum_tile`]).
    pub(crate) fn unit_rows(&self) -> usize {
        unit_rows(self.isa)
    }

    /// Units of rows a task should take at a time ([`sum_tile`]'s `units`).
    pub(crate) fn chunk_units(&self) -> usize {
        chunk_units(self.isa)
    }

    /// The kernel for these operands, for [`sum_tile`].
    pub(crate) fn kernel(&self) -> Kernel {
        Kernel::new(self.isa)
    }
}

/// `count` left operands `[lines, depth]` packed into one [`PackedStack`] for the f32 kernel
/// (`f32_words`) or the bf16 one, element `(line, k)` of all of them given at once by
/// `fill(line, k, values)` (`values[i]` for operand i, `count` long), as a Winograd weight's
/// terms all come from the same nine taps.
pub(crate) fn pack_lhs_stack(
    count: usize,
    lines: usize,
    depth: usize,
    f32_words: bool,
    fill: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Result<PackedStack> {
    let isa = match f32_words {
        true if f32_available() => Isa::F32,
        true => candle_core::bail!("no AVX-512F on this CPU for the f32 kernel"),
        false => isa_or_err()?,
    };
    Ok(stack_for(isa, count, lines, depth, fill))
}

/// [`pack_lhs_stack`] for `isa`'s kernel.
fn stack_for(
    isa: Isa,
    count: usize,
    lines: usize,
    depth: usize,
    fill: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> PackedStack {
    let (width, pairs, panels) = shape(isa, Role::Lhs, lines, depth);
    let len = panels * pairs * width;
    // A task packs one unit of rows (an AVX-512 panel, or an AMX block of single-row panels)
    // of every operand.
    let unit = unit_rows(isa);
    // Zeroed by every core: a per-call Winograd weight (up to 210 MB) usually gets a block the
    // allocator kept, which `vec!` would zero on this thread alone while the others wait.
    let mut data = buffer::zeros(count * len);
    let mut units: Vec<Vec<&mut [u32]>> = (0..len / (unit * pairs).max(1))
        .map(|_| Vec::with_capacity(count))
        .collect();
    for operand in data.chunks_mut(len.max(1)) {
        for (dsts, dst) in units.iter_mut().zip(operand.chunks_mut(unit * pairs)) {
            dsts.push(dst);
        }
    }
    if isa == Isa::F32 {
        // One panel of `MR` rows per unit, word `w` of row `r` at `w * MR + r`: every value
        // goes straight to its place in each operand (f32 words need no conversion).
        units.into_par_iter().enumerate().for_each_init(
            || vec![0f32; count],
            |values, (u, mut dsts)| {
                let first = u * unit;
                for w in 0..pairs {
                    for r in 0..unit.min(lines.saturating_sub(first)) {
                        fill(first + r, w, values);
                        for (dst, v) in dsts.iter_mut().zip(&*values) {
                            dst[w * width + r] = v.to_bits();
                        }
                    }
                }
            },
        );
    } else {
        // The unit's rows of every operand in f32, then packed as `pack` packs a tensor's
        // (the rounding to bf16 pairs runs on vectors there).
        let scratch = || (vec![0f32; count * unit * depth], vec![0f32; count]);
        units.into_par_iter().enumerate().for_each_init(
            scratch,
            |(rows_f32, values), (u, mut dsts)| {
                let first = u * unit;
                let rows = unit.min(lines.saturating_sub(first));
                for r in 0..rows {
                    for kk in 0..depth {
                        fill(first + r, kk, values);
                        for (i, &v) in values.iter().enumerate() {
                            rows_f32[(i * unit + r) * depth + kk] = v;
                        }
                    }
                }
                for (i, dst) in dsts.iter_mut().enumerate() {
                    let view = View {
                        data: Elems::F32(&rows_f32[i * unit * depth..(i + 1) * unit * depth]),
                        lines: rows,
                        depth,
                        line_stride: depth,
                        depth_stride: 1,
                    };
                    for (p, panel) in dst.chunks_mut(pairs * width).enumerate() {
                        pack_lines(&view, p * width, width, isa, panel);
                    }
                    if isa == Isa::Amx {
                        let ordered = amx_tile_order(dst, pairs);
                        dst.copy_from_slice(&ordered);
                    }
                }
            },
        );
    }
    PackedStack {
        data,
        len,
        pairs,
        isa,
    }
}

/// Row-major A (rows of `pairs` words, a whole number of 32-row blocks) in the order the AMX
/// kernel reads it: block by block, 16 pairs at a time, the 32 rows' 16 words each. Every tile
/// load is then 1 KiB of consecutive memory instead of 16 rows thousands of bytes apart (too
/// many streams for the hardware prefetcher).
fn amx_tile_order(rows: &[u32], pairs: usize) -> Vec<u32> {
    let block = AMX_ROWS * pairs;
    let mut out = vec![0u32; rows.len()];
    out.par_chunks_mut(block)
        .zip(rows.par_chunks(block))
        .for_each(|(dst, src)| {
            for kb in 0..pairs / AMX_PAIRS {
                for r in 0..AMX_ROWS {
                    let from = r * pairs + kb * AMX_PAIRS;
                    let to = (kb * AMX_ROWS + r) * AMX_PAIRS;
                    dst[to..to + AMX_PAIRS].copy_from_slice(&src[from..from + AMX_PAIRS]);
                }
            }
        });
    out
}

/// Packs lines `first..first + width` of `view` as one panel for `isa`'s kernel.
fn pack_lines(view: &View, first: usize, width: usize, isa: Isa, dst: &mut [u32]) {
    match isa {
        Isa::F32 => pack_panel_f32(view, first, width, dst),
        Isa::Amx | Isa::Avx512 => pack_panel(view, first, width, dst),
    }
}

/// Lines `first..first + width` (those that exist) as f32 words into `dst` (zero on entry).
fn pack_panel_f32(view: &View, first: usize, width: usize, dst: &mut [u32]) {
    for l in 0..width.min(view.lines.saturating_sub(first)) {
        for kk in 0..view.depth {
            let at = (first + l) * view.line_stride + kk * view.depth_stride;
            dst[kk * width + l] = match view.data {
                Elems::F32(d) => d[at].to_bits(),
                Elems::Bf16(d) => d[at].to_f32().to_bits(),
            };
        }
    }
}

/// Packs lines `first..first + width` (those that exist) into `dst` (zero on entry).
fn pack_panel(view: &View, first: usize, width: usize, dst: &mut [u32]) {
    if first >= view.lines {
        return;
    }
    let lines = width.min(view.lines - first);
    let pairs = view.depth.div_ceil(2);
    #[cfg(target_arch = "x86_64")]
    if isa().is_some() {
        if view.depth_stride == 1 {
            // Pairs lie next to each other (A row-major, a linear weight): line by line.
            for l in 0..lines {
                let start = (first + l) * view.line_stride;
                match view.data {
                    Elems::F32(d) => {
                        let line = &d[start..start + view.depth];
                        // SAFETY: `isa()` checked AVX-512F/BW/BF16 on this CPU; `dst`
                        // holds at least `pairs * width` words.
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
        if view.line_stride == 1 && lines == width && width.is_multiple_of(16) {
            // Lines lie next to each other (B row-major: im2col columns): two k rows at a
            // time, interleaved.
            let rows =
                |kk: usize| kk * view.depth_stride + first..kk * view.depth_stride + first + width;
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
pub(crate) struct CPtr(pub(crate) *mut f32);

// SAFETY: the tasks that receive it write disjoint tiles of C (see `gemm`), and C outlives them
// (the parallel loop returns before `gemm` does).
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

impl CPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// 32-row blocks of A per AMX tile task (128 rows).
const AMX_MC_BLOCKS: usize = 4;
/// k pairs per AMX pass: a task's A rows (128 x 256 pairs) and B panels (8 x 32 x 256) for one
/// pass, 384 KiB, stay in L2 while every block of its C tile is worked through, and one B panel
/// (32 KiB) in L1 while it meets the task's A blocks.
const AMX_KC: usize = 256;

/// `c` (`a.lines x b.lines`, row-major) = A B: each task sums its tile of C (`chunk_units` of
/// A's units by `NC_PANELS` panels of B) in passes of [`Kernel::pass`] pairs into a buffer of its
/// own, then copies it into place.
fn gemm(a: &Packed, b: &Packed, c: &mut [f32]) {
    let (m, n, pairs) = (a.lines, b.lines, a.pairs());
    let unit = unit_rows(a.isa);
    assert_eq!(c.len(), m * n, "C has room for the product");
    assert!(b.width == NR && b.pairs() == pairs && b.isa == a.isa);
    assert!(a.data.len() >= m.next_multiple_of(unit) * pairs);
    if pairs == 0 || m == 0 || n == 0 {
        c.fill(0.0);
        return;
    }
    let (units_m, b_panels) = (m.div_ceil(unit), b.panels());
    let chunk = chunk_units(a.isa);
    let tiles_m = units_m.div_ceil(chunk);
    let tiles_n = b_panels.div_ceil(NC_PANELS);
    let c_ptr = CPtr(c.as_mut_ptr());
    // Each thread's buffer for a task's tile of C (reused: a fresh 128 KiB would be a fresh
    // mmap, zeroed page by page, for tasks that take tens of microseconds when k is small).
    let buffer = || vec![0f32; chunk * unit * NC_PANELS * NR];
    (0..tiles_m * tiles_n)
        .into_par_iter()
        .for_each_init(buffer, |acc, tile| {
            let (tm, tn) = (tile / tiles_n, tile % tiles_n);
            let units = tm * chunk..((tm + 1) * chunk).min(units_m);
            let b_range = tn * NC_PANELS..((tn + 1) * NC_PANELS).min(b_panels);
            let (row0, col0) = (units.start * unit, b_range.start * NR);
            let to = Dest {
                c: c_ptr,
                at: (row0 * n + col0, n),
                rows: (units.len() * unit).min(m - row0),
                cols: (b_range.len() * NR).min(n - col0),
                bias: Bias::None,
            };
            let panel = |j, first| b.panel_from(b_range.start + j, first);
            // SAFETY: rows row0..row0 + rows <= m and columns col0..col0 + cols <= n of C are
            // this task's tile, which no other task writes.
            unsafe {
                tile_into(
                    &mut Kernel::new(a.isa),
                    a.into(),
                    units,
                    b_range.len(),
                    panel,
                    acc,
                    to,
                )
            };
        });
}

/// A's rows as a kernel reads them, in units of `unit` rows: AMX blocks of `AMX_ROWS` rows in
/// tile order, or AVX512_BF16 panels of `MR` rows; unit `u` from pair `first` on starts at
/// `(u * pairs + first) * unit`, `pairs` per row.
#[derive(Clone, Copy)]
pub(crate) struct ARows<'a> {
    data: &'a [u32],
    pairs: usize,
    unit: usize,
}

impl<'a> From<&'a Packed> for ARows<'a> {
    fn from(a: &'a Packed) -> Self {
        Self {
            data: &a.data,
            pairs: a.pairs(),
            unit: unit_rows(a.isa),
        }
    }
}

/// Rows of A per kernel call: an AMX block or an AVX512_BF16 panel.
fn unit_rows(isa: Isa) -> usize {
    match isa {
        Isa::Amx => AMX_ROWS,
        Isa::Avx512 | Isa::F32 => MR,
    }
}

/// Units of A's rows per task: 128 rows for AMX, `MC_PANELS` panels (112 rows) for AVX512_BF16,
/// which with a group of B panels make a tile of C that stays in L2.
fn chunk_units(isa: Isa) -> usize {
    match isa {
        Isa::Amx => AMX_MC_BLOCKS,
        Isa::Avx512 | Isa::F32 => MC_PANELS,
    }
}

/// A task's kernel: the AMX tiles configured on its thread, the AVX512_BF16 micro-kernel, or
/// its f32 twin.
pub(crate) enum Kernel {
    Amx(AmxTiles),
    Avx512,
    F32,
}

impl Kernel {
    /// The kernel for operands packed for `isa` (which `isa()` returned, so the CPU has it).
    fn new(isa: Isa) -> Self {
        match isa {
            Isa::Amx => match AmxTiles::new() {
                Some(tiles) => Self::Amx(tiles),
                None => unreachable!("operands were packed for the AMX kernel, so the CPU has it"),
            },
            Isa::Avx512 => Self::Avx512,
            Isa::F32 => Self::F32,
        }
    }

    /// k pairs per pass over a task's tile: what keeps its A rows and B panels in L2.
    fn pass(&self) -> usize {
        match self {
            Self::Amx(_) => AMX_KC,
            Self::Avx512 | Self::F32 => KC,
        }
    }

    /// `out` (one unit of rows x `NR`, rows `ldo` apart) (+)= `a` (one unit of A's rows from
    /// some pair on) times `b` (a panel from the same pair on), over `depth` pairs.
    fn unit(&mut self, a: &[u32], b: &[u32], depth: usize, out: &mut [f32], ldo: usize, add: bool) {
        match self {
            Self::Amx(tiles) => tiles.block(a, b, depth, out, ldo, add),
            Self::Avx512 | Self::F32 => {
                assert!(a.len() >= depth * MR && b.len() >= depth * NR);
                assert!(
                    out.len() >= (MR - 1) * ldo + NR,
                    "the block lies inside `out`"
                );
                let (c, f32) = (out.as_mut_ptr(), matches!(self, Self::F32));
                // SAFETY: `Self::Avx512` exists only for operands packed after `isa()` found
                // AVX-512F and AVX512_BF16, `Self::F32` only after `f32_available()` found
                // AVX-512F; the panels hold `depth` words and `out` the `MR x NR` block
                // (asserted above).
                unsafe {
                    if f32 {
                        simd::kernel_f32::<MR, 1, MR, { 16 * MR }>(depth, a, b, c, ldo, MR, NR, add)
                    } else {
                        simd::kernel::<MR, 1, MR, { 16 * MR }, NV>(depth, a, b, c, ldo, MR, NR, add)
                    }
                }
            }
        }
    }
}

/// What [`write_tile`] adds: nothing, a value per row or a value per column.
#[derive(Clone, Copy)]
enum Bias<'a> {
    None,
    Rows(&'a [f32]),
    Columns(&'a [f32]),
}

/// Sums A's units `units` times the B panels `panel(j, first)` (`j < panels`, from pair `first`
/// on) into `acc` (the units' rows, `panels * NR` floats each, row-major), in passes of
/// [`Kernel::pass`] pairs: the task's A rows and B panels for one pass stay in L2 while every
/// unit of its tile is worked through, and one B panel in L1 while it meets the task's A units.
pub(crate) fn sum_tile<'b>(
    kernel: &mut Kernel,
    a: ARows,
    units: Range<usize>,
    panels: usize,
    panel: impl Fn(usize, usize) -> &'b [u32],
    acc: &mut [f32],
) {
    let ARows { data, pairs, unit } = a;
    let acc_cols = panels * NR;
    assert!(acc.len() >= units.len() * unit * acc_cols);
    let pass = kernel.pass();
    for first in (0..pairs).step_by(pass) {
        let depth = pass.min(pairs - first);
        for j in 0..panels {
            let b_panel = panel(j, first);
            for (i, u) in units.clone().enumerate() {
                let a_rows = &data[(u * pairs + first) * unit..];
                let out = &mut acc[i * unit * acc_cols + j * NR..];
                // With AMX `depth` is a multiple of 16 (so are `pairs` and AMX_KC); `first == 0`
                // overwrites whatever the buffer held.
                kernel.unit(a_rows, b_panel, depth, out, acc_cols, first > 0);
            }
        }
    }
}

/// Where a task's tile of C goes: `rows x cols` at `at.0` in C, rows `at.1` apart, plus `bias`.
struct Dest<'a> {
    c: CPtr,
    at: (usize, usize),
    rows: usize,
    cols: usize,
    bias: Bias<'a>,
}

/// [`sum_tile`] into `acc`, then the tile's first `to.rows x to.cols` written to C.
///
/// # Safety
/// As [`write_tile`]'s, for `to`.
unsafe fn tile_into<'b>(
    kernel: &mut Kernel,
    a: ARows,
    units: Range<usize>,
    panels: usize,
    panel: impl Fn(usize, usize) -> &'b [u32],
    acc: &mut [f32],
    to: Dest,
) {
    sum_tile(kernel, a, units, panels, panel, acc);
    // SAFETY: the caller's promise.
    unsafe { write_tile(acc, panels * NR, to.rows, to.cols, to.c, to.at, to.bias) }
}

/// Copies `rows x cols` of `acc` (rows `acc_cols` apart) to C at `at.0`, rows `at.1` apart,
/// adding the bias of each row (`bias[r]`) or column (`bias[c]`) where given.
///
/// # Safety
/// The `rows x cols` floats at `at` in C are writable and written by no other thread meanwhile.
unsafe fn write_tile(
    acc: &[f32],
    acc_cols: usize,
    rows: usize,
    cols: usize,
    c: CPtr,
    at: (usize, usize),
    bias: Bias,
) {
    let (offset, ldc) = at;
    for r in 0..rows {
        let src = &acc[r * acc_cols..r * acc_cols + cols];
        // SAFETY: the caller's promise for row r; seen as `MaybeUninit`, as C may not be
        // initialised yet.
        let dst: &mut [MaybeUninit<f32>] =
            unsafe { std::slice::from_raw_parts_mut(c.get().add(offset + r * ldc).cast(), cols) };
        match bias {
            Bias::None => dst.iter_mut().zip(src).for_each(|(d, &s)| {
                d.write(s);
            }),
            Bias::Rows(bias) => dst.iter_mut().zip(src).for_each(|(d, &s)| {
                d.write(s + bias[r]);
            }),
            Bias::Columns(bias) => dst.iter_mut().zip(src).zip(bias).for_each(|((d, &s), &b)| {
                d.write(s + b);
            }),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;

    use super::{AMX_PAIRS, AMX_ROWS, NR};

    /// Palette 1, all eight tiles 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    static CONFIG: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        TileConfig(c)
    };

    /// Whether the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22) and the
    /// kernel lets this process use tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`, Linux 5.16+).
    pub(super) fn enable() -> bool {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 7 exists on every CPU with AVX-512 (checked by the caller).
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
            return false;
        }
        request_permission()
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn request_permission() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with integer arguments only; it changes which state the kernel
        // saves for this process, nothing in its memory.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn request_permission() -> bool {
        false
    }

    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// [`enable`] returned true.
    pub(super) unsafe fn load_config() {
        // SAFETY: CONFIG is a valid 64-byte palette-1 configuration (caller: AMX is usable).
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly))
        }
    }

    /// Returns the tiles to their initial state on this thread.
    ///
    /// # Safety
    /// [`enable`] returned true.
    pub(super) unsafe fn release() {
        // SAFETY: caller: AMX is usable.
        unsafe { asm!("tilerelease", options(nostack, nomem)) }
    }

    /// `out` (32 x NR, rows `ldo` floats apart) (+)= the 32 rows of `a` (in tile order: for
    /// each 16 pairs, 32 rows of 16 words) times the B panel `b` (`pairs` rows of NR words);
    /// `accumulate` adds to `out` instead of overwriting it.
    ///
    /// # Safety
    /// Tiles are configured on this thread ([`load_config`]); `pairs` is a multiple of 16.
    pub(super) unsafe fn block(
        a: &[u32],
        b: &[u32],
        pairs: usize,
        out: &mut [f32],
        ldo: usize,
        accumulate: bool,
    ) {
        assert!(a.len() >= AMX_ROWS * pairs && b.len() >= pairs * NR);
        assert!(ldo >= NR && out.len() >= (AMX_ROWS - 1) * ldo + NR);
        let (a_stride, b_stride, out_stride) = (AMX_PAIRS * 4, NR * 4, ldo * 4);
        let o = out.as_mut_ptr();
        // SAFETY (all blocks below): every tile load reads 16 rows of 64 bytes at the given
        // stride, inside `a` (the 32 rows of pairs kb..kb + 16: words 32 kb..32 kb + 512), `b`
        // (pairs kb..kb + 16, words 0..32) or `out`; the stores write the four 16x16 quarters
        // of `out`'s 32 x 32 block (asserted above).
        unsafe {
            if accumulate {
                asm!(
                    "tileloadd tmm0, [{o0} + {s}*1]",
                    "tileloadd tmm1, [{o1} + {s}*1]",
                    "tileloadd tmm2, [{o2} + {s}*1]",
                    "tileloadd tmm3, [{o3} + {s}*1]",
                    o0 = in(reg) o,
                    o1 = in(reg) o.add(16),
                    o2 = in(reg) o.add(16 * ldo),
                    o3 = in(reg) o.add(16 * ldo + 16),
                    s = in(reg) out_stride,
                    options(nostack, readonly)
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            let (a, b) = (a.as_ptr(), b.as_ptr());
            for kb in (0..pairs).step_by(AMX_PAIRS) {
                asm!(
                    // Each load just before the first product that reads it, so that it
                    // overlaps the products before it: issued all four first, the loads
                    // wait on the last iteration's products (tile registers are not
                    // renamed), which halved the kernel's rate (390 against 730 GFLOP/s on
                    // one Xeon thread, operands in L1).
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(kb * AMX_ROWS),
                    a1 = in(reg) a.add(kb * AMX_ROWS + 16 * AMX_PAIRS),
                    b0 = in(reg) b.add(kb * NR),
                    b1 = in(reg) b.add(kb * NR + 16),
                    sa = in(reg) a_stride,
                    sb = in(reg) b_stride,
                    options(nostack, readonly)
                );
            }
            asm!(
                "tilestored [{o0} + {s}*1], tmm0",
                "tilestored [{o1} + {s}*1], tmm1",
                "tilestored [{o2} + {s}*1], tmm2",
                "tilestored [{o3} + {s}*1], tmm3",
                o0 = in(reg) o,
                o1 = in(reg) o.add(16),
                o2 = in(reg) o.add(16 * ldo),
                o3 = in(reg) o.add(16 * ldo + 16),
                s = in(reg) out_stride,
                options(nostack)
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub(super) fn enable() -> bool {
        false
    }
    pub(super) unsafe fn load_config() {}
    pub(super) unsafe fn release() {}
    pub(super) unsafe fn block(_: &[u32], _: &[u32], _: usize, _: &mut [f32], _: usize, _: bool) {
        unreachable!("AMX is off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{NR, NV};

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
            let hi = pair
                .get(1)
                .map_or(0, |&v| half::bf16::from_f32(v).to_bits());
            dst[(p + q) * width + l] = super::word(lo, hi);
        }
    }

    /// [`super::round_rows_to_tiles`].
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; the sizes are as that function asserts.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round_rows_to_tiles(
        src: &[f32],
        stride: usize,
        cols: usize,
        dst: &mut [u32],
    ) {
        use super::{TILE_PAIRS, TILE_ROWS};
        for r in 0..TILE_ROWS {
            for g in 0..cols / (2 * TILE_PAIRS) {
                // SAFETY: row r's 32 floats from column 32g lie inside `src`, and the 16 words at
                // (g * TILE_ROWS + r) * 16 inside `dst` (the caller's sizes).
                unsafe {
                    let at = src.as_ptr().add(r * stride + g * 2 * TILE_PAIRS);
                    let lo = _mm512_loadu_ps(at);
                    let hi = _mm512_loadu_ps(at.add(16));
                    let words: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    let to = dst.as_mut_ptr().add((g * TILE_ROWS + r) * TILE_PAIRS);
                    _mm512_storeu_si512(to.cast(), words);
                }
            }
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

    /// C[..rows, ..cols] (+)= A B over `depth` pairs of `R` rows of A and the first `W` vectors
    /// (`16 W` columns) of one B panel; C's rows are `ldc` apart; `accumulate` adds to C instead
    /// of overwriting it. A's word for row `r` and pair `p` is at `(p / 16) * GROUP + (p % 16) *
    /// PAIR + r * ROW`: an `MR`-row panel is `<MR, 1, MR, {16 * MR}, NV>`, a block of AMX tile
    /// order (16 pairs of 32 rows at a time) `<R, 16, 1, 512, W>`. The strides are constants, so
    /// every load is an immediate offset.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `a` holds `R` rows of `depth` pairs in that layout
    /// and `b` `depth` pairs of a panel; `c` points to `rows x cols` writable floats, rows `ldc`
    /// apart; rows <= R, cols <= 16 W <= NR.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel<
        const R: usize,
        const ROW: usize,
        const PAIR: usize,
        const GROUP: usize,
        const W: usize,
    >(
        depth: usize,
        a: &[u32],
        b: &[u32],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller's promise, and this function's features.
        unsafe {
            body::<R, ROW, PAIR, GROUP, W, false>(depth, a, b, c, ldc, rows, cols, accumulate)
        }
    }

    /// [`kernel`] for a folded panel ([`super::fold_pairs`]: for each two pairs, 16 words, the
    /// even lanes the first pair's columns and the odd lanes the second's) of at most 8 columns:
    /// each row's two words of the two pairs are broadcast as one 64-bit value, so the even
    /// lanes sum the even pairs and the odd lanes the odd ones; adjacent lanes are added at the
    /// end. A in tile order as in [`kernel`] with `PAIR` 1 (a row's pairs side by side).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `c` points to `R` rows of `cols` writable floats,
    /// `ldc` apart.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn kernel_folded<const R: usize, const ROW: usize, const GROUP: usize>(
        depth: usize,
        a: &[u32],
        b: &[u32],
        c: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let last = depth
            .checked_sub(1)
            .map_or(0, |p| (p / 16) * GROUP + p % 16);
        assert!(depth.is_multiple_of(2) && cols <= 8 && b.len() >= depth * 8);
        assert!(depth == 0 || a.len() > last + (R - 1) * ROW);
        let mut acc = [_mm512_setzero_ps(); R];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for p in (0..depth).step_by(2) {
            // SAFETY: pairs p and p + 1 (p even, so in one group of 16) of each of A's rows and
            // their 16 folded words are inside `a` and `b` (asserted above).
            unsafe {
                let bv = _mm512_loadu_si512(b.add(p * 8).cast());
                let a = a.add((p / 16) * GROUP + p % 16);
                for (r, x) in acc.iter_mut().enumerate() {
                    let words = _mm512_set1_epi64(a.add(r * ROW).cast::<i64>().read_unaligned());
                    *x = _mm512_dpbf16_ps(
                        *x,
                        std::mem::transmute::<__m512i, __m512bh>(words),
                        std::mem::transmute::<__m512i, __m512bh>(bv),
                    );
                }
            }
        }
        let mask: __mmask16 = (1u16 << cols) - 1;
        for (r, &x) in acc.iter().enumerate() {
            // Lanes 2i and 2i + 1 summed, then the even lanes moved to the front: column i.
            let sums = _mm512_add_ps(x, _mm512_permute_ps::<0b10_11_00_01>(x));
            let row = _mm512_maskz_compress_ps(0x5555, sums);
            // SAFETY: the masked lanes are columns < cols of row r < R.
            unsafe {
                let at = c.add(r * ldc);
                let row = if accumulate {
                    _mm512_add_ps(row, _mm512_maskz_loadu_ps(mask, at))
                } else {
                    row
                };
                _mm512_mask_storeu_ps(at, mask, row);
            }
        }
    }

    /// [`kernel`] on f32 words (one element each instead of a pair): one `vfmadd` per word and
    /// accumulator where [`kernel`] has one `vdpbf16ps`.
    ///
    /// # Safety
    /// As [`kernel`]'s, with AVX-512F only, and words for pairs.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel_f32<
        const R: usize,
        const ROW: usize,
        const PAIR: usize,
        const GROUP: usize,
    >(
        depth: usize,
        a: &[u32],
        b: &[u32],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller's promise, and this function's features (the bf16 instruction is
        // not compiled in: `F32` is a constant).
        unsafe {
            body::<R, ROW, PAIR, GROUP, NV, true>(depth, a, b, c, ldc, rows, cols, accumulate)
        }
    }

    /// [`kernel`] and [`kernel_f32`], inlined into each with its features.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn body<
        const R: usize,
        const ROW: usize,
        const PAIR: usize,
        const GROUP: usize,
        const W: usize,
        const F32: bool,
    >(
        depth: usize,
        a: &[u32],
        b: &[u32],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let last = depth
            .checked_sub(1)
            .map_or(0, |p| (p / 16) * GROUP + (p % 16) * PAIR);
        assert!(depth == 0 || a.len() > last + (R - 1) * ROW);
        assert!(W <= NV && b.len() >= depth * NR && rows <= R && cols <= 16 * W);
        let mut acc = [[_mm512_setzero_ps(); W]; R];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for g in 0..depth.div_ceil(16) {
            for q in 0..16.min(depth - 16 * g) {
                let p = 16 * g + q;
                // SAFETY: pair p of the panel and of each of A's rows is inside them (asserted
                // above: the last pair's word of the last row is).
                unsafe {
                    let mut bv = [_mm512_setzero_si512(); W];
                    for (v, x) in bv.iter_mut().enumerate() {
                        *x = _mm512_loadu_si512(b.add(p * NR + v * 16).cast());
                    }
                    let a = a.add(g * GROUP + q * PAIR);
                    for (r, row) in acc.iter_mut().enumerate() {
                        let word = _mm512_set1_epi32(*a.add(r * ROW) as i32);
                        for (x, bx) in row.iter_mut().zip(bv) {
                            *x = if F32 {
                                _mm512_fmadd_ps(
                                    _mm512_castsi512_ps(word),
                                    _mm512_castsi512_ps(bx),
                                    *x,
                                )
                            } else {
                                _mm512_dpbf16_ps(
                                    *x,
                                    std::mem::transmute::<__m512i, __m512bh>(word),
                                    std::mem::transmute::<__m512i, __m512bh>(bx),
                                )
                            };
                        }
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
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel_folded<const R: usize, const ROW: usize, const GROUP: usize>(
        _: usize,
        _: &[u32],
        _: &[u32],
        _: *mut f32,
        _: usize,
        _: usize,
        _: bool,
    ) {
        unreachable!("available() is false off x86_64")
    }
    pub(super) unsafe fn pack_line_f32(_: &[f32], _: usize, _: usize, _: &mut [u32]) {
        unreachable!("available() is false off x86_64")
    }
    pub(super) unsafe fn interleave_f32(_: &[f32], _: Option<&[f32]>, _: &mut [u32]) {
        unreachable!("available() is false off x86_64")
    }
    pub(super) unsafe fn round_rows_to_tiles(_: &[f32], _: usize, _: usize, _: &mut [u32]) {
        unreachable!("available() is false off x86_64")
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel_f32<
        const R: usize,
        const ROW: usize,
        const PAIR: usize,
        const GROUP: usize,
    >(
        _: usize,
        _: &[u32],
        _: &[u32],
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: bool,
    ) {
        unreachable!("f32_available() is false off x86_64")
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel<
        const R: usize,
        const ROW: usize,
        const PAIR: usize,
        const GROUP: usize,
        const W: usize,
    >(
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
        let round = |t: &Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        round(a).matmul(&round(b)).unwrap()
    }

    /// The kernels this CPU runs: AMX's and AVX512_BF16's where it has AMX.
    fn kernels() -> Vec<Isa> {
        match isa() {
            Some(Isa::Amx) => vec![Isa::Amx, Isa::Avx512],
            Some(Isa::Avx512) => vec![Isa::Avx512],
            Some(Isa::F32) | None => vec![],
        }
    }

    /// `a b` with `isa`'s kernel, packing both per call.
    fn with_kernel(isa: Isa, a: &Tensor, b: &Tensor) -> Tensor {
        let a = with_view(a, false, |v| pack(v, Role::Lhs, isa)).unwrap();
        let b = with_view(b, true, |v| pack(v, Role::Rhs, isa)).unwrap();
        product(&a, &b).unwrap()
    }

    fn check(m: usize, k: usize, n: usize) {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
        let expected = reference(&a, &b);
        let exact = a.matmul(&b).unwrap();
        let b16 = b.to_dtype(DType::BF16).unwrap();
        let kernel_cases = kernels().into_iter().flat_map(|isa| {
            [
                with_kernel(isa, &a, &b),
                with_kernel(
                    isa,
                    &a,
                    &b16.t().unwrap().contiguous().unwrap().t().unwrap(),
                ),
            ]
        });
        // f32 activations times bf16 weights, both layouts; transposed (strided) operands.
        let cases = [
            matmul(&a, &b).unwrap(),
            matmul(
                &a.t().unwrap().contiguous().unwrap().t().unwrap(),
                &b.t().unwrap().contiguous().unwrap().t().unwrap(),
            )
            .unwrap(),
            matmul(
                &a,
                &b.to_dtype(DType::BF16)
                    .unwrap()
                    .t()
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .t()
                    .unwrap(),
            )
            .unwrap(),
        ];
        let mut cases: Vec<Tensor> = cases.into_iter().chain(kernel_cases).collect();
        if available() {
            let a16 = a.to_dtype(DType::BF16).unwrap();
            cases.push(matmul_packed_lhs(&pack_lhs(&a16).unwrap(), &b).unwrap());
            cases.push(matmul_packed_rhs(&a, &pack_rhs(&b16).unwrap()).unwrap());
        }
        // Summation order only: relative to the size of the sum of |products|, ~k * 2^-24.
        let scale = (k as f32).sqrt().max(1.0);
        for got in &cases {
            assert_eq!(got.dims(), &[m, n]);
            // Without a kernel `matmul` widens instead: f32 arithmetic on unrounded f32 inputs.
            if available() {
                let diff = crate::ops::max_abs_diff(got, &expected);
                assert!(
                    diff < 1e-4 * scale,
                    "{m}x{k}x{n}: {diff} from the bf16-rounded product"
                );
            }
            // And from the exact f32 product, by bf16 rounding (2^-8 relative per operand, on
            // products of normal samples up to ~10).
            let diff = crate::ops::max_abs_diff(got, &exact);
            assert!(
                diff < 0.1 * scale,
                "{m}x{k}x{n}: {diff} from the f32 product"
            );
        }
    }

    #[test]
    fn a_stack_holds_each_operand_as_pack_packs_it() {
        let dev = Device::Cpu;
        let mut isas = kernels();
        if f32_available() {
            isas.push(Isa::F32);
        }
        // One line, odd depths, lines past a panel and past an AMX block.
        for (lines, depth) in [(1, 1), (13, 7), (30, 33), (45, 2), (70, 40)] {
            let operands: Vec<Tensor> = (0..3)
                .map(|_| Tensor::randn(0f32, 1.0, (lines, depth), &dev).unwrap())
                .collect();
            let values: Vec<Vec<f32>> = operands
                .iter()
                .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            for &isa in &isas {
                let stack = stack_for(isa, 3, lines, depth, |line, kk, out| {
                    for (o, v) in out.iter_mut().zip(&values) {
                        *o = v[line * depth + kk];
                    }
                });
                for (i, operand) in operands.iter().enumerate() {
                    let packed = with_view(operand, false, |v| pack(v, Role::Lhs, isa)).unwrap();
                    assert_eq!(stack.pairs(), packed.pairs);
                    assert!(
                        stack.term(i).data == &packed.data[..],
                        "{isa:?} {lines}x{depth}: operand {i} differs"
                    );
                }
            }
        }
    }

    #[test]
    fn odd_shapes_match_the_rounded_f32_product() {
        crate::ops::gemm_bf16::enable_in_this_test();
        println!(
            "kernels tested: {:?} (in use: {})",
            kernels(),
            kernel_name()
        );
        for (m, k, n) in [
            (1, 1, 1),
            (14, 2, 32),
            (15, 3, 33),
            (13, 31, 31),
            (29, 33, 65),
            (3, 257, 5),
            (113, 300, 257),
            (70, 2101, 40),
            (40, 513, 96),
        ] {
            check(m, k, n);
        }
    }

    /// A linear layer's product: rows of A rounded per task, the bias added per column, for
    /// row counts around the task and block sizes, a strided A and odd k and n.
    #[test]
    fn rows_times_a_packed_weight_plus_bias_match_the_rounded_product() {
        crate::ops::gemm_bf16::enable_in_this_test();
        if !available() {
            return;
        }
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 5, 3),
            (77, 768, 320),
            (129, 33, 65),
            (300, 640, 40),
            (8, 1, 600),
        ] {
            let a = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 3.0).collect();
            let expected = reference(&a, &w)
                .broadcast_add(&Tensor::from_slice(&bias, n, &dev).unwrap())
                .unwrap();
            let packed = pack_rhs(&w.to_dtype(DType::BF16).unwrap()).unwrap();
            let strided = a.t().unwrap().contiguous().unwrap().t().unwrap();
            for a in [&a, &strided] {
                let got = matmul_packed_rhs_bias(a, &packed, Some(&bias)).unwrap();
                let diff = crate::ops::max_abs_diff(&got, &expected);
                let scale = (k as f32).sqrt().max(1.0);
                assert!(diff < 1e-4 * scale, "{m}x{k}x{n}: {diff}");
            }
            let err = matmul_packed_rhs_bias(&a, &packed, Some(&bias[1..])).unwrap_err();
            assert!(err.to_string().contains("bias"), "{err}");
        }
    }

    /// A folded panel (two pairs in one vector's lanes) multiplies to what the plain panel
    /// does, up to the order of the sums, for each width up to `FOLDED_COLS`, overwriting and
    /// accumulating.
    #[test]
    fn a_folded_panel_gives_the_plain_panels_product() {
        enable_in_this_test();
        let Some(mut tiles) = Tiles::new().filter(|_| folds_panels()) else {
            println!("no AVX512_BF16 kernel here: nothing folds");
            return;
        };
        let pairs = 48;
        // Small integers and halves: every product and sum exact in f32, in any order.
        let value = |i: usize| ((i * 7919) % 13) as f32 * 0.5 - 3.0;
        let pair = |i: usize| {
            let round = |x: f32| bf16::from_f32(x).to_bits();
            word(round(value(2 * i)), round(value(2 * i + 1)))
        };
        let a: Vec<u32> = (0..TILE_ROWS * pairs).map(pair).collect();
        for cols in 1..=FOLDED_COLS {
            let plain: Vec<u32> = (0..pairs * PANEL)
                .map(|i| if i % PANEL < cols { pair(i + 5) } else { 0 })
                .collect();
            let mut folded = vec![0u32; pairs * FOLDED_COLS];
            for p in (0..pairs).step_by(2) {
                fold_pairs(
                    &plain[p * PANEL..],
                    &plain[(p + 1) * PANEL..],
                    &mut folded[p * FOLDED_COLS..(p + 2) * FOLDED_COLS],
                );
            }
            let ldo = 11;
            for accumulate in [false, true] {
                let start: Vec<f32> = (0..TILE_ROWS * ldo).map(value).collect();
                let (mut want, mut got) = (start.clone(), start);
                let plain_panel = Panel::Plain(&plain);
                tiles.block(&a, plain_panel, pairs, cols, &mut want, ldo, accumulate);
                let folded_panel = Panel::Folded(&folded);
                tiles.block(&a, folded_panel, pairs, cols, &mut got, ldo, accumulate);
                assert_eq!(got, want, "{cols} columns, accumulate {accumulate}");
            }
        }
    }

    #[test]
    fn empty_depth_gives_zeros() {
        crate::ops::gemm_bf16::enable_in_this_test();
        let dev = Device::Cpu;
        let a = Tensor::zeros((3, 0), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((0, 4), DType::F32, &dev).unwrap();
        let c = matmul(&a, &b).unwrap();
        assert_eq!(c.dims(), &[3, 4]);
        assert_eq!(c.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
