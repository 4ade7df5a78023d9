//! `/ws`: the WebSocket clients connect to, and the hub that routes executor events to them.
//!
//! Routing follows ComfyUI: `status` goes to everyone; execution events only to the submitting
//! client; progress and previews to the submitting client, or to everyone when the prompt has no
//! client id. Binary previews are type 1 frames, as ComfyUI sends every client (older frontends
//! rely on it); a client that announced `supports_preview_metadata` in its `feature_flags` gets
//! type 4 frames instead. Weft addition: `?preview=0` on the socket's URL turns them off, for
//! scripts that read only text. Clients that subscribed through `/internal/logs/subscribe` also get
//! a `logs` event with each batch of new log lines. On a shared queue the stream also carries the
//! other workers' events (`Event::Relayed`, routed alike, and their previews as
//! `Event::Preview`; `exec::shared`), so a client gets its prompts' events and previews whichever
//! worker runs them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use tokio::sync::{broadcast, mpsc};

use crate::api::AppState;
use crate::exec::{Envelope, Event, Route};
use crate::logs::LogEntry;

const PREVIEWS_NONE: u8 = 0;
const PREVIEWS_PLAIN: u8 = 1;
const PREVIEWS_WITH_METADATA: u8 = 4;

enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

struct Client {
    sender: mpsc::UnboundedSender<Frame>,
    previews: Arc<AtomicU8>,
    /// Distinguishes a replaced connection with the same client id from the current one.
    connection: u64,
}

/// Connected clients by sid.
#[derive(Clone, Default)]
pub struct Hub {
    clients: Arc<Mutex<HashMap<String, Client>>>,
    next_connection: Arc<std::sync::atomic::AtomicU64>,
    /// Clients that asked for `logs` events (`PATCH /internal/logs/subscribe`).
    log_subscribers: Arc<Mutex<HashSet<String>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove_if_current(&self, sid: &str, connection: u64) {
        let mut clients = self.lock();
        if clients.get(sid).is_some_and(|c| c.connection == connection) {
            clients.remove(sid);
        }
    }

    fn log_subscribers(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.log_subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Starts or stops sending `logs` events to a client.
    pub fn subscribe_logs(&self, client_id: &str, enabled: bool) {
        let mut subscribers = self.log_subscribers();
        if enabled {
            subscribers.insert(client_id.to_owned());
        } else {
            subscribers.remove(client_id);
        }
    }

    /// Sends new log lines to the clients that subscribed, batching the lines that arrived
    /// together, until the log ring goes away. A subscriber whose socket has closed is dropped, as
    /// ComfyUI does.
    pub async fn forward_logs(self, mut lines: broadcast::Receiver<LogEntry>) {
        loop {
            let first = match lines.recv().await {
                Ok(line) => line,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let mut batch = vec![first];
            while let Ok(line) = lines.try_recv() {
                batch.push(line);
            }
            let subscribers: Vec<String> = self.log_subscribers().iter().cloned().collect();
            if subscribers.is_empty() {
                continue;
            }
            let text = crate::wire::logs::event(&batch).to_string();
            let mut gone = Vec::new();
            {
                let clients = self.lock();
                for id in subscribers {
                    match clients.get(&id) {
                        Some(client) => {
                            let _ = client.sender.send(Frame::Text(text.clone()));
                        }
                        None => gone.push(id),
                    }
                }
            }
            let mut subscribers = self.log_subscribers();
            for id in gone {
                subscribers.remove(&id);
            }
        }
    }

    /// Forwards executor events to clients until the executor goes away (on a shared queue;
    /// alone on one, the executor calls [`Hub::dispatch`] itself).
    pub async fn route(self, mut events: mpsc::UnboundedReceiver<Envelope>) {
        while let Some(envelope) = events.recv().await {
            self.dispatch(&envelope);
        }
    }

    /// Whether a preview sent on `route` would reach a socket here (one that takes previews).
    pub fn wants_previews(&self, route: &Route) -> bool {
        targets(&self.lock(), route)
            .iter()
            .any(|client| client.previews.load(Ordering::Relaxed) != PREVIEWS_NONE)
    }

    /// Sends an event to the sockets its route names, on the calling thread.
    pub fn dispatch(&self, envelope: &Envelope) {
        let clients = self.lock();
        let targets = targets(&clients, &envelope.route);
        if let Event::Preview { image, .. } = &envelope.event {
            let metadata = envelope.event.data();
            let is_png = metadata["image_type"] == "image/png";
            for client in targets {
                let frame = match client.previews.load(Ordering::Relaxed) {
                    PREVIEWS_WITH_METADATA => preview_with_metadata(&metadata, image),
                    PREVIEWS_PLAIN => preview_plain(image, is_png),
                    _ => continue,
                };
                let _ = client.sender.send(Frame::Binary(frame));
            }
            return;
        }
        let text =
            json!({"type": envelope.event.name(), "data": envelope.event.data()}).to_string();
        for client in targets {
            let _ = client.sender.send(Frame::Text(text.clone()));
        }
    }
}

/// The clients an event on `route` goes to.
fn targets<'a>(clients: &'a HashMap<String, Client>, route: &Route) -> Vec<&'a Client> {
    match route {
        Route::Broadcast | Route::ClientOrBroadcast(None) => clients.values().collect(),
        Route::Client(Some(id)) | Route::ClientOrBroadcast(Some(id)) => {
            clients.get(id).into_iter().collect()
        }
        Route::Client(None) => Vec::new(),
    }
}

