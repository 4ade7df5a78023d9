//! Scaled dot-product attention.
//!
//! Why our own: the plain form materialises all [B*H, N, M] scores at once (1 GiB for the UNet's
//! 4096-token self-attention at batch 2) and runs a softmax with one libm `exp` per score; and
//! gemm's kernels, called per query chunk, re-pack the keys each time and run short (head size
//! 40) products at a fraction of their speed. On the CPU in f32 this is a flash attention: each
//! task takes `ROWS x GROUPS` queries of one image through every head, and walks the keys in
//! blocks of `KEYS`. A block's scores (one `ROWS x KEYS` tile, 12 KiB, in L1) come from a
//! register-tiled kernel over keys packed once per head, get an online softmax (running max and
//! sum per query, [`crate::ops::math::exp`]), and are multiplied into the queries' f32 outputs
//! by a second register-tiled kernel; nothing of size N x M is ever stored. The kernels are
//! generic over `pulp`'s SIMD types (AVX-512, AVX2, NEON, scalar), picked at run time. Inside a
//! layer with bf16 weights under `--dtype bf16` on a CPU with AMX-BF16 or AVX512_BF16
//! ([`scaled_dot_product_in_layer`])
//! both products run in bf16 (AMX tiles or AVX512_BF16) instead (`attention_bf16`). Other devices and dtypes keep
//! the plain form with the softmax in f32.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::ops::attention_bf16;
use crate::ops::buffer;
use crate::ops::gemm_bf16;
use crate::ops::math::online_softmax_block;

/// Query rows per score tile.
const ROWS: usize = 12;
/// Keys per block: one tile of scores is `ROWS x KEYS` floats.
const KEYS: usize = 256;
/// Row tiles per task (at most), so that a key block, packed, is reused from L2 by this many
/// tiles before the next one is read.
const GROUPS: usize = 8;

/// softmax(q kᵀ / sqrt(d)) v over [B, H, N, D] queries and [B, H, M, D] keys and values, the
/// softmax in f32. Returns [B, H, N, D] in q's dtype.
pub fn scaled_dot_product(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    scaled_dot_product_on(pulp::Arch::new(), q, k, v, false)
}

