//! OpenPose (comfyui_controlnet_aux `OpenposePreprocessor`, `open_pose/__init__.py`): the body
//! network of `body_pose_model.pth`, its peak/limb/person post-processing ([`body`]), and the pose
//! map drawn with OpenCV's primitives ([`draw`]) on a black canvas, plus the pose in the OpenPose
//! JSON format the pack emits as POSE_KEYPOINT.
//!
//! Hands (`hand_pose_model.pth`) and faces (`facenet.pth`) are not implemented: [`openpose`]
//! refuses `include_hand` / `include_face` rather than drawing a different map.

pub mod body;
pub mod draw;
pub mod net;

use std::sync::Mutex;

use candle_core::Tensor;
use serde_json::{json, Value};

use crate::preprocess::aux::{detect_resolution, hwc3, resize_image_with_pad, Padded};
use crate::preprocess::cv::Interpolation;
use crate::preprocess::{run_aux, ImageU8, PreprocessError, Result};

pub use body::{body_from_outputs, body_input, detect_body, BodyResult, Peak};
pub use net::BodyNet;

const OP: &str = "OpenposePreprocessor";

/// The node's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenposeOptions {
    /// `resolution` (the short side the image is resized to).
    pub resolution: u32,
    /// `detect_body`: draw the body (detection runs regardless, as in the pack).
    pub include_body: bool,
    /// `detect_hand` (not supported yet).
    pub include_hand: bool,
    /// `detect_face` (not supported yet).
    pub include_face: bool,
    /// `scale_stick_for_xinsr_cn`: thicker limbs on large canvases.
    pub xinsr_stick_scaling: bool,
}

/// A body keypoint normalised by the detection canvas (`x / W`, `y / H`).
pub type Keypoint = Option<(f64, f64)>;

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

/// `format_body_result` then `detect_poses`' normalisation: per person, 18 keypoints.
pub fn people(result: &BodyResult, height: usize, width: usize) -> Vec<[Keypoint; 18]> {
    result
        .subset
        .iter()
        .map(|row| {
            std::array::from_fn(|part| {
                let idx = row[part] as i64;
                (idx >= 0)
                    .then(|| result.candidate.get(idx as usize))
                    .flatten()
                    .map(|p| (p.x as f64 / width as f64, p.y as f64 / height as f64))
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
pub fn pose_json(people: &[[Keypoint; 18]], canvas_height: usize, canvas_width: usize) -> Value {
    let compress = |kps: &[Keypoint; 18]| -> Value {
        kps.iter()
            .flat_map(|k| match k {
                Some((x, y)) => [*x, *y, 1.0],
                None => [0.0, 0.0, 0.0],
            })
            .collect::<Vec<f64>>()
            .into()
    };
    json!({
        "people": people.iter().map(|p| json!({
            "pose_keypoints_2d": compress(p),
            "face_keypoints_2d": null,
            "hand_left_keypoints_2d": null,
            "hand_right_keypoints_2d": null,
        })).collect::<Vec<_>>(),
        "canvas_height": canvas_height,
        "canvas_width": canvas_width,
    })
}

/// `OpenposeDetector.__call__` on one uint8 image: the pose map (at the resized, unpadded size)
/// and its JSON frame.
pub fn openpose_image(
    net: &BodyNet,
    img: &ImageU8,
    opts: &OpenposeOptions,
) -> Result<(ImageU8, Value)> {
    if opts.include_hand || opts.include_face {
        return Err(PreprocessError::BadOption {
            op: OP,
            name: if opts.include_hand {
                "detect_hand"
            } else {
                "detect_face"
            },
            reason: "hand and face detection are not implemented yet: set it to disable".into(),
        });
    }
    let padded = resize_image_with_pad(
        OP,
        img,
        detect_resolution(opts.resolution),
        Interpolation::Cubic,
    )?;
    let result = detect_body(net, &bgr(&padded.image))?;
    Ok(render(&result, &padded, opts))
}

/// `BGR` copy of an RGB image (the detector flips the channels before the body net).
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

/// The end of `OpenposeDetector.__call__`: the people of `result` (found on `padded`'s image)
/// drawn on a black canvas of that size, cropped back by `remove_pad`, and the JSON frame.
pub fn render(result: &BodyResult, padded: &Padded, opts: &OpenposeOptions) -> (ImageU8, Value) {
    let rgb = &padded.image;
    let people = people(result, rgb.height, rgb.width);
    let mut canvas = ImageU8::zeros(rgb.height, rgb.width, 3);
    if opts.include_body {
        for p in &people {
            draw_bodypose(&mut canvas, p, opts.xinsr_stick_scaling);
        }
    }
    let map = hwc3(&padded.remove_pad(&canvas));
    let frame = pose_json(&people, map.height, map.width);
    (map, frame)
}

/// The node's call over an IMAGE batch `[B, H, W, C]`: the pose maps `[B, H', W', 3]` and one JSON
/// frame per image.
pub fn openpose(
    image: &Tensor,
    net: &BodyNet,
    opts: &OpenposeOptions,
) -> Result<(Tensor, Vec<Value>)> {
    let frames = Mutex::new(Vec::new());
    let maps = run_aux(OP, image, |img| {
        let (map, frame) = openpose_image(net, img, opts)?;
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
