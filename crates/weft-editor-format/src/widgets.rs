//! How the editor lays a node's widgets out in `widgets_values`, and the frontend's value rules.

use serde_json::{Number, Value as Json};

use weft_graph::spec::{InputKind, InputSpec, NodeSpec};
use weft_graph::validate::Catalog;

/// One slot of `widgets_values`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WidgetSlot<'s> {
    /// A widget input, sent to the backend under its name.
    Value(&'s InputSpec),
    /// The editor's "control after generate" companion of a seed (`fixed`, `randomize`, ...); not
    /// sent.
    ControlAfterGenerate,
    /// LoadImage's upload button (its value is `"image"`); not sent.
    ImageUpload,
}

/// The layout of `widgets_values` for a node class.
///
/// Widgets are the INT, FLOAT, STRING, BOOLEAN and COMBO inputs, required ones first, each in
/// declaration order (`input_order`). A seed gets a `control_after_generate` slot right after it:
/// an INT that declares it, or any INT named `seed` or `noise_seed` (`useIntWidget.ts`). The upload
/// button of an `image_upload` combo comes after the last required input, where the frontend's
/// `Comfy.UploadImage` extension appends it to the required inputs.
pub(crate) fn widget_slots(spec: &NodeSpec) -> Vec<WidgetSlot<'_>> {
    let mut slots = Vec::new();
    let mut upload = false;
    for optional in [false, true] {
        if optional && upload {
            slots.push(WidgetSlot::ImageUpload);
        }
        for input in spec.inputs.iter().filter(|i| i.optional == optional) {
            if !input.kind.is_widget() {
                continue;
            }
            slots.push(WidgetSlot::Value(input));
            match &input.kind {
                InputKind::Int {
                    control_after_generate,
                    ..
                } if *control_after_generate || is_seed_name(input.name) => {
                    slots.push(WidgetSlot::ControlAfterGenerate)
                }
                InputKind::Combo {
                    image_upload: true, ..
                } if !optional => upload = true,
                _ => {}
            }
        }
    }
    slots
}

fn is_seed_name(name: &str) -> bool {
    name == "seed" || name == "noise_seed"
}

/// The value a freshly created widget has: the declared default, or a combo's first option.
/// `None` when there is nothing to show (an empty file list).
pub(crate) fn default_value(kind: &InputKind, catalog: &dyn Catalog) -> Option<Json> {
    match kind {
        InputKind::Int { default, .. } => Number::from_i128(*default).map(Json::Number),
        InputKind::Float { default, .. } => Some(js_number(*default)),
        InputKind::String { default, .. } => Some(Json::from(*default)),
        InputKind::Boolean { default } => Some(Json::Bool(*default)),
        InputKind::Combo {
            options, default, ..
        } => match default {
            Some(default) => Some(Json::from(*default)),
            None => catalog
                .combo_options(options)
                .into_iter()
                .next()
                .map(Json::from),
        },
        InputKind::Link(_) => None,
    }
}

/// A number as `JSON.stringify` writes it: integral values without a fraction.
pub(crate) fn js_number(value: f64) -> Json {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        Json::from(value as i64)
    } else {
        Number::from_f64(value).map_or(Json::Null, Json::Number)
    }
}

/// A widget value as the prompt carries it: lists are wrapped so they are not read as links.
pub(crate) fn wrap_list(value: Json) -> Json {
    match value {
        Json::Array(_) => serde_json::json!({ "__value__": value }),
        other => other,
    }
}

/// What the frontend's `processDynamicPrompt` does to a `dynamicPrompts` text before queueing:
/// C-style comments are removed, and each `{a|b|c}` group becomes one of its options (nested groups
/// too). The frontend picks at random; we take the first option so the result is reproducible.
/// Escaped `\{`, `\}` and `\|` come out as plain characters. Returns `None` when nothing changed.
pub(crate) fn process_dynamic_prompt(text: &str) -> Option<String> {
    if !text.contains(['{', '\\', '/']) {
        return None;
    }
    let result = process(text, 0);
    (result != text).then_some(result)
}

/// Deeper `{` nesting than this is left as written (the frontend would run out of stack).
const MAX_CHOICE_NESTING: usize = 64;