/// [`scaled_dot_product`] inside a layer whose projections have the weight `weight`: where
/// that layer multiplies in bf16 (`--dtype bf16` on a CPU whose bf16 matmul uses AMX, see
/// [`crate::ops::gemm_bf16::applies`]), both products of the attention are bf16 too, the
/// softmax f32 (`attention_bf16`), as under PyTorch's bf16 autocast. Layers with f32 weights
/// keep f32 products whatever other models run.
pub fn scaled_dot_product_in_layer(
    weight: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<Tensor> {
    let bf16 = gemm_bf16::applies(q, weight) && attention_bf16::available();
    scaled_dot_product_on(pulp::Arch::new(), q, k, v, bf16)
}

/// [`scaled_dot_product`] with the CPU kernel compiled for `arch`'s vectors (tests try each).
/// `bf16`: the products in bf16 (the caller checked `attention_bf16::available`).
fn scaled_dot_product_on(
    arch: pulp::Arch,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bf16: bool,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let head_dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let cpu_kernel =
        matches!(q.device(), Device::Cpu) && [q, k, v].iter().all(|t| t.dtype() == DType::F32);
    if !cpu_kernel {
        // Callers may pass heads as strided views (`[B, N, H, D]` transposed); the matmuls
        // want each head's rows packed.
        let q = q.to_dtype(DType::F32)?.contiguous()?;
        let k = k.to_dtype(DType::F32)?.contiguous()?;
        let v = v.to_dtype(DType::F32)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        return probs.matmul(&v)?.to_dtype(dtype);
    }
    let (batch, heads, _, _) = q.dims4()?;
    let (kb, kh, _, kd) = k.dims4()?;
    let (vb, vh, keys, _) = v.dims4()?;
    if (kb, kh, kd) != (batch, heads, head_dim) || (vb, vh) != (batch, heads) || k.dim(2)? != keys {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?} and values {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    // The kernel reads rows of the last dimension in place, whatever the other strides.
    let rows_in_place = |t: &Tensor| -> Result<Tensor> {
        if t.stride()[3] == 1 {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    // [B, N, H, Dv] out, seen as [B, H, N, Dv]: the UNet puts the heads back side by side next.
    rows_in_place(q)?
        .apply_op3_no_bwd(
            &rows_in_place(k)?,
            &rows_in_place(v)?,
            &FlashAttention {
                scale: scale as f32,
                arch,
                bf16,
            },
        )?
        .transpose(1, 2)
}

struct FlashAttention {
    /// Both products in bf16 on AMX tiles.
    bf16: bool,
    scale: f32,
    arch: pulp::Arch,
}

/// One operand's rows: head `h` of image `b` has row `i` at `offset + b * batch_stride +
/// h * head_stride + i * row_stride`, `dim` floats long.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    data: &'a [f32],
    offset: usize,
    batch_stride: usize,
    head_stride: usize,
    row_stride: usize,
    pub(crate) heads: usize,
    pub(crate) rows: usize,
    pub(crate) dim: usize,
}

impl<'a> Rows<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout) -> Result<Self> {
        let (dims, stride) = (layout.dims(), layout.stride());
        if dims.len() != 4 || stride[3] != 1 {
            candle_core::bail!("attention needs [B, H, N, D] rows laid out in place");
        }
        Ok(Self {
            data: storage.as_slice::<f32>()?,
            offset: layout.start_offset(),
            batch_stride: stride[0],
            head_stride: stride[1],
            row_stride: stride[2],
            heads: dims[1],
            rows: dims[2],
            dim: dims[3],
        })
    }

    /// Row `i` of head `h` of image `b`.
    pub(crate) fn row(&self, b: usize, h: usize, i: usize) -> &'a [f32] {
        let start =
            self.offset + b * self.batch_stride + h * self.head_stride + i * self.row_stride;
        &self.data[start..start + self.dim]
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "weft-flash-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            Rows::new(q, q_layout)?,
            Rows::new(k, k_layout)?,
            Rows::new(v, v_layout)?,
        );
        let batch = q_layout.dims()[0];
        let mut out = buffer::zeros(batch * q.rows * q.heads * v.dim);
        if self.bf16 && !out.is_empty() && k.rows > 0 {
            attention_bf16::run(&q, &k, &v, batch, self.scale, &mut out);
            return Ok((
                CpuStorage::F32(out),
                Shape::from_dims(&[batch, q.rows, q.heads, v.dim]),
            ));
        }
        Flash {
            q,
            k,
            v,
            batch,
            scale: self.scale,
            arch: self.arch,
            out: &mut out,
        }
        .run();
        Ok((
            CpuStorage::F32(out),
            Shape::from_dims(&[batch, q.rows, q.heads, v.dim]),
        ))
    }
}

struct Flash<'a> {
    q: Rows<'a>,
    k: Rows<'a>,
    v: Rows<'a>,
    batch: usize,
    scale: f32,
    arch: pulp::Arch,
    /// [B, N, H, Dv].
    out: &'a mut [f32],
}

/// Keys and values of every head, packed for the kernels: per head, the keys in panels of
/// `2 * lanes` (for each of the D dimensions, that many keys' values side by side) and the
/// values as rows padded to whole vectors, zeros past M.
struct Packed {
    keys: Vec<f32>,
    values: Vec<f32>,
    key_len: usize,
    value_len: usize,
    /// Dv rounded up to whole vectors.
    value_dim: usize,
}

impl Packed {
    fn new(k: &Rows, v: &Rows, batch: usize, lanes: usize) -> Self {
        let panel = 2 * lanes;
        let padded = k.rows.next_multiple_of(panel);
        let value_dim = v.dim.next_multiple_of(lanes);
        let (key_len, value_len) = (padded * k.dim, padded * value_dim);
        let heads = batch * k.heads;
        let mut keys = buffer::zeros(heads * key_len);
        let mut values = buffer::zeros(heads * value_len);
        if key_len > 0 {
            keys.par_chunks_mut(key_len)
                .enumerate()
                .for_each(|(bh, dst)| {
                    let (b, h) = (bh / k.heads, bh % k.heads);
                    for j in 0..k.rows {
                        let (p, lane) = (j / panel, j % panel);
                        let base = p * k.dim * panel + lane;
                        for (kk, &x) in k.row(b, h, j).iter().enumerate() {
                            dst[base + kk * panel] = x;
                        }
                    }
                });
        }
        if value_len > 0 {
            values
                .par_chunks_mut(value_len)
                .enumerate()
                .for_each(|(bh, dst)| {
                    let (b, h) = (bh / v.heads, bh % v.heads);
                    for (j, row) in dst.chunks_exact_mut(value_dim).take(v.rows).enumerate() {
                        row[..v.dim].copy_from_slice(v.row(b, h, j));
                    }
                });
        }
        Self {
            keys,
            values,
            key_len,
            value_len,
            value_dim,
        }
    }
}

