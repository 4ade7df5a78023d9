//! ComfyUI's user routes over HTTP (`/users`, `/settings`, `/userdata`, `/v2/userdata`), and the
//! workflow library seen both as `/api/weft/workflows` and as the user folder's `workflows/`.

use std::path::Path;

use actix_web::http::Method;
use serde_json::{json, Value as Json};

use crate::helpers::{spawn_app, spawn_app_with, Reply, TestApp};
use crate::restart::{free_port, Server};

async fn call_at(base: &str, method: &str, path: &str, body: &[u8]) -> Reply {
    let client = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .finish();
    let mut response = client
        .request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{base}{path}"),
        )
        .send_body(body.to_vec())
        .await
        .expect("request");
    let body = response
        .body()
        .limit(64 << 20)
        .await
        .expect("body")
        .to_vec();
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body,
    }
}

async fn call(app: &TestApp, method: &str, path: &str, body: &[u8]) -> Reply {
    call_at(&app.base, method, path, body).await
}

fn user_dir(app: &TestApp) -> std::path::PathBuf {
    app.data_dir().join("user").join("default")
}

#[actix_web::test]
async fn users_and_settings_follow_comfyui() {
    let app = spawn_app().await;
    let (status, users) = app.get("/users").await;
    assert_eq!(status, 200);
    assert_eq!(users, json!({"storage": "server", "migrated": false}));
    assert_eq!(
        app.get("/api/users").await.1,
        json!({"storage": "server", "migrated": false})
    );

    assert_eq!(app.get("/api/settings").await, (200, json!({})));
    assert_eq!(app.get("/settings/Comfy.Anything").await, (200, Json::Null));

    // POST /settings merges; POST /settings/{id} sets one; both answer 200 with no body.
    let reply = call(
        &app,
        "POST",
        "/api/settings",
        br#"{"Comfy.A": 1, "Comfy.B": {"x": [1, 2]}, "Comfy.C": "c"}"#,
    )
    .await;
    assert_eq!((reply.status, reply.body.len()), (200, 0));
    let reply = call(
        &app,
        "POST",
        "/settings",
        br#"{"Comfy.A": 5, "Comfy.D": null}"#,
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = call(&app, "POST", "/api/settings/Comfy.C", br#""changed""#).await;
    assert_eq!((reply.status, reply.body.len()), (200, 0));
    let reply = call(&app, "POST", "/settings/Comfy.E", b"[1, 2]").await;
    assert_eq!(reply.status, 200);
    let settings = app.get("/settings").await.1;
    assert_eq!(
        settings,
        json!({"Comfy.A": 5, "Comfy.B": {"x": [1, 2]}, "Comfy.C": "changed", "Comfy.D": null, "Comfy.E": [1, 2]})
    );
    let keys: Vec<&String> = settings.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["Comfy.A", "Comfy.B", "Comfy.C", "Comfy.D", "Comfy.E"]
    );
    assert_eq!(
        app.get("/api/settings/Comfy.B").await.1,
        json!({"x": [1, 2]})
    );

    // Stored as ComfyUI stores it: the user's comfy.settings.json, indented by four spaces.
    let file = user_dir(&app).join("comfy.settings.json");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("{\n    \"Comfy.A\": 5,"), "{text}");
    assert_eq!(serde_json::from_str::<Json>(&text).unwrap(), settings);
    assert_eq!(app.get("/users").await.1["migrated"], true);

    // Bad bodies change nothing.
    for (path, body) in [
        ("/settings", &b"[1, 2]"[..]),
        ("/settings", b"{not json"),
        ("/settings", b""),
        ("/settings/Comfy.A", b"{not json"),
    ] {
        let reply = call(&app, "POST", path, body).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
    }
    assert_eq!(app.get("/settings").await.1, settings);

    // A corrupt settings file reads as {} and is kept aside, not overwritten, on the next save.
    std::fs::write(&file, b"{corrupt").unwrap();
    assert_eq!(app.get("/settings").await.1, json!({}));
    let reply = call(&app, "POST", "/settings/Comfy.New", b"1").await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.get("/settings").await.1, json!({"Comfy.New": 1}));
    let kept: Vec<String> = std::fs::read_dir(user_dir(&app))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("comfy.settings.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read(user_dir(&app).join(&kept[0])).unwrap(),
        b"{corrupt"
    );

    // POST /users, single-user: names are checked and recorded as ComfyUI does.
    let (status, body) = app.post("/users", json!({"username": "default"})).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "Duplicate username."}))
    );
    let (status, body) = app.post("/api/users", json!({"username": "  "})).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "username not provided"}))
    );
    let (status, body) = app.post("/users", json!({"username": "__system"})).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "System User prefix not allowed"}))
    );
    let (status, id) = app.post("/users", json!({"username": "Ann Lee!"})).await;
    assert_eq!(status, 200, "{id}");
    let id = id.as_str().unwrap();
    assert!(id.starts_with("Ann-Lee-_"), "{id}");
    let users: Json = serde_json::from_slice(
        &std::fs::read(app.data_dir().join("user").join("users.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(users[id], "Ann Lee!");
    let (status, body) = app.post("/users", json!({"username": "Ann Lee!"})).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "Duplicate username."}))
    );
    let (status, _) = app.post("/users", json!({"name": "x"})).await;
    assert_eq!(status, 400);
}

