//! ComfyUI's `SDTokenizer.tokenize_with_weights` (`comfy/sd1_clip.py`, current master): weighted
//! segments, `embedding:name` textual-inversion references, and chunking into 77-token sequences.
//!
//! How the prompt becomes token groups, as ComfyUI does it:
//! - the prompt is split into weighted segments (`crate::tokenizer::weights`);
//! - each segment is cut before every ` embedding:` / `\nembedding:`; a piece starting with
//!   `embedding:` names an embedding (its first whitespace-separated word; the rest of the piece is
//!   tokenized as text), looked up through `EmbeddingLookup`;
//! - every remaining piece is BPE-tokenized whole, giving one token group per piece, and each
//!   embedding is one group of its vectors.
//!
//! Chunking: each chunk is `start + up to 75 tokens + end`, padded to 77. A group that does not
//! fit in the current chunk is split at the chunk end when it has 8 or more tokens; a shorter one
//! is moved whole to the next chunk and the current chunk is padded. So the boundary is
//! "segment-aware" (a short weighted phrase or a short embedding is never cut in two), not
//! word-aware: older ComfyUI versions split segments on spaces and kept each *word* together, the
//! current one tokenizes whole segments, which is what this follows.

use std::sync::Arc;

use candle_core::Tensor;

use crate::tokenizer::bpe::{ClipBpe, END_OF_TEXT, START_OF_TEXT};
use crate::tokenizer::weights::parse_weighted_prompt;

/// One position of a chunk: a vocabulary id, or a textual-inversion vector spliced in as an extra
/// embedding row (as ComfyUI does).
#[derive(Debug, Clone)]
pub enum PromptToken {
    /// A CLIP vocabulary id.
    Id(u32),
    /// One vector of a textual-inversion embedding, shape `[dim]`, dtype as the lookup gave it.
    Embedding(Tensor),
}

impl PromptToken {
    /// The id, or `None` for an embedding vector.
    pub fn id(&self) -> Option<u32> {
        match self {
            Self::Id(id) => Some(*id),
            Self::Embedding(_) => None,
        }
    }
}

/// A token and its prompt weight (1.0 = unweighted).
#[derive(Debug, Clone)]
pub struct WeightedToken {
    /// The token.
    pub token: PromptToken,
    /// Its weight from the prompt syntax; the special tokens always have 1.0.
    pub weight: f64,
}

/// One CLIP input sequence: start token, up to 75 prompt tokens, end token and padding
/// (exactly `max_length` long when `pad_to_max_length`).
pub type TokenChunk = Vec<WeightedToken>;

/// Resolves `embedding:name` references to textual-inversion vectors.
///
/// `key` names the text encoder the vectors are for (`"clip_l"`, `"clip_h"`, `"clip_g"`: the key
/// SDXL embedding files store each encoder's vectors under), `dim` its width. Return a `[n, dim]`
/// (or `[dim]`) tensor, or `None` when there is no such embedding. ComfyUI looks the name up in its
/// embeddings folders, trying `.safetensors`, `.pt` and `.bin`.
pub trait EmbeddingLookup {
    /// The vectors of embedding `name` for encoder `key`, or `None`.
    fn lookup(&self, name: &str, key: &str, dim: usize) -> Option<Tensor>;
}

impl<F> EmbeddingLookup for F
where
    F: Fn(&str, &str, usize) -> Option<Tensor>,
{
    fn lookup(&self, name: &str, key: &str, dim: usize) -> Option<Tensor> {
        self(name, key, dim)
    }
}

/// Settings of one encoder's tokenizer (ComfyUI `SDTokenizer.__init__` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct SdTokenizerConfig {
    /// Sequence length including the start and end tokens (77).
    pub max_length: usize,
    /// Start token (49406).
    pub start_token: u32,
    /// End token (49407).
    pub end_token: u32,
    /// Padding token: 49407 (end) for CLIP-L, 0 (`!`) for OpenCLIP H and bigG.
    pub pad_token: u32,
    /// Token groups shorter than this are moved whole to the next chunk rather than split (8).
    pub max_word_length: usize,
    /// Whether every chunk is padded to `max_length` (true for all SD text encoders).
    pub pad_to_max_length: bool,
    /// Width of this encoder's token embeddings, passed to the embedding lookup.
    pub embedding_dim: usize,
    /// Key passed to the embedding lookup (`clip_l`, `clip_h`, `clip_g`).
    pub embedding_key: String,
}

impl SdTokenizerConfig {
    /// CLIP-L (SD1, SDXL first encoder): pads with the end token.
    pub fn clip_l() -> Self {
        Self::new(END_OF_TEXT, 768, "clip_l")
    }

