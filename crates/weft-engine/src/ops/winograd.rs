//! 3x3 convolutions with stride 1 by Winograd's F(2x2, 3x3): each 2x2 tile of output pixels is
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, where `d` is the tile's 4x4 input patch, so a layer is 16 matrix
//! products `U[ξ] V[ξ]` of `C_out x C_in` by `C_in x tiles` (16 multiplies per tile and channel
//! instead of the direct form's 36: 2.25x fewer). On a CPU whose kernels already run near their
//! peak (Zen 4's AVX512_BF16: the VAE decode's direct convolutions at 300-380 GFLOP/s, the
//! matmul at ~375), fewer multiplies is the only way left to a faster convolution. The products
//! run on `gemm_bf16`'s kernels: bf16 pairs for bf16 weights, or f32 words on its AVX-512F twin.
//!
//! The weight is transformed (`U = G g Gᵀ` in f32 from the stored weight, then packed as 16 left
//! operands) once per layer for large outputs, or per call for the UNet's upper levels
//! ([`plan`]). A task takes one image's group of tiles and every output channel: for each row
//! `a` of `Bᵀ` it computes `V[a, b]` for the four `b` from the input rows straight into panels,
//! multiplies each by `U[a, b]` and folds the product into the four output planes of its tiles
//! (`Aᵀ`'s coefficients are 0 and ±1), then writes the tiles' pixels, bias added. Nothing of the
//! size of the input times 16 is ever stored.
//!
//! Numerics: the transforms add and subtract neighbouring inputs (and halve weights) in f32
//! before any bf16 rounding; in bf16 the error is about twice the direct form's, in f32 within
//! 1e-5 of the outputs' spread (the tests); through the server the f32 image moved by one level
//! in 0.01% of its values.
//!
//! `unsafe`: the tasks write their tiles' pixels into one output buffer through a shared
//! pointer (tiles are disjoint), as the matmul's tasks do in `gemm_bf16`.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use candle_core::{DType, Device, Result, Tensor};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::ops::gemm_bf16::{self, CPtr, PackedStack, MAX_PANELS, PANEL};
use crate::ops::{buffer, cast};

/// `Bᵀ`'s rows: each takes two of the patch's four rows, as (index, sign). (Applied to columns,
/// `B` is written out in `transform_input`.)
const BT: [[(usize, f32); 2]; 4] = [
    [(0, 1.0), (2, -1.0)],
    [(1, 1.0), (2, 1.0)],
    [(2, 1.0), (1, -1.0)],
    [(1, 1.0), (3, -1.0)],
];
/// `Aᵀ`: the tile's first output row (column) is `M0 + M1 + M2`, the second `M1 - M2 - M3`.
const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// Most bytes of a task's four output planes (`4 * C_out * tiles` floats): they, the task's
/// panels of `V` for one row of `Bᵀ` and one product stay in L2.
const OUT_BYTES: usize = 512 << 10;

/// The products' precision: bf16 operands (the bf16 kernel, for bf16 weights) or f32 (the f32
/// kernel, AVX-512F).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precision {
    Bf16,
    F32,
}

/// How a convolution runs through [`conv`], if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// With the layer's transformed weight, kept: large outputs (128x128 and more per image: the
    /// VAE's upper levels, SDXL's first UNet level at 1024²), where the 16 packed copies of the
    /// weight (16/9 of the direct form's) pay for themselves.
    Kept,
    /// With the weight transformed for this call only: smaller outputs with enough pixels in all
    /// images ([`per_call_from`]: the SD1.5 UNet's upper levels with CFG), where the transform
    /// costs little beside the products and keeping it would add 16/9 of the UNet's
    /// convolutions.
    PerCall,
}

