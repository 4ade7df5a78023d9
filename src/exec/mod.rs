//! Execution: accepting prompts into the durable queue, the worker that runs them one at a time,
//! the output cache, events, interrupts and panic isolation.
//!
//! Invariant: nodes run only here, on blocking threads, never on the HTTP workers. A prompt is
//! committed to the store before its id is returned. Knows nothing of HTTP (`api` calls the methods
//! of `Executor` and forwards its `Envelope`s).

pub mod cache;
mod handoff;
pub mod run;
mod shared;

pub use shared::Audience;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::{mpsc, Notify};

use crate::engine::manager::ModelManager;
use crate::graph::spec::Freshness;
use crate::graph::validate::{coerced_prompt, compare_node_ids};
use crate::graph::workflow::WorkflowFormatError;
use crate::graph::{validate, NodeErrors, PromptError, Signature, Workflow};
use crate::nodes::Registry;
use crate::paths::DataDirs;
use crate::store::{Claimed, Lease, NewPrompt, QueueNumber, Queued, Store, StoreError};

pub use crate::wire::{Event, ExecutionErrorInfo};
pub use cache::{CachedOutput, EntryInfo, OutputCache};
pub use run::{NodeReport, NodeReportStatus, PromptReport};

/// Who should receive an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Every connected client (`status`).
    Broadcast,
    /// The submitting client only; dropped when the prompt has no client id (execution events).
    Client(Option<String>),
    /// The submitting client, or everyone when the prompt has no client id (progress, previews,
    /// `execution_interrupted`).
    ClientOrBroadcast(Option<String>),
}

/// One event, with where it goes.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub route: Route,
    pub event: Event,
}

/// Hands an event to whoever routes it to sockets, on the emitting thread.
pub type Deliver = Box<dyn Fn(&Envelope) + Send + Sync>;

/// Settings of the executor.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Byte budget of the output cache.
    pub cache_budget: usize,
    /// Write the prompt and workflow into saved PNGs.
    pub write_metadata: bool,
    /// Byte budget of loaded model weights kept between prompts.
    pub model_budget: usize,
    /// Where the models run (`engine::device`).
    pub device: candle_core::Device,
    /// The weights' dtype (`--dtype`); `None`: each file's own precision.
    pub dtype: Option<candle_core::DType>,
    /// Where the memory limit and what is available are read from.
    pub memory: crate::engine::memory::MemoryProbe,
    /// Load checkpoints beyond the model budget partially (always on for GPUs; see
    /// `engine::load::placement`).
    pub offload: bool,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            cache_budget: 4 << 30,
            write_metadata: true,
            model_budget: 16 << 30,
            device: candle_core::Device::Cpu,
            dtype: None,
            memory: Default::default(),
            offload: false,
        }
    }
}

/// A prompt to queue, as `POST /prompt` gives it.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub prompt: Json,
    pub extra_data: serde_json::Map<String, Json>,
    pub client_id: Option<String>,
    pub front: bool,
    pub number: Option<f64>,
    pub prompt_id: Option<String>,
    pub targets: Option<Vec<String>>,
}

/// A queued prompt.
#[derive(Debug)]
pub struct Submitted {
    pub prompt_id: String,
    pub number: f64,
    /// Errors of outputs that will not run (the others do).
    pub node_errors: Vec<NodeErrors>,
}

/// Why a prompt was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Format(#[from] WorkflowFormatError),
    #[error("prompt failed validation")]
    Invalid {
        failure: PromptError,
        node_errors: Vec<NodeErrors>,
    },
    #[error("prompt id '{0}' is already queued or running")]
    DuplicateId(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Storing the prompt panicked.
    #[error("storing the prompt crashed: {0}")]
    Crashed(String),
}

