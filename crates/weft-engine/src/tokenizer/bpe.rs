//! CLIP byte-pair encoding on the `instant-clip-tokenizer` crate (OpenAI's bundled
//! `bpe_simple_vocab_16e6.txt`, 49408 ids), shaped to give the ids of HF `CLIPTokenizer`.
//!
//! Two text-cleaning flavours, because ComfyUI's `CLIPTokenizer` is whatever transformers is
//! installed:
//! - `TextCleaning::Transformers5` (default): transformers 5's tokenizers-backed `CLIPTokenizer`
//!   (lowercase, `<|startoftext|>` / `<|endoftext|>` typed in a prompt become ids 49406 / 49407);
//! - `TextCleaning::Transformers4Slow`: transformers 4's slow `CLIPTokenizer` without `ftfy`
//!   (its `BasicTokenizer`: control and format characters dropped, CJK ideographs split into
//!   single-character words, the special strings matched in any case).
//!
//! Both are checked by `tests/clip_parity.rs` against `clip/scripts/clip_reference.py`.
//!
//! Known gaps:
//! - no NFC normalisation (both transformers flavours compose first): text with decomposed
//!   accents (`e` + U+0301) tokenises differently from its composed form;
//! - unassigned code points (category Cn) are kept where the slow tokenizer drops them;
//! - transformers 4 with `ftfy` installed also runs `ftfy.fix_text` and `html.unescape`: not done.

use instant_clip_tokenizer::{Token, Tokenizer};

/// id of `<|startoftext|>`.
pub const START_OF_TEXT: u32 = 49406;
/// id of `<|endoftext|>`.
pub const END_OF_TEXT: u32 = 49407;
/// Size of the CLIP vocabulary (ids 0..49408).
pub const VOCAB_SIZE: usize = 49408;

/// Which transformers `CLIPTokenizer` the text cleaning reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextCleaning {
    /// transformers >= 5 (tokenizers backend): lowercase only.
    #[default]
    Transformers5,
    /// transformers 4 slow tokenizer without `ftfy`: `BasicTokenizer` cleaning first.
    Transformers4Slow,
}

/// The CLIP BPE tokenizer. Building it parses the 49k merge rules: build it once and share it.
pub struct ClipBpe {
    inner: Tokenizer,
    cleaning: TextCleaning,
}

impl std::fmt::Debug for ClipBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipBpe")
            .field("cleaning", &self.cleaning)
            .finish_non_exhaustive()
    }
}

impl Default for ClipBpe {
    fn default() -> Self {
        Self::new()
    }
}

impl ClipBpe {
    /// Builds the tokenizer from the vocabulary bundled in `instant-clip-tokenizer`, cleaning text
    /// as transformers 5 does.
    pub fn new() -> Self {
        Self::with_cleaning(TextCleaning::Transformers5)
    }

    /// Builds the tokenizer with the given text cleaning.
    pub fn with_cleaning(cleaning: TextCleaning) -> Self {
        Self {
            inner: Tokenizer::new(),
            cleaning,
        }
    }

    /// The text cleaning in use.
    pub fn cleaning(&self) -> TextCleaning {
        self.cleaning
    }

    /// Token ids for `text` without the start and end tokens: HF
    /// `CLIPTokenizer(text)["input_ids"][1:-1]`, which is what ComfyUI's `SDTokenizer` takes.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for piece in split_hf_special_tokens(text) {
            match piece {
                Piece::Special(id) => ids.push(id),
                Piece::Text(t) => match self.cleaning {
                    TextCleaning::Transformers5 => self.encode_plain(t, &mut ids),
                    TextCleaning::Transformers4Slow => {
                        // The slow tokenizer lowercases before its regex, whose alternatives
                        // include the special strings: any casing of them is special there.
                        let cleaned = basic_tokenizer_clean(t).to_lowercase();
                        for piece in split_hf_special_tokens(&cleaned) {
                            match piece {
                                Piece::Special(id) => ids.push(id),
                                Piece::Text(t) => self.encode_plain(t, &mut ids),
                            }
                        }
                    }
                },
            }
        }
        ids
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let lower = text.to_lowercase();
        // The crate treats its own spellings `<start_of_text>` / `<end_of_text>` as special tokens,
        // where HF sees plain text. Encoding the leading '<' apart gives HF's split: '<' is its own
        // regex match either way, so cutting there does not change any other word.
        let mut tokens: Vec<Token> = Vec::new();
        let mut rest = lower.as_str();
        while let Some(pos) = find_crate_special(rest) {
            self.inner.encode(&rest[..pos], &mut tokens);
            self.inner.encode("<", &mut tokens);
            rest = &rest[pos + 1..];
        }
        self.inner.encode(rest, &mut tokens);
        out.extend(tokens.into_iter().map(|t| u32::from(t.to_u16())));
    }

    /// Decodes ids back to text (for debugging and `untokenize`-style displays).
    pub fn decode(&self, ids: &[u32]) -> String {
        let tokens: Vec<Token> = ids
            .iter()
            .filter_map(|&id| u16::try_from(id).ok())
            .filter_map(|id| Token::from_u16(id, &self.inner))
            .collect();
        self.inner.decode(tokens)
    }
}