/// Output pixels, over all images, from which a convolution runs as [`Plan::PerCall`]: the
/// SD1.5 UNet's 32x32 level with CFG and up, in f32 and in bf16. In f32 its step took 11.6-12.8
/// s without, 10.9 s from the 64x64 level, 9.8-10.0 s from the 32x32 level, 10.9 s from the
/// 16x16 level (again on 2026-12-07: from the 16x16 level 8.98/9.71 s against 8.85/8.67 s and
/// 185 MiB more). In bf16, from the 16x16 level had measured as fast as from the 64x64 level
/// (six alternating steps each, medians 5.46 and 5.45 s) and peaked 245 MiB lower, so it was
/// the rule for a few hours; timed layer by layer it was not as fast: at 16x16 the per-call
/// transform of a 1280x2560 weight (16 terms, 105 MB, each call from the system: 11 more large
/// blocks per step missed the kept ones) made that convolution 169 ms against 89 ms in the
/// direct form, and three alternating steps from the 32x32 level against the 16x16 level took
/// 4.81/4.83/4.91 s against 4.97/5.23/5.03 s (peak 3468 against 3261 MiB).
/// `WEFT_WINOGRAD_PER_CALL` overrides it.
fn per_call_from() -> usize {
    static FROM: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let from = FROM.get_or_init(|| {
        std::env::var("WEFT_WINOGRAD_PER_CALL")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    from.unwrap_or(2 * 32 * 32)
}

#[cfg(test)]
thread_local! {
    static OFF_IN_TEST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `WEFT_WINOGRAD=off` for the calling thread only: tests of the direct form at sizes
/// [`plan`] would take.
#[cfg(test)]
pub(crate) fn off_in_this_test() {
    OFF_IN_TEST.with(|off| off.set(true));
}

/// Whether (and how) a convolution goes through [`conv`]: 3x3, stride 1, no dilation, a large
/// enough output (`pixels` per image, of `images`); in f32, on a CPU with AVX-512F.
/// `WEFT_WINOGRAD=off` turns it off.
pub(crate) fn plan(
    precision: Precision,
    kernel: (usize, usize),
    stride: usize,
    dilation: usize,
    pixels: usize,
    images: usize,
) -> Option<Plan> {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("WEFT_WINOGRAD").as_deref() == Ok("off"));
    #[cfg(test)]
    let off = off || OFF_IN_TEST.with(|off| off.get());
    let fits = !off
        && (precision == Precision::Bf16 || gemm_bf16::f32_available())
        && kernel == (3, 3)
        && stride == 1
        && dilation == 1;
    match () {
        _ if !fits => None,
        _ if pixels >= 128 * 128 => Some(Plan::Kept),
        _ if pixels * images >= per_call_from() => Some(Plan::PerCall),
        _ => None,
    }
}

/// A layer's weight transformed and packed for [`conv`].
pub struct WinogradWeight {
    /// `U[ξ]`, `ξ = 4a + b`, each `[C_out, C_in]` packed as the left operand.
    terms: PackedStack,
    c_out: usize,
    c_in: usize,
    precision: Precision,
}

impl WinogradWeight {
    /// The precision it was packed for.
    pub(crate) fn precision(&self) -> Precision {
        self.precision
    }
}

impl std::fmt::Debug for WinogradWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WinogradWeight({}x{}x3x3)", self.c_out, self.c_in)
    }
}

/// `G x`, which spreads three taps over the four points: `G` is `[[1, 0, 0], [½, ½, ½],
/// [½, -½, ½], [0, 0, 1]]`.
#[inline(always)]
fn spread(x: [f32; 3]) -> [f32; 4] {
    [
        x[0],
        0.5 * (x[0] + x[1] + x[2]),
        0.5 * (x[0] - x[1] + x[2]),
        x[2],
    ]
}

/// `weight` (`[C_out, C_in, 3, 3]`, any float dtype) as the 16 packed `U[ξ] = (G g Gᵀ)[a, b]`
/// (computed in f32, then rounded for `precision`).
pub(crate) fn pack_weight(weight: &Tensor, precision: Precision) -> Result<WinogradWeight> {
    let (c_out, c_in, kh, kw) = weight.dims4()?;
    if (kh, kw) != (3, 3) {
        candle_core::bail!("a Winograd F(2x2, 3x3) convolution needs a 3x3 kernel, not {kh}x{kw}");
    }
    // f16 and bf16 weights widened on every core (candle's `to_dtype` is one element at a time on
    // one thread, and a per-call transform widens the weight every call).
    let weight = cast::to_dtype(weight, DType::F32)?;
    // U[4a + b][oc][ic] = Σ_ij G[a][i] g[i][j] G[b][j] = (G (G g)ᵀ)ᵀ: all 16 terms of a kernel
    // at once, written straight into their packed places, so the weight is read once (in place:
    // a copy was a serial memcpy per call) and nothing of its size is stored in f32 (a per-call
    // transform was 2% of an f32 UNet step).
    let terms = buffer::with_f32(&weight, "a Winograd convolution", |taps| {
        gemm_bf16::pack_lhs_stack(16, c_out, c_in, precision == Precision::F32, |oc, ic, u| {
            let g = &taps[(oc * c_in + ic) * 9..][..9];
            // G times each column of g, then G times each row of that.
            let columns: [[f32; 4]; 3] =
                std::array::from_fn(|j| spread([g[j], g[3 + j], g[6 + j]]));
            for (a, u) in u.chunks_exact_mut(4).enumerate() {
                u.copy_from_slice(&spread(std::array::from_fn(|j| columns[j][a])));
            }
        })
    })??;
    Ok(WinogradWeight {
        terms,
        c_out,
        c_in,
        precision,
    })
}

