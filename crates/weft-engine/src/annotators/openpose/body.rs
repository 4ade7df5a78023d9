//! `Body.__call__` of the pack's `open_pose/body.py`: the body net at one scale (0.5 of the
//! 368-pixel box), its maps brought back to the image size the way `smart_resize` does it,
//! heatmap peaks found on scipy's `gaussian_filter(sigma=3)`, limbs scored along the part-affinity
//! fields, and people assembled from the limbs. Float orders follow numpy's where a threshold
//! could tell them apart.

use candle_core::{Device, Tensor};

use crate::preprocess::cv::{self, Interpolation};
use crate::preprocess::{ImageU8, PreprocessError, Result};

use super::net::BodyNet;

const OP: &str = "OpenposePreprocessor";
const BOX_SIZE: f64 = 368.0;
const STRIDE: usize = 8;
const PAD_VALUE: u8 = 128;
const THRE1: f64 = 0.1;
const THRE2: f64 = 0.05;
const MID_NUM: usize = 10;

/// The limbs as (part A, part B), 1-based as in the pack.
pub(crate) const LIMB_SEQ: [[usize; 2]; 19] = [
    [2, 3],
    [2, 6],
    [3, 4],
    [4, 5],
    [6, 7],
    [7, 8],
    [2, 9],
    [9, 10],
    [10, 11],
    [2, 12],
    [12, 13],
    [13, 14],
    [2, 1],
    [1, 15],
    [15, 17],
    [1, 16],
    [16, 18],
    [3, 17],
    [6, 18],
];

/// Each limb's (x, y) PAF channels, counted from 19 as in the pack's `mapIdx`.
const MAP_IDX: [[usize; 2]; 19] = [
    [31, 32],
    [39, 40],
    [33, 34],
    [35, 36],
    [41, 42],
    [43, 44],
    [19, 20],
    [21, 22],
    [23, 24],
    [25, 26],
    [27, 28],
    [29, 30],
    [47, 48],
    [49, 50],
    [53, 54],
    [51, 52],
    [55, 56],
    [37, 38],
    [45, 46],
];

/// A heatmap peak: pixel position, the heatmap's value there, and its running id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// Column.
    pub x: usize,
    /// Row.
    pub y: usize,
    /// The (unsmoothed) heatmap value at the peak.
    pub score: f64,
    /// Index into the candidate list.
    pub id: usize,
}

/// `Body.__call__`'s result: `candidate` (every peak, part by part) and `subset` (one row of 20
/// per person: 18 candidate indices or -1, the total score, the part count).
#[derive(Debug, Clone, Default)]
pub struct BodyResult {
    /// All peaks, in part order.
    pub candidate: Vec<Peak>,
    /// People.
    pub subset: Vec<[f64; 20]>,
}

/// Maps `[C, H, W]` as f64 planes (numpy's `heatmap_avg`, `paf_avg`).
struct Planes {
    h: usize,
    w: usize,
    data: Vec<Vec<f64>>,
}

impl Planes {
    #[inline]
    fn at(&self, c: usize, y: usize, x: usize) -> f64 {
        self.data[c][y * self.w + x]
    }
}

/// `util.smart_resize_k` / `smart_resize` on one f32 plane: INTER_AREA when the size sum shrinks,
/// INTER_LANCZOS4 otherwise.
pub(crate) fn smart_resize_plane(
    src: &[f32],
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
) -> Vec<f32> {
    let k = (dh + dw) as f64 / (sh + sw) as f64;
    cv::resize_plane_f32(src, sh, sw, dh, dw, k >= 1.0)
}

/// `util.smart_resize` / `smart_resize_k` of a uint8 image to `ht x wt` (truncated): INTER_AREA
/// when the (unrounded) size sum shrinks, INTER_LANCZOS4 otherwise.
pub(crate) fn smart_resize_u8(img: &ImageU8, ht: f64, wt: f64) -> ImageU8 {
    let (dh, dw) = (ht as usize, wt as usize);
    if (ht + wt) / ((img.height + img.width) as f64) < 1.0 {
        cv::resize(img, dw, dh, Interpolation::Area)
    } else {
        cv::resize_lanczos4_u8(img, dw, dh)
    }
}

/// The net's input at the first scale: `smart_resize_k` of the BGR image, padded right/down to
/// multiples of 8 with 128; returns it with the resized (unpadded) size.
fn scaled_input(bgr: &ImageU8) -> (ImageU8, usize, usize) {
    let scale = 0.5 * BOX_SIZE / bgr.height as f64;
    let ht = bgr.height as f64 * scale;
    let wt = bgr.width as f64 * scale;
    let (dh, dw) = (ht as usize, wt as usize);
    let resized = smart_resize_u8(bgr, ht, wt);
    let ph = dh.div_ceil(STRIDE) * STRIDE;
    let pw = dw.div_ceil(STRIDE) * STRIDE;
    let c = resized.channels;
    let mut padded = ImageU8 {
        height: ph,
        width: pw,
        channels: c,
        data: vec![PAD_VALUE; ph * pw * c],
    };
    for y in 0..dh {
        padded.data[y * pw * c..(y * pw + dw) * c]
            .copy_from_slice(&resized.data[y * dw * c..(y + 1) * dw * c]);
    }
    (padded, dh, dw)
}

