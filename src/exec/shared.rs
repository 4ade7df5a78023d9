//! Many workers on one PostgreSQL queue, beyond claiming: events, wake-ups, pause and placement.
//!
//! - Events: the worker running a prompt publishes its events on [`EVENTS`] (batched, a few per
//!   notification; previews are not relayed: they are images, NOTIFY carries 8000 bytes), every
//!   other worker relays them to its own sockets with the route they had, so a client gets the
//!   events of its prompts whichever worker it is connected to and `status` (queue_remaining)
//!   is right everywhere.
//! - Wake-ups: a new, re-queued or released prompt and a resume are announced on [`QUEUE`]; idle
//!   workers wake at once and keep a slow poll only as a safety net.
//! - Pause: one flag in the database, read by every claim; [`QUEUE`] tells the workers.
//! - Interrupts: the flag in the prompt's row, read by its worker as it renews its lease, and a
//!   notification on [`QUEUE`] that it hears at once.
//! - Placement: a worker passes over a prompt whose checkpoint it has not loaded while another
//!   live, idle worker has it, for [`PLACEMENT_GRACE`] at most (so nothing waits longer).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

use super::{lock, Envelope, Executor, Route};
use crate::store::{StoreError, WorkerReport};
use crate::wire::Event;

/// The channel of execution and status events.
const EVENTS: &str = "weft_events";
/// The channel of queue changes: [`NEW_WORK`], [`PAUSED`], [`RESUMED`], and [`INTERRUPT`]
/// followed by a prompt id.
const QUEUE: &str = "weft_queue";
const NEW_WORK: &str = "work";
const PAUSED: &str = "paused";
const RESUMED: &str = "resumed";
const INTERRUPT: &str = "interrupt:";

/// Events are batched into notifications of about this many bytes (NOTIFY takes 8000; a single
/// larger event is spilled to a table by the store).
const BATCH_BYTES: usize = 6000;

/// How long a prompt is left to a better placed worker at most.
pub(super) const PLACEMENT_GRACE: Duration = Duration::from_secs(2);
/// How many prompts at the head of the queue placement looks at.
const PLACEMENT_LOOKAHEAD: i64 = 8;
/// A worker counts as live for placement if it reported within this long (idle workers report
/// every second).
const PLACEMENT_SEEN_MS: i64 = 3_000;

