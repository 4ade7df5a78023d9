//! Browser-origin checks: other web pages must not drive the server through the user's browser
//! (queue workflows, write files, read the socket). ComfyUI's `create_origin_only_middleware`,
//! made stricter:
//!
//! - `Origin` must name the server the request was sent to: host name and port, as ComfyUI
//!   compares them, except that an `Origin` without a port means its scheme's default port (80,
//!   443) instead of "any port", and so does a `Host` without one. `Origin: null` (sandboxed frames,
//!   `file:` pages) and an unreadable `Origin` are refused.
//! - The check applies whenever `Host` is a loopback name in any spelling (`localhost`,
//!   `localhost.`, `foo.localhost`) or any IP address (`127.0.0.1`, `0.0.0.0`, `[::ffff:7f00:1]`,
//!   a LAN address), where ComfyUI checks only names that resolve to loopback. A `Host` that is
//!   another DNS name is left alone, as in ComfyUI, for reverse proxies that pass their upstream's
//!   name (a `Host` allowlist is the way to close that, later).
//! - `Sec-Fetch-Site: cross-site` on anything but a plain read (`GET`, `HEAD`, `OPTIONS`), and on
//!   any WebSocket handshake, is refused whatever the `Host`.

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, header::HeaderMap, Method};
use actix_web::HttpResponse;

/// The middleware (`actix_web::middleware::from_fn`): 403 with the reason for a request another
/// site's page made.
pub async fn origin_guard(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<
    ServiceResponse<actix_web::body::EitherBody<impl actix_web::body::MessageBody>>,
    actix_web::Error,
> {
    if let Some(reason) = refusal(req.method(), req.headers()) {
        tracing::warn!(
            path = req.path(),
            "refused a cross-origin request: {reason}"
        );
        let response = HttpResponse::Forbidden()
            .content_type("text/plain; charset=utf-8")
            .body(reason);
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Why a request is refused as another site's, or `None`.
pub fn refusal(method: &Method, headers: &HeaderMap) -> Option<String> {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::trim).unwrap_or("\u{fffd}"))
    };
    let websocket = text(header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let reads = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) && !websocket;
    if !reads
        && text(header::HeaderName::from_static("sec-fetch-site"))
            .is_some_and(|site| site.eq_ignore_ascii_case("cross-site"))
    {
        return Some(format!(
            "Sec-Fetch-Site: cross-site: another site's page may not {}",
            if websocket {
                "open the socket"
            } else {
                "change anything"
            }
        ));
    }
    let origin = text(header::ORIGIN)?;
    let Some(host) = text(header::HOST) else {
        return Some(format!(
            "Origin '{origin}' cannot be checked: the request has no Host"
        ));
    };
    let Some((host_name, host_port)) = split_authority(host) else {
        // Not a host a browser would send; nothing to compare with.
        return None;
    };
    if !checked_host(&host_name) {
        return None;
    }
    let mismatch = || Some(format!("Origin '{origin}' does not match Host '{host}'"));
    let Some((scheme, authority)) = origin.split_once("://") else {
        return mismatch();
    };
    let Some((origin_name, origin_port)) = split_authority(authority) else {
        return mismatch();
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    let origin_port = origin_port.or(default_port);
    let ports_agree = match host_port {
        Some(port) => origin_port == Some(port),
        // No port in Host: the request came to a default port (a proxy in front, or port 80).
        None => matches!(origin_port, Some(80 | 443)),
    };
    if origin_name != host_name || !ports_agree {
        return mismatch();
    }
    None
}

/// `host[:port]` (or `[v6]:port`) as its lower-case host name (brackets kept off) and port;
/// `None` when it is not one.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    if authority.is_empty() || authority.contains(['/', '@', ' ']) {
        return None;
    }
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        match after {
            "" => (name, None),
            _ => (name, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(port) => Some(port.parse::<u16>().ok()?),
    };
    (!name.is_empty()).then(|| (name.to_ascii_lowercase(), port))
}

