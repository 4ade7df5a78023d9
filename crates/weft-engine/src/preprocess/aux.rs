//! The resolution handling shared by the comfyui_controlnet_aux nodes (`util.py` `HWC3`, `pad64`,
//! `resize_image_with_pad`, and `utils.py` `common_annotator_call`'s resolution rule).

use super::cv::{self, Interpolation};
use super::{ImageU8, PreprocessError, Result};

/// `common_annotator_call`: a `resolution` below 64 (not a valid node value) falls back to 512.
pub fn detect_resolution(resolution: u32) -> usize {
    if resolution >= 64 {
        resolution as usize
    } else {
        512
    }
}

/// `HWC3`: grey to 3 channels, RGBA composited over white (`color * a + 255 * (1 - a)`, f32, truncated).
pub fn hwc3(img: &ImageU8) -> ImageU8 {
    match img.channels {
        3 => img.clone(),
        1 => ImageU8 {
            height: img.height,
            width: img.width,
            channels: 3,
            data: img.data.iter().flat_map(|&v| [v, v, v]).collect(),
        },
        _ => {
            let mut out = ImageU8::zeros(img.height, img.width, 3);
            for (o, p) in out
                .data
                .chunks_exact_mut(3)
                .zip(img.data.chunks_exact(img.channels))
            {
                let a = p.get(3).copied().unwrap_or(255) as f32 / 255.0;
                for (k, ok) in o.iter_mut().enumerate() {
                    let src = p.get(k).copied().unwrap_or(p[0]) as f32;
                    *ok = (src * a + 255.0 * (1.0 - a)).clamp(0.0, 255.0) as u8;
                }
            }
            out
        }
    }
}

/// The result of [`resize_image_with_pad`]: the edge-padded image and the size to crop back to.
#[derive(Debug, Clone)]
pub struct Padded {
    /// The resized image, padded on the bottom/right to multiples of 64 by edge replication.
    pub image: ImageU8,
    /// Rows before padding.
    pub target_height: usize,
    /// Columns before padding.
    pub target_width: usize,
}

impl Padded {
    /// `remove_pad`: crop a result of the padded size back to the resized size.
    pub fn remove_pad(&self, x: &ImageU8) -> ImageU8 {
        x.crop(self.target_height, self.target_width)
    }
}

fn pad64(x: usize) -> usize {
    x.div_ceil(64) * 64 - x
}

/// `resize_image_with_pad(img, resolution, upscale_method)`: scale so the short side is `resolution`
/// (`k = resolution / min(H, W)`, sizes `round(H k)` half to even), with `upscale` when enlarging and
/// INTER_AREA otherwise, then edge-pad to multiples of 64. `resolution == 0` keeps the image as is.
pub fn resize_image_with_pad(
    op: &'static str,
    img: &ImageU8,
    resolution: usize,
    upscale: Interpolation,
) -> Result<Padded> {
    let img = hwc3(img);
    if resolution == 0 {
        let (h, w) = (img.height, img.width);
        return Ok(Padded {
            image: img,
            target_height: h,
            target_width: w,
        });
    }
    let (h, w) = (img.height, img.width);
    let k = resolution as f64 / h.min(w) as f64;
    let th = (h as f64 * k).round_ties_even() as usize;
    let tw = (w as f64 * k).round_ties_even() as usize;
    if th == 0 || tw == 0 {
        return Err(PreprocessError::TooSmall {
            op,
            height: h,
            width: w,
            reason: "resized size is empty",
        });
    }
    let resized = cv::resize(
        &img,
        tw,
        th,
        if k > 1.0 {
            upscale
        } else {
            Interpolation::Area
        },
    );
    let image = cv::pad_edge(&resized, pad64(th), pad64(tw));
    Ok(Padded {
        image,
        target_height: th,
        target_width: tw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_multiples_of_64() {
        let img = ImageU8 {
            height: 96,
            width: 128,
            channels: 3,
            data: vec![9; 96 * 128 * 3],
        };
        let p = resize_image_with_pad("test", &img, 96, Interpolation::Cubic).unwrap();
        assert_eq!((p.image.height, p.image.width), (128, 128));
        assert_eq!((p.target_height, p.target_width), (96, 128));
        assert_eq!(p.remove_pad(&p.image), img);
    }

    #[test]
    fn rgba_is_composited_on_white() {
        let img = ImageU8 {
            height: 1,
            width: 1,
            channels: 4,
            data: vec![0, 0, 0, 0],
        };
        assert_eq!(hwc3(&img).data, vec![255, 255, 255]);
    }
}
