//! Reading a PNG's text chunks (`tEXt`, `zTXt`, `iTXt`: ComfyUI's `prompt` and `workflow`) from
//! untrusted bytes, with decompression bounded: a compressed chunk of a few kilobytes can inflate to
//! gigabytes, so the chunks together may inflate to [`MAX_PNG_TEXT_BYTES`] and no further.

use std::io::Read;

/// The most text, in bytes after decompression, read from one PNG's text chunks together.
pub const MAX_PNG_TEXT_BYTES: usize = 64 << 20;

/// Why a PNG's text chunks cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PngTextError {
    #[error("not a readable PNG: {0}")]
    NotPng(String),
    #[error(
        "the PNG's text chunks hold more than {} MiB of text once decompressed",
        MAX_PNG_TEXT_BYTES >> 20
    )]
    TooLarge,
}

/// The text chunks before the image data, as (keyword, text), at most [`MAX_PNG_TEXT_BYTES`] of
/// text in all. A compressed chunk that does not inflate (corrupt, or not UTF-8 for `iTXt`) is left
/// out, as before; one that would pass the limit fails the whole read.
pub fn png_text_chunks(reader: impl Read) -> Result<Vec<(String, String)>, PngTextError> {
    // The decoder reserves every chunk's raw bytes against this: compressed text can be no larger
    // than the text it stands for (plus zlib's few bytes per block).
    let limits = png::Limits {
        bytes: MAX_PNG_TEXT_BYTES + (1 << 20),
    };
    let decoder = png::Decoder::new_with_limits(reader, limits);
    let reader = decoder.read_info().map_err(|e| match e {
        png::DecodingError::LimitsExceeded => PngTextError::TooLarge,
        e => PngTextError::NotPng(e.to_string()),
    })?;
    let info = reader.info();
    let mut budget = Budget(MAX_PNG_TEXT_BYTES);
    let mut chunks = Vec::new();
    for chunk in &info.uncompressed_latin1_text {
        chunks.push((chunk.keyword.clone(), budget.take(chunk.text.clone())?));
    }
    for chunk in &info.compressed_latin1_text {
        let mut chunk = chunk.clone();
        if budget.inflated(chunk.decompress_text_with_limit(budget.0))? {
            if let Ok(text) = chunk.get_text() {
                chunks.push((chunk.keyword.clone(), budget.take(text)?));
            }
        }
    }
    for chunk in &info.utf8_text {
        let mut chunk = chunk.clone();
        if budget.inflated(chunk.decompress_text_with_limit(budget.0))? {
            if let Ok(text) = chunk.get_text() {
                chunks.push((chunk.keyword.clone(), budget.take(text)?));
            }
        }
    }
    Ok(chunks)
}

/// The bytes of text still allowed.
struct Budget(usize);

impl Budget {
    fn take(&mut self, text: String) -> Result<String, PngTextError> {
        self.0 = self
            .0
            .checked_sub(text.len())
            .ok_or(PngTextError::TooLarge)?;
        Ok(text)
    }

    /// Whether a chunk inflated within the budget (`false`: corrupt, left out).
    fn inflated(&self, result: Result<(), png::DecodingError>) -> Result<bool, PngTextError> {
        match result {
            Ok(()) => Ok(true),
            Err(e) if too_large(&e) => Err(PngTextError::TooLarge),
            Err(_) => Ok(false),
        }
    }
}

/// Whether decompression stopped at its limit. The png crate keeps that error's kind private and
/// says so only in its message; were the message to change, a chunk past the limit would be left
/// out like a corrupt one (still never inflated further), and the tests below would say so.
fn too_large(error: &png::DecodingError) -> bool {
    matches!(error, png::DecodingError::LimitsExceeded)
        || error.to_string().contains("decompression space")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x1 PNG with `text` chunks written after the header, before the image data.
    fn png_with(text: impl FnOnce(&mut png::Writer<&mut Vec<u8>>)) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, 1, 1);
            encoder.set_color(png::ColorType::Grayscale);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().unwrap();
            text(&mut writer);
            writer.write_image_data(&[0]).unwrap();
        }
        out
    }

    fn compressed_itxt(keyword: &str, text: String) -> png::text_metadata::ITXtChunk {
        let mut chunk = png::text_metadata::ITXtChunk::new(keyword, text);
        chunk.compressed = true;
        chunk
    }

    fn ztxt(keyword: &str, text: String) -> png::text_metadata::ZTXtChunk {
        png::text_metadata::ZTXtChunk::new(keyword, text)
    }

    #[test]
    fn every_kind_of_text_chunk_is_read() {
        let png = png_with(|w| {
            let plain = png::text_metadata::TEXtChunk::new("prompt", "{}");
            w.write_text_chunk(&plain).unwrap();
            w.write_text_chunk(&ztxt("workflow", "{\"nodes\":[]}".into()))
                .unwrap();
            w.write_text_chunk(&compressed_itxt("note", "ünïcode".into()))
                .unwrap();
        });
        let chunks = png_text_chunks(png.as_slice()).unwrap();
        assert_eq!(
            chunks,
            [
                ("prompt".to_owned(), "{}".to_owned()),
                ("workflow".to_owned(), "{\"nodes\":[]}".to_owned()),
                ("note".to_owned(), "ünïcode".to_owned()),
            ]
        );
    }

    #[test]
    fn compressed_text_is_inflated_only_up_to_the_limit() {
        // One zTXt chunk past the limit on its own: a few hundred kilobytes on disk.
        let big = "a".repeat(MAX_PNG_TEXT_BYTES + 1);
        let png = png_with(|w| w.write_text_chunk(&ztxt("workflow", big)).unwrap());
        assert!(png.len() < 1 << 20, "{} bytes", png.len());
        assert!(matches!(
            png_text_chunks(png.as_slice()),
            Err(PngTextError::TooLarge)
        ));
        // A compressed iTXt chunk likewise.
        let big = "a".repeat(MAX_PNG_TEXT_BYTES + 1);
        let png = png_with(|w| w.write_text_chunk(&compressed_itxt("w", big)).unwrap());
        assert!(matches!(
            png_text_chunks(png.as_slice()),
            Err(PngTextError::TooLarge)
        ));
        // Two chunks under the limit each, over it together.
        let half = "b".repeat(MAX_PNG_TEXT_BYTES / 2 + 1);
        let png = png_with(|w| {
            w.write_text_chunk(&ztxt("a", half.clone())).unwrap();
            w.write_text_chunk(&compressed_itxt("b", half)).unwrap();
        });
        assert!(matches!(
            png_text_chunks(png.as_slice()),
            Err(PngTextError::TooLarge)
        ));
        assert!(matches!(
            png_text_chunks(&b"not a png"[..]),
            Err(PngTextError::NotPng(_))
        ));
    }
}