/// Binary type 1: u32 BE event type, u32 BE format (1 JPEG, 2 PNG), image bytes.
fn preview_plain(image: &[u8], is_png: bool) -> Vec<u8> {
    let mut frame = Vec::with_capacity(image.len() + 8);
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&(if is_png { 2u32 } else { 1u32 }).to_be_bytes());
    frame.extend_from_slice(image);
    frame
}

/// Binary type 4: u32 BE event type, u32 BE metadata length, metadata JSON, image bytes.
fn preview_with_metadata(metadata: &Json, image: &[u8]) -> Vec<u8> {
    let metadata = metadata.to_string();
    let mut frame = Vec::with_capacity(image.len() + metadata.len() + 8);
    frame.extend_from_slice(&4u32.to_be_bytes());
    frame.extend_from_slice(&(metadata.len() as u32).to_be_bytes());
    frame.extend_from_slice(metadata.as_bytes());
    frame.extend_from_slice(image);
    frame
}

#[derive(serde::Deserialize)]
pub struct WsQuery {
    #[serde(rename = "clientId")]
    client_id: Option<String>,
    preview: Option<String>,
}

/// `GET /ws?clientId=…`.
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<WsQuery>,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut incoming) = actix_ws::handle(&req, body)?;
    let sid = query
        .client_id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let no_previews = query
        .preview
        .as_deref()
        .is_some_and(|p| p == "0" || p == "false");
    let previews = Arc::new(AtomicU8::new(if no_previews {
        PREVIEWS_NONE
    } else {
        PREVIEWS_PLAIN
    }));
    let (sender, mut outgoing) = mpsc::unbounded_channel();
    let hub = state.hub.clone();
    let connection = hub.next_connection.fetch_add(1, Ordering::Relaxed);
    // A new socket with the same client id replaces the old one, as in ComfyUI.
    hub.lock().insert(
        sid.clone(),
        Client {
            sender: sender.clone(),
            previews: Arc::clone(&previews),
            connection,
        },
    );

    let queue_remaining = state.exec.store().queue_remaining().await.unwrap_or(0);
    let mut data = crate::wire::queue::status(queue_remaining);
    data["sid"] = Json::from(sid.as_str());
    let hello = json!({"type": "status", "data": data});
    let _ = sender.send(Frame::Text(hello.to_string()));
    if let Some(running) = state.exec.running_prompt() {
        tracing::debug!(sid = %sid, prompt_id = %running, "client connected while a prompt runs");
    }

    let max_upload = state.config.max_upload_bytes;
    actix_web::rt::spawn(async move {
        let mut first_text = true;
        loop {
            tokio::select! {
                frame = outgoing.recv() => {
                    let sent = match frame {
                        Some(Frame::Text(text)) => session.text(text).await,
                        Some(Frame::Binary(bytes)) => session.binary(bytes).await,
                        None => break,
                    };
                    if sent.is_err() {
                        break;
                    }
                }
                message = incoming.next() => {
                    match message {
                        Some(Ok(actix_ws::Message::Text(text))) => {
                            // Only the first text message counts, and only as feature flags.
                            if first_text {
                                first_text = false;
                                if let Some(reply) = feature_flags(&text, &previews, max_upload) {
                                    if session.text(reply).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        Some(Ok(actix_ws::Message::Ping(bytes))) => {
                            if session.pong(&bytes).await.is_err() {
                                break;
                            }
                        }
                        Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
        hub.remove_if_current(&sid, connection);
        let _ = session.close(None).await;
    });
    Ok(response)
}

pub(crate) fn feature_flags(text: &str, previews: &AtomicU8, max_upload: usize) -> Option<String> {
    let message: Json = serde_json::from_str(text).ok()?;
    if message["type"] != "feature_flags" {
        return None;
    }
    let with_metadata = message["data"]["supports_preview_metadata"]
        .as_bool()
        .unwrap_or(false);
    previews.store(
        if with_metadata {
            PREVIEWS_WITH_METADATA
        } else {
            PREVIEWS_PLAIN
        },
        Ordering::Relaxed,
    );
    Some(
        json!({"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": max_upload as f64}})
            .to_string(),
    )
}
