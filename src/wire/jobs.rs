//! `/api/jobs`: ComfyUI's jobs API, the queue and the history as one list of job records.
//!
//! A job is a prompt: `pending` and `in_progress` while queued or running, then `completed`,
//! `failed` or `cancelled` (interrupted) once in the history. Prompts taken off the queue before
//! they ran are not jobs, as in ComfyUI, where they are forgotten.

use serde_json::{json, Map, Value as Json};

use crate::store::{PromptRow, PromptStatus};
use crate::wire::queue::{history_entry, number_json};

/// A job's status as ComfyUI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Pending,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    /// Every status, in ComfyUI's order (the order error messages list them in).
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Pending,
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(name: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The stored status a job of this status has.
    pub fn stored(self) -> PromptStatus {
        match self {
            JobStatus::Pending => PromptStatus::Pending,
            JobStatus::InProgress => PromptStatus::Running,
            JobStatus::Completed => PromptStatus::Done,
            JobStatus::Failed => PromptStatus::Failed,
            JobStatus::Cancelled => PromptStatus::Interrupted,
        }
    }

    /// The job status of a stored prompt; `None` for one taken off the queue before it ran.
    pub fn of(status: PromptStatus) -> Option<JobStatus> {
        match status {
            PromptStatus::Pending => Some(JobStatus::Pending),
            PromptStatus::Running => Some(JobStatus::InProgress),
            PromptStatus::Done => Some(JobStatus::Completed),
            PromptStatus::Failed => Some(JobStatus::Failed),
            PromptStatus::Interrupted => Some(JobStatus::Cancelled),
            PromptStatus::Cancelled => None,
        }
    }

    /// `pending, in_progress, …`, for error messages.
    pub fn all_names() -> String {
        JobStatus::ALL.map(JobStatus::name).join(", ")
    }
}

/// Output kinds the frontend can preview (ComfyUI's `PREVIEWABLE_MEDIA_TYPES`).
const PREVIEWABLE_MEDIA: &[&str] = &["images", "video", "audio", "3d", "text"];
const THREE_D_EXTENSIONS: &[&str] = &[".obj", ".fbx", ".gltf", ".glb", ".usdz"];
const TEXT_EXTENSIONS: &[&str] = &[".txt", ".md", ".json"];
/// Longest text kept in a text preview.
const TEXT_PREVIEW_CHARS: usize = 1024;

fn ends_with_any(name: &str, extensions: &[&str]) -> bool {
    let lower = name.to_lowercase();
    extensions.iter().any(|e| lower.ends_with(e))
}

/// One output item as the jobs API counts it: file records as they are, a 3D file named by a
/// bare string as a file record; anything else is not a file.
fn output_item(item: &Json) -> Option<Json> {
    match item {
        Json::Object(_) => Some(item.clone()),
        Json::String(name) if ends_with_any(name, THREE_D_EXTENSIONS) => {
            Some(json!({"filename": name, "type": "output", "subfolder": "", "mediaType": "3d"}))
        }
        _ => None,
    }
}

fn is_previewable(media: &str, item: &Json) -> bool {
    if PREVIEWABLE_MEDIA.contains(&media) {
        return true;
    }
    let format = item["format"].as_str().unwrap_or("");
    if format.starts_with("video/") || format.starts_with("audio/") {
        return true;
    }
    let filename = item["filename"].as_str().unwrap_or("");
    ends_with_any(filename, THREE_D_EXTENSIONS) || ends_with_any(filename, TEXT_EXTENSIONS)
}

fn is_text(media: &str, item: &Json) -> bool {
    media == "text" || ends_with_any(item["filename"].as_str().unwrap_or(""), TEXT_EXTENSIONS)
}

/// The lists of `(node id, media kind, items)` in a history entry's `outputs`.
fn output_lists(outputs: &Json) -> impl Iterator<Item = (&String, &String, &Vec<Json>)> {
    outputs
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(node, by_media)| by_media.as_object().map(|m| (node, m)))
        .flat_map(|(node, by_media)| {
            by_media
                .iter()
                .filter(|(media, _)| *media != "animated")
                .filter_map(move |(media, items)| items.as_array().map(|a| (node, media, a)))
        })
}

