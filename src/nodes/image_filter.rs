//! Post-processing filters (ComfyUI's `comfy_extras/nodes_post_processing.py` and
//! `nodes_morphology.py`): blending, Gaussian blur, sharpening, colour quantisation and
//! morphology, computed as ComfyUI computes them.

use crate::engine::resize::{Crop, UpscaleMethod};
use crate::graph::spec::build::*;
use crate::graph::spec::NodeSpec;
use crate::graph::SlotType;
use crate::nodes::mask::alpha_fix;
use crate::nodes::pixels::{self, Pixels};
use crate::nodes::{quantize, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};

pub fn register(registry: &mut Registry) {
    registry.add(ImageBlend);
    registry.add(ImageBlur);
    registry.add(ImageQuantize);
    registry.add(ImageSharpen);
    registry.add(Morphology);
}

fn spec(
    class_type: &'static str,
    display_name: &'static str,
    python_module: &'static str,
    inputs: Vec<crate::graph::spec::InputSpec>,
) -> NodeSpec {
    pixels::extras_node(
        python_module,
        class_type,
        display_name,
        "image/postprocessing",
        inputs,
        vec![output(SlotType::IMAGE, "IMAGE")],
    )
}

const POST_PROCESSING: &str = "comfy_extras.nodes_post_processing";

const BLEND_MODES: &[&str] = &[
    "normal",
    "multiply",
    "screen",
    "overlay",
    "soft_light",
    "difference",
];

/// Mixes two images with a blend mode, `blend_factor` of the blend over `image1`.
pub struct ImageBlend;

impl Node for ImageBlend {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageBlend",
            "ImageBlend",
            POST_PROCESSING,
            vec![
                required("image1", link(SlotType::IMAGE)),
                required("image2", link(SlotType::IMAGE)),
                required("blend_factor", float(0.5, 0.0, 1.0, 0.01)),
                required("blend_mode", combo(BLEND_MODES)),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let first = Pixels::image(inputs.image("image1")?, "image1")?;
        let mut second = alpha_fix(&first, Pixels::image(inputs.image("image2")?, "image2")?);
        let factor = inputs.float("blend_factor")?;
        let mode = inputs.string("blend_mode")?;
        let blend: fn(f32, f32) -> f32 = match mode {
            "normal" => |_, b| b,
            "multiply" => |a, b| a * b,
            "screen" => |a, b| 1.0 - (1.0 - a) * (1.0 - b),
            "overlay" => |a, b| {
                if a <= 0.5 {
                    2.0 * a * b
                } else {
                    1.0 - 2.0 * (1.0 - a) * (1.0 - b)
                }
            },
            "soft_light" => |a, b| {
                if b <= 0.5 {
                    a - (1.0 - 2.0 * b) * a * (1.0 - a)
                } else {
                    let g = if a <= 0.25 {
                        ((16.0 * a - 12.0) * a + 4.0) * a
                    } else {
                        a.sqrt()
                    };
                    a + (2.0 * b - 1.0) * (g - a)
                }
            },
            "difference" => |a, b| a - b,
            other => {
                return Err(NodeError::input(
                    "blend_mode",
                    format!("unknown blend mode '{other}'"),
                ))
            }
        };
        if (second.b, second.h, second.w) != (first.b, first.h, first.w) {
            let n = pixels::count("image2", [second.b, first.h, first.w, second.c])?;
            pixels::reserve(ctx, "image2", n, 2, "resizing image2")?;
            second = second.resized(first.w, first.h, UpscaleMethod::Bicubic, Crop::Center)?;
        }
        // The batches broadcast as torch's do: equal, or one of them a single image.
        let batch = match (first.b, second.b) {
            (a, b) if a == b || b == 1 => a,
            (1, b) => b,
            (a, b) => {
                return Err(NodeError::input(
                    "image2",
                    format!("has {b} images but image1 has {a}; give one image or as many"),
                ))
            }
        };
        let keep = (1.0 - factor) as f32;
        let factor = factor as f32;
        let mut out = Pixels::filled(batch, first.h, first.w, first.c, 0.0);
        let n = first.h * first.w * first.c;
        for i in 0..batch {
            let (a, b) = (first.cyclic(i), second.cyclic(i));
            let dst = &mut out.data[i * n..(i + 1) * n];
            for ((o, a), b) in dst.iter_mut().zip(a).zip(b) {
                *o = (a * keep + blend(*a, *b) * factor).clamp(0.0, 1.0);
            }
        }
        out.image_output()
    }
}

