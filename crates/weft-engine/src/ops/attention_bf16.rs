//! Flash attention with bf16 products and the softmax in f32: what [`crate::ops::attention`]
//! runs on the CPU under `--dtype bf16` (PyTorch's bf16 autocast does the same: bf16 products,
//! f32 softmax statistics), on AMX tiles or, on Zen 4, the AVX512_BF16 micro-kernel ([`Tiles`]).
//!
//! The f32 flash kernel spends most of its time in the two products at the UNet's head size of
//! 40, where the vector units do four multiply-adds per score and value. Here both products run
//! on [`Tiles`]: a block of `TILE_ROWS` queries (rounded to bf16 pairs, scaled first) meets
//! the keys of one head in blocks of `KEYS`, packed once per head as AMX panels; each block's
//! scores (`TILE_ROWS x KEYS` f32, 32 KiB) get the online softmax (running max and sum per
//! query, [`crate::ops::math::exp`]) and, rounded to bf16, multiply the head's packed values into
//! the queries' f32 outputs. A task takes up to `GROUPS` query blocks of one image through every
//! head, so each key block is read once for all of them. On the AVX512_BF16 kernel, a last
//! panel of at most 8 value columns (a head of 40: 32 + 8) is folded, two key pairs to a
//! vector (`gemm_bf16::Panel::Folded`): half the multiply-adds of that panel, and the
//! 4096-token attention of bh=16, d=40 in 175-180 ms against 194-204 ms (`cargo bench --bench
//! ops -- bf16attention`, four alternating rounds).

use std::ops::Range;

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::ops::attention::Rows;
use crate::ops::gemm_bf16::{self, Panel, Tiles, FOLDED_COLS, PANEL, TILE_PAIRS, TILE_ROWS};
use crate::ops::math::online_softmax_block;

/// Keys per block (a multiple of `PANEL`).
const KEYS: usize = 256;
/// Query blocks per task (at most).
const GROUPS: usize = 4;

/// Whether [`run`] can: the bf16 matmul is on (AMX or AVX512_BF16).
pub(crate) fn available() -> bool {
    gemm_bf16::available()
}

/// Sizes of the packed operands of one head.
#[derive(Clone, Copy)]
struct Sizes {
    /// Query/key dimension in pairs, a multiple of `TILE_PAIRS`.
    dim_pairs: usize,
    /// Keys in pairs, a multiple of `TILE_PAIRS` (so keys a multiple of `PANEL`).
    key_pairs: usize,
    /// Panels of `PANEL` value columns.
    value_panels: usize,
    /// Value columns (the last panel's columns past them are zero).
    value_dim: usize,
    /// Whether the last panel of values is packed folded (`gemm_bf16::fold_pairs`): at most
    /// `FOLDED_COLS` columns, on a kernel that folds panels.
    folded_tail: bool,
}

impl Sizes {
    fn key_len(&self) -> usize {
        2 * self.key_pairs * self.dim_pairs
    }

    fn value_len(&self) -> usize {
        self.value_panels * self.key_pairs * PANEL
    }

    /// Output columns per query, the value dimension padded to whole panels.
    fn out_cols(&self) -> usize {
        self.value_panels * PANEL
    }

    /// Whether value panel `panel` is packed folded.
    fn folded(&self, panel: usize) -> bool {
        self.folded_tail && panel + 1 == self.value_panels
    }

    /// Where the words of value pair `p` of panel `panel` start: a plain panel has `PANEL` words
    /// per pair, a folded one `FOLDED_COLS` (16 for each two pairs).
    fn value_at(&self, panel: usize, p: usize) -> usize {
        let width = if self.folded(panel) {
            FOLDED_COLS
        } else {
            PANEL
        };
        panel * self.key_pairs * PANEL + p * width
    }
}

