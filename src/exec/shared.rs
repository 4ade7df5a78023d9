//! Many workers on one PostgreSQL queue, beyond claiming: events, previews, wake-ups, pause and
//! placement.
//!
//! - Events: the worker running a prompt publishes its events on [`EVENTS`] (batched, a few per
//!   notification), every other worker relays them to its own sockets with the route they had,
//!   so a client gets the events of its prompts whichever worker it is connected to and `status`
//!   (queue_remaining) is right everywhere.
//! - Previews travel by reference in the same ordered stream: the image is kept in the database
//!   and the notification names its row, which a relaying worker reads only if one of its
//!   sockets takes it. Sampler step previews go out at most every [`PREVIEW_INTERVAL`], the
//!   newest replacing one still waiting (a slow database or fast steps drop previews, never queue
//!   them; sampling never waits on any of this); a waiting one goes before any other event of
//!   its prompt but progress, so it never lands on the next node. Output images
//!   (SaveImageWebsocket) all go.
//! - Wake-ups: a new, re-queued or released prompt and a resume are announced on [`QUEUE`]; idle
//!   workers wake at once and keep a slow poll only as a safety net.
//! - Pause: one flag in the database, read by every claim; [`QUEUE`] tells the workers.
//! - Interrupts: the flag in the prompt's row, read by its worker as it renews its lease, and a
//!   notification on [`QUEUE`] that it hears at once.
//! - Placement: a worker passes over a prompt while another live, idle worker holds more of the
//!   model files it names (those the model manager reports loaded: checkpoints and diffusion
//!   models, whichever input names them), for [`PLACEMENT_GRACE`] at most (so nothing waits
//!   longer).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

use super::{lock, Envelope, Executor, Route};
use crate::graph::spec::{ComboOptions, FileList, InputKind};
use crate::nodes::Registry;
use crate::store::{ModelNames, StoreError, WorkerReport};
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

/// Step previews are published at most this often (a worker runs one prompt at a time).
const PREVIEW_INTERVAL: Duration = Duration::from_millis(100);

/// Whether a preview sent on a route would reach one of this worker's sockets: another
/// worker's preview is read from the database only then.
pub type Audience = Arc<dyn Fn(&Route) -> bool + Send + Sync>;

/// How long a prompt is left to a better placed worker at most.
pub(super) const PLACEMENT_GRACE: Duration = Duration::from_secs(2);
/// How many prompts at the head of the queue placement looks at.
const PLACEMENT_LOOKAHEAD: i64 = 8;
/// A worker counts as live for placement if it reported within this long (idle workers report
/// every second).
const PLACEMENT_SEEN_MS: i64 = 3_000;