/// The input of [`conv`]: `[images, C_in, H, W]` f32, contiguous, read through nearest
/// `upsample`-fold upsampling (a power of two) and zero padding of `padding`.
pub struct Input<'a> {
    pub data: &'a [f32],
    pub images: usize,
    pub channels: usize,
    /// Height and width after upsampling.
    pub height: usize,
    pub width: usize,
    pub padding: usize,
    pub upsample: usize,
}

impl Input<'_> {
    /// Input row `y` (after upsampling, before padding: may be out of range) of `channel`, at
    /// columns `x0..x0 + out.len()` (likewise), zero outside the image.
    #[inline(always)]
    fn row(&self, image: usize, channel: usize, y: isize, x0: isize, out: &mut [f32]) {
        if y < 0 || y >= self.height as isize {
            out.fill(0.0);
            return;
        }
        let shift = self.upsample.trailing_zeros();
        let source_w = self.width >> shift;
        let plane = (self.height >> shift) * source_w;
        let at = (image * self.channels + channel) * plane + (y as usize >> shift) * source_w;
        let src = &self.data[at..at + source_w];
        let lo = (-x0).clamp(0, out.len() as isize) as usize;
        let hi = (self.width as isize - x0).clamp(lo as isize, out.len() as isize) as usize;
        out[..lo].fill(0.0);
        out[hi..].fill(0.0);
        let from = (x0 + lo as isize) as usize;
        if shift == 0 {
            out[lo..hi].copy_from_slice(&src[from..from + hi - lo]);
        } else {
            for (x, o) in (from..).zip(&mut out[lo..hi]) {
                *o = src[x >> shift];
            }
        }
    }
}

/// A task's scratch (kept per thread).
struct Scratch {
    /// `V[a, b]` for the four `b`, each as `panels` B panels of `pairs` pairs.
    v: Vec<u32>,
    /// One product, `unit rows x cols`.
    product: Vec<f32>,
    /// The four output planes (`2dy + dx`), `C_out x cols` each.
    planes: Vec<f32>,
    /// Two input rows, the even and odd columns of their combination, and the four `V[a, b]`
    /// rows of two channels.
    rows: [Vec<f32>; 4],
    v_rows: [Vec<f32>; 8],
}

