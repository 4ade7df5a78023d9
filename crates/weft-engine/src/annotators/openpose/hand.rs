//! The hands of the pack's OpenPose: `util.handDetect` (a square box beyond each wrist, from the
//! shoulder, elbow and wrist keypoints), `Hand.__call__` (the hand net at four scales of the
//! blurred box, heatmaps averaged on a 128x128 grid, per part the largest blob of the smoothed map
//! and its maximum) and `util.draw_handpose`.

use std::sync::Arc;

use candle_core::Device;

use crate::load::file::StateDict;
use crate::load::LoadError;
use crate::preprocess::cv;
use crate::preprocess::{ImageU8, Result};

use super::body::{gaussian_filter, numpy_sum, smart_resize_plane, smart_resize_u8};
use super::draw;
use super::net::CpmNet;
use super::PartPoint;

const SCALES: [f64; 4] = [184.0, 368.0, 552.0, 736.0];
const STRIDE: usize = 8;
const GRID: usize = 128;
const THRE: f64 = 0.05;
/// The hand's parts (the net's 22nd map is the background).
pub const PARTS: usize = 21;

/// `hand_pose_model.pth`'s network (22 heatmaps).
#[derive(Debug)]
pub struct HandNet(pub CpmNet);

impl HandNet {
    /// Builds the net from a `hand_pose_model.pth` (always f32).
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        CpmNet::load(sd, device).map(Self)
    }
}

/// A hand box: top-left corner and side, in pixels of the detection canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandBox {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Side (the box is square).
    pub width: usize,
    /// The person's left hand (keypoints 5-7), else the right one (2-4).
    pub is_left: bool,
}

/// `util.handDetect`: `kps` are one person's body keypoints in pixels of an `height x width`
/// canvas; the left hand's box first. Boxes under 20 pixels are dropped.
pub fn hand_boxes(kps: &[Option<(f64, f64)>; 18], height: usize, width: usize) -> Vec<HandBox> {
    const RATIO_WRIST_ELBOW: f64 = 0.33;
    let arms = [(5, 6, 7, true), (2, 3, 4, false)];
    let mut out = Vec::new();
    for (s, e, w, is_left) in arms {
        let (Some((x1, y1)), Some((x2, y2)), Some((x3, y3))) = (kps[s], kps[e], kps[w]) else {
            continue;
        };
        let mut x = x3 + RATIO_WRIST_ELBOW * (x3 - x2);
        let mut y = y3 + RATIO_WRIST_ELBOW * (y3 - y2);
        let wrist_elbow = ((x3 - x2).powi(2) + (y3 - y2).powi(2)).sqrt();
        let elbow_shoulder = ((x2 - x1).powi(2) + (y2 - y1).powi(2)).sqrt();
        let side = 1.5 * wrist_elbow.max(0.9 * elbow_shoulder);
        x -= side / 2.0;
        y -= side / 2.0;
        x = x.max(0.0);
        y = y.max(0.0);
        let w1 = if x + side > width as f64 {
            width as f64 - x
        } else {
            side
        };
        let w2 = if y + side > height as f64 {
            height as f64 - y
        } else {
            side
        };
        let side = w1.min(w2);
        if side >= 20.0 {
            out.push(HandBox {
                x: x as usize,
                y: y as usize,
                width: side as usize,
                is_left,
            });
        }
    }
    out
}

/// `numpy`'s `img[y:y+h, x:x+w]`: the crop, clipped to the image.
pub fn crop(img: &ImageU8, x: usize, y: usize, h: usize, w: usize) -> ImageU8 {
    let (y1, x1) = ((y + h).min(img.height), (x + w).min(img.width));
    let (y0, x0) = (y.min(y1), x.min(x1));
    let c = img.channels;
    let data = (y0..y1)
        .flat_map(|r| {
            img.data[(r * img.width + x0) * c..(r * img.width + x1) * c]
                .iter()
                .copied()
        })
        .collect();
    ImageU8 {
        height: y1 - y0,
        width: x1 - x0,
        channels: c,
        data,
    }
}

