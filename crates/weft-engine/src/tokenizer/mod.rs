//! CLIP tokenization as ComfyUI does it: BPE ids equal to HF `CLIPTokenizer`'s, ComfyUI's prompt
//! weighting syntax, `embedding:name` textual-inversion references, and 77-token chunking.
//!
//! This module knows nothing about models: it turns text into `TokenChunk`s that
//! `crate::clip` encodes.

pub mod bpe;
pub mod sd;
pub mod weights;

pub use bpe::{ClipBpe, TextCleaning, END_OF_TEXT, START_OF_TEXT, VOCAB_SIZE};
pub use sd::{
    EmbeddingLookup, PromptToken, SdTokenizer, SdTokenizerConfig, TokenChunk, WeightedToken,
};
pub use weights::{parse_weighted_prompt, WeightedSegment};
