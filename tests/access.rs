//! Who may use the server (issue 20): the Host allowlist against DNS rebinding and the token,
//! through the real server, for HTTP and the WebSocket handshake alike.

use serde_json::{json, Value as Json};
use weft::api::access::{HostList, Token};
use weft::app::AuthSetting;

use crate::helpers::{invert_graph, spawn_app_with, Reply, TestApp};

const TOKEN: &str = "test-token-0123456789abcdef";
/// Same length as [`TOKEN`], last character different.
const WRONG: &str = "test-token-0123456789abcdeF";

/// `method path` with `headers`, and `body` when given.
async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Reply {
    // No redirects followed: the test looks at them.
    let client = awc::Client::builder().disable_redirects().finish();
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, app.url(path));
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    let mut response = match body {
        Some(body) => request.send_body(body).await,
        None => request.send().await,
    }
    .expect("request");
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.body().limit(16 << 20).await.unwrap().to_vec(),
    }
}

fn prompt_body(prefix: &str) -> Option<String> {
    Some(json!({"prompt": invert_graph(prefix)}).to_string())
}

/// The WebSocket handshake's status: 101 when it opened.
async fn ws_status(app: &TestApp, query: &str, headers: &[(&str, &str)]) -> u16 {
    let url = format!(
        "{}/ws?clientId=c{query}",
        app.base.replace("http://", "ws://")
    );
    let mut request = awc::Client::default().ws(url);
    for (name, value) in headers {
        request = request.set_header(*name, *value);
    }
    match request.connect().await {
        Ok((response, _)) => response.status().as_u16(),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// The number of prompts pending, running and done, read with `headers` (exact while none
/// moves from the queue to the history).
async fn prompts_seen(app: &TestApp, headers: &[(&str, &str)]) -> usize {
    let queue = send(app, "GET", "/queue", headers, None).await.json();
    let history = send(app, "GET", "/history", headers, None).await.json();
    let count = |v: &Json| v.as_array().map_or(0, Vec::len);
    count(&queue["queue_running"])
        + count(&queue["queue_pending"])
        + history.as_object().map_or(0, |h| h.len())
}

#[actix_web::test]
async fn a_rebinding_host_is_refused_and_allowed_hosts_work() {
    let app =
        spawn_app_with(|c| c.allowed_hosts = "weft.lan, 10.1.2.3:8188".parse().unwrap()).await;
    let port = app.base.rsplit_once(':').unwrap().1.to_owned();
    let evil = format!("evil.example:{port}");

    // A page on evil.example whose name now points at 127.0.0.1: the same request a real
    // browser sends after the rebinding, Origin and all.
    let origin = format!("http://{evil}");
    let reply = send(
        &app,
        "POST",
        "/prompt",
        &[("Host", &evil), ("Origin", &origin)],
        prompt_body("rebound"),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["error"]["type"], "forbidden");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("evil.example") && message.contains("--allowed-hosts"),
        "{message}"
    );
    // Without an Origin (a script), and for reads: the same.
    let reply = send(
        &app,
        "POST",
        "/prompt",
        &[("Host", &evil)],
        prompt_body("x"),
    )
    .await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        send(&app, "GET", "/queue", &[("Host", "evil.example")], None)
            .await
            .status,
        403
    );
    // The socket's handshake.
    assert_eq!(ws_status(&app, "", &[("Host", &evil)]).await, 403);
    assert_eq!(prompts_seen(&app, &[]).await, 0);

    // Hosts given with --allowed-hosts, with their port when one is named.
    let lan = format!("weft.lan:{port}");
    let reply = send(
        &app,
        "POST",
        "/prompt",
        &[("Host", &lan)],
        prompt_body("lan"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(ws_status(&app, "", &[("Host", &lan)]).await, 101);
    assert_eq!(
        send(&app, "GET", "/queue", &[("Host", "10.1.2.3:8188")], None)
            .await
            .status,
        200
    );
    assert_eq!(
        send(&app, "GET", "/queue", &[("Host", "10.1.2.3:9999")], None)
            .await
            .status,
        403
    );
    // Loopback in its spellings.
    for host in [
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        app.base[7..].to_owned(),
    ] {
        assert_eq!(
            send(&app, "GET", "/queue", &[("Host", &host)], None)
                .await
                .status,
            200,
            "{host}"
        );
    }

    // `*`: no Host check.
    let open = spawn_app_with(|c| c.allowed_hosts = HostList::Any).await;
    assert_eq!(
        send(&open, "GET", "/queue", &[("Host", "evil.example")], None)
            .await
            .status,
        200
    );
}

#[actix_web::test]
async fn a_token_is_asked_for_and_taken_three_ways() {
    let app = spawn_app_with(|c| c.auth = AuthSetting::Token(Token::parse(TOKEN).unwrap())).await;
    let bearer = format!("Bearer {TOKEN}");
    let cookie = format!("weft_token={TOKEN}");

    // No token: 401 with the challenge and a JSON error, and nothing queued.
    let reply = send(&app, "POST", "/prompt", &[], prompt_body("anon")).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert!(
        reply.header("www-authenticate").starts_with("Bearer"),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.json()["error"]["type"], "unauthorized");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    for path in [
        "/queue",
        "/object_info",
        "/api/weft/workflows",
        "/internal/logs",
        "/view?filename=x",
    ] {
        assert_eq!(
            send(&app, "GET", path, &[], None).await.status,
            401,
            "{path}"
        );
    }
    assert_eq!(ws_status(&app, "", &[]).await, 401);

    // A wrong token of the right length, each way: refused.
    let wrong_bearer = format!("Bearer {WRONG}");
    let wrong_cookie = format!("weft_token={WRONG}");
    let reply = send(
        &app,
        "POST",
        "/prompt",
        &[("Authorization", &wrong_bearer)],
        prompt_body("w"),
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["message"], "the token is wrong");
    let reply = send(
        &app,
        "POST",
        "/prompt",
        &[("Cookie", &wrong_cookie)],
        prompt_body("w"),
    )
    .await;
    assert_eq!(reply.status, 401);
    let reply = send(
        &app,
        "POST",
        &format!("/prompt?token={WRONG}"),
        &[],
        prompt_body("w"),
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(ws_status(&app, &format!("&token={WRONG}"), &[]).await, 401);
    assert_eq!(prompts_seen(&app, &[("Authorization", &bearer)]).await, 0);

    // Bearer (scripts), the cookie (the editor) and ?token= (ComfyUI API clients).
    let reply = send(
        &app,
        "POST",
        "/prompt",
        &[("Authorization", &bearer)],
        prompt_body("b"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = send(
        &app,
        "POST",
        "/prompt",
        &[("Cookie", &cookie)],
        prompt_body("c"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = send(
        &app,
        "POST",
        &format!("/prompt?token={TOKEN}"),
        &[],
        prompt_body("q"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let id = reply.json()["prompt_id"].as_str().unwrap().to_owned();
    // A script's GET with ?token= is answered, not redirected.
    let reply = send(
        &app,
        "GET",
        &format!("/history/{id}?token={TOKEN}"),
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(ws_status(&app, &format!("&token={TOKEN}"), &[]).await, 101);
    assert_eq!(ws_status(&app, "", &[("Cookie", &cookie)]).await, 101);
    assert_eq!(
        ws_status(&app, "", &[("Authorization", &bearer)]).await,
        101
    );
    // A stale cookie beside the right token does not matter.
    let both = format!("weft_token={WRONG}; other=1");
    let reply = send(
        &app,
        "GET",
        "/queue",
        &[("Cookie", &both), ("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(reply.status, 200);

    // The access log never holds the token.
    let logs = send(
        &app,
        "GET",
        "/internal/logs",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(logs.status, 200);
    assert!(!logs.text().contains(TOKEN), "the token is in the log");
    assert!(logs.text().contains("/prompt?token=…"), "{}", logs.text());
}

#[actix_web::test]
async fn a_browser_opening_a_token_link_gets_the_cookie_and_a_clean_address() {
    // ComfyUI's frontend in the web root: its pages and assets are behind the token too.
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("index.html"),
        "<!doctype html><title>ComfyUI</title>",
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("assets")).unwrap();
    std::fs::write(root.path().join("assets/app.js"), "secret()").unwrap();
    let web_root = root.path().to_path_buf();
    let app = spawn_app_with(move |c| {
        c.auth = AuthSetting::Token(Token::parse(TOKEN).unwrap());
        c.web_root = Some(web_root);
    })
    .await;
    let page = [
        ("Accept", "text/html,application/xhtml+xml"),
        ("Sec-Fetch-Mode", "navigate"),
    ];

    // No token: the login page, and nothing of the frontend.
    let reply = send(&app, "GET", "/", &page, None).await;
    assert_eq!(reply.status, 401);
    assert!(reply.header("content-type").starts_with("text/html"));
    assert!(reply.text().contains("token needed") && reply.text().contains("name=\"token\""));
    assert!(!reply.text().contains("ComfyUI"));
    assert!(reply
        .header("content-security-policy")
        .contains("default-src 'none'"));
    assert_eq!(
        send(&app, "GET", "/assets/app.js", &[], None).await.status,
        401
    );
    // A wrong token: the login page says so, and no cookie.
    let reply = send(&app, "GET", &format!("/?token={WRONG}"), &page, None).await;
    assert_eq!(reply.status, 401);
    assert!(reply.text().contains("wrong"));
    assert_eq!(reply.header("set-cookie"), "");

    // The token in the address: the cookie, then the same address without it.
    let reply = send(&app, "GET", &format!("/?token={TOKEN}"), &page, None).await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    assert_eq!(reply.header("location"), "/");
    let set_cookie = reply.header("set-cookie");
    for part in [
        &format!("weft_token={TOKEN}"),
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    let reply = send(
        &app,
        "GET",
        &format!("/assets/app.js?v=2&token={TOKEN}&x=%20"),
        &[("Accept", "text/html")],
        None,
    )
    .await;
    assert_eq!(reply.status, 303);
    assert_eq!(reply.header("location"), "/assets/app.js?v=2&x=%20");

    // With the cookie, the frontend.
    let cookie = format!("weft_token={TOKEN}");
    let reply = send(
        &app,
        "GET",
        "/",
        &[page[0], page[1], ("Cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("ComfyUI"));
    let reply = send(&app, "GET", "/assets/app.js", &[("Cookie", &cookie)], None).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "secret()"));
}

#[actix_web::test]
async fn listening_beyond_loopback_asks_for_the_token_kept_in_the_data_folder() {
    let app = spawn_app_with(|c| c.listen = "0.0.0.0".into()).await;
    let file = app.data_dir().join(weft::app::TOKEN_FILE);
    let token = std::fs::read_to_string(&file).expect("the token file is made");
    let token = token.trim();
    assert_eq!(token.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        send(&app, "POST", "/prompt", &[], prompt_body("x"))
            .await
            .status,
        401
    );
    let bearer = format!("Bearer {token}");
    let reply = send(
        &app,
        "POST",
        "/prompt",
        &[("Authorization", &bearer)],
        prompt_body("x"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Listening on every address answers to any address, still to no other name.
    let port = app.base.rsplit_once(':').unwrap().1.to_owned();
    let lan = format!("192.168.7.7:{port}");
    assert_eq!(
        send(
            &app,
            "GET",
            "/queue",
            &[("Host", &lan), ("Authorization", &bearer)],
            None
        )
        .await
        .status,
        200
    );
    let evil = format!("evil.example:{port}");
    assert_eq!(
        send(
            &app,
            "GET",
            "/queue",
            &[("Host", &evil), ("Authorization", &bearer)],
            None
        )
        .await
        .status,
        403
    );
}
