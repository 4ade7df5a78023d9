//! torchsde's Brownian tree, bit for bit, and ComfyUI's `BrownianTreeNoiseSampler` on top of it.
//!
//! ComfyUI's SDE samplers (`dpmpp_sde`, `dpmpp_2m_sde(_heun)`, `dpmpp_3m_sde` and their `_gpu`
//! twins) draw their noise from `torchsde.BrownianTree(t0, w0, t1, entropy=seed)` over
//! `[sigma_min, sigma_max]` (`comfy/k_diffusion/sampling.py` `BatchedBrownianTree`). In torchsde
//! 0.2.5+ that is a `BrownianInterval` (`torchsde/_brownian/brownian_interval.py`) with
//! `halfway_tree=True`, `tol=1e-6`, `pool_size=24` and no Lévy area:
//!
//! - every time is rounded to 6 decimals with Python's `round(x, 6)`;
//! - the interval is a binary tree whose nodes always split at their (rounded) halfway point, so the
//!   tree, and every value in it, depends only on the seed, never on the order of queries;
//! - the root increment is `randn(W_seed) * sqrt(t1 - t0)`; a child's increment is the Brownian
//!   bridge `mean + sqrt(var) * randn(parent's W_seed)` drawn from its parent's increment, the right
//!   child taking `W_parent - W_left`;
//! - every `randn` comes from a fresh torch CPU generator seeded with the first 32-bit word of
//!   numpy's `SeedSequence(entropy=seed, spawn_key=(key, depth), pool_size=24)`
//!   ([`seed_sequence`]), where the root has key 0 and depth 0 and a child's key is
//!   `2 * key + (0 left | 1 right)`;
//! - a query `(ta, tb)` is the left-to-right sum of the largest tree nodes that tile it.
//!
//! The f32 arithmetic follows torch's: a Python float multiplying a tensor is first rounded to f32.
//! torchsde's LRU cache of node increments (45 entries) only saves work (a node dropped from it is
//! recomputed to the same bits), so it is kept here for speed with the same size.

use std::collections::{HashMap, VecDeque};

use crate::sampling::rng::{int_words, seed_sequence, TorchGenerator};

/// torchsde's `BrownianTree` defaults, as ComfyUI constructs it.
const POOL_SIZE: usize = 24;
const CACHE_SIZE: usize = 45;
/// `tol = 1e-6` makes torchsde round every time to `-int(log10(tol))` = 6 decimals.
const ROUND_DIGITS: usize = 6;

/// Python's `round(x, 6)`: the exact binary value rounded half-to-even at the 6th decimal, read
/// back as the nearest double. Rust's fixed-precision formatting is exact and rounds ties to even.
fn py_round(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.ROUND_DIGITS$}").parse().unwrap_or(x)
}

/// One node of the tree: the interval `[start, end]` (rounded), split at its halfway point once a
/// query needs it.
#[derive(Debug)]
struct Node {
    start: f64,
    end: f64,
    parent: Option<usize>,
    is_left: bool,
    spawn_key: u64,
    depth: u64,
    split: Option<Split>,
}

#[derive(Debug, Clone, Copy)]
struct Split {
    midway: f64,
    /// The seed of the bridge noise that splits this node's increment between its children.
    w_seed: u32,
    left: usize,
    right: usize,
}

/// `torchsde.BrownianTree(t0, zeros(shape), t1, entropy=seed)` on the CPU in f32: increments of a
/// Brownian motion on `[t0, t1]` with `numel` independent components.
#[derive(Debug)]
pub struct BrownianTree {
    numel: usize,
    entropy: Vec<u32>,
    /// Node 0 is the root.
    nodes: Vec<Node>,
    root_w: Vec<f32>,
    cache: HashMap<usize, Vec<f32>>,
    cache_order: VecDeque<usize>,
}

impl BrownianTree {
    /// A tree over `[t0, t1]` (`t0 <= t1`; ComfyUI passes f32 sigmas) for tensors of `numel`
    /// elements, seeded like torchsde's `entropy=seed` (the whole u64 is entropy).
    pub fn new(t0: f32, t1: f32, numel: usize, seed: u64) -> Self {
        let (t0, t1) = (t0 as f64, t1 as f64);
        let mut entropy = Vec::new();
        int_words(seed, &mut entropy);
        let w_seed = seed_sequence(&entropy, &[], POOL_SIZE, 1)[0];
        // The root increment scales with the unrounded times; every later step uses rounded ones.
        let scale = (t1 - t0).sqrt() as f32;
        let root_w = randn(w_seed, numel)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        let root = Node {
            start: py_round(t0),
            end: py_round(t1),
            parent: None,
            is_left: false,
            spawn_key: 0,
            depth: 0,
            split: None,
        };
        Self {
            numel,
            entropy,
            nodes: vec![root],
            root_w,
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
        }
    }