#[actix_web::test]
async fn plain_files_are_saved_listed_read_moved_and_deleted() {
    let app = spawn_app().await;
    // Nothing stored yet: a folder not made yet lists empty (ComfyUI 404s; its frontend reads that
    // as empty), and the files the frontend reads on every load have empty defaults.
    let reply = call(
        &app,
        "GET",
        "/userdata?dir=workflows&recurse=true&full_info=true",
        b"",
    )
    .await;
    assert_eq!((reply.status, reply.json()), (200, json!([])));
    let reply = call(&app, "GET", "/userdata/comfy.templates.json", b"").await;
    assert_eq!((reply.status, reply.json()), (200, json!([])));
    let reply = call(&app, "GET", "/userdata/user.css", b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers.get("content-type").unwrap(), "text/css");
    assert_eq!(app.get("/v2/userdata").await, (200, json!([])));
    assert_eq!(app.get("/v2/userdata?path=sub").await.0, 404);
    assert_eq!(call(&app, "GET", "/userdata/a.txt", b"").await.status, 404);

    // A nested name arrives URL-encoded; its folders are created.
    let reply = call(&app, "POST", "/api/userdata/sub%2Fdeep%2Fa.txt", b"hello").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!("sub/deep/a.txt"));
    assert_eq!(
        std::fs::read(user_dir(&app).join("sub/deep/a.txt")).unwrap(),
        b"hello"
    );
    let reply = call(
        &app,
        "POST",
        "/userdata/sub%2Fb.bin?full_info=true",
        &[0, 1, 2],
    )
    .await;
    assert_eq!(reply.status, 200);
    let info = reply.json();
    assert_eq!(info["path"], "sub/b.bin");
    assert_eq!(info["size"], 3);
    assert!(
        info["modified"].as_i64().unwrap() > 1_600_000_000_000,
        "{info}"
    );
    assert!(info["created"].as_i64().is_some());
    let keys: Vec<&String> = info.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["path", "size", "modified", "created"]);

    // overwrite=false refuses an existing file (409) and leaves it alone; the default overwrites.
    let reply = call(
        &app,
        "POST",
        "/userdata/sub%2Fb.bin?overwrite=false",
        b"new",
    )
    .await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert!(reply.text().contains("sub/b.bin"), "{}", reply.text());
    assert_eq!(
        std::fs::read(user_dir(&app).join("sub/b.bin")).unwrap(),
        [0, 1, 2]
    );
    let reply = call(&app, "POST", "/userdata/sub%2Fb.bin?overwrite=true", b"new").await;
    assert_eq!(reply.status, 200);
    let reply = call(
        &app,
        "POST",
        "/userdata/sub%2Fnew.txt?overwrite=false",
        b"n",
    )
    .await;
    assert_eq!(reply.status, 200, "overwrite=false writes a new file");
    std::fs::write(user_dir(&app).join("sub/.hidden"), b"h").unwrap();
    std::fs::write(user_dir(&app).join("page.html"), b"<script>").unwrap();
    std::fs::write(user_dir(&app).join("user.css"), b"body {}").unwrap();

    // Reading: a download, never run by the browser; user.css inline.
    let reply = call(&app, "GET", "/userdata/sub%2Fdeep%2Fa.txt", b"").await;
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(reply.header("content-disposition"), "attachment");
    assert_eq!(reply.header("x-content-type-options"), "nosniff");
    assert!(reply.header("content-type").starts_with("text/plain"));
    let reply = call(&app, "GET", "/api/userdata/page.html", b"").await;
    assert_eq!(reply.header("content-type"), "application/octet-stream");
    let reply = call(&app, "GET", "/userdata/user.css", b"").await;
    assert!(reply.header("content-type").starts_with("text/css"));
    assert_eq!(reply.header("content-disposition"), "inline");

    // Listings.
    assert_eq!(call(&app, "GET", "/userdata", b"").await.status, 400);
    assert_eq!(call(&app, "GET", "/userdata?dir=", b"").await.status, 400);
    assert_eq!(
        call(&app, "GET", "/userdata?dir=nope", b"").await.json(),
        json!([])
    );
    assert_eq!(
        app.get("/userdata?dir=sub").await.1,
        json!(["b.bin", "new.txt"]),
        "top level only, hidden files left out"
    );
    assert_eq!(
        app.get("/api/userdata?dir=sub&recurse=true").await.1,
        json!(["b.bin", "deep/a.txt", "new.txt"])
    );
    assert_eq!(
        app.get("/userdata?dir=sub&recurse=true&split=true").await.1,
        json!([
            ["b.bin", "b.bin"],
            ["deep/a.txt", "deep", "a.txt"],
            ["new.txt", "new.txt"]
        ])
    );
    let full = app
        .get("/userdata?dir=sub%2Fdeep&recurse=true&full_info=true&split=true")
        .await
        .1;
    assert_eq!(full[0]["path"], "a.txt");
    assert_eq!(full[0]["size"], 5);
    assert_eq!(app.get("/userdata?dir=sub%2Fb.bin").await, (200, json!([])));

    // /v2/userdata: everything under the path, folders first, paths from the user folder.
    let (status, tree) = app.get("/api/v2/userdata?path=sub").await;
    assert_eq!(status, 200, "{tree}");
    let names: Vec<(&str, &str)> = tree
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("sub/deep", "directory"),
            ("sub/.hidden", "file"),
            ("sub/deep/a.txt", "file"),
            ("sub/b.bin", "file"),
            ("sub/new.txt", "file"),
        ]
    );
    let a = tree
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "a.txt")
        .unwrap();
    assert_eq!(a["size"], 5);
    assert!(a["modified"].as_f64().unwrap() > 1_600_000_000.0);
    assert_eq!(
        tree[0],
        json!({"name": "deep", "path": "sub/deep", "type": "directory"})
    );
    assert_eq!(app.get("/v2/userdata?path=sub%2Fb.bin").await.0, 400);
    assert_eq!(app.get("/v2/userdata?path=nope").await.0, 404);

    // Moving: the answer is the new path (or its details); the old name is gone.
    let reply = call(
        &app,
        "POST",
        "/userdata/sub%2Fnew.txt/move/moved%2Fn.txt",
        b"",
    )
    .await;
    assert_eq!((reply.status, reply.json()), (200, json!("moved/n.txt")));
    assert_eq!(
        call(&app, "GET", "/userdata/sub%2Fnew.txt", b"")
            .await
            .status,
        404
    );
    assert_eq!(
        call(&app, "GET", "/userdata/moved%2Fn.txt", b"").await.body,
        b"n"
    );
    let reply = call(
        &app,
        "POST",
        "/api/userdata/moved%2Fn.txt/move/sub%2Fb.bin?overwrite=false",
        b"",
    )
    .await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert_eq!(
        call(&app, "GET", "/userdata/moved%2Fn.txt", b"")
            .await
            .status,
        200
    );
    let reply = call(
        &app,
        "POST",
        "/userdata/moved%2Fn.txt/move/sub%2Fb.bin?overwrite=true&full_info=true",
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "sub/b.bin");
    assert_eq!(reply.json()["size"], 1);
    assert_eq!(
        call(&app, "GET", "/userdata/sub%2Fb.bin", b"").await.body,
        b"n"
    );
    let reply = call(&app, "POST", "/userdata/nope.txt/move/x.txt", b"").await;
    assert_eq!(reply.status, 404);
    assert!(reply.text().contains("nope.txt"), "{}", reply.text());

    // Deleting: 204, then 404.
    let reply = call(&app, "DELETE", "/api/userdata/sub%2Fb.bin", b"").await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        call(&app, "DELETE", "/userdata/sub%2Fb.bin", b"")
            .await
            .status,
        404
    );
    assert!(!user_dir(&app).join("sub/b.bin").exists());
    assert_eq!(call(&app, "DELETE", "/userdata/sub", b"").await.status, 404);
}