/// The net's input tensor `[1, 3, H, W]`: `np.float32(img) / 256 - 0.5`.
pub(crate) fn net_input(img: &ImageU8, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = img.data.iter().map(|&v| v as f32 / 256.0 - 0.5).collect();
    Tensor::from_vec(data, (1, img.height, img.width, img.channels), device)
        .and_then(|t| t.permute((0, 3, 1, 2))?.contiguous())
        .map_err(|source| PreprocessError::Candle { op: OP, source })
}

/// The net's input for the BGR image `bgr`: the resized, padded image and its unpadded size.
pub fn body_input(bgr: &ImageU8) -> (ImageU8, usize, usize) {
    scaled_input(bgr)
}

/// The net's outputs brought to the size of the image (`height x width`) whose resized copy,
/// `dh x dw` before padding, the net saw: (heatmaps, PAFs).
fn maps(
    paf: &Tensor,
    heat: &Tensor,
    (dh, dw): (usize, usize),
    (height, width): (usize, usize),
) -> Result<(Planes, Planes)> {
    let cand = |source| PreprocessError::Candle { op: OP, source };
    let to_planes = |t: &Tensor| -> Result<Planes> {
        let (_, c, h, w) = t.dims4().map_err(cand)?;
        let v = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(cand)?;
        let (uh, uw) = (h * STRIDE, w * STRIDE);
        let data = (0..c)
            .map(|ch| {
                let up = smart_resize_plane(&v[ch * h * w..(ch + 1) * h * w], h, w, uh, uw);
                // Drop the padding: rows/columns beyond the resized image.
                let (ch_, cw) = (dh.min(uh), dw.min(uw));
                let cropped: Vec<f32> = (0..ch_)
                    .flat_map(|y| up[y * uw..y * uw + cw].iter().copied())
                    .collect();
                smart_resize_plane(&cropped, ch_, cw, height, width)
                    .into_iter()
                    .map(f64::from)
                    .collect()
            })
            .collect();
        Ok(Planes {
            h: height,
            w: width,
            data,
        })
    };
    Ok((to_planes(heat)?, to_planes(paf)?))
}

/// scipy's `_gaussian_kernel1d(sigma, 0, radius)`: `exp((-0.5 / sigma²) x * x)` over numpy's
/// pairwise sum.
fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as isize;
    let c2 = -0.5 / (sigma * sigma);
    let mut phi: Vec<f64> = (-radius..=radius)
        .map(|x| (c2 * x as f64 * x as f64).exp())
        .collect();
    let sum = numpy_sum(&phi);
    phi.iter_mut().for_each(|v| *v /= sum);
    phi
}

/// numpy's pairwise summation of a contiguous f64 array (`pairwise_sum`: below 8 elements in order;
/// up to 128, eight interleaved accumulators combined pairwise, then the tail in order; above,
/// halves at a multiple of 8, recursively).
pub(crate) fn numpy_sum(v: &[f64]) -> f64 {
    if v.len() < 8 {
        return v.iter().fold(0.0, |a, &b| a + b);
    }
    if v.len() > 128 {
        let half = v.len() / 2;
        let half = half - half % 8;
        return numpy_sum(&v[..half]) + numpy_sum(&v[half..]);
    }
    let mut r = [0f64; 8];
    r.copy_from_slice(&v[..8]);
    let full = v.len() - v.len() % 8;
    for i in (8..full).step_by(8) {
        for j in 0..8 {
            r[j] += v[i + j];
        }
    }
    let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for &x in &v[full..] {
        res += x;
    }
    res
}

/// scipy's `mode='reflect'` index (`d c b a | a b c d | d c b a`).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let period = 2 * n;
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - 1 - i;
    }
    i as usize
}

/// One `correlate1d` line with symmetric weights: `x[0] w0 + Σ (x[-j] + x[j]) w[-j]`, outermost
/// taps first, as scipy's `NI_Correlate1D` does.
fn correlate_line(line: &[f64], w: &[f64], out: &mut [f64]) {
    let r = (w.len() / 2) as isize;
    let n = line.len();
    for (i, o) in out.iter_mut().enumerate() {
        let i = i as isize;
        let mut acc = line[i as usize] * w[r as usize];
        for j in -r..0 {
            acc += (line[reflect(i + j, n)] + line[reflect(i - j, n)]) * w[(r + j) as usize];
        }
        *o = acc;
    }
}

