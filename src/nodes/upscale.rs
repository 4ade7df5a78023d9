//! Upscale models: UpscaleModelLoader and ImageUpscaleWithModel, as ComfyUI's
//! `comfy_extras/nodes_upscale_model.py`: the model (ESRGAN, Real-ESRGAN Compact, SwinIR, detected
//! from its weights by `engine::upscale`) runs over 512-pixel tiles overlapping by 32, blended with
//! `comfy.utils.tiled_scale`'s feathered masks; when the memory for a tile is not there, the tile
//! is halved, down to 128. One progress step per tile; an interrupt stops between tiles.

use candle_core::Tensor;

use crate::engine::upscale::{tile, UpscaleModel};
use crate::graph::spec::build::*;
use crate::graph::spec::{Freshness, NodeSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::loaders::files;
use crate::nodes::{
    file_fingerprint, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value,
};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(UpscaleModelLoader);
    registry.add(ImageUpscaleWithModel);
}

const MODULE: &str = "comfy_extras.nodes_upscale_model";

/// ComfyUI's first tile side, its overlap, and the smallest tile it halves down to.
const TILE: usize = 512;
const OVERLAP: usize = 32;
const MIN_TILE: usize = 128;

/// Loads a file from `models/upscale_models`.
pub struct UpscaleModelLoader;

impl Node for UpscaleModelLoader {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            freshness: Freshness::ReadsFiles,
            python_module: MODULE,
            ..node(
                "UpscaleModelLoader",
                "Load Upscale Model",
                "loaders",
                vec![required("model_name", files("upscale_models"))],
                vec![output(SlotType::UPSCALE_MODEL, "UPSCALE_MODEL")],
            )
        }
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("model_name")?;
        let path = ctx.model_path("upscale_models", "model_name", name)?;
        let model = ctx
            .models
            .upscale(&path)
            .map_err(|e| NodeError::model_load("model_name", e))?;
        tracing::info!(model = %model.describe(), "loaded upscale model");
        Ok(NodeOutput::values(vec![Value::UpscaleModel(model)]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "upscale_models", constants, "model_name")
    }
}

/// Upscales images with a loaded model, tile by tile.
pub struct ImageUpscaleWithModel;

impl Node for ImageUpscaleWithModel {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            python_module: MODULE,
            ..node(
                "ImageUpscaleWithModel",
                "Upscale Image (using Model)",
                "image/upscaling",
                vec![
                    required("upscale_model", link(SlotType::UPSCALE_MODEL)),
                    required("image", link(SlotType::IMAGE)),
                ],
                vec![output(SlotType::IMAGE, "IMAGE")],
            )
        }
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.upscale_model("upscale_model")?;
        let image = inputs.image("image")?;
        let (_, _, _, channels) = image.dims4().map_err(|_| {
            NodeError::input(
                "image",
                format!("expected an IMAGE [B,H,W,C], got shape {:?}", image.dims()),
            )
        })?;
        if channels != model.in_channels() {
            return Err(NodeError::input(
                "image",
                format!(
                    "{} takes {}-channel images, this one has {channels}",
                    model.describe(),
                    model.in_channels()
                ),
            ));
        }
        let scaled = upscale(ctx, model, &image.permute((0, 3, 1, 2))?.contiguous()?)?;
        Ok(NodeOutput::values(vec![Value::Image(
            scaled
                .clamp(0f32, 1f32)?
                .permute((0, 2, 3, 1))?
                .contiguous()?,
        )]))
    }
}

/// `image` (`[B, C, H, W]`) through `model` in tiles, halving the tile while the memory for one
/// is short (reserved up front, or a device allocation that failed).
fn upscale(ctx: &NodeContext, model: &UpscaleModel, image: &Tensor) -> Result<Tensor, NodeError> {
    let (batch, _, height, width) = image.dims4()?;
    let scale = model.scale();
    let out_channels = model.out_channels();
    // The result, the blend's sums and the clamped, permuted copy, in f32.
    let (out_h, out_w) = (height as u64 * scale as u64, width as u64 * scale as u64);
    let result_bytes = 3 * 4 * batch as u64 * out_channels as u64 * out_h * out_w;
    let what = format!(
        "upscaling {batch} image(s) of {width}x{height} {scale}x with {}",
        model.describe()
    );
    let mut tile = TILE;
    loop {
        let tile_bytes = model.activation_bytes(tile.min(height), tile.min(width));
        let halve = match ctx.reserve_memory("image", result_bytes + tile_bytes, &what) {
            Ok(()) => match run_tiles(ctx, model, image, tile) {
                Err(NodeError::Tensor(e)) if is_out_of_memory(&e) => NodeError::Tensor(e),
                done => return done,
            },
            Err(e) => e,
        };
        if tile / 2 < MIN_TILE {
            return Err(halve);
        }
        tile /= 2;
        tracing::info!(
            tile,
            "out of memory for an upscale tile; trying smaller tiles"
        );
    }
}

fn run_tiles(
    ctx: &NodeContext,
    model: &UpscaleModel,
    image: &Tensor,
    tile: usize,
) -> Result<Tensor, NodeError> {
    let (batch, _, height, width) = image.dims4()?;
    let steps = (batch * tile::steps(width, height, tile, OVERLAP)) as u64;
    let mut done = 0u64;
    tile::tiled_scale(
        image,
        tile,
        OVERLAP,
        model.scale(),
        model.out_channels(),
        |part| model.upscale(part).map_err(NodeError::from),
        || {
            done += 1;
            ctx.progress(done.min(steps), steps);
            ctx.check_interrupt()
        },
    )
}

/// Whether a device error is an allocation failure (CUDA's `CUDA_ERROR_OUT_OF_MEMORY`, Metal's).
fn is_out_of_memory(error: &candle_core::Error) -> bool {
    let message = error.to_string().to_ascii_lowercase();
    message.contains("out of memory") || message.contains("out_of_memory")
}