/// ComfyUI's `gaussian_kernel` (`size` x `size` samples of a Gaussian over [-1, 1]², normalised
/// to sum 1, so `sigma` is relative to the radius, not in pixels) as the 1-D factor it is the
/// outer product of: exp(-(x² + y²)/2σ²) = exp(-x²/2σ²)·exp(-y²/2σ²), and the 2-D sum is the
/// square of the 1-D one. Blurring by rows then columns costs 2·size taps a pixel, not size².
fn gaussian_1d(size: usize, sigma: f64) -> Vec<f32> {
    let two_sigma_sq = (2.0 * sigma * sigma) as f32;
    let weights: Vec<f32> = (0..size)
        .map(|i| {
            // torch.linspace(-1, 1, size)
            let x = if size == 1 {
                -1.0
            } else {
                (-1.0 + 2.0 * i as f64 / (size - 1) as f64) as f32
            };
            (-(x * x) / two_sigma_sq).exp()
        })
        .collect();
    let sum: f32 = weights.iter().sum();
    weights.iter().map(|w| w / sum).collect()
}

/// torch's `reflect` padding index: the edge is not repeated (`-1` → `1`).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let i = if i < 0 { -i } else { i };
    (if i >= n { 2 * (n - 1) - i } else { i }) as usize
}

/// Correlates every channel with the separable kernel `weights` ⊗ `weights` over a reflected
/// border (ComfyUI pads with `reflect`, then runs a grouped `conv2d`). The radius must be smaller
/// than both sides, as torch's reflect padding requires; `input` is named otherwise.
fn gaussian_blur(
    ctx: &NodeContext,
    image: &Pixels,
    weights: &[f32],
    input: &str,
) -> Result<Pixels, NodeError> {
    let radius = weights.len() / 2;
    if radius >= image.h || radius >= image.w {
        return Err(NodeError::input(
            input,
            format!(
                "{radius} must be smaller than the image's width and height ({}x{})",
                image.w, image.h
            ),
        ));
    }
    let taps = |n: usize| -> Vec<Vec<usize>> {
        (0..n)
            .map(|i| {
                (0..weights.len())
                    .map(|k| reflect(i as isize + k as isize - radius as isize, n))
                    .collect()
            })
            .collect()
    };
    let (cols, rows) = (taps(image.w), taps(image.h));
    let (w, c) = (image.w, image.c);
    let mut across = Pixels::filled(image.b, image.h, image.w, image.c, 0.0);
    for (src, dst) in image
        .data
        .chunks_exact(w * c)
        .zip(across.data.chunks_exact_mut(w * c))
    {
        for (x, sources) in cols.iter().enumerate() {
            for ch in 0..c {
                dst[x * c + ch] = sources
                    .iter()
                    .zip(weights)
                    .map(|(&sx, k)| k * src[sx * c + ch])
                    .sum();
            }
        }
    }
    ctx.check_interrupt()?;
    let mut out = Pixels::filled(image.b, image.h, image.w, image.c, 0.0);
    let plane = image.h * w * c;
    for b in 0..image.b {
        let src = &across.data[b * plane..(b + 1) * plane];
        let dst = &mut out.data[b * plane..(b + 1) * plane];
        for (y, sources) in rows.iter().enumerate() {
            for i in 0..w * c {
                dst[y * w * c + i] = sources
                    .iter()
                    .zip(weights)
                    .map(|(&sy, k)| k * src[sy * w * c + i])
                    .sum();
            }
        }
    }
    Ok(out)
}

/// A Gaussian blur over a (2·radius+1)² window.
pub struct ImageBlur;

impl Node for ImageBlur {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageBlur",
            "ImageBlur",
            POST_PROCESSING,
            vec![
                required("image", link(SlotType::IMAGE)),
                required("blur_radius", int(1, 1, 31)),
                required("sigma", float(1.0, 0.1, 10.0, 0.1)),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = Pixels::image(inputs.image("image")?, "image")?;
        let radius = inputs.usize("blur_radius")?;
        let weights = gaussian_1d(2 * radius + 1, inputs.float("sigma")?);
        gaussian_blur(ctx, &image, &weights, "blur_radius")?.image_output()
    }
}

/// Unsharp masking: the pixel minus `alpha`·10 times its Gaussian surround, clamped to 0..1.
pub struct ImageSharpen;

