//! Validation: a raw `Workflow` becomes a typed, ordered `Plan`, or per-node errors.
//!
//! Follows ComfyUI's `validate_prompt` (see `comfyui-api.md` §3.1): unknown classes stop everything;
//! otherwise every output node is checked with all its ancestors, good outputs still run and bad ones
//! are reported with the nodes that caused them. Unlike ComfyUI, a dependency cycle is detected
//! explicitly and named (ComfyUI recurses until Python's stack gives out).
//!
//! The walk is iterative, so a very deep graph cannot overflow the stack.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value as Json;

use crate::plan::{ConstValue, Plan, PlanInput, PlanNode};
use crate::spec::{types_compatible, ComboOptions, InputKind, NodeSpec};
use crate::workflow::{RawInput, Workflow};

/// What validation needs to know about node classes. Implemented by the node registry, which may do
/// IO (listing model folders, checking that an input file exists); validation itself does none.
pub trait Catalog {
    /// The declaration of `class_type`, or None when no such node class is registered.
    fn spec(&self, class_type: &str) -> Option<&NodeSpec>;
    /// The options of a combo, resolved now (file lists are read at validation time).
    fn combo_options(&self, options: &ComboOptions) -> Vec<String>;
    /// Whether `value` is one of the combo's options, as [`Catalog::combo_options`] would list
    /// them. The default lists them; a catalog may answer faster (a model file found by its
    /// name, where the list walks a whole folder).
    fn combo_has(&self, options: &ComboOptions, value: &str) -> bool {
        self.combo_options(options).iter().any(|o| o == value)
    }
    /// The node's own check of an input it validates itself (ComfyUI's `VALIDATE_INPUTS`).
    fn check_input(&self, spec: &NodeSpec, input: &str, value: &ConstValue) -> Result<(), String>;
}

/// The kind of one per-node validation error; `type_name` is ComfyUI's `type` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `required_input_missing`: a required input is absent.
    RequiredInputMissing,
    /// `bad_linked_input`: a malformed link, or one to a missing node or output slot.
    BadLinkedInput,
    /// `return_type_mismatch`: the linked output's type does not fit the input.
    ReturnTypeMismatch,
    /// `invalid_input_type`: a constant that cannot be converted to the input's type.
    InvalidInputType,
    /// `value_smaller_than_min`: a number below the input's `min`.
    ValueSmallerThanMin,
    /// `value_bigger_than_max`: a number above the input's `max`.
    ValueBiggerThanMax,
    /// `value_not_in_list`: a combo value that is not one of the options.
    ValueNotInList,
    /// `custom_validation_failed`: the node's own check (`VALIDATE_INPUTS`) rejected a value.
    CustomValidationFailed,
    /// `dependency_cycle`: the node depends on itself through its links (Weft only).
    DependencyCycle,
}

impl ErrorKind {
    /// ComfyUI's `type` string for this error (`"value_not_in_list"`).
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::RequiredInputMissing => "required_input_missing",
            ErrorKind::BadLinkedInput => "bad_linked_input",
            ErrorKind::ReturnTypeMismatch => "return_type_mismatch",
            ErrorKind::InvalidInputType => "invalid_input_type",
            ErrorKind::ValueSmallerThanMin => "value_smaller_than_min",
            ErrorKind::ValueBiggerThanMax => "value_bigger_than_max",
            ErrorKind::ValueNotInList => "value_not_in_list",
            ErrorKind::CustomValidationFailed => "custom_validation_failed",
            ErrorKind::DependencyCycle => "dependency_cycle",
        }
    }
}

/// One problem with one node, in ComfyUI's wording.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeError {
    /// What went wrong; gives the error's `type`.
    pub kind: ErrorKind,
    /// ComfyUI's short `message` (`"Value not in list"`).
    pub message: String,
    /// ComfyUI's `details`: the specifics, usually starting with the input name.
    pub details: String,
    /// The input at fault (`extra_info.input_name`); None for node-wide errors such as cycles.
    pub input_name: Option<String>,
    /// The linked output's type, for a return type mismatch (`extra_info.received_type`).
    pub received_type: Option<String>,
    /// The rejected constant as sent (`extra_info.received_value`), for errors about a value.
    pub received_value: Option<Json>,
    /// The link at fault as `(source node id, output slot)` (`extra_info.linked_node`).
    pub linked_node: Option<(String, usize)>,
    /// Why a conversion failed, worded like Python's exception (`extra_info.exception_message`).
    pub exception_message: Option<String>,
}

