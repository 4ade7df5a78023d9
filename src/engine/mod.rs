//! Tensor maths: image resizing now; the diffusion models, samplers and preprocessors join here.
//!
//! Invariant: knows nothing about graphs, HTTP, SQL or tokio, so it can be tested with tensors
//! alone.

pub mod resize;