/// softmax(q kᵀ · `scale`) v into `out` ([B, N, H, Dv]) for `batch` images; `available()` must
/// hold and there must be at least one key.
pub(crate) fn run(q: &Rows, k: &Rows, v: &Rows, batch: usize, scale: f32, out: &mut [f32]) {
    let (queries, keys) = (q.rows, k.rows);
    let value_panels = v.dim.div_ceil(PANEL);
    let sizes = Sizes {
        dim_pairs: q.dim.div_ceil(2).next_multiple_of(TILE_PAIRS),
        key_pairs: keys.div_ceil(2).next_multiple_of(TILE_PAIRS),
        value_panels,
        value_dim: v.dim,
        folded_tail: gemm_bf16::folds_panels()
            && value_panels > 0
            && v.dim - (value_panels - 1) * PANEL <= FOLDED_COLS,
    };
    let heads = batch * q.heads;
    let mut packed_keys = vec![0u32; heads * sizes.key_len()];
    let mut packed_values = vec![0u32; heads * sizes.value_len()];
    packed_keys
        .par_chunks_mut(sizes.key_len().max(1))
        .zip(packed_values.par_chunks_mut(sizes.value_len().max(1)))
        .enumerate()
        .for_each(|(bh, (keys_dst, values_dst))| {
            let (b, h) = (bh / q.heads, bh % q.heads);
            pack_keys(k, b, h, sizes, keys_dst);
            pack_values(v, b, h, sizes, values_dst);
        });
    // Enough tasks for every thread several times over.
    let threads = rayon::current_num_threads();
    let mut groups = GROUPS;
    while groups > 1 && batch * queries.div_ceil(TILE_ROWS * groups) < 4 * threads {
        groups /= 2;
    }
    let task_rows = TILE_ROWS * groups;
    let row_len = q.heads * v.dim;
    let arch = pulp::Arch::new();
    out.par_chunks_mut(queries * row_len)
        .enumerate()
        .flat_map(|(b, image)| {
            image
                .par_chunks_mut(task_rows * row_len)
                .enumerate()
                .map(move |(t, out)| (b, t * task_rows, out))
        })
        .for_each(|(b, first, out)| {
            let mut task = Task::new(sizes, out.len() / row_len, q.dim);
            for h in 0..q.heads {
                let bh = b * q.heads + h;
                let head = Head {
                    keys: &packed_keys[bh * sizes.key_len()..(bh + 1) * sizes.key_len()],
                    values: &packed_values[bh * sizes.value_len()..(bh + 1) * sizes.value_len()],
                };
                task.head(arch, q, b, h, first, scale, keys, head);
                task.write(h, v.dim, row_len, out);
            }
        });
}

/// Head `(b, h)`'s keys as B panels for the scores: panels of `PANEL` keys, for each pair of the
/// dimension the panel's keys side by side.
fn pack_keys(k: &Rows, b: usize, h: usize, sizes: Sizes, dst: &mut [u32]) {
    let pairs = k.dim.div_ceil(2);
    let mut words = vec![0u32; pairs];
    for j in 0..k.rows {
        gemm_bf16::round_to_pairs(k.row(b, h, j), &mut words);
        let base = (j / PANEL) * sizes.dim_pairs * PANEL + j % PANEL;
        for (p, &w) in words.iter().enumerate() {
            dst[base + p * PANEL] = w;
        }
    }
}

/// Head `(b, h)`'s values as B panels for the outputs: panels of `PANEL` value columns, for each
/// pair of keys the panel's columns side by side; a folded last panel (`Sizes::folded_tail`)
/// has each two pairs' columns interleaved instead.
fn pack_values(v: &Rows, b: usize, h: usize, sizes: Sizes, dst: &mut [u32]) {
    let (mut lo, mut hi) = ([0f32; PANEL], [0f32; PANEL]);
    // The even pair's words of a folded panel, waiting for the odd pair's.
    let mut even = [0u32; PANEL];
    let mut words = [0u32; PANEL];
    for p in 0..v.rows.div_ceil(2) {
        for panel in 0..sizes.value_panels {
            let cols = panel * PANEL..((panel + 1) * PANEL).min(v.dim);
            let width = cols.len();
            lo[..width].copy_from_slice(&v.row(b, h, 2 * p)[cols.clone()]);
            lo[width..].fill(0.0);
            let hi = (2 * p + 1 < v.rows).then(|| {
                hi[..width].copy_from_slice(&v.row(b, h, 2 * p + 1)[cols]);
                hi[width..].fill(0.0);
                &hi
            });
            if !sizes.folded(panel) {
                let at = sizes.value_at(panel, p);
                gemm_bf16::pack_pair(&lo, hi, &mut dst[at..at + PANEL]);
                continue;
            }
            gemm_bf16::pack_pair(&lo, hi, &mut words);
            if p % 2 == 0 {
                even = words;
                words.fill(0);
                // Folded with the odd pair after it, or with zeros where there is none.
                if 2 * p + 2 < v.rows {
                    continue;
                }
            }
            let at = sizes.value_at(panel, p - p % 2);
            gemm_bf16::fold_pairs(&even, &words, &mut dst[at..at + 2 * FOLDED_COLS]);
        }
    }
}

/// One head's packed keys and values.
struct Head<'a> {
    keys: &'a [u32],
    values: &'a [u32],
}

/// A task's queries and running state over one head, and its scratch.
struct Task {
    sizes: Sizes,
    rows: usize,
    /// Query blocks in tile order, scaled and rounded.
    queries: Vec<u32>,
    maxes: Vec<f32>,
    sums: Vec<f32>,
    /// Un-normalised outputs, `out_cols` per query.
    outputs: Vec<f32>,
    /// One block's scores, `KEYS` per query.
    scores: Vec<f32>,
    /// One block's probabilities, rounded, in tile order.
    probs: Vec<u32>,
    /// One query row, scaled, and its pairs.
    scaled: Vec<f32>,
    words: Vec<u32>,
}