/// The widest f32 vector the CPU has, in lanes.
struct Lanes;

impl WithSimd for Lanes {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> usize {
        S::F32_LANES
    }
}

impl Flash<'_> {
    fn run(self) {
        let Self {
            q,
            k,
            v,
            batch,
            scale,
            arch,
            out,
        } = self;
        let (queries, keys) = (q.rows, k.rows);
        if out.is_empty() || keys == 0 {
            return;
        }
        let packed = Packed::new(&k, &v, batch, arch.dispatch(Lanes));
        // Enough tasks for every thread several times over, each as many row tiles as allows.
        let threads = rayon::current_num_threads();
        let mut groups = GROUPS;
        while groups > 1 && batch * queries.div_ceil(ROWS * groups) < 4 * threads {
            groups /= 2;
        }
        let task_rows = ROWS * groups;
        let row_len = q.heads * v.dim;
        out.par_chunks_mut(queries * row_len)
            .enumerate()
            .flat_map(|(b, image)| {
                image
                    .par_chunks_mut(task_rows * row_len)
                    .enumerate()
                    .map(move |(t, out)| (b, t * task_rows, out))
            })
            .for_each(|(b, first, out)| {
                arch.dispatch(Task {
                    q: &q,
                    packed: &packed,
                    scale,
                    b,
                    first,
                    out,
                    keys,
                    out_dim: v.dim,
                })
            });
    }
}

/// The queries `first..` of image `b` that fit in `out` through every head.
struct Task<'a> {
    q: &'a Rows<'a>,
    packed: &'a Packed,
    scale: f32,
    b: usize,
    first: usize,
    /// [rows, H, Dv].
    out: &'a mut [f32],
    keys: usize,
    out_dim: usize,
}

impl WithSimd for Task<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self {
            q,
            packed,
            scale,
            b,
            first,
            out,
            keys,
            out_dim,
        } = self;
        let (dim, row_len) = (q.dim, q.heads * out_dim);
        let rows = out.len() / row_len;
        let tiles = rows.div_ceil(ROWS);
        let mut state = Tiles::new(tiles, dim, packed.value_dim, out_dim);
        for h in 0..q.heads {
            state.reset();
            // Each tile's queries dimension-major ([dim][ROWS]), for the score kernel.
            for i in 0..rows {
                let tile = &mut state.queries[(i / ROWS) * ROWS * dim..][..ROWS * dim];
                for (kk, &x) in q.row(b, h, first + i).iter().enumerate() {
                    tile[kk * ROWS + i % ROWS] = x * scale;
                }
            }
            let bh = b * q.heads + h;
            let head_keys = &packed.keys[bh * packed.key_len..(bh + 1) * packed.key_len];
            let head_values = &packed.values[bh * packed.value_len..(bh + 1) * packed.value_len];
            for block in (0..keys).step_by(KEYS) {
                let len = KEYS.min(keys - block);
                let block_keys = &head_keys[block * dim..];
                let block_values = &head_values[block * packed.value_dim..];
                for t in 0..tiles {
                    state.tile(simd, t, block_keys, block_values, len);
                }
            }
            for i in 0..rows {
                let inv = 1.0 / state.sums[i];
                let src = &state.outputs[i * packed.value_dim..][..out_dim];
                let dst = &mut out[i * row_len + h * out_dim..][..out_dim];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s * inv;
                }
            }
        }
    }
}