fn process(text: &str, nesting: usize) -> String {
    let stripped = strip_comments(text);
    let chars: Vec<char> = stripped.chars().collect();
    let mut position = 0;
    let mut out = String::with_capacity(stripped.len());
    while position < chars.len() {
        let c = chars[position];
        position += 1;
        match c {
            '\\' => {
                out.push('\\');
                if let Some(&next) = chars.get(position) {
                    out.push(next);
                    position += 1;
                }
            }
            '{' if nesting < MAX_CHOICE_NESTING => {
                out.push_str(&first_choice(&chars, &mut position, nesting))
            }
            other => out.push(other),
        }
    }
    unescape_choice_chars(&out)
}

/// Reads a `{...}` group after its opening brace and returns its first option, itself processed.
fn first_choice(chars: &[char], position: &mut usize, nesting: usize) -> String {
    let mut options: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    while *position < chars.len() {
        let c = chars[*position];
        *position += 1;
        match c {
            '\\' => {
                current.push('\\');
                if let Some(&next) = chars.get(*position) {
                    current.push(next);
                    *position += 1;
                }
                continue;
            }
            '{' => depth += 1,
            '}' => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            '|' if depth == 0 => {
                options.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    options.push(current);
    process(&options.swap_remove(0), nesting + 1)
}

/// `str.replace(/\/\*[\s\S]*?\*\/|\/\/.*/g, '')`.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('/') {
        let after = &rest[start + 1..];
        if let Some(block) = after.strip_prefix('*') {
            if let Some(end) = block.find("*/") {
                out.push_str(&rest[..start]);
                rest = &block[end + 2..];
                continue;
            }
        }
        if after.starts_with('/') {
            out.push_str(&rest[..start]);
            // `.` does not match line terminators.
            let line_end = after
                .find(['\n', '\r', '\u{2028}', '\u{2029}'])
                .map_or(after.len(), |i| i);
            rest = &after[line_end..];
            continue;
        }
        out.push_str(&rest[..start + 1]);
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `result.replace(/\\([{}|])/g, '$1')`.
fn unescape_choice_chars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&next) = chars.peek() {
                if matches!(next, '{' | '}' | '|') {
                    out.push(next);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// litegraph's `isValidConnection`: equal, either side a wildcard, or comma lists that share a
/// member (case-insensitive).
pub(crate) fn is_valid_connection(a: &str, b: &str) -> bool {
    let wildcard = |t: &str| t.is_empty() || t == "*" || t == "0";
    if wildcard(a) || wildcard(b) || a == b {
        return true;
    }
    let a = a.to_lowercase();
    let b = b.to_lowercase();
    if !a.contains(',') && !b.contains(',') {
        return a == b;
    }
    a.split(',')
        .any(|x| b.split(',').any(|y| x == y || wildcard(x) || wildcard(y)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_prompts_follow_the_frontend() {
        assert_eq!(process_dynamic_prompt("plain text"), None);
        assert_eq!(
            process_dynamic_prompt("a {red|blue} ball").as_deref(),
            Some("a red ball")
        );
        assert_eq!(
            process_dynamic_prompt("{{x|y} z|w}!").as_deref(),
            Some("x z!")
        );
        assert_eq!(
            process_dynamic_prompt("keep /* gone */this // and gone\nnext").as_deref(),
            Some("keep this \nnext")
        );
        assert_eq!(
            process_dynamic_prompt(r"literal \{a\|b\}").as_deref(),
            Some("literal {a|b}")
        );
        assert_eq!(process_dynamic_prompt(r"back\slash"), None);
        assert_eq!(process_dynamic_prompt("a/b"), None);
    }

    #[test]
    fn connection_types_match_like_litegraph() {
        assert!(is_valid_connection("IMAGE", "IMAGE"));
        assert!(is_valid_connection("*", "LATENT"));
        assert!(is_valid_connection("", "LATENT"));
        assert!(is_valid_connection("image", "IMAGE"));
        assert!(is_valid_connection("IMAGE,MASK", "MASK"));
        assert!(!is_valid_connection("MODEL", "CLIP"));
    }

    #[test]
    fn integral_floats_are_written_like_javascript() {
        assert_eq!(js_number(1.0), Json::from(1));
        assert_eq!(js_number(0.5), serde_json::json!(0.5));
    }
}
