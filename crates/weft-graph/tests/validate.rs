//! Validation of API-format workflows into plans (`weft_graph::validate`), through the public API
//! only, against the small test catalog in `support`.

mod support;

use serde_json::{json, Value as Json};
use support::{
    errors_of, failing_ids, only_error, order, plan, txt2img, TestCatalog, AWKWARD, LOOKALIKES,
};
use weft_graph::validate::{
    coerced_prompt, compare_node_ids, fmt_float, ErrorKind, NodeError, PromptError, Validation,
};
use weft_graph::{ConstValue, PlanInput, Workflow};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Validates a single `Widgets` output node (id "1") with the given inputs.
fn widgets(inputs: Json) -> Validation {
    TestCatalog::new().check(json!({"1": {"class_type": "Widgets", "inputs": inputs}}))
}

/// The coerced constant of `input` on the only planned `Widgets` node.
fn widget_value(input: &str, value: Json) -> ConstValue {
    let v = widgets(json!({ input: value.clone() }));
    let plan = plan(&v);
    match plan.nodes()[0].input(input) {
        Some(PlanInput::Const(c)) => c.clone(),
        other => panic!("{input} = {value}: expected a constant, got {other:?}"),
    }
}

/// The single error that `input = value` gives on a `Widgets` node.
fn widget_error(input: &str, value: Json) -> NodeError {
    let v = widgets(json!({ input: value }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert!(v.plan.is_none());
    only_error(&v, "1").clone()
}

fn link(node: usize, slot: usize) -> PlanInput {
    PlanInput::Link { node, slot }
}

// ---------------------------------------------------------------------------------------------
// Prompt-level failures
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_class_type_is_an_invalid_prompt() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Widgets", "inputs": {}},
        "2": {"inputs": {"i": 1}}
    }));
    assert!(v.plan.is_none());
    assert!(v.node_errors.is_empty());
    assert_eq!(
        v.failure,
        Some(PromptError::InvalidPrompt {
            message: "Cannot execute because a node is missing the class_type property.".into(),
            details: "Node ID '#2'".into(),
        })
    );
}

#[test]
fn class_type_that_is_not_a_string_counts_as_missing() {
    let v = TestCatalog::new().check(json!({"7": {"class_type": 5, "inputs": {}}}));
    assert_eq!(
        v.failure,
        Some(PromptError::InvalidPrompt {
            message: "Cannot execute because a node is missing the class_type property.".into(),
            details: "Node ID '#7'".into(),
        })
    );
}

#[test]
fn unknown_class_is_an_invalid_prompt() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Widgets", "inputs": {}},
        "12": {"class_type": "NoSuchNode", "inputs": {}}
    }));
    assert!(v.plan.is_none());
    assert!(v.node_errors.is_empty());
    assert_eq!(
        v.failure,
        Some(PromptError::InvalidPrompt {
            message: "Cannot execute because node NoSuchNode does not exist.".into(),
            details: "Node ID '#12'".into(),
        })
    );
}

#[test]
fn unknown_class_stops_everything_even_when_no_output_needs_it() {
    // Node 2 is linked from nowhere, and the only output (1) is fine on its own.
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Widgets", "inputs": {"i": 3}},
        "2": {"class_type": "Unknown", "inputs": {}}
    }));
    assert!(v.plan.is_none());
    assert!(matches!(
        v.failure,
        Some(PromptError::InvalidPrompt { ref details, .. }) if details == "Node ID '#2'"
    ));
}

#[test]
fn the_first_bad_node_in_file_order_is_reported() {
    // Both nodes are bad; file order (not id order) decides which one is named.
    let v = TestCatalog::new().check(json!({
        "9": {"class_type": "Unknown9", "inputs": {}},
        "2": {"inputs": {}},
        "1": {"class_type": "Unknown1", "inputs": {}}
    }));
    assert_eq!(
        v.failure,
        Some(PromptError::InvalidPrompt {
            message: "Cannot execute because node Unknown9 does not exist.".into(),
            details: "Node ID '#9'".into(),
        })
    );
}

#[test]
fn unknown_class_wins_over_no_outputs() {
    let v = TestCatalog::new().check(json!({"1": {"class_type": "Nope"}}));
    assert!(matches!(v.failure, Some(PromptError::InvalidPrompt { .. })));
}

#[test]
fn empty_prompt_has_no_outputs() {
    let v = TestCatalog::new().check(json!({}));
    assert_eq!(v.failure, Some(PromptError::NoOutputs));
    assert!(v.plan.is_none());
    assert!(v.node_errors.is_empty());
}

#[test]
fn prompt_without_output_nodes_has_no_outputs() {
    let v = TestCatalog::new().check(json!({
        "4": {"class_type": "CheckpointLoader", "inputs": {"ckpt_name": "sd15.safetensors"}},
        // Even a broken non-output node is not checked: there is nothing to check it for.
        "5": {"class_type": "EmptyLatent", "inputs": {"width": "wide"}}
    }));
    assert_eq!(v.failure, Some(PromptError::NoOutputs));
    assert!(v.plan.is_none());
    assert!(v.node_errors.is_empty());
}

#[test]
fn every_output_failing_is_outputs_failed_with_the_node_errors() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Widgets", "inputs": {"i": 100}},
        "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}
    }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert!(v.plan.is_none());
    assert_eq!(failing_ids(&v), ["1", "2"]);
    assert_eq!(errors_of(&v, "1").dependent_outputs, ["1"]);
    assert_eq!(errors_of(&v, "2").dependent_outputs, ["2"]);
}

#[test]
fn good_outputs_still_run_when_others_fail() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Widgets", "inputs": {"i": 100}},
        "2": {"class_type": "Widgets", "inputs": {"i": 2}}
    }));
    assert_eq!(v.failure, None);
    let plan = plan(&v);
    assert_eq!(order(plan), ["2"]);
    assert_eq!(plan.outputs(), ["2"]);
    assert_eq!(failing_ids(&v), ["1"]);
    assert_eq!(only_error(&v, "1").kind, ErrorKind::ValueBiggerThanMax);
}

// ---------------------------------------------------------------------------------------------
// Output selection (`targets`, ComfyUI's partial_execution_targets / outputs_to_execute)
// ---------------------------------------------------------------------------------------------

fn two_outputs_one_broken() -> Json {
    json!({
        "1": {"class_type": "Widgets", "inputs": {"i": 1}},
        "2": {"class_type": "Widgets", "inputs": {"i": 2}},
        "3": {"class_type": "Widgets", "inputs": {"i": "bad"}},
        "4": {"class_type": "IntConst", "inputs": {"value": 4}}
    })
}

#[test]
fn no_targets_selects_every_output_node() {
    let v = TestCatalog::new().check(two_outputs_one_broken());
    let plan = plan(&v);
    assert_eq!(plan.outputs(), ["1", "2"]);
    assert_eq!(order(plan), ["1", "2"]);
    assert_eq!(failing_ids(&v), ["3"]);
}

#[test]
fn targets_restrict_the_outputs_and_skip_checking_the_rest() {
    let v = TestCatalog::new().check_targets(two_outputs_one_broken(), Some(&["2"]));
    assert_eq!(v.failure, None);
    let plan = plan(&v);
    assert_eq!(plan.outputs(), ["2"]);
    assert_eq!(order(plan), ["2"]);
    // Output 3 was not asked for, so its error is not reported.
    assert!(v.node_errors.is_empty());
}

#[test]
fn targets_that_are_not_output_nodes_or_do_not_exist_are_ignored() {
    let v = TestCatalog::new().check_targets(two_outputs_one_broken(), Some(&["4", "99", "1"]));
    let plan = plan(&v);
    assert_eq!(plan.outputs(), ["1"]);
    assert_eq!(order(plan), ["1"]);
}

#[test]
fn targets_with_no_output_node_mean_no_outputs() {
    let catalog = TestCatalog::new();
    let v = catalog.check_targets(two_outputs_one_broken(), Some(&["4", "99"]));
    assert_eq!(v.failure, Some(PromptError::NoOutputs));
    let v = catalog.check_targets(two_outputs_one_broken(), Some(&[]));
    assert_eq!(v.failure, Some(PromptError::NoOutputs));
}

#[test]
fn plan_outputs_follow_workflow_order_not_target_order() {
    let v = TestCatalog::new().check_targets(two_outputs_one_broken(), Some(&["2", "1"]));
    assert_eq!(plan(&v).outputs(), ["1", "2"]);
}

#[test]
fn a_failing_target_alone_is_outputs_failed() {
    let v = TestCatalog::new().check_targets(two_outputs_one_broken(), Some(&["3"]));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert_eq!(failing_ids(&v), ["3"]);
}

// ---------------------------------------------------------------------------------------------
// One test per error kind
// ---------------------------------------------------------------------------------------------