/// One task's running state over a head: its scaled queries, and per query the running max,
/// sum and un-normalised output; the scratch tile of scores.
struct Tiles {
    dim: usize,
    value_dim: usize,
    /// The values' own width (`value_dim` is it rounded up to whole vectors).
    values_width: usize,
    queries: Vec<f32>,
    maxes: Vec<f32>,
    sums: Vec<f32>,
    outputs: Vec<f32>,
    scores: Vec<f32>,
}

impl Tiles {
    fn new(tiles: usize, dim: usize, value_dim: usize, values_width: usize) -> Self {
        let rows = tiles * ROWS;
        Self {
            dim,
            value_dim,
            values_width,
            queries: vec![0f32; rows * dim],
            maxes: vec![f32::NEG_INFINITY; rows],
            sums: vec![0f32; rows],
            outputs: vec![0f32; rows * value_dim],
            scores: vec![0f32; ROWS * KEYS],
        }
    }

    fn reset(&mut self) {
        self.queries.fill(0.0);
        self.maxes.fill(f32::NEG_INFINITY);
        self.sums.fill(0.0);
        self.outputs.fill(0.0);
    }

    /// Row tile `t` through one block of `len` keys: scores, online softmax, outputs.
    #[inline(always)]
    fn tile<S: Simd>(&mut self, simd: S, t: usize, keys: &[f32], values: &[f32], len: usize) {
        let (dim, value_dim) = (self.dim, self.value_dim);
        let queries = &self.queries[t * ROWS * dim..(t + 1) * ROWS * dim];
        let panel = 2 * S::F32_LANES;
        for p in 0..len.div_ceil(panel) {
            let panel_keys = &keys[p * dim * panel..(p + 1) * dim * panel];
            let scores = &mut self.scores[p * panel..];
            if S::F32_LANES >= 16 {
                scores_kernel::<S, ROWS>(simd, queries, 0, dim, panel_keys, scores);
            } else {
                // Fewer vector registers (AVX2, NEON): half the rows at a time.
                const HALF: usize = ROWS / 2;
                scores_kernel::<S, HALF>(simd, queries, 0, dim, panel_keys, scores);
                scores_kernel::<S, HALF>(simd, queries, HALF, dim, panel_keys, scores);
            }
        }
        let outputs = &mut self.outputs[t * ROWS * value_dim..(t + 1) * ROWS * value_dim];
        for r in 0..ROWS {
            let i = t * ROWS + r;
            let row = &mut self.scores[r * KEYS..r * KEYS + len];
            let rescale = online_softmax_block(simd, row, &mut self.maxes[i], &mut self.sums[i]);
            if rescale != 1.0 {
                for o in &mut outputs[r * value_dim..(r + 1) * value_dim] {
                    *o *= rescale;
                }
            }
        }
        let vectors = value_dim / S::F32_LANES;
        #[cfg(target_arch = "x86_64")]
        if S::F32_LANES == 16 && self.values_width % 16 == 8 && (2..=4).contains(&vectors) {
            // The last vector is half padding (a head of 40 values is 2.5 vectors).
            if let Some(v4) = pulp::x86::V4::try_new() {
                let probs = &self.scores[..];
                v4.vectorize(|| match vectors {
                    2 => values_kernel_half::<1>(v4, probs, len, values, value_dim, outputs),
                    3 => values_kernel_half::<2>(v4, probs, len, values, value_dim, outputs),
                    _ => values_kernel_half::<3>(v4, probs, len, values, value_dim, outputs),
                });
                return;
            }
        }
        let widest = if S::F32_LANES >= 16 { 4 } else { 2 };
        let mut first = 0;
        while first < vectors {
            let probs = &self.scores[..];
            match (vectors - first).min(widest) {
                1 => values_kernel::<S, 1>(simd, probs, len, values, value_dim, first, outputs),
                2 => values_kernel::<S, 2>(simd, probs, len, values, value_dim, first, outputs),
                3 => values_kernel::<S, 3>(simd, probs, len, values, value_dim, first, outputs),
                _ => values_kernel::<S, 4>(simd, probs, len, values, value_dim, first, outputs),
            }
            first += widest.min(vectors - first);
        }
    }
}

