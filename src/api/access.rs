//! Who may use the server. One middleware, [`access_guard`], runs outside every route (`/ws`, the
//! web root and the login page included) and before any handler, in this order:
//!
//! 1. **Host allowlist**, against DNS rebinding: a page on `evil.example` whose name an attacker
//!    re-points at 127.0.0.1 sends `Host: evil.example`. Loopback names and addresses are always
//!    allowed, the listen address too when it is a specific one (any IP address when it is
//!    `0.0.0.0` or `::`: a `Host` that is an address was typed by someone who knows it, a
//!    rebinding needs a name), plus `--allowed-hosts`; `*` turns the check off.
//! 2. **Browser origin** ([`super::origin`]): another site's page may not drive the server.
//! 3. **Token**, when one is set: `Authorization: Bearer`, the `weft_token` cookie or a `token`
//!    query parameter (what ComfyUI API clients such as ComfyUI-Login's examples send on `/prompt`,
//!    `/view` and `/ws`), compared in constant time. A browser that opens a page with
//!    `?token=` gets the cookie and is sent to the same URL without it; a browser without a
//!    token gets a minimal login page; anything else a 401 with `WWW-Authenticate: Bearer`.
//!
//! Every refusal is a JSON error from [`ApiError`], except the login page.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};

use super::error::ApiError;
use super::origin::{self, split_authority};
use super::AppState;

/// The cookie the browser keeps the token in.
pub const COOKIE: &str = "weft_token";

/// Who may use the server: the hosts it answers to and the token, if any.
#[derive(Debug, Clone)]
pub struct Access {
    pub hosts: AllowedHosts,
    pub token: Option<Token>,
}

/// A `Host` name: an IP address (compared as an address, so `[::1]` and `[0::1]` agree) or a
/// lower-case DNS name without its final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostName {
    Ip(IpAddr),
    Name(String),
}

impl HostName {
    fn new(name: &str) -> HostName {
        match name.parse::<IpAddr>() {
            Ok(ip) => HostName::Ip(ip),
            Err(_) => HostName::Name(name.trim_end_matches('.').to_ascii_lowercase()),
        }
    }

    /// `localhost`, `*.localhost` (browsers resolve them to loopback themselves, never through
    /// DNS) and loopback addresses, IPv4-mapped ones included.
    fn is_loopback(&self) -> bool {
        match self {
            HostName::Name(name) => name == "localhost" || name.ends_with(".localhost"),
            HostName::Ip(IpAddr::V4(ip)) => ip.is_loopback(),
            HostName::Ip(IpAddr::V6(ip)) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            HostName::Ip(ip) => write!(f, "{ip}"),
            HostName::Name(name) => f.write_str(name),
        }
    }
}

/// One `--allowed-hosts` entry: a name or address, and the only port it may name when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    name: HostName,
    port: Option<u16>,
}

impl FromStr for HostRule {
    type Err = String;

    /// `name`, `name:port`, `1.2.3.4[:port]`, `[::1][:port]` or a bare IPv6 address.
    fn from_str(text: &str) -> Result<HostRule, String> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(HostRule {
                name: HostName::Ip(ip),
                port: None,
            });
        }
        let bad = || format!("'{text}' is not a host name or IP address with an optional port");
        let (name, port) = split_authority(text).ok_or_else(bad)?;
        let name = HostName::new(&name);
        if let HostName::Name(name) = &name {
            let label_ok = |label: &str| {
                !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            if !name.split('.').all(label_ok) {
                return Err(bad());
            }
        }
        Ok(HostRule { name, port })
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// `--allowed-hosts`: `*`, or a comma-separated list of [`HostRule`]s (empty: loopback only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostList {
    Any,
    Only(Vec<HostRule>),
}

impl Default for HostList {
    fn default() -> Self {
        HostList::Only(Vec::new())
    }
}

impl FromStr for HostList {
    type Err = String;

    fn from_str(text: &str) -> Result<HostList, String> {
        if text.trim() == "*" {
            return Ok(HostList::Any);
        }
        text.split(',')
            .filter(|entry| !entry.trim().is_empty())
            .map(HostRule::from_str)
            .collect::<Result<_, _>>()
            .map(HostList::Only)
    }
}