/// The Winograd F(2x2, 3x3) convolution of `x` with `w` plus `bias[channel]`:
/// `[images, C_out, H_out, W_out]` in f32, `H_out = H + 2 * padding - 2`.
pub fn conv(w: &WinogradWeight, x: &Input, bias: Option<&[f32]>) -> Result<Tensor> {
    let (m, c_in) = (w.c_out, w.c_in);
    if x.channels != c_in {
        candle_core::bail!(
            "conv2d input has {} channels, the kernel expects {c_in}",
            x.channels
        );
    }
    if bias.is_some_and(|b| b.len() != m) {
        candle_core::bail!(
            "conv2d bias has {} values for {m} output channels",
            bias.map_or(0, <[f32]>::len)
        );
    }
    let (out_h, out_w) = (
        (x.height + 2 * x.padding).saturating_sub(2),
        (x.width + 2 * x.padding).saturating_sub(2),
    );
    let len = x.images * m * out_h * out_w;
    let mut c: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return Tensor::from_vec(c, (x.images, m, out_h, out_w), &Device::Cpu);
    }
    let (tiles_w, tiles) = (out_w.div_ceil(2), out_h.div_ceil(2) * out_w.div_ceil(2));
    let panels = (OUT_BYTES / (16 * m) / PANEL).clamp(1, MAX_PANELS);
    let cols = panels * PANEL;
    let groups = tiles.div_ceil(cols);
    let pairs = w.terms.pairs();
    let (unit, chunk) = (w.terms.unit_rows(), w.terms.chunk_units());
    let scratch = || Scratch {
        v: vec![0; 4 * panels * pairs * PANEL],
        product: vec![0.0; chunk * unit * cols],
        planes: vec![0.0; 4 * m * cols],
        rows: std::array::from_fn(|_| vec![0.0; 2 * cols + 2]),
        v_rows: std::array::from_fn(|_| vec![0.0; cols]),
    };
    let job = Job {
        w,
        x,
        bias,
        c: CPtr(c.spare_capacity_mut().as_mut_ptr().cast()),
        tiles: Tiles {
            width: tiles_w,
            count: tiles,
            out: (out_h, out_w),
        },
        panels,
        groups,
    };
    let arch = pulp::Arch::new();
    (0..x.images * groups)
        .into_par_iter()
        .for_each_init(scratch, |s, task| {
            arch.dispatch(Task { job: &job, s, task })
        });
    // SAFETY: every output pixel lies in exactly one tile, every tile in one task's group, and
    // each task wrote all of its tiles' pixels (`write_tiles`).
    unsafe { c.set_len(len) };
    Tensor::from_vec(c, (x.images, m, out_h, out_w), &Device::Cpu)
}

/// What every task of one [`conv`] call shares.
struct Job<'a> {
    w: &'a WinogradWeight,
    x: &'a Input<'a>,
    bias: Option<&'a [f32]>,
    c: CPtr,
    tiles: Tiles,
    /// B panels (of `PANEL` tiles) per task.
    panels: usize,
    /// Tasks per image.
    groups: usize,
}

/// One task, as a `WithSimd` so that the transforms, folds and writes (inlined into it) are
/// compiled for the CPU's widest vectors.
struct Task<'a> {
    job: &'a Job<'a>,
    s: &'a mut Scratch,
    task: usize,
}

impl WithSimd for Task<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Self { job, s, task } = self;
        let Job {
            w,
            x,
            bias,
            c,
            tiles,
            panels,
            groups,
        } = *job;
        let (m, cols, pairs) = (w.c_out, panels * PANEL, w.terms.pairs());
        let (unit, chunk) = (w.terms.unit_rows(), w.terms.chunk_units());
        let units_m = m.div_ceil(unit);
        let (image, group) = (task / groups, task % groups);
        let first = group * cols;
        let mut kernel = w.terms.kernel();
        s.planes.fill(0.0);
        for a in 0..4 {
            transform_input(x, image, a, first, cols, tiles, w.precision, pairs, s);
            for b in 0..4 {
                let v = &s.v[b * panels * pairs * PANEL..(b + 1) * panels * pairs * PANEL];
                let panel =
                    |j: usize, from: usize| &v[(j * pairs + from) * PANEL..(j + 1) * pairs * PANEL];
                for ch in 0..units_m.div_ceil(chunk) {
                    let units = ch * chunk..((ch + 1) * chunk).min(units_m);
                    let row0 = units.start * unit;
                    let rows = (units.len() * unit).min(m - row0);
                    gemm_bf16::sum_tile(
                        &mut kernel,
                        w.terms.term(4 * a + b),
                        units,
                        panels,
                        panel,
                        &mut s.product,
                    );
                    fold(&s.product[..rows * cols], a, b, row0, m, &mut s.planes);
                }
            }
        }
        // SAFETY: the task's tiles `first..first + cols` of image `image` are its own (tasks
        // differ in image or group), and `write_tiles` writes only their pixels, inside the
        // output (`c`, as long as `[images, C_out, H_out, W_out]`).
        unsafe { write_tiles(&s.planes, m, image, first, cols, tiles, bias, c) };
    }
}

/// The output's tiling: `count` tiles, `width` per row, over `out` pixels.
#[derive(Clone, Copy)]
struct Tiles {
    width: usize,
    count: usize,
    out: (usize, usize),
}

