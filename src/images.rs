//! Decoding image files a user gave (LoadImage's inputs, uploads, the mask editor's layers, model
//! previews) within limits: a small file may declare any size, so its dimensions and the decoded
//! buffer are checked against [`MAX_SIDE`] and [`MAX_DECODED_BYTES`] before anything is allocated,
//! and the decoder itself runs under `image::Limits` (a compressed stream cannot inflate past the
//! buffer its header announced).

use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

/// The widest and tallest image decoded: ComfyUI's `MAX_RESOLUTION`, the largest size any node
/// takes.
pub const MAX_SIDE: u32 = 16384;
/// The most bytes one decoded image may take in its own format (16384² RGBA at 8 bits is 1 GiB;
/// at 16 bits per channel the side shrinks to match).
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

/// Why an image could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_SIDE`] or [`MAX_DECODED_BYTES`]; refused before decoding.
    #[error(
        "the image is {width}x{height} ({} MiB decoded); the most Weft decodes is \
         {MAX_SIDE}x{MAX_SIDE} and {} MiB",
        bytes >> 20,
        MAX_DECODED_BYTES >> 20
    )]
    TooLarge {
        /// The width its header declares.
        width: u32,
        /// The height its header declares.
        height: u32,
        /// The bytes its decoded pixels would take.
        bytes: u64,
    },
    /// Not an image in a format Weft reads, or a corrupt one.
    #[error("cannot decode the image: {0}")]
    Image(#[from] image::ImageError),
    /// The file could not be read.
    #[error("cannot read the image: {0}")]
    Io(#[from] std::io::Error),
}

/// The limits every decoder runs under.
pub fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    limits
}

/// A decoded image with its EXIF orientation applied.
pub fn open(path: &Path) -> Result<DynamicImage, DecodeError> {
    decode(ImageReader::open(path)?)
}

/// [`open`] for bytes in memory (an upload's field).
pub fn from_memory(bytes: &[u8]) -> Result<DynamicImage, DecodeError> {
    decode(ImageReader::new(Cursor::new(bytes)))
}

/// [`open`] for a node: `reserve(width, height)` is called once the header is read and checked,
/// before the pixels are decoded, so the node can make room for what it will build from them (or
/// refuse); `error` turns a decoding failure into the node's error.
pub fn open_reserving<E>(
    path: &Path,
    error: impl Fn(DecodeError) -> E,
    reserve: impl FnOnce(u32, u32) -> Result<(), E>,
) -> Result<DynamicImage, E> {
    let decoder =
        checked_decoder(ImageReader::open(path).map_err(DecodeError::from)).map_err(&error)?;
    let (width, height) = decoder.dimensions();
    reserve(width, height)?;
    finish(decoder).map_err(error)
}

fn decode<'a, R: BufRead + Seek + 'a>(reader: ImageReader<R>) -> Result<DynamicImage, DecodeError> {
    finish(checked_decoder(Ok(reader))?)
}

/// The decoder for `reader` (format guessed from the content), its size checked.
fn checked_decoder<'a, R: BufRead + Seek + 'a>(
    reader: Result<ImageReader<R>, DecodeError>,
) -> Result<impl ImageDecoder + 'a, DecodeError> {
    let mut reader = reader?.with_guessed_format()?;
    // The size is checked here with a clear message; the decoder's own limits stay on as well.
    reader.no_limits();
    let mut decoder = reader.into_decoder()?;
    let (width, height) = decoder.dimensions();
    let bytes = decoder.total_bytes();
    if width > MAX_SIDE || height > MAX_SIDE || bytes > MAX_DECODED_BYTES {
        return Err(DecodeError::TooLarge {
            width,
            height,
            bytes,
        });
    }
    let mut limits = limits();
    limits.reserve(bytes)?;
    decoder.set_limits(limits)?;
    Ok(decoder)
}

fn finish(mut decoder: impl ImageDecoder) -> Result<DynamicImage, DecodeError> {
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    Ok(image)
}
