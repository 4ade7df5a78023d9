//! Every example in `workflows/` runs with `weft run` on tiny checkpoints named as the examples
//! expect (sizes and step counts cut so each takes seconds on two cores).

use serde_json::Value as Json;

use crate::helpers::shrink_editor_workflow;

use crate::models::{write_checkpoint, Tiny};

#[test]
fn every_example_workflow_runs_with_weft_run() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("models/checkpoints");
    write_checkpoint(
        &checkpoints.join("v1-5-pruned-emaonly.safetensors"),
        Tiny::Sd1,
    );
    write_checkpoint(&checkpoints.join("sd_xl_base_1.0.safetensors"), Tiny::Sdxl);
    write_checkpoint(
        &checkpoints.join("sd_xl_refiner_1.0.safetensors"),
        Tiny::SdxlRefiner,
    );
    std::fs::create_dir_all(dir.path().join("models/loras")).unwrap();
    for name in ["style_a", "style_b"] {
        let lora = crate::lora_nodes::kohya_lora(name);
        candle_core::safetensors::save(
            &lora,
            dir.path().join(format!("models/loras/{name}.safetensors")),
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.path().join("data/input")).unwrap();
    std::fs::write(
        dir.path().join("data/input/example.png"),
        crate::server::png_bytes(64, 64, [120, 160, 90, 128]),
    )
    .unwrap();

    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    let mut names: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
    for path in names {
        let workflow: Json =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            workflow["nodes"].is_array(),
            "{}: examples are editor-format files",
            path.display()
        );
        let file = dir.path().join(path.file_name().unwrap());
        std::fs::write(&file, shrink_editor_workflow(workflow).to_string()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("run")
            .arg(&file)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(".png"), "{}: {stdout}", path.display());
    }
}