#[actix_web::test]
async fn paths_outside_the_user_folder_are_refused() {
    let app = spawn_app().await;
    let reply = call(&app, "POST", "/userdata/inside.txt", b"x").await;
    assert_eq!(reply.status, 200);
    let outside = app.dir.path().join("secret");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, user_dir(&app).join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), user_dir(&app).join("s.txt")).unwrap();

    for (method, path) in [
        ("GET", "/userdata/..%2F..%2Fweft.db"),
        ("GET", "/userdata/%2Fetc%2Fpasswd"),
        ("GET", "/userdata/link%2Fsecret.txt"),
        ("GET", "/userdata/s.txt"),
        ("POST", "/userdata/..%2Fescape.txt"),
        ("POST", "/userdata/link%2Fnew.txt"),
        ("POST", "/userdata/workflows%2F..%2F..%2Fescape.json"),
        ("DELETE", "/userdata/link%2Fsecret.txt"),
        ("DELETE", "/api/userdata/..%2Fusers.json"),
        ("POST", "/userdata/inside.txt/move/..%2Fescape.txt"),
        ("POST", "/userdata/inside.txt/move/link%2Fescape.txt"),
        ("POST", "/userdata/..%2F..%2Fweft.db/move/stolen.db"),
        ("GET", "/userdata?dir=..%2F.."),
        ("GET", "/userdata?dir=link"),
        ("GET", "/api/userdata?dir=%2Fetc"),
    ] {
        let reply = call(&app, method, path, b"{}").await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.text());
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains("path '"), "{method} {path}: {message}");
    }
    for path in ["/v2/userdata?path=..", "/v2/userdata?path=link"] {
        let reply = call(&app, "GET", path, b"").await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
    }
    assert!(!app.dir.path().join("data/user/escape.txt").exists());
    assert!(!app.dir.path().join("escape.txt").exists());
    assert!(!outside.join("new.txt").exists());
    assert!(!outside.join("escape.txt").exists());
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).unwrap(),
        b"secret"
    );
    assert!(app.dir.path().join("data/weft.db").exists());
    assert!(user_dir(&app).join("inside.txt").exists());
    // A listing does not follow a symlink out either.
    let (_, tree) = app.get("/v2/userdata").await;
    assert!(!tree.to_string().contains("secret"), "{tree}");
}