    /// OpenCLIP ViT-H (SD2): pads with 0.
    pub fn open_clip_h() -> Self {
        Self::new(0, 1024, "clip_h")
    }

    /// OpenCLIP ViT-bigG (SDXL second encoder, SDXL refiner): pads with 0.
    pub fn open_clip_bigg() -> Self {
        Self::new(0, 1280, "clip_g")
    }

    fn new(pad_token: u32, embedding_dim: usize, embedding_key: &str) -> Self {
        Self {
            max_length: 77,
            start_token: START_OF_TEXT,
            end_token: END_OF_TEXT,
            pad_token,
            max_word_length: 8,
            pad_to_max_length: true,
            embedding_dim,
            embedding_key: embedding_key.to_string(),
        }
    }
}

/// ComfyUI's `SDTokenizer`: prompt text to weighted 77-token chunks for one text encoder.
#[derive(Debug, Clone)]
pub struct SdTokenizer {
    bpe: Arc<ClipBpe>,
    cfg: SdTokenizerConfig,
}

const EMBEDDING_IDENTIFIER: &str = "embedding:";

impl SdTokenizer {
    /// A tokenizer for one encoder sharing the (expensive to build) BPE tables.
    pub fn new(bpe: Arc<ClipBpe>, cfg: SdTokenizerConfig) -> Self {
        Self { bpe, cfg }
    }

    /// The settings.
    pub fn config(&self) -> &SdTokenizerConfig {
        &self.cfg
    }

    /// The shared BPE.
    pub fn bpe(&self) -> &ClipBpe {
        &self.bpe
    }

    /// Tokenizes `text` into chunks of `(token, weight)` as `SDTokenizer.tokenize_with_weights`.
    ///
    /// With `embeddings` set, `embedding:name` words are looked up and their vectors spliced in;
    /// without it they are tokenized as text, as ComfyUI does without an embeddings folder.
    /// A name that is not found is dropped (ComfyUI logs a warning and ignores it).
    /// Always returns at least one chunk: the empty prompt gives `[start, end, pad, ..]`.
    pub fn tokenize_with_weights(
        &self,
        text: &str,
        embeddings: Option<&dyn EmbeddingLookup>,
    ) -> Vec<TokenChunk> {
        let groups = self.token_groups(text, embeddings);
        self.chunk(groups)
    }

    /// The token groups before chunking: one per weighted segment, one per embedding.
    fn token_groups(
        &self,
        text: &str,
        embeddings: Option<&dyn EmbeddingLookup>,
    ) -> Vec<Vec<WeightedToken>> {
        let mut groups = Vec::new();
        for segment in parse_weighted_prompt(text) {
            let weight = segment.weight;
            for word in split_embedding_words(&segment.text) {
                let mut word = word;
                if let (Some(lookup), Some(name)) =
                    (embeddings, word.strip_prefix(EMBEDDING_IDENTIFIER))
                {
                    let name = name.trim_matches('\n');
                    let (vectors, leftover) = self.try_get_embedding(lookup, name);
                    match vectors {
                        Some(rows) => groups.push(
                            rows.into_iter()
                                .map(|row| WeightedToken {
                                    token: PromptToken::Embedding(row),
                                    weight,
                                })
                                .collect(),
                        ),
                        None => {
                            tracing::warn!(embedding = name, "embedding does not exist, ignoring")
                        }
                    }
                    if leftover.is_empty() {
                        continue;
                    }
                    word = leftover;
                }
                let ids = self.bpe.encode(&word);
                groups.push(
                    ids.into_iter()
                        .map(|id| WeightedToken {
                            token: PromptToken::Id(id),
                            weight,
                        })
                        .collect(),
                );
            }
        }
        groups
    }

    /// `SDTokenizer._try_get_embedding`: the first whitespace-separated word of `name` is the
    /// embedding name, the rest is leftover text. When the name is not found and has commas
    /// around it, the comma-stripped name is tried and the commas go back to the leftover
    /// (keeping ComfyUI's character arithmetic, which assumes the commas trail the name).
    fn try_get_embedding(
        &self,
        lookup: &dyn EmbeddingLookup,
        name: &str,
    ) -> (Option<Vec<Tensor>>, String) {
        let mut parts = name.split_whitespace();
        let Some(first) = parts.next() else {
            // ComfyUI raises an IndexError on a bare "embedding:"; nothing to look up here.
            return (None, String::new());
        };
        let leftover = parts.collect::<Vec<_>>().join(" ");
        if let Some(rows) = self.lookup_rows(lookup, first) {
            return (Some(rows), leftover);
        }
        let stripped = first.trim_matches(',');
        let first_len = first.chars().count();
        let stripped_len = stripped.chars().count();
        if stripped_len < first_len {
            let rows = self.lookup_rows(lookup, stripped);
            let tail: String = first.chars().skip(stripped_len).collect();
            return (rows, format!("{tail} {leftover}"));
        }
        (None, leftover)
    }

