//! Compressed request bodies. A body sent with `Content-Encoding: gzip` or `deflate` (as aiohttp,
//! ComfyUI's server, accepts) is inflated here, as it arrives, in pieces of at most a few tens of
//! KB, and the request goes on to the routes as a plain body whose inflated bytes count against
//! `--max-upload-size` (413 past it). So a 1 MB gzip bomb that would inflate to 1 GB stops one
//! piece past the limit. (actix's own decompression, which this replaces, inflated each whole
//! network chunk before its extractors saw the size: up to ~1000 times the chunk, over 100 MB
//! for an 8 MB limit.) Every other encoding, several encodings stacked, and any encoding on a
//! multipart upload (actix-multipart reads the raw bytes) are refused here with 415 rather than
//! read as if they were plain.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::web::{self, Bytes};
use futures_util::Stream;

use super::AppState;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpMessage, HttpResponse};

/// The middleware (`actix_web::middleware::from_fn`): 415 with the reason for a body in an
/// encoding the server does not inflate.
pub async fn content_encoding_guard(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<
    ServiceResponse<actix_web::body::EitherBody<impl actix_web::body::MessageBody>>,
    actix_web::Error,
> {
    match body_encoding(req.headers()) {
        BodyEncoding::Plain => {}
        BodyEncoding::Inflate { gzip } => {
            let limit = req
                .app_data::<web::Data<AppState>>()
                .map_or(usize::MAX, |state| state.config.max_upload_bytes);
            let inflated = Inflate::new(req.take_payload(), gzip, limit);
            req.set_payload(Payload::from(
                Box::pin(inflated) as Pin<Box<dyn Stream<Item = _>>>
            ));
            // The routes now read a plain body of unknown length.
            req.headers_mut().remove(header::CONTENT_ENCODING);
            req.headers_mut().remove(header::CONTENT_LENGTH);
        }
        BodyEncoding::Refused(reason) => {
            let response = HttpResponse::UnsupportedMediaType()
                .content_type("text/plain; charset=utf-8")
                .body(reason);
            return Ok(req.into_response(response).map_into_right_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// What to do with a request body, from its headers.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyEncoding {
    /// No encoding (or `identity`): read as it is.
    Plain,
    /// Inflated on the way in: gzip, or (`deflate`, as HTTP means it) zlib.
    Inflate { gzip: bool },
    /// 415, for this reason.
    Refused(String),
}

/// Whether a request body is read plain, inflated or refused.
pub fn body_encoding(headers: &HeaderMap) -> BodyEncoding {
    let encodings: Vec<&str> = headers
        .get_all(header::CONTENT_ENCODING)
        .flat_map(|v| v.to_str().unwrap_or("\u{fffd}").split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
        .collect();
    let encoding = match encodings.as_slice() {
        [] => return BodyEncoding::Plain,
        [one] => *one,
        _ => {
            return BodyEncoding::Refused(format!(
                "Content-Encoding: {}: one encoding at most (gzip or deflate)",
                encodings.join(", ")
            ))
        }
    };
    let gzip = encoding.eq_ignore_ascii_case("gzip");
    if !(gzip || encoding.eq_ignore_ascii_case("deflate")) {
        return BodyEncoding::Refused(format!(
            "Content-Encoding: {encoding}: request bodies may be gzip or deflate only"
        ));
    }
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        });
    if multipart {
        return BodyEncoding::Refused(format!(
            "Content-Encoding: {encoding}: uploads (multipart/form-data) are read uncompressed"
        ));
    }
    BodyEncoding::Inflate { gzip }
}

/// The inflater, one of the two wrappings HTTP allows.
enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
}

impl Decoder {
    /// Feeds some of `input` (each call inflates into a buffer of 32 KiB, so what it adds to
    /// the output is bounded whatever the input); returns how much it took.
    fn write(&mut self, input: &[u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.write(input),
            Decoder::Zlib(d) => d.write(input),
        }
    }

    /// Checks the stream is whole (and, for gzip, its checksum) and flushes the rest.
    fn finish(&mut self) -> io::Result<()> {
        match self {
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Zlib(d) => d.try_finish(),
        }
    }

    fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Zlib(d) => d.get_mut(),
        })
    }
}

/// A compressed body stream, inflated piece by piece as the route reads it, and cut off with
/// [`PayloadError::Overflow`] (413) once more than `limit` bytes came out. Written here rather
/// than taken from actix (`Decompress`) because that one inflates a whole network chunk at a
/// time, with no bound on what one chunk becomes.
struct Inflate<S> {
    compressed: S,
    decoder: Decoder,
    /// The compressed chunk being inflated, and how far.
    chunk: Bytes,
    taken: usize,
    inflated: usize,
    limit: usize,
    done: bool,
}

impl<S> Inflate<S> {
    fn new(compressed: S, gzip: bool, limit: usize) -> Self {
        let decoder = if gzip {
            Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new()))
        } else {
            Decoder::Zlib(flate2::write::ZlibDecoder::new(Vec::new()))
        };
        Inflate {
            compressed,
            decoder,
            chunk: Bytes::new(),
            taken: 0,
            inflated: 0,
            limit,
            done: false,
        }
    }

    /// The output so far as the next piece, or the overflow error past the limit.
    fn piece(&mut self) -> Option<Result<Bytes, PayloadError>> {
        let out = self.decoder.take_output();
        if out.is_empty() {
            return None;
        }
        self.inflated += out.len();
        if self.inflated > self.limit {
            self.done = true;
            return Some(Err(PayloadError::Overflow));
        }
        Some(Ok(Bytes::from(out)))
    }

    fn fail(&mut self, error: io::Error) -> Option<Result<Bytes, PayloadError>> {
        self.done = true;
        Some(Err(PayloadError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the compressed request body: {error}"),
        ))))
    }
}

