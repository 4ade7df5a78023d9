//! Hostile inputs from an attacker-style review: each gets a 4xx that names what is wrong, and
//! the server stays up.

use serde_json::json;

use crate::helpers::spawn_app;
use crate::server::multipart;

/// A 1x1 PNG whose `workflow` zTXt chunk holds `workflow`.
fn png_with_workflow(workflow: String) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, 1, 1);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        let text = png::text_metadata::ZTXtChunk::new("workflow", workflow);
        writer.write_text_chunk(&text).unwrap();
        writer.write_image_data(&[1, 2, 3, 4]).unwrap();
    }
    out
}

#[actix_web::test]
async fn png_text_chunks_inflate_only_up_to_a_limit() {
    let app = spawn_app().await;
    // 64 MiB and a byte of spaces: a few hundred kilobytes on disk.
    let bomb = png_with_workflow(" ".repeat((64 << 20) + 1));
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let (status, body) = app
        .post_raw("/api/weft/convert", bomb.clone(), "image/png")
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("more than 64 MiB"), "{body}");

    // The mask editor reads the original's text chunks to keep them: the same limit, a 400
    // naming original_ref, and nothing written.
    std::fs::write(app.data_dir().join("output/bomb.png"), &bomb).unwrap();
    let mask = crate::server::png_bytes(1, 1, [0, 0, 0, 0]);
    let reference = json!({"filename": "bomb.png", "type": "output"}).to_string();
    let (body, content_type) = multipart(&[
        ("image", Some("m.png"), &mask),
        ("original_ref", None, reference.as_bytes()),
    ]);
    let (status, body) = app.post_raw("/upload/mask", body, &content_type).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("original_ref:") && message.contains("64 MiB"),
        "{body}"
    );
    assert!(!app.data_dir().join("input/m.png").exists());

    // A PNG within the limit still gives back its workflow; the server is up.
    let workflow = json!({"nodes": [], "links": [], "note": " ".repeat(1 << 20)});
    let small = png_with_workflow(workflow.to_string());
    let (status, body) = app.post_raw("/api/weft/convert", small, "image/png").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["workflow"], workflow);
}
