//! OpenPose (comfyui_controlnet_aux `OpenposePreprocessor`, `open_pose/__init__.py`): the body
//! network of `body_pose_model.pth`, its peak/limb/person post-processing ([`body`]), and the pose
//! map drawn with OpenCV's primitives ([`draw`]) on a black canvas, plus the pose in the OpenPose
//! JSON format the pack emits as POSE_KEYPOINT. With `detect_hand` / `detect_face`, the hand net
//! (`hand_pose_model.pth`, [`hand`]) and the face net (`facenet.pth`, [`face`]) run on boxes placed
//! from each person's body keypoints, and their keypoints are drawn and reported too.

pub mod body;
pub mod draw;
pub mod face;
pub mod hand;
pub mod net;

use std::sync::Mutex;

use candle_core::Tensor;
use serde_json::{json, Value};

use crate::preprocess::aux::{detect_resolution, hwc3, resize_image_with_pad, Padded};
use crate::preprocess::cv::Interpolation;
use crate::preprocess::{run_aux, ImageU8, PreprocessError, Result};

pub use body::{body_from_outputs, body_input, detect_body, BodyResult, Peak};
pub use face::FaceNet;
pub use hand::HandNet;
pub use net::{BodyNet, CpmNet};

const OP: &str = "OpenposePreprocessor";

/// The node's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenposeOptions {
    /// `resolution` (the short side the image is resized to).
    pub resolution: u32,
    /// `detect_body`: draw the body (detection runs regardless, as in the pack).
    pub include_body: bool,
    /// `detect_hand`: find, draw and report hands (needs the hand net).
    pub include_hand: bool,
    /// `detect_face`: find, draw and report faces (needs the face net).
    pub include_face: bool,
    /// `scale_stick_for_xinsr_cn`: thicker limbs on large canvases.
    pub xinsr_stick_scaling: bool,
}

/// A body keypoint normalised by the detection canvas (`x / W`, `y / H`).
pub type Keypoint = Option<(f64, f64)>;

/// A hand or face keypoint normalised by the canvas, in float32 as the pack computes it (-1 / W
/// or -1 / H where the pack marks a part as missing).
pub type PartPoint = (f32, f32);

/// The nets a call uses: the hand and face nets only where their detection is enabled.
#[derive(Debug, Clone, Copy)]
pub struct OpenposeNets<'a> {
    /// `body_pose_model.pth`.
    pub body: &'a BodyNet,
    /// `hand_pose_model.pth`.
    pub hand: Option<&'a HandNet>,
    /// `facenet.pth`.
    pub face: Option<&'a FaceNet>,
}

/// One person (`PoseResult`): body keypoints, hands and face (None where not detected or not
/// asked for).
#[derive(Debug, Clone, PartialEq)]
pub struct Pose {
    /// The 18 body keypoints.
    pub body: [Keypoint; 18],
    /// Left hand, 21 points.
    pub left_hand: Option<Vec<PartPoint>>,
    /// Right hand, 21 points.
    pub right_hand: Option<Vec<PartPoint>>,
    /// Face points, one per face map with a peak.
    pub face: Option<Vec<PartPoint>>,
}

/// The limbs' colours (and the joints'), RGB, in `draw_bodypose`'s order.
const COLORS: [[u8; 3]; 18] = [
    [255, 0, 0],
    [255, 85, 0],
    [255, 170, 0],
    [255, 255, 0],
    [170, 255, 0],
    [85, 255, 0],
    [0, 255, 0],
    [0, 255, 85],
    [0, 255, 170],
    [0, 255, 255],
    [0, 170, 255],
    [0, 85, 255],
    [0, 0, 255],
    [85, 0, 255],
    [170, 0, 255],
    [255, 0, 255],
    [255, 0, 170],
    [255, 0, 85],
];

/// `format_body_result`: per person, the 18 body keypoints in pixels.
pub fn pixel_keypoints(result: &BodyResult) -> Vec<[Option<(f64, f64)>; 18]> {
    result
        .subset
        .iter()
        .map(|row| {
            std::array::from_fn(|part| {
                let idx = row[part] as i64;
                (idx >= 0)
                    .then(|| result.candidate.get(idx as usize))
                    .flatten()
                    .map(|p| (p.x as f64, p.y as f64))
            })
        })
        .collect()
}

