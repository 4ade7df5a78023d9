//! Expands subgraph instances and group nodes into one flat list of nodes with execution ids
//! (`12:5`, `12:5:3`), and resolves inputs to the node that really produces them, as the
//! frontend's `ExecutableNodeDTO.resolveInput`/`resolveOutput` do: through reroutes, bypassed
//! nodes and subgraph borders.
//!
//! Resolution follows a chain one step at a time in a loop, so a long chain of reroutes cannot
//! overflow the stack, and remembers each slot it passed so a loop is reported instead of followed.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::Value as Json;

use crate::document::{
    Document, Graph, InputSlot, LinkEnd, Node, Subgraph, SubgraphKind, WidgetValues, MODE_BYPASS,
};
use crate::group_nodes::group_name;
use crate::widgets::is_valid_connection;
use crate::{EditorError, EditorErrorKind, MAX_EXPANDED_NODES, MAX_SUBGRAPH_DEPTH};
use weft_graph::spec::{InputKind, NodeSpec};
use weft_graph::validate::Catalog;

/// Every node of the workflow after expansion, containers included.
pub(crate) struct Flat<'d> {
    pub execs: Vec<Exec<'d>>,
    scopes: Vec<Scope<'d>>,
    pub warnings: Vec<String>,
}

/// One node after expansion.
pub(crate) struct Exec<'d> {
    /// The id the prompt uses: the node id, prefixed by the ids of the instances around it.
    pub exec_id: String,
    pub node: &'d Node<'d>,
    pub role: Role<'d>,
    scope: usize,
    /// The inputs links are resolved from. A container has one per input of its definition.
    pub inputs: Cow<'d, [InputSlot]>,
    /// Widget values set from outside the node (a PrimitiveNode, a group node's widgets), by
    /// widget name.
    pub overrides: HashMap<String, Json>,
    /// For subgraph instances: the instance's own value of each promoted widget, by definition
    /// input.
    promoted: Vec<Option<Json>>,
}

/// What a node is.
#[derive(Clone, Copy)]
pub(crate) enum Role<'d> {
    Known(&'d NodeSpec),
    /// A type neither the catalog nor the document defines.
    Unknown,
    Reroute,
    Primitive,
    Note,
    /// A subgraph instance or a legacy group node.
    Container {
        definition: &'d Subgraph<'d>,
        inner_scope: usize,
    },
}

/// One graph as instantiated: the root, or the inside of one container.
struct Scope<'d> {
    graph: &'d Graph<'d>,
    container: Option<usize>,
    /// False inside a muted or bypassed container: its nodes are not sent.
    enabled: bool,
    /// Inside a legacy group node, whose widgets already set what its primitives feed.
    in_group: bool,
    exec_of: HashMap<&'d str, usize>,
}

/// Where an input's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resolved {
    /// Output `slot` of the node at `origin` in `Flat::execs`.
    Link {
        origin: usize,
        slot: usize,
    },
    /// The value of a subgraph instance's widget.
    Widget(Json),
    Unconnected,
}

/// Expands the root graph of `document`. `groups` holds the group node definitions by name.
pub(crate) fn flatten<'d>(
    document: &'d Document<'d>,
    groups: &'d HashMap<String, Subgraph<'d>>,
    catalog: &'d dyn Catalog,
    missing: &mut BTreeSet<String>,
) -> Result<Flat<'d>, EditorError> {
    let mut expander = Expander {
        document,
        groups,
        catalog,
        missing,
        flat: Flat {
            execs: Vec::new(),
            scopes: Vec::new(),
            warnings: Vec::new(),
        },
    };
    let mut stack = Vec::new();
    expander.expand(&document.root, None, "", true, &mut stack)?;
    let mut flat = expander.flat;
    flat.apply_primitives();
    Ok(flat)
}

struct Expander<'d, 'm> {
    document: &'d Document<'d>,
    groups: &'d HashMap<String, Subgraph<'d>>,
    catalog: &'d dyn Catalog,
    missing: &'m mut BTreeSet<String>,
    flat: Flat<'d>,
}