    /// `tree(ta, tb)`: the increment `W(tb) - W(ta)`, `numel` values. Times outside `[t0, t1]` are
    /// clamped to it (torchsde warns and clamps); `ta == tb` gives zeros, and so does `ta > tb`
    /// (an error in torchsde).
    pub fn increment(&mut self, ta: f32, tb: f32) -> Vec<f32> {
        let (start, end) = (self.nodes[0].start, self.nodes[0].end);
        let clamp = |t: f64| {
            if t < start {
                start
            } else if t > end {
                end
            } else {
                t
            }
        };
        let (ta, tb) = (clamp(ta as f64), clamp(tb as f64));
        let (ra, rb) = (py_round(ta), py_round(tb));
        // torchsde compares the clamped times before rounding; two times that round to the same
        // point would make it split forever (RecursionError), so they count as empty here.
        if ta >= tb || ra >= rb {
            return vec![0.0; self.numel];
        }
        let mut pieces = Vec::new();
        self.locate(0, ra, rb, &mut pieces);
        let mut total: Option<Vec<f32>> = None;
        for node in pieces {
            let w = self.node_increment(node);
            total = Some(match total {
                None => w,
                Some(mut acc) => {
                    acc.iter_mut().zip(&w).for_each(|(a, b)| *a += b);
                    acc
                }
            });
        }
        total.unwrap_or_else(|| vec![0.0; self.numel])
    }

    /// torchsde's `_loc_inner`: the nodes tiling `[ta, tb]` (inside `node`), left to right.
    fn locate(&mut self, node: usize, ta: f64, tb: f64, out: &mut Vec<usize>) {
        let (start, end) = (self.nodes[node].start, self.nodes[node].end);
        if ta == start && tb == end {
            out.push(node);
            return;
        }
        let split = match self.nodes[node].split {
            Some(s) => s,
            None => self.split(node),
        };
        if tb <= split.midway {
            self.locate(split.left, ta, tb, out);
        } else if ta >= split.midway {
            self.locate(split.right, ta, tb, out);
        } else {
            self.locate(split.left, ta, split.midway, out);
            self.locate(split.right, split.midway, tb, out);
        }
    }

    /// `_split_exact(halfway)`: creates the two children and the node's seeds. (torchsde splits
    /// eagerly down to the query point; splitting lazily on the way down makes the same tree.)
    fn split(&mut self, node: usize) -> Split {
        let n = &self.nodes[node];
        let midway = py_round(0.5 * (n.end + n.start));
        let (start, end, key, depth) = (n.start, n.end, n.spawn_key, n.depth);
        let mut spawn = Vec::new();
        int_words(key, &mut spawn);
        int_words(depth, &mut spawn);
        let w_seed = seed_sequence(&self.entropy, &spawn, POOL_SIZE, 1)[0];
        let child = |start, end, is_left: bool| Node {
            start,
            end,
            parent: Some(node),
            is_left,
            spawn_key: 2 * key + u64::from(!is_left),
            depth: depth + 1,
            split: None,
        };
        let left = self.nodes.len();
        self.nodes.push(child(start, midway, true));
        self.nodes.push(child(midway, end, false));
        let split = Split {
            midway,
            w_seed,
            left,
            right: left + 1,
        };
        self.nodes[node].split = Some(split);
        split
    }

    /// A node's increment, computed down from the nearest cached ancestor (or the root).
    fn node_increment(&mut self, node: usize) -> Vec<f32> {
        let mut path = Vec::new();
        let mut cur = node;
        let mut w = loop {
            if cur == 0 {
                break self.root_w.clone();
            }
            if let Some(w) = self.cache.get(&cur) {
                break w.clone();
            }
            path.push(cur);
            cur = match self.nodes[cur].parent {
                Some(p) => p,
                None => break self.root_w.clone(),
            };
        };
        for &child in path.iter().rev() {
            w = self.bridge(child, &w);
            self.remember(child, w.clone());
        }
        w
    }

    /// `_increment_and_space_time_levy_area` without Lévy area: a child's increment from its
    /// parent's `w`, in torch's f32 operation order.
    fn bridge(&self, child: usize, w: &[f32]) -> Vec<f32> {
        let c = &self.nodes[child];
        let Some(p) = c.parent.map(|p| &self.nodes[p]) else {
            return w.to_vec();
        };
        let Some(split) = p.split else {
            return w.to_vec();
        };
        let h_reciprocal = 1.0 / (p.end - p.start);
        let left_diff = split.midway - p.start;
        let right_diff = p.end - split.midway;
        let var = left_diff * right_diff * h_reciprocal;
        let (ld, hr, sd) = (left_diff as f32, h_reciprocal as f32, var.sqrt() as f32);
        let noise = randn(split.w_seed, self.numel);
        w.iter()
            .zip(noise)
            .map(|(&w, n)| {
                let left = w * ld * hr + n * sd;
                if c.is_left {
                    left
                } else {
                    w - left
                }
            })
            .collect()
    }