impl NodeError {
    fn new(kind: ErrorKind, message: impl Into<String>, details: impl Into<String>) -> Self {
        NodeError {
            kind,
            message: message.into(),
            details: details.into(),
            input_name: None,
            received_type: None,
            received_value: None,
            linked_node: None,
            exception_message: None,
        }
    }

    fn on_input(mut self, name: &str) -> Self {
        self.input_name = Some(name.to_owned());
        self
    }
}

/// All errors of one node, as `node_errors[id]` reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeErrors {
    /// The failing node's id in the workflow.
    pub node_id: String,
    /// The failing node's class.
    pub class_type: String,
    /// Its own errors, in input declaration order (cycle errors last).
    pub errors: Vec<NodeError>,
    /// Ids of the output nodes that cannot run because of this node.
    pub dependent_outputs: Vec<String>,
}

/// Why a prompt cannot run at all.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptError {
    /// `invalid_prompt`: a node lacks `class_type` or names an unknown class.
    InvalidPrompt {
        /// ComfyUI's `message`, naming the problem.
        message: String,
        /// ComfyUI's `details`, naming the node (`"Node ID '#3'"`).
        details: String,
    },
    /// `prompt_no_outputs`.
    NoOutputs,
    /// `prompt_outputs_failed_validation`: every output failed; see the node errors.
    OutputsFailed,
}

/// The result of validating a workflow.
#[derive(Debug)]
pub struct Validation {
    /// Present when at least one output validated.
    pub plan: Option<Plan>,
    /// Why the prompt cannot run at all; None when `plan` is present.
    pub failure: Option<PromptError>,
    /// Nodes with their own errors, in workflow order.
    pub node_errors: Vec<NodeErrors>,
}