/// The hosts the server answers to (see the module docs).
#[derive(Debug, Clone)]
pub enum AllowedHosts {
    Any,
    Only {
        rules: Vec<HostRule>,
        /// Listening on every address: any address is a fine `Host`.
        any_ip: bool,
    },
}

impl AllowedHosts {
    /// The loopback hosts, the listen address and `given`.
    pub fn new(given: &HostList, listen: &str) -> AllowedHosts {
        let HostList::Only(given) = given else {
            return AllowedHosts::Any;
        };
        let listen = HostName::new(listen.trim_start_matches('[').trim_end_matches(']'));
        let any_ip = matches!(listen, HostName::Ip(ip) if ip.is_unspecified());
        let mut rules = given.clone();
        if !any_ip && !listen.is_loopback() {
            rules.push(HostRule {
                name: listen,
                port: None,
            });
        }
        AllowedHosts::Only { rules, any_ip }
    }

    /// Whether a request with this `Host` header (`name[:port]`) is answered.
    pub fn allows(&self, host: &str) -> bool {
        let AllowedHosts::Only { rules, any_ip } = self else {
            return true;
        };
        let Some((name, port)) = split_authority(host.trim()) else {
            return false;
        };
        let name = HostName::new(&name);
        if name.is_loopback() || (*any_ip && matches!(name, HostName::Ip(_))) {
            return true;
        }
        rules.iter().any(|rule| {
            rule.name == name && rule.port.is_none_or(|wanted| port.unwrap_or(80) == wanted)
        })
    }
}

impl fmt::Display for AllowedHosts {
    /// For the start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let AllowedHosts::Only { rules, any_ip } = self else {
            return f.write_str("any (--allowed-hosts '*')");
        };
        f.write_str("localhost, *.localhost, 127.0.0.0/8, [::1]")?;
        if *any_ip {
            f.write_str(", any IP address")?;
        }
        for rule in rules {
            write!(f, ", {rule}")?;
        }
        Ok(())
    }
}

/// The secret that opens the server. Compared in constant time; never printed by `Debug`.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A token a user chose (`--auth-token`, the token file): characters that pass unchanged
    /// through a header, a cookie and a URL's query.
    pub fn parse(text: &str) -> Result<Token, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the token is empty".into());
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-._~!$*/:@".contains(*c)))
        {
            return Err(format!(
                "the token may hold letters, digits and - . _ ~ ! $ * / : @, not {c:?}"
            ));
        }
        Ok(Token(text.to_owned()))
    }

    /// 32 random bytes from the OS, as 64 hex digits.
    pub fn generate() -> Token {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Token(hex::encode(bytes))
    }

    /// Whether `given` is this token; the time taken does not depend on where they differ.
    pub fn matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }

    /// The token itself, to print once at start-up or write to its file.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// The middleware (`actix_web::middleware::from_fn`); see the module docs.
pub async fn access_guard(
    state: web::Data<AppState>,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    match verdict(&state.config.access, &req) {
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
        Some(response) => Ok(req.into_response(response).map_into_right_body()),
    }
}