#[test]
fn error_kinds_have_comfyui_type_names() {
    let table = [
        (ErrorKind::RequiredInputMissing, "required_input_missing"),
        (ErrorKind::BadLinkedInput, "bad_linked_input"),
        (ErrorKind::ReturnTypeMismatch, "return_type_mismatch"),
        (ErrorKind::InvalidInputType, "invalid_input_type"),
        (ErrorKind::ValueSmallerThanMin, "value_smaller_than_min"),
        (ErrorKind::ValueBiggerThanMax, "value_bigger_than_max"),
        (ErrorKind::ValueNotInList, "value_not_in_list"),
        (
            ErrorKind::CustomValidationFailed,
            "custom_validation_failed",
        ),
        (ErrorKind::DependencyCycle, "dependency_cycle"),
    ];
    for (kind, name) in table {
        assert_eq!(kind.type_name(), name);
    }
}

#[test]
fn required_input_missing() {
    let v = TestCatalog::new().check(json!({
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
        "8": {"class_type": "Decode", "inputs": {"samples": ["5", 0]}},
        "5": {"class_type": "EmptyLatent", "inputs": {"width": 512, "height": 512, "batch_size": 1}}
    }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert_eq!(failing_ids(&v), ["9", "8"]);

    let e = only_error(&v, "9");
    assert_eq!(e.kind, ErrorKind::RequiredInputMissing);
    assert_eq!(e.kind.type_name(), "required_input_missing");
    assert_eq!(e.message, "Required input is missing");
    assert_eq!(e.details, "filename_prefix");
    assert_eq!(e.input_name.as_deref(), Some("filename_prefix"));
    assert_eq!(e.received_type, None);
    assert_eq!(e.received_value, None);
    assert_eq!(e.linked_node, None);
    assert_eq!(e.exception_message, None);

    let decode = errors_of(&v, "8");
    assert_eq!(decode.class_type, "Decode");
    assert_eq!(decode.dependent_outputs, ["9"]);
    assert_eq!(decode.errors[0].input_name.as_deref(), Some("vae"));
}

#[test]
fn optional_inputs_may_be_left_out() {
    let v = widgets(json!({}));
    let plan = plan(&v);
    assert_eq!(order(plan), ["1"]);
    assert!(plan.nodes()[0].inputs.is_empty());
    assert_eq!(plan.nodes()[0].input("i"), None);
}

#[test]
fn bad_linked_input_malformed_list() {
    for bad in [
        json!(["2", 0, 1]),
        json!(["2"]),
        json!([2, 0]),
        json!(["2", "0"]),
        json!(["2", -1]),
        json!(["2", 0.5]),
        json!([]),
    ] {
        let v = TestCatalog::new().check(json!({
            "1": {"class_type": "Sink", "inputs": {"a": bad.clone()}},
            "2": {"class_type": "Pass", "inputs": {}}
        }));
        assert_eq!(v.failure, Some(PromptError::OutputsFailed), "{bad}");
        let e = only_error(&v, "1");
        assert_eq!(e.kind, ErrorKind::BadLinkedInput, "{bad}");
        assert_eq!(e.kind.type_name(), "bad_linked_input");
        assert_eq!(
            e.message,
            "Bad linked input, must be a length-2 list of [string, int]"
        );
        assert_eq!(e.details, "a");
        assert_eq!(e.input_name.as_deref(), Some("a"));
        assert_eq!(e.linked_node, None);
        // A malformed link links nothing: the would-be source is never checked.
        assert_eq!(failing_ids(&v), ["1"]);
    }
}

#[test]
fn links_with_integral_float_slots_are_accepted() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0.0]}},
        "2": {"class_type": "Pass", "inputs": {}}
    }));
    assert_eq!(plan(&v).nodes()[1].input("a"), Some(&link(0, 0)));
}

#[test]
fn bad_linked_input_to_a_missing_node() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["99", 0]}}
    }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    let e = only_error(&v, "1");
    assert_eq!(e.kind, ErrorKind::BadLinkedInput);
    assert_eq!(e.message, "Bad linked input");
    assert_eq!(e.details, "a: linked node '99' does not exist");
    assert_eq!(e.input_name.as_deref(), Some("a"));
    assert_eq!(e.linked_node, Some(("99".to_owned(), 0)));
    assert_eq!(e.received_type, None);
}

#[test]
fn bad_linked_input_to_a_missing_output_slot() {
    let v = TestCatalog::new().check(json!({
        "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 3], "filename_prefix": "x"}},
        "4": {"class_type": "CheckpointLoader", "inputs": {"ckpt_name": "sd15.safetensors"}}
    }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert_eq!(failing_ids(&v), ["9"]);
    let e = only_error(&v, "9");
    assert_eq!(e.kind, ErrorKind::BadLinkedInput);
    assert_eq!(e.message, "Bad linked input");
    assert_eq!(
        e.details,
        "images: node '4' (CheckpointLoader) has no output 3; it has 3"
    );
    assert_eq!(e.input_name.as_deref(), Some("images"));
    assert_eq!(e.linked_node, Some(("4".to_owned(), 3)));
}

#[test]
fn a_bad_slot_still_walks_into_the_source_so_its_errors_are_reported() {
    let v = TestCatalog::new().check(json!({
        "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 7], "filename_prefix": "x"}},
        "4": {"class_type": "CheckpointLoader", "inputs": {"ckpt_name": "missing.ckpt"}}
    }));
    assert_eq!(failing_ids(&v), ["9", "4"]);
    assert_eq!(only_error(&v, "4").kind, ErrorKind::ValueNotInList);
    assert_eq!(errors_of(&v, "4").dependent_outputs, ["9"]);
}

#[test]
fn return_type_mismatch() {
    let v = TestCatalog::new().check(json!({
        "9": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "x"}},
        "5": {"class_type": "EmptyLatent", "inputs": {"width": 512, "height": 512, "batch_size": 1}}
    }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert_eq!(failing_ids(&v), ["9"]);
    let e = only_error(&v, "9");
    assert_eq!(e.kind, ErrorKind::ReturnTypeMismatch);
    assert_eq!(e.kind.type_name(), "return_type_mismatch");
    assert_eq!(e.message, "Return type mismatch between linked nodes");
    assert_eq!(
        e.details,
        "images, received_type(LATENT) mismatch input_type(IMAGE)"
    );
    assert_eq!(e.input_name.as_deref(), Some("images"));
    assert_eq!(e.received_type.as_deref(), Some("LATENT"));
    assert_eq!(e.linked_node, Some(("5".to_owned(), 0)));
    assert_eq!(e.received_value, None);
}

#[test]
fn a_mismatched_link_still_walks_into_the_source() {
    let v = TestCatalog::new().check(json!({
        "9": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "x"}},
        "5": {"class_type": "EmptyLatent", "inputs": {"width": 1, "height": 512, "batch_size": 1}}
    }));
    assert_eq!(failing_ids(&v), ["9", "5"]);
    assert_eq!(only_error(&v, "5").kind, ErrorKind::ValueSmallerThanMin);
}

#[test]
fn invalid_input_type() {
    let e = widget_error("i", json!("abc"));
    assert_eq!(e.kind, ErrorKind::InvalidInputType);
    assert_eq!(e.kind.type_name(), "invalid_input_type");
    assert_eq!(e.message, "Failed to convert an input value to a INT value");
    assert_eq!(
        e.details,
        "i, abc, invalid literal for int() with base 10: 'abc'"
    );
    assert_eq!(e.input_name.as_deref(), Some("i"));
    assert_eq!(e.received_value, Some(json!("abc")));
    assert_eq!(
        e.exception_message.as_deref(),
        Some("invalid literal for int() with base 10: 'abc'")
    );
    assert_eq!(e.linked_node, None);
    assert_eq!(e.received_type, None);
}

#[test]
fn invalid_input_type_for_floats() {
    let e = widget_error("f", json!("x1.5"));
    assert_eq!(e.kind, ErrorKind::InvalidInputType);
    assert_eq!(
        e.message,
        "Failed to convert an input value to a FLOAT value"
    );
    assert_eq!(
        e.details,
        "f, x1.5, could not convert string to float: 'x1.5'"
    );
    assert_eq!(e.received_value, Some(json!("x1.5")));
}

#[test]
fn a_constant_on_a_link_only_input_is_an_invalid_input_type() {
    let e = widget_error("model", json!(5));
    assert_eq!(e.kind, ErrorKind::InvalidInputType);
    assert_eq!(
        e.message,
        "Failed to convert an input value to a MODEL value"
    );
    assert_eq!(
        e.details,
        "model, 5, input of type MODEL takes a link to another node, not a constant"
    );
    assert_eq!(e.input_name.as_deref(), Some("model"));
    assert_eq!(e.received_value, Some(json!(5)));
    assert_eq!(
        e.exception_message.as_deref(),
        Some("input of type MODEL takes a link to another node, not a constant")
    );
}

