//! The OpenPose networks as `controlnet_aux.open_pose.model` builds them: a VGG-19 trunk and
//! cascaded stages of plain convolutions, each stage fed the previous stage's maps concatenated
//! with the trunk's features. Layer names are the published files' (`conv1_1`, `Mconv7_stage6_L2`:
//! the pack's `util.transfer` strips the `model0.`-style module prefix); widths and kernel sizes
//! come from the weight shapes, so narrowed test files load like the published ones.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Conv2dConfig;

use crate::load::file::StateDict;
use crate::load::{LoadError, LoadErrorKind};
use crate::ops::conv::Conv2d;
use crate::preprocess::{ImageU8, PreprocessError, Result as PreResult};

use super::body::net_input;

/// One step of a layer chain.
#[derive(Debug)]
enum Step {
    /// A convolution (square kernel, stride 1, "same" padding), with or without its ReLU.
    Conv { conv: Conv2d, relu: bool },
    /// `MaxPool2d(2, 2)`.
    Pool,
}

/// A sequence of convolutions and pools (one `make_layers` block).
#[derive(Debug)]
struct Chain(Vec<Step>);

impl Chain {
    /// Reads the named convolutions (`"pool"` for a pool); `no_relu` names those without ReLU.
    fn load(
        sd: &StateDict,
        device: &Device,
        names: &[String],
        no_relu: &[&str],
    ) -> Result<Self, LoadError> {
        let mut steps = Vec::with_capacity(names.len());
        for name in names {
            if name == "pool" {
                steps.push(Step::Pool);
                continue;
            }
            let weight = f32_on(sd, &format!("{name}.weight"), device)?;
            let bias = f32_on(sd, &format!("{name}.bias"), device)?;
            let k = match weight.dims() {
                [_, _, kh, kw] if kh == kw && kh % 2 == 1 => *kh,
                dims => {
                    return Err(LoadError::new(
                        sd.path(),
                        LoadErrorKind::BadConfig(format!(
                            "'{name}.weight' has shape {dims:?}, expected an odd square kernel"
                        )),
                    ))
                }
            };
            let config = Conv2dConfig {
                padding: k / 2,
                ..Default::default()
            };
            steps.push(Step::Conv {
                conv: Conv2d::new(weight, Some(bias), config),
                relu: !no_relu.contains(&name.as_str()),
            });
        }
        Ok(Self(steps))
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for step in &self.0 {
            x = match step {
                Step::Conv { conv, relu } => {
                    let y = conv.forward(&x)?;
                    if *relu {
                        y.relu()?
                    } else {
                        y
                    }
                }
                Step::Pool => x.max_pool2d(2)?,
            };
        }
        Ok(x)
    }
}

fn f32_on(sd: &StateDict, name: &str, device: &Device) -> Result<Tensor, LoadError> {
    sd.get(name)?
        .to_dtype(DType::F32)
        .and_then(|t| t.to_device(device))
        .map_err(|e| LoadError::new(sd.path(), LoadErrorKind::Tensor(e)))
}

/// The VGG-19 layers every OpenPose trunk starts with (`"pool"`: a 2x2 max pool).
const VGG_HEAD: [&str; 13] = [
    "conv1_1", "conv1_2", "pool", "conv2_1", "conv2_2", "pool", "conv3_1", "conv3_2", "conv3_3",
    "conv3_4", "pool", "conv4_1", "conv4_2",
];

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `bodypose_model` (`body_pose_model.pth`): the trunk to `conv4_4_CPM`, then six stages of two
/// branches, L1 the 38 part-affinity fields and L2 the 19 heatmaps.
#[derive(Debug)]
pub struct BodyNet {
    trunk: Chain,
    /// Per stage, the (L1, L2) branches.
    stages: Vec<(Chain, Chain)>,
    device: Device,
}

