//! Running one prompt: plan, cache walk, node calls in order, events and the history record
//! (`PromptRun`).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value as Json};

use crate::exec::cache::CachedOutput;
use crate::exec::{lock, Executor};
use crate::exec::{Event, ExecutionErrorInfo, Route};
use crate::graph::spec::{types_compatible, Freshness};
use crate::graph::{
    validate, CacheKey, ConstValue, Plan, PlanInput, PlanNode, Signature, Workflow,
};
use crate::nodes::{Inputs, NodeContext, NodeError, NodeOutput, Reporter, Ui, Value};
use crate::store::{now_ms, PromptRow, PromptStatus};
use crate::wire::errors::{exception_type, PANIC, VALIDATION_ERROR};
use crate::wire::queue::{executor_crashed, node_meta};

/// How many node signatures are kept to explain cache misses.
const MAX_REMEMBERED_SIGNATURES: usize = 10_000;

/// How a prompt ended, ready to store.
pub(crate) struct Outcome {
    pub status: PromptStatus,
    pub reason: Option<String>,
    pub outputs: Json,
    pub messages: Vec<Json>,
    pub meta: Json,
}

impl Outcome {
    /// The worker thread itself failed (it should not: node panics are caught).
    pub fn crashed(prompt_id: &str, why: &str) -> Outcome {
        Outcome {
            status: PromptStatus::Failed,
            reason: Some(format!("the executor crashed: {why}")),
            outputs: json!({}),
            messages: vec![executor_crashed(prompt_id, why)],
            meta: json!({}),
        }
    }

    pub fn messages_json(&self) -> Vec<Json> {
        self.messages.clone()
    }
}

/// What happened to one node in the last prompt (`GET /api/weft/cache`).
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub node_id: String,
    pub class_type: &'static str,
    pub status: NodeReportStatus,
    pub reason: String,
    pub key: String,
    pub millis: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeReportStatus {
    Cached,
    Executed,
    Failed,
    NotRun,
}

impl NodeReportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeReportStatus::Cached => "cached",
            NodeReportStatus::Executed => "executed",
            NodeReportStatus::Failed => "failed",
            NodeReportStatus::NotRun => "not_run",
        }
    }
}

/// The per-node report of one prompt.
impl NodeReport {
    fn new(
        node: &PlanNode,
        signature: &Signature,
        status: NodeReportStatus,
        reason: impl Into<String>,
        millis: Option<f64>,
    ) -> NodeReport {
        NodeReport {
            node_id: node.id.clone(),
            class_type: node.class_type,
            status,
            reason: reason.into(),
            key: signature.key.short_hex(),
            millis,
        }
    }

    fn failed(node: &PlanNode, signature: &Signature, reason: &str, millis: f64) -> NodeReport {
        Self::new(
            node,
            signature,
            NodeReportStatus::Failed,
            reason,
            Some(millis),
        )
    }
}

#[derive(Debug, Clone)]
pub struct PromptReport {
    pub prompt_id: String,
    pub nodes: Vec<NodeReport>,
}

struct EventReporter {
    executor: Arc<Executor>,
    prompt_id: String,
    client: Option<String>,
}

impl Reporter for EventReporter {
    fn progress(&self, node_id: &str, value: u64, max: u64) {
        self.executor.emit(
            Route::ClientOrBroadcast(self.client.clone()),
            Event::Progress {
                prompt_id: self.prompt_id.clone(),
                node: node_id.to_owned(),
                value,
                max,
            },
        );
    }

    fn preview(&self, node_id: &str, image: Vec<u8>, is_png: bool) {
        self.send_image(node_id, image, is_png, false);
    }

    fn output_image(&self, node_id: &str, png: Vec<u8>) {
        self.send_image(node_id, png, true, true);
    }
}

impl EventReporter {
    fn send_image(&self, node_id: &str, image: Vec<u8>, is_png: bool, output: bool) {
        self.executor.emit(
            Route::ClientOrBroadcast(self.client.clone()),
            Event::Preview {
                prompt_id: self.prompt_id.clone(),
                node: node_id.to_owned(),
                image,
                is_png,
                output,
            },
        );
    }
}

enum Stop {
    Failed(Box<ExecutionErrorInfo>),
    Interrupted {
        node_id: Option<String>,
        node_type: Option<String>,
    },
}

impl Stop {
    fn interrupted_at(node: &PlanNode) -> Stop {
        Stop::Interrupted {
            node_id: Some(node.id.clone()),
            node_type: Some(node.class_type.to_owned()),
        }
    }
}

/// Runs one claimed prompt on the current (blocking) thread; `plan`, where its accept's
/// validation may stand for the run's own.
pub(crate) fn execute(exec: &Arc<Executor>, row: &PromptRow, plan: Option<Plan>) -> Outcome {
    let mut run = PromptRun {
        exec,
        row,
        accepted_plan: plan,
        prompt: Arc::new(row.prompt.clone()),
        extra_pnginfo: row.extra_data.get("extra_pnginfo").cloned().map(Arc::new),
        reporter: Arc::new(EventReporter {
            executor: Arc::clone(exec),
            prompt_id: row.prompt_id.clone(),
            client: row.client_id.clone(),
        }),
        png_text: Arc::default(),
        messages: Vec::new(),
        outputs: Map::new(),
        meta: Map::new(),
        executed: Vec::new(),
        report: Vec::new(),
    };
    run.send(
        Event::ExecutionStart {
            prompt_id: row.prompt_id.clone(),
            timestamp: now_ms(),
        },
        true,
    );
    let result = run.run();
    run.finish(result)
}

