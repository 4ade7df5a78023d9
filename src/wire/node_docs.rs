//! `/docs/{class}/{locale}.md`: a node's help page in Markdown, written from its declaration (the
//! official frontend's node help panel fetches it for core nodes; ComfyUI serves hand-written
//! pages from a separate package). One source, so the page cannot drift from what the node takes.

use std::fmt::Write;

use crate::graph::spec::{ComboOptions, FileList, InputKind, InputSpec, NodeSpec};

/// The help page of `spec`.
pub fn markdown(spec: &NodeSpec) -> String {
    let mut page = format!("# {}\n\n", spec.display_name);
    if !spec.description.is_empty() {
        let _ = write!(page, "{}\n\n", spec.description);
    }
    let _ = writeln!(
        page,
        "Class `{}` in category `{}`.{}",
        spec.class_type,
        spec.category,
        if spec.output_node {
            " An output node: running a workflow runs the nodes it needs."
        } else {
            ""
        }
    );
    if !spec.inputs.is_empty() {
        page.push_str(
            "\n## Inputs\n\n| Input | Type | Default | Accepts | |\n|---|---|---|---|---|\n",
        );
        for input in &spec.inputs {
            let (default, accepts) = widget(input);
            let mut note = input.tooltip.unwrap_or("").to_owned();
            if input.optional {
                note = if note.is_empty() {
                    "Optional.".to_owned()
                } else {
                    format!("Optional. {note}")
                };
            }
            let _ = writeln!(
                page,
                "| `{}` | {} | {} | {} | {} |",
                input.name,
                input.kind.type_name(),
                cell(&default),
                cell(&accepts),
                cell(&note)
            );
        }
    }
    if !spec.outputs.is_empty() {
        page.push_str("\n## Outputs\n\n| Output | Type | |\n|---|---|---|\n");
        for output in &spec.outputs {
            let _ = writeln!(
                page,
                "| {} | {} | {} |",
                cell(output.name),
                output.ty.0,
                cell(output.tooltip.unwrap_or(""))
            );
        }
    }
    page
}

/// The default and the accepted values of a widget input, as table text; links have neither.
fn widget(input: &InputSpec) -> (String, String) {
    match &input.kind {
        InputKind::Int {
            default, min, max, ..
        } => (format!("{default}"), format!("{min} to {max}")),
        InputKind::Float {
            default, min, max, ..
        } => (format!("{default}"), format!("{min} to {max}")),
        InputKind::String { default, .. } => (
            if default.is_empty() {
                String::new()
            } else {
                format!("`{default}`")
            },
            "text".to_owned(),
        ),
        InputKind::Boolean { default } => (format!("{default}"), "true or false".to_owned()),
        InputKind::Combo {
            options, default, ..
        } => {
            let accepts = match options {
                ComboOptions::Static(list) => list
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                ComboOptions::Files(FileList::InputImages) => {
                    "an image in the input folder".to_owned()
                }
                ComboOptions::Files(FileList::Pipelines(folder)) => {
                    format!("a diffusers folder in `models/{folder}`")
                }
                ComboOptions::Files(FileList::InputLatents) => {
                    "a `.latent` file in the input folder".to_owned()
                }
                ComboOptions::Files(FileList::Models(folder)) => {
                    format!("a file in `models/{folder}`")
                }
            };
            (
                default.map(|d| format!("`{d}`")).unwrap_or_default(),
                accepts,
            )
        }
        _ => (String::new(), "a link".to_owned()),
    }
}

/// Text made safe for a table cell: pipes escaped, lines joined.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::Registry;

    #[test]
    fn every_node_has_a_page_naming_each_input_and_output() {
        let registry = Registry::standard();
        for spec in registry.specs() {
            let page = markdown(spec);
            assert!(page.starts_with(&format!("# {}\n", spec.display_name)));
            for input in &spec.inputs {
                assert!(
                    page.contains(&format!("| `{}` |", input.name)),
                    "{}: {}",
                    spec.class_type,
                    input.name
                );
            }
            let rows = page.lines().filter(|l| l.starts_with("| ")).count();
            let headers =
                usize::from(!spec.inputs.is_empty()) + usize::from(!spec.outputs.is_empty());
            assert_eq!(rows, spec.inputs.len() + spec.outputs.len() + headers);
        }
    }

    #[test]
    fn the_ksampler_page_gives_ranges_and_choices() {
        let registry = Registry::standard();
        let page = markdown(registry.spec("KSampler").expect("KSampler"));
        assert!(
            page.contains("| `steps` | INT | 20 | 1 to 10000 |"),
            "{page}"
        );
        assert!(page.contains("`euler`"), "{page}");
        assert!(page.contains("| LATENT | LATENT |"), "{page}");
    }
}