/// `Hand.__call__` on a BGR crop: per part, `(x, y)` in the crop's pixels, `(0, 0)` where no
/// smoothed value passes the threshold.
pub fn hand_peaks(net: &HandNet, crop: &ImageU8) -> Result<[(i64, i64); PARTS]> {
    let blurred = cv::gaussian_blur_u8(crop, 0.8);
    let mut avg = vec![vec![0f64; GRID * GRID]; PARTS];
    for scale in SCALES {
        let resized = smart_resize_u8(&blurred, scale, scale);
        let (dh, dw) = (resized.height, resized.width);
        // Sizes are multiples of 8: padRightDownCorner adds nothing.
        let (c, h, w, v) = net.0.maps(&resized)?;
        for (part, acc) in avg.iter_mut().enumerate().take(c.min(PARTS)) {
            let up = smart_resize_plane(
                &v[part * h * w..(part + 1) * h * w],
                h,
                w,
                h * STRIDE,
                w * STRIDE,
            );
            let (ch, cw) = (dh.min(h * STRIDE), dw.min(w * STRIDE));
            let cropped: Vec<f32> = (0..ch)
                .flat_map(|y| up[y * w * STRIDE..y * w * STRIDE + cw].iter().copied())
                .collect();
            let grid = smart_resize_plane(&cropped, ch, cw, GRID, GRID);
            for (a, g) in acc.iter_mut().zip(grid) {
                *a += f64::from(g / SCALES.len() as f32);
            }
        }
    }
    let mut peaks = [(0i64, 0i64); PARTS];
    for (part, map) in avg.iter_mut().enumerate() {
        let smoothed = gaussian_filter(map, GRID, GRID, 3.0);
        let binary: Vec<bool> = smoothed.iter().map(|&v| v > THRE).collect();
        if !binary.iter().any(|&b| b) {
            continue;
        }
        let (labels, count) = label8(&binary, GRID, GRID);
        // The blob with the largest sum of the unsmoothed map (numpy's sum over the boolean mask,
        // first on ties).
        let mut best = (1, f64::NEG_INFINITY);
        for l in 1..=count {
            let vals: Vec<f64> = map
                .iter()
                .zip(&labels)
                .filter(|(_, &lab)| lab == l)
                .map(|(&v, _)| v)
                .collect();
            let s = numpy_sum(&vals);
            if s > best.1 {
                best = (l, s);
            }
        }
        for (v, &lab) in map.iter_mut().zip(&labels) {
            if lab != best.0 {
                *v = 0.0;
            }
        }
        // util.npmax: the first maximum in row-major order.
        let mut at = 0;
        for (i, &v) in map.iter().enumerate() {
            if v > map[at] {
                at = i;
            }
        }
        let (y, x) = (at / GRID, at % GRID);
        peaks[part] = (
            (x as f64 * crop.width as f64 / GRID as f64) as i64,
            (y as f64 * crop.height as f64 / GRID as f64) as i64,
        );
    }
    Ok(peaks)
}

/// `skimage.measure.label(binary, connectivity=2)`: 8-connected components numbered from 1 in
/// raster order of their first pixel (0 is the background).
fn label8(binary: &[bool], h: usize, w: usize) -> (Vec<usize>, usize) {
    let mut labels = vec![0usize; h * w];
    let mut count = 0;
    let mut stack = Vec::new();
    for start in 0..h * w {
        if !binary[start] || labels[start] != 0 {
            continue;
        }
        count += 1;
        labels[start] = count;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (y, x) = ((i / w) as isize, (i % w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (ny, nx) = (y + dy, x + dx);
                    if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if binary[j] && labels[j] == 0 {
                        labels[j] = count;
                        stack.push(j);
                    }
                }
            }
        }
    }
    (labels, count)
}

/// `OpenposeDetector.detect_hands`' conversion of a box's peaks to keypoints normalised by the
/// canvas (float32 as numpy computes them): a peak on the crop's first column or row becomes -1
/// before the division, as the pack's `np.where(peaks < 1e-6, -1, ...)` does.
pub fn normalise_peaks(
    peaks: &[(i64, i64)],
    (x0, y0): (usize, usize),
    (height, width): (usize, usize),
) -> Vec<PartPoint> {
    let f = |p: i64, origin: usize, size: usize| -> f32 {
        let p = p as f32;
        let v = if p < 1e-6 { -1.0 } else { p + origin as f32 };
        v / size as f32
    };
    peaks
        .iter()
        .map(|&(x, y)| (f(x, x0, width), f(y, y0, height)))
        .collect()
}