/// The executor and its queue; shared by the API and the worker task.
pub struct Executor {
    store: Store,
    registry: Arc<Registry>,
    dirs: Arc<DataDirs>,
    config: ExecConfig,
    cache: Mutex<OutputCache>,
    models: Arc<ModelManager>,
    last_signatures: Mutex<HashMap<String, Signature>>,
    last_report: Mutex<Option<PromptReport>>,
    events: mpsc::UnboundedSender<Envelope>,
    /// Where events go instead of `events`, when set ([`Executor::deliver_directly`]).
    direct: std::sync::OnceLock<Deliver>,
    interrupt: Arc<AtomicBool>,
    running: Mutex<Option<String>>,
    /// Cancels that arrived while a prompt was being claimed, applied as soon as it starts.
    cancel_requested: Mutex<std::collections::HashSet<String>>,
    /// The queue's pause: the flag itself alone on SQLite, a copy of the database's on a shared
    /// queue (kept by notifications; every claim reads the database's).
    paused: AtomicBool,
    /// Shutting down: this worker takes no new prompt.
    stopping: AtomicBool,
    /// On a shared queue: notifications from the other workers arrive (else idle workers poll
    /// fast).
    listening: AtomicBool,
    /// Model files this worker's prompts used lately, by folder and name (placement).
    recent_models: Mutex<Vec<shared::ModelFile>>,
    /// Prompts placement passes over, left to a better placed worker.
    deferred: Mutex<shared::Deferred>,
    wake: Notify,
    /// A prompt accepted while the worker is idle, handed straight to it.
    handoff: handoff::Handoff,
    /// Where this worker serves HTTP, as other workers list it (`GET /api/weft/workers`).
    address: Mutex<String>,
}

/// How often a worker on a shared queue (PostgreSQL) looks for work when it has none while it
/// hears nothing from the other workers (its listener is reconnecting), or while placement
/// passes prompts over.
const SHARED_POLL: Duration = Duration::from_millis(200);
/// How often it looks anyway when it does hear them (a new prompt wakes it): a safety net, and
/// the pace of its housekeeping (recovering dead workers' prompts, its heartbeat).
const SHARED_SAFETY_POLL: Duration = SHARED_HOUSEKEEPING;
/// How often an idle worker on a shared queue recovers prompts whose worker's lease ran out and
/// reports itself alive.
const SHARED_HOUSEKEEPING: Duration = Duration::from_secs(1);

/// A prompt running when the server stopped this many times in a row is not run again by itself.
const QUARANTINE_AFTER: i64 = 2;
/// The history `reason` of a quarantined prompt.
const QUARANTINE_REASON: &str =
    "quarantined: the server stopped while this prompt was running, twice in a row";

/// The `exception_message` of a quarantined prompt: what happened and how to run it again.
fn quarantine_message(prompt_id: &str, crashes: i64) -> String {
    format!(
        "the server stopped while this prompt was running at {crashes} restarts in a row (it may \
         have crashed the server: out of memory, an abort); it is not run again automatically. \
         POST /api/weft/queue/{prompt_id}/requeue queues it again"
    )
}