/// Whether requests to this host name are checked: loopback names in any spelling and every IP
/// address (a browser sends IPv4 in dotted form and IPv6 compressed, but any name ending in a
/// number is an address to a URL parser, so those count too).
fn checked_host(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    if name.is_empty() || name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn refused(method: Method, pairs: &[(&str, &str)]) -> bool {
        refusal(&method, &headers(pairs)).is_some()
    }

    #[test]
    fn origin_must_name_the_host_and_port() {
        let get =
            |host: &str, origin: &str| refused(Method::GET, &[("host", host), ("origin", origin)]);
        assert!(!get("127.0.0.1:8188", "http://127.0.0.1:8188"));
        assert!(!get("LOCALHOST:8188", "http://localhost:8188"));
        assert!(!get("[::1]:8188", "http://[::1]:8188"));
        assert!(!get("127.0.0.1", "http://127.0.0.1"));
        assert!(!get("127.0.0.1:80", "http://127.0.0.1"));
        assert!(!get("127.0.0.1:443", "https://127.0.0.1"));
        // Another port on the same machine is another site.
        assert!(get("127.0.0.1:18388", "http://127.0.0.1:9999"));
        assert!(get("127.0.0.1:18388", "http://127.0.0.1"));
        assert!(get("127.0.0.1", "http://127.0.0.1:9999"));
        assert!(get("localhost:8188", "http://127.0.0.1:8188"));
        assert!(get("127.0.0.1:8188", "http://evil.example"));
        assert!(get("127.0.0.1:8188", "null"));
        assert!(get("127.0.0.1:8188", "garbage"));
        assert!(get("127.0.0.1:8188", "ftp://127.0.0.1:8188/"));
    }

    #[test]
    fn every_loopback_and_address_spelling_is_checked() {
        for host in [
            "localhost",
            "localhost.",
            "foo.localhost",
            "FOO.LOCALHOST.",
            "127.0.0.1",
            "127.0.0.2",
            "0.0.0.0",
            "[::1]",
            "[::]",
            "[::ffff:7f00:1]",
            "[::ffff:127.0.0.1]",
            "192.168.1.5",
            "10.0.0.1",
            "2130706433",
            "0x7f.1",
        ] {
            let with_port = format!("{host}:8188");
            assert!(
                refused(
                    Method::GET,
                    &[("host", &with_port), ("origin", "http://evil.example")]
                ),
                "{host}"
            );
            assert!(
                !refused(
                    Method::GET,
                    &[
                        ("host", &with_port),
                        ("origin", &format!("http://{with_port}"))
                    ]
                ),
                "{host}"
            );
        }
        // A DNS name (a reverse proxy's upstream) is not checked, as in ComfyUI.
        assert!(!refused(
            Method::POST,
            &[
                ("host", "weft:8188"),
                ("origin", "https://weft.example.com")
            ]
        ));
        // An Origin with no Host to compare it with is refused.
        assert!(refused(Method::POST, &[("origin", "http://evil.example")]));
        // No Origin: not a cross-origin browser request (curl, scripts, same-origin GETs).
        assert!(!refused(Method::POST, &[("host", "127.0.0.1:8188")]));
    }

    #[test]
    fn cross_site_fetches_may_only_read() {
        let cross = [("host", "127.0.0.1:8188"), ("sec-fetch-site", "cross-site")];
        assert!(refused(Method::POST, &cross));
        assert!(refused(Method::DELETE, &cross));
        assert!(!refused(Method::GET, &cross));
        assert!(!refused(Method::OPTIONS, &cross));
        let socket = [
            ("host", "127.0.0.1:8188"),
            ("sec-fetch-site", "cross-site"),
            ("upgrade", "websocket"),
        ];
        assert!(refused(Method::GET, &socket));
        // Whatever the Host: the browser's word does not depend on a proxy.
        assert!(refused(
            Method::POST,
            &[
                ("host", "weft.example.com"),
                ("sec-fetch-site", "cross-site")
            ]
        ));
        for site in ["same-origin", "same-site", "none"] {
            assert!(!refused(
                Method::POST,
                &[("host", "127.0.0.1:8188"), ("sec-fetch-site", site)]
            ));
        }
    }
}