/// `None` to let the request through, else the answer it gets instead.
fn verdict(access: &Access, req: &ServiceRequest) -> Option<HttpResponse> {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let refuse = |message: String| {
        tracing::warn!(path = req.path(), "refused: {message}");
        Some(ApiError::Forbidden(message).error_response())
    };
    match host {
        None if matches!(access.hosts, AllowedHosts::Only { .. }) => {
            return refuse("the request has no Host header".into())
        }
        Some(host) if !access.hosts.allows(host) => {
            let name = split_authority(host).map_or(host.to_owned(), |(name, _)| name);
            return refuse(format!(
                "Host '{host}' is not allowed (DNS rebinding protection); to reach the server by \
                 this name, start it with --allowed-hosts {name}"
            ));
        }
        _ => {}
    }
    if let Some(reason) = origin::refusal(req.method(), req.headers()) {
        return refuse(reason);
    }
    let token = access.token.as_ref()?;
    let from_query = query_token(req.query_string());
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, value)| value.trim().to_owned());
    let cookies = cookie_values(req);
    let query_ok = from_query.as_deref().is_some_and(|t| token.matches(t));
    let authenticated = query_ok
        || bearer.as_deref().is_some_and(|t| token.matches(t))
        || cookies.iter().any(|t| token.matches(t));
    let page = is_page_visit(req);
    if authenticated {
        // A browser brought the token in the address: keep it in a cookie and take it out of
        // the address bar (and of what the page can see).
        return (query_ok && page).then(|| {
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, without_token(req)))
                .insert_header((
                    header::SET_COOKIE,
                    format!(
                        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000",
                        token.reveal()
                    ),
                ))
                .finish()
        });
    }
    let given = from_query.is_some() || bearer.is_some() || !cookies.is_empty();
    if given {
        tracing::warn!(path = req.path(), "refused: wrong token");
    } else {
        // Every first visit and forgotten header: not worth a warning.
        tracing::debug!(path = req.path(), "refused: no token");
    }
    if page {
        return Some(login_page(from_query.is_some()));
    }
    let message = if given {
        "the token is wrong"
    } else {
        "authentication required: send `Authorization: Bearer TOKEN`, the weft_token cookie or \
         `?token=TOKEN` (the token is printed at start-up and kept in the data folder's \
         auth_token file)"
    };
    Some(ApiError::Unauthorized(message.into()).error_response())
}

/// The `token` query parameter, decoded.
fn query_token(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
}

/// The values of every `weft_token` cookie the request carries.
fn cookie_values(req: &ServiceRequest) -> Vec<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"').to_owned())
        .collect()
}

/// A browser opening a page (not a script, a fetch or a socket): what gets the cookie and the
/// redirect, or the login page.
fn is_page_visit(req: &ServiceRequest) -> bool {
    let text = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        || text("upgrade").eq_ignore_ascii_case("websocket")
    {
        return false;
    }
    match text("sec-fetch-mode") {
        "" => text("accept").contains("text/html"),
        mode => mode == "navigate",
    }
}

/// The request's own path and query without its `token` parameters, as a same-site `Location`.
fn without_token(req: &ServiceRequest) -> String {
    // One leading slash: `//host` would send the browser to another site.
    let path = format!("/{}", req.uri().path().trim_start_matches(['/', '\\']));
    let rest: Vec<&str> = req
        .query_string()
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !pair.is_empty() && form_urlencoded::parse(name.as_bytes()).all(|(n, _)| n != "token")
        })
        .collect();
    if rest.is_empty() {
        path
    } else {
        format!("{path}?{}", rest.join("&"))
    }
}

/// The request line for the access log, with every `token` parameter's value hidden.
pub fn logged_request(req: &ServiceRequest) -> String {
    let query = req.query_string();
    let shown: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _))
                if form_urlencoded::parse(name.as_bytes()).any(|(n, _)| n == "token") =>
            {
                format!("{name}=…")
            }
            _ => pair.to_owned(),
        })
        .collect();
    let path = req.uri().path();
    match query {
        "" => format!("{} {path}", req.method()),
        _ => format!("{} {path}?{}", req.method(), shown.join("&")),
    }
}