impl Node for ImageSharpen {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageSharpen",
            "ImageSharpen",
            POST_PROCESSING,
            vec![
                required("image", link(SlotType::IMAGE)),
                required("sharpen_radius", int(1, 1, 31)),
                required("sigma", float(1.0, 0.1, 10.0, 0.01)),
                required("alpha", float(1.0, 0.0, 5.0, 0.01)),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = Pixels::image(inputs.image("image")?, "image")?;
        let radius = inputs.usize("sharpen_radius")?;
        let weights = gaussian_1d(2 * radius + 1, inputs.float("sigma")?);
        // ComfyUI's kernel is -10·alpha·G with 1 - sum(-10·alpha·G) added at the centre, so the
        // result is -10·alpha·blur + (1 - that sum)·pixel.
        let scale = -(inputs.float("alpha")? * 10.0) as f32;
        let sum: f32 = weights
            .iter()
            .flat_map(|a| weights.iter().map(move |b| a * b * scale))
            .sum();
        let blurred = gaussian_blur(ctx, &image, &weights, "sharpen_radius")?;
        let data = blurred
            .data
            .iter()
            .zip(&image.data)
            .map(|(b, p)| (scale * b + (1.0 - sum) * p).clamp(0.0, 1.0))
            .collect();
        Pixels { data, ..image }.image_output()
    }
}

const DITHERS: &[&str] = &[
    "none",
    "floyd-steinberg",
    "bayer-2",
    "bayer-4",
    "bayer-8",
    "bayer-16",
];

/// Reduces each image to at most `colors` colours (PIL's median cut), with optional dithering.
pub struct ImageQuantize;

impl Node for ImageQuantize {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageQuantize",
            "ImageQuantize",
            POST_PROCESSING,
            vec![
                required("image", link(SlotType::IMAGE)),
                required("colors", int(256, 1, 256)),
                required("dither", combo(DITHERS)),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = Pixels::image(inputs.image("image")?, "image")?;
        if image.c != 3 {
            return Err(NodeError::input(
                "image",
                format!("needs an RGB image, got {} channels", image.c),
            ));
        }
        let colors = inputs.usize("colors")?;
        let dither = match inputs.string("dither")? {
            "none" => quantize::Dither::None,
            "floyd-steinberg" => quantize::Dither::FloydSteinberg,
            other => match other.strip_prefix("bayer-").and_then(|o| o.parse().ok()) {
                Some(order @ (2 | 4 | 8 | 16)) => quantize::Dither::Bayer(order),
                _ => {
                    return Err(NodeError::input(
                        "dither",
                        format!("unknown dither '{other}'"),
                    ))
                }
            },
        };
        let mut out = Pixels::filled(image.b, image.h, image.w, 3, 0.0);
        let n = image.h * image.w * 3;
        for b in 0..image.b {
            ctx.check_interrupt()?;
            // ComfyUI: (image * 255).to(torch.uint8), a truncation.
            let rgb: Vec<u8> = image.item(b).iter().map(|v| (v * 255.0) as u8).collect();
            let quantized = quantize::quantize(&rgb, image.w, image.h, colors, dither);
            for (o, v) in out.data[b * n..(b + 1) * n].iter_mut().zip(quantized) {
                *o = f32::from(v) / 255.0;
            }
        }
        out.image_output()
    }
}

const MORPHOLOGY_OPERATIONS: &[&str] = &[
    "erode",
    "dilate",
    "open",
    "close",
    "gradient",
    "bottom_hat",
    "top_hat",
];

/// Grey morphology with a square `kernel_size` window, as kornia computes it (ComfyUI's
/// `Morphology`: geodesic borders, so only pixels inside the image count).
pub struct Morphology;