/// `format_body_result` then `detect_poses`' normalisation: per person, 18 keypoints.
pub fn people(result: &BodyResult, height: usize, width: usize) -> Vec<[Keypoint; 18]> {
    pixel_keypoints(result)
        .iter()
        .map(|kps| kps.map(|k| k.map(|(x, y)| (x / width as f64, y / height as f64))))
        .collect()
}

/// `OpenposeDetector.detect_poses` after the body net: each person's hands and face where their
/// nets are given, on the BGR canvas `bgr` the body was found on.
pub fn detect_poses(
    result: &BodyResult,
    bgr: &ImageU8,
    hand_net: Option<&HandNet>,
    face_net: Option<&FaceNet>,
) -> Result<Vec<Pose>> {
    let (h, w) = (bgr.height as f64, bgr.width as f64);
    pixel_keypoints(result)
        .iter()
        .map(|kps| {
            let (left_hand, right_hand) = match hand_net {
                Some(net) => hand::detect_hands(net, kps, bgr)?,
                None => (None, None),
            };
            let face = match face_net {
                Some(net) => face::detect_face(net, kps, bgr)?,
                None => None,
            };
            Ok(Pose {
                body: kps.map(|k| k.map(|(x, y)| (x / w, y / h))),
                left_hand,
                right_hand,
                face,
            })
        })
        .collect()
}

/// `util.draw_bodypose` of the pack: limbs as filled ellipses (60% colour), joints as radius-4
/// discs.
pub fn draw_bodypose(canvas: &mut ImageU8, keypoints: &[Keypoint; 18], xinsr_stick_scaling: bool) {
    let (h, w) = (canvas.height as f64, canvas.width as f64);
    let max_side = canvas.height.max(canvas.width);
    let stick_scale = if xinsr_stick_scaling && max_side >= 500 {
        (2 + max_side / 1000).min(7) as i32
    } else {
        1
    };
    let stickwidth = 4;
    for (limb, color) in body::LIMB_SEQ[..17].iter().zip(COLORS) {
        let (Some(k1), Some(k2)) = (keypoints[limb[0] - 1], keypoints[limb[1] - 1]) else {
            continue;
        };
        let (y0, y1) = (k1.0 * w, k2.0 * w);
        let (x0, x1) = (k1.1 * h, k2.1 * h);
        let mx = (x0 + x1) / 2.0;
        let my = (y0 + y1) / 2.0;
        let length = ((x0 - x1) * (x0 - x1) + (y0 - y1) * (y0 - y1)).sqrt();
        let angle = (x0 - x1).atan2(y0 - y1).to_degrees();
        let polygon = draw::ellipse2poly(
            (my as i32, mx as i32),
            ((length / 2.0) as i32, stickwidth * stick_scale),
            angle as i32,
            0,
            360,
            1,
        );
        let dim = color.map(|c| (c as f64 * 0.6) as u8);
        draw::fill_convex_poly(canvas, &polygon, dim);
    }
    for (k, color) in keypoints.iter().zip(COLORS) {
        let Some((x, y)) = k else { continue };
        let (x, y) = ((x * w) as i64, (y * h) as i64);
        draw::fill_circle(canvas, (x, y), 4, color);
    }
}