/// `scores[r * KEYS + j]` = q_r · key j for the `R` rows `first..` of a tile's queries (`dim x
/// ROWS`, dimension-major) and the `2 * lanes` keys of one panel (`dim` groups of that many
/// floats): `2R` accumulators in registers.
#[inline(always)]
fn scores_kernel<S: Simd, const R: usize>(
    simd: S,
    queries: &[f32],
    first: usize,
    dim: usize,
    panel: &[f32],
    scores: &mut [f32],
) {
    let lanes = S::F32_LANES;
    let (panel, _) = S::as_simd_f32s(panel);
    let (panel, queries) = (&panel[..2 * dim], &queries[..dim * ROWS]);
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; 2]; R];
    for (b, q) in panel.chunks_exact(2).zip(queries.chunks_exact(ROWS)) {
        let q: &[f32; R] = q[first..first + R].try_into().expect("R query rows");
        for (acc, &q) in acc.iter_mut().zip(q) {
            let a = simd.splat_f32s(q);
            acc[0] = simd.mul_add_f32s(a, b[0], acc[0]);
            acc[1] = simd.mul_add_f32s(a, b[1], acc[1]);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let (row, _) = S::as_mut_simd_f32s(&mut scores[(first + r) * KEYS..][..2 * lanes]);
        row[..2].copy_from_slice(acc);
    }
}

