//! ComfyUI's prompt weighting syntax (`comfy/sd1_clip.py`: `escape_important`,
//! `parse_parentheses`, `token_weights`, `unescape_important`).
//!
//! Supported, exactly as ComfyUI parses it:
//! - `(text)` multiplies the enclosing weight by 1.1; nesting multiplies again (`((a))` = 1.21);
//! - `(text:1.3)` sets the weight to 1.3, *replacing* the enclosing weight rather than multiplying
//!   it; the number is whatever follows the last `:` inside the parentheses; when it does not parse
//!   as a float, the `:` stays part of the text and the group gets x1.1;
//! - `\(` and `\)` are literal parentheses;
//! - unbalanced parentheses are kept as literal text, following ComfyUI's character scan.
//!
//! Not supported, as in ComfyUI: A1111's `[text]` de-emphasis (brackets are literal text) and
//! prompt editing `[a:b:0.5]`.

/// One piece of prompt text with its weight, parentheses and escapes already resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedSegment {
    /// The text with `\(`/`\)` turned back into literal parentheses.
    pub text: String,
    /// The weight; 1.0 outside any parentheses.
    pub weight: f64,
}

/// Splits a prompt into weighted segments as ComfyUI's `SDTokenizer.tokenize_with_weights` does
/// before tokenizing (`token_weights(escape_important(text), 1.0)`, then `unescape_important`).
pub fn parse_weighted_prompt(text: &str) -> Vec<WeightedSegment> {
    let escaped = escape_important(text);
    let mut out = Vec::new();
    token_weights(&escaped, 1.0, &mut out);
    out.into_iter()
        .map(|(text, weight)| WeightedSegment {
            text: unescape_important(&text),
            weight,
        })
        .collect()
}

// ComfyUI hides escaped parentheses behind control characters while it scans for groups; the
// same placeholders keep this a faithful port (a prompt containing "\0\1" literally is rewritten
// exactly as ComfyUI rewrites it).
const ESCAPED_CLOSE: &str = "\u{0}\u{1}";
const ESCAPED_OPEN: &str = "\u{0}\u{2}";

fn escape_important(text: &str) -> String {
    text.replace("\\)", ESCAPED_CLOSE)
        .replace("\\(", ESCAPED_OPEN)
}

fn unescape_important(text: &str) -> String {
    text.replace(ESCAPED_CLOSE, ")").replace(ESCAPED_OPEN, "(")
}

/// Top-level split into plain runs and balanced `( .. )` groups, following ComfyUI's scan
/// (including its handling of a stray `)`, which drives the nesting level negative).
fn parse_parentheses(text: &str) -> Vec<String> {
    let mut result = Vec::new();
    let mut current = String::new();
    let mut nesting: i64 = 0;
    for ch in text.chars() {
        match ch {
            '(' => {
                if nesting == 0 {
                    if !current.is_empty() {
                        result.push(std::mem::take(&mut current));
                    }
                    current.push('(');
                } else {
                    current.push(ch);
                }
                nesting += 1;
            }
            ')' => {
                nesting -= 1;
                if nesting == 0 {
                    current.push(')');
                    result.push(std::mem::take(&mut current));
                } else {
                    current.push(ch);
                }
            }
            _ => current.push(ch),
        }
    }
    if !current.is_empty() {
        result.push(current);
    }
    result
}

fn token_weights(text: &str, current_weight: f64, out: &mut Vec<(String, f64)>) {
    for item in parse_parentheses(text) {
        let is_group = item.len() >= 2 && item.starts_with('(') && item.ends_with(')');
        if !is_group {
            out.push((item, current_weight));
            continue;
        }
        // Both delimiters are ASCII, so byte slicing stays on char boundaries.
        let mut inner = &item[1..item.len() - 1];
        let mut weight = current_weight * 1.1;
        if let Some(colon) = inner.rfind(':') {
            if colon > 0 {
                if let Some(explicit) = parse_python_float(&inner[colon + 1..]) {
                    weight = explicit;
                    inner = &inner[..colon];
                }
            }
        }
        token_weights(inner, weight, out);
    }
}

/// Python's `float(str)` for the forms a prompt uses: surrounding whitespace is ignored,
/// `inf`/`nan` are accepted. Python also accepts `_` digit separators; those are rejected here.
fn parse_python_float(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(prompt: &str, expected: &[(&str, f64)]) {
        let got = parse_weighted_prompt(prompt);
        let got: Vec<(&str, f64)> = got.iter().map(|s| (s.text.as_str(), s.weight)).collect();
        assert_eq!(got.len(), expected.len(), "{prompt:?}: {got:?}");
        for ((gt, gw), (et, ew)) in got.iter().zip(expected) {
            assert_eq!(gt, et, "{prompt:?}: {got:?}");
            assert!((gw - ew).abs() < 1e-12, "{prompt:?}: {got:?}");
        }
    }

    #[test]
    fn plain_text_is_one_segment() {
        check("a photo of a cat", &[("a photo of a cat", 1.0)]);
        check("", &[]);
    }

    #[test]
    fn parentheses_multiply_and_explicit_weight_replaces() {
        check(
            "a (red) ((big)) dog",
            &[
                ("a ", 1.0),
                ("red", 1.1),
                (" ", 1.0),
                ("big", 1.1 * 1.1),
                (" dog", 1.0),
            ],
        );
        check("(cat:1.5), dog", &[("cat", 1.5), (", dog", 1.0)]);
        // The explicit weight replaces the outer x1.1 instead of multiplying it.
        check("((cat:1.5))", &[("cat", 1.5)]);
        check("(a (b:0.5) c)", &[("a ", 1.1), ("b", 0.5), (" c", 1.1)]);
        check("(cat: 1.2 )", &[("cat", 1.2)]);
    }

    #[test]
    fn colon_without_number_stays_text() {
        check("(style:anime)", &[("style:anime", 1.1)]);
        // A leading colon (index 0) is never a weight separator.
        check("(:2)", &[(":2", 1.1)]);
    }

    #[test]
    fn escapes_and_unbalanced_parentheses_are_literal() {
        check(r"a \(b\) c", &[("a (b) c", 1.0)]);
        check(r"(\(x\):2)", &[("(x)", 2.0)]);
        check("a (b", &[("a ", 1.0), ("(b", 1.0)]);
        // A stray ')' drives the nesting negative, so the rest is one literal run (ComfyUI scan).
        check("a) (b)", &[("a) (b)", 1.0)]);
    }

    #[test]
    fn square_brackets_are_literal() {
        check("[cat]", &[("[cat]", 1.0)]);
    }
}