/// A model file a prompt names: its model folder and the name given.
pub(super) type ModelFile = (&'static str, String);

/// The model files a prompt names in constant inputs that list a model folder (`ckpt_name`,
/// `unet_name`, `vae_name`, …), as the node declarations say.
pub(super) fn models_of(registry: &Registry, prompt: &Json) -> Vec<ModelFile> {
    let mut files: Vec<ModelFile> = prompt
        .as_object()
        .into_iter()
        .flat_map(|nodes| nodes.values())
        .filter_map(|node| Some((node, registry.spec(node["class_type"].as_str()?)?)))
        .flat_map(|(node, spec)| {
            spec.inputs
                .iter()
                .filter_map(move |input| match input.kind {
                    InputKind::Combo {
                        options: ComboOptions::Files(FileList::Models(folder)),
                        ..
                    } => Some((folder, node["inputs"][input.name].as_str()?.to_owned())),
                    _ => None,
                })
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

/// How many of `files` a worker holding `loaded` has.
fn held(loaded: &ModelNames, files: &[ModelFile]) -> usize {
    files
        .iter()
        .filter(|(folder, name)| {
            loaded
                .get(*folder)
                .is_some_and(|names| names.contains(name))
        })
        .count()
}

/// An event as other workers relay it, or None for those that stay here (events for a prompt
/// without a client, which nobody gets). A preview's image is not in it: it is kept in the
/// database and the message gets its row's id as `image` ([`Executor::send_out`]).
fn to_remote(envelope: &Envelope) -> Option<Json> {
    if matches!(envelope.event, Event::Relayed { .. }) {
        return None;
    }
    let (route, client) = match &envelope.route {
        Route::Broadcast => ("all", None),
        Route::Client(Some(id)) => ("client", Some(id)),
        Route::Client(None) => return None,
        Route::ClientOrBroadcast(client) => ("client_or_all", client.as_ref()),
    };
    let mut message = json!({
        "route": route,
        "client": client,
        "type": envelope.event.name(),
        "data": envelope.event.data(),
    });
    if let Event::Preview { output, .. } = &envelope.event {
        message["output"] = Json::from(*output);
    }
    Some(message)
}

/// The route another worker emitted an event with.
fn remote_route(message: &Json) -> Option<Route> {
    let client = message["client"].as_str().map(str::to_owned);
    Some(match message["route"].as_str()? {
        "all" => Route::Broadcast,
        "client" => Route::Client(client),
        "client_or_all" => Route::ClientOrBroadcast(client),
        _ => return None,
    })
}

/// An event another worker published (not a preview), as an envelope for this worker's sockets.
fn from_remote(message: &Json) -> Option<Envelope> {
    Some(Envelope {
        route: remote_route(message)?,
        event: Event::Relayed {
            name: message["type"].as_str()?.to_owned(),
            data: message["data"].clone(),
        },
    })
}

/// A preview another worker published, with its image read back, as this worker's sockets
/// get their own previews (type 1 or 4 frames, per client).
fn preview_from_remote(message: &Json, route: Route, image: Vec<u8>) -> Option<Envelope> {
    let data = &message["data"];
    Some(Envelope {
        route,
        event: Event::Preview {
            prompt_id: data["prompt_id"].as_str()?.to_owned(),
            node: data["node_id"].as_str()?.to_owned(),
            image,
            is_png: data["image_type"] == "image/png",
            output: message["output"].as_bool().unwrap_or(false),
        },
    })
}

/// One of this worker's events to publish, with its preview image and prompt if it has one.
struct Outgoing {
    message: Json,
    image: Option<(String, Vec<u8>)>,
}

impl Outgoing {
    fn new(message: Json, event: &Event) -> Outgoing {
        let image = match event {
            Event::Preview {
                prompt_id, image, ..
            } => Some((prompt_id.clone(), image.clone())),
            _ => None,
        };
        Outgoing { message, image }
    }
}

/// The newest step preview not published yet, and when the last one was.
#[derive(Default)]
struct StepPreviews {
    waiting: Option<Outgoing>,
    last: Option<Instant>,
}

impl StepPreviews {
    /// When the waiting preview may go, if one waits.
    fn due(&self) -> Option<Instant> {
        self.waiting.as_ref()?;
        Some(
            self.last
                .map_or_else(Instant::now, |last| last + PREVIEW_INTERVAL),
        )
    }

    /// The waiting preview, now.
    fn take(&mut self) -> Option<Outgoing> {
        let preview = self.waiting.take()?;
        self.last = Some(Instant::now());
        Some(preview)
    }

    /// Adds `envelope` to what is published next, or, a step preview, makes it the one waiting
    /// (replacing an older one).
    fn queue(&mut self, envelope: &Envelope, outgoing: &mut Vec<Outgoing>) {
        let Some(message) = to_remote(envelope) else {
            return;
        };
        let item = Outgoing::new(message, &envelope.event);
        match envelope.event {
            Event::Preview { output: false, .. } => self.waiting = Some(item),
            Event::Progress { .. } => outgoing.push(item),
            // A client shows a plain preview frame on the node running when it arrives: a
            // waiting preview goes before any other event.
            _ => {
                outgoing.extend(self.take());
                outgoing.push(item);
            }
        }
    }

    /// The waiting preview, if its time has come.
    fn take_due(&mut self) -> Option<Outgoing> {
        if self.due()? <= Instant::now() {
            self.take()
        } else {
            None
        }
    }
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
    /// On a shared queue: publishes this worker's events for the others and, with `relay`
    /// (the worker serves sockets; who would take a preview), adds theirs to the stream;
    /// listens for queue changes. Returns the stream for this worker's sockets (unchanged on
    /// SQLite).
    pub fn share_events(
        self: &Arc<Self>,
        events: mpsc::UnboundedReceiver<Envelope>,
        relay: Option<Audience>,
    ) -> mpsc::UnboundedReceiver<Envelope> {
        if !self.store.is_shared() {
            return events;
        }
        let (out, stream) = mpsc::unbounded_channel();
        tokio::spawn(Arc::clone(self).publish(events, out.clone()));
        tokio::spawn(Arc::clone(self).listen(relay.map(|audience| (out, audience))));
        stream
    }

    /// Forwards this worker's events to its sockets and publishes them, in order, batching
    /// those that queued up during the last notification; step previews as [`StepPreviews`]
    /// lets them through.
    async fn publish(
        self: Arc<Self>,
        mut events: mpsc::UnboundedReceiver<Envelope>,
        out: mpsc::UnboundedSender<Envelope>,
    ) {
        let worker = self.store.worker_id().to_owned();
        let mut steps = StepPreviews::default();
        loop {
            let first = match steps.due() {
                // A step preview waits for its turn; it goes then unless an event comes first.
                Some(due) => match tokio::time::timeout_at(due.into(), events.recv()).await {
                    Ok(first) => first,
                    Err(_) => {
                        self.send_out(&worker, steps.take().into_iter().collect())
                            .await;
                        continue;
                    }
                },
                None => events.recv().await,
            };
            let Some(first) = first else { return };
            let mut outgoing = Vec::new();
            let mut next = Some(first);
            while let Some(envelope) = next {
                steps.queue(&envelope, &mut outgoing);
                // Gone only without sockets (--worker-only); publishing goes on.
                let _ = out.send(envelope);
                next = events.try_recv().ok();
            }
            outgoing.extend(steps.take_due());
            self.send_out(&worker, outgoing).await;
        }
    }

    /// Keeps the preview images of `outgoing` in the database, then publishes the events in
    /// order (a relaying worker reads an image when its notification arrives).
    async fn send_out(&self, worker: &str, outgoing: Vec<Outgoing>) {
        let mut messages = Vec::with_capacity(outgoing.len());
        for Outgoing { mut message, image } in outgoing {
            if let Some((prompt_id, image)) = image {
                match self.store.keep_preview(&prompt_id, &image).await {
                    Ok(Some(id)) => message["image"] = Json::from(id),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!("cannot keep a preview for the other workers: {e:#}");
                        continue;
                    }
                }
            }
            messages.push(message);
        }
        for payload in batches(worker, messages) {
            if let Err(e) = self.store.notify(EVENTS, &payload).await {
                tracing::warn!("cannot publish events to the other workers: {e:#}");
            }
        }
    }

    /// Another worker's event for this worker's sockets; a preview is read from the database
    /// only if a socket here takes it, and is gone once stale.
    async fn relayed(&self, message: &Json, audience: &Audience) -> Option<Envelope> {
        let Some(id) = message["image"].as_i64() else {
            return from_remote(message);
        };
        let route = remote_route(message)?;
        if !audience(&route) {
            return None;
        }
        match self.store.preview(id).await {
            Ok(Some((image, age_ms))) => {
                tracing::debug!(age_ms, "relaying another worker's preview");
                preview_from_remote(message, route, image)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("cannot read another worker's preview: {e:#}");
                None
            }
        }
    }

    /// Listens for queue changes and, with `relay`, other workers' events, reconnecting as
    /// needed; while it cannot, idle workers poll fast.
    async fn listen(self: Arc<Self>, relay: Option<(mpsc::UnboundedSender<Envelope>, Audience)>) {
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
            let Some((out, audience)) = &relay else {
                continue;
            };
            let Ok(batch) = serde_json::from_str::<Json>(&notification.payload) else {
                continue;
            };
            if batch["worker"] == worker.as_str() {
                continue; // Ours: already sent to our sockets.
            }
            for message in batch["events"].as_array().into_iter().flatten() {
                if let Some(envelope) = self.relayed(message, audience).await {
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

    /// The model files this worker holds loaded, by the names its prompts gave them: of those
    /// its prompts used lately, the ones the model manager reports loaded (checkpoints and
    /// diffusion models).
    fn loaded_models(&self) -> ModelNames {
        let loaded = self.models.loaded_checkpoints();
        let mut names = ModelNames::new();
        for (folder, name) in lock(&self.recent_models).iter() {
            if self
                .dirs
                .model_file(folder, name)
                .is_ok_and(|path| loaded.contains(&path))
            {
                names
                    .entry((*folder).to_owned())
                    .or_default()
                    .push(name.clone());
            }
        }
        names.values_mut().for_each(|list| list.sort());
        names
    }

    /// Whether this worker holds a model file a prompt named.
    pub(super) fn holds_models(&self) -> bool {
        !self.loaded_models().is_empty()
    }

    /// The model files `prompt` names.
    pub(super) fn models_of(&self, prompt: &Json) -> Vec<ModelFile> {
        models_of(&self.registry, prompt)
    }

    /// Remembers the model files a prompt used, for [`Executor::loaded_models`].
    pub(super) fn used_models(&self, prompt: &Json) {
        let mut recent = lock(&self.recent_models);
        for file in self.models_of(prompt) {
            recent.retain(|f| *f != file);
            recent.push(file);
        }
        let excess = recent.len().saturating_sub(32);
        recent.drain(..excess);
    }

    /// What this worker offers: its device, its model budget in bytes and the model files it
    /// holds loaded.
    pub fn offer(&self) -> (String, i64, ModelNames) {
        let device = match self.models.device().location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_owned(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        };
        (
            device,
            self.config.model_budget as i64,
            self.loaded_models(),
        )
    }

    /// Records this worker as alive, with what it runs and offers.
    pub(super) async fn report(&self) {
        let running = self.running_prompt();
        let address = self.address();
        let (device, memory_budget, models) = self.offer();
        let report = WorkerReport {
            address: &address,
            running: running.as_deref(),
            device: &device,
            memory_budget,
            models: &models,
        };
        if let Err(e) = self.store.heartbeat(&report).await {
            tracing::warn!("cannot record this worker: {e:#}");
        }
    }

    /// The prompts at the head of the queue this worker leaves, for now, to another: one of
    /// whose model files a live, idle worker holds more than this one. Each is left at most
    /// [`PLACEMENT_GRACE`] from the first time this worker passed it over. Also says whether
    /// anything is pending at all.
    pub(super) async fn placement(&self) -> Result<(bool, Vec<String>), StoreError> {
        let head = self.store.pending_head(PLACEMENT_LOOKAHEAD).await?;
        let wanted: Vec<(String, Vec<ModelFile>)> = head
            .iter()
            .map(|p| (p.prompt_id.clone(), self.models_of(&p.prompt)))
            .filter(|(_, files)| !files.is_empty())
            .collect();
        // Prompts no longer at the head are forgotten.
        lock(&self.deferred).retain(|id, _| wanted.iter().any(|(w, _)| w == id));
        if wanted.is_empty() {
            return Ok((!head.is_empty(), Vec::new()));
        }
        let mine = self.loaded_models();
        let workers = self.store.workers(PLACEMENT_SEEN_MS).await?;
        let me = self.store.worker_id();
        let better_elsewhere = |files: &[ModelFile]| {
            let here = held(&mine, files);
            workers
                .iter()
                .any(|w| w.worker_id != me && w.running.is_none() && held(&w.models, files) > here)
        };
        let now = Instant::now();
        let mut deferred = lock(&self.deferred);
        let mut skip = Vec::new();
        for (id, files) in wanted {
            if !better_elsewhere(&files) {
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

    fn preview(node: &str, image: Vec<u8>, output: bool) -> Event {
        Event::Preview {
            prompt_id: "p".into(),
            node: node.into(),
            image,
            is_png: true,
            output,
        }
    }

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
        // Events nobody gets stay here.
        assert!(to_remote(&Envelope {
            route: Route::Client(None),
            event: Event::Status { queue_remaining: 0 }
        })
        .is_none());
    }

    #[test]
    fn previews_come_back_as_previews_with_their_route_and_kind() {
        for output in [false, true] {
            let route = Route::ClientOrBroadcast(Some("c".into()));
            let message = to_remote(&Envelope {
                route: route.clone(),
                event: preview("3", vec![], output),
            })
            .unwrap();
            assert!(message.get("image").is_none(), "kept apart: {message}");
            let back =
                preview_from_remote(&message, remote_route(&message).unwrap(), vec![7, 8]).unwrap();
            assert_eq!(back.route, route);
            let Event::Preview {
                prompt_id,
                node,
                image,
                is_png,
                output: kind,
            } = back.event
            else {
                panic!("not a preview: {:?}", back.event);
            };
            assert_eq!(
                (prompt_id.as_str(), node.as_str(), image, is_png, kind),
                ("p", "3", vec![7, 8], true, output)
            );
        }
    }

    #[test]
    fn step_previews_are_coalesced_and_go_before_the_next_node() {
        let route = Route::ClientOrBroadcast(Some("c".into()));
        let envelope = |event: Event| Envelope {
            route: route.clone(),
            event,
        };
        let progress = |value| {
            envelope(Event::Progress {
                prompt_id: "p".into(),
                node: "3".into(),
                value,
                max: 9,
            })
        };
        let mut steps = StepPreviews::default();
        let mut outgoing = Vec::new();
        for step in 1..=3u8 {
            steps.queue(&progress(step.into()), &mut outgoing);
            steps.queue(&envelope(preview("3", vec![step], false)), &mut outgoing);
        }
        // Progress goes; of the step previews only the newest waits.
        assert_eq!(outgoing.len(), 3);
        assert_eq!(
            steps
                .waiting
                .as_ref()
                .and_then(|p| p.image.clone())
                .unwrap()
                .1,
            [3]
        );
        // Due at once the first time, then PREVIEW_INTERVAL after the last one sent.
        assert!(steps.due().unwrap() <= Instant::now());
        assert_eq!(steps.take_due().unwrap().image.unwrap().1, [3]);
        steps.queue(&envelope(preview("3", vec![4], false)), &mut outgoing);
        assert!(steps.take_due().is_none());
        // The next node's event brings the waiting preview out before it; output images all go.
        steps.queue(
            &envelope(Event::Executing {
                prompt_id: "p".into(),
                node: Some("9".into()),
            }),
            &mut outgoing,
        );
        for i in 5..=6 {
            steps.queue(&envelope(preview("9", vec![i], true)), &mut outgoing);
        }
        let kinds: Vec<String> = outgoing
            .iter()
            .map(|o| match &o.image {
                Some((_, image)) => format!("preview {}", image[0]),
                None => o.message["type"].as_str().unwrap().to_owned(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "progress",
                "progress",
                "progress",
                "preview 4",
                "executing",
                "preview 5",
                "preview 6"
            ]
        );
        assert!(steps.waiting.is_none());
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
    fn a_prompts_model_files_are_its_constant_model_folder_inputs() {
        let registry = Registry::with_test_nodes();
        let prompt = json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
            "5": {"class_type": "UNETLoader", "inputs": {"unet_name": "u.safetensors", "weight_dtype": "default"}},
            "6": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
            "7": {"class_type": "VAELoader", "inputs": {"vae_name": ["8", 0]}},
            "8": {"class_type": "Foo", "inputs": {"ckpt_name": "not a loader"}},
            "9": {"class_type": "KSampler", "inputs": {"sampler_name": "euler"}}
        });
        assert_eq!(
            models_of(&registry, &prompt),
            [
                ("checkpoints", "b.safetensors".to_owned()),
                ("diffusion_models", "u.safetensors".to_owned())
            ]
        );
        assert!(models_of(&registry, &json!({})).is_empty());
        let loaded = ModelNames::from([(
            "diffusion_models".to_owned(),
            vec!["u.safetensors".to_owned()],
        )]);
        assert_eq!(held(&loaded, &models_of(&registry, &prompt)), 1);
        assert_eq!(held(&ModelNames::new(), &models_of(&registry, &prompt)), 0);
    }
}
