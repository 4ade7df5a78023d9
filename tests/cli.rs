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