/// `encode_poses_as_dict`: the OpenPose JSON frame (`people`, `canvas_height`, `canvas_width`).
pub fn pose_json(people: &[Pose], canvas_height: usize, canvas_width: usize) -> Value {
    let body = |kps: &[Keypoint; 18]| -> Value {
        kps.iter()
            .flat_map(|k| match k {
                Some((x, y)) => [*x, *y, 1.0],
                None => [0.0, 0.0, 0.0],
            })
            .collect::<Vec<f64>>()
            .into()
    };
    // Empty or absent lists are null, as `compress_keypoints` gives them.
    let parts = |kps: &Option<Vec<PartPoint>>| -> Value {
        match kps {
            Some(k) if !k.is_empty() => k
                .iter()
                .flat_map(|&(x, y)| [f64::from(x), f64::from(y), 1.0])
                .collect::<Vec<f64>>()
                .into(),
            _ => Value::Null,
        }
    };
    json!({
        "people": people.iter().map(|p| json!({
            "pose_keypoints_2d": body(&p.body),
            "face_keypoints_2d": parts(&p.face),
            "hand_left_keypoints_2d": parts(&p.left_hand),
            "hand_right_keypoints_2d": parts(&p.right_hand),
        })).collect::<Vec<_>>(),
        "canvas_height": canvas_height,
        "canvas_width": canvas_width,
    })
}

const OP_NEEDS: &str = "is enabled but its network was not loaded";

/// `OpenposeDetector.__call__` on one uint8 image: the pose map (at the resized, unpadded size)
/// and its JSON frame.
pub fn openpose_image(
    nets: &OpenposeNets,
    img: &ImageU8,
    opts: &OpenposeOptions,
) -> Result<(ImageU8, Value)> {
    for (on, net, name) in [
        (opts.include_hand, nets.hand.is_some(), "detect_hand"),
        (opts.include_face, nets.face.is_some(), "detect_face"),
    ] {
        if on && !net {
            return Err(PreprocessError::BadOption {
                op: OP,
                name,
                reason: OP_NEEDS.into(),
            });
        }
    }
    let padded = resize_image_with_pad(
        OP,
        img,
        detect_resolution(opts.resolution),
        Interpolation::Cubic,
    )?;
    let bgr = bgr(&padded.image);
    let result = detect_body(nets.body, &bgr)?;
    let poses = detect_poses(
        &result,
        &bgr,
        nets.hand.filter(|_| opts.include_hand),
        nets.face.filter(|_| opts.include_face),
    )?;
    Ok(render(&poses, &padded, opts))
}

/// `BGR` copy of an RGB image (the detector flips the channels before the nets).
pub fn bgr(rgb: &ImageU8) -> ImageU8 {
    ImageU8 {
        data: rgb
            .data
            .chunks_exact(3)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect(),
        ..rgb.clone()
    }
}

/// `draw_poses`: body, then left and right hands, then face, person by person, on a black canvas.
pub fn draw_poses(poses: &[Pose], height: usize, width: usize, opts: &OpenposeOptions) -> ImageU8 {
    let mut canvas = ImageU8::zeros(height, width, 3);
    for p in poses {
        if opts.include_body {
            draw_bodypose(&mut canvas, &p.body, opts.xinsr_stick_scaling);
        }
        if opts.include_hand {
            for hand in [&p.left_hand, &p.right_hand].into_iter().flatten() {
                hand::draw_handpose(&mut canvas, hand);
            }
        }
        if opts.include_face {
            if let Some(face) = &p.face {
                face::draw_facepose(&mut canvas, face);
            }
        }
    }
    canvas
}

/// The end of `OpenposeDetector.__call__`: the poses (found on `padded`'s image) drawn on a black
/// canvas of that size, cropped back by `remove_pad`, and the JSON frame.
pub fn render(poses: &[Pose], padded: &Padded, opts: &OpenposeOptions) -> (ImageU8, Value) {
    let rgb = &padded.image;
    let canvas = draw_poses(poses, rgb.height, rgb.width, opts);
    let map = hwc3(&padded.remove_pad(&canvas));
    let frame = pose_json(poses, map.height, map.width);
    (map, frame)
}

/// The node's call over an IMAGE batch `[B, H, W, C]`: the pose maps `[B, H', W', 3]` and one JSON
/// frame per image.
pub fn openpose(
    image: &Tensor,
    nets: &OpenposeNets,
    opts: &OpenposeOptions,
) -> Result<(Tensor, Vec<Value>)> {
    let frames = Mutex::new(Vec::new());
    let maps = run_aux(OP, image, |img| {
        let (map, frame) = openpose_image(nets, img, opts)?;
        frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(frame);
        Ok(map)
    })?;
    Ok((
        maps,
        frames
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    ))
}