/// One prompt's run, in named steps: [`PromptRun::plan`] (validate again),
/// [`PromptRun::freshness`] and the plan's signatures, the [`CacheWalk`], then per node
/// [`PromptRun::replay`] (cached), [`PromptRun::call`] (run) and [`PromptRun::record`], with
/// [`Values`] holding what later nodes still read; [`PromptRun::remember`] keeps what explains
/// the next run's cache misses.
struct PromptRun<'a> {
    exec: &'a Arc<Executor>,
    row: &'a PromptRow,
    /// The plan the prompt's accept validated, where the prompt was handed straight over.
    accepted_plan: Option<Plan>,
    /// What every node's context shares: the prompt (saved into images), the workflow to embed,
    /// where progress goes.
    prompt: Arc<Json>,
    extra_pnginfo: Option<Arc<Json>>,
    reporter: Arc<dyn Reporter>,
    png_text: Arc<std::sync::OnceLock<Vec<(String, String)>>>,
    /// The history's `status.messages`.
    messages: Vec<Json>,
    /// The history's `outputs` and `meta`, by node id.
    outputs: Map<String, Json>,
    meta: Map<String, Json>,
    /// Nodes that ran, in order (`execution_error`'s and `execution_interrupted`'s `executed`).
    executed: Vec<String>,
    /// `/api/weft/cache`'s explanation of this prompt.
    report: Vec<NodeReport>,
}

