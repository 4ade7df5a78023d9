//! `/internal/logs`: recent server log lines as ComfyUI's frontend reads them (its terminal
//! panel), and the `logs` socket event that streams new ones to subscribed clients.

use serde_json::{json, Value as Json};

use crate::logs::LogEntry;

/// One entry: `{t: ISO 8601 time, m: text ending in a newline}`.
pub fn entry(entry: &LogEntry) -> Json {
    json!({"t": entry.time, "m": entry.message})
}

/// The terminal size the frontend lays the lines out in.
pub fn size(cols: u16, rows: u16) -> Json {
    json!({"cols": cols, "rows": rows})
}

/// `GET /internal/logs`: every entry as `"{t} - {m}"`, joined into one string.
pub fn text(entries: &[LogEntry]) -> Json {
    let joined: String = entries
        .iter()
        .map(|e| format!("{} - {}", e.time, e.message))
        .collect();
    Json::from(joined)
}

/// `GET /internal/logs/raw`: `{entries, size: {cols, rows}}`.
pub fn raw(entries: &[LogEntry], cols: u16, rows: u16) -> Json {
    json!({"entries": entries.iter().map(entry).collect::<Vec<_>>(), "size": size(cols, rows)})
}

/// The `logs` event a subscribed client gets: `{type: "logs", data: {entries, size}}`; `size` is
/// null because the terminal's size does not change while the server runs.
pub fn event(entries: &[LogEntry]) -> Json {
    json!({"type": "logs", "data": {"entries": entries.iter().map(entry).collect::<Vec<_>>(), "size": null}})
}