/// One hand's 21 keypoints.
pub type Hand = Vec<PartPoint>;

/// `OpenposeDetector.detect_hands`: (left, right) keypoints of one person, `bgr` the canvas.
pub fn detect_hands(
    net: &HandNet,
    kps: &[Option<(f64, f64)>; 18],
    bgr: &ImageU8,
) -> Result<(Option<Hand>, Option<Hand>)> {
    let (mut left, mut right) = (None, None);
    for b in hand_boxes(kps, bgr.height, bgr.width) {
        let peaks = hand_peaks(net, &crop(bgr, b.x, b.y, b.width, b.width))?;
        let points = normalise_peaks(&peaks, (b.x, b.y), (bgr.height, bgr.width));
        if b.is_left {
            left = Some(points);
        } else {
            right = Some(points);
        }
    }
    Ok((left, right))
}

/// matplotlib's `hsv_to_rgb([h, 1, 1]) * 255` as `cv2.line` rounds it (`saturate_cast<uchar>`).
fn hsv_color(h: f64) -> [u8; 3] {
    let h6 = h * 6.0;
    let i = h6 as i64;
    let f = h6 - i as f64;
    let (q, t) = (1.0 - f, 1.0 - (1.0 - f));
    let (r, g, b) = match i % 6 {
        0 => (1.0, t, 0.0),
        1 => (q, 1.0, 0.0),
        2 => (0.0, 1.0, t),
        3 => (0.0, q, 1.0),
        4 => (t, 0.0, 1.0),
        _ => (1.0, 0.0, q),
    };
    [r, g, b].map(|v: f64| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
}

/// The colour of bone `i` of `draw_handpose`'s 20.
pub fn bone_color(i: usize) -> [u8; 3] {
    hsv_color(i as f64 / EDGES.len() as f64)
}

const EDGES: [[usize; 2]; 20] = [
    [0, 1],
    [1, 2],
    [2, 3],
    [3, 4],
    [0, 5],
    [5, 6],
    [6, 7],
    [7, 8],
    [0, 9],
    [9, 10],
    [10, 11],
    [11, 12],
    [0, 13],
    [13, 14],
    [14, 15],
    [15, 16],
    [0, 17],
    [17, 18],
    [18, 19],
    [19, 20],
];

/// `int(k * W)` with `k` a numpy float32 and `W` an int: the product in float32, truncated.
pub(crate) fn to_pixel(k: f32, size: usize) -> i64 {
    (k * size as f32) as i64
}

/// `util.draw_handpose`: bones as 2-pixel lines in HSV colours, then keypoints as radius-4 blue
/// discs; points at pixel 0 (or the -1 of a missing peak) are left out.
pub fn draw_handpose(canvas: &mut ImageU8, keypoints: &[PartPoint]) {
    let (h, w) = (canvas.height, canvas.width);
    let px = |k: PartPoint| (to_pixel(k.0, w), to_pixel(k.1, h));
    for (i, e) in EDGES.iter().enumerate() {
        let (Some(&k1), Some(&k2)) = (keypoints.get(e[0]), keypoints.get(e[1])) else {
            continue;
        };
        let ((x1, y1), (x2, y2)) = (px(k1), px(k2));
        if x1 > 0 && y1 > 0 && x2 > 0 && y2 > 0 {
            draw::thick_line(canvas, (x1, y1), (x2, y2), bone_color(i), 2);
        }
    }
    for &k in keypoints {
        let (x, y) = px(k);
        if x > 0 && y > 0 {
            draw::fill_circle(canvas, (x, y), 4, [0, 0, 255]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_8_connected_in_raster_order() {
        #[rustfmt::skip]
        let b = [
            false, true, false, false,
            true, false, false, true,
            false, false, true, false,
        ];
        let (labels, n) = label8(&b, 3, 4);
        assert_eq!(n, 2);
        assert_eq!(labels, vec![0, 1, 0, 0, 1, 0, 0, 2, 0, 0, 2, 0]);
    }

    #[test]
    fn hsv_colours_are_matplotlibs() {
        assert_eq!(bone_color(0), [255, 0, 0]);
        assert_eq!(bone_color(10), [0, 255, 255]);
    }
}