/// Validates `workflow` and builds the plan of what its good outputs need.
///
/// `targets` restricts the outputs to run (`partial_execution_targets`); ids that are not output
/// nodes are ignored, as in ComfyUI.
pub fn validate(
    workflow: &Workflow,
    catalog: &dyn Catalog,
    targets: Option<&[String]>,
) -> Validation {
    let fail = |failure| Validation {
        plan: None,
        failure: Some(failure),
        node_errors: Vec::new(),
    };

    // 1. Every node must name a known class; ComfyUI stops at the first that doesn't.
    let mut specs: HashMap<&str, &NodeSpec> = HashMap::new();
    for node in &workflow.nodes {
        let Some(class_type) = node.class_type.as_deref() else {
            return fail(PromptError::InvalidPrompt {
                message: "Cannot execute because a node is missing the class_type property.".into(),
                details: format!("Node ID '#{}'", node.id),
            });
        };
        let Some(spec) = catalog.spec(class_type) else {
            return fail(PromptError::InvalidPrompt {
                message: format!("Cannot execute because node {class_type} does not exist."),
                details: format!("Node ID '#{}'", node.id),
            });
        };
        specs.insert(node.id.as_str(), spec);
    }

    // 2. Outputs, in workflow order.
    let outputs: Vec<&str> = workflow
        .nodes
        .iter()
        .filter(|n| specs[n.id.as_str()].output_node)
        .filter(|n| targets.is_none_or(|t| t.iter().any(|id| id == &n.id)))
        .map(|n| n.id.as_str())
        .collect();
    if outputs.is_empty() {
        return fail(PromptError::NoOutputs);
    }

    // 3. Local checks of every node reachable from an output, and the dependency graph.
    let index_of: HashMap<&str, usize> = workflow
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let mut graph_index: HashMap<usize, NodeIndex> = HashMap::new();
    let mut local: HashMap<usize, LocalResult> = HashMap::new();
    let mut queue: VecDeque<usize> = outputs.iter().map(|id| index_of[id]).collect();
    while let Some(i) = queue.pop_front() {
        if local.contains_key(&i) {
            continue;
        }
        let node = &workflow.nodes[i];
        let result = check_node_locally(workflow, &specs, catalog, i);
        let from = *graph_index.entry(i).or_insert_with(|| graph.add_node(i));
        for &parent in &result.parents {
            let to = *graph_index
                .entry(parent)
                .or_insert_with(|| graph.add_node(parent));
            graph.add_edge(to, from, ());
            queue.push_back(parent);
        }
        let _ = node;
        local.insert(i, result);
    }

    // 4. Cycles: every strongly connected component with more than one node, or a self-link.
    for component in petgraph::algo::kosaraju_scc(&graph) {
        let is_cycle = component.len() > 1
            || component
                .first()
                .is_some_and(|&n| graph.contains_edge(n, n));
        if !is_cycle {
            continue;
        }
        let mut ids: Vec<&str> = component
            .iter()
            .map(|&n| workflow.nodes[graph[n]].id.as_str())
            .collect();
        ids.sort_by(|a, b| compare_node_ids(a, b));
        let cycle = cycle_path(&ids, &local, workflow, &index_of);
        for id in &ids {
            let result = local
                .get_mut(&index_of[id])
                .expect("cycle nodes were visited");
            result.errors.push(NodeError::new(
                ErrorKind::DependencyCycle,
                "Dependency cycle detected",
                format!("node '{id}' depends on itself through {cycle}"),
            ));
        }
    }

    // 5. An output is good when it and every ancestor are free of errors.
    let mut node_errors_by_index: HashMap<usize, Vec<String>> = HashMap::new();
    let mut good_outputs = Vec::new();
    // Without a single error every output is good, and no walk is needed: one walk per output
    // would cost outputs × nodes (a chain with a save on every node is quadratic).
    let any_errors = local.values().any(|r| !r.errors.is_empty());
    for &output in &outputs {
        if !any_errors {
            good_outputs.push(output);
            continue;
        }
        let ancestors = ancestors_of([index_of[output]], &local);
        let bad: Vec<usize> = ancestors
            .iter()
            .copied()
            .filter(|i| !local[i].errors.is_empty())
            .collect();
        if bad.is_empty() {
            good_outputs.push(output);
        }
        for i in bad {
            node_errors_by_index
                .entry(i)
                .or_default()
                .push(output.to_owned());
        }
    }
    let mut node_errors: Vec<NodeErrors> = node_errors_by_index
        .into_iter()
        .map(|(i, dependent_outputs)| NodeErrors {
            node_id: workflow.nodes[i].id.clone(),
            class_type: specs[workflow.nodes[i].id.as_str()].class_type.to_owned(),
            errors: local[&i].errors.clone(),
            dependent_outputs,
        })
        .collect();
    node_errors.sort_by_key(|e| index_of[e.node_id.as_str()]);

    if good_outputs.is_empty() {
        return Validation {
            plan: None,
            failure: Some(PromptError::OutputsFailed),
            node_errors,
        };
    }

    let plan = build_plan(workflow, &specs, &local, &index_of, &good_outputs);
    Validation {
        plan: Some(plan),
        failure: None,
        node_errors,
    }
}