    /// Looks up `name` and splits it into `[dim]` rows (a `[dim]` tensor is one row).
    fn lookup_rows(&self, lookup: &dyn EmbeddingLookup, name: &str) -> Option<Vec<Tensor>> {
        let tensor = lookup.lookup(name, &self.cfg.embedding_key, self.cfg.embedding_dim)?;
        let rows = match tensor.dims() {
            [] => return None,
            [_] => vec![tensor],
            [.., last] => {
                let last = *last;
                let flat = tensor.reshape(((), last)).ok()?;
                (0..flat.dim(0).ok()?)
                    .map(|i| flat.get(i))
                    .collect::<candle_core::Result<Vec<_>>>()
                    .ok()?
            }
        };
        Some(rows)
    }

    /// Packs token groups into chunks of `max_length`: a group shorter than `max_word_length`
    /// that does not fit moves whole to the next chunk, a longer one is split where the chunk
    /// ends.
    fn chunk(&self, groups: Vec<Vec<WeightedToken>>) -> Vec<TokenChunk> {
        let max_length = self.cfg.max_length;
        let special = |id: u32| WeightedToken {
            token: PromptToken::Id(id),
            weight: 1.0,
        };
        let mut chunks = Vec::new();
        let mut batch: TokenChunk = vec![special(self.cfg.start_token)];
        for group in groups {
            let is_large = group.len() >= self.cfg.max_word_length;
            let mut group = group.as_slice();
            while !group.is_empty() {
                if group.len() + batch.len() > max_length.saturating_sub(1) {
                    let remaining = max_length.saturating_sub(batch.len() + 1);
                    if is_large {
                        let (head, tail) = group.split_at(remaining.min(group.len()));
                        batch.extend_from_slice(head);
                        batch.push(special(self.cfg.end_token));
                        group = tail;
                    } else {
                        batch.push(special(self.cfg.end_token));
                        if self.cfg.pad_to_max_length {
                            batch.extend((0..remaining).map(|_| special(self.cfg.pad_token)));
                        }
                    }
                    chunks.push(std::mem::replace(
                        &mut batch,
                        vec![special(self.cfg.start_token)],
                    ));
                } else {
                    batch.extend_from_slice(group);
                    group = &[];
                }
            }
        }
        batch.push(special(self.cfg.end_token));
        if self.cfg.pad_to_max_length {
            let missing = max_length.saturating_sub(batch.len());
            batch.extend((0..missing).map(|_| special(self.cfg.pad_token)));
        }
        chunks.push(batch);
        chunks
    }
}

