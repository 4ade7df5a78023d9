//! CLIP text encoders for Stable Diffusion, matching ComfyUI's conditioning.
//!
//! - `model`: the CLIP text transformer (`ClipTextModel`, HF transformers key names);
//! - `convert`: checkpoint key maps (LDM prefixes, OpenCLIP to HF) applied at the loading
//!   boundary;
//! - `encode`: ComfyUI's encoding semantics (token weights, chunk concatenation, layer choice per
//!   model family: SD1, SD2, SDXL, SDXL refiner).
//!
//! Tokenization lives in `crate::tokenizer`. Nothing here reads files.

pub mod convert;
pub mod encode;
pub mod model;

pub use convert::{
    hf_clip_from_ldm, infer_clip_config, openclip_to_hf, sd1_clip_l, sd2_clip_h, sdxl_clip_g,
    sdxl_clip_l, sdxl_refiner_clip_g,
};
pub use encode::{
    ClipEncoder, ClipEncoderConfig, ClipLayer, Conditioning, EncodedText, PromptTokens,
    SpecialTokens, TextEncoder, TextEncoderKind,
};
pub use model::{ClipActivation, ClipConfig, ClipForwardOptions, ClipTextModel, ClipTextOutput};

/// Errors of the CLIP text encoders.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClipError {
    /// A tensor operation failed (shapes, dtypes, devices, missing weights).
    #[error("clip tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A configuration that cannot describe a model.
    #[error("invalid clip config: {0}")]
    InvalidConfig(String),
    /// Input that does not fit the model.
    #[error("invalid clip input: {0}")]
    InvalidInput(String),
    /// A sequence longer than the position table.
    #[error("token sequence of {len} is longer than the {max} positions of the text encoder")]
    SequenceTooLong {
        /// Length given.
        len: usize,
        /// Positions available.
        max: usize,
    },
    /// Embeddings whose width is not the model's.
    #[error("token embeddings are {got} wide but the text encoder is {expected} wide")]
    EmbeddingWidth {
        /// Width given.
        got: usize,
        /// Model width.
        expected: usize,
    },
    /// A layer index outside the model (ComfyUI's `intermediate_output`).
    #[error("clip layer {layer} does not exist in a {num_layers}-layer text encoder")]
    LayerOutOfRange {
        /// Index asked for.
        layer: isize,
        /// Layers in the model.
        num_layers: usize,
    },
    /// A checkpoint tensor that cannot be converted.
    #[error("cannot convert clip weight '{key}': {reason}")]
    BadWeight {
        /// The checkpoint key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A required checkpoint tensor is absent.
    #[error("clip weight '{key}' is missing")]
    MissingWeight {
        /// The key looked for.
        key: String,
    },
}