impl PromptRun<'_> {
    fn prompt_id(&self) -> &str {
        &self.row.prompt_id
    }

    /// Sends `event` to the prompt's client, and keeps it in the history when `record`.
    fn send(&mut self, event: Event, record: bool) {
        if record {
            self.messages.push(event.history_message());
        }
        self.exec
            .emit(Route::Client(self.row.client_id.clone()), event);
    }

    fn run(&mut self) -> Result<(), Stop> {
        let plan = self.plan()?;
        let freshness = self.freshness(&plan)?;
        let signatures = plan.signatures(&freshness);
        let walk = {
            let cache = lock(&self.exec.cache);
            CacheWalk::new(&plan, &signatures, |key| cache.contains(key))
        };
        self.send(
            Event::ExecutionCached {
                prompt_id: self.prompt_id().to_owned(),
                nodes: walk.cached_ids.clone(),
                timestamp: now_ms(),
            },
            true,
        );
        // Cached outputs are taken now: a node that runs first may need memory, and the manager
        // may then empty the cache.
        let cached = {
            let mut cache = lock(&self.exec.cache);
            signatures
                .iter()
                .zip(&walk.use_cache)
                .map(|(s, &used)| if used { cache.get(&s.key) } else { None })
                .collect()
        };
        let mut values = Values::new(&plan, &walk.to_run, cached);
        let previous = self.previous_signatures(&plan);
        let result = (|| {
            for (i, node) in plan.nodes().iter().enumerate() {
                let signature = &signatures[i];
                if walk.use_cache[i] {
                    self.replay(node, signature, values.get(i))?;
                } else if walk.to_run[i] {
                    let reason = self.exec.miss_reason(
                        self.exec.spec_of(node.class_type).freshness,
                        signature,
                        previous.get(&node.id),
                    );
                    let inputs = values.inputs(node);
                    let (output, millis) = self.call(node, signature, inputs)?;
                    let output = self.record(node, signature, output, reason, millis);
                    values.store(&plan, i, output);
                } else {
                    self.report.push(NodeReport::new(
                        node,
                        signature,
                        NodeReportStatus::NotRun,
                        "only feeds nodes whose outputs were cached",
                        None,
                    ));
                }
            }
            Ok(())
        })();
        self.remember(&plan, signatures);
        result
    }

    /// Validates the stored prompt again (files may have changed since it was queued), unless it
    /// was handed over straight from its accept.
    fn plan(&mut self) -> Result<Plan, Stop> {
        if let Some(plan) = self.accepted_plan.take() {
            return Ok(plan);
        }
        let row = self.row;
        let fail = |node_id: &str, node_type: &str, message: String| {
            Stop::Failed(Box::new(ExecutionErrorInfo {
                prompt_id: row.prompt_id.clone(),
                node_id: node_id.to_owned(),
                node_type: node_type.to_owned(),
                executed: vec![],
                exception_message: self.exec.dirs.redact(&message),
                exception_type: VALIDATION_ERROR.into(),
                traceback: vec![],
                current_inputs: json!({}),
                current_outputs: vec![],
                timestamp: now_ms(),
            }))
        };
        let workflow =
            Workflow::from_api_json(&row.prompt).map_err(|e| fail("", "", e.to_string()))?;
        let catalog = self.exec.registry.catalog(&self.exec.dirs);
        let validation = validate(&workflow, &catalog, Some(&row.outputs_to_execute));
        if let Some(errors) = validation.node_errors.first() {
            let first = errors
                .errors
                .first()
                .map(|e| format!("{}: {}", e.message, e.details))
                .unwrap_or_default();
            return Err(fail(
                &errors.node_id,
                &errors.class_type,
                format!("no longer valid: {first}"),
            ));
        }
        validation.plan.ok_or_else(|| {
            let message = match validation.failure {
                Some(crate::graph::PromptError::InvalidPrompt { message, .. }) => message,
                _ => "prompt has no outputs".into(),
            };
            fail("", "", message)
        })
    }

    /// Freshness tokens for the signatures: file fingerprints for nodes that read files, a unique
    /// token for nodes never cached, nothing for pure nodes.
    fn freshness(&self, plan: &Plan) -> Result<Vec<Option<String>>, Stop> {
        plan.nodes()
            .iter()
            .map(|node| match self.exec.spec_of(node.class_type).freshness {
                Freshness::Pure => Ok(None),
                Freshness::Always => Ok(Some(uuid::Uuid::new_v4().to_string())),
                Freshness::ReadsFiles => {
                    let constants: Vec<(String, ConstValue)> = node
                        .inputs
                        .iter()
                        .filter_map(|(n, i)| match i {
                            PlanInput::Const(c) => Some((n.clone(), c.clone())),
                            PlanInput::Link { .. } => None,
                        })
                        .collect();
                    self.exec
                        .node_impl(node.class_type)
                        .fingerprint(&self.exec.dirs, &constants)
                        .map(Some)
                        .map_err(|e| self.failure(node, &e, Json::Null))
                }
            })
            .collect()
    }

    /// The last signatures of this plan's node ids (only those are looked up, so only those are
    /// copied).
    fn previous_signatures(&self, plan: &Plan) -> HashMap<String, Signature> {
        let last = lock(&self.exec.last_signatures);
        plan.nodes()
            .iter()
            .filter_map(|n| last.get(&n.id).map(|s| (n.id.clone(), s.clone())))
            .collect()
    }

    /// A node whose outputs come from the cache: its UI is sent and recorded again, as ComfyUI
    /// does.
    fn replay(
        &mut self,
        node: &PlanNode,
        signature: &Signature,
        cached: Option<&CachedOutput>,
    ) -> Result<(), Stop> {
        let Some(cached) = cached else {
            // Freed between the lookup and now (another prompt cannot run meanwhile, but `/free`
            // can): a failure rather than a guess.
            let error = NodeError::Failed(
                "cached output was freed while the prompt ran; queue it again".into(),
            );
            return Err(self.failure(node, &error, Json::Null));
        };
        if self.exec.spec_of(node.class_type).output_node {
            let ui = cached
                .ui
                .as_ref()
                .map(|ui| serde_json::to_value(ui).unwrap_or(Json::Null));
            if let Some(ui) = &ui {
                self.outputs.insert(node.id.clone(), ui.clone());
                self.meta.insert(node.id.clone(), node_meta(&node.id));
            }
            self.send(
                Event::Executed {
                    prompt_id: self.prompt_id().to_owned(),
                    node: node.id.clone(),
                    output: ui.unwrap_or(Json::Null),
                },
                false,
            );
        }
        self.report.push(NodeReport::new(
            node,
            signature,
            NodeReportStatus::Cached,
            "same class, inputs and upstream as a cached result",
            None,
        ));
        Ok(())
    }

    /// Runs a node after checking for an interrupt: once, or once per element when list inputs
    /// feed a node that takes single values ([`map_over_lists`]), the results merged as ComfyUI's
    /// `merge_result_data` does ([`merge_outputs`]). Returns the checked output and how long it
    /// took.
    fn call(
        &mut self,
        node: &PlanNode,
        signature: &Signature,
        inputs: Inputs,
    ) -> Result<(NodeOutput, f64), Stop> {
        if self
            .exec
            .interrupt
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(Stop::interrupted_at(node));
        }
        self.send(
            Event::Executing {
                prompt_id: self.prompt_id().to_owned(),
                node: Some(node.id.clone()),
            },
            false,
        );
        let spec = self.exec.spec_of(node.class_type);
        let runs =
            map_over_lists(spec, inputs).map_err(|error| self.failure(node, &error, Json::Null))?;
        let mut outputs = Vec::with_capacity(runs.len());
        let mut millis = 0.0;
        for (index, inputs) in runs.iter().enumerate() {
            if index > 0
                && self
                    .exec
                    .interrupt
                    .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(Stop::interrupted_at(node));
            }
            let (output, run_millis) = self.call_once(node, signature, inputs)?;
            outputs.push(output);
            millis += run_millis;
        }
        Ok((merge_outputs(spec, outputs), millis))
    }

    /// One call of a node's `run` under `catch_unwind`, with its outputs checked.
    fn call_once(
        &mut self,
        node: &PlanNode,
        signature: &Signature,
        inputs: &Inputs,
    ) -> Result<(NodeOutput, f64), Stop> {
        let current_inputs = || {
            Json::Object(
                inputs
                    .iter()
                    .map(|(n, v)| (n.to_owned(), Json::Array(vec![v.summary()])))
                    .collect(),
            )
        };
        let ctx = NodeContext {
            node_id: node.id.clone(),
            prompt_id: self.prompt_id().to_owned(),
            dirs: Arc::clone(&self.exec.dirs),
            prompt: Arc::clone(&self.prompt),
            extra_pnginfo: self.extra_pnginfo.clone(),
            reporter: Arc::clone(&self.reporter),
            interrupt: Arc::clone(&self.exec.interrupt),
            write_metadata: self.exec.config.write_metadata,
            models: Arc::clone(&self.exec.models),
            png_text: Arc::clone(&self.png_text),
        };
        let node_impl = self.exec.node_impl(node.class_type);
        let span = tracing::info_span!("node", node_id = %node.id, class_type = node.class_type);
        let started = Instant::now();
        let result =
            span.in_scope(|| catch_unwind(AssertUnwindSafe(|| node_impl.run(&ctx, inputs))));
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        let output = match result {
            Ok(Ok(output)) => output,
            Ok(Err(NodeError::Interrupted)) => return Err(Stop::interrupted_at(node)),
            Ok(Err(error)) => {
                self.report.push(NodeReport::failed(
                    node,
                    signature,
                    &self.exec.dirs.redact(&error.to_string()),
                    millis,
                ));
                return Err(self.failure(node, &error, current_inputs()));
            }
            Err(panic) => {
                let message = panic_message(&panic);
                let error = NodeError::Failed(format!("node panicked: {message}"));
                self.report.push(NodeReport::failed(
                    node,
                    signature,
                    &self.exec.dirs.redact(&message),
                    millis,
                ));
                let mut stop = self.failure(node, &error, current_inputs());
                if let Stop::Failed(info) = &mut stop {
                    info.exception_type = PANIC.into();
                }
                return Err(stop);
            }
        };
        if let Err(message) = check_outputs(self.exec.spec_of(node.class_type), &output.values) {
            return Err(self.failure(node, &NodeError::Failed(message), current_inputs()));
        }
        Ok((output, millis))
    }

    /// Records a node that ran: its saved images in the store, its UI in the history and on the
    /// socket, its output in the cache (unless it is never cached) and in the report.
    fn record(
        &mut self,
        node: &PlanNode,
        signature: &Signature,
        output: NodeOutput,
        reason: String,
        millis: f64,
    ) -> CachedOutput {
        self.executed.push(node.id.clone());
        let cached = CachedOutput {
            values: Arc::new(output.values),
            ui: output.ui,
        };
        if let Some(ui) = &cached.ui {
            for image in &ui.images {
                let record = self.exec.store.record_image(
                    self.prompt_id(),
                    &node.id,
                    &image.filename,
                    &image.subfolder,
                    &image.folder_type,
                );
                if let Err(e) = tokio::runtime::Handle::current().block_on(record) {
                    tracing::error!("cannot record image {}: {e:#}", image.filename);
                }
            }
            let ui_json = serde_json::to_value(ui).unwrap_or(Json::Null);
            self.outputs.insert(node.id.clone(), ui_json.clone());
            self.meta.insert(node.id.clone(), node_meta(&node.id));
            self.send(
                Event::Executed {
                    prompt_id: self.prompt_id().to_owned(),
                    node: node.id.clone(),
                    output: ui_json,
                },
                false,
            );
        }
        if self.exec.spec_of(node.class_type).freshness != Freshness::Always {
            lock(&self.exec.cache).insert(signature.key, cached.clone(), node.class_type, &node.id);
        }
        self.report.push(NodeReport::new(
            node,
            signature,
            NodeReportStatus::Executed,
            reason,
            Some(millis),
        ));
        cached
    }

    /// Keeps this prompt's signatures (to explain the next run's misses) and its report.
    fn remember(&mut self, plan: &Plan, signatures: Vec<Signature>) {
        let mut last = lock(&self.exec.last_signatures);
        // Clients may use fresh node ids on every prompt; keep the memory of past runs bounded.
        if last.len() > MAX_REMEMBERED_SIGNATURES {
            last.clear();
        }
        for (node, signature) in plan.nodes().iter().zip(signatures) {
            last.insert(node.id.clone(), signature);
        }
        *lock(&self.exec.last_report) = Some(PromptReport {
            prompt_id: self.prompt_id().to_owned(),
            nodes: std::mem::take(&mut self.report),
        });
    }

    /// A node's failure as `execution_error` reports it, with the error's causes as traceback.
    /// Paths in the messages are shown relative to their folders ([`DataDirs::redact`]): the
    /// engine's errors know only absolute paths.
    fn failure(&self, node: &PlanNode, error: &NodeError, current_inputs: Json) -> Stop {
        let dirs = &self.exec.dirs;
        let mut traceback = vec![dirs.redact(&error.to_string())];
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            traceback.push(dirs.redact(&cause.to_string()));
            source = cause.source();
        }
        Stop::Failed(Box::new(ExecutionErrorInfo {
            prompt_id: self.prompt_id().to_owned(),
            node_id: node.id.clone(),
            node_type: node.class_type.to_owned(),
            executed: vec![],
            exception_message: dirs.redact(&error.to_string()),
            exception_type: exception_type(error).to_owned(),
            traceback,
            current_inputs,
            current_outputs: vec![],
            timestamp: now_ms(),
        }))
    }

    /// The last event and the history record of how the prompt ended.
    fn finish(mut self, result: Result<(), Stop>) -> Outcome {
        let prompt_id = self.prompt_id().to_owned();
        let (status, reason) = match result {
            Ok(()) => {
                self.send(
                    Event::ExecutionSuccess {
                        prompt_id,
                        timestamp: now_ms(),
                    },
                    true,
                );
                (PromptStatus::Done, None)
            }
            Err(Stop::Failed(mut info)) => {
                info.executed = self.executed.clone();
                let reason = format!(
                    "node {} ({}) failed: {}",
                    info.node_id, info.node_type, info.exception_message
                );
                tracing::warn!(node_id = %info.node_id, "{reason}");
                self.send(Event::ExecutionError(info), true);
                (PromptStatus::Failed, Some(reason))
            }
            Err(Stop::Interrupted { node_id, node_type }) => {
                let event = Event::ExecutionInterrupted {
                    prompt_id,
                    node_id,
                    node_type,
                    executed: self.executed.clone(),
                    timestamp: now_ms(),
                };
                self.messages.push(event.history_message());
                self.exec
                    .emit(Route::ClientOrBroadcast(self.row.client_id.clone()), event);
                (
                    PromptStatus::Interrupted,
                    Some("interrupted on request".to_owned()),
                )
            }
        };
        Outcome {
            status,
            reason,
            outputs: Json::Object(self.outputs),
            messages: self.messages,
            meta: Json::Object(self.meta),
        }
    }
}

