//! `weft run`: one workflow headless, outputs written, readable errors and exit codes.

use std::process::Command;

use serde_json::json;

fn weft(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("weft runs")
}

#[test]
fn weft_run_writes_outputs_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let workflow = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 255}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "headless"}}
    });
    std::fs::write(dir.path().join("ok.json"), workflow.to_string()).unwrap();
    let out = weft(&["run", "ok.json"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("headless_00001_.png"), "{stdout}");
    assert!(dir.path().join("data/output/headless_00001_.png").exists());

    // An invalid workflow: exit code 2 and the node, input and reason on stderr.
    let mut bad = workflow.clone();
    bad["1"]["inputs"]["width"] = json!(0);
    std::fs::write(dir.path().join("bad.json"), bad.to_string()).unwrap();
    let out = weft(&["run", "bad.json"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node 1 (EmptyImage)") && stderr.contains("smaller than min"),
        "{stderr}"
    );

    // Not JSON, and a missing file.
    std::fs::write(dir.path().join("garbage.json"), "{nope").unwrap();
    let out = weft(&["run", "garbage.json"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
    let out = weft(&["run", "missing.json"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read missing.json"));
}

#[test]
fn a_device_or_dtype_this_build_cannot_use_stops_the_command_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let workflow = dir.path().join("w.json");
    std::fs::write(&workflow, "{}").unwrap();
    let w = workflow.to_str().unwrap();
    if !cfg!(feature = "cuda") {
        let out = weft(&["run", w, "--device", "cuda:0"], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("cannot use device cuda:0"), "{stderr}");
        assert!(stderr.contains("--features cuda"), "{stderr}");
        let out = weft(&["serve", "--port", "0", "--device", "cuda"], dir.path());
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--features cuda"));
    } else {
        // Built with CUDA: a device that is not there (no GPU, or an index past the last one) is
        // the driver's reason, said once, and exit status 2 — not a panic.
        let out = weft(&["run", w, "--device", "cuda:99"], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("cannot use device cuda:99: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.matches("DriverError").count(), 1, "{stderr}");
    }
    let out = weft(&["run", w, "--dtype", "int8"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown dtype 'int8'; use f32, f16 or bf16"),
        "{stderr}"
    );
    // --gpu-memory is the GPU's budget: on the CPU it says which option to use instead.
    let out = weft(&["run", w, "--gpu-memory", "4000"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--gpu-memory applies to a GPU"), "{stderr}");
    assert!(stderr.contains("--model-cache-size"), "{stderr}");
    // Parse errors come from clap, naming the flag.
    let out = weft(&["run", w, "--device", "tpu"], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device 'tpu'"));
}

/// `weft serve` with `args` in `dir`, until a line of its stderr contains each of `wanted` (or
/// 60 s pass); returns what it printed. The server is killed.
fn serve_until(args: &[&str], dir: &std::path::Path, wanted: &[&str]) -> String {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("serve")
        .args(["--port", "0", "--models-dir", "models"])
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weft starts");
    let stderr = child.stderr.take().unwrap();
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = send.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut printed = String::new();
    while !wanted.iter().all(|w| printed.contains(w)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => printed += &(line + "\n"),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    printed
}

#[test]
fn serve_says_what_it_exposes() {
    let dir = tempfile::tempdir().unwrap();
    // Beyond loopback without --no-auth: a token is made, kept and printed once.
    let printed = serve_until(
        &["--listen", "0.0.0.0"],
        dir.path(),
        &["allowed hosts", "Bearer TOKEN"],
    );
    let token = std::fs::read_to_string(dir.path().join("data/auth_token")).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64);
    assert_eq!(printed.matches(token).count(), 2, "{printed}");
    assert!(printed.contains("authentication on"), "{printed}");
    assert!(
        printed.contains("Weft listening on http://0.0.0.0:"),
        "{printed}"
    );
    assert!(printed.contains("any IP address"), "{printed}");

    // --no-auth beyond loopback: the warning.
    let printed = serve_until(
        &["--listen", "0.0.0.0", "--no-auth"],
        dir.path(),
        &["allowed hosts"],
    );
    assert!(
        printed.contains("authentication OFF (--no-auth)")
            && printed.contains("anyone on the network can queue prompts"),
        "{printed}"
    );
    assert!(!printed.contains(token), "{printed}");

    // --allowed-hosts '*' on loopback: the Host check's warning, no token.
    let printed = serve_until(&["--allowed-hosts", "*"], dir.path(), &["Host check OFF"]);
    assert!(printed.contains("Host check OFF"), "{printed}");
    assert!(
        printed.contains("authentication off (listening on loopback only)"),
        "{printed}"
    );
    // A given token is used, not printed.
    let printed = serve_until(
        &[
            "--auth-token",
            "given-0123456789",
            "--allowed-hosts",
            "weft.lan:8188",
        ],
        dir.path(),
        &["allowed hosts"],
    );
    assert!(printed.contains("token --auth-token"), "{printed}");
    assert!(printed.contains("weft.lan:8188"), "{printed}");
    assert!(!printed.contains("given-0123456789"), "{printed}");
}

#[test]
fn serve_refuses_bad_access_options() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (
            &["--auth-token", "abc", "--no-auth"][..],
            "cannot be used with",
        ),
        (&["--auth-token", "a b"], "--auth-token"),
        (&["--auth-token", ""], "the token is empty"),
        (
            &["--allowed-hosts", "weft.lan,a b"],
            "'a b' is not a host name",
        ),
    ] {
        let mut all = vec!["serve", "--port", "0"];
        all.extend(args);
        let out = weft(&all, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