impl<'d> Expander<'d, '_> {
    fn expand(
        &mut self,
        graph: &'d Graph<'d>,
        container: Option<usize>,
        path: &str,
        enabled: bool,
        stack: &mut Vec<&'d str>,
    ) -> Result<usize, EditorError> {
        let scope = self.flat.scopes.len();
        let in_group = container.is_some_and(|c| {
            matches!(
                self.flat.execs[c].role,
                Role::Container { definition, .. }
                    if matches!(definition.kind, SubgraphKind::LegacyGroup { .. })
            )
        });
        self.flat.scopes.push(Scope {
            graph,
            container,
            enabled,
            in_group,
            exec_of: HashMap::new(),
        });
        for node in &graph.nodes {
            let exec_id = if path.is_empty() {
                node.id.clone()
            } else {
                format!("{path}:{}", node.id)
            };
            if self.flat.execs.len() >= MAX_EXPANDED_NODES {
                return Err(EditorError::new(
                    Some(&exec_id),
                    "id",
                    EditorErrorKind::TooManyNodes,
                ));
            }
            for (slot, input) in node.inputs.iter().enumerate() {
                if let Some(link) = &input.link {
                    if !graph.links.contains_key(link) {
                        self.flat.warnings.push(format!(
                            "node {exec_id} ({}): input '{}' (inputs[{slot}]) refers to link {link}, \
                             which is not in the workflow; it is treated as unconnected",
                            node.node_type, input.name
                        ));
                    }
                }
            }
            let role = self.classify(node);
            let index = self.flat.execs.len();
            self.flat.execs.push(Exec {
                exec_id: exec_id.clone(),
                node,
                role,
                scope,
                inputs: Cow::Borrowed(&node.inputs),
                overrides: HashMap::new(),
                promoted: Vec::new(),
            });
            self.flat.scopes[scope].exec_of.insert(&node.id, index);
            if let Role::Container { definition, .. } = role {
                if stack.contains(&definition.id.as_str()) {
                    return Err(EditorError::new(
                        Some(&exec_id),
                        "type",
                        EditorErrorKind::RecursiveSubgraph {
                            subgraph_id: definition.id.clone(),
                        },
                    ));
                }
                if stack.len() >= MAX_SUBGRAPH_DEPTH {
                    return Err(EditorError::new(
                        Some(&exec_id),
                        "type",
                        EditorErrorKind::TooDeep,
                    ));
                }
                stack.push(&definition.id);
                let inner_enabled = enabled && !node.is_muted_or_bypassed();
                let inner_scope = self.expand(
                    &definition.graph,
                    Some(index),
                    &exec_id,
                    inner_enabled,
                    stack,
                )?;
                stack.pop();
                self.instantiate(index, definition, inner_scope);
            }
        }
        Ok(scope)
    }

    fn classify(&mut self, node: &Node<'_>) -> Role<'d> {
        let node_type = node.node_type.as_str();
        match node_type {
            "Reroute" => return Role::Reroute,
            "PrimitiveNode" => return Role::Primitive,
            "Note" | "MarkdownNote" => return Role::Note,
            _ => {}
        }
        if let Some(definition) = self.document.subgraphs.get(node_type) {
            return Role::Container {
                definition,
                inner_scope: usize::MAX,
            };
        }
        if let Some(definition) = group_name(node_type).and_then(|name| self.groups.get(name)) {
            return Role::Container {
                definition,
                inner_scope: usize::MAX,
            };
        }
        if let Some(spec) = self.catalog.spec(node_type) {
            return Role::Known(spec);
        }
        self.missing.insert(node_type.to_owned());
        Role::Unknown
    }

    /// Fills in a container once its inside is expanded: its inputs in definition order, its
    /// promoted widget values, and for group nodes the values its widgets write inside.
    fn instantiate(&mut self, index: usize, definition: &'d Subgraph<'d>, inner_scope: usize) {
        let node = self.flat.execs[index].node;
        let promoted_flags: Vec<bool> = match definition.kind {
            SubgraphKind::Subgraph => definition
                .inputs
                .iter()
                .map(|io| {
                    io.link_ids
                        .iter()
                        .any(|id| self.target_widget(inner_scope, id).is_some())
                })
                .collect(),
            SubgraphKind::LegacyGroup { .. } => vec![false; definition.inputs.len()],
        };
        let mut used = vec![false; node.inputs.len()];
        let inputs: Vec<InputSlot> = definition
            .inputs
            .iter()
            .enumerate()
            .map(|(k, io)| {
                let found = node
                    .inputs
                    .iter()
                    .enumerate()
                    .position(|(i, input)| {
                        !used[i] && input.name == io.name && input.slot_type == io.slot_type
                    })
                    .or_else(|| {
                        node.inputs
                            .iter()
                            .enumerate()
                            .position(|(i, input)| !used[i] && input.name == io.name)
                    })
                    .or_else(|| (k < node.inputs.len() && !used[k]).then_some(k));
                if let Some(i) = found {
                    used[i] = true;
                }
                InputSlot {
                    name: io.name.clone(),
                    slot_type: io.slot_type.clone(),
                    link: found.and_then(|i| node.inputs[i].link.clone()),
                    widget: promoted_flags[k].then(|| io.name.clone()),
                }
            })
            .collect();

        let mut promoted = vec![None; definition.inputs.len()];
        match (&definition.kind, node.widgets_values) {
            (SubgraphKind::Subgraph, WidgetValues::List(values)) => {
                let positions: Vec<usize> = (0..promoted_flags.len())
                    .filter(|&k| promoted_flags[k])
                    .collect();
                // Older saves keep a slot for each seed's control widget (see
                // `SubgraphNode._applyPromotedWidgetValues`).
                let with_controls = values.len() > positions.len();
                let mut cursor = 0;
                for k in positions {
                    promoted[k] = values.get(cursor).filter(|v| !v.is_null()).cloned();
                    cursor += 1;
                    if with_controls
                        && self.promotes_seed(inner_scope, &definition.inputs[k].link_ids)
                    {
                        cursor += 1;
                    }
                }
            }
            (SubgraphKind::Subgraph, WidgetValues::Named(values)) => {
                for (k, io) in definition.inputs.iter().enumerate() {
                    if promoted_flags[k] {
                        promoted[k] = values.get(&io.name).filter(|v| !v.is_null()).cloned();
                    }
                }
            }
            (SubgraphKind::LegacyGroup { widgets }, WidgetValues::List(values)) => {
                let mut cursor = 0;
                for widget in widgets {
                    if let Some(value) = values.get(cursor).filter(|v| !v.is_null()) {
                        for (inner_id, name) in &widget.targets {
                            if let Some(&inner) =
                                self.flat.scopes[inner_scope].exec_of.get(inner_id.as_str())
                            {
                                self.flat.execs[inner]
                                    .overrides
                                    .insert(name.clone(), value.clone());
                            }
                        }
                    }
                    cursor += 1 + widget.hidden_slots;
                }
            }
            _ => {}
        }
        let exec = &mut self.flat.execs[index];
        exec.role = Role::Container {
            definition,
            inner_scope,
        };
        exec.inputs = Cow::Owned(inputs);
        exec.promoted = promoted;
    }

    /// The widget an inner link of a subgraph input ends at, if it ends at one.
    fn target_widget(&self, scope: usize, link_id: &str) -> Option<(usize, String)> {
        let scope = &self.flat.scopes[scope];
        let link = scope.graph.links.get(link_id)?;
        let LinkEnd::Node(target_id) = &link.target else {
            return None;
        };
        let &target = scope.exec_of.get(target_id.as_str())?;
        let exec = &self.flat.execs[target];
        let input = exec.inputs.get(link.target_slot)?;
        if let Some(widget) = &input.widget {
            return Some((target, widget.clone()));
        }
        match exec.role {
            Role::Known(spec) => spec
                .input(&input.name)
                .filter(|i| i.kind.is_widget())
                .map(|i| (target, i.name.to_owned())),
            _ => None,
        }
    }

    fn promotes_seed(&self, scope: usize, link_ids: &[String]) -> bool {
        link_ids.iter().any(|id| {
            let Some((target, widget)) = self.target_widget(scope, id) else {
                return false;
            };
            match self.flat.execs[target].role {
                Role::Known(spec) => spec.input(&widget).is_some_and(|i| {
                    matches!(i.kind, InputKind::Int { control_after_generate, .. }
                        if control_after_generate || i.name == "seed" || i.name == "noise_seed")
                }),
                _ => false,
            }
        })
    }
}

