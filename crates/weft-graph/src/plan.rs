//! The validated, ordered form of a workflow that the executor runs.

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// A constant input after coercion to its declared type.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstValue {
    /// An `INT` input's value.
    Int(i128),
    /// A `FLOAT` input's value.
    Float(f64),
    /// A `STRING` input's text, or the chosen option of a `COMBO`.
    String(String),
    /// A `BOOLEAN` input's value.
    Bool(bool),
}

impl ConstValue {
    /// The value as JSON; integers beyond `u64` become strings and non-finite floats null.
    pub fn to_json(&self) -> Json {
        match self {
            ConstValue::Int(i) => {
                if let Ok(v) = i64::try_from(*i) {
                    Json::from(v)
                } else if let Ok(v) = u64::try_from(*i) {
                    Json::from(v)
                } else {
                    Json::from(i.to_string())
                }
            }
            ConstValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(Json::Number)
                .unwrap_or(Json::Null),
            ConstValue::String(s) => Json::from(s.as_str()),
            ConstValue::Bool(b) => Json::from(*b),
        }
    }

    /// A short form for error reports (`current_inputs`).
    pub fn summary(&self) -> Json {
        match self {
            ConstValue::String(s) if s.chars().count() > 200 => {
                Json::from(format!("{}…", s.chars().take(200).collect::<String>()))
            }
            other => other.to_json(),
        }
    }
}

/// One input of a plan node.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanInput {
    /// Output `slot` of the plan node at index `node` (always earlier in the order).
    Link {
        /// Index of the source node in [`Plan::nodes`].
        node: usize,
        /// Index of the source node's output, from 0.
        slot: usize,
    },
    /// A constant, coerced to the input's declared type and range-checked.
    Const(ConstValue),
}

/// One node to run.
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// The node's id in the workflow (`"3"`).
    pub id: String,
    /// The node class, as its `NodeSpec` spells it.
    pub class_type: &'static str,
    /// Declared inputs that are present, in declaration order.
    pub inputs: Vec<(String, PlanInput)>,
}

impl PlanNode {
    /// The input called `name`, or None when it is absent (an optional input left out).
    pub fn input(&self, name: &str) -> Option<&PlanInput> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// What a good prompt needs: every node its requested outputs depend on, in topological order
/// (ties broken by node id), and the output node ids.
#[derive(Debug, Clone)]
pub struct Plan {
    nodes: Vec<PlanNode>,
    outputs: Vec<String>,
}

impl Plan {
    pub(crate) fn new(nodes: Vec<PlanNode>, outputs: Vec<String>) -> Plan {
        Plan { nodes, outputs }
    }

    /// The nodes to run, in execution order; every link points to an earlier node.
    pub fn nodes(&self) -> &[PlanNode] {
        &self.nodes
    }

    /// The ids of the output nodes that validated, in workflow order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// The position of the node with workflow id `id` in [`Plan::nodes`], or None if it is not planned.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Cache signatures for every node, in plan order.
    ///
    /// A key covers the class, the constants, what the outside world says about the node
    /// (`freshness[i]`: a file hash, or a unique token for never-cached nodes) and the parents'
    /// keys with the slot used. Node ids are not part of it, so renumbering keeps the cache.
    /// Each input's own digest is kept too, so a cache miss can be explained input by input.
    pub fn signatures(&self, freshness: &[Option<String>]) -> Vec<Signature> {
        let mut signatures: Vec<Signature> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let mut inputs: Vec<(String, [u8; 32])> = node
                .inputs
                .iter()
                .map(|(name, input)| {
                    let mut hasher = Sha256::new();
                    match input {
                        PlanInput::Link { node, slot } => {
                            hasher.update(b"link\0");
                            hasher.update(signatures[*node].key.0);
                            hasher.update((*slot as u64).to_le_bytes());
                        }
                        PlanInput::Const(value) => {
                            hasher.update(b"const\0");
                            hash_const(&mut hasher, value);
                        }
                    }
                    (name.clone(), hasher.finalize().into())
                })
                .collect();
            inputs.sort_by(|a, b| a.0.cmp(&b.0));
            let freshness = freshness.get(i).cloned().flatten();
            let mut hasher = Sha256::new();
            hasher.update(b"weft-cache-v1\0");
            hasher.update(node.class_type.as_bytes());
            hasher.update([0]);
            if let Some(token) = &freshness {
                hasher.update(b"fresh\0");
                hasher.update(token.as_bytes());
                hasher.update([0]);
            }
            for (name, digest) in &inputs {
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update(digest);
            }
            signatures.push(Signature {
                key: CacheKey(hasher.finalize().into()),
                inputs,
                freshness,
            });
        }
        signatures
    }
}

/// A node's cache key with the parts it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The key the node's outputs are cached under.
    pub key: CacheKey,
    /// Per-input digests, sorted by input name.
    pub inputs: Vec<(String, [u8; 32])>,
    /// The outside-world token that went into the key (a file hash, or a unique token for
    /// never-cached nodes); None for pure nodes.
    pub freshness: Option<String>,
}

fn hash_const(hasher: &mut Sha256, value: &ConstValue) {
    match value {
        ConstValue::Int(i) => {
            hasher.update(b"i");
            hasher.update(i.to_le_bytes());
        }
        ConstValue::Float(f) => {
            hasher.update(b"f");
            hasher.update(f.to_bits().to_le_bytes());
        }
        ConstValue::String(s) => {
            hasher.update(b"s");
            hasher.update((s.len() as u64).to_le_bytes());
            hasher.update(s.as_bytes());
        }
        ConstValue::Bool(b) => {
            hasher.update(b"b");
            hasher.update([u8::from(*b)]);
        }
    }
}

/// The content key of a node's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// The first 8 bytes as 16 lowercase hex digits, for logs and progress events.
    pub fn short_hex(&self) -> String {
        hex::encode(&self.0[..8])
    }
}