impl BodyNet {
    /// Builds the net from a `body_pose_model.pth` (always f32).
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> Result<Self, LoadError> {
        let trunk = names(&[&VGG_HEAD[..], &["conv4_3_CPM", "conv4_4_CPM"]].concat());
        // The pack's no_relu_layers lists Mconv7_stage6_L1 twice and Mconv7_stage6_L2 never, so
        // the last heatmap layer keeps its ReLU.
        let no_relu: Vec<String> = (2..=5)
            .flat_map(|i| [format!("Mconv7_stage{i}_L1"), format!("Mconv7_stage{i}_L2")])
            .chain([
                "conv5_5_CPM_L1".to_string(),
                "conv5_5_CPM_L2".to_string(),
                "Mconv7_stage6_L1".to_string(),
            ])
            .collect();
        let no_relu: Vec<&str> = no_relu.iter().map(String::as_str).collect();
        let trunk = Chain::load(sd, device, &trunk, &no_relu)?;
        let mut stages = Vec::with_capacity(6);
        for stage in 1..=6 {
            let branch = |l: usize| -> Vec<String> {
                if stage == 1 {
                    (1..=5).map(|c| format!("conv5_{c}_CPM_L{l}")).collect()
                } else {
                    (1..=7)
                        .map(|c| format!("Mconv{c}_stage{stage}_L{l}"))
                        .collect()
                }
            };
            stages.push((
                Chain::load(sd, device, &branch(1), &no_relu)?,
                Chain::load(sd, device, &branch(2), &no_relu)?,
            ));
        }
        Ok(Self {
            trunk,
            stages,
            device: device.clone(),
        })
    }

    /// The device its weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `x`: `[1, 3, H, W]` (BGR, `/256 - 0.5`); returns the last stage's (PAFs `[1, 38, H/8, W/8]`,
    /// heatmaps `[1, 19, H/8, W/8]`).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let features = self.trunk.forward(x)?;
        let mut input = features.clone();
        let mut out = None;
        for (l1, l2) in &self.stages {
            let paf = l1.forward(&input)?;
            let heat = l2.forward(&input)?;
            input = Tensor::cat(&[&paf, &heat, &features], 1)?;
            out = Some((paf, heat));
        }
        out.ok_or_else(|| candle_core::Error::Msg("body net without stages".into()))
    }
}

/// The hand and face nets (`handpose_model` of `hand_pose_model.pth`, 22 heatmaps; `FaceNet` of
/// `facenet.pth`, 71 heatmaps) share one layout: a VGG trunk to `conv5_3_CPM`, stage 1
/// (`conv6_1_CPM`, `conv6_2_CPM`), then stages 2-6 (`Mconv1_stage{i}` .. `Mconv7_stage{i}`), each fed
/// the previous stage's heatmaps concatenated with the trunk's features. Only the last stage's maps
/// are used (`Hand` takes the model's output, `Face` its `hs[-1]`).
#[derive(Debug)]
pub struct CpmNet {
    trunk: Chain,
    stages: Vec<Chain>,
    device: Device,
}

impl CpmNet {
    /// Builds the net from a `hand_pose_model.pth` or `facenet.pth` (always f32).
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> Result<Self, LoadError> {
        let trunk = names(
            &[
                &VGG_HEAD[..],
                &["conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3_CPM"],
            ]
            .concat(),
        );
        let no_relu: Vec<String> = (2..=6)
            .map(|i| format!("Mconv7_stage{i}"))
            .chain(["conv6_2_CPM".to_string()])
            .collect();
        let no_relu: Vec<&str> = no_relu.iter().map(String::as_str).collect();
        let trunk = Chain::load(sd, device, &trunk, &no_relu)?;
        let mut stages = vec![Chain::load(
            sd,
            device,
            &names(&["conv6_1_CPM", "conv6_2_CPM"]),
            &no_relu,
        )?];
        for stage in 2..=6 {
            let layers: Vec<String> = (1..=7).map(|c| format!("Mconv{c}_stage{stage}")).collect();
            stages.push(Chain::load(sd, device, &layers, &no_relu)?);
        }
        Ok(Self {
            trunk,
            stages,
            device: device.clone(),
        })
    }

    /// The device its weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The last stage's maps for a BGR uint8 image: `(K, H/8, W/8)` and the values, map by map.
    pub fn maps(&self, bgr: &ImageU8) -> PreResult<(usize, usize, usize, Vec<f32>)> {
        let cand = |source| PreprocessError::Candle {
            op: "OpenposePreprocessor",
            source,
        };
        let out = self.forward(&net_input(bgr, &self.device)?).map_err(cand)?;
        let (_, c, h, w) = out.dims4().map_err(cand)?;
        let v = out
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(cand)?;
        Ok((c, h, w, v))
    }

    /// `x`: `[1, 3, H, W]` (BGR, `/256 - 0.5`); returns the last stage's heatmaps `[1, K, H/8, W/8]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let features = self.trunk.forward(x)?;
        let mut maps = features.clone();
        for (i, stage) in self.stages.iter().enumerate() {
            let input = if i == 0 {
                features.clone()
            } else {
                Tensor::cat(&[&maps, &features], 1)?
            };
            maps = stage.forward(&input)?;
        }
        Ok(maps)
    }
}