/// How many files a prompt wrote, how many of them the frontend can preview, and the one it
/// shows: a saved (type `output`) image, video, audio or 3D file first, then any other such
/// file, then a saved text file, then plain text.
fn outputs_summary(outputs: &Json) -> (usize, usize, Option<Json>) {
    let (mut count, mut previewable) = (0, 0);
    let (mut saved, mut other, mut text_file, mut text) = (None, None, None, None);
    for (node, media, items) in output_lists(outputs) {
        for raw in items {
            let Some(item) = output_item(raw) else {
                if media == "text" && text.is_none() {
                    let value = match raw {
                        Json::String(s) => s.clone(),
                        Json::Array(parts) => parts
                            .first()
                            .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                            .unwrap_or_default(),
                        Json::Null => continue,
                        other => other.to_string(),
                    };
                    let mut preview = Map::new();
                    let truncated = value.chars().count() > TEXT_PREVIEW_CHARS;
                    let content: String = value.chars().take(TEXT_PREVIEW_CHARS).collect();
                    preview.insert("content".into(), Json::from(content));
                    if truncated {
                        preview.insert("truncated".into(), Json::Bool(true));
                    }
                    preview.insert("nodeId".into(), Json::from(node.as_str()));
                    preview.insert("mediaType".into(), Json::from(media.as_str()));
                    text = Some(Json::Object(preview));
                }
                continue;
            };
            count += 1;
            if !is_previewable(media, &item) {
                continue;
            }
            previewable += 1;
            if saved.is_some() {
                continue;
            }
            let mut enriched = item.clone();
            enriched["nodeId"] = Json::from(node.as_str());
            if item.get("mediaType").is_none() {
                enriched["mediaType"] = Json::from(media.as_str());
            }
            if is_text(media, &item) {
                text_file.get_or_insert(enriched);
            } else if item["type"] == "output" {
                saved = Some(enriched);
            } else {
                other.get_or_insert(enriched);
            }
        }
    }
    (count, previewable, saved.or(other).or(text_file).or(text))
}

/// The outputs as the job detail gives them: bare 3D file names become file records, nulls go.
fn normalized_outputs(outputs: &Json) -> Json {
    let Some(nodes) = outputs.as_object() else {
        return outputs.clone();
    };
    let normalized = nodes.iter().map(|(node, by_media)| {
        let Some(by_media) = by_media.as_object() else {
            return (node.clone(), by_media.clone());
        };
        let lists = by_media
            .iter()
            .map(|(media, items)| match items.as_array() {
                Some(items) if media != "animated" => {
                    let items = items
                        .iter()
                        .filter(|i| !i.is_null())
                        .map(|i| output_item(i).unwrap_or_else(|| i.clone()))
                        .collect();
                    (media.clone(), Json::Array(items))
                }
                _ => (media.clone(), items.clone()),
            });
        (node.clone(), Json::Object(lists.collect()))
    });
    Json::Object(normalized.collect())
}

/// `extra_data.extra_pnginfo.workflow.id`, the editor workflow the prompt came from.
pub fn workflow_id(row: &PromptRow) -> Option<&str> {
    row.extra_data["extra_pnginfo"]["workflow"]["id"].as_str()
}