impl<'d> Flat<'d> {
    /// True for the nodes the prompt contains: real nodes that are neither muted nor bypassed nor
    /// inside a muted or bypassed container.
    pub fn is_sent(&self, index: usize) -> bool {
        let exec = &self.execs[index];
        matches!(exec.role, Role::Known(_) | Role::Unknown)
            && !exec.node.is_muted_or_bypassed()
            && self.scopes[exec.scope].enabled
    }

    /// Where input `slot` of node `index` gets its value.
    pub fn resolve_input(&self, index: usize, slot: usize) -> Result<Resolved, EditorError> {
        enum Step {
            Input {
                exec: usize,
                slot: usize,
                slot_type: Option<String>,
            },
            Output {
                exec: usize,
                slot: usize,
                slot_type: String,
            },
        }
        let mut visited: HashSet<(usize, bool, usize)> = HashSet::new();
        let mut step = Step::Input {
            exec: index,
            slot,
            slot_type: None,
        };
        loop {
            step = match step {
                Step::Input {
                    exec,
                    slot,
                    slot_type,
                } => {
                    if !visited.insert((exec, true, slot)) {
                        return Err(self.cycle(exec, slot));
                    }
                    let node = &self.execs[exec];
                    let Some(input) = node.inputs.get(slot) else {
                        return Ok(Resolved::Unconnected);
                    };
                    let Some(link_id) = &input.link else {
                        return Ok(Resolved::Unconnected);
                    };
                    let scope = &self.scopes[node.scope];
                    let Some(link) = scope.graph.links.get(link_id) else {
                        return Ok(Resolved::Unconnected);
                    };
                    let slot_type = slot_type.unwrap_or_else(|| input.slot_type.clone());
                    match &link.origin {
                        LinkEnd::Node(origin_id) => {
                            let Some(&origin) = scope.exec_of.get(origin_id.as_str()) else {
                                return Err(EditorError::new(
                                    Some(&node.exec_id),
                                    format!("inputs[{slot}].link"),
                                    EditorErrorKind::MissingNode {
                                        origin_id: origin_id.clone(),
                                    },
                                ));
                            };
                            Step::Output {
                                exec: origin,
                                slot: link.origin_slot,
                                slot_type,
                            }
                        }
                        LinkEnd::SubgraphInput => {
                            let Some(container) = scope.container else {
                                return Ok(Resolved::Unconnected);
                            };
                            let outer = &self.execs[container];
                            let Some(outer_input) = outer.inputs.get(link.origin_slot) else {
                                return Ok(Resolved::Unconnected);
                            };
                            if outer_input.link.is_none() {
                                if outer_input.widget.is_some() {
                                    if let Some(value) =
                                        self.promoted_value(container, link.origin_slot)
                                    {
                                        return Ok(Resolved::Widget(value));
                                    }
                                }
                                return Ok(Resolved::Unconnected);
                            }
                            Step::Input {
                                exec: container,
                                slot: link.origin_slot,
                                slot_type: None,
                            }
                        }
                        LinkEnd::SubgraphOutput => return Ok(Resolved::Unconnected),
                    }
                }
                Step::Output {
                    exec,
                    slot,
                    slot_type,
                } => {
                    if !visited.insert((exec, false, slot)) {
                        return Err(self.cycle(exec, slot));
                    }
                    let node = &self.execs[exec];
                    if node.node.mode == MODE_BYPASS {
                        match bypass_slot(node, slot, &slot_type) {
                            Some(input) => Step::Input {
                                exec,
                                slot: input,
                                slot_type: None,
                            },
                            None => return Ok(Resolved::Unconnected),
                        }
                    } else {
                        match node.role {
                            Role::Known(_) | Role::Unknown => {
                                return Ok(Resolved::Link { origin: exec, slot })
                            }
                            Role::Reroute | Role::Primitive | Role::Note => {
                                if slot >= node.inputs.len() {
                                    return Ok(Resolved::Unconnected);
                                }
                                Step::Input {
                                    exec,
                                    slot,
                                    slot_type: Some(slot_type),
                                }
                            }
                            Role::Container {
                                definition,
                                inner_scope,
                            } => {
                                let inner = &self.scopes[inner_scope];
                                let Some(link) = definition
                                    .outputs
                                    .get(slot)
                                    .and_then(|io| io.link_ids.first())
                                    .and_then(|id| inner.graph.links.get(id))
                                else {
                                    return Ok(Resolved::Unconnected);
                                };
                                match &link.origin {
                                    LinkEnd::Node(origin_id) => {
                                        let Some(&origin) = inner.exec_of.get(origin_id.as_str())
                                        else {
                                            return Err(EditorError::new(
                                                Some(&node.exec_id),
                                                format!("outputs[{slot}]"),
                                                EditorErrorKind::MissingNode {
                                                    origin_id: origin_id.clone(),
                                                },
                                            ));
                                        };
                                        Step::Output {
                                            exec: origin,
                                            slot: link.origin_slot,
                                            slot_type,
                                        }
                                    }
                                    // An input passed straight through to an output.
                                    LinkEnd::SubgraphInput => Step::Input {
                                        exec,
                                        slot: link.origin_slot,
                                        slot_type: Some(slot_type),
                                    },
                                    LinkEnd::SubgraphOutput => return Ok(Resolved::Unconnected),
                                }
                            }
                        }
                    }
                }
            };
        }
    }

