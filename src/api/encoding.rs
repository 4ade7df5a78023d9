//! Compressed request bodies. A body sent with `Content-Encoding: gzip` or `deflate` (as aiohttp,
//! ComfyUI's server, accepts) is inflated by actix's body extractors as it arrives, and the
//! inflated bytes count against `--max-upload-size` (413 past it): a 100 KB gzip bomb that
//! inflates to 100 GB stops at the limit, after one network chunk (a few KB, inflated at most
//! about 1000 times) past it. Every other encoding, several encodings stacked, and any encoding
//! on a multipart upload (actix-multipart reads the raw bytes) are refused here with 415 rather
//! than read as if they were plain.

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::HttpResponse;

/// The middleware (`actix_web::middleware::from_fn`): 415 with the reason for a body in an
/// encoding the server does not inflate.
pub async fn content_encoding_guard(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<
    ServiceResponse<actix_web::body::EitherBody<impl actix_web::body::MessageBody>>,
    actix_web::Error,
> {
    if let Some(reason) = refusal(req.headers()) {
        let response = HttpResponse::UnsupportedMediaType()
            .content_type("text/plain; charset=utf-8")
            .body(reason);
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Why a request body's encoding is refused, or `None` when it is plain, gzip or deflate.
pub fn refusal(headers: &HeaderMap) -> Option<String> {
    let encodings: Vec<&str> = headers
        .get_all(header::CONTENT_ENCODING)
        .flat_map(|v| v.to_str().unwrap_or("\u{fffd}").split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
        .collect();
    let encoding = match encodings.as_slice() {
        [] => return None,
        [one] => *one,
        _ => {
            return Some(format!(
                "Content-Encoding: {}: one encoding at most (gzip or deflate)",
                encodings.join(", ")
            ))
        }
    };
    if !(encoding.eq_ignore_ascii_case("gzip") || encoding.eq_ignore_ascii_case("deflate")) {
        return Some(format!(
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
    multipart.then(|| {
        format!("Content-Encoding: {encoding}: uploads (multipart/form-data) are read uncompressed")
    })
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
        assert_eq!(refusal(&headers(&[])), None);
        assert_eq!(refusal(&headers(&[("content-encoding", "identity")])), None);
        assert_eq!(refusal(&headers(&[("content-encoding", "GZIP")])), None);
        assert_eq!(
            refusal(&headers(&[("content-encoding", " deflate ")])),
            None
        );
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
            assert!(refusal(&headers(refused)).is_some(), "{refused:?}");
        }
    }
}