#[test]
fn value_smaller_than_min() {
    let e = widget_error("i", json!(-11));
    assert_eq!(e.kind, ErrorKind::ValueSmallerThanMin);
    assert_eq!(e.kind.type_name(), "value_smaller_than_min");
    assert_eq!(e.message, "Value -11 smaller than min of -10");
    assert_eq!(e.details, "i");
    assert_eq!(e.input_name.as_deref(), Some("i"));
    assert_eq!(e.received_value, Some(json!(-11)));
    assert_eq!(e.exception_message, None);

    let e = widget_error("f", json!(-0.25));
    assert_eq!(e.kind, ErrorKind::ValueSmallerThanMin);
    assert_eq!(e.message, "Value -0.25 smaller than min of 0.0");
    assert_eq!(e.details, "f");
    assert_eq!(e.received_value, Some(json!(-0.25)));

    let e = widget_error("seed", json!(-1));
    assert_eq!(e.message, "Value -1 smaller than min of 0");
}

#[test]
fn value_bigger_than_max() {
    let e = widget_error("i", json!(11));
    assert_eq!(e.kind, ErrorKind::ValueBiggerThanMax);
    assert_eq!(e.kind.type_name(), "value_bigger_than_max");
    assert_eq!(e.message, "Value 11 bigger than max of 10");
    assert_eq!(e.details, "i");
    assert_eq!(e.input_name.as_deref(), Some("i"));
    assert_eq!(e.received_value, Some(json!(11)));

    // An integral float is shown as Python shows floats.
    let e = widget_error("f", json!(2));
    assert_eq!(e.kind, ErrorKind::ValueBiggerThanMax);
    assert_eq!(e.message, "Value 2.0 bigger than max of 1.0");
    assert_eq!(e.details, "f");
    assert_eq!(e.received_value, Some(json!(2)));

    // One past the full u64 seed range.
    let e = widget_error("seed", json!("18446744073709551616"));
    assert_eq!(e.kind, ErrorKind::ValueBiggerThanMax);
    assert_eq!(
        e.message,
        "Value 18446744073709551616 bigger than max of 18446744073709551615"
    );
}

#[test]
fn range_messages_show_the_coerced_value_and_keep_the_raw_one() {
    let e = widget_error("i", json!("  -20 "));
    assert_eq!(e.message, "Value -20 smaller than min of -10");
    assert_eq!(e.received_value, Some(json!("  -20 ")));

    let e = widget_error("f", json!("1.5"));
    assert_eq!(e.message, "Value 1.5 bigger than max of 1.0");
    assert_eq!(e.received_value, Some(json!("1.5")));
}

#[test]
fn value_not_in_list() {
    let e = widget_error("c", json!("d"));
    assert_eq!(e.kind, ErrorKind::ValueNotInList);
    assert_eq!(e.kind.type_name(), "value_not_in_list");
    assert_eq!(e.message, "Value not in list");
    assert!(e.details.starts_with("c: 'd' not in "), "{}", e.details);
    for option in ["a", "b", "c"] {
        assert!(
            e.details.contains(&format!("{option:?}"))
                || e.details.contains(&format!("'{option}'"))
        );
    }
    assert_eq!(e.input_name.as_deref(), Some("c"));
    assert_eq!(e.received_value, Some(json!("d")));
}

#[test]
fn value_not_in_a_long_list_gives_its_length() {
    let e = widget_error("many", json!("o25"));
    assert_eq!(e.kind, ErrorKind::ValueNotInList);
    assert_eq!(e.details, "many: 'o25' not in (list of length 25)");
    assert_eq!(
        widget_value("many", json!("o24")),
        ConstValue::String("o24".into())
    );
}

#[test]
fn combo_options_come_from_the_catalog_at_validation_time() {
    let mut catalog = TestCatalog::new();
    let prompt = json!({
        "4": {"class_type": "CheckpointLoader", "inputs": {"ckpt_name": "sub/xl.safetensors"}},
        "9": {"class_type": "Sink", "inputs": {"a": ["4", 0]}}
    });
    assert!(catalog.check(prompt.clone()).plan.is_some());

    catalog.checkpoints = vec!["other.safetensors".into()];
    let v = catalog.check(prompt);
    let e = only_error(&v, "4");
    assert_eq!(e.kind, ErrorKind::ValueNotInList);
    assert!(e
        .details
        .starts_with("ckpt_name: 'sub/xl.safetensors' not in "));
    assert!(e.details.contains("other.safetensors"));
    assert_eq!(errors_of(&v, "4").dependent_outputs, ["9"]);
}

#[test]
fn custom_validation_failed() {
    let catalog = TestCatalog::new();
    let v = catalog.check(json!({
        "10": {"class_type": "LoadImage", "inputs": {"image": "bird.png"}},
        "11": {"class_type": "Sink", "inputs": {"a": ["10", 0]}}
    }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    let e = only_error(&v, "10");
    assert_eq!(e.kind, ErrorKind::CustomValidationFailed);
    assert_eq!(e.kind.type_name(), "custom_validation_failed");
    assert_eq!(e.message, "Custom validation failed for node");
    assert_eq!(e.details, "image - Invalid image file: bird.png");
    assert_eq!(e.input_name.as_deref(), Some("image"));
    assert_eq!(
        catalog.checked.borrow().as_slice(),
        [(
            "LoadImage".to_owned(),
            "image".to_owned(),
            ConstValue::String("bird.png".into())
        )]
    );
}

#[test]
fn dependency_cycle() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0]}},
        "2": {"class_type": "Pass", "inputs": {"a": ["1", 0]}}
    }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert_eq!(failing_ids(&v), ["1", "2"]);
    for id in ["1", "2"] {
        let e = only_error(&v, id);
        assert_eq!(e.kind, ErrorKind::DependencyCycle);
        assert_eq!(e.kind.type_name(), "dependency_cycle");
        assert_eq!(e.message, "Dependency cycle detected");
        assert_eq!(
            e.details,
            format!("node '{id}' depends on itself through 1 -> 2 -> 1")
        );
        assert_eq!(e.input_name, None);
        assert_eq!(e.linked_node, None);
        assert_eq!(errors_of(&v, id).dependent_outputs, ["1"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Cycles
// ---------------------------------------------------------------------------------------------

#[test]
fn a_self_link_is_a_cycle() {
    let v = TestCatalog::new().check(json!({
        "5": {"class_type": "Sink", "inputs": {"a": ["5", 0]}}
    }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    let e = only_error(&v, "5");
    assert_eq!(e.kind, ErrorKind::DependencyCycle);
    assert_eq!(e.details, "node '5' depends on itself through 5 -> 5");
}

#[test]
fn a_cycle_upstream_of_an_output_fails_it_without_blaming_it() {
    // 3 -> 2 -> 1 -> 3 feeds the output 9; node 4 hangs off the cycle and is fine.
    let v = TestCatalog::new().check(json!({
        "9": {"class_type": "Sink", "inputs": {"a": ["1", 0], "b": ["4", 0]}},
        "1": {"class_type": "Pass", "inputs": {"a": ["2", 0]}},
        "2": {"class_type": "Pass", "inputs": {"a": ["3", 0]}},
        "3": {"class_type": "Pass", "inputs": {"a": ["1", 0]}},
        "4": {"class_type": "Pass", "inputs": {"a": ["3", 0]}}
    }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert_eq!(failing_ids(&v), ["1", "2", "3"]);
    for id in ["1", "2", "3"] {
        let e = only_error(&v, id);
        assert_eq!(e.kind, ErrorKind::DependencyCycle);
        assert_eq!(
            e.details,
            format!("node '{id}' depends on itself through 1 -> 2 -> 3 -> 1")
        );
        assert_eq!(errors_of(&v, id).dependent_outputs, ["9"]);
    }
}

#[test]
fn cycle_paths_start_at_the_numerically_smallest_id() {
    let v = TestCatalog::new().check(json!({
        "10": {"class_type": "Sink", "inputs": {"a": ["9", 0]}},
        "9": {"class_type": "Pass", "inputs": {"a": ["10", 0]}}
    }));
    // Reported in workflow order, path from "9" (not "10", which sorts first as a string).
    assert_eq!(failing_ids(&v), ["10", "9"]);
    assert_eq!(
        only_error(&v, "10").details,
        "node '10' depends on itself through 9 -> 10 -> 9"
    );
}

#[test]
fn two_separate_cycles_are_reported_separately() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0], "b": ["3", 0]}},
        "2": {"class_type": "Pass", "inputs": {"a": ["2", 0]}},
        "3": {"class_type": "Pass", "inputs": {"a": ["4", 0]}},
        "4": {"class_type": "Pass", "inputs": {"a": ["3", 0]}}
    }));
    assert_eq!(failing_ids(&v), ["2", "3", "4"]);
    assert_eq!(
        only_error(&v, "2").details,
        "node '2' depends on itself through 2 -> 2"
    );
    assert_eq!(
        only_error(&v, "4").details,
        "node '4' depends on itself through 3 -> 4 -> 3"
    );
}

