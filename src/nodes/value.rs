//! Runtime values that flow along links, and the typed view a node gets of its inputs.

use candle_core::Tensor;

use crate::graph::{ConstValue, SlotType};
use crate::nodes::NodeError;

/// A value on a link or a constant input.
#[derive(Debug, Clone)]
pub enum Value {
    Int(i128),
    Float(f64),
    String(String),
    Bool(bool),
    /// `[B, H, W, C]` f32 in 0..1.
    Image(Tensor),
    /// `[B, H, W]` f32 in 0..1.
    Mask(Tensor),
}

impl Value {
    /// The slot type this value satisfies.
    pub fn slot_type(&self) -> SlotType {
        match self {
            Value::Int(_) => SlotType::INT,
            Value::Float(_) => SlotType::FLOAT,
            Value::String(_) => SlotType::STRING,
            Value::Bool(_) => SlotType::BOOLEAN,
            Value::Image(_) => SlotType::IMAGE,
            Value::Mask(_) => SlotType::MASK,
        }
    }

    /// Bytes held, for the cache budget.
    pub fn byte_size(&self) -> usize {
        match self {
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => 16,
            Value::String(s) => 24 + s.len(),
            Value::Image(t) | Value::Mask(t) => t.elem_count() * t.dtype().size_in_bytes(),
        }
    }

    /// A short description for error reports (`current_inputs`).
    pub fn summary(&self) -> serde_json::Value {
        match self {
            Value::Int(i) => ConstValue::Int(*i).to_json(),
            Value::Float(f) => ConstValue::Float(*f).to_json(),
            Value::String(s) => ConstValue::String(s.clone()).summary(),
            Value::Bool(b) => serde_json::Value::from(*b),
            Value::Image(t) | Value::Mask(t) => serde_json::Value::from(format!(
                "{} {:?} {:?}",
                self.slot_type().0,
                t.dims(),
                t.dtype()
            )),
        }
    }

    pub fn from_const(value: &ConstValue) -> Value {
        match value {
            ConstValue::Int(i) => Value::Int(*i),
            ConstValue::Float(f) => Value::Float(*f),
            ConstValue::String(s) => Value::String(s.clone()),
            ConstValue::Bool(b) => Value::Bool(*b),
        }
    }
}

/// A node's inputs by name, with typed getters that name the input in their errors.
#[derive(Debug, Default)]
pub struct Inputs {
    values: Vec<(String, Value)>,
}

impl Inputs {
    pub fn new(values: Vec<(String, Value)>) -> Inputs {
        Inputs { values }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.values.iter().map(|(n, v)| (n.as_str(), v))
    }

    fn required(&self, name: &str) -> Result<&Value, NodeError> {
        self.get(name)
            .ok_or_else(|| NodeError::input(name, "required input is missing"))
    }

    fn wrong(name: &str, wanted: &str, got: &Value) -> NodeError {
        NodeError::input(
            name,
            format!("expected {wanted}, got {}", got.slot_type().0),
        )
    }

    pub fn int(&self, name: &str) -> Result<i128, NodeError> {
        match self.required(name)? {
            Value::Int(i) => Ok(*i),
            other => Err(Self::wrong(name, "INT", other)),
        }
    }

    /// An INT input that must fit in `usize` (sizes, counts, offsets).
    pub fn usize(&self, name: &str) -> Result<usize, NodeError> {
        let value = self.int(name)?;
        usize::try_from(value)
            .map_err(|_| NodeError::input(name, format!("{value} is not a valid size")))
    }

    pub fn float(&self, name: &str) -> Result<f64, NodeError> {
        match self.required(name)? {
            Value::Float(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => Err(Self::wrong(name, "FLOAT", other)),
        }
    }

    pub fn string(&self, name: &str) -> Result<&str, NodeError> {
        match self.required(name)? {
            Value::String(s) => Ok(s),
            other => Err(Self::wrong(name, "STRING", other)),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, NodeError> {
        match self.required(name)? {
            Value::Bool(b) => Ok(*b),
            other => Err(Self::wrong(name, "BOOLEAN", other)),
        }
    }

    pub fn image(&self, name: &str) -> Result<&Tensor, NodeError> {
        match self.required(name)? {
            Value::Image(t) => Ok(t),
            other => Err(Self::wrong(name, "IMAGE", other)),
        }
    }

    pub fn mask(&self, name: &str) -> Result<&Tensor, NodeError> {
        match self.required(name)? {
            Value::Mask(t) => Ok(t),
            other => Err(Self::wrong(name, "MASK", other)),
        }
    }
}
