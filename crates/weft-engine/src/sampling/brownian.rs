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
//! - every `randn` comes from a fresh torch CPU generator seeded with a 32-bit word of numpy's
//!   `SeedSequence(entropy=seed, spawn_key=(key, depth), pool_size=24)`, where the root has key 0
//!   and depth 0 and a child's key is `2 * key + (0 left | 1 right)`;
//! - a query `(ta, tb)` is the left-to-right sum of the largest tree nodes that tile it.
//!
//! The f32 arithmetic follows torch's: a Python float multiplying a tensor is first rounded to f32.
//! torchsde's LRU cache of node increments (45 entries) only saves work (a node dropped from it is
//! recomputed to the same bits), so it is kept here for speed with the same size.

use std::collections::{HashMap, VecDeque};

use crate::sampling::rng::TorchGenerator;

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

/// A Python int as numpy's `_int_to_uint32_array` splits it: little-endian 32-bit words, `[0]` for 0.
fn int_words(mut n: u64, out: &mut Vec<u32>) {
    if n == 0 {
        out.push(0);
    }
    while n > 0 {
        out.push(n as u32);
        n >>= 32;
    }
}

/// numpy's `SeedSequence(entropy, spawn_key=spawn_key, pool_size=POOL_SIZE).generate_state(N)`.
fn seed_sequence<const N: usize>(entropy: &[u32], spawn_key: &[u32]) -> [u32; N] {
    const INIT_A: u32 = 0x43b0_d7e5;
    const MULT_A: u32 = 0x931e_8875;
    const INIT_B: u32 = 0x8b51_f9dd;
    const MULT_B: u32 = 0x58f3_8ded;
    const MIX_MULT_L: u32 = 0xca01_f9dd;
    const MIX_MULT_R: u32 = 0x4973_f715;
    let mut assembled = entropy.to_vec();
    if !spawn_key.is_empty() && assembled.len() < POOL_SIZE {
        // numpy >= 1.19 pads the run entropy to the pool size when a spawn key follows.
        assembled.resize(POOL_SIZE, 0);
    }
    assembled.extend_from_slice(spawn_key);

    let mut hash_const = INIT_A;
    let mut hashmix = |value: u32| {
        let mut v = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_A);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> 16)
    };
    let mix = |x: u32, y: u32| {
        let r = MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> 16)
    };
    let mut pool = [0u32; POOL_SIZE];
    for (i, slot) in pool.iter_mut().enumerate() {
        *slot = hashmix(assembled.get(i).copied().unwrap_or(0));
    }
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for &word in assembled.iter().skip(POOL_SIZE) {
        for dst in 0..POOL_SIZE {
            let h = hashmix(word);
            pool[dst] = mix(pool[dst], h);
        }
    }

    let mut hash_const = INIT_B;
    let mut out = [0u32; N];
    for (i, o) in out.iter_mut().enumerate() {
        let mut v = pool[i % POOL_SIZE] ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_B);
        v = v.wrapping_mul(hash_const);
        *o = v ^ (v >> 16);
    }
    out
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
        let [w_seed, _h_seed, _a_seed] = seed_sequence::<3>(&entropy, &[]);
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
    /// clamped to it (torchsde warns and clamps); `ta == tb` gives zeros.
    ///
    /// # Panics
    /// Never for `ta <= tb`; `ta > tb` is an error in torchsde and returns zeros here.
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
        let [w_seed, ..] = seed_sequence::<4>(&self.entropy, &spawn);
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

    fn words(n: u64) -> Vec<u32> {
        let mut w = Vec::new();
        int_words(n, &mut w);
        w
    }

    #[test]
    fn seed_sequence_matches_numpy() {
        // numpy 2.4: SeedSequence(entropy=e, spawn_key=k, pool_size=24).generate_state(4)
        let cases: [(u64, &[u64], [u32; 4]); 6] = [
            (42, &[], [387750627, 2536650517, 4078839648, 2023786165]),
            (0, &[], [4025752534, 2687548107, 2326983537, 1576567101]),
            (
                u64::MAX,
                &[],
                [1186816001, 310380770, 3217591682, 2718387704],
            ),
            (42, &[0, 0], [2102017995, 2891809698, 2144110403, 379559146]),
            (42, &[5, 3], [3084123560, 468215949, 242942938, 2650128260]),
            (
                123,
                &[(1 << 33) + 7, 34],
                [3487174149, 607103877, 1268872164, 180559992],
            ),
        ];
        for (entropy, key, want) in cases {
            let mut spawn = Vec::new();
            key.iter().for_each(|&k| int_words(k, &mut spawn));
            assert_eq!(
                seed_sequence::<4>(&words(entropy), &spawn),
                want,
                "{entropy} {key:?}"
            );
        }
    }

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