/// Which nodes' outputs come from the cache and which must run: a walk up from the outputs that
/// stops at cached nodes, so a cached node's ancestors neither run nor are read.
#[derive(Debug, PartialEq, Eq)]
struct CacheWalk {
    /// Every node of the plan in the cache, sorted as ComfyUI sorts ids (`execution_cached`).
    cached_ids: Vec<String>,
    /// By plan position: the output is taken from the cache.
    use_cache: Vec<bool>,
    /// By plan position: the node runs.
    to_run: Vec<bool>,
}

impl CacheWalk {
    fn new(plan: &Plan, signatures: &[Signature], cached: impl Fn(&CacheKey) -> bool) -> Self {
        let nodes = plan.nodes();
        let mut cached_ids: Vec<String> = nodes
            .iter()
            .zip(signatures)
            .filter(|(_, s)| cached(&s.key))
            .map(|(n, _)| n.id.clone())
            .collect();
        Executor::sort_ids(&mut cached_ids);
        let mut use_cache = vec![false; nodes.len()];
        let mut to_run = vec![false; nodes.len()];
        let mut stack: Vec<usize> = plan
            .outputs()
            .iter()
            .filter_map(|id| plan.index_of(id))
            .collect();
        while let Some(i) = stack.pop() {
            if use_cache[i] || to_run[i] {
                continue;
            }
            if cached(&signatures[i].key) {
                use_cache[i] = true;
            } else {
                to_run[i] = true;
                stack.extend(parents(&nodes[i]));
            }
        }
        CacheWalk {
            cached_ids,
            use_cache,
            to_run,
        }
    }
}