impl Tiles {
    /// The stretches of one tile row among tiles `first..first + cols`: (tile row, first tile
    /// column, tiles, offset of the first among the group's columns).
    #[inline(always)]
    fn segments(
        self,
        first: usize,
        cols: usize,
    ) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        let end = (first + cols).min(self.count);
        let mut t = first;
        std::iter::from_fn(move || {
            if t >= end {
                return None;
            }
            let (ty, tx) = (t / self.width, t % self.width);
            let n = (self.width - tx).min(end - t);
            let segment = (ty, tx, n, t - first);
            t += n;
            Some(segment)
        })
    }
}

/// Packs `V[a, b] = (Bᵀ d B)[a, b]` for the four `b` of row `a`, for tiles `first..first + cols`
/// of image `image` (zero past the last tile), into `s.v`: `words` per tile, channel pairs as
/// bf16 pairs or channels as f32 words.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn transform_input(
    x: &Input,
    image: usize,
    a: usize,
    first: usize,
    cols: usize,
    tiles: Tiles,
    precision: Precision,
    words: usize,
    s: &mut Scratch,
) {
    let panels = cols / PANEL;
    let [(i1, s1), (i2, s2)] = BT[a];
    let per_word = match precision {
        Precision::Bf16 => 2,
        Precision::F32 => 1,
    };
    for p in 0..words {
        for half in 0..per_word {
            let channel = per_word * p + half;
            let v_rows = &mut s.v_rows[4 * half..4 * half + 4];
            for row in v_rows.iter_mut() {
                row.fill(0.0);
            }
            if channel >= x.channels {
                continue;
            }
            for (ty, tx, n, at) in tiles.segments(first, cols) {
                // The patch rows i1 and i2 of tiles tx..tx + n, combined (`Bᵀ d`'s row a) and
                // split into even and odd columns, so that `(Bᵀ d B)[a, b]` for tile t is
                // E[t] - E[t+1], O[t] + E[t+1], E[t+1] - O[t], O[t] - O[t+1]: `B`'s columns
                // as whole-vector operations.
                let y0 = (2 * ty) as isize - x.padding as isize;
                let x0 = (2 * tx) as isize - x.padding as isize;
                let span = 2 * n + 2;
                let [r1, r2, even, odd] = &mut s.rows;
                x.row(image, channel, y0 + i1 as isize, x0, &mut r1[..span]);
                x.row(image, channel, y0 + i2 as isize, x0, &mut r2[..span]);
                let pairs = r1[..span].chunks_exact(2).zip(r2[..span].chunks_exact(2));
                for ((e, o), (p1, p2)) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                    *e = s1 * p1[0] + s2 * p2[0];
                    *o = s1 * p1[1] + s2 * p2[1];
                }
                let (e0, e1) = (&even[..n], &even[1..=n]);
                let (o0, o1) = (&odd[..n], &odd[1..=n]);
                let [v0, v1, v2, v3] = v_rows else {
                    unreachable!("four rows of V per channel")
                };
                let (v0, v1) = (&mut v0[at..at + n], &mut v1[at..at + n]);
                let (v2, v3) = (&mut v2[at..at + n], &mut v3[at..at + n]);
                for (t, (v0, v1)) in v0.iter_mut().zip(v1.iter_mut()).enumerate() {
                    *v0 = e0[t] - e1[t];
                    *v1 = o0[t] + e1[t];
                }
                for (t, (v2, v3)) in v2.iter_mut().zip(v3.iter_mut()).enumerate() {
                    *v2 = e1[t] - o0[t];
                    *v3 = o0[t] - o1[t];
                }
            }
        }
        for b in 0..4 {
            let v = &mut s.v[b * panels * words * PANEL..(b + 1) * panels * words * PANEL];
            for j in 0..panels {
                let run = j * PANEL..(j + 1) * PANEL;
                let dst = &mut v[(j * words + p) * PANEL..][..PANEL];
                if precision == Precision::F32 {
                    for (d, &x) in dst.iter_mut().zip(&s.v_rows[b][run]) {
                        *d = x.to_bits();
                    }
                    continue;
                }
                let Ok(lo) = <&[f32; PANEL]>::try_from(&s.v_rows[b][run.clone()]) else {
                    unreachable!("a panel is PANEL columns")
                };
                let hi = (2 * p + 1 < x.channels)
                    .then(|| <&[f32; PANEL]>::try_from(&s.v_rows[4 + b][run]).ok())
                    .flatten();
                gemm_bf16::pack_pair(lo, hi, dst);
            }
        }
    }
}