/// `scipy.ndimage.gaussian_filter(x, sigma)` of an `h x w` f64 image (rows axis first).
pub(crate) fn gaussian_filter(x: &[f64], h: usize, w: usize, sigma: f64) -> Vec<f64> {
    let k = gaussian_kernel(sigma);
    let mut tmp = vec![0f64; h * w];
    let mut col = vec![0f64; h];
    let mut out_col = vec![0f64; h];
    for cx in 0..w {
        for y in 0..h {
            col[y] = x[y * w + cx];
        }
        correlate_line(&col, &k, &mut out_col);
        for y in 0..h {
            tmp[y * w + cx] = out_col[y];
        }
    }
    let mut out = vec![0f64; h * w];
    for y in 0..h {
        correlate_line(&tmp[y * w..(y + 1) * w], &k, &mut out[y * w..(y + 1) * w]);
    }
    out
}

/// The peaks of one heatmap: at least each 4-neighbour of the smoothed map (outside counts 0),
/// above `thre1`; row-major order.
fn peaks(map: &[f64], h: usize, w: usize, first_id: usize) -> Vec<Peak> {
    let s = gaussian_filter(map, h, w, 3.0);
    let at = |y: isize, x: isize| -> f64 {
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            0.0
        } else {
            s[y as usize * w + x as usize]
        }
    };
    let mut out = Vec::new();
    for y in 0..h as isize {
        for x in 0..w as isize {
            let v = at(y, x);
            if v > THRE1
                && v >= at(y - 1, x)
                && v >= at(y + 1, x)
                && v >= at(y, x - 1)
                && v >= at(y, x + 1)
            {
                out.push(Peak {
                    x: x as usize,
                    y: y as usize,
                    score: map[y as usize * w + x as usize],
                    id: first_id + out.len(),
                });
            }
        }
    }
    out
}

/// numpy's `linspace(a, b, num=10)`: `i * ((b - a) / 9) + a`, the last exactly `b`.
fn linspace10(a: f64, b: f64) -> [f64; MID_NUM] {
    let step = (b - a) / (MID_NUM - 1) as f64;
    let mut out = [0f64; MID_NUM];
    for (i, o) in out.iter_mut().enumerate() {
        *o = if step == 0.0 { a } else { i as f64 * step + a };
    }
    out[MID_NUM - 1] = b;
    out
}

/// One accepted limb: (candidate id A, candidate id B, score, index in A's peaks, in B's).
type Connection = (usize, usize, f64, usize, usize);

fn connections(
    all_peaks: &[Vec<Peak>],
    paf: &Planes,
    img_h: usize,
) -> Vec<Option<Vec<Connection>>> {
    let mut all = Vec::with_capacity(MAP_IDX.len());
    for k in 0..MAP_IDX.len() {
        let (cx, cy) = (MAP_IDX[k][0] - 19, MAP_IDX[k][1] - 19);
        let cand_a = &all_peaks[LIMB_SEQ[k][0] - 1];
        let cand_b = &all_peaks[LIMB_SEQ[k][1] - 1];
        if cand_a.is_empty() || cand_b.is_empty() {
            all.push(None);
            continue;
        }
        let mut scored: Vec<(usize, usize, f64)> = Vec::new();
        for (i, a) in cand_a.iter().enumerate() {
            for (j, b) in cand_b.iter().enumerate() {
                let vx = b.x as i64 - a.x as i64;
                let vy = b.y as i64 - a.y as i64;
                let norm = ((vx * vx + vy * vy) as f64).sqrt().max(0.001);
                let (ux, uy) = (vx as f64 / norm, vy as f64 / norm);
                let xs = linspace10(a.x as f64, b.x as f64);
                let ys = linspace10(a.y as f64, b.y as f64);
                let mut sum = 0f64;
                let mut above = 0;
                for (&px, &py) in xs.iter().zip(&ys) {
                    let (px, py) = (px.round_ties_even() as usize, py.round_ties_even() as usize);
                    let s = paf.at(cx, py, px) * ux + paf.at(cy, py, px) * uy;
                    sum += s;
                    if s > THRE2 {
                        above += 1;
                    }
                }
                let prior = sum / MID_NUM as f64 + (0.5 * img_h as f64 / norm - 1.0).min(0.0);
                if above as f64 > 0.8 * MID_NUM as f64 && prior > 0.0 {
                    scored.push((i, j, prior));
                }
            }
        }
        // Stable, so equal scores keep their order as Python's sorted(reverse=True) does.
        scored.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
        let mut conn: Vec<Connection> = Vec::new();
        for (i, j, s) in scored {
            if conn.iter().all(|c| c.3 != i && c.4 != j) {
                conn.push((cand_a[i].id, cand_b[j].id, s, i, j));
                if conn.len() >= cand_a.len().min(cand_b.len()) {
                    break;
                }
            }
        }
        all.push(Some(conn));
    }
    all
}