#[test]
fn cycle_errors_come_after_the_nodes_own_errors() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0]}},
        "2": {"class_type": "ImageOrMask", "inputs": {"pixels": ["1", 0]}},
        "3": {"class_type": "Sink", "inputs": {"a": ["2", 9]}}
    }));
    // 2 -> 1 -> 2, and 3 links to a slot 2 does not have.
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert_eq!(failing_ids(&v), ["1", "2", "3"]);
    assert_eq!(only_error(&v, "1").kind, ErrorKind::DependencyCycle);
    assert_eq!(only_error(&v, "2").kind, ErrorKind::DependencyCycle);
    assert_eq!(errors_of(&v, "1").dependent_outputs, ["1", "3"]);
    assert_eq!(errors_of(&v, "2").dependent_outputs, ["1", "3"]);
    let three = only_error(&v, "3");
    assert_eq!(three.kind, ErrorKind::BadLinkedInput);
    assert_eq!(errors_of(&v, "3").dependent_outputs, ["3"]);

    // A cycle through a node that also has its own error: the cycle error comes last.
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0]}},
        "2": {"class_type": "Sampler", "inputs": {"model": ["1", 0], "steps": 0}}
    }));
    let kinds: Vec<ErrorKind> = errors_of(&v, "2").errors.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            ErrorKind::RequiredInputMissing, // seed
            ErrorKind::ValueSmallerThanMin,  // steps
            ErrorKind::RequiredInputMissing, // cfg
            ErrorKind::RequiredInputMissing, // sampler_name
            ErrorKind::RequiredInputMissing, // positive
            ErrorKind::RequiredInputMissing, // negative
            ErrorKind::RequiredInputMissing, // latent_image
            ErrorKind::RequiredInputMissing, // denoise
            ErrorKind::DependencyCycle,
        ]
    );
}

#[test]
fn a_cycle_not_reached_from_any_output_is_not_reported() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Widgets", "inputs": {}},
        "2": {"class_type": "Pass", "inputs": {"a": ["3", 0]}},
        "3": {"class_type": "Pass", "inputs": {"a": ["2", 0]}}
    }));
    assert!(v.node_errors.is_empty());
    assert_eq!(order(plan(&v)), ["1"]);
}

#[test]
fn a_cycle_fails_only_the_outputs_that_depend_on_it() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0]}},
        "2": {"class_type": "Pass", "inputs": {"a": ["3", 0]}},
        "3": {"class_type": "Pass", "inputs": {"a": ["2", 0]}},
        "4": {"class_type": "Sink", "inputs": {"a": ["5", 0]}},
        "5": {"class_type": "Pass", "inputs": {}}
    }));
    assert_eq!(v.failure, None);
    let plan = plan(&v);
    assert_eq!(plan.outputs(), ["4"]);
    assert_eq!(order(plan), ["5", "4"]);
    assert_eq!(failing_ids(&v), ["2", "3"]);
}

#[test]
fn deep_chains_are_walked_without_recursion() {
    // 5000 nodes in a line: each links to the next; the last one is the source.
    const N: usize = 5000;
    let mut prompt = serde_json::Map::new();
    prompt.insert(
        "0".into(),
        json!({"class_type": "Sink", "inputs": {"a": ["1", 0]}}),
    );
    for i in 1..N {
        let inputs = if i + 1 < N {
            json!({"a": [(i + 1).to_string(), 0]})
        } else {
            json!({})
        };
        prompt.insert(
            i.to_string(),
            json!({"class_type": "Pass", "inputs": inputs}),
        );
    }
    let catalog = TestCatalog::new();
    let v = catalog.check(Json::Object(prompt.clone()));
    let plan = plan(&v);
    assert_eq!(plan.nodes().len(), N);
    let expected: Vec<String> = (0..N).rev().map(|i| i.to_string()).collect();
    assert_eq!(order(plan), expected);

    // Closing a (shorter: every error names the whole path) chain into a ring makes every node
    // but the output part of one cycle.
    const RING: usize = 1000;
    let mut prompt: serde_json::Map<String, Json> = prompt.into_iter().take(RING).collect();
    prompt.insert(
        (RING - 1).to_string(),
        json!({"class_type": "Pass", "inputs": {"a": ["1", 0]}}),
    );
    let v = catalog.check(Json::Object(prompt));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert_eq!(v.node_errors.len(), RING - 1);
    assert!(v
        .node_errors
        .iter()
        .all(|e| e.errors.len() == 1 && e.errors[0].kind == ErrorKind::DependencyCycle));
}

// ---------------------------------------------------------------------------------------------
// Link type compatibility
// ---------------------------------------------------------------------------------------------

/// Validates node "1" of class `class` whose `input` links to output `slot` of `source` (node "2"),
/// with a `Sink` after it; Ok(()) or node 1's single error.
fn link_into(class: &str, input: &str, source: Json, slot: usize) -> Result<(), NodeError> {
    let mut inputs = serde_json::Map::new();
    inputs.insert(input.into(), json!(["2", slot]));
    let v = TestCatalog::new().check_targets(
        json!({
            "1": {"class_type": class, "inputs": inputs},
            "2": source,
            "3": {"class_type": "Sink", "inputs": {"a": ["1", 0]}}
        }),
        Some(&["3"]),
    );
    match v.plan {
        Some(_) => Ok(()),
        None => Err(only_error(&v, "1").clone()),
    }
}

#[test]
fn wildcard_outputs_feed_any_input_and_wildcard_inputs_take_anything() {
    let pass = json!({"class_type": "Pass", "inputs": {}});
    let latent = json!({"class_type": "EmptyLatent", "inputs": {"width": 64, "height": 64, "batch_size": 1}});
    // `*` output into a typed socket.
    assert!(link_into("ImageOrMask", "pixels", pass.clone(), 0).is_ok());
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
        "2": {"class_type": "Pass", "inputs": {}}
    }));
    assert_eq!(order(plan(&v)), ["2", "1"]);
    // Any output into a `*` socket.
    assert!(link_into("Pass", "a", latent, 0).is_ok());
    assert!(link_into("Pass", "a", pass, 0).is_ok());
}

#[test]
fn comma_lists_match_any_member() {
    let load = json!({"class_type": "LoadImage", "inputs": {"image": "dog.jpg"}});
    // IMAGE (slot 0) and MASK (slot 1) both fit an "IMAGE,MASK" socket.
    assert!(link_into("ImageOrMask", "pixels", load.clone(), 0).is_ok());
    assert!(link_into("ImageOrMask", "pixels", load, 1).is_ok());
    // An "IMAGE,MASK" output fits an IMAGE socket.
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
        "2": {"class_type": "ImageOrMask", "inputs": {"pixels": ["3", 1]}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "dog.jpg"}}
    }));
    assert_eq!(order(plan(&v)), ["3", "2", "1"]);
    // A LATENT does not fit "IMAGE,MASK".
    let latent = json!({"class_type": "EmptyLatent", "inputs": {"width": 64, "height": 64, "batch_size": 1}});
    let e = link_into("ImageOrMask", "pixels", latent, 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ReturnTypeMismatch);
    assert_eq!(
        e.details,
        "pixels, received_type(LATENT) mismatch input_type(IMAGE,MASK)"
    );
}

#[test]
fn a_link_can_feed_a_widget_input_of_the_same_type() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Widgets", "inputs": {"seed": ["2", 0], "i": ["2", 0]}},
        "2": {"class_type": "IntConst", "inputs": {"value": "7"}}
    }));
    let plan = plan(&v);
    assert_eq!(order(plan), ["2", "1"]);
    let widgets = &plan.nodes()[1];
    // Declaration order: i before seed.
    assert_eq!(
        widgets.inputs,
        [
            ("i".to_owned(), link(0, 0)),
            ("seed".to_owned(), link(0, 0))
        ]
    );
    assert_eq!(
        plan.nodes()[0].input("value"),
        Some(&PlanInput::Const(ConstValue::Int(7)))
    );
}

#[test]
fn a_link_of_another_type_into_a_widget_input_is_a_mismatch() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Widgets", "inputs": {"f": ["2", 0], "c": ["3", 1]}},
        "2": {"class_type": "IntConst", "inputs": {"value": 1}},
        "3": {"class_type": "ImageOrMask", "inputs": {"pixels": ["4", 0]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}}
    }));
    let errors = &errors_of(&v, "1").errors;
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].kind, ErrorKind::ReturnTypeMismatch);
    assert_eq!(
        errors[0].details,
        "f, received_type(INT) mismatch input_type(FLOAT)"
    );
    assert_eq!(errors[0].linked_node, Some(("2".to_owned(), 0)));
    assert_eq!(
        errors[1].details,
        "c, received_type(FLOAT) mismatch input_type(COMBO)"
    );
    assert_eq!(errors[1].received_type.as_deref(), Some("FLOAT"));
    assert_eq!(errors[1].linked_node, Some(("3".to_owned(), 1)));
}