/// Adds the product `M[a, b]` of rows `row0..` (`product`, `cols` per row) into the four output
/// planes (`C_out x cols` each) with `Aᵀ`'s coefficients.
#[inline(always)]
fn fold(product: &[f32], a: usize, b: usize, row0: usize, m: usize, planes: &mut [f32]) {
    let cols = planes.len() / (4 * m);
    for (dy, at_y) in AT.iter().enumerate() {
        for (dx, at_x) in AT.iter().enumerate() {
            let coef = at_y[a] * at_x[b];
            if coef == 0.0 {
                continue;
            }
            let plane = &mut planes[(2 * dy + dx) * m * cols..][..m * cols];
            let dst = &mut plane[row0 * cols..row0 * cols + product.len()];
            if coef > 0.0 {
                dst.iter_mut().zip(product).for_each(|(d, &p)| *d += p);
            } else {
                dst.iter_mut().zip(product).for_each(|(d, &p)| *d -= p);
            }
        }
    }
}

/// Writes the pixels of tiles `first..first + cols` of image `image` from the output planes into
/// C (`[images, C_out, H_out, W_out]`), bias added.
///
/// # Safety
/// Those pixels of C are writable and written by no other thread meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn write_tiles(
    planes: &[f32],
    m: usize,
    image: usize,
    first: usize,
    cols: usize,
    tiles: Tiles,
    bias: Option<&[f32]>,
    c: CPtr,
) {
    let (out_h, out_w) = tiles.out;
    for r in 0..m {
        let add = bias.map_or(0.0, |b| b[r]);
        for (ty, tx, n, at) in tiles.segments(first, cols) {
            for dy in 0..2 {
                let y = 2 * ty + dy;
                if y >= out_h {
                    break;
                }
                let x0 = 2 * tx;
                let width = (2 * n).min(out_w - x0);
                // SAFETY: row y < out_h, columns x0..x0 + width <= out_w of channel r of image
                // `image` belong to this task's tiles (the caller's promise); seen as
                // `MaybeUninit`, as C is not initialised yet.
                let dst: &mut [MaybeUninit<f32>] = unsafe {
                    let at = ((image * m + r) * out_h + y) * out_w + x0;
                    std::slice::from_raw_parts_mut(c.get().add(at).cast(), width)
                };
                let even = &planes[(2 * dy) * m * cols + r * cols + at..][..n];
                let odd = &planes[(2 * dy + 1) * m * cols + r * cols + at..][..n];
                let both = even.iter().zip(odd);
                for (d, (&e, &o)) in dst.chunks_exact_mut(2).zip(both) {
                    d[0].write(e + add);
                    d[1].write(o + add);
                }
                if width % 2 == 1 {
                    dst[width - 1].write(even[width / 2] + add);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::Conv2dConfig;

    use super::*;

    #[test]
    fn matches_the_f32_convolution_within_bf16_rounding() {
        gemm_bf16::enable_in_this_test();
        if !gemm_bf16::available() {
            // No bf16 kernel on this CPU: nothing here runs.
            return;
        }
        let dev = Device::Cpu;
        // (batch, C_in, H, W), C_out, padding, upsample.
        let shapes = [
            // Odd sizes and an odd C_in (a channel without its pair) ...
            ((2, 5, 7, 9), 3, 1, 1),
            // ... no padding, ...
            ((1, 4, 10, 8), 17, 0, 1),
            // ... read through the upsampling, with more output channels than one row chunk,
            ((2, 3, 5, 7), 130, 1, 2),
            // ... several tile groups, each spanning tile rows, ...
            ((1, 8, 40, 50), 9, 1, 1),
            // ... a wider padding.
            ((1, 40, 9, 33), 6, 2, 1),
        ];
        for ((batch, c_in, h, w), c_out, padding, upsample) in shapes {
            let xs = Tensor::randn(0f32, 1.0, (batch, c_in, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (c_out, c_in, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, c_out, &dev).unwrap();
            let config = Conv2dConfig {
                padding,
                ..Default::default()
            };
            let upsampled = xs.upsample_nearest2d(h * upsample, w * upsample).unwrap();
            let expected = candle_nn::Conv2d::new(weight.clone(), Some(bias.clone()), config)
                .forward(&upsampled)
                .unwrap();
            let packed =
                pack_weight(&weight.to_dtype(DType::BF16).unwrap(), Precision::Bf16).unwrap();
            let data = xs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let input = Input {
                data: &data,
                images: batch,
                channels: c_in,
                height: h * upsample,
                width: w * upsample,
                padding,
                upsample,
            };
            let bias_values = bias.to_vec1::<f32>().unwrap();
            let got = conv(&packed, &input, Some(&bias_values)).unwrap();
            assert_eq!(got.dims(), expected.dims());
            // The direct form in bf16 (rounded operands, f32 sums) against the same f32
            // convolution: Winograd's transforms round sums and differences of neighbours, about
            // twice the direct form's error (measured 1.6-2x in the mean).
            let round = |t: &Tensor| {
                t.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            };
            let direct = candle_nn::Conv2d::new(round(&weight), Some(bias), config)
                .forward(&round(&upsampled))
                .unwrap();
            let mean = |a: &Tensor| {
                let d = (a - &expected).unwrap().abs().unwrap();
                d.mean_all().unwrap().to_scalar::<f32>().unwrap()
            };
            let (max, direct_max) = (
                crate::ops::max_abs_diff(&got, &expected),
                crate::ops::max_abs_diff(&direct, &expected),
            );
            let (mean, direct_mean) = (mean(&got), mean(&direct));
            assert!(
                mean < 2.5 * direct_mean && max < 5.0 * direct_max,
                "{c_in}->{c_out}: mean diff {mean} (direct {direct_mean}), max {max} ({direct_max})"
            );
            if gemm_bf16::f32_available() {
                // In f32 only the order of the sums differs.
                let packed = pack_weight(&weight, Precision::F32).unwrap();
                let got = conv(&packed, &input, Some(&bias_values)).unwrap();
                let max = crate::ops::max_abs_diff(&got, &expected);
                let spread = (9.0 * c_in as f32).sqrt();
                assert!(
                    max < 1e-5 * spread,
                    "{c_in}->{c_out} in f32: max diff {max}"
                );
                // An f16-stored weight is widened exactly: the same product as its f32 copy.
                let half = weight.to_dtype(DType::F16).unwrap();
                let widened = half.to_dtype(DType::F32).unwrap();
                let from_half = pack_weight(&half, Precision::F32).unwrap();
                let from_widened = pack_weight(&widened, Precision::F32).unwrap();
                let (a, b) = (
                    conv(&from_half, &input, Some(&bias_values)).unwrap(),
                    conv(&from_widened, &input, Some(&bias_values)).unwrap(),
                );
                assert_eq!(crate::ops::max_abs_diff(&a, &b), 0.0, "{c_in}->{c_out} f16");
            }
        }
    }

    #[test]
    fn a_kernel_other_than_3x3_or_a_wrong_bias_is_an_error() {
        gemm_bf16::enable_in_this_test();
        let dev = Device::Cpu;
        let weight = Tensor::zeros((2, 2, 1, 1), DType::F32, &dev).unwrap();
        let err = pack_weight(&weight, Precision::Bf16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3x3 kernel, not 1x1"), "{err}");
        if !gemm_bf16::available() {
            return;
        }
        let weight = Tensor::zeros((2, 2, 3, 3), DType::F32, &dev).unwrap();
        let packed = pack_weight(&weight, Precision::Bf16).unwrap();
        let data = vec![0f32; 2 * 4 * 4];
        let input = Input {
            data: &data,
            images: 1,
            channels: 2,
            height: 4,
            width: 4,
            padding: 1,
            upsample: 1,
        };
        let err = conv(&packed, &input, Some(&[0.0; 3]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bias has 3 values for 2 output channels"),
            "{err}"
        );
        let three = Input {
            channels: 3,
            ..input
        };
        assert!(conv(&packed, &three, None).is_err());
    }
}
