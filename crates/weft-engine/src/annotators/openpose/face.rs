//! The face of the pack's OpenPose: `util.faceDetect` (a square box around the nose, sized by
//! the eyes and ears), `Face.__call__` (the face net on a 384-pixel copy of the box, its last
//! stage's maps brought back to the box by bilinear interpolation with aligned corners),
//! `Face.compute_peaks_from_heatmaps` and `util.draw_facepose`.

use std::sync::Arc;

use candle_core::Device;

use crate::load::file::StateDict;
use crate::load::LoadError;
use crate::preprocess::{ImageU8, Result};

use super::body::smart_resize_u8;
use super::draw;
use super::hand::{crop, normalise_peaks, to_pixel};
use super::net::CpmNet;
use super::PartPoint;

const INPUT_SIZE: f64 = 384.0;

/// `facenet.pth`'s network (71 heatmaps).
#[derive(Debug)]
pub struct FaceNet(pub CpmNet);

impl FaceNet {
    /// Builds the net from a `facenet.pth` (always f32).
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        CpmNet::load(sd, device).map(Self)
    }
}

/// `util.faceDetect`: the face box `(x, y, side)` of one person (body keypoints in pixels of an
/// `height x width` canvas), None without a nose and an eye or ear, or under 20 pixels. The pack
/// checks the box against the image with half its side, so it may run over the right or bottom
/// edge: the crop is then clipped (and not square).
pub fn face_box(
    kps: &[Option<(f64, f64)>; 18],
    height: usize,
    width: usize,
) -> Option<(usize, usize, usize)> {
    let (x0, y0) = kps[0]?;
    let around = [(14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5)];
    if around.iter().all(|(i, _)| kps[*i].is_none()) {
        return None;
    }
    let mut side = 0f64;
    for (i, factor) in around {
        if let Some((x1, y1)) = kps[i] {
            let d = (x0 - x1).abs().max((y0 - y1).abs());
            side = side.max(d * factor);
        }
    }
    let x = (x0 - side).max(0.0);
    let y = (y0 - side).max(0.0);
    let w1 = if x + side > width as f64 {
        width as f64 - x
    } else {
        side * 2.0
    };
    let w2 = if y + side > height as f64 {
        height as f64 - y
    } else {
        side * 2.0
    };
    let side = w1.min(w2);
    (side >= 20.0).then_some((x as usize, y as usize, side as usize))
}

/// `F.interpolate(maps, (oh, ow), mode='bilinear', align_corners=True)` of `c` planes `h x w`, in
/// float32 as torch's CPU kernel computes it: source positions `i * (in - 1) / (out - 1)`, rows'
/// weights outside the columns' sums.
fn bilinear_aligned(
    v: &[f32],
    c: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<Vec<f32>> {
    let taps = |n: usize, out: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = if out > 1 {
            (n - 1) as f32 / (out - 1) as f32
        } else {
            0.0
        };
        (0..out)
            .map(|i| {
                let src = scale * i as f32;
                let i0 = (src.floor() as usize).min(n - 1);
                let l1 = (src - i0 as f32).clamp(0.0, 1.0);
                let i1 = i0 + usize::from(i0 < n - 1);
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    (0..c)
        .map(|ch| {
            let p = &v[ch * h * w..(ch + 1) * h * w];
            let mut out = Vec::with_capacity(oh * ow);
            for &(y0, y1, wy0, wy1) in &ty {
                for &(x0, x1, wx0, wx1) in &tx {
                    let t0 = p[y0 * w + x0] * wx0 + p[y0 * w + x1] * wx1;
                    let t1 = p[y1 * w + x0] * wx0 + p[y1 * w + x1] * wx1;
                    out.push(t0 * wy0 + t1 * wy1);
                }
            }
            out
        })
        .collect()
}

/// `Face.__call__` on a BGR crop: the last stage's heatmaps (71 planes) at the crop's size.
pub fn face_heatmaps(net: &FaceNet, crop: &ImageU8) -> Result<Vec<Vec<f32>>> {
    let (c, h, w, v) = net.0.maps(&smart_resize_u8(crop, INPUT_SIZE, INPUT_SIZE))?;
    Ok(bilinear_aligned(&v, c, (h, w), (crop.height, crop.width)))
}

/// `Face.compute_peaks_from_heatmaps`: per map with a value above 0.05 (as float32), the first
/// maximum `(x, y)`; maps without one are skipped, so the count varies.
pub fn face_peaks(maps: &[Vec<f32>], width: usize) -> Vec<(i64, i64)> {
    let thre = 0.05f32;
    maps.iter()
        .filter_map(|m| {
            let mut best: Option<(usize, f32)> = None;
            for (i, &v) in m.iter().enumerate() {
                if v > thre && best.is_none_or(|(_, b)| v > b) {
                    best = Some((i, v));
                }
            }
            best.map(|(i, _)| ((i % width) as i64, (i / width) as i64))
        })
        .collect()
}

/// `OpenposeDetector.detect_face`: the face keypoints of one person, `bgr` the canvas.
pub fn detect_face(
    net: &FaceNet,
    kps: &[Option<(f64, f64)>; 18],
    bgr: &ImageU8,
) -> Result<Option<Vec<PartPoint>>> {
    let Some((x, y, side)) = face_box(kps, bgr.height, bgr.width) else {
        return Ok(None);
    };
    let c = crop(bgr, x, y, side, side);
    let maps = face_heatmaps(net, &c)?;
    let peaks = face_peaks(&maps, c.width);
    Ok((!peaks.is_empty()).then(|| normalise_peaks(&peaks, (x, y), (bgr.height, bgr.width))))
}

/// `util.draw_facepose`: radius-3 white discs, points at pixel 0 (or -1) left out.
pub fn draw_facepose(canvas: &mut ImageU8, keypoints: &[PartPoint]) {
    let (h, w) = (canvas.height, canvas.width);
    for &(kx, ky) in keypoints {
        let (x, y) = (to_pixel(kx, w), to_pixel(ky, h));
        if x > 0 && y > 0 {
            draw::fill_circle(canvas, (x, y), 3, [255, 255, 255]);
        }
    }
}