/// The values of a running prompt by plan position, each let go as soon as no node left to run
/// reads it (the output cache may keep it), so that when memory is short the manager can unload
/// a model the rest of the prompt no longer needs, such as the SDXL base before the refiner loads.
struct Values {
    results: Vec<Option<CachedOutput>>,
    /// How many nodes still to run read each node's outputs.
    readers: Vec<usize>,
}

impl Values {
    /// `cached`: the outputs taken from the cache, by plan position.
    fn new(plan: &Plan, to_run: &[bool], cached: Vec<Option<CachedOutput>>) -> Self {
        let mut readers = vec![0usize; plan.nodes().len()];
        for (node, _) in plan.nodes().iter().zip(to_run).filter(|(_, &run)| run) {
            for j in parents(node) {
                readers[j] += 1;
            }
        }
        Values {
            results: cached,
            readers,
        }
    }

    fn get(&self, i: usize) -> Option<&CachedOutput> {
        self.results[i].as_ref()
    }

    /// `node`'s inputs: constants, and its parents' outputs (which run before it).
    fn inputs(&self, node: &PlanNode) -> Inputs {
        Inputs::new(
            node.inputs
                .iter()
                .map(|(name, input)| {
                    let value = match input {
                        PlanInput::Const(c) => Value::from_const(c),
                        PlanInput::Link { node: j, slot } => self.results[*j]
                            .as_ref()
                            .and_then(|r| r.values.get(*slot).cloned())
                            .expect(
                                "parents run before children and produced their declared outputs",
                            ),
                    };
                    (name.clone(), value)
                })
                .collect(),
        )
    }

    /// Keeps the output of the node at `i`, which has run, and lets go of what no node left to
    /// run reads: its parents', and its own when nothing reads it.
    fn store(&mut self, plan: &Plan, i: usize, output: CachedOutput) {
        self.results[i] = Some(output);
        for j in parents(&plan.nodes()[i]).chain([i]) {
            if j != i {
                self.readers[j] -= 1;
            }
            if self.readers[j] == 0 {
                self.results[j] = None;
            }
        }
    }
}

/// The plan positions of the nodes whose outputs `node` reads, once per link.
fn parents(node: &PlanNode) -> impl Iterator<Item = usize> + '_ {
    node.inputs.iter().filter_map(|(_, input)| match input {
        PlanInput::Link { node, .. } => Some(*node),
        PlanInput::Const(_) => None,
    })
}

/// The calls a node makes for `inputs` (ComfyUI's `map_node_over_list`): a node that declares
/// `input_is_list` runs once with the lists; any other node runs once per element of its longest
/// list input, a shorter list giving its last element to the later calls, a plain value the same
/// value to every call.
fn map_over_lists(spec: &crate::graph::NodeSpec, inputs: Inputs) -> Result<Vec<Inputs>, NodeError> {
    if spec.input_is_list || !inputs.iter().any(|(_, v)| matches!(v, Value::List(_))) {
        return Ok(vec![inputs]);
    }
    if let Some((name, _)) = inputs.iter().find(|(_, v)| v.elements().is_empty()) {
        return Err(NodeError::input(name, "is an empty list"));
    }
    let runs = inputs
        .iter()
        .map(|(_, v)| v.elements().len())
        .max()
        .unwrap_or(1);
    Ok((0..runs)
        .map(|i| {
            Inputs::new(
                inputs
                    .iter()
                    .map(|(name, v)| {
                        let items = v.elements();
                        (name.to_owned(), items[i.min(items.len() - 1)].clone())
                    })
                    .collect(),
            )
        })
        .collect())
}

