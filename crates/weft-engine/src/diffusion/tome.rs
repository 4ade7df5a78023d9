//! Token merging (`comfy_extras/nodes_tomesd.py`, from tomesd): at the full-resolution transformer
//! level, a share of the self-attention's query tokens is merged into their most similar
//! neighbours before the attention and copied back after it.
//!
//! Each 2x2 cell of the token grid keeps one random "destination" token; of the others, the
//! `ratio` share most similar (cosine) to some destination is averaged into it. ComfyUI draws the
//! destinations with `torch.randint` from torch's global generator, which `prepare_noise` has just
//! seeded and used for the initial noise; Weft continues that same stream
//! ([`crate::diffusion::patches::UNetPatches::start_sampling`]), so on the CPU a run draws what ComfyUI's does. Which
//! tokens merge where, and so the result, depends only on that draw: the orders ComfyUI's
//! unstable argsort leaves are undone by the unmerge.

use candle_core::{DType, Result, Tensor};

use crate::diffusion::patches::{GlobalDraws, SelfAttentionPatch, UndoAttentionPatch};

/// TomePatchModel's patch.
#[derive(Debug)]
pub struct TokenMerging {
    /// Share of the tokens merged away (`ratio`).
    pub ratio: f64,
    /// Where the destination draws come from.
    draws: GlobalDraws,
}

impl TokenMerging {
    /// The patch merging `ratio` of the tokens.
    pub fn new(ratio: f64) -> Self {
        TokenMerging {
            ratio,
            draws: GlobalDraws::new(),
        }
    }

    /// `torch.randint(4, size=(hsy, wsx, 1))`: each cell's destination (0..4, row-major).
    fn draw_cells(&self, count: usize) -> Vec<usize> {
        self.draws.with(|s| {
            (0..count)
                .map(|_| s.generator.randint_below(4) as usize)
                .collect()
        })
    }
}

impl SelfAttentionPatch for TokenMerging {
    fn before(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        (lh, lw): (usize, usize),
    ) -> Result<(Tensor, Tensor, Tensor, UndoAttentionPatch)> {
        let unchanged: UndoAttentionPatch = Box::new(Ok);
        let n = q.dim(1)?;
        // `get_functions`: only where the tokens are the latent's own grid.
        let downsample = (((lh * lw) / n.max(1)) as f64).sqrt().ceil() as usize;
        if downsample > 1 {
            return Ok((q, k, v, unchanged));
        }
        let r = (n as f64 * self.ratio) as usize;
        let (h, w) = (
            lh.div_ceil(downsample.max(1)),
            lw.div_ceil(downsample.max(1)),
        );
        let (hsy, wsx) = (h / 2, w / 2);
        if r == 0 || h == 1 || w == 1 || h * w != n {
            return Ok((q, k, v, unchanged));
        }
        let cells = self.draw_cells(hsy * wsx);
        let matching = Matching::new(&q, (w, h), &cells, r)?;
        let merged = matching.merge(&q)?;
        Ok((
            merged,
            k,
            v,
            Box::new(move |out: Tensor| matching.unmerge(&out)),
        ))
    }

    fn global_draws(&self) -> Option<&GlobalDraws> {
        Some(&self.draws)
    }
}

/// `bipartite_soft_matching_random2d` with 2x2 cells: which query tokens merge into which.
#[derive(Debug)]
pub struct Matching {
    tokens: usize,
    /// Destination tokens (one per cell), in token order.
    dst: Vec<u32>,
    /// Source tokens (the rest), in token order.
    src: Vec<u32>,
    /// Per batch element: positions in `src` kept as they are.
    unmerged: Vec<Vec<u32>>,
    /// Per batch element: (position in `src`, position in `dst`) of each merged token.
    merged: Vec<Vec<(u32, u32)>>,
}