/// ComfyUI's `re.split(' embedding:|\nembedding:', text)`, with the identifier put back on every
/// piece after the first, and empty pieces dropped.
fn split_embedding_words(text: &str) -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    let mut rest = text;
    let mut first = true;
    loop {
        let next = [" embedding:", "\nembedding:"]
            .iter()
            .filter_map(|sep| rest.find(sep))
            .min();
        let (piece, after) = match next {
            Some(pos) => (
                &rest[..pos],
                Some(&rest[pos + 1 + EMBEDDING_IDENTIFIER.len()..]),
            ),
            None => (rest, None),
        };
        let piece = if first {
            piece.to_string()
        } else {
            format!("{EMBEDDING_IDENTIFIER}{piece}")
        };
        if !piece.is_empty() {
            pieces.push(piece);
        }
        first = false;
        match after {
            Some(after) => rest = after,
            None => return pieces,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tokenizer(cfg: SdTokenizerConfig) -> SdTokenizer {
        SdTokenizer::new(Arc::new(ClipBpe::new()), cfg)
    }

    fn ids(chunk: &TokenChunk) -> Vec<Option<u32>> {
        chunk.iter().map(|t| t.token.id()).collect()
    }

    #[test]
    fn empty_prompt_is_start_end_and_padding() {
        for (cfg, pad) in [
            (SdTokenizerConfig::clip_l(), END_OF_TEXT),
            (SdTokenizerConfig::open_clip_bigg(), 0),
        ] {
            let chunks = tokenizer(cfg).tokenize_with_weights("", None);
            assert_eq!(chunks.len(), 1);
            let mut expected = vec![Some(START_OF_TEXT), Some(END_OF_TEXT)];
            expected.resize(77, Some(pad));
            assert_eq!(ids(&chunks[0]), expected);
            assert!(chunks[0].iter().all(|t| t.weight == 1.0));
        }
    }

    #[test]
    fn weights_follow_segments() {
        let chunks = tokenizer(SdTokenizerConfig::clip_l())
            .tokenize_with_weights("a (photo:1.5) of (cat)", None);
        let got: Vec<(Option<u32>, f64)> = chunks[0][..7]
            .iter()
            .map(|t| (t.token.id(), t.weight))
            .collect();
        let expected = [
            (Some(START_OF_TEXT), 1.0),
            (Some(320), 1.0),
            (Some(1125), 1.5),
            (Some(539), 1.0),
            (Some(2368), 1.1),
            (Some(END_OF_TEXT), 1.0),
            (Some(END_OF_TEXT), 1.0),
        ];
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.0, e.0, "{got:?}");
            assert!((g.1 - e.1).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn long_prompt_splits_into_chunks_of_77() {
        // 100 single-token words in one segment form one large group, split at 75 tokens.
        let text = vec!["cat"; 100].join(" ");
        let chunks = tokenizer(SdTokenizerConfig::clip_l()).tokenize_with_weights(&text, None);
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| c.len() == 77));
        assert_eq!(chunks[0][76].token.id(), Some(END_OF_TEXT));
        assert_eq!(chunks[1][0].token.id(), Some(START_OF_TEXT));
        assert_eq!(chunks[1][25].token.id(), Some(2368));
        assert_eq!(chunks[1][26].token.id(), Some(END_OF_TEXT));
    }

    #[test]
    fn small_group_moves_whole_to_next_chunk() {
        // A 74-token segment, then a 3-token weighted segment that does not fit in the one slot
        // left: it moves whole to the next chunk and the first chunk is padded.
        let text = format!("{} (cat cat cat:1.2)", vec!["cat"; 74].join(" "));
        let chunks =
            tokenizer(SdTokenizerConfig::open_clip_bigg()).tokenize_with_weights(&text, None);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0][75].token.id(), Some(END_OF_TEXT));
        assert_eq!(chunks[0][76].token.id(), Some(0));
        assert_eq!(
            ids(&chunks[1])[1..5],
            [Some(2368), Some(2368), Some(2368), Some(END_OF_TEXT)]
        );
        assert!((chunks[1][1].weight - 1.2).abs() < 1e-12);
    }

    #[test]
    fn embeddings_are_spliced_as_rows() {
        let lookup = |name: &str, key: &str, dim: usize| -> Option<Tensor> {
            assert_eq!((key, dim), ("clip_l", 768));
            (name == "style")
                .then(|| Tensor::ones((2, 768), candle_core::DType::F32, &Device::Cpu).ok())?
        };
        let tok = tokenizer(SdTokenizerConfig::clip_l());
        let chunks = tok.tokenize_with_weights(
            "a (embedding:style cat:1.2) embedding:missing, dog",
            Some(&lookup),
        );
        let got: Vec<(Option<u32>, f64)> = chunks[0][..8]
            .iter()
            .map(|t| (t.token.id(), t.weight))
            .collect();
        // "a", two vectors at 1.2, "cat" at 1.2, then "missing" dropped but its comma kept.
        assert_eq!(got[0].0, Some(START_OF_TEXT));
        assert_eq!(got[1].0, Some(320));
        assert!(matches!(chunks[0][2].token, PromptToken::Embedding(_)));
        assert!(matches!(chunks[0][3].token, PromptToken::Embedding(_)));
        assert!((got[2].1 - 1.2).abs() < 1e-12 && (got[3].1 - 1.2).abs() < 1e-12);
        assert_eq!(got[4].0, Some(2368));
        assert_eq!(
            &ids(&chunks[0])[5..8],
            &[Some(267), Some(1929), Some(END_OF_TEXT)]
        );
        // Without a lookup the reference is plain text.
        let plain = tok.tokenize_with_weights("embedding:style", None);
        assert!(plain[0].iter().all(|t| t.token.id().is_some()));
        assert_eq!(plain[0][1].token.id(), Some(19703));
    }

    #[test]
    fn split_embedding_words_matches_re_split() {
        assert_eq!(
            split_embedding_words("a embedding:x b"),
            ["a", "embedding:x b"]
        );
        assert_eq!(split_embedding_words("embedding:x"), ["embedding:x"]);
        assert_eq!(
            split_embedding_words("a\nembedding:x embedding:y"),
            ["a", "embedding:x", "embedding:y"]
        );
        assert_eq!(split_embedding_words(" embedding:x"), ["embedding:x"]);
    }
}
