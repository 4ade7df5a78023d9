//! Running one prompt: plan, cache lookups, node calls in order, events and the history record.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value as Json};

use crate::exec::cache::CachedOutput;
use crate::exec::{lock, Executor};
use crate::exec::{Event, ExecutionErrorInfo, Route};
use crate::graph::spec::{types_compatible, Freshness};
use crate::graph::{validate, ConstValue, Plan, PlanInput, Signature, Workflow};
use crate::nodes::{Inputs, NodeContext, NodeError, Reporter, Value};
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
        self.executor.emit(
            Route::ClientOrBroadcast(self.client.clone()),
            Event::Preview {
                prompt_id: self.prompt_id.clone(),
                node: node_id.to_owned(),
                image,
                is_png,
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

impl Executor {
    /// Runs one claimed prompt on the current (blocking) thread.
    pub(crate) fn execute(self: &Arc<Self>, row: &PromptRow) -> Outcome {
        let prompt_id = row.prompt_id.clone();
        let client = row.client_id.clone();
        let mut messages = Vec::new();
        let mut send = |event: Event, record: bool| {
            if record {
                messages.push(event.history_message());
            }
            self.emit(Route::Client(client.clone()), event);
        };
        send(
            Event::ExecutionStart {
                prompt_id: prompt_id.clone(),
                timestamp: now_ms(),
            },
            true,
        );

        let mut outputs = Map::new();
        let mut meta = Map::new();
        let mut executed: Vec<String> = Vec::new();
        let result = self.execute_plan(row, &mut send, &mut outputs, &mut meta, &mut executed);

        let (status, reason) = match result {
            Ok(()) => {
                send(
                    Event::ExecutionSuccess {
                        prompt_id: prompt_id.clone(),
                        timestamp: now_ms(),
                    },
                    true,
                );
                (PromptStatus::Done, None)
            }
            Err(Stop::Failed(mut info)) => {
                info.executed = executed.clone();
                let reason = format!(
                    "node {} ({}) failed: {}",
                    info.node_id, info.node_type, info.exception_message
                );
                tracing::warn!(node_id = %info.node_id, "{reason}");
                send(Event::ExecutionError(info), true);
                (PromptStatus::Failed, Some(reason))
            }
            Err(Stop::Interrupted { node_id, node_type }) => {
                let event = Event::ExecutionInterrupted {
                    prompt_id: prompt_id.clone(),
                    node_id: node_id.clone(),
                    node_type,
                    executed: executed.clone(),
                    timestamp: now_ms(),
                };
                messages.push(event.history_message());
                self.emit(Route::ClientOrBroadcast(client.clone()), event);
                (
                    PromptStatus::Interrupted,
                    Some("interrupted on request".to_owned()),
                )
            }
        };
        Outcome {
            status,
            reason,
            outputs: Json::Object(outputs),
            messages,
            meta: Json::Object(meta),
        }
    }

    fn execute_plan(
        self: &Arc<Self>,
        row: &PromptRow,
        send: &mut dyn FnMut(Event, bool),
        outputs: &mut Map<String, Json>,
        meta: &mut Map<String, Json>,
        executed: &mut Vec<String>,
    ) -> Result<(), Stop> {
        let prompt_id = row.prompt_id.as_str();
        let plan = self.plan_for(row)?;
        let nodes = plan.nodes();

        // Freshness tokens: file hashes for nodes that read files, a unique token for never-cached.
        let mut freshness = Vec::with_capacity(nodes.len());
        for node in nodes {
            let spec = self.spec_of(node.class_type);
            freshness.push(match spec.freshness {
                Freshness::Pure => None,
                Freshness::Always => Some(uuid::Uuid::new_v4().to_string()),
                Freshness::ReadsFiles => {
                    let constants: Vec<(String, ConstValue)> = node
                        .inputs
                        .iter()
                        .filter_map(|(n, i)| match i {
                            PlanInput::Const(c) => Some((n.clone(), c.clone())),
                            PlanInput::Link { .. } => None,
                        })
                        .collect();
                    let node_impl = self
                        .registry
                        .node(node.class_type)
                        .expect("planned nodes are registered");
                    match node_impl.fingerprint(&self.dirs, &constants) {
                        Ok(token) => Some(token),
                        Err(e) => {
                            return Err(self.failure(
                                prompt_id,
                                &node.id,
                                node.class_type,
                                &e,
                                Json::Null,
                            ))
                        }
                    }
                }
            });
        }
        let signatures = plan.signatures(&freshness);

        // What is cached, and what must run: walk up from the outputs, stopping at cached nodes.
        let (cached_ids, use_cache, to_run) = {
            let cache = lock(&self.cache);
            let mut cached_ids: Vec<String> = nodes
                .iter()
                .zip(&signatures)
                .filter(|(_, s)| cache.contains(&s.key))
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
                if cache.contains(&signatures[i].key) {
                    use_cache[i] = true;
                } else {
                    to_run[i] = true;
                    for (_, input) in &nodes[i].inputs {
                        if let PlanInput::Link { node, .. } = input {
                            stack.push(*node);
                        }
                    }
                }
            }
            (cached_ids, use_cache, to_run)
        };
        send(
            Event::ExecutionCached {
                prompt_id: prompt_id.to_owned(),
                nodes: cached_ids,
                timestamp: now_ms(),
            },
            true,
        );

        // Only this plan's nodes are looked up, so copy just those.
        let previous: HashMap<String, Signature> = {
            let last = lock(&self.last_signatures);
            nodes
                .iter()
                .filter_map(|n| last.get(&n.id).map(|s| (n.id.clone(), s.clone())))
                .collect()
        };
        let mut report = Vec::with_capacity(nodes.len());
        let mut results: Vec<Option<CachedOutput>> = vec![None; nodes.len()];
        // Cached outputs are taken now: a node that runs first may need memory, and the manager
        // may then empty the cache.
        {
            let mut cache = lock(&self.cache);
            for (i, signature) in signatures.iter().enumerate() {
                if use_cache[i] {
                    results[i] = cache.get(&signature.key);
                }
            }
        }
        // How many nodes still to run read each node's outputs. A value nobody will read again
        // is let go at once (the output cache may keep it), so that when memory is short the
        // manager can unload a model the rest of the prompt no longer needs, such as the SDXL
        // base before the refiner loads.
        let mut readers = vec![0usize; nodes.len()];
        for (i, node) in nodes.iter().enumerate() {
            if to_run[i] {
                for j in parents(node) {
                    readers[j] += 1;
                }
            }
        }
        let reporter: Arc<dyn Reporter> = Arc::new(EventReporter {
            executor: Arc::clone(self),
            prompt_id: prompt_id.to_owned(),
            client: row.client_id.clone(),
        });
        let prompt_json = Arc::new(row.prompt.clone());
        let extra_pnginfo = row.extra_data.get("extra_pnginfo").cloned().map(Arc::new);

        let outcome = (|| {
            for (i, node) in nodes.iter().enumerate() {
                let spec = self.spec_of(node.class_type);
                let signature = &signatures[i];
                if use_cache[i] {
                    let Some(cached) = results[i].clone() else {
                        // Evicted between the lookup and now (another prompt cannot run meanwhile,
                        // but `/free` can): treat as a failure rather than guess.
                        let error = NodeError::Failed(
                            "cached output was freed while the prompt ran; queue it again".into(),
                        );
                        return Err(self.failure(
                            prompt_id,
                            &node.id,
                            node.class_type,
                            &error,
                            Json::Null,
                        ));
                    };
                    if spec.output_node {
                        let ui = cached
                            .ui
                            .as_ref()
                            .map(|ui| serde_json::to_value(ui).unwrap_or(Json::Null));
                        if let Some(ui) = &ui {
                            outputs.insert(node.id.clone(), ui.clone());
                            meta.insert(node.id.clone(), node_meta(&node.id));
                        }
                        send(
                            Event::Executed {
                                prompt_id: prompt_id.to_owned(),
                                node: node.id.clone(),
                                output: ui.unwrap_or(Json::Null),
                            },
                            false,
                        );
                    }
                    report.push(NodeReport {
                        node_id: node.id.clone(),
                        class_type: node.class_type,
                        status: NodeReportStatus::Cached,
                        reason: "same class, inputs and upstream as a cached result".into(),
                        key: signature.key.short_hex(),
                        millis: None,
                    });
                    continue;
                }
                if !to_run[i] {
                    report.push(NodeReport {
                        node_id: node.id.clone(),
                        class_type: node.class_type,
                        status: NodeReportStatus::NotRun,
                        reason: "only feeds nodes whose outputs were cached".into(),
                        key: signature.key.short_hex(),
                        millis: None,
                    });
                    continue;
                }
                let reason = self.miss_reason(spec.freshness, signature, previous.get(&node.id));
                if self.interrupt.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(Stop::Interrupted {
                        node_id: Some(node.id.clone()),
                        node_type: Some(node.class_type.to_owned()),
                    });
                }
                send(
                    Event::Executing {
                        prompt_id: prompt_id.to_owned(),
                        node: Some(node.id.clone()),
                    },
                    false,
                );

                let inputs = Inputs::new(
                    node.inputs
                        .iter()
                        .map(|(name, input)| {
                            let value = match input {
                                PlanInput::Const(c) => Value::from_const(c),
                                PlanInput::Link { node: j, slot } => results[*j]
                                    .as_ref()
                                    .and_then(|r| r.values.get(*slot).cloned())
                                    .expect("parents run before children and produced their declared outputs"),
                            };
                            (name.clone(), value)
                        })
                        .collect(),
                );
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
                    prompt_id: prompt_id.to_owned(),
                    dirs: Arc::clone(&self.dirs),
                    prompt: Arc::clone(&prompt_json),
                    extra_pnginfo: extra_pnginfo.clone(),
                    reporter: Arc::clone(&reporter),
                    interrupt: Arc::clone(&self.interrupt),
                    write_metadata: self.config.write_metadata,
                    models: Arc::clone(&self.models),
                };
                let node_impl = self
                    .registry
                    .node(node.class_type)
                    .expect("planned nodes are registered");
                let span =
                    tracing::info_span!("node", node_id = %node.id, class_type = node.class_type);
                let started = Instant::now();
                let result = span
                    .in_scope(|| catch_unwind(AssertUnwindSafe(|| node_impl.run(&ctx, &inputs))));
                let millis = started.elapsed().as_secs_f64() * 1000.0;
                let output = match result {
                    Ok(Ok(output)) => output,
                    Ok(Err(NodeError::Interrupted)) => {
                        return Err(Stop::Interrupted {
                            node_id: Some(node.id.clone()),
                            node_type: Some(node.class_type.to_owned()),
                        })
                    }
                    Ok(Err(error)) => {
                        report.push(failed_report(node, signature, &error.to_string(), millis));
                        return Err(self.failure(
                            prompt_id,
                            &node.id,
                            node.class_type,
                            &error,
                            current_inputs(),
                        ));
                    }
                    Err(panic) => {
                        let message = panic_message(&panic);
                        let error = NodeError::Failed(format!("node panicked: {message}"));
                        report.push(failed_report(node, signature, &message, millis));
                        let mut info = self.failure(
                            prompt_id,
                            &node.id,
                            node.class_type,
                            &error,
                            current_inputs(),
                        );
                        if let Stop::Failed(info) = &mut info {
                            info.exception_type = PANIC.into();
                        }
                        return Err(info);
                    }
                };
                if let Err(message) = check_outputs(spec, &output.values) {
                    let error = NodeError::Failed(message);
                    return Err(self.failure(
                        prompt_id,
                        &node.id,
                        node.class_type,
                        &error,
                        current_inputs(),
                    ));
                }
                executed.push(node.id.clone());
                let cached = CachedOutput {
                    values: Arc::new(output.values),
                    ui: output.ui,
                };
                if let Some(ui) = &cached.ui {
                    for image in &ui.images {
                        let record = self.store.record_image(
                            prompt_id,
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
                    outputs.insert(node.id.clone(), ui_json.clone());
                    meta.insert(node.id.clone(), node_meta(&node.id));
                    send(
                        Event::Executed {
                            prompt_id: prompt_id.to_owned(),
                            node: node.id.clone(),
                            output: ui_json,
                        },
                        false,
                    );
                }
                if spec.freshness != Freshness::Always {
                    lock(&self.cache).insert(
                        signature.key,
                        cached.clone(),
                        node.class_type,
                        &node.id,
                    );
                }
                report.push(NodeReport {
                    node_id: node.id.clone(),
                    class_type: node.class_type,
                    status: NodeReportStatus::Executed,
                    reason,
                    key: signature.key.short_hex(),
                    millis: Some(millis),
                });
                results[i] = Some(cached);
                for j in parents(node).chain([i]) {
                    if j != i {
                        readers[j] -= 1;
                    }
                    if readers[j] == 0 {
                        results[j] = None;
                    }
                }
            }
            Ok(())
        })();

        let mut last = lock(&self.last_signatures);
        // Clients may use fresh node ids on every prompt; keep the memory of past runs bounded.
        if last.len() > MAX_REMEMBERED_SIGNATURES {
            last.clear();
        }
        for (node, signature) in nodes.iter().zip(signatures) {
            last.insert(node.id.clone(), signature);
        }
        *lock(&self.last_report) = Some(PromptReport {
            prompt_id: prompt_id.to_owned(),
            nodes: report,
        });
        outcome
    }

    /// Validates the stored prompt again (files may have changed since it was queued).
    fn plan_for(&self, row: &PromptRow) -> Result<Plan, Stop> {
        let fail = |node_id: &str, node_type: &str, message: String| {
            Stop::Failed(Box::new(ExecutionErrorInfo {
                prompt_id: row.prompt_id.clone(),
                node_id: node_id.to_owned(),
                node_type: node_type.to_owned(),
                executed: vec![],
                exception_message: message,
                exception_type: VALIDATION_ERROR.into(),
                traceback: vec![],
                current_inputs: json!({}),
                current_outputs: vec![],
                timestamp: now_ms(),
            }))
        };
        let workflow =
            Workflow::from_api_json(&row.prompt).map_err(|e| fail("", "", e.to_string()))?;
        let catalog = self.registry.catalog(&self.dirs);
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

    fn spec_of(&self, class_type: &str) -> &crate::graph::NodeSpec {
        self.registry
            .spec(class_type)
            .expect("planned nodes are registered")
    }

    fn failure(
        &self,
        prompt_id: &str,
        node_id: &str,
        node_type: &str,
        error: &NodeError,
        current_inputs: Json,
    ) -> Stop {
        let mut traceback = vec![error.to_string()];
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            traceback.push(cause.to_string());
            source = cause.source();
        }
        Stop::Failed(Box::new(ExecutionErrorInfo {
            prompt_id: prompt_id.to_owned(),
            node_id: node_id.to_owned(),
            node_type: node_type.to_owned(),
            executed: vec![],
            exception_message: error.to_string(),
            exception_type: exception_type(error).to_owned(),
            traceback,
            current_inputs,
            current_outputs: vec![],
            timestamp: now_ms(),
        }))
    }

    /// Explains why a node was not found in the cache, comparing with its last run under the
    /// same node id.
    fn miss_reason(
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

/// The plan positions of the nodes whose outputs `node` reads, once per link.
fn parents(node: &crate::graph::PlanNode) -> impl Iterator<Item = usize> + '_ {
    node.inputs.iter().filter_map(|(_, input)| match input {
        PlanInput::Link { node, .. } => Some(*node),
        PlanInput::Const(_) => None,
    })
}

fn failed_report(
    node: &crate::graph::PlanNode,
    signature: &Signature,
    reason: &str,
    millis: f64,
) -> NodeReport {
    NodeReport {
        node_id: node.id.clone(),
        class_type: node.class_type,
        status: NodeReportStatus::Failed,
        reason: reason.to_owned(),
        key: signature.key.short_hex(),
        millis: Some(millis),
    }
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
        if !types_compatible(value.slot_type().0, declared.ty.0) {
            return Err(format!(
                "output {index} ({}) should be {} but the node produced {}",
                declared.name,
                declared.ty.0,
                value.slot_type().0
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