/// Orders workflow node ids for display and tie-breaking: numeric ids numerically, then the rest
/// as strings, so "9" comes before "10".
pub fn compare_node_ids(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

struct LocalResult {
    errors: Vec<NodeError>,
    /// Indices of linked source nodes that exist.
    parents: Vec<usize>,
    /// Declared inputs, coerced, in declaration order.
    inputs: Vec<(String, PlanInput)>,
}

fn check_node_locally(
    workflow: &Workflow,
    specs: &HashMap<&str, &NodeSpec>,
    catalog: &dyn Catalog,
    index: usize,
) -> LocalResult {
    let node = &workflow.nodes[index];
    let spec = specs[node.id.as_str()];
    let mut result = LocalResult {
        errors: Vec::new(),
        parents: Vec::new(),
        inputs: Vec::new(),
    };
    for input in &spec.inputs {
        let Some(raw) = node.input(input.name) else {
            if !input.optional {
                result.errors.push(
                    NodeError::new(
                        ErrorKind::RequiredInputMissing,
                        "Required input is missing",
                        input.name,
                    )
                    .on_input(input.name),
                );
            }
            continue;
        };
        match raw {
            RawInput::BadLink(_) => result.errors.push(
                NodeError::new(
                    ErrorKind::BadLinkedInput,
                    "Bad linked input, must be a length-2 list of [string, int]",
                    input.name,
                )
                .on_input(input.name),
            ),
            RawInput::Link {
                node: source_id,
                slot,
            } => {
                match check_link(
                    workflow,
                    specs,
                    input.name,
                    input.kind.type_name(),
                    source_id,
                    *slot,
                ) {
                    Ok(source_index) => {
                        result.parents.push(source_index);
                        // Resolved to a plan index when the plan is built.
                        result.inputs.push((
                            input.name.to_owned(),
                            PlanInput::Link {
                                node: source_index,
                                slot: *slot,
                            },
                        ));
                    }
                    Err((error, existing_source)) => {
                        // Keep walking into a source that exists, so its own errors are reported too.
                        result.parents.extend(existing_source);
                        result.errors.push(error);
                    }
                }
            }
            RawInput::Const(value) => {
                match check_constant(spec, input.name, &input.kind, value, catalog) {
                    Ok(value) => result
                        .inputs
                        .push((input.name.to_owned(), PlanInput::Const(value))),
                    Err(error) => result.errors.push(error.on_input(input.name)),
                }
            }
        }
    }
    result
}

fn check_link(
    workflow: &Workflow,
    specs: &HashMap<&str, &NodeSpec>,
    input_name: &str,
    declared_type: &str,
    source_id: &str,
    slot: usize,
) -> Result<usize, (NodeError, Option<usize>)> {
    let bad = |details: String| {
        let mut error = NodeError::new(ErrorKind::BadLinkedInput, "Bad linked input", details)
            .on_input(input_name);
        error.linked_node = Some((source_id.to_owned(), slot));
        error
    };
    let Some(source_index) = workflow.nodes.iter().position(|n| n.id == source_id) else {
        return Err((
            bad(format!(
                "{input_name}: linked node '{source_id}' does not exist"
            )),
            None,
        ));
    };
    let source_spec = specs[source_id];
    let Some(output) = source_spec.outputs.get(slot) else {
        let error = bad(format!(
            "{input_name}: node '{source_id}' ({}) has no output {slot}; it has {}",
            source_spec.class_type,
            source_spec.outputs.len()
        ));
        return Err((error, Some(source_index)));
    };
    if !types_compatible(output.ty.0, declared_type) {
        let mut error = NodeError::new(
            ErrorKind::ReturnTypeMismatch,
            "Return type mismatch between linked nodes",
            format!(
                "{input_name}, received_type({}) mismatch input_type({declared_type})",
                output.ty.0
            ),
        )
        .on_input(input_name);
        error.received_type = Some(output.ty.0.to_owned());
        error.linked_node = Some((source_id.to_owned(), slot));
        return Err((error, Some(source_index)));
    }
    Ok(source_index)
}

fn check_constant(
    spec: &NodeSpec,
    name: &str,
    kind: &InputKind,
    value: &Json,
    catalog: &dyn Catalog,
) -> Result<ConstValue, NodeError> {
    let coerced = coerce(kind, value).map_err(|exception| {
        let mut error = NodeError::new(
            ErrorKind::InvalidInputType,
            format!(
                "Failed to convert an input value to a {} value",
                kind.type_name()
            ),
            format!("{name}, {}, {exception}", python_str(value)),
        );
        error.received_value = Some(value.clone());
        error.exception_message = Some(exception);
        error
    })?;

    if spec.self_validated.contains(&name) {
        return match catalog.check_input(spec, name, &coerced) {
            Ok(()) => Ok(coerced),
            Err(reason) => Err(NodeError::new(
                ErrorKind::CustomValidationFailed,
                "Custom validation failed for node",
                format!("{name} - {reason}"),
            )),
        };
    }

    let out_of_range = |kind: ErrorKind, word: &str, limit: String, shown: String| {
        let mut error = NodeError::new(kind, format!("Value {shown} {word} of {limit}"), name);
        error.received_value = Some(value.clone());
        error
    };
    match (kind, &coerced) {
        (InputKind::Int { min, max, .. }, ConstValue::Int(v)) => {
            if v < min {
                return Err(out_of_range(
                    ErrorKind::ValueSmallerThanMin,
                    "smaller than min",
                    min.to_string(),
                    v.to_string(),
                ));
            }
            if v > max {
                return Err(out_of_range(
                    ErrorKind::ValueBiggerThanMax,
                    "bigger than max",
                    max.to_string(),
                    v.to_string(),
                ));
            }
        }
        (InputKind::Float { min, max, .. }, ConstValue::Float(v)) => {
            if v < min {
                return Err(out_of_range(
                    ErrorKind::ValueSmallerThanMin,
                    "smaller than min",
                    fmt_float(*min),
                    fmt_float(*v),
                ));
            }
            if v > max {
                return Err(out_of_range(
                    ErrorKind::ValueBiggerThanMax,
                    "bigger than max",
                    fmt_float(*max),
                    fmt_float(*v),
                ));
            }
        }
        // Python's `val not in options`: the options are strings, so a number or a boolean
        // never matches, not even 1 against the option "1" (`v` is its str(), for the message
        // only). The list is read only for the message.
        (InputKind::Combo { options, .. }, ConstValue::String(v))
            if !value.is_string() || !catalog.combo_has(options, v) =>
        {
            let list = catalog.combo_options(options);
            let shown = if list.len() > 20 {
                format!("(list of length {})", list.len())
            } else {
                python_repr_list(&list)
            };
            let mut error = NodeError::new(
                ErrorKind::ValueNotInList,
                "Value not in list",
                format!("{name}: '{v}' not in {shown}"),
            );
            error.received_value = Some(value.clone());
            return Err(error);
        }
        _ => {}
    }
    Ok(coerced)
}

/// Converts a constant to the declared type with Python's rules, as ComfyUI does
/// (`int("5")` works, `int("5.0")` fails, `bool("false")` is true).
fn coerce(kind: &InputKind, value: &Json) -> Result<ConstValue, String> {
    match kind {
        InputKind::Int { .. } => coerce_int(value).map(ConstValue::Int),
        InputKind::Float { .. } => coerce_float(value).map(ConstValue::Float),
        InputKind::String { .. } => Ok(ConstValue::String(python_str(value))),
        InputKind::Boolean { .. } => Ok(ConstValue::Bool(python_truthy(value))),
        InputKind::Combo { .. } => match value {
            Json::String(s) => Ok(ConstValue::String(s.clone())),
            other => Ok(ConstValue::String(python_str(other))),
        },
        InputKind::Link(ty) => Err(format!(
            "input of type {} takes a link to another node, not a constant",
            ty.0
        )),
    }
}

fn coerce_int(value: &Json) -> Result<i128, String> {
    match value {
        Json::Bool(b) => Ok(i128::from(*b)),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.is_finite() {
                    Ok(f.trunc() as i128)
                } else {
                    Err(format!("cannot convert float {f} to integer"))
                }
            }
        }
        Json::String(s) => parse_python_int(s).ok_or_else(|| {
            format!(
                "invalid literal for int() with base 10: {}",
                python_repr_str(s)
            )
        }),
        Json::Null => Err(
            "int() argument must be a string, a bytes-like object or a real number, not 'NoneType'"
                .into(),
        ),
        Json::Array(_) | Json::Object(_) => Err(format!(
            "int() argument must be a string, a bytes-like object or a real number, not '{}'",
            python_type_name(value)
        )),
    }
}