#[actix_web::test]
async fn userdata_bodies_follow_the_upload_limit() {
    let app = spawn_app_with(|config| config.max_upload_mb = 1).await;
    let big = vec![b'x'; 2 << 20];
    let reply = call(&app, "POST", "/userdata/big.bin", &big).await;
    assert_eq!(reply.status, 413);
    assert!(!user_dir(&app).join("big.bin").exists());
    let reply = call(&app, "POST", "/userdata/small.bin", &big[..1000]).await;
    assert_eq!(reply.status, 200);
}

/// What the library lists, by `path`: (id, name, version).
async fn library(app: &TestApp) -> Vec<(String, String, String, i64)> {
    let (status, list) = app.get("/api/weft/workflows").await;
    assert_eq!(status, 200);
    let mut rows: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["path"].as_str().unwrap().to_owned(),
                w["id"].as_str().unwrap().to_owned(),
                w["name"].as_str().unwrap().to_owned(),
                w["version"].as_i64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[actix_web::test]
async fn workflows_saved_through_userdata_are_library_workflows() {
    let app = spawn_app().await;
    assert_eq!(
        call(
            &app,
            "GET",
            "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true",
            b""
        )
        .await
        .json(),
        json!([]),
        "no workflows yet"
    );
    // The frontend's save: byte-exact content, full_info answer.
    let v1 = br#"{"nodes": [ {"id":1, "pos":[1.50, 2e2]} ], "links":[], "extra": {"note": "caf\u00e9"}}"#;
    let reply = call(
        &app,
        "POST",
        "/api/userdata/workflows%2FMy%20Flow.json?overwrite=true&full_info=true",
        v1,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let info = reply.json();
    assert_eq!(info["path"], "workflows/My Flow.json");
    assert_eq!(info["size"], v1.len());
    assert!(info["modified"].as_i64().unwrap() >= info["created"].as_i64().unwrap());
    assert!(
        !user_dir(&app).join("workflows/My Flow.json").exists(),
        "kept in the library, not as a file"
    );

    let rows = library(&app).await;
    assert_eq!(rows.len(), 1);
    let (path, id, name, version) = rows[0].clone();
    assert_eq!(
        (path.as_str(), name.as_str(), version),
        ("workflows/My Flow.json", "My Flow", 1)
    );
    let (_, raw) = app.get_bytes(&format!("/api/weft/workflows/{id}")).await;
    assert!(String::from_utf8(raw).unwrap().ends_with(&format!(
        r#""workflow":{}}}"#,
        std::str::from_utf8(v1).unwrap()
    )));

    // Reading it back through /userdata: the same bytes.
    let reply = call(&app, "GET", "/userdata/workflows%2FMy%20Flow.json", b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, v1);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("content-disposition"), "attachment");

    // Each save is a version; overwrite=false is a 409 that adds none.
    let v2 = br#"{"nodes":[],"links":[],"version":0.4}"#;
    let reply = call(&app, "POST", "/userdata/workflows%2FMy%20Flow.json", v2).await;
    assert_eq!(
        (reply.status, reply.json()),
        (200, json!("workflows/My Flow.json"))
    );
    let reply = call(
        &app,
        "POST",
        "/userdata/workflows%2FMy%20Flow.json?overwrite=false",
        b"{}",
    )
    .await;
    assert_eq!(reply.status, 409);
    let (_, versions) = app.get(&format!("/api/weft/workflows/{id}/versions")).await;
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert_eq!(
        call(&app, "GET", "/userdata/workflows%2FMy%20Flow.json", b"")
            .await
            .body,
        v2
    );

    // A body that is not a workflow is refused and stores nothing.
    for body in [&b"[1, 2]"[..], b"{not json", b"", &[0xff, 0xfe]] {
        let reply = call(&app, "POST", "/userdata/workflows%2Fbad.json", body).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(
            reply.text().contains("workflows/bad.json"),
            "{}",
            reply.text()
        );
    }
    assert_eq!(library(&app).await.len(), 1);

    // Listed as the frontend lists workflows.
    let (_, listed) = app
        .get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["path"], "My Flow.json");
    assert_eq!(listed[0]["size"], v2.len());
    assert_eq!(
        app.get("/userdata?dir=workflows").await.1,
        json!(["My Flow.json"])
    );
    let (_, root) = app.get("/userdata?dir=.&recurse=true").await;
    assert_eq!(root, json!(["workflows/My Flow.json"]));

    // Renaming (the frontend's move) keeps the workflow, its id and its history.
    let reply = call(
        &app,
        "POST",
        "/api/userdata/workflows%2FMy%20Flow.json/move/workflows%2Fsub%2FRenamed.json?overwrite=false&full_info=true",
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "workflows/sub/Renamed.json");
    let rows = library(&app).await;
    assert_eq!(
        rows,
        [(
            "workflows/sub/Renamed.json".to_owned(),
            id.clone(),
            "Renamed".to_owned(),
            2
        )]
    );
    assert_eq!(
        call(&app, "GET", "/userdata/workflows%2FMy%20Flow.json", b"")
            .await
            .status,
        404
    );
    let (_, tree) = app.get("/v2/userdata?path=workflows").await;
    assert_eq!(
        tree,
        json!([
            {"name": "sub", "path": "workflows/sub", "type": "directory"},
            {"name": "Renamed.json", "path": "workflows/sub/Renamed.json", "type": "file", "size": v2.len(), "modified": tree[1]["modified"]},
        ])
    );
    assert!(tree[1]["modified"].as_f64().unwrap() > 1_600_000_000.0);
    // Folders first, by name at every depth, as ComfyUI sorts.
    let (_, root) = app.get("/v2/userdata").await;
    let paths: Vec<&str> = root
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["workflows/sub", "workflows", "workflows/sub/Renamed.json"]
    );
    assert_eq!(app.get("/userdata?dir=workflows").await.1, json!([]));
    assert_eq!(
        app.get("/userdata?dir=workflows&recurse=true&split=true")
            .await
            .1,
        json!([["sub/Renamed.json", "sub", "Renamed.json"]])
    );

    // A move onto another workflow: 409 unless overwrite=true, which replaces it.
    let reply = call(
        &app,
        "POST",
        "/userdata/workflows%2Fother.json",
        b"{\"o\":1}",
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = call(
        &app,
        "POST",
        "/userdata/workflows%2Fother.json/move/workflows%2Fsub%2FRenamed.json?overwrite=false",
        b"",
    )
    .await;
    assert_eq!(reply.status, 409);
    assert_eq!(library(&app).await.len(), 2);
    let reply = call(
        &app,
        "POST",
        "/userdata/workflows%2Fother.json/move/workflows%2Fsub%2FRenamed.json",
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "overwrite defaults to true");
    let rows = library(&app).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "workflows/sub/Renamed.json");
    assert_ne!(rows[0].1, id, "the moved workflow replaced the other");
    assert_eq!(
        call(&app, "GET", "/userdata/workflows%2Fsub%2FRenamed.json", b"")
            .await
            .body,
        b"{\"o\":1}"
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/userdata/workflows%2Fnope.json/move/workflows%2Fx.json",
            b""
        )
        .await
        .status,
        404
    );

    // Deleting through /userdata deletes it from the library.
    let reply = call(
        &app,
        "DELETE",
        "/userdata/workflows%2Fsub%2FRenamed.json",
        b"",
    )
    .await;
    assert_eq!(reply.status, 204);
    assert!(library(&app).await.is_empty());
    assert_eq!(
        call(
            &app,
            "DELETE",
            "/userdata/workflows%2Fsub%2FRenamed.json",
            b""
        )
        .await
        .status,
        404
    );

    // Other files under workflows/ are plain files.
    let reply = call(&app, "POST", "/userdata/workflows%2Fnotes.txt", b"plain").await;
    assert_eq!(reply.status, 200);
    assert!(user_dir(&app).join("workflows/notes.txt").exists());
    assert!(library(&app).await.is_empty());
    assert_eq!(
        app.get("/userdata?dir=workflows").await.1,
        json!(["notes.txt"])
    );
}