// ---------------------------------------------------------------------------------------------
// Constants: Python-style coercion, ranges, combos
// ---------------------------------------------------------------------------------------------

#[test]
fn int_coercions_follow_python_int() {
    let int = |v: Json| widget_value("i", v);
    assert_eq!(int(json!(5)), ConstValue::Int(5));
    assert_eq!(int(json!("5")), ConstValue::Int(5));
    assert_eq!(int(json!(" -7\n")), ConstValue::Int(-7));
    assert_eq!(int(json!("+3")), ConstValue::Int(3));
    assert_eq!(int(json!("1_0")), ConstValue::Int(10));
    assert_eq!(int(json!(5.9)), ConstValue::Int(5));
    assert_eq!(int(json!(-5.9)), ConstValue::Int(-5));
    assert_eq!(int(json!(true)), ConstValue::Int(1));
    assert_eq!(int(json!(false)), ConstValue::Int(0));
    assert_eq!(int(json!({"__value__": 4})), ConstValue::Int(4));
}

#[test]
fn int_coercion_failures_use_pythons_wording() {
    let e = widget_error("i", json!("5.0"));
    assert_eq!(e.kind, ErrorKind::InvalidInputType);
    assert_eq!(
        e.exception_message.as_deref(),
        Some("invalid literal for int() with base 10: '5.0'")
    );
    assert_eq!(
        e.details,
        "i, 5.0, invalid literal for int() with base 10: '5.0'"
    );

    let e = widget_error("i", json!(""));
    assert_eq!(
        e.exception_message.as_deref(),
        Some("invalid literal for int() with base 10: ''")
    );

    let e = widget_error("i", Json::Null);
    assert_eq!(
        e.exception_message.as_deref(),
        Some(
            "int() argument must be a string, a bytes-like object or a real number, not 'NoneType'"
        )
    );
    assert_eq!(
        e.details,
        "i, None, int() argument must be a string, a bytes-like object or a real number, not 'NoneType'"
    );
    assert_eq!(e.received_value, Some(Json::Null));

    // A list or object only arrives wrapped in `__value__`; the wrapper is gone by now.
    let e = widget_error("i", json!({"__value__": [1, 2]}));
    assert_eq!(e.kind, ErrorKind::InvalidInputType);
    assert!(e
        .exception_message
        .as_deref()
        .unwrap()
        .starts_with("int() argument must be a string, a bytes-like object or a real number"));
    assert_eq!(e.received_value, Some(json!([1, 2])));

    let e = widget_error("i", json!({"a": 1}));
    assert_eq!(e.kind, ErrorKind::InvalidInputType);
    assert_eq!(e.received_value, Some(json!({"a": 1})));
}

#[test]
fn seeds_cover_the_whole_u64_range() {
    assert_eq!(widget_value("seed", json!(0)), ConstValue::Int(0));
    assert_eq!(
        widget_value("seed", json!(u64::MAX)),
        ConstValue::Int(i128::from(u64::MAX))
    );
    assert_eq!(
        widget_value("seed", json!("18446744073709551615")),
        ConstValue::Int(i128::from(u64::MAX))
    );
}

#[test]
fn float_coercions_follow_python_float() {
    let float = |v: Json| widget_value("f", v);
    assert_eq!(float(json!(0.25)), ConstValue::Float(0.25));
    assert_eq!(float(json!(1)), ConstValue::Float(1.0));
    assert_eq!(float(json!("0.75")), ConstValue::Float(0.75));
    assert_eq!(float(json!(" .5 ")), ConstValue::Float(0.5));
    assert_eq!(float(json!("1e-1")), ConstValue::Float(0.1));
    assert_eq!(float(json!(true)), ConstValue::Float(1.0));
    assert_eq!(float(json!(false)), ConstValue::Float(0.0));
}

#[test]
fn nan_and_infinity_are_refused_naming_the_input() {
    // ComfyUI's `float()` takes them (NaN then passes every range check); Weft refuses them
    // where the input can be named, rather than failing later in the worker.
    for text in [
        "nan",
        "-NaN",
        "inf",
        "+Infinity",
        " INF ",
        "-infinity",
        "1e400",
    ] {
        let e = widget_error("f", json!(text));
        assert_eq!(e.kind, ErrorKind::InvalidInputType, "{text}");
        assert_eq!(
            e.message, "Failed to convert an input value to a FLOAT value",
            "{text}"
        );
        let exception = e.exception_message.clone().unwrap_or_default();
        assert!(
            exception.ends_with("is not a finite number; NaN and infinity are not accepted"),
            "{text}: {exception}"
        );
        assert!(e.details.starts_with("f, "), "{text}: {}", e.details);
        assert_eq!(e.received_value, Some(json!(text)));
    }
}

#[test]
fn float_coercion_failures_use_pythons_wording() {
    let e = widget_error("f", Json::Null);
    assert_eq!(
        e.exception_message.as_deref(),
        Some("float() argument must be a string or a real number, not 'NoneType'")
    );
    assert_eq!(
        e.message,
        "Failed to convert an input value to a FLOAT value"
    );
    let e = widget_error("f", json!({"__value__": []}));
    assert!(e
        .exception_message
        .as_deref()
        .unwrap()
        .starts_with("float() argument must be a string or a real number"));
    let e = widget_error("f", json!(""));
    assert_eq!(
        e.exception_message.as_deref(),
        Some("could not convert string to float: ''")
    );
}

#[test]
fn string_coercions_follow_python_str() {
    let s = |v: Json| widget_value("s", v);
    assert_eq!(s(json!("text")), ConstValue::String("text".into()));
    assert_eq!(s(json!("")), ConstValue::String(String::new()));
    assert_eq!(s(json!(5)), ConstValue::String("5".into()));
    assert_eq!(s(json!(-5)), ConstValue::String("-5".into()));
    assert_eq!(s(json!(2.5)), ConstValue::String("2.5".into()));
    assert_eq!(s(json!(1.0)), ConstValue::String("1.0".into()));
    assert_eq!(s(json!(true)), ConstValue::String("True".into()));
    assert_eq!(s(json!(false)), ConstValue::String("False".into()));
    assert_eq!(s(Json::Null), ConstValue::String("None".into()));
}

#[test]
fn boolean_coercions_follow_python_truthiness() {
    let b = |v: Json| widget_value("b", v);
    assert_eq!(b(json!(true)), ConstValue::Bool(true));
    assert_eq!(b(json!(false)), ConstValue::Bool(false));
    // bool("false") is True in Python, and ComfyUI does not special-case it.
    assert_eq!(b(json!("false")), ConstValue::Bool(true));
    assert_eq!(b(json!("")), ConstValue::Bool(false));
    assert_eq!(b(json!(0)), ConstValue::Bool(false));
    assert_eq!(b(json!(0.0)), ConstValue::Bool(false));
    assert_eq!(b(json!(2)), ConstValue::Bool(true));
    assert_eq!(b(json!(-0.5)), ConstValue::Bool(true));
    assert_eq!(b(Json::Null), ConstValue::Bool(false));
    assert_eq!(b(json!({"__value__": []})), ConstValue::Bool(false));
    assert_eq!(b(json!({"__value__": [0]})), ConstValue::Bool(true));
    assert_eq!(b(json!({"k": 1})), ConstValue::Bool(true));
}

#[test]
fn combo_values_are_strings() {
    assert_eq!(
        widget_value("c", json!("b")),
        ConstValue::String("b".into())
    );
    assert_eq!(
        widget_value("c", json!({"__value__": "c"})),
        ConstValue::String("c".into())
    );
    // Matching is exact: no trimming, no case folding.
    assert_eq!(
        widget_error("c", json!(" a")).kind,
        ErrorKind::ValueNotInList
    );
    assert_eq!(
        widget_error("c", json!("A")).kind,
        ErrorKind::ValueNotInList
    );
    // A non-string is shown as Python's str() of it.
    let e = widget_error("c", json!(true));
    assert!(e.details.starts_with("c: 'True' not in "), "{}", e.details);
    assert_eq!(e.received_value, Some(json!(true)));
}

#[test]
fn min_and_max_are_inclusive() {
    assert_eq!(widget_value("i", json!(-10)), ConstValue::Int(-10));
    assert_eq!(widget_value("i", json!(10)), ConstValue::Int(10));
    assert_eq!(widget_value("f", json!(0)), ConstValue::Float(0.0));
    assert_eq!(widget_value("f", json!(1.0)), ConstValue::Float(1.0));
}

#[test]
fn step_is_not_checked() {
    // `stepped` has step 8; 5 is off-step but within range.
    assert_eq!(widget_value("stepped", json!(5)), ConstValue::Int(5));
    // Width has step 8 on EmptyLatent too.
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0]}},
        "2": {"class_type": "EmptyLatent", "inputs": {"width": 513, "height": 17, "batch_size": 1}}
    }));
    assert!(v.plan.is_some());
}