impl Matching {
    /// The matching of `metric` (`[B, N, C]`, a `w` x `h` grid, row-major) merging `r` tokens,
    /// the destination of cell `(y, x)` being its token `cells[y * (w / 2) + x]` (0..4, row-major
    /// in the cell).
    pub fn new(metric: &Tensor, (w, h): (usize, usize), cells: &[usize], r: usize) -> Result<Self> {
        let (batch, tokens, _) = metric.dims3()?;
        let (hsy, wsx) = (h / 2, w / 2);
        let mut is_dst = vec![false; tokens];
        for (cell, &k) in cells.iter().enumerate().take(hsy * wsx) {
            let (y, x) = (2 * (cell / wsx) + k / 2, 2 * (cell % wsx) + k % 2);
            is_dst[y * w + x] = true;
        }
        let dst: Vec<u32> = (0..tokens as u32).filter(|&t| is_dst[t as usize]).collect();
        let src: Vec<u32> = (0..tokens as u32)
            .filter(|&t| !is_dst[t as usize])
            .collect();
        let r = r.min(src.len());
        let metric = metric.to_dtype(DType::F32)?;
        let metric = metric.broadcast_div(&metric.sqr()?.sum_keepdim(2)?.sqrt()?)?;
        let index = |v: &[u32]| Tensor::from_slice(v, v.len(), metric.device());
        let a = metric.index_select(&index(&src)?, 1)?;
        let b = metric.index_select(&index(&dst)?, 1)?;
        let scores = a.matmul(&b.transpose(1, 2)?.contiguous()?)?;
        let (mut unmerged, mut merged) = (Vec::new(), Vec::new());
        for e in 0..batch {
            let scores: Vec<Vec<f32>> = scores.get(e)?.to_vec2()?;
            // node_max, node_idx: each source's best destination (the first on ties).
            let best: Vec<(f32, u32)> = scores
                .iter()
                .map(|row| {
                    row.iter()
                        .enumerate()
                        .fold((f32::NEG_INFINITY, 0u32), |acc, (j, &s)| {
                            if s > acc.0 {
                                (s, j as u32)
                            } else {
                                acc
                            }
                        })
                })
                .collect();
            let mut order: Vec<u32> = (0..best.len() as u32).collect();
            order.sort_by(|&i, &j| best[j as usize].0.total_cmp(&best[i as usize].0));
            merged.push(
                order[..r]
                    .iter()
                    .map(|&i| (i, best[i as usize].1))
                    .collect(),
            );
            unmerged.push(order[r..].to_vec());
        }
        Ok(Matching {
            tokens,
            dst,
            src,
            unmerged,
            merged,
        })
    }

    /// `merge(x)`: `[B, N, C]` → `[B, N - r, C]`, the unmerged sources then the destinations,
    /// each the mean of itself and the sources merged into it.
    pub fn merge(&self, x: &Tensor) -> Result<Tensor> {
        let device = x.device();
        let index = |v: &[u32]| Tensor::from_slice(v, v.len(), device);
        let mut out = Vec::with_capacity(self.merged.len());
        for (e, (unmerged, merged)) in self.unmerged.iter().zip(&self.merged).enumerate() {
            let x = x.get(e)?;
            let src = x.index_select(&index(&self.src)?, 0)?;
            let dst = x.index_select(&index(&self.dst)?, 0)?;
            let (from, to): (Vec<u32>, Vec<u32>) = merged.iter().copied().unzip();
            let mut counts = vec![1f32; self.dst.len()];
            for &d in &to {
                counts[d as usize] += 1.0;
            }
            let sum = if from.is_empty() {
                dst
            } else {
                dst.index_add(&index(&to)?, &src.index_select(&index(&from)?, 0)?, 0)?
            };
            let counts =
                Tensor::from_vec(counts, (self.dst.len(), 1), device)?.to_dtype(x.dtype())?;
            let mean = sum.broadcast_div(&counts)?;
            out.push(if unmerged.is_empty() {
                mean
            } else {
                Tensor::cat(&[&src.index_select(&index(unmerged)?, 0)?, &mean], 0)?
            });
        }
        Tensor::stack(&out, 0)
    }

    /// `unmerge(x)`: `[B, N - r, C]` → `[B, N, C]`, every merged source taking its destination's
    /// value.
    pub fn unmerge(&self, x: &Tensor) -> Result<Tensor> {
        let device = x.device();
        let index = |v: &[u32]| Tensor::from_slice(v, v.len(), device);
        let mut out = Vec::with_capacity(self.merged.len());
        for (e, (unmerged, merged)) in self.unmerged.iter().zip(&self.merged).enumerate() {
            let x = x.get(e)?;
            let c = x.dim(1)?;
            let unm = x.narrow(0, 0, unmerged.len())?;
            let dst = x.narrow(0, unmerged.len(), self.dst.len())?;
            let (from, to): (Vec<u32>, Vec<u32>) = merged.iter().copied().unzip();
            let positions =
                |of: &[u32]| -> Vec<u32> { of.iter().map(|&i| self.src[i as usize]).collect() };
            let mut full = Tensor::zeros((self.tokens, c), x.dtype(), device)?.index_add(
                &index(&self.dst)?,
                &dst,
                0,
            )?;
            if !unmerged.is_empty() {
                full = full.index_add(&index(&positions(unmerged))?, &unm, 0)?;
            }
            if !from.is_empty() {
                let copies = dst.index_select(&index(&to)?, 0)?;
                full = full.index_add(&index(&positions(&from))?, &copies, 0)?;
            }
            out.push(full);
        }
        Tensor::stack(&out, 0)
    }
}