fn assemble(conns: &[Option<Vec<Connection>>], candidate: &[Peak]) -> Vec<[f64; 20]> {
    let mut subset: Vec<[f64; 20]> = Vec::new();
    for (k, conn) in conns.iter().enumerate() {
        let Some(conn) = conn else { continue };
        let (ia, ib) = (LIMB_SEQ[k][0] - 1, LIMB_SEQ[k][1] - 1);
        for &(pa, pb, s, _, _) in conn {
            let (pa_f, pb_f) = (pa as f64, pb as f64);
            let found: Vec<usize> = (0..subset.len())
                .filter(|&j| subset[j][ia] == pa_f || subset[j][ib] == pb_f)
                .take(2)
                .collect();
            match found.as_slice() {
                [j] => {
                    let row = &mut subset[*j];
                    if row[ib] != pb_f {
                        row[ib] = pb_f;
                        row[19] += 1.0;
                        row[18] += candidate[pb].score + s;
                    }
                }
                [j1, j2] => {
                    let (j1, j2) = (*j1, *j2);
                    let overlap = (0..18).any(|c| subset[j1][c] >= 0.0 && subset[j2][c] >= 0.0);
                    if !overlap {
                        let other = subset[j2];
                        let row = &mut subset[j1];
                        for c in 0..18 {
                            row[c] += other[c] + 1.0;
                        }
                        row[18] += other[18];
                        row[19] += other[19];
                        row[18] += s;
                        subset.remove(j2);
                    } else {
                        let row = &mut subset[j1];
                        row[ib] = pb_f;
                        row[19] += 1.0;
                        row[18] += candidate[pb].score + s;
                    }
                }
                _ if k < 17 => {
                    let mut row = [-1f64; 20];
                    row[ia] = pa_f;
                    row[ib] = pb_f;
                    row[19] = 2.0;
                    row[18] = (0.0 + candidate[pa].score + candidate[pb].score) + s;
                    subset.push(row);
                }
                _ => {}
            }
        }
    }
    subset.retain(|r| !(r[19] < 4.0 || r[18] / r[19] < 0.4));
    subset
}

/// `Body.__call__` on a BGR uint8 image.
pub fn detect_body(net: &BodyNet, bgr: &ImageU8) -> Result<BodyResult> {
    let (padded, dh, dw) = scaled_input(bgr);
    if dh == 0 || dw == 0 {
        // The pack fails here too (an empty resize): an image some 300 times wider than high.
        return Err(PreprocessError::TooSmall {
            op: OP,
            height: bgr.height,
            width: bgr.width,
            reason: "the body net's 184-pixel-high copy would be empty",
        });
    }
    let x = net_input(&padded, net.device())?;
    let (paf, heat) = net
        .forward(&x)
        .map_err(|source| PreprocessError::Candle { op: OP, source })?;
    body_from_outputs(&paf, &heat, (dh, dw), (bgr.height, bgr.width))
}

/// The post-processing of `Body.__call__` on the net's outputs (`[1, 38, h, w]` PAFs, `[1, 19, h,
/// w]` heatmaps) for an image of `size` whose resized copy, `scaled` before padding, the net saw.
pub fn body_from_outputs(
    paf: &Tensor,
    heat: &Tensor,
    scaled: (usize, usize),
    size: (usize, usize),
) -> Result<BodyResult> {
    let (heat, paf) = maps(paf, heat, scaled, size)?;
    let bgr_height = size.0;
    let mut all_peaks = Vec::with_capacity(18);
    let mut count = 0;
    for part in 0..18 {
        let p = peaks(&heat.data[part], heat.h, heat.w, count);
        count += p.len();
        all_peaks.push(p);
    }
    let conns = connections(&all_peaks, &paf, bgr_height);
    let candidate: Vec<Peak> = all_peaks.into_iter().flatten().collect();
    let subset = assemble(&conns, &candidate);
    Ok(BodyResult { candidate, subset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_sum_matches_plain_sum_on_exact_values() {
        let v: Vec<f64> = (0..25).map(|i| i as f64).collect();
        assert_eq!(numpy_sum(&v), 300.0);
    }

    #[test]
    fn gaussian_of_constant_is_constant() {
        let x = vec![0.5; 40 * 30];
        let y = gaussian_filter(&x, 40, 30, 3.0);
        assert!(y.iter().all(|v| (v - 0.5).abs() < 1e-12));
    }

    #[test]
    fn reflect_is_half_sample_symmetric() {
        assert_eq!(reflect(-1, 5), 0);
        assert_eq!(reflect(-2, 5), 1);
        assert_eq!(reflect(5, 5), 4);
        assert_eq!(reflect(6, 5), 3);
    }
}
