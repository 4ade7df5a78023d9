//! The test node pack: only registered by `Registry::with_test_nodes` (tests, and `weft serve
//! --test-nodes`), like ComfyUI's `testing-pack`. Lets tests exercise slow, failing and panicking
//! nodes through the real server.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::graph::spec::build::*;
use crate::graph::spec::NodeSpec;
use crate::graph::SlotType;
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    registry.add(StubImage);
    registry.add(TestSleep);
    registry.add(TestFail);
    registry.add(TestCrash {
        class_type: "TestPanic",
        crash: || panic!("TestPanic node panicked on purpose"),
    });
    registry.add(TestCrash {
        class_type: "TestAbort",
        crash: || std::process::abort(),
    });
    registry.add(TestPreview);
}

fn spec(
    class_type: &'static str,
    inputs: Vec<crate::graph::spec::InputSpec>,
    outputs: Vec<crate::graph::spec::OutputSpec>,
) -> NodeSpec {
    NodeSpec {
        python_module: "custom_nodes.testing-pack",
        ..node(class_type, class_type, "_for_testing", inputs, outputs)
    }
}

/// A white, black or deterministic-noise image.
pub struct StubImage;

impl Node for StubImage {
    fn spec(&self) -> NodeSpec {
        spec(
            "StubImage",
            vec![
                required("content", combo(&["WHITE", "BLACK", "NOISE"])),
                required("height", int(512, 1, 4096)),
                required("width", int(512, 1, 4096)),
                required("batch_size", int(1, 1, 64)),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let (h, w, b) = (
            inputs.usize("height")?,
            inputs.usize("width")?,
            inputs.usize("batch_size")?,
        );
        let n = b * h * w * 3;
        let data: Vec<f32> = match inputs.string("content")? {
            "WHITE" => vec![1.0; n],
            "BLACK" => vec![0.0; n],
            _ => (0..n as u64)
                .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 1000) as f32 / 999.0)
                .collect(),
        };
        Ok(NodeOutput::values(vec![Value::Image(Tensor::from_vec(
            data,
            (b, h, w, 3),
            &Device::Cpu,
        )?)]))
    }
}

/// Passes its value through after `seconds`, reporting progress and honouring interrupts.
pub struct TestSleep;

impl Node for TestSleep {
    fn spec(&self) -> NodeSpec {
        spec(
            "TestSleep",
            vec![
                required("value", link(SlotType::ANY)),
                required("seconds", float(2.0, 0.0, 3600.0, 0.01)),
            ],
            vec![output(SlotType::ANY, "value")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let value = inputs
            .get("value")
            .cloned()
            .ok_or_else(|| NodeError::input("value", "missing"))?;
        let total = Duration::from_secs_f64(inputs.float("seconds")?);
        let start = Instant::now();
        let steps = 20u64;
        for step in 1..=steps {
            let until = total.mul_f64(step as f64 / steps as f64);
            while start.elapsed() < until {
                ctx.check_interrupt()?;
                std::thread::sleep(
                    Duration::from_millis(5).min(until - start.elapsed().min(until)),
                );
            }
            ctx.progress(step, steps);
        }
        Ok(NodeOutput::values(vec![value]))
    }
}

/// Always fails with its message.
pub struct TestFail;

impl Node for TestFail {
    fn spec(&self) -> NodeSpec {
        spec(
            "TestFail",
            vec![
                required("value", link(SlotType::ANY)),
                required("message", string("test failure")),
            ],
            vec![output(SlotType::ANY, "value")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        Err(NodeError::Failed(inputs.string("message")?.to_owned()))
    }
}

/// Fails the hard way: `TestPanic` panics (a panic fails one prompt, not the server);
/// `TestAbort` aborts the whole process, as an allocation failure does (what crash recovery and
/// quarantine are tested with).
pub struct TestCrash {
    class_type: &'static str,
    crash: fn() -> !,
}

impl Node for TestCrash {
    fn spec(&self) -> NodeSpec {
        spec(
            self.class_type,
            vec![required("value", link(SlotType::ANY))],
            vec![output(SlotType::ANY, "value")],
        )
    }

    fn run(&self, _ctx: &NodeContext, _inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        (self.crash)()
    }
}

/// Sends one 4×4 PNG preview frame, as a sampler does on each step.
pub struct TestPreview;

impl Node for TestPreview {
    fn spec(&self) -> NodeSpec {
        spec(
            "TestPreview",
            vec![required("value", link(SlotType::ANY))],
            vec![output(SlotType::ANY, "value")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let value = inputs
            .get("value")
            .cloned()
            .ok_or_else(|| NodeError::input("value", "missing"))?;
        let png = crate::nodes::image_io::encode_png(&[200u8; 4 * 4 * 3], 4, 4);
        ctx.reporter.preview(&ctx.node_id, png, true);
        Ok(NodeOutput::values(vec![value]))
    }
}