impl Node for Morphology {
    fn spec(&self) -> NodeSpec {
        spec(
            "Morphology",
            "ImageMorphology",
            "comfy_extras.nodes_morphology",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("operation", combo(MORPHOLOGY_OPERATIONS)),
                required("kernel_size", int(3, 3, 999)),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = Pixels::image(inputs.image("image")?, "image")?;
        let k = inputs.usize("kernel_size")?;
        let erode = |p: &Pixels| window_filter(p, k, false);
        let dilate = |p: &Pixels| window_filter(p, k, true);
        let minus = |a: Pixels, b: &Pixels| {
            let data = a.data.iter().zip(&b.data).map(|(x, y)| x - y).collect();
            Pixels { data, ..a }
        };
        ctx.check_interrupt()?;
        let out = match inputs.string("operation")? {
            "erode" => erode(&image),
            "dilate" => dilate(&image),
            "open" => dilate(&erode(&image)),
            "close" => erode(&dilate(&image)),
            "gradient" => minus(dilate(&image), &erode(&image)),
            "top_hat" => {
                let opened = dilate(&erode(&image));
                minus(image, &opened)
            }
            "bottom_hat" => minus(erode(&dilate(&image)), &image),
            other => {
                return Err(NodeError::input(
                    "operation",
                    format!("unknown operation '{other}'"),
                ))
            }
        };
        out.image_output()
    }
}

/// The max (`dilate`) or min over each pixel's `k` x `k` window, out-of-image pixels ignored
/// (kornia's geodesic border). Erosion's window starts `k / 2` before the pixel (kornia's origin);
/// dilation's is reflected about it, as kornia 0.9 computes a Minkowski dilation (the two only
/// differ for even `k`). Separable, since a rectangle's max is the max of its rows' maxima.
fn window_filter(p: &Pixels, k: usize, dilate: bool) -> Pixels {
    let before = if dilate { k - 1 - k / 2 } else { k / 2 };
    let window = Window {
        before,
        after: k - 1 - before,
        max: dilate,
    };
    let mut out = p.clone();
    let mut line = Vec::new();
    let mut result = Vec::new();
    for b in 0..p.b {
        for ch in 0..p.c {
            for y in 0..p.h {
                line.clear();
                line.extend((0..p.w).map(|x| out.data[out.at(b, y, x, ch)]));
                window.apply(&line, &mut result);
                for (x, v) in result.iter().enumerate() {
                    let i = out.at(b, y, x, ch);
                    out.data[i] = *v;
                }
            }
            for x in 0..p.w {
                line.clear();
                line.extend((0..p.h).map(|y| out.data[out.at(b, y, x, ch)]));
                window.apply(&line, &mut result);
                for (y, v) in result.iter().enumerate() {
                    let i = out.at(b, y, x, ch);
                    out.data[i] = *v;
                }
            }
        }
    }
    out
}

/// A 1-D window `before` values before and `after` after each position.
struct Window {
    before: usize,
    after: usize,
    max: bool,
}

impl Window {
    /// `out[i]` = max (or min) of `line[i - before ..= i + after]` clipped to the line, in O(n)
    /// with a monotonic queue of indices.
    fn apply(&self, line: &[f32], out: &mut Vec<f32>) {
        let n = line.len();
        let better = |a: f32, b: f32| if self.max { a >= b } else { a <= b };
        let mut queue = std::collections::VecDeque::new();
        out.clear();
        let mut next = 0;
        for i in 0..n {
            let end = (i + self.after).min(n - 1);
            while next <= end {
                while queue
                    .back()
                    .is_some_and(|&j: &usize| better(line[next], line[j]))
                {
                    queue.pop_back();
                }
                queue.push_back(next);
                next += 1;
            }
            let start = i.saturating_sub(self.before);
            while queue.front().is_some_and(|&j| j < start) {
                queue.pop_front();
            }
            out.push(line[*queue.front().expect("the window holds pixel i")]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_matches_a_direct_scan() {
        let line = [0.3, 0.9, 0.1, 0.5, 0.5, 0.0, 1.0, 0.2];
        for (before, after) in [(1, 1), (2, 1), (1, 2), (0, 5), (6, 3)] {
            for max in [true, false] {
                let mut got = Vec::new();
                Window { before, after, max }.apply(&line, &mut got);
                for (i, v) in got.iter().enumerate() {
                    let window = &line[i.saturating_sub(before)..=(i + after).min(line.len() - 1)];
                    let want = if max {
                        window.iter().cloned().fold(f32::MIN, f32::max)
                    } else {
                        window.iter().cloned().fold(f32::MAX, f32::min)
                    };
                    assert_eq!(*v, want, "{before} {after} {max} i={i}");
                }
            }
        }
    }

    #[test]
    fn reflect_does_not_repeat_the_edge() {
        assert_eq!(reflect(-1, 5), 1);
        assert_eq!(reflect(-2, 5), 2);
        assert_eq!(reflect(5, 5), 3);
        assert_eq!(reflect(6, 5), 2);
    }
}
