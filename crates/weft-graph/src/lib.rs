//! Workflow graphs: the API format as given (`Workflow`), node declarations (`NodeSpec`),
//! validation into a typed, ordered `Plan`, and content cache keys.
//!
//! Invariant: this layer does no IO, has no async code and imports no other Weft layer.
//! Validation never runs a node; what it needs from the registry comes through `Catalog`.

#![warn(missing_docs)]

pub mod plan;
pub mod spec;
pub mod validate;
pub mod workflow;

pub use plan::{CacheKey, ConstValue, Plan, PlanInput, PlanNode, Signature};
pub use spec::{NodeSpec, SlotType};
pub use validate::{validate, Catalog, NodeErrors, PromptError, Validation};
pub use workflow::{RawInput, Workflow};