/// Python's `float()`, but finite only: ComfyUI lets `"nan"` and `"inf"` through to the node,
/// Weft refuses them here, where the message can name the input (a FLOAT input always means a
/// finite number; NaN also passes every range check and has no JSON form to store).
fn coerce_float(value: &Json) -> Result<f64, String> {
    match value {
        Json::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Json::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| "number out of range".to_string()),
        Json::String(s) => match parse_python_float(s) {
            Some(f) if f.is_finite() => Ok(f),
            Some(_) => Err(format!(
                "{} is not a finite number; NaN and infinity are not accepted",
                python_repr_str(s)
            )),
            None => Err(format!(
                "could not convert string to float: {}",
                python_repr_str(s)
            )),
        },
        Json::Null => {
            Err("float() argument must be a string or a real number, not 'NoneType'".into())
        }
        Json::Array(_) | Json::Object(_) => Err(format!(
            "float() argument must be a string or a real number, not '{}'",
            python_type_name(value)
        )),
    }
}

/// Python's `int(s)` in base 10: surrounding whitespace, an optional sign, then digits with single
/// underscores allowed only between two digits ("1_000"; not "_5", "5_" or "1__0").
///
/// Unlike Python, only ASCII digits are accepted, and values beyond `i128` fail.
fn parse_python_int(s: &str) -> Option<i128> {
    let t = python_strip(s);
    if !underscores_between_digits(t) {
        return None;
    }
    let (sign, digits) = match t.as_bytes().first() {
        Some(b'+') => ("", &t[1..]),
        Some(b'-') => ("-", &t[1..]),
        _ => ("", t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    format!("{sign}{digits}").parse().ok()
}

/// Python's `float(s)`: surrounding whitespace, then a decimal literal ("1.5", ".5", "1.", "1e-3")
/// whose digit runs may hold single underscores between digits ("1_000.2_5"), or inf, infinity
/// or nan in any case, each with an optional sign.
fn parse_python_float(s: &str) -> Option<f64> {
    let t = python_strip(s).to_ascii_lowercase();
    if !underscores_between_digits(&t) {
        return None;
    }
    let t: String = t.chars().filter(|&c| c != '_').collect();
    let (negative, unsigned) = match t.as_bytes().first() {
        Some(b'+') => (false, &t[1..]),
        Some(b'-') => (true, &t[1..]),
        _ => (false, t.as_str()),
    };
    if unsigned.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = match unsigned {
        "inf" | "infinity" => f64::INFINITY,
        "nan" => f64::NAN,
        // Digits, a point and an exponent; Rust's parser then takes the same forms as Python's.
        _ if unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'+' | b'-')) =>
        {
            unsigned.parse::<f64>().ok()?
        }
        _ => return None,
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// Strips what Python's `int()` and `float()` strip: Unicode whitespace, but not the ASCII
/// separators \x1c to \x1f that `str.isspace` counts too (`int("\x1c5")` fails).
fn python_strip(s: &str) -> &str {
    s.trim()
}

/// Python's rule for underscores in numbers: each one sits between two digits.
fn underscores_between_digits(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'_'
            || (i > 0
                && bytes[i - 1].is_ascii_digit()
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
    })
}

fn python_truthy(value: &Json) -> bool {
    match value {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

/// The name of a JSON value's Python type, as it appears in Python's `TypeError` messages.
fn python_type_name(value: &Json) -> &'static str {
    match value {
        Json::Null => "NoneType",
        Json::Bool(_) => "bool",
        Json::Number(n) if n.is_f64() => "float",
        Json::Number(_) => "int",
        Json::String(_) => "str",
        Json::Array(_) => "list",
        Json::Object(_) => "dict",
    }
}

/// Python's `str()` of a JSON value as `json.loads` gives it: a string as is, anything else as its
/// `repr()` (`None`, `True`, `1.0`, `[1, 'a']`, `{'k': None}`).
fn python_str(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => python_repr(other),
    }
}

/// Python's `repr()` of a JSON value as `json.loads` gives it.
fn python_repr(value: &Json) -> String {
    match value {
        Json::Null => "None".into(),
        Json::Bool(true) => "True".into(),
        Json::Bool(false) => "False".into(),
        Json::Number(n) => match (n.is_f64(), n.as_f64()) {
            (true, Some(f)) => fmt_float(f),
            _ => n.to_string(),
        },
        Json::String(s) => python_repr_str(s),
        Json::Array(items) => {
            let items: Vec<String> = items.iter().map(python_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Json::Object(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", python_repr_str(k), python_repr(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// Python's `repr()` (and `str()`) of a list of strings: `['a', "it's"]`.
fn python_repr_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| python_repr_str(s)).collect();
    format!("[{}]", items.join(", "))
}

/// Python's `repr()` of a string: single quotes unless it holds a single quote and no double
/// quote; backslashes, the quote, \t, \n, \r and unprintable characters escaped.
fn python_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_ascii() || python_printable(c) => out.push(c),
            c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable` for a non-ASCII character: false for the general categories Cc, Cf,
/// Co, Cs, Zl, Zp, Zs and Cn. Unassigned code points other than the noncharacters are taken as
/// printable: which ones are unassigned depends on the Python version's Unicode database.
fn python_printable(c: char) -> bool {
    const NOT_PRINTABLE: &[(u32, u32)] = &[
        // Zs (space separators; U+0020 is ASCII and printable).
        (0x00a0, 0x00a0),
        (0x1680, 0x1680),
        (0x2000, 0x200a),
        (0x202f, 0x202f),
        (0x205f, 0x205f),
        (0x3000, 0x3000),
        // Zl, Zp.
        (0x2028, 0x2029),
        // Cf (format characters).
        (0x00ad, 0x00ad),
        (0x0600, 0x0605),
        (0x061c, 0x061c),
        (0x06dd, 0x06dd),
        (0x070f, 0x070f),
        (0x0890, 0x0891),
        (0x08e2, 0x08e2),
        (0x180e, 0x180e),
        (0x200b, 0x200f),
        (0x202a, 0x202e),
        (0x2060, 0x2064),
        (0x2066, 0x206f),
        (0xfeff, 0xfeff),
        (0xfff9, 0xfffb),
        (0x110bd, 0x110bd),
        (0x110cd, 0x110cd),
        (0x13430, 0x1343f),
        (0x1bca0, 0x1bca3),
        (0x1d173, 0x1d17a),
        (0xe0001, 0xe0001),
        (0xe0020, 0xe007f),
        // Co (private use).
        (0xe000, 0xf8ff),
        (0xf0000, 0xffffd),
        (0x100000, 0x10fffd),
        // Cn: the noncharacters U+FDD0 to U+FDEF (the U+xxFFFE/U+xxFFFF ones are checked below).
        (0xfdd0, 0xfdef),
    ];
    let code = c as u32;
    !c.is_control()
        && code & 0xfffe != 0xfffe
        && !NOT_PRINTABLE
            .iter()
            .any(|&(low, high)| (low..=high).contains(&code))
}

/// Formats a float as Python's `repr(float)` (and `str(float)`) does: the shortest digits that
/// read back the same, with `.0` on whole numbers (`1.0`, `0.5`), and an exponent below 1e-4 or
/// from 1e16 on (`1e-05`, `1e+16`).
pub fn fmt_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    // `{:e}` gives the same shortest digits in scientific form: "1.5e20", "-1e-5", "0e0".
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    if f == 0.0 || (-4..16).contains(&exponent) {
        let plain = format!("{f}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    }
}

/// The nodes `starts` read from, directly or not, and `starts` themselves.
fn ancestors_of(
    starts: impl IntoIterator<Item = usize>,
    local: &HashMap<usize, LocalResult>,
) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = starts.into_iter().collect();
    while let Some(i) = stack.pop() {
        if seen.insert(i) {
            if let Some(result) = local.get(&i) {
                stack.extend(result.parents.iter().copied());
            }
        }
    }
    seen
}

/// A real cycle through a strongly connected component's first node, as readable text:
/// "1 -> 3 -> 2 -> 1", each node followed by a node that one of its inputs links to.
///
/// Follows only the links that validation follows (declared inputs, as in `parents`), inside the
/// component, breadth first in input declaration order, so the path is a shortest cycle through
/// the first node and always comes back to it.
fn cycle_path(
    ids: &[&str],
    local: &HashMap<usize, LocalResult>,
    workflow: &Workflow,
    index_of: &HashMap<&str, usize>,
) -> String {
    let Some(&start_id) = ids.first() else {
        return String::new();
    };
    let members: HashSet<usize> = ids.iter().map(|id| index_of[id]).collect();
    let start = index_of[start_id];
    // For each node reached, the node whose input led to it.
    let mut reached_from: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    let mut closing = None;
    'search: while let Some(i) = queue.pop_front() {
        for &parent in &local[&i].parents {
            if parent == start {
                closing = Some(i);
                break 'search;
            }
            if members.contains(&parent) && !reached_from.contains_key(&parent) {
                reached_from.insert(parent, i);
                queue.push_back(parent);
            }
        }
    }
    let Some(mut i) = closing else {
        // Not reachable for a real component; name its members rather than nothing.
        return ids.join(", ");
    };
    let mut path = vec![start];
    while i != start {
        path.push(i);
        i = reached_from[&i];
    }
    path.push(start);
    path.reverse();
    path.iter()
        .map(|&i| workflow.nodes[i].id.as_str())
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn build_plan(
    workflow: &Workflow,
    specs: &HashMap<&str, &NodeSpec>,
    local: &HashMap<usize, LocalResult>,
    index_of: &HashMap<&str, usize>,
    good_outputs: &[&str],
) -> Plan {
    // One walk from every output at once: each node is visited once however many outputs share it.
    let needed = ancestors_of(good_outputs.iter().map(|o| index_of[o]), local);

    // Kahn's algorithm, ties broken by node id so the order users see is stable.
    let mut remaining_parents: HashMap<usize, usize> = HashMap::new();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    for &i in &needed {
        let parents: BTreeSet<usize> = local[&i].parents.iter().copied().collect();
        remaining_parents.insert(i, parents.len());
        for p in parents {
            children.entry(p).or_default().push(i);
        }
    }
    let key = |i: usize| NodeKey(workflow.nodes[i].id.clone(), i);
    let mut ready: BTreeSet<NodeKey> = needed
        .iter()
        .copied()
        .filter(|i| remaining_parents[i] == 0)
        .map(key)
        .collect();
    let mut order = Vec::with_capacity(needed.len());
    while let Some(next) = ready.pop_first() {
        let i = next.1;
        order.push(i);
        for &child in children.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
            let count = remaining_parents.get_mut(&child).expect("child is needed");
            *count -= 1;
            if *count == 0 {
                ready.insert(key(child));
            }
        }
    }

    let position: HashMap<usize, usize> =
        order.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();
    let nodes = order
        .iter()
        .map(|&i| {
            let node = &workflow.nodes[i];
            let inputs = local[&i]
                .inputs
                .iter()
                .map(|(name, input)| {
                    let input = match input {
                        PlanInput::Link { node, slot } => PlanInput::Link {
                            node: position[node],
                            slot: *slot,
                        },
                        PlanInput::Const(v) => PlanInput::Const(v.clone()),
                    };
                    (name.clone(), input)
                })
                .collect();
            PlanNode {
                id: node.id.clone(),
                class_type: specs[node.id.as_str()].class_type,
                inputs,
            }
        })
        .collect();
    let outputs = good_outputs.iter().map(|s| (*s).to_owned()).collect();
    Plan::new(nodes, outputs)
}

#[derive(PartialEq, Eq)]
struct NodeKey(String, usize);

impl PartialOrd for NodeKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_node_ids(&self.0, &other.0).then(self.1.cmp(&other.1))
    }
}

/// Writes validated constants back into an API-format prompt, as ComfyUI stores the coerced prompt
/// in the queue and history (`{"__value__": …}` unwrapped, `"5"` stored as `5` for an INT input).
pub fn coerced_prompt(original: &Json, plan: &Plan) -> Json {
    let mut prompt = original.clone();
    for node in plan.nodes() {
        let Some(inputs) = prompt
            .get_mut(&node.id)
            .and_then(|n| n.get_mut("inputs"))
            .and_then(Json::as_object_mut)
        else {
            continue;
        };
        for (name, input) in &node.inputs {
            if let PlanInput::Const(value) = input {
                inputs.insert(name.clone(), value.to_json());
            }
        }
    }
    prompt
}