/// `outputs[r][first..first + V vectors]` += Σ_j probs[r * KEYS + j] · values row j, for the
/// `ROWS` rows, six at a time (`6V` accumulators in registers), over `len` keys.
#[inline(always)]
fn values_kernel<S: Simd, const V: usize>(
    simd: S,
    probs: &[f32],
    len: usize,
    values: &[f32],
    value_dim: usize,
    first: usize,
    outputs: &mut [f32],
) {
    const SIX: usize = 6;
    let vectors = value_dim / S::F32_LANES;
    let (values, _) = S::as_simd_f32s(&values[..len * value_dim]);
    let (outputs, _) = S::as_mut_simd_f32s(outputs);
    for r0 in (0..ROWS).step_by(SIX) {
        let p: [&[f32]; SIX] = std::array::from_fn(|r| &probs[(r0 + r) * KEYS..][..len]);
        let mut acc = [[simd.splat_f32s(0.0); V]; SIX];
        for (r, acc) in acc.iter_mut().enumerate() {
            acc.copy_from_slice(&outputs[(r0 + r) * vectors + first..][..V]);
        }
        for (j, row) in values.chunks_exact(vectors).enumerate() {
            let row: &[S::f32s; V] = row[first..first + V].try_into().expect("V vectors");
            for (acc, p) in acc.iter_mut().zip(&p) {
                let p = simd.splat_f32s(p[j]);
                for (acc, &x) in acc.iter_mut().zip(row) {
                    *acc = simd.mul_add_f32s(p, x, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            outputs[(r0 + r) * vectors + first..][..V].copy_from_slice(acc);
        }
    }
}

/// [`values_kernel`] for 16-lane vectors over all of a row of `V` whole vectors and half of
/// one (`value_dim` = `16 (V + 1)`, the last 8 floats padding): the half is multiplied as one
/// 8-lane vector. Zen 4 runs a 16-lane multiply-add as two 8-lane ones, so for a head of 40
/// values this is 5 halves per key and row instead of 6 (the f32 attention at 64x64 took
/// 0.276-0.290 s instead of 0.292-0.302 s, `benches/ops.rs`, alternating); CPUs with two full-width units
/// take the same time either way.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn values_kernel_half<const V: usize>(
    simd: pulp::x86::V4,
    probs: &[f32],
    len: usize,
    values: &[f32],
    value_dim: usize,
    outputs: &mut [f32],
) {
    use pulp::{f32x16, f32x8};
    const SIX: usize = 6;
    let full =
        |x: &[f32]| -> f32x16 { pulp::cast::<[f32; 16], _>(x[..16].try_into().expect("16")) };
    let half = |x: &[f32]| -> f32x8 { pulp::cast::<[f32; 8], _>(x[..8].try_into().expect("8")) };
    let values = &values[..len * value_dim];
    for r0 in (0..ROWS).step_by(SIX) {
        let p: [&[f32]; SIX] = std::array::from_fn(|r| &probs[(r0 + r) * KEYS..][..len]);
        let mut acc: [[f32x16; V]; SIX] = std::array::from_fn(|r| {
            std::array::from_fn(|v| full(&outputs[(r0 + r) * value_dim + 16 * v..]))
        });
        let mut tail: [f32x8; SIX] =
            std::array::from_fn(|r| half(&outputs[(r0 + r) * value_dim + 16 * V..]));
        for (j, row) in values.chunks_exact(value_dim).enumerate() {
            let x: [f32x16; V] = std::array::from_fn(|v| full(&row[16 * v..]));
            let x_tail = half(&row[16 * V..]);
            for r in 0..SIX {
                let weight = p[r][j];
                let wide = simd.splat_f32x16(weight);
                for (acc, &x) in acc[r].iter_mut().zip(&x) {
                    *acc = simd.mul_add_f32x16(wide, x, *acc);
                }
                tail[r] = simd.mul_add_f32x8(simd.splat_f32x8(weight), x_tail, tail[r]);
            }
        }
        for r in 0..SIX {
            let row = &mut outputs[(r0 + r) * value_dim..][..value_dim];
            for (v, acc) in acc[r].iter().enumerate() {
                row[16 * v..16 * (v + 1)].copy_from_slice(&pulp::cast::<_, [f32; 16]>(*acc));
            }
            row[16 * V..16 * V + 8].copy_from_slice(&pulp::cast::<_, [f32; 8]>(tail[r]));
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use crate::ops::attention::{
        scaled_dot_product, scaled_dot_product_in_layer, scaled_dot_product_on,
    };

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (q, k, v) = (
            q.contiguous().unwrap(),
            k.contiguous().unwrap(),
            v.contiguous().unwrap(),
        );
        let scale = 1.0 / (q.dim(3).unwrap() as f64).sqrt();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v)
            .unwrap()
    }

    fn check(batch: usize, heads: usize, queries: usize, keys: usize, dim: usize) {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 2.0, (batch, heads, queries, dim), &dev).unwrap();
        let k = Tensor::randn(0f32, 2.0, (batch, heads, keys, dim), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (batch, heads, keys, dim), &dev).unwrap();
        let got = scaled_dot_product(&q, &k, &v).unwrap();
        assert_eq!(got.dims(), &[batch, heads, queries, dim]);
        let diff = crate::ops::max_abs_diff(&got, &reference(&q, &k, &v));
        assert!(diff < 1e-4, "max abs diff {diff}");
    }

    #[test]
    fn self_and_cross_attention_match_the_plain_form() {
        check(2, 3, 17, 17, 8);
        check(1, 1, 5, 77, 12);
        check(3, 2, 1, 1, 4);
    }

    /// Every vector width this CPU can run: scalar, AVX2 and the widest.
    fn arches() -> Vec<pulp::Arch> {
        let mut arches = vec![pulp::Arch::Scalar, pulp::Arch::new()];
        #[cfg(target_arch = "x86_64")]
        arches.extend(pulp::x86::V3::try_new().map(pulp::Arch::V3));
        arches
    }

    #[test]
    fn values_of_whole_vectors_and_a_half_match_the_plain_form() {
        // 40 (a UNet head), 24 and 56: two, one and three 16-lane vectors and a half.
        for dv in [40, 24, 56] {
            let dev = Device::Cpu;
            let q = Tensor::randn(0f32, 1.0, (2, 2, 29, 40), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (2, 2, 300, 40), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (2, 2, 300, dv), &dev).unwrap();
            let got = scaled_dot_product(&q, &k, &v).unwrap();
            assert_eq!(got.dims(), &[2, 2, 29, dv]);
            let diff = crate::ops::max_abs_diff(&got, &reference(&q, &k, &v));
            assert!(diff < 1e-4, "{dv}: max abs diff {diff}");
        }
    }

    #[test]
    fn every_vector_width_matches_the_plain_form() {
        let dev = Device::Cpu;
        // Ragged query tiles (29 = 2 x 12 + 5), keys over two blocks and a part panel (300),
        // values wider than the keys and not a whole vector (21), two images of three heads.
        let q = Tensor::randn(0f32, 2.0, (2, 3, 29, 12), &dev).unwrap();
        let k = Tensor::randn(0f32, 2.0, (2, 3, 300, 12), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 3, 300, 21), &dev).unwrap();
        let expected = reference(&q, &k, &v);
        for arch in arches() {
            let got = scaled_dot_product_on(arch, &q, &k, &v, false).unwrap();
            assert_eq!(got.dims(), &[2, 3, 29, 21]);
            let diff = crate::ops::max_abs_diff(&got, &expected);
            assert!(diff < 1e-4, "{arch:?}: max abs diff {diff}");
        }
    }

    /// Under `--dtype bf16` (AMX or AVX512_BF16): within bf16 rounding of the f32 result, and closer still
    /// to the f32 attention of the queries, keys and values rounded to bf16 (what is left is
    /// the probabilities' rounding).
    #[test]
    fn bf16_products_match_the_plain_form_within_rounding() {
        crate::ops::gemm_bf16::enable_in_this_test();
        if !crate::ops::attention_bf16::available() {
            println!("no bf16 kernel here: the f32 kernel ran");
            return;
        }
        let dev = Device::Cpu;
        let round = |t: &Tensor| {
            t.to_dtype(candle_core::DType::BF16)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
        };
        // (batch, heads, queries, keys, dim, value dim): the UNet's head sizes, a part block
        // of queries, keys in several blocks with a part panel, cross-attention's 77 keys,
        // an odd dimension, values wider than a panel and not a whole one, or half of one.
        for (b, h, n, m, d, dv) in [
            (2, 3, 70, 77, 40, 40),
            (1, 2, 64, 300, 80, 72),
            (1, 1, 33, 129, 7, 5),
            (2, 1, 40, 1, 160, 160),
            (1, 2, 32, 64, 48, 48),
        ] {
            let q = Tensor::randn(0f32, 1.0, (b, h, n, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, h, m, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, h, m, dv), &dev).unwrap();
            // f32 weights keep f32 products; bf16 weights bring bf16 ones.
            let weight = Tensor::zeros((1, 1), candle_core::DType::F32, &dev).unwrap();
            let f32_layer = scaled_dot_product_in_layer(&weight, &q, &k, &v).unwrap();
            let plain = scaled_dot_product(&q, &k, &v).unwrap();
            assert_eq!(crate::ops::max_abs_diff(&f32_layer, &plain), 0.0);
            let weight = weight.to_dtype(candle_core::DType::BF16).unwrap();
            let got = scaled_dot_product_in_layer(&weight, &q, &k, &v).unwrap();
            assert_eq!(got.dims(), &[b, h, n, dv]);
            let exact = crate::ops::max_abs_diff(&got, &reference(&q, &k, &v));
            let rounded = crate::ops::max_abs_diff(&got, &reference(&q, &round(&k), &round(&v)));
            println!("{b}x{h}x{n}x{m}x{d}x{dv}: {exact} from f32, {rounded} from rounded k, v");
            assert!(exact < 0.05, "{exact} from the f32 attention");
            assert!(
                rounded < 0.02,
                "{rounded} from the attention of rounded keys and values"
            );
        }
    }

    #[test]
    fn mismatched_operands_are_an_error() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 4, 8), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 5, 6), candle_core::DType::F32, &dev).unwrap();
        let v = Tensor::zeros((1, 2, 5, 8), candle_core::DType::F32, &dev).unwrap();
        let err = scaled_dot_product(&q, &k, &v).unwrap_err().to_string();
        assert!(err.contains("do not fit together"), "{err}");
    }

    #[test]
    fn chunked_queries_match_the_plain_form() {
        // 256 Ki scores / 1100 keys = 238 query rows per chunk, so 700 queries take three chunks.
        check(2, 3, 700, 1100, 5);
    }

    #[test]
    fn non_contiguous_inputs_match_the_plain_form() {
        let dev = Device::Cpu;
        // [B, N, H, D] projections seen as [B, H, N, D], as the UNet's heads are.
        let heads = |n: usize| {
            Tensor::randn(0f32, 1.0, (2, n, 4, 6), &dev)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
        };
        let (q, k, v) = (heads(9), heads(11), heads(11));
        let got = scaled_dot_product(&q, &k, &v).unwrap();
        let diff = crate::ops::max_abs_diff(&got, &reference(&q, &k, &v));
        assert!(diff < 1e-4, "max abs diff {diff}");
    }
}