/// The page a browser without the token gets: one field that reopens this address with
/// `?token=`, which sets the cookie. No script, nothing loaded from anywhere.
fn login_page(wrong: bool) -> HttpResponse {
    let notice = if wrong {
        "<p><strong>That token is wrong.</strong></p>"
    } else {
        ""
    };
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, super::error::WWW_AUTHENTICATE))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
        ))
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><meta charset=\"utf-8\"><title>Weft: token needed</title>\
             <h1>Weft: token needed</h1>{notice}<p>This server asks for its access token. It is \
             printed when the server starts and kept in the data folder's \
             <code>auth_token</code> file.</p>\
             <form method=\"get\"><input type=\"password\" name=\"token\" autofocus \
             autocomplete=\"current-password\" aria-label=\"token\"> \
             <button>Open</button></form>"
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(given: &str, listen: &str) -> AllowedHosts {
        AllowedHosts::new(&given.parse().unwrap(), listen)
    }

    #[test]
    fn loopback_hosts_are_allowed_and_rebinding_names_are_not() {
        let loopback = hosts("", "127.0.0.1");
        for host in [
            "localhost:8188",
            "LOCALHOST.",
            "foo.localhost:1",
            "127.0.0.1:8188",
            "127.0.0.2",
            "[::1]:8188",
            "[0::1]",
            "[::ffff:127.0.0.1]:8188",
        ] {
            assert!(loopback.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8188",
            "localhost.evil.example",
            "192.168.1.5:8188",
            "0.0.0.0:8188",
            "",
            "a b",
        ] {
            assert!(!loopback.allows(host), "{host}");
        }
    }

    #[test]
    fn given_hosts_match_by_name_and_port() {
        let allowed = hosts(
            "weft.lan, 10.0.0.7:8188,[fd00::1], Box.Example.:443",
            "127.0.0.1",
        );
        assert!(allowed.allows("weft.lan:8188"));
        assert!(allowed.allows("WEFT.LAN."));
        assert!(allowed.allows("10.0.0.7:8188"));
        assert!(!allowed.allows("10.0.0.7:9999"));
        assert!(!allowed.allows("10.0.0.7"));
        assert!(allowed.allows("[fd00:0::1]:1"));
        assert!(allowed.allows("box.example:443"));
        assert!(!allowed.allows("box.example"));
        assert!(!allowed.allows("evil.example"));
        assert!(hosts("*", "127.0.0.1").allows("evil.example"));
        for bad in ["a b", "x/y", "host:port", "[::1", "a..b", "user@host"] {
            assert!(bad.parse::<HostList>().is_err(), "{bad}");
        }
        assert_eq!(
            "::1".parse::<HostList>(),
            Ok(HostList::Only(vec![HostRule {
                name: HostName::Ip("::1".parse().unwrap()),
                port: None
            }]))
        );
    }

    #[test]
    fn the_listen_address_is_allowed() {
        let specific = hosts("", "192.168.1.5");
        assert!(specific.allows("192.168.1.5:8188"));
        assert!(!specific.allows("192.168.1.6:8188"));
        assert!(!specific.allows("evil.example"));
        // Every address: any address, but still no name.
        for listen in ["0.0.0.0", "::", "[::]"] {
            let every = hosts("", listen);
            assert!(every.allows("192.168.1.6:8188"), "{listen}");
            assert!(every.allows("[fd00::1]:8188"), "{listen}");
            assert!(!every.allows("evil.example:8188"), "{listen}");
        }
    }

    #[test]
    fn tokens_are_checked_whole() {
        let token = Token::parse("s3cret-Token_1").unwrap();
        assert!(token.matches("s3cret-Token_1"));
        assert!(!token.matches("s3cret-Token_2"));
        assert!(!token.matches("s3cret"));
        assert!(!token.matches(""));
        assert!(Token::parse(" ").is_err());
        assert!(Token::parse("a b").is_err());
        assert!(Token::parse("a;b").is_err());
        assert!(Token::parse("$2b$12$q/hiqAK.x").is_ok());
        let generated = Token::generate();
        assert_eq!(generated.reveal().len(), 64);
        assert!(Token::parse(generated.reveal()).is_ok());
        assert_ne!(generated.reveal(), Token::generate().reveal());
        assert_eq!(format!("{generated:?}"), "Token(…)");
    }

    #[test]
    fn the_token_parameter_is_read_and_taken_out() {
        assert_eq!(query_token("a=1&token=x%2Fy&b=2").as_deref(), Some("x/y"));
        assert_eq!(query_token("a=1"), None);
        let req = actix_web::test::TestRequest::get()
            .uri("//evil.example/x?clientId=1&token=abc&t%6Fken=def&b=")
            .to_srv_request();
        assert_eq!(without_token(&req), "/evil.example/x?clientId=1&b=");
        assert_eq!(
            logged_request(&req),
            "GET //evil.example/x?clientId=1&token=…&t%6Fken=…&b="
        );
        let req = actix_web::test::TestRequest::get()
            .uri("/?token=abc")
            .to_srv_request();
        assert_eq!(without_token(&req), "/");
    }
}