#[actix_web::test]
async fn library_workflows_appear_under_userdata() {
    let app = spawn_app().await;
    let content = r#"{"nodes": [], "links": [], "extra": {"x": 1.50}}"#;
    let (status, created) = app
        .post_raw(
            "/api/weft/workflows",
            format!(r#"{{"name": "Lib/One", "description": "d", "workflow": {content}}}"#)
                .into_bytes(),
            "application/json",
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["path"], "workflows/Lib_One.json");
    let id = created["id"].as_str().unwrap().to_owned();
    let reply = call(&app, "GET", "/api/userdata/workflows%2FLib_One.json", b"").await;
    assert_eq!((reply.status, reply.text()), (200, content.to_owned()));
    let (_, listed) = app
        .get("/userdata?dir=workflows&recurse=true&full_info=true")
        .await;
    assert_eq!(listed[0]["path"], "Lib_One.json");
    assert_eq!(listed[0]["size"], content.len());

    // The same name again gets a file of its own.
    let (_, second) = app
        .post(
            "/api/weft/workflows",
            json!({"name": "Lib/One", "workflow": {"second": true}}),
        )
        .await;
    assert_eq!(second["path"], "workflows/Lib_One (2).json");
    assert_eq!(
        app.get("/userdata?dir=workflows").await.1,
        json!(["Lib_One (2).json", "Lib_One.json"])
    );

    // A new version in the library is what /userdata serves; a new name renames the file.
    let client = awc::Client::default();
    let put = |body: String| {
        let request = client
            .put(app.url(&format!("/api/weft/workflows/{id}")))
            .insert_header(("content-type", "application/json"));
        async move { request.send_body(body).await.unwrap().status().as_u16() }
    };
    assert_eq!(put(r#"{"workflow": {"v": 2}}"#.to_owned()).await, 200);
    assert_eq!(
        call(&app, "GET", "/userdata/workflows%2FLib_One.json", b"")
            .await
            .body,
        br#"{"v": 2}"#
    );
    assert_eq!(
        put(r#"{"name": "Two", "workflow": {"v": 3}}"#.to_owned()).await,
        200
    );
    assert_eq!(
        call(&app, "GET", "/userdata/workflows%2FLib_One.json", b"")
            .await
            .status,
        404
    );
    assert_eq!(
        call(&app, "GET", "/userdata/workflows%2FTwo.json", b"")
            .await
            .body,
        br#"{"v": 3}"#
    );
    let (_, one) = app.get(&format!("/api/weft/workflows/{id}")).await;
    assert_eq!(
        (one["name"].as_str(), one["version"].as_i64()),
        (Some("Two"), Some(3))
    );
    assert_eq!(one["path"], "workflows/Two.json");

    // Restoring a version is what /userdata serves next.
    let (status, _) = app
        .post(
            &format!("/api/weft/workflows/{id}/versions/1/restore"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        call(&app, "GET", "/userdata/workflows%2FTwo.json", b"")
            .await
            .text(),
        content
    );

    // A save through /userdata is a version in the library.
    let reply = call(&app, "POST", "/userdata/workflows%2FTwo.json", b"{\"v\":5}").await;
    assert_eq!(reply.status, 200);
    let (_, versions) = app.get(&format!("/api/weft/workflows/{id}/versions")).await;
    assert_eq!(versions.as_array().unwrap().len(), 5);
    let (_, one) = app.get(&format!("/api/weft/workflows/{id}")).await;
    assert_eq!(one["workflow"], json!({"v": 5}));
    assert_eq!(one["description"], "d", "a save keeps the description");

    // Deleting in the library removes the file.
    let response = client
        .delete(app.url(&format!("/api/weft/workflows/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(
        call(&app, "GET", "/userdata/workflows%2FTwo.json", b"")
            .await
            .status,
        404
    );
    assert_eq!(
        app.get("/userdata?dir=workflows").await.1,
        json!(["Lib_One (2).json"])
    );
}

#[actix_web::test]
async fn moves_between_plain_files_and_the_library() {
    let app = spawn_app().await;
    let content = br#"{"nodes": [], "links": []}"#;
    let reply = call(&app, "POST", "/userdata/drafts%2Fx.json", content).await;
    assert_eq!(reply.status, 200);
    assert!(user_dir(&app).join("drafts/x.json").exists());

    // Into workflows/: a library workflow, and no longer a file.
    let reply = call(
        &app,
        "POST",
        "/userdata/drafts%2Fx.json/move/workflows%2Fx.json",
        b"",
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()),
        (200, json!("workflows/x.json"))
    );
    assert!(!user_dir(&app).join("drafts/x.json").exists());
    let rows = library(&app).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].2.as_str()),
        ("workflows/x.json", "x")
    );
    assert_eq!(
        call(&app, "GET", "/userdata/workflows%2Fx.json", b"")
            .await
            .body,
        content
    );

    // Out of workflows/: a plain file with the content, and no longer in the library.
    let reply = call(
        &app,
        "POST",
        "/userdata/workflows%2Fx.json/move/archive%2Fx.json?full_info=true",
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "archive/x.json");
    assert_eq!(
        std::fs::read(user_dir(&app).join("archive/x.json")).unwrap(),
        content
    );
    assert!(library(&app).await.is_empty());

    // A plain file that is not a workflow cannot enter the library; it stays where it was.
    let reply = call(&app, "POST", "/userdata/notes.txt", b"just text").await;
    assert_eq!(reply.status, 200);
    let reply = call(
        &app,
        "POST",
        "/userdata/notes.txt/move/workflows%2Fnotes.json",
        b"",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(user_dir(&app).join("notes.txt").exists());
    assert!(library(&app).await.is_empty());

    // Neither way overwrites without overwrite=true.
    let reply = call(&app, "POST", "/userdata/workflows%2Fw.json", b"{}").await;
    assert_eq!(reply.status, 200);
    let reply = call(
        &app,
        "POST",
        "/userdata/archive%2Fx.json/move/workflows%2Fw.json?overwrite=false",
        b"",
    )
    .await;
    assert_eq!(reply.status, 409);
    let reply = call(
        &app,
        "POST",
        "/userdata/workflows%2Fw.json/move/archive%2Fx.json?overwrite=false",
        b"",
    )
    .await;
    assert_eq!(reply.status, 409);
    assert!(user_dir(&app).join("archive/x.json").exists());
    assert_eq!(library(&app).await.len(), 1);
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[actix_web::test]
async fn settings_and_workflows_survive_a_restart_and_a_comfyui_user_folder_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let (data, models) = (dir.path().join("data"), dir.path().join("models"));
    // A ComfyUI user folder, given with --user-directory.
    let comfy_user = dir.path().join("ComfyUI").join("user");
    let comfy_flow = comfy_user.join("default/workflows/from comfy.json");
    write(&comfy_flow, br#"{"nodes": [], "from": "comfy"}"#);
    write(&comfy_user.join("default/workflows/sub/nested.json"), b"{}");
    write(
        &comfy_user.join("default/workflows/broken.json"),
        b"{not json",
    );
    write(
        &comfy_user.join("default/comfy.settings.json"),
        br#"{"Comfy.Old": true}"#,
    );
    let args = [
        std::ffi::OsStr::new("--user-directory"),
        comfy_user.as_os_str(),
    ];

    let mut server = Server::start_with(&data, &models, free_port(), &args).await;
    let base = server.base.clone();
    let users = server.get("/users").await;
    assert_eq!(users, json!({"storage": "server", "migrated": true}));
    assert_eq!(server.get("/settings").await, json!({"Comfy.Old": true}));
    let listed = server.get("/userdata?dir=workflows&recurse=true").await;
    assert_eq!(
        listed,
        json!(["from comfy.json", "sub/nested.json"]),
        "broken.json is left out"
    );
    assert_eq!(
        call_at(&base, "GET", "/userdata/workflows%2Ffrom%20comfy.json", b"")
            .await
            .body,
        br#"{"nodes": [], "from": "comfy"}"#
    );
    let library = server.get("/api/weft/workflows").await;
    assert_eq!(library.as_array().unwrap().len(), 2);

    let reply = call_at(&base, "POST", "/settings/Comfy.New", b"42").await;
    assert_eq!(reply.status, 200);
    let reply = call_at(
        &base,
        "POST",
        "/userdata/workflows%2Fsaved.json",
        b"{\"s\":1}",
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = call_at(&base, "POST", "/userdata/user.css", b"body {}").await;
    assert_eq!(reply.status, 200);
    // Deleted in Weft: its file stays on disk, and must not come back at the next start.
    let reply = call_at(
        &base,
        "DELETE",
        "/userdata/workflows%2Fsub%2Fnested.json",
        b"",
    )
    .await;
    assert_eq!(reply.status, 204);
    server.stop();
    assert!(comfy_flow.exists(), "imported files are left in place");
    assert!(comfy_user.join("default/user.css").exists());
    // Changed on disk while Weft was stopped (by ComfyUI, say).
    write(
        &comfy_flow,
        br#"{"nodes": [], "from": "comfy", "edited": 1}"#,
    );

    let server = Server::start_with(&data, &models, free_port(), &args).await;
    let base = server.base.clone();
    assert_eq!(
        server.get("/api/settings").await,
        json!({"Comfy.Old": true, "Comfy.New": 42})
    );
    assert_eq!(server.get("/settings/Comfy.New").await, json!(42));
    let listed = server.get("/userdata?dir=workflows&recurse=true").await;
    assert_eq!(listed, json!(["from comfy.json", "saved.json"]));
    assert_eq!(
        call_at(&base, "GET", "/userdata/workflows%2Fsaved.json", b"")
            .await
            .body,
        b"{\"s\":1}"
    );
    assert_eq!(
        call_at(&base, "GET", "/userdata/workflows%2Ffrom%20comfy.json", b"")
            .await
            .body,
        br#"{"nodes": [], "from": "comfy", "edited": 1}"#,
        "the edit on disk became the newest version"
    );
    let library = server.get("/api/weft/workflows").await;
    let flow = library
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "from comfy")
        .unwrap()
        .clone();
    assert_eq!(flow["version"], 2);
    assert_eq!(library.as_array().unwrap().len(), 2);
    assert_eq!(
        call_at(&base, "GET", "/userdata/user.css", b"").await.body,
        b"body {}"
    );
    assert!(
        !data.join("user").exists(),
        "--user-directory is used instead"
    );
}