impl<S> Stream for Inflate<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.taken < this.chunk.len() {
                match this.decoder.write(&this.chunk[this.taken..]) {
                    Ok(0) => {
                        let trailing = io::Error::other("bytes after the end of the stream");
                        return Poll::Ready(this.fail(trailing));
                    }
                    Ok(n) => this.taken += n,
                    Err(error) => return Poll::Ready(this.fail(error)),
                }
                match this.piece() {
                    Some(piece) => return Poll::Ready(Some(piece)),
                    None => continue,
                }
            }
            match Pin::new(&mut this.compressed).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => (this.chunk, this.taken) = (chunk, 0),
                Poll::Ready(Some(Err(error))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    if let Err(error) = this.decoder.finish() {
                        return Poll::Ready(this.fail(error));
                    }
                    let last = this.piece();
                    this.done = true;
                    return Poll::Ready(last);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    #[test]
    fn plain_gzip_and_deflate_pass_the_rest_are_refused() {
        use BodyEncoding::{Inflate, Plain};
        assert_eq!(body_encoding(&headers(&[])), Plain);
        let identity = [("content-encoding", "identity")];
        assert_eq!(body_encoding(&headers(&identity)), Plain);
        let gzip = [("content-encoding", "GZIP")];
        assert_eq!(body_encoding(&headers(&gzip)), Inflate { gzip: true });
        let deflate = [("content-encoding", " deflate ")];
        assert_eq!(body_encoding(&headers(&deflate)), Inflate { gzip: false });
        for refused in [
            &[("content-encoding", "br")][..],
            &[("content-encoding", "zstd")],
            &[("content-encoding", "gzip, gzip")],
            &[
                ("content-encoding", "gzip"),
                ("content-encoding", "deflate"),
            ],
            &[
                ("content-encoding", "gzip"),
                ("content-type", "multipart/form-data; boundary=x"),
            ],
        ] {
            let encoding = body_encoding(&headers(refused));
            assert!(matches!(encoding, BodyEncoding::Refused(_)), "{refused:?}");
        }
    }

    /// Runs the inflater over `compressed`, cut into network chunks of `chunk` bytes: the
    /// pieces' sizes, and the body or the error.
    fn inflate(
        compressed: &[u8],
        chunk: usize,
        gzip: bool,
        limit: usize,
    ) -> (Vec<usize>, Result<Vec<u8>, PayloadError>) {
        use futures_util::StreamExt;
        let chunks: Vec<Result<Bytes, PayloadError>> = compressed
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut stream = Inflate::new(futures_util::stream::iter(chunks), gzip, limit);
        let (mut sizes, mut body) = (Vec::new(), Vec::new());
        let result = futures_util::FutureExt::now_or_never(async {
            while let Some(piece) = stream.next().await {
                let piece = piece?;
                sizes.push(piece.len());
                body.extend_from_slice(&piece);
            }
            Ok(())
        })
        .expect("the stream never waits on its input");
        (sizes, result.map(|()| body))
    }

    fn compress(body: &[u8], gzip: bool) -> Vec<u8> {
        let level = flate2::Compression::best();
        if gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(body).unwrap();
            e.finish().unwrap()
        } else {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
    }

    #[test]
    fn bodies_inflate_whole_in_bounded_pieces_whatever_the_chunking() {
        let body: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for gzip in [true, false] {
            let compressed = compress(&body, gzip);
            for chunk in [1, 7, 4096, compressed.len()] {
                let (sizes, inflated) = inflate(&compressed, chunk, gzip, usize::MAX);
                assert_eq!(inflated.unwrap(), body, "gzip {gzip}, chunk {chunk}");
                let largest = sizes.iter().max().copied().unwrap_or(0);
                assert!(largest <= 64 << 10, "a piece of {largest} bytes");
            }
        }
    }

    #[test]
    fn a_bomb_stops_one_piece_past_the_limit() {
        // 64 MiB of zeros in about 64 KB, sent as one chunk: actix's decoder inflated it whole.
        let bomb = compress(&vec![0; 64 << 20], true);
        let (sizes, inflated) = inflate(&bomb, bomb.len(), true, 1 << 20);
        assert!(
            matches!(inflated, Err(PayloadError::Overflow)),
            "{inflated:?}"
        );
        let total: usize = sizes.iter().sum();
        assert!(total <= 1 << 20, "{total} bytes let through");
        assert!(sizes.len() < 100, "{} pieces", sizes.len());
    }

    #[test]
    fn truncated_corrupt_or_trailing_bodies_are_errors_naming_the_body() {
        let body = b"{\"prompt\": {}}".repeat(100);
        let compressed = compress(&body, true);
        let truncated = &compressed[..compressed.len() - 4];
        let mut corrupt = compressed.clone();
        corrupt[20] ^= 0xff;
        let mut trailing = compressed.clone();
        trailing.extend_from_slice(b"more");
        for (what, bytes) in [
            ("truncated", truncated),
            ("corrupt", &corrupt[..]),
            ("trailing", &trailing[..]),
            ("not gzip", &body[..]),
        ] {
            let (_, inflated) = inflate(bytes, 16, true, usize::MAX);
            match inflated {
                Err(PayloadError::Io(e)) => {
                    assert!(
                        e.to_string().contains("compressed request body"),
                        "{what}: {e}"
                    )
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}