#[test]
fn self_validated_inputs_skip_range_checks_and_ask_the_node() {
    let catalog = TestCatalog::new();
    // 12 is above the declared max of 10, but the node checks `level` itself (and wants it even).
    let v = catalog.check(json!({"1": {"class_type": "Checked", "inputs": {"level": "12"}}}));
    let plan = plan(&v);
    assert_eq!(
        plan.nodes()[0].input("level"),
        Some(&PlanInput::Const(ConstValue::Int(12)))
    );
    // The hook receives the coerced value.
    assert_eq!(
        catalog.checked.borrow().as_slice(),
        [(
            "Checked".to_owned(),
            "level".to_owned(),
            ConstValue::Int(12)
        )]
    );

    let v = catalog.check(json!({"1": {"class_type": "Checked", "inputs": {"level": 3}}}));
    let e = only_error(&v, "1");
    assert_eq!(e.kind, ErrorKind::CustomValidationFailed);
    assert_eq!(e.details, "level - level must be even, got 3");
    assert_eq!(e.input_name.as_deref(), Some("level"));

    // Other inputs of the same node are range-checked as usual.
    let v =
        catalog.check(json!({"1": {"class_type": "Checked", "inputs": {"level": 2, "other": 11}}}));
    assert_eq!(only_error(&v, "1").kind, ErrorKind::ValueBiggerThanMax);
}

#[test]
fn self_validated_inputs_are_still_coerced_first() {
    let catalog = TestCatalog::new();
    let v = catalog.check(json!({"1": {"class_type": "Checked", "inputs": {"level": "high"}}}));
    let e = only_error(&v, "1");
    assert_eq!(e.kind, ErrorKind::InvalidInputType);
    assert_eq!(e.message, "Failed to convert an input value to a INT value");
    assert!(catalog.checked.borrow().is_empty());
}

#[test]
fn self_validated_combos_skip_the_list_check() {
    let catalog = TestCatalog::new();
    // The node accepts an annotated name that the combo list does not show, as ComfyUI's
    // LoadImage does for "name [output]".
    let v = catalog.check(json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "render.png [output]"}},
        "2": {"class_type": "Sink", "inputs": {"a": ["1", 1]}}
    }));
    assert_eq!(
        plan(&v).nodes()[0].input("image"),
        Some(&PlanInput::Const(ConstValue::String(
            "render.png [output]".into()
        )))
    );
    assert_eq!(catalog.checked.borrow().len(), 1);
}

#[test]
fn undeclared_inputs_are_ignored() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Widgets", "inputs": {
            "i": 1, "extra": "whatever", "dangling": ["99", 0], "broken": ["1", 0, 0]
        }}
    }));
    let plan = plan(&v);
    assert!(v.node_errors.is_empty());
    assert_eq!(
        plan.nodes()[0].inputs,
        [("i".to_owned(), PlanInput::Const(ConstValue::Int(1)))]
    );
}

#[test]
fn a_node_with_several_errors_reports_them_in_declaration_order() {
    let v = TestCatalog::new().check(json!({
        "3": {"class_type": "Sampler", "inputs": {
            "denoise": 2, "latent_image": ["99", 0], "negative": ["4", 0], "positive": ["4", 5],
            "sampler_name": "bogus", "cfg": "high", "steps": 0, "seed": -1, "model": [4, 0]
        }},
        "4": {"class_type": "CheckpointLoader", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "9": {"class_type": "Sink", "inputs": {"a": ["3", 0]}}
    }));
    let errors = &errors_of(&v, "3").errors;
    let got: Vec<(ErrorKind, &str)> = errors
        .iter()
        .map(|e| (e.kind, e.input_name.as_deref().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (ErrorKind::BadLinkedInput, "model"),
            (ErrorKind::ValueSmallerThanMin, "seed"),
            (ErrorKind::ValueSmallerThanMin, "steps"),
            (ErrorKind::InvalidInputType, "cfg"),
            (ErrorKind::ValueNotInList, "sampler_name"),
            (ErrorKind::BadLinkedInput, "positive"),
            (ErrorKind::ReturnTypeMismatch, "negative"),
            (ErrorKind::BadLinkedInput, "latent_image"),
            (ErrorKind::ValueBiggerThanMax, "denoise"),
        ]
    );
    assert_eq!(
        errors[5].details,
        "positive: node '4' (CheckpointLoader) has no output 5; it has 3"
    );
    assert_eq!(
        errors[6].details,
        "negative, received_type(MODEL) mismatch input_type(CONDITIONING)"
    );
    // The checkpoint loader itself is fine, so it is not listed.
    assert_eq!(failing_ids(&v), ["3"]);
}

// ---------------------------------------------------------------------------------------------
// Which nodes are checked, node_errors and dependent_outputs
// ---------------------------------------------------------------------------------------------

#[test]
fn nodes_no_output_needs_are_not_checked() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Widgets", "inputs": {"i": 1}},
        "2": {"class_type": "Sampler", "inputs": {}},
        "3": {"class_type": "Decode", "inputs": {"samples": ["2", 0]}}
    }));
    assert!(v.node_errors.is_empty());
    assert_eq!(order(plan(&v)), ["1"]);
}

#[test]
fn a_shared_bad_ancestor_lists_every_output_it_breaks() {
    let v = TestCatalog::new().check(json!({
        "20": {"class_type": "Sink", "inputs": {"a": ["5", 0]}},
        "5": {"class_type": "Pass", "inputs": {"a": ["4", 0]}},
        "4": {"class_type": "EmptyLatent", "inputs": {"width": 0, "height": 512, "batch_size": 1}},
        "10": {"class_type": "Sink", "inputs": {"a": ["4", 0], "b": ["99", 0]}},
        "7": {"class_type": "Sink", "inputs": {"a": ["8", 0]}},
        "8": {"class_type": "Pass", "inputs": {}}
    }));
    assert_eq!(v.failure, None);
    let plan = plan(&v);
    assert_eq!(plan.outputs(), ["7"]);
    assert_eq!(order(plan), ["8", "7"]);
    // Workflow order, for the errors and for their dependent outputs.
    assert_eq!(failing_ids(&v), ["4", "10"]);
    let four = errors_of(&v, "4");
    assert_eq!(four.class_type, "EmptyLatent");
    assert_eq!(four.dependent_outputs, ["20", "10"]);
    assert_eq!(four.errors[0].message, "Value 0 smaller than min of 16");
    let ten = errors_of(&v, "10");
    assert_eq!(ten.dependent_outputs, ["10"]);
    assert_eq!(ten.errors[0].details, "b: linked node '99' does not exist");
}

#[test]
fn an_output_feeding_another_output() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0]}},
        "2": {"class_type": "Sink", "inputs": {"a": ["3", 0]}},
        "3": {"class_type": "Pass", "inputs": {}}
    }));
    let plan = plan(&v);
    assert_eq!(plan.outputs(), ["1", "2"]);
    assert_eq!(order(plan), ["3", "2", "1"]);

    // When the inner output breaks, the outer one breaks with it.
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0]}},
        "2": {"class_type": "Sink", "inputs": {"a": ["3", 4]}},
        "3": {"class_type": "Pass", "inputs": {}}
    }));
    assert_eq!(v.failure, Some(PromptError::OutputsFailed));
    assert_eq!(failing_ids(&v), ["2"]);
    assert_eq!(errors_of(&v, "2").dependent_outputs, ["1", "2"]);
}

// ---------------------------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------------------------

#[test]
fn txt2img_plan_is_topological_with_ties_by_id() {
    let v = TestCatalog::new().check(txt2img());
    assert_eq!(v.failure, None);
    assert!(v.node_errors.is_empty());
    let plan = plan(&v);
    assert_eq!(order(plan), ["4", "5", "6", "7", "3", "8", "9"]);
    assert_eq!(plan.outputs(), ["9"]);
    for (i, node) in plan.nodes().iter().enumerate() {
        assert_eq!(plan.index_of(&node.id), Some(i));
        for (_, input) in &node.inputs {
            if let PlanInput::Link { node: source, .. } = input {
                assert!(*source < i, "{} links forward", node.id);
            }
        }
    }
    assert_eq!(plan.index_of("99"), None);

    let sampler = &plan.nodes()[4];
    assert_eq!(sampler.class_type, "Sampler");
    // Declaration order, with links resolved to plan indices and constants coerced.
    assert_eq!(
        sampler.inputs,
        [
            ("model".to_owned(), link(0, 0)),
            (
                "seed".to_owned(),
                PlanInput::Const(ConstValue::Int(156680208700286))
            ),
            ("steps".to_owned(), PlanInput::Const(ConstValue::Int(20))),
            ("cfg".to_owned(), PlanInput::Const(ConstValue::Float(8.0))),
            (
                "sampler_name".to_owned(),
                PlanInput::Const(ConstValue::String("euler".into()))
            ),
            ("positive".to_owned(), link(2, 0)),
            ("negative".to_owned(), link(3, 0)),
            ("latent_image".to_owned(), link(1, 0)),
            (
                "denoise".to_owned(),
                PlanInput::Const(ConstValue::Float(1.0))
            ),
        ]
    );
    let decode = &plan.nodes()[5];
    assert_eq!(
        decode.inputs,
        [
            ("samples".to_owned(), link(4, 0)),
            ("vae".to_owned(), link(0, 2))
        ]
    );
    let save = &plan.nodes()[6];
    assert_eq!(
        save.inputs,
        [
            ("images".to_owned(), link(5, 0)),
            (
                "filename_prefix".to_owned(),
                PlanInput::Const(ConstValue::String("Weft".into()))
            )
        ]
    );
}