/// One job as `/api/jobs` lists it (`detail`: with outputs, status and workflow, as
/// `/api/jobs/{id}` gives a finished one). `None` for a prompt that is not a job.
pub fn job(row: &PromptRow, detail: bool) -> Option<Json> {
    let status = JobStatus::of(row.status)?;
    let mut job = Map::new();
    job.insert("id".into(), Json::from(row.prompt_id.as_str()));
    job.insert("status".into(), Json::from(status.name()));
    job.insert("priority".into(), number_json(row.number));
    job.insert("create_time".into(), Json::from(row.created_at));
    let in_history = !matches!(status, JobStatus::Pending | JobStatus::InProgress);
    if !in_history {
        job.insert("outputs_count".into(), Json::from(0));
        job.insert("previewable_outputs_count".into(), Json::from(0));
        if let Some(id) = workflow_id(row) {
            job.insert("workflow_id".into(), Json::from(id));
        }
        return Some(Json::Object(job));
    }

    let entry = history_entry(row);
    let mut started = None;
    let mut ended = None;
    let mut error = None;
    for message in entry["status"]["messages"].as_array().into_iter().flatten() {
        let (Some(name), Some(data)) = (message[0].as_str(), message.get(1)) else {
            continue;
        };
        if !data.is_object() {
            continue;
        }
        match name {
            "execution_start" => started = data.get("timestamp").cloned(),
            "execution_success" | "execution_error" | "execution_interrupted" => {
                ended = data.get("timestamp").cloned();
                if name == "execution_error" {
                    error = Some(data.clone());
                }
            }
            _ => {}
        }
    }
    let outputs = &entry["outputs"];
    let (count, previewable, preview) = outputs_summary(outputs);
    let optional = [
        ("execution_start_time", started),
        ("execution_end_time", ended),
        ("execution_error", error),
    ];
    for (key, value) in optional {
        if let Some(value) = value.filter(|v| !v.is_null()) {
            job.insert(key.into(), value);
        }
    }
    job.insert("outputs_count".into(), Json::from(count));
    job.insert("previewable_outputs_count".into(), Json::from(previewable));
    if let Some(preview) = preview {
        job.insert("preview_output".into(), preview);
    }
    if let Some(id) = workflow_id(row) {
        job.insert("workflow_id".into(), Json::from(id));
    }
    if detail {
        job.insert("outputs".into(), normalized_outputs(outputs));
        job.insert("execution_status".into(), entry["status"].clone());
        job.insert(
            "workflow".into(),
            json!({"prompt": row.prompt, "extra_data": row.extra_data}),
        );
    }
    Some(Json::Object(job))
}

/// The body of `GET /api/jobs`: `{jobs, pagination: {offset, limit, total, has_more}}`.
pub fn job_list(jobs: Vec<Json>, offset: i64, limit: Option<i64>, total: i64) -> Json {
    let has_more = offset + (jobs.len() as i64) < total;
    json!({
        "jobs": jobs,
        "pagination": {"offset": offset, "limit": limit, "total": total, "has_more": has_more},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_images_are_previewed_before_temporary_ones_and_text() {
        let outputs = json!({
            "4": {"text": ["a note"]},
            "5": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
            "6": {"images": [
                {"filename": "a.png", "subfolder": "", "type": "output"},
                {"filename": "b.png", "subfolder": "", "type": "output"}
            ], "animated": [false]},
            "7": {"latents": [{"filename": "x.latent", "subfolder": "", "type": "output"}]},
            "8": {"3d": ["mesh.glb"]}
        });
        let (count, previewable, preview) = outputs_summary(&outputs);
        assert_eq!((count, previewable), (5, 4));
        assert_eq!(
            preview.unwrap(),
            json!({"filename": "a.png", "subfolder": "", "type": "output", "nodeId": "6", "mediaType": "images"})
        );
        let (count, _, preview) = outputs_summary(&json!({"4": {"text": ["a note"]}}));
        assert_eq!(count, 0);
        assert_eq!(
            preview.unwrap(),
            json!({"content": "a note", "nodeId": "4", "mediaType": "text"})
        );
        assert_eq!(
            normalized_outputs(&json!({"8": {"3d": ["mesh.glb", null, "other"]}})),
            json!({"8": {"3d": [
                {"filename": "mesh.glb", "type": "output", "subfolder": "", "mediaType": "3d"},
                "other"
            ]}})
        );
    }

    #[test]
    fn statuses_round_trip() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.name()), Some(status));
            assert_eq!(JobStatus::of(status.stored()), Some(status));
        }
        assert_eq!(JobStatus::of(PromptStatus::Cancelled), None);
        assert_eq!(JobStatus::parse("done"), None);
    }
}