/// Recovers the prompts left running by a crash: all of them on SQLite (called at start), those
/// whose worker's lease ran out on a shared queue (at start and then regularly, by every worker).
async fn recover(store: &Store) -> Result<(), StoreError> {
    let recovery = store
        .recover_after_crash(QUARANTINE_AFTER, QUARANTINE_REASON, |id, crashes, now| {
            crate::wire::queue::quarantined(id, now, &quarantine_message(id, crashes))
        })
        .await?;
    for id in &recovery.requeued {
        tracing::warn!(prompt_id = %id, "prompt was running when its worker stopped; it runs again");
    }
    for id in &recovery.quarantined {
        tracing::error!(
            prompt_id = %id,
            "the server stopped while this prompt was running, {QUARANTINE_AFTER} times in a row; \
             quarantined (POST /api/weft/queue/{id}/requeue runs it again)"
        );
    }
    Ok(())
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (node panics are caught,
/// but a poisoned lock must never take the server down).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Executor {
    /// Builds the executor and recovers from an earlier crash: a prompt left running runs again,
    /// first, unless it was also running at the crash before (then it is quarantined). Returns the executor and the stream of its events.
    pub async fn start(
        store: Store,
        registry: Arc<Registry>,
        dirs: Arc<DataDirs>,
        config: ExecConfig,
    ) -> Result<(Arc<Executor>, mpsc::UnboundedReceiver<Envelope>), StoreError> {
        recover(&store).await?;
        let (events, receiver) = mpsc::unbounded_channel();
        let executor = Arc::new(Executor {
            store,
            registry,
            dirs,
            cache: Mutex::new(OutputCache::new(config.cache_budget)),
            models: Arc::new(
                ModelManager::with_probe(
                    config.model_budget,
                    config.device.clone(),
                    config.dtype,
                    config.memory.clone(),
                )
                .with_offload(config.offload || !config.device.is_cpu()),
            ),
            config,
            last_signatures: Mutex::new(HashMap::new()),
            last_report: Mutex::new(None),
            events,
            direct: std::sync::OnceLock::new(),
            interrupt: Arc::new(AtomicBool::new(false)),
            running: Mutex::new(None),
            cancel_requested: Mutex::new(Default::default()),
            paused: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            recent_models: Mutex::new(Vec::new()),
            deferred: Mutex::new(Default::default()),
            wake: Notify::new(),
            handoff: Default::default(),
            address: Mutex::new(String::new()),
        });
        // When memory is short the manager may ask for the cached outputs back: they hold model
        // handles (a loader's MODEL, CLIP, VAE) and tensors that keep memory alive.
        let weak = Arc::downgrade(&executor);
        executor.models.set_reclaimer(Box::new(move || {
            weak.upgrade().map_or(0, |exec| lock(&exec.cache).clear())
        }));
        Ok((executor, receiver))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the model manager holds, its budget and the memory figures now.
    pub fn model_stats(&self) -> crate::engine::manager::ModelStats {
        self.models.stats()
    }

    /// The device of the models and the weights' dtype asked for (`None`: as stored).
    pub fn compute(&self) -> (&candle_core::Device, Option<candle_core::DType>) {
        (self.models.device(), self.models.weights())
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn dirs(&self) -> &DataDirs {
        &self.dirs
    }

    fn emit(&self, route: Route, event: Event) {
        let envelope = Envelope { route, event };
        match self.direct.get() {
            Some(deliver) => deliver(&envelope),
            // The receiver only goes away when the server shuts down.
            None => {
                let _ = self.events.send(envelope);
            }
        }
    }

    /// Alone on a queue, events go from the thread that emits them straight to `deliver` (the
    /// sockets' hub) instead of through the channel [`Executor::start`] returned: one thread
    /// hand-off less for each (the channel's reader woken, then each socket's writer). On a
    /// shared queue they stay on the channel, which also publishes them to the other workers,
    /// in order; false there, and nothing changes.
    pub fn deliver_directly(&self, deliver: Deliver) -> bool {
        !self.store.is_shared() && self.direct.set(deliver).is_ok()
    }

    async fn emit_status(&self) {
        match self.store.queue_remaining().await {
            Ok(queue_remaining) => self.emit_queue_length(queue_remaining),
            Err(e) => tracing::error!("cannot count the queue: {e:#}"),
        }
    }

    /// `status` with a count a write just returned (the queue's hot path: accept, claim, end).
    fn emit_queue_length(&self, queue_remaining: i64) {
        self.emit(Route::Broadcast, Event::Status { queue_remaining });
    }

    /// Validates and queues a prompt. The prompt is committed before this returns.
    #[tracing::instrument(skip_all, fields(prompt_id))]
    pub async fn submit(
        self: &Arc<Self>,
        submission: Submission,
    ) -> Result<Submitted, SubmitError> {
        let workflow = Workflow::from_api_json(&submission.prompt)?;
        let this = Arc::clone(self);
        let targets = submission.targets.clone();
        let prompt = submission.prompt.clone();
        let validation = tokio::task::spawn_blocking(move || {
            let catalog = this.registry.catalog(&this.dirs);
            let validation = validate(&workflow, &catalog, targets.as_deref());
            let coerced = validation
                .plan
                .as_ref()
                .map(|plan| coerced_prompt(&prompt, plan));
            (validation, coerced)
        })
        .await
        .map_err(|e| SubmitError::Invalid {
            failure: PromptError::InvalidPrompt {
                message: "validation crashed".into(),
                details: e.to_string(),
            },
            node_errors: vec![],
        })?;
        let (validation, coerced) = validation;
        let (Some(plan), Some(coerced)) = (validation.plan, coerced) else {
            return Err(SubmitError::Invalid {
                failure: validation.failure.unwrap_or(PromptError::OutputsFailed),
                node_errors: validation.node_errors,
            });
        };

        let prompt_id = submission
            .prompt_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        tracing::Span::current().record("prompt_id", prompt_id.as_str());
        let number = match submission.number {
            Some(n) => QueueNumber::Given(n),
            None => QueueNumber::Next {
                front: submission.front,
            },
        };
        let mut extra_data = submission.extra_data;
        if let Some(client_id) = &submission.client_id {
            extra_data.insert("client_id".into(), Json::from(client_id.as_str()));
        }
        let item = NewPrompt {
            prompt_id: prompt_id.clone(),
            number,
            prompt: coerced,
            extra_data: Json::Object(extra_data),
            outputs_to_execute: plan.outputs().to_vec(),
            client_id: submission.client_id,
        };
        let outputs = plan.outputs().len();
        let handed_over = !self.store.is_shared()
            && !self.paused.load(Ordering::SeqCst)
            && !self.stopping.load(Ordering::SeqCst)
            && self.handoff.reserve();
        let queued = if handed_over {
            // On a task of its own: once stored as claimed, the prompt must reach the worker
            // even if the client goes away and this request is dropped.
            let this = Arc::clone(self);
            tokio::spawn(async move { this.hand_over(item, plan).await })
                .await
                .map_err(|e| {
                    self.handoff.release();
                    self.wake.notify_one();
                    SubmitError::Crashed(e.to_string())
                })?
        } else {
            self.store.enqueue(&item).await
        }
        .map_err(|e| match e {
            StoreError::AlreadyQueued(id) => SubmitError::DuplicateId(id),
            e => e.into(),
        })?;
        tracing::info!(
            number = queued.number,
            outputs,
            handed_over,
            "prompt queued"
        );
        if !handed_over {
            self.announce_work().await;
            self.emit_queue_length(queued.queue_remaining);
        }
        Ok(Submitted {
            prompt_id,
            number: queued.number,
            node_errors: validation.node_errors,
        })
    }

    /// Stores `item` claimed by this worker, which waits for it, and hands it over with `plan`;
    /// on failure the worker goes back to the queue.
    async fn hand_over(
        &self,
        item: NewPrompt,
        plan: crate::graph::Plan,
    ) -> Result<Queued, StoreError> {
        let stored = self.store.enqueue_claimed(item).await;
        let queued = match stored {
            Ok(claimed) => {
                let queued = Queued {
                    number: claimed.prompt.number,
                    queue_remaining: claimed.queue_remaining,
                };
                // The accept's `status` before any event of the run, as ComfyUI sends them.
                self.emit_queue_length(queued.queue_remaining);
                self.handoff.deliver(handoff::Ready { claimed, plan });
                Ok(queued)
            }
            Err(e) => {
                self.handoff.release();
                Err(e)
            }
        };
        self.wake.notify_one();
        queued
    }

    /// Starts the worker on a thread of its own with its own runtime, so it is independent of
    /// whichever runtime serves HTTP (and of that runtime shutting down mid-query).
    pub fn spawn_worker(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let this = Arc::clone(self);
        std::thread::Builder::new()
            .name("weft-worker".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(this.run_worker()),
                    Err(e) => tracing::error!("cannot start the worker runtime: {e}"),
                }
            })
    }

    /// Sets where this worker serves HTTP, for the list of workers.
    pub fn set_address(&self, address: String) {
        *lock(&self.address) = address;
    }

    /// Where this worker serves HTTP (empty before it listens).
    pub fn address(&self) -> String {
        lock(&self.address).clone()
    }

    /// A worker not heard from for this long is no longer listed: it reports every second when
    /// idle and at each lease renewal when running.
    pub fn worker_seen_within_ms(&self) -> i64 {
        (3 * self.store.lease_ms()).max(10_000)
    }

    /// On a shared queue: recovers prompts whose worker died, says this one is alive and reads
    /// the pause flag again (in case a notification was missed).
    async fn housekeeping(&self) {
        if let Err(e) = recover(&self.store).await {
            tracing::error!("cannot recover prompts of stopped workers: {e:#}");
        }
        self.report().await;
        self.refresh_pause().await;
    }

    /// The worker loop: runs queued prompts one at a time, forever.
    pub async fn run_worker(self: Arc<Self>) {
        let mut last_housekeeping: Option<std::time::Instant> = None;
        loop {
            if self.store.is_shared()
                && last_housekeeping.is_none_or(|t| t.elapsed() >= SHARED_HOUSEKEEPING)
            {
                self.housekeeping().await;
                last_housekeeping = Some(std::time::Instant::now());
            }
            if self.paused.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst) {
                self.wait_for_work(false).await;
                continue;
            }
            match self.handoff.next() {
                handoff::Next::Run(ready) => {
                    self.run_one(ready.claimed, Some(ready.plan)).await;
                    continue;
                }
                handoff::Next::Wait => {
                    self.wait_for_work(false).await;
                    continue;
                }
                handoff::Next::Claim => {}
            }
            let mut passed_over = Vec::new();
            if self.store.is_shared() {
                match self.placement().await {
                    Ok((false, _)) => {
                        self.wait_for_work(false).await;
                        continue;
                    }
                    Ok((true, skip)) => passed_over = skip,
                    Err(e) => tracing::warn!("cannot read the queue for placement: {e:#}"),
                }
            }
            let claimed = match self.store.claim_next_except(&passed_over).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::error!("cannot read the queue: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(claimed) = claimed else {
                if !self.store.is_shared() {
                    self.handoff.idle();
                }
                self.wait_for_work(!passed_over.is_empty()).await;
                continue;
            };
            self.run_one(claimed, None).await;
        }
    }

    /// Waits until woken (new work, a resume) or a poll interval passes; `soon` while prompts
    /// are passed over for placement, whose grace runs out by itself.
    async fn wait_for_work(&self, soon: bool) {
        // Alone on the queue, the timeout is a safety net only: every state change notifies.
        // Sharing it, other workers' changes arrive as notifications, and without them the
        // timeout is the poll interval.
        let timeout = if !self.store.is_shared() {
            Duration::from_secs(5)
        } else if soon || !self.listening.load(Ordering::SeqCst) {
            SHARED_POLL
        } else {
            SHARED_SAFETY_POLL
        };
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

    /// On a shared queue, while `prompt_id` runs: renews its lease a few times per lease, raises
    /// the interrupt another worker asked for, and stops the run if the lease was lost (the
    /// prompt was recovered and runs elsewhere). Ends when the returned handle is aborted.
    fn keep_lease(self: &Arc<Self>, prompt_id: &str) -> Option<tokio::task::JoinHandle<()>> {
        if !self.store.is_shared() {
            return None;
        }
        let this = Arc::clone(self);
        let prompt_id = prompt_id.to_owned();
        let every = Duration::from_millis((self.store.lease_ms() / 3).max(50) as u64);
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                this.report().await;
                match this.store.renew_lease(&prompt_id).await {
                    Ok(Lease::Held { interrupt: false }) => {}
                    Ok(Lease::Held { interrupt: true }) => {
                        this.interrupt.store(true, Ordering::SeqCst);
                    }
                    Ok(Lease::Lost) => {
                        tracing::error!(prompt_id = %prompt_id, "lease lost: the prompt was recovered by another worker; stopping it here");
                        this.interrupt.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(prompt_id = %prompt_id, "cannot renew the lease: {e:#}")
                    }
                }
            }
        }))
    }

    /// Runs a claimed prompt; `plan`, where its accept's validation is still fresh (handed over).
    async fn run_one(self: &Arc<Self>, claimed: Claimed, plan: Option<crate::graph::Plan>) {
        let row = claimed.prompt;
        let prompt_id = row.prompt_id.clone();
        let client = row.client_id.clone();
        *lock(&self.running) = Some(prompt_id.clone());
        let cancelled_while_claiming = lock(&self.cancel_requested).remove(&prompt_id);
        self.interrupt
            .store(cancelled_while_claiming, Ordering::SeqCst);
        let prompt = row.prompt.clone();
        // Busy now, for the others' placement (which only looks at workers holding models).
        let placed =
            self.store.is_shared() && (self.holds_models() || !self.models_of(&prompt).is_empty());
        if placed {
            self.report().await;
        }
        self.emit_queue_length(claimed.queue_remaining);

        let lease = self.keep_lease(&prompt_id);
        let span = tracing::info_span!("prompt", prompt_id = %prompt_id);
        let this = Arc::clone(self);
        let outcome =
            tokio::task::spawn_blocking(move || span.in_scope(|| run::execute(&this, &row, plan)))
                .await;
        if let Some(lease) = lease {
            lease.abort();
        }
        let outcome = outcome.unwrap_or_else(|e| run::Outcome::crashed(&prompt_id, &e.to_string()));

        let remaining = self
            .store
            .finish(
                &prompt_id,
                outcome.status,
                outcome.reason.as_deref(),
                &outcome.outputs,
                &Json::from(outcome.messages_json()),
                &outcome.meta,
            )
            .await;
        if let Err(e) = &remaining {
            tracing::error!(prompt_id = %prompt_id, "cannot record the result: {e:#}");
        }
        *lock(&self.running) = None;
        self.used_models(&prompt);
        if placed {
            // Idle again, with what it loaded.
            self.report().await;
        }
        match remaining {
            Ok(remaining) => self.emit_queue_length(remaining),
            Err(_) => self.emit_status().await,
        }
        self.emit(
            Route::Client(client),
            Event::Executing {
                prompt_id,
                node: None,
            },
        );
    }

    /// The id of the prompt being run.
    pub fn running_prompt(&self) -> Option<String> {
        lock(&self.running).clone()
    }

    /// Stops the running prompt at its next check. With an id, only if that prompt is running.
    /// Returns whether an interrupt was raised.
    pub fn interrupt(&self, prompt_id: Option<&str>) -> bool {
        let running = self.running_prompt();
        match (prompt_id, running) {
            (Some(wanted), Some(running)) if wanted == running => {
                self.interrupt.store(true, Ordering::SeqCst);
                true
            }
            (Some(_), _) => false,
            (None, running) => {
                self.interrupt.store(true, Ordering::SeqCst);
                running.is_some()
            }
        }
    }

    /// Interrupts a prompt wherever it runs: here at once, or on another worker sharing the
    /// queue as soon as it hears (a notification; at its next lease renewal at the latest).
    /// Without an id, the prompt running here.
    pub async fn interrupt_anywhere(&self, prompt_id: Option<&str>) -> Result<bool, StoreError> {
        if self.interrupt(prompt_id) {
            return Ok(true);
        }
        match prompt_id {
            Some(id) if self.store.is_shared() => self.request_interrupt_anywhere(id).await,
            _ => Ok(false),
        }
    }

    /// Cancels a pending prompt, or interrupts it if it is running (here or, on a shared queue,
    /// on another worker). False if it is neither.
    pub async fn cancel(&self, prompt_id: &str) -> Result<bool, StoreError> {
        if self.interrupt(Some(prompt_id)) {
            return Ok(true);
        }
        let cancelled = !self
            .store
            .cancel_pending(&[prompt_id.to_owned()])
            .await?
            .is_empty();
        if cancelled {
            self.emit_status().await;
            return Ok(true);
        }
        // Claimed by the worker but not started yet: interrupt it as soon as it starts.
        let claimed = self
            .store
            .running()
            .await?
            .iter()
            .any(|p| p.prompt_id == prompt_id);
        if claimed && self.store.is_shared() {
            // Running on another worker, or claimed here and not started: the flag in its row
            // reaches whichever worker runs it; ours for the second case.
            self.request_interrupt_anywhere(prompt_id).await?;
        }
        if claimed {
            lock(&self.cancel_requested).insert(prompt_id.to_owned());
            self.interrupt(Some(prompt_id));
        }
        Ok(claimed)
    }

    /// `POST /queue` `delete`: removes pending prompts.
    pub async fn delete_pending(&self, ids: &[String]) -> Result<(), StoreError> {
        self.store.cancel_pending(ids).await?;
        self.emit_status().await;
        Ok(())
    }

    /// `POST /queue` `clear`: removes every pending prompt.
    pub async fn clear_pending(&self) -> Result<(), StoreError> {
        self.store.cancel_all_pending().await?;
        self.emit_status().await;
        Ok(())
    }

    pub async fn move_to_front(&self, prompt_id: &str) -> Result<bool, StoreError> {
        self.store.move_to_front(prompt_id).await
    }

    /// Puts a finished prompt (for example one interrupted by a crash) back in the queue.
    pub async fn requeue(&self, prompt_id: &str) -> Result<Option<f64>, StoreError> {
        let number = self.store.requeue(prompt_id).await?;
        if number.is_some() {
            self.announce_work().await;
            self.emit_status().await;
        }
        Ok(number)
    }

    /// A clean shutdown: takes no new prompt, and puts the running one back in the queue so that
    /// it runs again at the next start without counting as a crash (see [`QUARANTINE_AFTER`]).
    pub async fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.store.sign_off().await {
            tracing::warn!("cannot remove this worker from the list: {e:#}");
        }
        match self.store.release_running().await {
            Ok(ids) => {
                for id in &ids {
                    tracing::info!(prompt_id = %id, "stopped while running; it runs again at the next start");
                }
                if !ids.is_empty() {
                    // On a shared queue another worker runs it now.
                    self.announce_work().await;
                }
            }
            Err(e) => tracing::error!("cannot put the running prompt back in the queue: {e:#}"),
        }
    }

    /// `POST /free`: `unload_models` drops loaded weights, `free_memory` also the output cache
    /// (which holds references to models).
    pub fn free(&self, unload_models: bool, free_memory: bool) {
        // The cache lets go first, so the models' memory is free when the manager returns it.
        if free_memory {
            lock(&self.cache).clear();
            lock(&self.last_signatures).clear();
        }
        if unload_models || free_memory {
            lock(&self.cache).drop_models();
            self.models.unload_all();
        }
    }

    /// The cache's entries and budget, and what the last prompt did node by node.
    pub fn cache_state(&self) -> (Vec<EntryInfo>, usize, usize, Option<PromptReport>) {
        let cache = lock(&self.cache);
        (
            cache.entries(),
            cache.used_bytes(),
            cache.budget_bytes(),
            lock(&self.last_report).clone(),
        )
    }

    /// Sorts node ids for display, numerically where they are numbers.
    pub fn sort_ids(ids: &mut [String]) {
        ids.sort_by(|a, b| compare_node_ids(a, b));
    }

    pub(crate) fn spec_of(&self, class_type: &str) -> &crate::graph::NodeSpec {
        self.registry
            .spec(class_type)
            .expect("planned nodes are registered")
    }

    pub(crate) fn node_impl(&self, class_type: &str) -> &dyn crate::nodes::Node {
        self.registry
            .node(class_type)
            .expect("planned nodes are registered")
    }

    /// Explains why a node was not found in the cache, comparing with its last run under the
    /// same node id.
    pub(crate) fn miss_reason(
        &self,
        freshness: Freshness,
        signature: &Signature,
        previous: Option<&Signature>,
    ) -> String {
        if freshness == Freshness::Always {
            return "never cached: the node re-runs every time".into();
        }
        if lock(&self.cache).was_evicted(&signature.key) {
            return "evicted from the cache to stay within its memory budget".into();
        }
        let Some(previous) = previous else {
            return "not computed before".into();
        };
        if previous.key == signature.key {
            return "cache was cleared since the last run".into();
        }
        let mut changes = Vec::new();
        if previous.freshness != signature.freshness {
            changes.push("the file it reads changed".to_owned());
        }
        for (name, digest) in &signature.inputs {
            match previous.inputs.iter().find(|(n, _)| n == name) {
                Some((_, old)) if old == digest => {}
                Some(_) => changes.push(format!("input '{name}' changed")),
                None => changes.push(format!("input '{name}' was added")),
            }
        }
        for (name, _) in &previous.inputs {
            if !signature.inputs.iter().any(|(n, _)| n == name) {
                changes.push(format!("input '{name}' was removed"));
            }
        }
        if changes.is_empty() {
            "the node class changed".into()
        } else {
            changes.join(", ")
        }
    }
}