#[test]
fn plan_ties_order_numeric_ids_numerically_then_other_ids() {
    // Independent sources, each behind its own chain to an output: ties are broken by id.
    let ids = ["b", "10", "9", "a", "100", "02", "1"];
    let mut prompt = serde_json::Map::new();
    for (k, id) in ids.iter().enumerate() {
        prompt.insert(
            format!("s{k}"),
            json!({"class_type": "Pass", "inputs": {"a": [id, 0]}}),
        );
        prompt.insert(
            (*id).to_owned(),
            json!({"class_type": "Pass", "inputs": {}}),
        );
    }
    // One output per source chain so everything is needed.
    for k in 0..ids.len() {
        prompt.insert(
            format!("out{k}"),
            json!({"class_type": "Sink", "inputs": {"a": [format!("s{k}"), 0]}}),
        );
    }
    let v = TestCatalog::new().check(Json::Object(prompt));
    let plan = plan(&v);
    let order = order(plan);
    // Sources first ("02" parses as 2), then the rest as soon as they are ready, smallest first.
    assert_eq!(
        order,
        [
            "1", "02", "9", "10", "100", "a", "b", "s0", "out0", "s1", "out1", "s2", "out2", "s3",
            "out3", "s4", "out4", "s5", "out5", "s6", "out6"
        ]
    );
    assert_eq!(plan.outputs().len(), ids.len());
}

#[test]
fn the_plan_holds_what_good_outputs_need_and_nothing_else() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Pass", "inputs": {}},
        "2": {"class_type": "Pass", "inputs": {"a": ["1", 0]}},
        "3": {"class_type": "Sink", "inputs": {"a": ["2", 0]}},
        "4": {"class_type": "Pass", "inputs": {}},
        "5": {"class_type": "Sink", "inputs": {"a": ["1", 0], "b": ["6", 0]}},
        "6": {"class_type": "IntConst", "inputs": {"value": 5000}},
        "7": {"class_type": "Pass", "inputs": {"a": ["4", 0]}}
    }));
    let plan = plan(&v);
    // 5 fails (through 6); 4 and 7 are needed by nobody; 1 is shared but still needed by 3.
    assert_eq!(plan.outputs(), ["3"]);
    assert_eq!(order(plan), ["1", "2", "3"]);
    assert_eq!(failing_ids(&v), ["6"]);
    assert_eq!(errors_of(&v, "6").dependent_outputs, ["5"]);
}

#[test]
fn two_inputs_linked_to_the_same_source_plan_it_once() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"b": ["2", 0], "a": ["2", 0]}},
        "2": {"class_type": "Pass", "inputs": {}}
    }));
    let plan = plan(&v);
    assert_eq!(order(plan), ["2", "1"]);
    assert_eq!(
        plan.nodes()[1].inputs,
        [("a".to_owned(), link(0, 0)), ("b".to_owned(), link(0, 0))]
    );
}

#[test]
fn diamond_shapes_are_ordered_after_every_parent() {
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0], "b": ["3", 0]}},
        "2": {"class_type": "Pass", "inputs": {"a": ["4", 0]}},
        "3": {"class_type": "Pass", "inputs": {"a": ["4", 0], "b": ["2", 0]}},
        "4": {"class_type": "Pass", "inputs": {}}
    }));
    assert_eq!(order(plan(&v)), ["4", "2", "3", "1"]);
}

// ---------------------------------------------------------------------------------------------
// Public helpers of the module
// ---------------------------------------------------------------------------------------------

#[test]
fn coerced_prompt_writes_back_the_validated_constants() {
    let original = json!({
        "1": {"class_type": "Widgets", "inputs": {
            "i": "5", "f": 1, "s": 3, "b": "false", "c": {"__value__": "a"},
            "extra": "kept", "seed": ["2", 0]
        }, "_meta": {"title": "W"}},
        "2": {"class_type": "IntConst", "inputs": {"value": " 9 "}},
        "3": {"class_type": "Widgets", "inputs": {"i": 99}},
        "4": {"class_type": "IntConst", "inputs": {"value": "not planned"}}
    });
    let workflow = Workflow::from_api_json(&original).unwrap();
    let v = weft_graph::validate(&workflow, &TestCatalog::new(), None);
    let plan = plan(&v);
    let coerced = coerced_prompt(&original, plan);
    assert_eq!(
        coerced,
        json!({
            "1": {"class_type": "Widgets", "inputs": {
                "i": 5, "f": 1.0, "s": "3", "b": true, "c": "a",
                "extra": "kept", "seed": ["2", 0]
            }, "_meta": {"title": "W"}},
            "2": {"class_type": "IntConst", "inputs": {"value": 9}},
            "3": {"class_type": "Widgets", "inputs": {"i": 99}},
            "4": {"class_type": "IntConst", "inputs": {"value": "not planned"}}
        })
    );
}

#[test]
fn compare_node_ids_orders_numbers_first_then_strings() {
    use std::cmp::Ordering::*;
    assert_eq!(compare_node_ids("9", "10"), Less);
    assert_eq!(compare_node_ids("10", "9"), Greater);
    assert_eq!(compare_node_ids("10", "10"), Equal);
    assert_eq!(compare_node_ids("2", "02"), Equal);
    assert_eq!(compare_node_ids("100", "a"), Less);
    assert_eq!(compare_node_ids("a", "1"), Greater);
    assert_eq!(compare_node_ids("a", "b"), Less);
    assert_eq!(compare_node_ids("10:2", "9:1"), Less); // not numbers: compared as strings
    let mut ids = vec!["b", "10", "9", "a", "-1", "1"];
    ids.sort_by(|a, b| compare_node_ids(a, b));
    assert_eq!(ids, ["1", "9", "10", "-1", "a", "b"]);
}

#[test]
fn fmt_float_matches_python_for_ordinary_values() {
    assert_eq!(fmt_float(1.0), "1.0");
    assert_eq!(fmt_float(0.0), "0.0");
    assert_eq!(fmt_float(-3.0), "-3.0");
    assert_eq!(fmt_float(0.5), "0.5");
    assert_eq!(fmt_float(0.1 + 0.2), "0.30000000000000004");
    assert_eq!(fmt_float(8.0), "8.0");
    assert_eq!(fmt_float(f64::INFINITY), "inf");
    assert_eq!(fmt_float(f64::NEG_INFINITY), "-inf");
}

// ---------------------------------------------------------------------------------------------
// Fixed bugs, and Python's str()/repr() in messages
// ---------------------------------------------------------------------------------------------

#[test]
fn cycle_path_returns_to_its_start() {
    // 1 <-> 2 and 2 <-> 3 form one strongly connected component {1, 2, 3}.
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0]}},
        "2": {"class_type": "Pass", "inputs": {"a": ["3", 0], "b": ["1", 0]}},
        "3": {"class_type": "Pass", "inputs": {"a": ["2", 0]}}
    }));
    let details = &only_error(&v, "1").details;
    let path = details
        .strip_prefix("node '1' depends on itself through ")
        .unwrap();
    let ids: Vec<&str> = path.split(" -> ").collect();
    assert_eq!(ids.first(), Some(&"1"), "{details}");
    assert_eq!(ids.last(), Some(&"1"), "{details}");
}

#[test]
fn cycle_path_follows_only_declared_links() {
    // Real dependencies: 1 -> 3 -> 2 -> 1. Node 1 also has an undeclared input pointing at 2.
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"zz_undeclared": ["2", 0], "a": ["3", 0]}},
        "2": {"class_type": "Pass", "inputs": {"a": ["1", 0]}},
        "3": {"class_type": "Pass", "inputs": {"a": ["2", 0]}}
    }));
    assert_eq!(
        only_error(&v, "1").details,
        "node '1' depends on itself through 1 -> 3 -> 2 -> 1"
    );
}

#[test]
fn value_not_in_list_details_match_comfyui() {
    let e = widget_error("c", json!("d"));
    assert_eq!(e.details, "c: 'd' not in ['a', 'b', 'c']");
}

#[test]
fn numeric_underscores_follow_python() {
    assert_eq!(
        widget_error("i", json!("_5")).kind,
        ErrorKind::InvalidInputType
    );
    assert_eq!(
        widget_error("i", json!("1__0")).kind,
        ErrorKind::InvalidInputType
    );
    assert_eq!(
        widget_error("i", json!("5_")).kind,
        ErrorKind::InvalidInputType
    );
    assert_eq!(widget_value("f", json!("0.2_5")), ConstValue::Float(0.25));
}