enum Piece<'a> {
    Special(u32),
    Text(&'a str),
}

const HF_SPECIALS: [(&str, u32); 2] = [
    ("<|startoftext|>", START_OF_TEXT),
    ("<|endoftext|>", END_OF_TEXT),
];

fn split_hf_special_tokens(text: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    loop {
        let next = HF_SPECIALS
            .iter()
            .filter_map(|&(s, id)| rest.find(s).map(|pos| (pos, s.len(), id)))
            .min_by_key(|&(pos, _, _)| pos);
        match next {
            Some((pos, len, id)) => {
                if pos > 0 {
                    pieces.push(Piece::Text(&rest[..pos]));
                }
                pieces.push(Piece::Special(id));
                rest = &rest[pos + len..];
            }
            None => {
                if !rest.is_empty() {
                    pieces.push(Piece::Text(rest));
                }
                return pieces;
            }
        }
    }
}

/// transformers 4 `BasicTokenizer(strip_accents=False, do_split_on_punc=False)` without the
/// lowercasing: drops NUL, U+FFFD and control/format/private-use characters (keeping tab, newline
/// and carriage return as spaces), maps space separators to spaces, puts spaces around CJK
/// ideographs, and joins the whitespace-separated words with single spaces.
fn basic_tokenizer_clean(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch == '\0' || ch == '\u{FFFD}' || is_other_category(ch) {
            continue;
        }
        if is_space_separator(ch) {
            cleaned.push(' ');
        } else if is_cjk_ideograph(ch) {
            cleaned.push(' ');
            cleaned.push(ch);
            cleaned.push(' ');
        } else {
            cleaned.push(ch);
        }
    }
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Unicode general category C* (control, format, private use) except tab, newline and carriage
/// return, which the slow tokenizer treats as whitespace. Unassigned code points are not known
/// here.
fn is_other_category(ch: char) -> bool {
    if matches!(ch, '\t' | '\n' | '\r') {
        return false;
    }
    let cp = u32::from(ch);
    let format = matches!(
        cp,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    );
    let private_use = matches!(cp, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD);
    ch.is_control() || format || private_use
}

/// Space, tab, newline, carriage return, or general category Zs.
fn is_space_separator(ch: char) -> bool {
    matches!(
        u32::from(ch),
        0x20 | 0x09 | 0x0A | 0x0D | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x202F | 0x205F | 0x3000
    )
}

/// The CJK Unified Ideographs blocks of `BasicTokenizer._is_chinese_char`.
fn is_cjk_ideograph(ch: char) -> bool {
    matches!(
        u32::from(ch),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B820..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

fn find_crate_special(text: &str) -> Option<usize> {
    ["<start_of_text>", "<end_of_text>"]
        .iter()
        .filter_map(|s| text.find(s))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids() {
        let bpe = ClipBpe::new();
        // HF CLIPTokenizer ids for "a photo of a cat" (openai/clip-vit-large-patch14 vocabulary).
        assert_eq!(bpe.encode("a photo of a cat"), [320, 1125, 539, 320, 2368]);
        assert_eq!(bpe.encode("A Photo"), [320, 1125]);
        assert_eq!(bpe.encode(""), Vec::<u32>::new());
        assert_eq!(bpe.encode("x<|endoftext|>y"), [343, END_OF_TEXT, 344]);
    }

    #[test]
    fn crate_special_spelling_is_plain_text() {
        let bpe = ClipBpe::new();
        let ids = bpe.encode("<start_of_text>");
        assert!(!ids.contains(&START_OF_TEXT), "{ids:?}");
        assert_eq!(ids.first(), bpe.encode("<").first());
    }
}