/// The names of the checkpoints a prompt loads (`ckpt_name` inputs given as text).
pub(super) fn checkpoints_of(prompt: &Json) -> Vec<String> {
    let mut names: Vec<String> = prompt
        .as_object()
        .into_iter()
        .flat_map(|nodes| nodes.values())
        .filter_map(|node| node["inputs"]["ckpt_name"].as_str())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// An event as other workers relay it, or None for those that stay here (previews; events for
/// a prompt without a client, which nobody gets).
fn to_remote(envelope: &Envelope) -> Option<Json> {
    if matches!(
        envelope.event,
        Event::Preview { .. } | Event::Relayed { .. }
    ) {
        return None;
    }
    let (route, client) = match &envelope.route {
        Route::Broadcast => ("all", None),
        Route::Client(Some(id)) => ("client", Some(id)),
        Route::Client(None) => return None,
        Route::ClientOrBroadcast(client) => ("client_or_all", client.as_ref()),
    };
    Some(json!({
        "route": route,
        "client": client,
        "type": envelope.event.name(),
        "data": envelope.event.data(),
    }))
}

/// An event another worker published, as an envelope for this worker's sockets.
fn from_remote(message: &Json) -> Option<Envelope> {
    let client = message["client"].as_str().map(str::to_owned);
    let route = match message["route"].as_str()? {
        "all" => Route::Broadcast,
        "client" => Route::Client(client),
        "client_or_all" => Route::ClientOrBroadcast(client),
        _ => return None,
    };
    Some(Envelope {
        route,
        event: Event::Relayed {
            name: message["type"].as_str()?.to_owned(),
            data: message["data"].clone(),
        },
    })
}

/// Joins messages into notification payloads of about [`BATCH_BYTES`] each.
fn batches(worker: &str, messages: Vec<Json>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut batch: Vec<String> = Vec::new();
    let mut size = 0;
    let flush = |batch: &mut Vec<String>, payloads: &mut Vec<String>| {
        if !batch.is_empty() {
            payloads.push(format!(
                "{{\"worker\":{},\"events\":[{}]}}",
                Json::from(worker),
                batch.join(",")
            ));
            batch.clear();
        }
    };
    for message in messages {
        let text = message.to_string();
        if size + text.len() > BATCH_BYTES {
            flush(&mut batch, &mut payloads);
            size = 0;
        }
        size += text.len() + 1;
        batch.push(text);
    }
    flush(&mut batch, &mut payloads);
    payloads
}

impl Executor {
    /// On a shared queue: publishes this worker's events for the others and, when `relay`
    /// (the worker serves sockets), adds theirs to the stream; listens for queue changes.
    /// Returns the stream for this worker's sockets (unchanged on SQLite).
    pub fn share_events(
        self: &Arc<Self>,
        events: mpsc::UnboundedReceiver<Envelope>,
        relay: bool,
    ) -> mpsc::UnboundedReceiver<Envelope> {
        if !self.store.is_shared() {
            return events;
        }
        let (out, stream) = mpsc::unbounded_channel();
        tokio::spawn(Arc::clone(self).publish(events, out.clone()));
        tokio::spawn(Arc::clone(self).listen(relay.then_some(out)));
        stream
    }

    /// Forwards this worker's events to its sockets and publishes them, in order, batching
    /// those that queued up during the last notification.
    async fn publish(
        self: Arc<Self>,
        mut events: mpsc::UnboundedReceiver<Envelope>,
        out: mpsc::UnboundedSender<Envelope>,
    ) {
        let worker = self.store.worker_id().to_owned();
        while let Some(first) = events.recv().await {
            let mut messages = Vec::new();
            let mut next = Some(first);
            while let Some(envelope) = next {
                messages.extend(to_remote(&envelope));
                // Gone only without sockets (--worker-only); publishing goes on.
                let _ = out.send(envelope);
                next = events.try_recv().ok();
            }
            for payload in batches(&worker, messages) {
                if let Err(e) = self.store.notify(EVENTS, &payload).await {
                    tracing::warn!("cannot publish events to the other workers: {e:#}");
                }
            }
        }
    }

    /// Listens for queue changes and, with `relay`, other workers' events, reconnecting as
    /// needed; while it cannot, idle workers poll fast.
    async fn listen(self: Arc<Self>, relay: Option<mpsc::UnboundedSender<Envelope>>) {
        let channels: &[&str] = if relay.is_some() {
            &[QUEUE, EVENTS]
        } else {
            &[QUEUE]
        };
        let mut listener = loop {
            match self.store.listen(channels).await {
                Ok(Some(listener)) => break listener,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("cannot listen to the other workers: {e:#}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        self.listening.store(true, Ordering::SeqCst);
        let worker = self.store.worker_id().to_owned();
        loop {
            let notification = match listener.recv().await {
                Ok(notification) => notification,
                Err(e) => {
                    if self.listening.swap(false, Ordering::SeqCst) {
                        tracing::warn!("lost the notifications from other workers: {e:#}");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if !self.listening.swap(true, Ordering::SeqCst) {
                tracing::info!("receiving the other workers' notifications again");
                self.refresh_pause().await;
            }
            if notification.channel == QUEUE {
                if let Some(id) = notification.payload.strip_prefix(INTERRUPT) {
                    // Only if it runs here; the flag in its row stays for the other cases.
                    self.interrupt(Some(id));
                    continue;
                }
                match notification.payload.as_str() {
                    PAUSED => self.paused.store(true, Ordering::SeqCst),
                    RESUMED => self.paused.store(false, Ordering::SeqCst),
                    _ => {}
                }
                self.wake.notify_one();
                continue;
            }
            let Some(out) = &relay else { continue };
            let Ok(batch) = serde_json::from_str::<Json>(&notification.payload) else {
                continue;
            };
            if batch["worker"] == worker.as_str() {
                continue; // Ours: already sent to our sockets.
            }
            for message in batch["events"].as_array().into_iter().flatten() {
                if let Some(envelope) = from_remote(message) {
                    let _ = out.send(envelope);
                }
            }
        }
    }

    /// Tells idle workers (this one included) there is work.
    pub(super) async fn announce_work(&self) {
        self.wake.notify_one();
        if let Err(e) = self.store.notify(QUEUE, NEW_WORK).await {
            tracing::warn!("cannot tell the other workers of new work: {e:#}");
        }
    }

    /// Asks whichever worker runs `prompt_id` to interrupt it: the flag in its row (read at
    /// each lease renewal) and a notification (heard at once). False if it is not running.
    pub(super) async fn request_interrupt_anywhere(
        &self,
        prompt_id: &str,
    ) -> Result<bool, StoreError> {
        let running = self.store.request_interrupt(prompt_id).await?;
        if running {
            if let Err(e) = self
                .store
                .notify(QUEUE, &format!("{INTERRUPT}{prompt_id}"))
                .await
            {
                tracing::warn!("cannot tell the other workers of an interrupt: {e:#}");
            }
        }
        Ok(running)
    }

    /// Pauses or resumes the queue: on a shared queue for every worker (a flag in the database
    /// that every claim reads), else this worker's.
    pub async fn set_paused(&self, paused: bool) -> Result<(), StoreError> {
        self.store.set_paused(paused).await?;
        self.paused.store(paused, Ordering::SeqCst);
        self.wake.notify_one();
        self.store
            .notify(QUEUE, if paused { PAUSED } else { RESUMED })
            .await
    }

    /// Whether the queue is paused (on a shared queue, as the database says).
    pub async fn is_paused(&self) -> Result<bool, StoreError> {
        if self.store.is_shared() {
            self.store.is_paused().await
        } else {
            Ok(self.paused.load(Ordering::SeqCst))
        }
    }

    /// Reads the shared pause flag again (notifications may have been missed).
    pub(super) async fn refresh_pause(&self) {
        match self.store.is_paused().await {
            Ok(paused) => self.paused.store(paused, Ordering::SeqCst),
            Err(e) => tracing::warn!("cannot read whether the queue is paused: {e:#}"),
        }
    }

    /// The checkpoints this worker holds loaded, by the names its prompts gave them.
    fn loaded_checkpoints(&self) -> Vec<String> {
        let loaded = self.models.loaded_checkpoints();
        let mut names: Vec<String> = lock(&self.recent_checkpoints)
            .iter()
            .filter(|name| {
                self.dirs
                    .model_file("checkpoints", name)
                    .is_ok_and(|path| loaded.contains(&path))
            })
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Whether this worker holds a checkpoint a prompt named.
    pub(super) fn holds_checkpoints(&self) -> bool {
        !self.loaded_checkpoints().is_empty()
    }

    /// Remembers the checkpoints a prompt used, for [`Executor::loaded_checkpoints`].
    pub(super) fn used_checkpoints(&self, prompt: &Json) {
        let mut recent = lock(&self.recent_checkpoints);
        for name in checkpoints_of(prompt) {
            recent.retain(|n| *n != name);
            recent.push(name);
        }
        let excess = recent.len().saturating_sub(32);
        recent.drain(..excess);
    }

    /// What this worker offers: its device, its model budget in bytes and the checkpoints it
    /// holds loaded.
    pub fn offer(&self) -> (String, i64, Vec<String>) {
        let device = match self.models.device().location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_owned(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        };
        (
            device,
            self.config.model_budget as i64,
            self.loaded_checkpoints(),
        )
    }

    /// Records this worker as alive, with what it runs and offers.
    pub(super) async fn report(&self) {
        let running = self.running_prompt();
        let address = self.address();
        let (device, memory_budget, checkpoints) = self.offer();
        let report = WorkerReport {
            address: &address,
            running: running.as_deref(),
            device: &device,
            memory_budget,
            checkpoints: &checkpoints,
        };
        if let Err(e) = self.store.heartbeat(&report).await {
            tracing::warn!("cannot record this worker: {e:#}");
        }
    }

    /// The prompts at the head of the queue this worker leaves, for now, to another: one whose
    /// checkpoint this worker has not loaded while a live, idle worker has. Each is left at
    /// most [`PLACEMENT_GRACE`] from the first time this worker passed it over. Also says
    /// whether anything is pending at all.
    pub(super) async fn placement(&self) -> Result<(bool, Vec<String>), StoreError> {
        let head = self.store.pending_head(PLACEMENT_LOOKAHEAD).await?;
        let wanted: Vec<(String, Vec<String>)> = head
            .iter()
            .map(|p| (p.prompt_id.clone(), checkpoints_of(&p.prompt)))
            .filter(|(_, names)| !names.is_empty())
            .collect();
        // Prompts no longer at the head are forgotten.
        lock(&self.deferred).retain(|id, _| wanted.iter().any(|(w, _)| w == id));
        if wanted.is_empty() {
            return Ok((!head.is_empty(), Vec::new()));
        }
        let mine = self.loaded_checkpoints();
        let workers = self.store.workers(PLACEMENT_SEEN_MS).await?;
        let me = self.store.worker_id();
        let elsewhere = |names: &[String]| {
            workers.iter().any(|w| {
                w.worker_id != me
                    && w.running.is_none()
                    && names.iter().any(|n| w.checkpoints.contains(n))
            })
        };
        let now = Instant::now();
        let mut deferred = lock(&self.deferred);
        let mut skip = Vec::new();
        for (id, names) in wanted {
            if names.iter().any(|n| mine.contains(n)) || !elsewhere(&names) {
                continue;
            }
            let since = *deferred.entry(id.clone()).or_insert(now);
            if now.duration_since(since) < PLACEMENT_GRACE {
                skip.push(id);
            }
        }
        Ok((true, skip))
    }
}

/// Prompts passed over by placement, with when that began.
pub(super) type Deferred = HashMap<String, Instant>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_route_across_workers() {
        let cases = [
            (Route::Broadcast, Event::Status { queue_remaining: 3 }),
            (
                Route::Client(Some("c".into())),
                Event::Executing {
                    prompt_id: "p".into(),
                    node: Some("9".into()),
                },
            ),
            (
                Route::ClientOrBroadcast(None),
                Event::Progress {
                    prompt_id: "p".into(),
                    node: "3".into(),
                    value: 2,
                    max: 20,
                },
            ),
        ];
        for (route, event) in cases {
            let remote = to_remote(&Envelope {
                route: route.clone(),
                event: event.clone(),
            })
            .unwrap();
            let back = from_remote(&remote).unwrap();
            assert_eq!(back.route, route);
            assert_eq!(back.event.name(), event.name());
            assert_eq!(back.event.data(), event.data());
        }
        // Previews and events nobody gets stay here.
        let preview = Event::Preview {
            prompt_id: "p".into(),
            node: "3".into(),
            image: vec![1, 2],
            is_png: false,
        };
        assert!(to_remote(&Envelope {
            route: Route::ClientOrBroadcast(None),
            event: preview
        })
        .is_none());
        assert!(to_remote(&Envelope {
            route: Route::Client(None),
            event: Event::Status { queue_remaining: 0 }
        })
        .is_none());
    }

    #[test]
    fn batches_stay_small_and_keep_the_order() {
        let messages: Vec<Json> = (0..300)
            .map(|i| json!({"i": i, "pad": "x".repeat(40)}))
            .collect();
        let payloads = batches("w", messages);
        assert!(payloads.len() > 1);
        let mut seen = Vec::new();
        for payload in &payloads {
            assert!(payload.len() < 7900, "{}", payload.len());
            let batch: Json = serde_json::from_str(payload).unwrap();
            assert_eq!(batch["worker"], "w");
            seen.extend(
                batch["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["i"].clone()),
            );
        }
        assert_eq!(seen, (0..300).map(Json::from).collect::<Vec<_>>());
    }

    #[test]
    fn a_prompts_checkpoints_are_its_ckpt_names() {
        let prompt = json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
            "5": {"class_type": "CheckpointLoader", "inputs": {"ckpt_name": "a.ckpt", "config_name": "x"}},
            "6": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
            "7": {"class_type": "Foo", "inputs": {"ckpt_name": ["4", 0]}}
        });
        assert_eq!(checkpoints_of(&prompt), ["a.ckpt", "b.safetensors"]);
        assert!(checkpoints_of(&json!({})).is_empty());
    }
}