/// The single error that `input = value` gives on a `Choices` node (id "1").
fn choices_error(input: &str, value: Json) -> NodeError {
    let v = TestCatalog::new()
        .check(json!({"1": {"class_type": "Choices", "inputs": { input: value }}}));
    assert_eq!(
        v.failure,
        Some(PromptError::OutputsFailed),
        "{input} = {value}"
    );
    only_error(&v, "1").clone()
}

#[test]
fn cycle_path_is_a_shortest_cycle_through_the_first_node() {
    // One component {1, 2, 3, 4}: 1 -> 2 -> 3 -> 4 -> 1 and the shortcut 1 -> 4 (input b).
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0], "b": ["4", 0]}},
        "2": {"class_type": "Pass", "inputs": {"a": ["3", 0]}},
        "3": {"class_type": "Pass", "inputs": {"a": ["4", 0], "b": ["2", 0]}},
        "4": {"class_type": "Pass", "inputs": {"a": ["1", 0]}}
    }));
    for id in ["1", "2", "3", "4"] {
        assert_eq!(
            only_error(&v, id).details,
            format!("node '{id}' depends on itself through 1 -> 4 -> 1")
        );
    }
}

#[test]
fn cycle_path_ignores_undeclared_self_links() {
    // An undeclared input linking a node to itself is not a dependency: no cycle at all.
    let v = TestCatalog::new().check(json!({
        "1": {"class_type": "Sink", "inputs": {"a": ["2", 0]}},
        "2": {"class_type": "Pass", "inputs": {"extra": ["2", 0]}}
    }));
    assert!(v.node_errors.is_empty(), "{:#?}", v.node_errors);
    assert_eq!(order(plan(&v)), ["2", "1"]);
}

#[test]
fn non_string_combo_values_never_match() {
    // ComfyUI checks `val not in options` on the value as sent, and 1 != "1" in Python.
    for (value, shown) in [
        (json!(1), "1"),
        (json!(2.5), "2.5"),
        (json!(true), "True"),
        (json!(null), "None"),
        (json!({"__value__": [1, 2]}), "[1, 2]"),
    ] {
        let e = choices_error("n", value.clone());
        assert_eq!(e.kind, ErrorKind::ValueNotInList, "{value}");
        assert_eq!(
            e.details,
            format!("n: '{shown}' not in ['1', '2.5', 'True', 'None', '[1, 2]']")
        );
        assert_eq!(e.input_name.as_deref(), Some("n"));
    }
    assert_eq!(choices_error("n", json!(1)).received_value, Some(json!(1)));
    // The same options as strings are accepted.
    for option in LOOKALIKES {
        let v = TestCatalog::new()
            .check(json!({"1": {"class_type": "Choices", "inputs": {"n": option}}}));
        assert_eq!(
            plan(&v).nodes()[0].input("n"),
            Some(&PlanInput::Const(ConstValue::String((*option).to_owned())))
        );
    }
}

#[test]
fn value_not_in_list_options_use_pythons_string_repr() {
    let e = choices_error("q", json!("nope"));
    assert_eq!(AWKWARD.len(), 9);
    assert_eq!(
        e.details,
        concat!(
            r#"q: 'nope' not in ["it's", 'say "hi"', 'both \' and "', 'back\\slash', "#,
            r#"'tab\there\nnew\rline', 'bell\x07del\x7f', 'café 猫', "#,
            r#"'nbsp\xa0zwsp\u200bsoft\xad', 'private\ue000astral🐱tag\U000e0041']"#
        )
    );
    // The value itself is shown with str() inside the quotes ComfyUI adds: not escaped.
    let e = choices_error("q", json!("isn't\n"));
    assert!(
        e.details.starts_with("q: 'isn't\n' not in [\"it's\", "),
        "{}",
        e.details
    );
}

#[test]
fn constants_are_shown_with_pythons_str() {
    // str() of a list or dict is its repr(): `[1, 2]`, not JSON's `[1,2]`.
    let s = |v: Json| widget_value("s", v);
    assert_eq!(
        s(json!({"__value__": [1, 2]})),
        ConstValue::String("[1, 2]".into())
    );
    assert_eq!(
        s(json!({"__value__": ["a", "it's", null, true, 1.5, 1e16, []]})),
        ConstValue::String(r#"['a', "it's", None, True, 1.5, 1e+16, []]"#.into())
    );
    assert_eq!(
        s(json!({"k": {"n": [0.00001]}, "e": {}})),
        ConstValue::String("{'k': {'n': [1e-05]}, 'e': {}}".into())
    );
    assert_eq!(s(json!(1e16)), ConstValue::String("1e+16".into()));

    // The same str() in an invalid_input_type error's details, and Python's type names.
    let e = widget_error("i", json!({"__value__": [1, "a"]}));
    assert_eq!(
        e.exception_message.as_deref(),
        Some("int() argument must be a string, a bytes-like object or a real number, not 'list'")
    );
    assert_eq!(
        e.details,
        "i, [1, 'a'], int() argument must be a string, a bytes-like object or a real number, not 'list'"
    );
    let e = widget_error("f", json!({"a": 1}));
    assert_eq!(
        e.exception_message.as_deref(),
        Some("float() argument must be a string or a real number, not 'dict'")
    );
    assert_eq!(
        e.details,
        "f, {'a': 1}, float() argument must be a string or a real number, not 'dict'"
    );
}

#[test]
fn conversion_errors_quote_the_string_as_python_repr_does() {
    let e = widget_error("i", json!("it's"));
    assert_eq!(
        e.exception_message.as_deref(),
        Some(r#"invalid literal for int() with base 10: "it's""#)
    );
    assert_eq!(
        e.details,
        r#"i, it's, invalid literal for int() with base 10: "it's""#
    );
    let e = widget_error("f", json!("a\\b\n"));
    assert_eq!(
        e.exception_message.as_deref(),
        Some(r"could not convert string to float: 'a\\b\n'")
    );
}

#[test]
fn more_numeric_strings_follow_python() {
    let int = |v: &str| widget_value("i", json!(v));
    assert_eq!(int("1_0"), ConstValue::Int(10));
    assert_eq!(int("-1_0"), ConstValue::Int(-10));
    assert_eq!(int("\u{a0}5\u{3000}"), ConstValue::Int(5));
    assert_eq!(int("0_0_7"), ConstValue::Int(7));
    for bad in [
        "+_5", "-_5", "_", "1_ 0", "\u{1c}5", "+-5", "--5", "0x5", "5e0",
    ] {
        let e = widget_error("i", json!(bad));
        assert_eq!(e.kind, ErrorKind::InvalidInputType, "{bad:?}");
    }

    let float = |v: &str| widget_value("f", json!(v));
    assert_eq!(float("0.2_5"), ConstValue::Float(0.25));
    assert_eq!(float("0_0.5"), ConstValue::Float(0.5));
    assert_eq!(float("1_0e-1_0"), ConstValue::Float(1e-9));
    assert_eq!(float("1."), ConstValue::Float(1.0));
    assert_eq!(float("+.5"), ConstValue::Float(0.5));
    for bad in [
        "_0.5", "0.5_", "0_.5", "0._5", "1__0.0", "1_e1", "1e_1", "in_f", "--0.5", "+-0.5", ".",
        "5e", "e5", "0x1p-2",
    ] {
        let e = widget_error("f", json!(bad));
        assert_eq!(e.kind, ErrorKind::InvalidInputType, "{bad:?}");
        assert_eq!(
            e.exception_message,
            Some(format!("could not convert string to float: '{bad}'"))
        );
    }
    // \x1c is whitespace to str.isspace() but float() does not strip it.
    let e = widget_error("f", json!("\u{1c}0.5"));
    assert_eq!(
        e.exception_message.as_deref(),
        Some(r"could not convert string to float: '\x1c0.5'")
    );
}

#[test]
fn fmt_float_matches_python_repr_for_all_magnitudes() {
    assert_eq!(fmt_float(1e16), "1e+16");
    assert_eq!(fmt_float(1e15), "1000000000000000.0");
    assert_eq!(fmt_float(9999999999999998.0), "9999999999999998.0");
    assert_eq!(fmt_float(123456789012345680.0), "1.2345678901234568e+17");
    assert_eq!(fmt_float(1.5e20), "1.5e+20");
    assert_eq!(fmt_float(1e100), "1e+100");
    assert_eq!(fmt_float(-1e16), "-1e+16");
    assert_eq!(fmt_float(0.0001), "0.0001");
    assert_eq!(fmt_float(0.00001), "1e-05");
    assert_eq!(fmt_float(2.5e-7), "2.5e-07");
    assert_eq!(fmt_float(-0.0), "-0.0");
    assert_eq!(fmt_float(f64::NAN), "nan");
}