    fn promoted_value(&self, container: usize, slot: usize) -> Option<Json> {
        let exec = &self.execs[container];
        let name = &exec.inputs.get(slot)?.name;
        exec.overrides
            .get(name)
            .cloned()
            .or_else(|| exec.promoted.get(slot).cloned().flatten())
    }

    fn cycle(&self, exec: usize, slot: usize) -> EditorError {
        EditorError::new(
            Some(&self.execs[exec].exec_id),
            format!("slot {slot}"),
            EditorErrorKind::LinkCycle,
        )
    }

    /// Writes each PrimitiveNode's value into the widgets it feeds, through reroutes
    /// (`widgetInputs.ts applyToGraph`). The frontend does this for every primitive, muted or not.
    fn apply_primitives(&mut self) {
        let primitives: Vec<usize> = (0..self.execs.len())
            .filter(|&i| matches!(self.execs[i].role, Role::Primitive))
            .filter(|&i| !self.scopes[self.execs[i].scope].in_group)
            .collect();
        for primitive in primitives {
            let node = self.execs[primitive].node;
            let value = match node.widgets_values {
                WidgetValues::List(values) => values.first(),
                WidgetValues::Named(values) => values.get("value"),
                WidgetValues::Absent => None,
            };
            let Some(value) = value.cloned() else {
                continue;
            };
            let replaces = node
                .properties
                .and_then(|p| p.get("Run widget replace on values"))
                .and_then(Json::as_bool)
                .unwrap_or(false);
            if replaces && value.as_str().is_some_and(|s| s.contains('%')) {
                self.warnings.push(format!(
                    "node {}: PrimitiveNode text replacements (%...%) are not applied",
                    self.execs[primitive].exec_id
                ));
            }
            for (target, slot) in self.primitive_targets(primitive) {
                let Some(widget) = self.execs[target]
                    .inputs
                    .get(slot)
                    .and_then(|input| input.widget.clone())
                else {
                    continue;
                };
                self.execs[target].overrides.insert(widget, value.clone());
            }
        }
    }