impl Task {
    fn new(sizes: Sizes, rows: usize, dim: usize) -> Self {
        let padded = rows.next_multiple_of(TILE_ROWS);
        Self {
            sizes,
            rows,
            queries: vec![0; padded * sizes.dim_pairs],
            maxes: vec![f32::NEG_INFINITY; padded],
            sums: vec![0.0; padded],
            outputs: vec![0.0; padded * sizes.out_cols()],
            scores: vec![0.0; TILE_ROWS * KEYS],
            probs: vec![0; TILE_ROWS * KEYS / 2],
            scaled: vec![0.0; dim],
            words: vec![0; dim.div_ceil(2)],
        }
    }

    /// Runs the task's queries `first..` of image `b` through head `h` (every key).
    #[allow(clippy::too_many_arguments)]
    fn head(
        &mut self,
        arch: pulp::Arch,
        q: &Rows,
        b: usize,
        h: usize,
        first: usize,
        scale: f32,
        keys: usize,
        head: Head,
    ) {
        let dim_pairs = self.sizes.dim_pairs;
        let out_cols = self.sizes.out_cols();
        self.maxes.fill(f32::NEG_INFINITY);
        self.sums.fill(0.0);
        self.outputs.fill(0.0);
        let block_len = TILE_ROWS * dim_pairs;
        for i in 0..self.rows {
            for (s, &x) in self.scaled.iter_mut().zip(q.row(b, h, first + i)) {
                *s = x * scale;
            }
            gemm_bf16::round_to_pairs(&self.scaled, &mut self.words);
            gemm_bf16::place_row_in_tiles(&self.words, i, dim_pairs, &mut self.queries);
        }
        let Some(mut tiles) = Tiles::new() else {
            unreachable!("attention_bf16::run is called only where a bf16 kernel is available")
        };
        for start in (0..keys).step_by(KEYS) {
            let len = KEYS.min(keys - start);
            let padded = len.next_multiple_of(PANEL);
            for block in 0..self.rows.div_ceil(TILE_ROWS) {
                let block_queries = &self.queries[block * block_len..][..block_len];
                for j in 0..padded / PANEL {
                    let panel = (start / PANEL + j) * dim_pairs * PANEL;
                    tiles.block(
                        block_queries,
                        Panel::Plain(&head.keys[panel..panel + dim_pairs * PANEL]),
                        q.dim.div_ceil(2),
                        PANEL,
                        &mut self.scores[j * PANEL..],
                        KEYS,
                        false,
                    );
                }
                let rows = block * TILE_ROWS..(block + 1) * TILE_ROWS;
                arch.dispatch(Softmax {
                    task: self,
                    rows,
                    len,
                    padded,
                });
                for panel in 0..self.sizes.value_panels {
                    let at = self.sizes.value_at(panel, start / 2);
                    let cols = PANEL.min(self.sizes.value_dim - panel * PANEL);
                    let out = &mut self.outputs[block * TILE_ROWS * out_cols + panel * PANEL..];
                    let values = if self.sizes.folded(panel) {
                        Panel::Folded(&head.values[at..at + padded / 2 * FOLDED_COLS])
                    } else {
                        Panel::Plain(&head.values[at..at + padded / 2 * PANEL])
                    };
                    tiles.block(&self.probs, values, padded / 2, cols, out, out_cols, true);
                }
            }
        }
    }

    /// Writes the task's normalised outputs of head `h` into `out` ([rows, H, Dv]).
    fn write(&self, h: usize, value_dim: usize, row_len: usize, out: &mut [f32]) {
        let out_cols = self.sizes.out_cols();
        for i in 0..self.rows {
            let inv = 1.0 / self.sums[i];
            let src = &self.outputs[i * out_cols..][..value_dim];
            let dst = &mut out[i * row_len + h * value_dim..][..value_dim];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s * inv;
            }
        }
    }
}

/// The online softmax of one block's scores for the task's queries `rows` (`len` keys, padded to
/// `padded`): running max and sum updated, outputs rescaled, probabilities rounded into `probs`
/// in tile order (zero past `len`). A `WithSimd` so that the loops (and `exp`) are compiled for
/// the CPU's vectors.
struct Softmax<'a> {
    task: &'a mut Task,
    rows: Range<usize>,
    len: usize,
    padded: usize,
}

impl WithSimd for Softmax<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self {
            task,
            rows,
            len,
            padded,
        } = self;
        let out_cols = task.sizes.out_cols();
        for (r, i) in rows.enumerate() {
            let row = &mut task.scores[r * KEYS..r * KEYS + padded];
            let valid = &mut row[..len];
            let rescale = online_softmax_block(simd, valid, &mut task.maxes[i], &mut task.sums[i]);
            if rescale != 1.0 {
                for o in &mut task.outputs[i * out_cols..(i + 1) * out_cols] {
                    *o *= rescale;
                }
            }
            row[len..].fill(0.0);
        }
        gemm_bf16::round_rows_to_tiles(&task.scores, KEYS, padded, &mut task.probs);
    }
}