    /// torchsde's `_LRUDict.__setitem__`: evicts the oldest insertion once full.
    fn remember(&mut self, node: usize, w: Vec<f32>) {
        if self.cache.insert(node, w).is_some() {
            self.cache_order.retain(|&k| k != node);
        } else if self.cache.len() > CACHE_SIZE {
            if let Some(old) = self.cache_order.pop_front() {
                self.cache.remove(&old);
            }
        }
        self.cache_order.push_back(node);
    }
}

/// torchsde's `_randn`: `torch.randn(size, generator=torch.Generator().manual_seed(seed))`.
fn randn(seed: u32, numel: usize) -> Vec<f32> {
    TorchGenerator::manual_seed(u64::from(seed)).randn_vec_f32(numel)
}

/// ComfyUI's `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=True)`: unit-normal noise
/// for the step `sigma -> sigma_next`, the tree's increment over it divided by `sqrt(|dt|)`.
#[derive(Debug)]
pub struct BrownianNoise {
    trees: Vec<BrownianTree>,
    /// `-1` when the tree was built with `t0 > t1` (BatchedBrownianTree sorts and remembers).
    sign: f32,
}

impl BrownianNoise {
    /// One tree over the whole `shape` seeded with `seed`, as ComfyUI's samplers build it (they pass
    /// the prompt's seed as one int).
    pub fn new(shape: &[usize], sigma_min: f32, sigma_max: f32, seed: u64) -> Self {
        Self::build(shape.iter().product(), sigma_min, sigma_max, &[seed])
    }

    /// One tree per batch item (`BatchedBrownianTree` given a list of seeds): item `i` of `shape`'s
    /// first dimension draws from the tree seeded with `seeds[i]`. `None` when the lengths differ.
    pub fn per_item(
        shape: &[usize],
        sigma_min: f32,
        sigma_max: f32,
        seeds: &[u64],
    ) -> Option<Self> {
        let (&batch, item) = shape.split_first()?;
        (batch == seeds.len())
            .then(|| Self::build(item.iter().product(), sigma_min, sigma_max, seeds))
    }

    fn build(numel: usize, t0: f32, t1: f32, seeds: &[u64]) -> Self {
        let (lo, hi, sign) = sort(t0, t1);
        Self {
            trees: seeds
                .iter()
                .map(|&s| BrownianTree::new(lo, hi, numel, s))
                .collect(),
            sign,
        }
    }

    /// `noise_sampler(sigma, sigma_next)`: all items' noise, flattened in the tensor's order.
    /// (torch's f32 `sqrt` of `|dt|` is MKL's, not always correctly rounded, so a draw can be an
    /// ulp off ComfyUI's; the increments themselves are exact.)
    pub fn sample(&mut self, sigma: f32, sigma_next: f32) -> Vec<f32> {
        let (lo, hi, sign) = sort(sigma, sigma_next);
        let sign = self.sign * sign;
        let scale = (sigma_next - sigma).abs().sqrt();
        let mut out = Vec::new();
        for tree in &mut self.trees {
            out.extend(tree.increment(lo, hi).into_iter().map(|w| w * sign / scale));
        }
        out
    }
}

/// `BatchedBrownianTree.sort`.
fn sort(a: f32, b: f32) -> (f32, f32, f32) {
    if a < b {
        (a, b, 1.0)
    } else {
        (b, a, -1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_python() {
        // Python: round(x, 6); 0.0078125 and 0.0234375 are exact ties (half to even).
        let cases = [
            (0.0078125, 0.007812),
            (0.0234375, 0.023438),
            (1.0000005, 1.000001),
            (7.0000015, 7.000001),
            (2.5e-7, 0.0),
            (0.029167532920837402, 0.029168),
            (14.614642, 14.614642),
        ];
        for (x, want) in cases {
            assert_eq!(py_round(x), want, "{x}");
        }
    }

    #[test]
    fn increments_add_up_and_ignore_query_order() {
        let mut a = BrownianTree::new(0.03, 14.6, 32, 7);
        let mut b = BrownianTree::new(0.03, 14.6, 32, 7);
        let whole = a.increment(1.0, 5.0);
        let _ = b.increment(2.0, 3.0);
        assert_eq!(b.increment(1.0, 5.0), whole);
        let (l, r) = (a.increment(1.0, 2.5), a.increment(2.5, 5.0));
        for ((w, l), r) in whole.iter().zip(&l).zip(&r) {
            assert!((w - (l + r)).abs() < 1e-5);
        }
        assert!(a.increment(3.0, 3.0).iter().all(|&v| v == 0.0));
    }
}