    /// The inputs a primitive's output reaches, looking through reroutes.
    fn primitive_targets(&self, primitive: usize) -> Vec<(usize, usize)> {
        let scope = &self.scopes[self.execs[primitive].scope];
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        let mut pending = vec![primitive];
        while let Some(source) = pending.pop() {
            if !seen.insert(source) {
                continue;
            }
            let Some(output) = self.execs[source].node.outputs.first() else {
                continue;
            };
            for link_id in &output.links {
                let Some(link) = scope.graph.links.get(link_id) else {
                    continue;
                };
                let LinkEnd::Node(target_id) = &link.target else {
                    continue;
                };
                let Some(&target) = scope.exec_of.get(target_id.as_str()) else {
                    continue;
                };
                if matches!(self.execs[target].role, Role::Reroute) {
                    pending.push(target);
                } else {
                    targets.push((target, link.target_slot));
                }
            }
        }
        targets
    }
}

/// Which input a bypassed node passes to output `slot`, for a consumer expecting `slot_type`
/// (`ExecutableNodeDTO.#getBypassSlotIndex`): the input at the same index when its type fits,
/// else the first input of exactly that type, else the first that fits.
fn bypass_slot(exec: &Exec<'_>, slot: usize, slot_type: &str) -> Option<usize> {
    let inputs = &exec.inputs;
    if inputs.is_empty() {
        return None;
    }
    if slot_type.is_empty() || slot_type == "*" {
        return Some(if slot < inputs.len() { slot } else { 0 });
    }
    let output_type = exec
        .node
        .outputs
        .get(slot)
        .map_or("*", |o| o.slot_type.as_str());
    let fits = |input: &InputSlot| {
        is_valid_connection(&input.slot_type, output_type)
            && is_valid_connection(&input.slot_type, slot_type)
    };
    if inputs.get(slot).is_some_and(fits) {
        return Some(slot);
    }
    inputs
        .iter()
        .position(|input| input.slot_type == slot_type)
        .or_else(|| inputs.iter().position(fits))
}