/// One output from the calls of [`map_over_lists`] (ComfyUI's `merge_result_data`): each slot a
/// list of one value per call, or for an `output_is_list` slot the calls' lists joined; a list of
/// one is the value itself. The calls' UIs are joined in order.
fn merge_outputs(spec: &crate::graph::NodeSpec, mut outputs: Vec<NodeOutput>) -> NodeOutput {
    if outputs.len() == 1 && !spec.output_is_list.iter().any(|&list| list) {
        return outputs.pop().expect("one output");
    }
    let values = (0..spec.outputs.len())
        .map(|slot| {
            let items = outputs
                .iter()
                .filter_map(|o| o.values.get(slot))
                .flat_map(|v| match (spec.output_is_list(slot), v) {
                    (true, list) => list.elements().to_vec(),
                    (false, single) => vec![single.clone()],
                })
                .collect();
            Value::list(items)
        })
        .collect();
    let mut ui: Option<Ui> = None;
    for part in outputs.into_iter().filter_map(|o| o.ui) {
        match &mut ui {
            None => ui = Some(part),
            Some(ui) => ui.append(part),
        }
    }
    NodeOutput { values, ui }
}

/// A node must return one value per declared output, each of a compatible type.
fn check_outputs(spec: &crate::graph::NodeSpec, values: &[Value]) -> Result<(), String> {
    if values.len() != spec.outputs.len() {
        return Err(format!(
            "node returned {} outputs but declares {}",
            values.len(),
            spec.outputs.len()
        ));
    }
    for (index, (value, declared)) in values.iter().zip(&spec.outputs).enumerate() {
        if matches!(value, Value::List(_)) && !spec.output_is_list(index) {
            return Err(format!(
                "output {index} ({}) is a list but is not declared as one",
                declared.name
            ));
        }
        if let Some(item) = value
            .elements()
            .iter()
            .find(|item| !types_compatible(item.slot_type().0, declared.ty.0))
        {
            return Err(format!(
                "output {index} ({}) should be {} but the node produced {}",
                declared.name,
                declared.ty.0,
                item.slot_type().0
            ));
        }
    }
    Ok(())
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::Registry;
    use crate::paths::DataDirs;

    /// `1` EmptyImage feeds two branches to PreviewImage: ImageInvert `2` → `3`, ImageScaleBy `4` →
    /// `5`. (Two identical branches would share one cache key.)
    fn plan() -> Plan {
        let prompt = json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
            "4": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 2.0}},
            "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
        });
        let dir = tempfile::tempdir().unwrap();
        let dirs = DataDirs::new(dir.path(), &dir.path().join("models"));
        let registry = Registry::standard();
        let workflow = Workflow::from_api_json(&prompt).unwrap();
        validate(&workflow, &registry.catalog(&dirs), None)
            .plan
            .unwrap()
    }

    fn signatures(plan: &Plan) -> Vec<Signature> {
        plan.signatures(&vec![None; plan.nodes().len()])
    }

    /// The plan positions of node ids flagged in `flags`, as ids.
    fn ids(plan: &Plan, flags: &[bool]) -> Vec<String> {
        let mut ids: Vec<String> = plan
            .nodes()
            .iter()
            .zip(flags)
            .filter(|(_, &f)| f)
            .map(|(n, _)| n.id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn walk_with_cached(plan: &Plan, cached: &[&str]) -> CacheWalk {
        let signatures = signatures(plan);
        let keys: Vec<CacheKey> = cached
            .iter()
            .map(|id| signatures[plan.index_of(id).unwrap()].key)
            .collect();
        CacheWalk::new(plan, &signatures, |key| keys.contains(key))
    }

    #[test]
    fn with_an_empty_cache_every_node_runs() {
        let plan = plan();
        let walk = walk_with_cached(&plan, &[]);
        assert_eq!(ids(&plan, &walk.to_run), ["1", "2", "3", "4", "5"]);
        assert!(walk.use_cache.iter().all(|&c| !c) && walk.cached_ids.is_empty());
    }

    #[test]
    fn the_walk_stops_at_cached_nodes_and_keeps_shared_parents_that_others_need() {
        let plan = plan();
        // `2` cached: `3` reads it from the cache, but `1` still runs for `4`.
        let walk = walk_with_cached(&plan, &["2"]);
        assert_eq!(ids(&plan, &walk.to_run), ["1", "3", "4", "5"]);
        assert_eq!(ids(&plan, &walk.use_cache), ["2"]);
        // Both branches cached: `1` neither runs nor is read.
        let walk = walk_with_cached(&plan, &["4", "2"]);
        assert_eq!(ids(&plan, &walk.to_run), ["3", "5"]);
        assert_eq!(ids(&plan, &walk.use_cache), ["2", "4"]);
        assert_eq!(walk.cached_ids, ["2", "4"], "sorted as ComfyUI sorts ids");
        // A cached output node is taken whole; a cached node nobody needs is listed, not used.
        let walk = walk_with_cached(&plan, &["3", "1"]);
        assert_eq!(ids(&plan, &walk.to_run), ["4", "5"]);
        assert_eq!(ids(&plan, &walk.use_cache), ["1", "3"]);
    }

    fn output(tag: i128) -> CachedOutput {
        CachedOutput {
            values: Arc::new(vec![Value::Int(tag)]),
            ui: None,
        }
    }

    #[test]
    fn a_value_is_let_go_once_no_node_left_to_run_reads_it() {
        let plan = plan();
        let walk = walk_with_cached(&plan, &[]);
        let mut values = Values::new(&plan, &walk.to_run, vec![None; 5]);
        let at = |id: &str| plan.index_of(id).unwrap();
        assert_eq!(values.readers[at("1")], 2);
        values.store(&plan, at("1"), output(1));
        values.store(&plan, at("2"), output(2));
        // `4` still reads `1`; `2` is read by `3`.
        assert!(values.get(at("1")).is_some() && values.get(at("2")).is_some());
        let inputs = values.inputs(&plan.nodes()[at("4")]);
        assert!(matches!(inputs.get("image"), Some(Value::Int(1))));
        values.store(&plan, at("4"), output(4));
        assert!(values.get(at("1")).is_none(), "its last reader ran");
        values.store(&plan, at("3"), output(3));
        assert!(values.get(at("2")).is_none());
        assert!(
            values.get(at("3")).is_none(),
            "nothing reads an output node's values"
        );
    }

    /// A real executor (test node pack, a store in a temporary folder) and a way to run one
    /// submitted prompt through [`execute`] as the worker does, on a blocking thread.
    struct Harness {
        exec: Arc<Executor>,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        async fn new() -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let dirs = DataDirs::new(dir.path(), &dir.path().join("models"));
            dirs.create().unwrap();
            let store = crate::store::Store::open(&dir.path().join("weft.db"))
                .await
                .unwrap();
            let (exec, _events) = Executor::start(
                store,
                Arc::new(Registry::with_test_nodes()),
                Arc::new(dirs),
                crate::exec::ExecConfig::default(),
            )
            .await
            .unwrap();
            Harness { exec, _dir: dir }
        }

        /// Submits `prompt`, claims it and runs it; the outcome and the per-node report.
        async fn run(&self, prompt: Json) -> (Outcome, Vec<(String, NodeReportStatus)>) {
            let submission = crate::exec::Submission {
                prompt,
                extra_data: Map::new(),
                client_id: None,
                front: false,
                number: None,
                prompt_id: None,
                targets: None,
            };
            self.exec.submit(submission).await.unwrap();
            let row = self.exec.store.claim_next().await.unwrap().unwrap();
            let exec = Arc::clone(&self.exec);
            let outcome = tokio::task::spawn_blocking(move || execute(&exec, &row, None))
                .await
                .unwrap();
            let report = lock(&self.exec.last_report)
                .as_ref()
                .map(|r| {
                    r.nodes
                        .iter()
                        .map(|n| (n.node_id.clone(), n.status))
                        .collect()
                })
                .unwrap_or_default();
            (outcome, report)
        }
    }

    fn image_chain(last: Json) -> Json {
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": last,
        })
    }

    fn names(outcome: &Outcome) -> Vec<&str> {
        outcome
            .messages
            .iter()
            .filter_map(|m| m[0].as_str())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_run_executes_then_replays_from_the_cache_with_its_events_and_report() {
        let h = Harness::new().await;
        let preview = json!({"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}});
        let (first, report) = h.run(image_chain(preview.clone())).await;
        assert_eq!(first.status, PromptStatus::Done);
        assert_eq!(
            names(&first),
            ["execution_start", "execution_cached", "execution_success"]
        );
        assert!(report.iter().all(|(_, s)| *s == NodeReportStatus::Executed));
        assert!(first.outputs["3"]["images"].is_array() && first.meta["3"]["node_id"] == "3");

        let (second, report) = h.run(image_chain(preview)).await;
        assert_eq!(second.messages[1][1]["nodes"], json!(["1", "2", "3"]));
        // The output node's UI is replayed into the history; nothing ran.
        assert_eq!(second.outputs["3"], first.outputs["3"]);
        assert_eq!(
            report,
            [
                ("1".into(), NodeReportStatus::NotRun),
                ("2".into(), NodeReportStatus::NotRun),
                ("3".into(), NodeReportStatus::Cached)
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_node_stops_the_run_with_what_ran_before_it() {
        let h = Harness::new().await;
        let fail =
            json!({"class_type": "TestFail", "inputs": {"value": ["2", 0], "message": "it broke"}});
        let mut prompt = image_chain(fail);
        prompt["4"] = json!({"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}});
        let (outcome, report) = h.run(prompt).await;
        assert_eq!(outcome.status, PromptStatus::Failed);
        let error = &outcome.messages.last().unwrap()[1];
        assert_eq!(outcome.messages.last().unwrap()[0], "execution_error");
        assert_eq!(
            (&error["node_id"], &error["node_type"]),
            (&json!("3"), &json!("TestFail"))
        );
        assert_eq!(error["exception_type"], "weft.NodeError");
        assert_eq!(error["exception_message"], "it broke");
        assert_eq!(error["executed"], json!(["1", "2"]));
        assert_eq!(error["current_inputs"]["message"], json!(["it broke"]));
        assert_eq!(report.last().unwrap().1, NodeReportStatus::Failed);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_interrupt_stops_before_the_next_node() {
        let h = Harness::new().await;
        let preview = json!({"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}});
        h.exec
            .interrupt
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (outcome, _) = h.run(image_chain(preview)).await;
        assert_eq!(outcome.status, PromptStatus::Interrupted);
        let last = outcome.messages.last().unwrap();
        assert_eq!(last[0], "execution_interrupted");
        assert_eq!(
            (&last[1]["node_id"], &last[1]["executed"]),
            (&json!("1"), &json!([]))
        );
    }

    fn list(items: &[i128]) -> Value {
        Value::List(Arc::new(items.iter().map(|&i| Value::Int(i)).collect()))
    }

    fn ints(value: &Value) -> Vec<i128> {
        value
            .elements()
            .iter()
            .map(|v| match v {
                Value::Int(i) => *i,
                other => panic!("not an int: {other:?}"),
            })
            .collect()
    }

    fn spec(input_is_list: bool, output_is_list: &'static [bool]) -> crate::graph::NodeSpec {
        use crate::graph::spec::build::*;
        let mut spec = node(
            "T",
            "T",
            "t",
            vec![],
            vec![output(crate::graph::SlotType::INT, "INT")],
        );
        spec.input_is_list = input_is_list;
        spec.output_is_list = output_is_list;
        spec
    }

    fn inputs(values: Vec<(&str, Value)>) -> Inputs {
        Inputs::new(values.into_iter().map(|(n, v)| (n.to_owned(), v)).collect())
    }

    #[test]
    fn a_plain_node_runs_once_per_list_element_shorter_lists_repeating_their_last() {
        let given = inputs(vec![
            ("a", list(&[1, 2, 3])),
            ("b", list(&[10, 20])),
            ("c", Value::Int(7)),
        ]);
        let runs = map_over_lists(&spec(false, &[]), given).unwrap();
        let seen: Vec<Vec<i128>> = runs
            .iter()
            .map(|r| ["a", "b", "c"].map(|n| ints(r.get(n).unwrap())[0]).to_vec())
            .collect();
        assert_eq!(seen, [[1, 10, 7], [2, 20, 7], [3, 20, 7]]);
        // Without lists, or for a list node, one run with the inputs as they are.
        assert_eq!(
            map_over_lists(&spec(false, &[]), inputs(vec![("a", Value::Int(1))]))
                .unwrap()
                .len(),
            1
        );
        let whole = map_over_lists(&spec(true, &[]), inputs(vec![("a", list(&[1, 2]))])).unwrap();
        assert_eq!(ints(whole[0].get("a").unwrap()), [1, 2]);
        let error = map_over_lists(&spec(false, &[]), inputs(vec![("a", list(&[]))])).unwrap_err();
        assert_eq!(error.to_string(), "input 'a': is an empty list");
    }

    #[test]
    fn results_merge_into_lists_joining_list_outputs_and_uis() {
        let out = |v: Value, image: &str| NodeOutput {
            values: vec![v],
            ui: Some(Ui {
                text: vec![image.to_owned()],
                ..Ui::default()
            }),
        };
        // A plain output of several runs is the list of their values.
        let merged = merge_outputs(
            &spec(false, &[]),
            vec![out(Value::Int(1), "x"), out(Value::Int(2), "y")],
        );
        assert_eq!(ints(&merged.values[0]), [1, 2]);
        assert_eq!(merged.ui.unwrap().text, ["x", "y"]);
        // List outputs are joined; a list of one is the value itself.
        let merged = merge_outputs(
            &spec(false, &[true]),
            vec![out(list(&[1, 2]), "x"), out(Value::Int(3), "y")],
        );
        assert_eq!(ints(&merged.values[0]), [1, 2, 3]);
        let merged = merge_outputs(&spec(true, &[true]), vec![out(list(&[5]), "x")]);
        assert!(matches!(merged.values[0], Value::Int(5)));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_list_output_feeds_a_node_once_per_element_and_is_cached_whole() {
        let h = Harness::new().await;
        let prompt = json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 3, "color": 0}},
            "2": {"class_type": "RebatchImages", "inputs": {"images": ["1", 0], "batch_size": 2}},
            "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        });
        let (first, _) = h.run(prompt.clone()).await;
        assert_eq!(first.status, PromptStatus::Done);
        assert_eq!(first.outputs["4"]["images"].as_array().unwrap().len(), 3);
        let key = |id: &str| {
            let plan = Workflow::from_api_json(&prompt).unwrap();
            let catalog = h.exec.registry.catalog(&h.exec.dirs);
            let plan = validate(&plan, &catalog, None).plan.unwrap();
            plan.signatures(&vec![None; plan.nodes().len()])[plan.index_of(id).unwrap()].key
        };
        let inverted = lock(&h.exec.cache).get(&key("3")).unwrap();
        let Value::List(batches) = &inverted.values[0] else {
            panic!("a list: {:?}", inverted.values[0])
        };
        let sizes: Vec<usize> = batches
            .iter()
            .map(|b| match b {
                Value::Image(t) => t.dim(0).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [2, 1]);
        let (second, report) = h.run(prompt).await;
        assert_eq!(second.outputs["4"], first.outputs["4"]);
        assert_eq!(report.last().unwrap().1, NodeReportStatus::Cached);
    }

    #[test]
    fn cached_values_count_no_readers_for_nodes_that_do_not_run() {
        let plan = plan();
        let walk = walk_with_cached(&plan, &["2"]);
        let at = |id: &str| plan.index_of(id).unwrap();
        let mut cached = vec![None; 5];
        cached[at("2")] = Some(output(2));
        let mut values = Values::new(&plan, &walk.to_run, cached);
        assert_eq!(values.readers[at("2")], 1, "only `3` runs and reads it");
        assert_eq!(values.readers[at("1")], 1, "only `4`: `2` does not run");
        values.store(&plan, at("3"), output(3));
        assert!(values.get(at("2")).is_none());
    }
}
