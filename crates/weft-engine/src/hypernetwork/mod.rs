//! Hypernetworks as ComfyUI's `load_hypernetwork_patch` (comfy_extras/nodes_hypernetwork.py)
//! builds and applies them: per attention input width (the text context's 768, the UNet's 320,
//! 640, 1280, ...), two small MLPs that shift the sources of the keys and values,
//! `k + mlp_k(k) * strength` and `v + mlp_v(v) * strength`, before the projections, in every
//! self-attention (`attn1_patch`) and cross-attention (`attn2_patch`) whose input has that width.
//!
//! Files: the A1111 `.pt` (`{768: [state_dict_k, state_dict_v], ..., "activation_func": ...}`,
//! read with [`crate::load::pickle_tree`]), or a `.safetensors` with the same tensors flattened
//! (`768.0.linear.0.weight`, and the options, if any, in its metadata).
//!
//! Dropout layers (`use_dropout`, p = 0.3) are built and active: ComfyUI leaves its Sequential in
//! training mode, so each dropout draws a Bernoulli mask from torch's global generator, which
//! `prepare_noise` seeded. Weft draws the same masks from that stream
//! ([`crate::diffusion::patches::GlobalDraws`]), taking its pass's share where ComfyUI batches the
//! negative and positive sides.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Module, Result, Tensor};

use crate::diffusion::patches::{
    BatchSlot, CrossAttentionPatch, GlobalDraws, GlobalStream, SelfAttentionPatch,
    UndoAttentionPatch,
};
use crate::load::file::StateDict;
use crate::load::pickle_tree::{read_pickle_tree, PickleValue};
use crate::load::{LoadError, LoadErrorKind};
use crate::ops::layers::Linear;

/// The activations ComfyUI accepts (`valid_activation`), by their file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `linear`: no activation layer at all.
    Linear,
    /// `relu`.
    Relu,
    /// `leakyrelu` (torch's slope 0.01).
    LeakyRelu,
    /// `elu` (alpha 1).
    Elu,
    /// `swish`, which ComfyUI builds as torch's Hardswish.
    Hardswish,
    /// `tanh`.
    Tanh,
    /// `sigmoid`.
    Sigmoid,
    /// `softsign`.
    Softsign,
    /// `mish`.
    Mish,
}

impl Activation {
    /// The activation a file names; `None` for one ComfyUI does not support.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "linear" => Self::Linear,
            "relu" => Self::Relu,
            "leakyrelu" => Self::LeakyRelu,
            "elu" => Self::Elu,
            "swish" => Self::Hardswish,
            "tanh" => Self::Tanh,
            "sigmoid" => Self::Sigmoid,
            "softsign" => Self::Softsign,
            "mish" => Self::Mish,
            _ => return None,
        })
    }

    /// The activation applied elementwise, as torch's module computes it.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Linear => Ok(x.clone()),
            Self::Relu => x.relu(),
            Self::LeakyRelu => x.maximum(&x.affine(0.01, 0.0)?),
            Self::Elu => x.relu()? + x.minimum(0.0)?.exp()?.affine(1.0, -1.0)?,
            Self::Hardswish => x * (x.affine(1.0, 3.0)?.clamp(0.0, 6.0)? / 6.0)?,
            Self::Tanh => x.tanh(),
            Self::Sigmoid => candle_nn::ops::sigmoid(x),
            Self::Softsign => x / x.abs()?.affine(1.0, 1.0)?,
            // softplus(x) = relu(x) + log(1 + exp(-|x|)), without overflow.
            Self::Mish => {
                let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                x * softplus.tanh()?
            }
        }
    }
}

/// The options a hypernetwork file carries next to its weights (ComfyUI's defaults when absent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// `activation_func`.
    pub activation: Activation,
    /// `is_layer_norm`: each linear layer is followed by a LayerNorm stored after it.
    pub layer_norm: bool,
    /// `activate_output`: the last linear layer is activated too.
    pub activate_output: bool,
    /// `use_dropout`: dropout (p = 0.3) after the linear layers but the last two.
    pub use_dropout: bool,
    /// `last_layer_dropout`: with `use_dropout`, also after the last but one.
    pub last_layer_dropout: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            activation: Activation::Linear,
            layer_norm: false,
            activate_output: false,
            use_dropout: false,
            last_layer_dropout: false,
        }
    }
}

#[derive(Debug, Clone)]
enum Layer {
    Linear(Linear),
    Activation(Activation),
    /// torch's LayerNorm (eps 1e-5) over the last dimension.
    Norm(candle_nn::LayerNorm),
    /// torch's Dropout in training mode, zeroing this share.
    Dropout(f64),
}

/// Dropout's share (`torch.nn.Dropout(p=0.3)` in ComfyUI's walk).
const DROPOUT: f64 = 0.3;

/// One of the two MLPs of a width: ComfyUI's Sequential of its layers.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Layer>,
}

impl Mlp {
    /// Builds the MLP from one state dict's entries as ComfyUI walks them: the `.weight` names in
    /// order, each a linear layer (then the activation unless it is the last one and
    /// `activate_output` is off), and with `layer_norm` the next name its LayerNorm.
    ///
    /// ComfyUI takes the dict's order, which a saved Sequential's state dict has as its numeric
    /// layer order (`linear.2` before `linear.10`); that natural order is used here, since neither
    /// a safetensors header nor candle's pickle reader (it reverses each SETITEMS batch) keeps
    /// the file's.
    fn build(entries: &[(String, Tensor)], options: &Options) -> std::result::Result<Mlp, String> {
        let get = |name: &str| {
            entries
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| format!("'{name}' is missing"))
        };
        let mut names: Vec<&str> = entries
            .iter()
            .filter_map(|(k, _)| k.strip_suffix(".weight"))
            .collect();
        names.sort_by_key(|name| natural_key(name));
        let mut layers = Vec::new();
        let mut i = 0;
        while i < names.len() {
            // As ComfyUI's walk, counted over every `.weight` name (layer norms included).
            let last = i + 1 == names.len();
            let penultimate = i + 2 == names.len();
            let weight = get(&format!("{}.weight", names[i]))?;
            let bias = get(&format!("{}.bias", names[i]))?;
            if weight.rank() != 2 || bias.dims() != [weight.dims()[0]] {
                return Err(format!(
                    "'{}' is not a linear layer (weight {:?}, bias {:?})",
                    names[i],
                    weight.dims(),
                    bias.dims()
                ));
            }
            layers.push(Layer::Linear(Linear::new(weight, Some(bias))));
            if options.activation != Activation::Linear && (!last || options.activate_output) {
                layers.push(Layer::Activation(options.activation));
            }
            if options.layer_norm {
                i += 1;
                let name = names
                    .get(i)
                    .ok_or_else(|| format!("the layer norm after '{}' is missing", names[i - 1]))?;
                let weight = get(&format!("{name}.weight"))?;
                let bias = get(&format!("{name}.bias"))?;
                layers.push(Layer::Norm(candle_nn::LayerNorm::new(weight, bias, 1e-5)));
            }
            if options.use_dropout && !last && (!penultimate || options.last_layer_dropout) {
                layers.push(Layer::Dropout(DROPOUT));
            }
            i += 1;
        }
        Ok(Mlp { layers })
    }

    /// `x`: `[..., width]`, computed in the weights' dtype and returned in `x`'s; dropout masks
    /// come from `draws`.
    pub fn forward(&self, x: &Tensor, draws: &GlobalDraws) -> Result<Tensor> {
        let dtype = self
            .layers
            .iter()
            .find_map(|l| match l {
                Layer::Linear(lin) => Some(lin.weight().dtype()),
                _ => None,
            })
            .unwrap_or(x.dtype());
        let mut h = x.to_dtype(dtype)?;
        for layer in &self.layers {
            h = match layer {
                Layer::Linear(lin) => lin.forward(&h)?,
                Layer::Activation(a) => a.forward(&h)?,
                Layer::Norm(norm) => norm.forward(&h)?,
                Layer::Dropout(p) => draws.with(|stream| dropout(&h, *p, stream))?,
            };
        }
        h.to_dtype(x.dtype())
    }

    fn to_device(&self, device: &Device) -> Result<Mlp> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                Ok(match layer {
                    Layer::Linear(lin) => Layer::Linear(Linear::new(
                        lin.weight().to_device(device)?,
                        lin.bias().map(|b| b.to_device(device)).transpose()?,
                    )),
                    Layer::Activation(a) => Layer::Activation(*a),
                    Layer::Norm(norm) => {
                        let weight = norm.weight().to_device(device)?;
                        let bias = match norm.bias() {
                            Some(b) => b.to_device(device)?,
                            None => weight.zeros_like()?,
                        };
                        Layer::Norm(candle_nn::LayerNorm::new(weight, bias, 1e-5))
                    }
                    Layer::Dropout(p) => Layer::Dropout(*p),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Mlp { layers })
    }
}

/// A loaded hypernetwork with the strength it is applied at.
#[derive(Debug, Clone)]
pub struct Hypernetwork {
    /// The key and value MLPs per input width.
    nets: BTreeMap<usize, [Mlp; 2]>,
    /// The options read from the file.
    pub options: Options,
    /// The factor on the MLPs' outputs.
    pub strength: f64,
    /// Where dropout masks come from.
    draws: GlobalDraws,
}

impl Hypernetwork {
    /// Reads a hypernetwork file (`.pt`/`.pth`/`.ckpt` torch zip, or `.safetensors`), at
    /// strength 1.
    pub fn open(path: &Path) -> std::result::Result<Hypernetwork, LoadError> {
        let err = |e: String| LoadError::new(path, LoadErrorKind::UnsupportedFormat(e));
        let mut head = [0u8; 4];
        let read = std::io::Read::read(
            &mut std::fs::File::open(path).map_err(|e| LoadError::new(path, e))?,
            &mut head,
        )
        .map_err(|e| LoadError::new(path, e))?;
        let (options, widths) = if read == 4 && head == *b"PK\x03\x04" {
            from_pickle(&read_pickle_tree(path)?).map_err(err)?
        } else {
            from_flat(&StateDict::open(path)?)?
        };
        let mut nets = BTreeMap::new();
        for (width, [k, v]) in widths {
            let build = |entries: &[(String, Tensor)], which: &str| {
                Mlp::build(entries, &options)
                    .map_err(|e| err(format!("hypernetwork {width}.{which}: {e}")))
            };
            nets.insert(width, [build(&k, "0")?, build(&v, "1")?]);
        }
        if nets.is_empty() {
            return Err(LoadError::new(
                path,
                LoadErrorKind::NotACheckpoint("no hypernetwork layers found".into()),
            ));
        }
        Ok(Hypernetwork {
            nets,
            options,
            strength: 1.0,
            draws: GlobalDraws::new(),
        })
    }

    /// The input widths this hypernetwork has MLPs for.
    pub fn widths(&self) -> impl Iterator<Item = usize> + '_ {
        self.nets.keys().copied()
    }

    /// This hypernetwork with its weights on `device`, in their stored dtype (the MLPs run in
    /// it, as ComfyUI's do).
    pub fn to_device(&self, device: &Device) -> Result<Hypernetwork> {
        let nets = self
            .nets
            .iter()
            .map(|(w, [k, v])| Ok((*w, [k.to_device(device)?, v.to_device(device)?])))
            .collect::<Result<_>>()?;
        Ok(Hypernetwork {
            nets,
            options: self.options,
            strength: self.strength,
            draws: self.draws.clone(),
        })
    }

    /// ComfyUI's `hypernetwork_patch.__call__`: shifts `k` and `v` when their width has MLPs.
    pub fn shift(&self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let Some([mlp_k, mlp_v]) = self.nets.get(&k.dim(candle_core::D::Minus1)?) else {
            return Ok((k, v));
        };
        let k = (&k + (mlp_k.forward(&k, &self.draws)? * self.strength)?)?;
        let v = (&v + (mlp_v.forward(&v, &self.draws)? * self.strength)?)?;
        Ok((k, v))
    }
}

impl SelfAttentionPatch for Hypernetwork {
    fn before(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        _latent_hw: (usize, usize),
    ) -> Result<(Tensor, Tensor, Tensor, UndoAttentionPatch)> {
        let (k, v) = self.shift(k, v)?;
        Ok((q, k, v, Box::new(Ok)))
    }

    fn global_draws(&self) -> Option<&GlobalDraws> {
        Some(&self.draws)
    }
}

/// `F.dropout(x, p, training=True)` on the CPU: `bernoulli_(1 - p)` over the whole batched tensor
/// (one 53-bit uniform per element, serially, kept where it is below `1 - p`), divided by
/// `1 - p` in `x`'s dtype, times `x`. Of ComfyUI's batch, this pass's share of the mask is drawn
/// and the others' skipped, so the stream ends where ComfyUI's does.
fn dropout(x: &Tensor, p: f64, stream: &mut GlobalStream) -> Result<Tensor> {
    let keep = 1.0 - p;
    let scale = 1.0 / keep as f32;
    let numel = x.elem_count();
    let BatchSlot { index, count } = stream.slot;
    let generator = &mut stream.generator;
    for _ in 0..index * numel {
        generator.next_u64();
    }
    let mask: Vec<f32> = (0..numel)
        .map(|_| {
            if generator.uniform_f64() < keep {
                scale
            } else {
                0.0
            }
        })
        .collect();
    for _ in 0..count.saturating_sub(index + 1) * numel {
        generator.next_u64();
    }
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

impl CrossAttentionPatch for Hypernetwork {
    fn before(&self, q: Tensor, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (k, v) = self.shift(k, v)?;
        Ok((q, k, v))
    }
}

/// A name's sort key: its dot-separated parts, numbers by value.
fn natural_key(name: &str) -> Vec<(u64, &str)> {
    name.split('.')
        .map(|p| p.parse::<u64>().map_or((u64::MAX, p), |n| (n, "")))
        .collect()
}

/// Each width's two state dicts, their entries in file order.
type Widths = Vec<(usize, [Vec<(String, Tensor)>; 2])>;

/// The options and layers of an A1111 `.pt`: the integer keys hold the MLPs (ComfyUI skips every
/// key `int()` refuses), the string keys the options.
fn from_pickle(root: &PickleValue) -> std::result::Result<(Options, Widths), String> {
    let PickleValue::Dict(entries) = root else {
        return Err("the file does not hold a dict".into());
    };
    let flag = |key: &str| match root.get(key) {
        Some(PickleValue::Bool(b)) => *b,
        Some(PickleValue::Int(i)) => *i != 0,
        _ => false,
    };
    let activation = match root.get("activation_func") {
        Some(PickleValue::Str(name)) => Activation::parse(name)
            .ok_or_else(|| format!("unsupported activation_func '{name}'"))?,
        _ => Activation::Linear,
    };
    let options = Options {
        activation,
        layer_norm: flag("is_layer_norm"),
        activate_output: flag("activate_output"),
        use_dropout: flag("use_dropout"),
        last_layer_dropout: flag("last_layer_dropout"),
    };
    let mut widths = Vec::new();
    for (key, value) in entries {
        let PickleValue::Int(width) = key else {
            continue;
        };
        let width = usize::try_from(*width).map_err(|_| format!("negative width {width}"))?;
        let PickleValue::List(pair) = value else {
            return Err(format!(
                "hypernetwork {width} is not a list of two state dicts"
            ));
        };
        let state_dict = |i: usize| -> std::result::Result<Vec<(String, Tensor)>, String> {
            let Some(PickleValue::Dict(sd)) = pair.get(i) else {
                return Err(format!("hypernetwork {width}.{i} is not a state dict"));
            };
            Ok(sd
                .iter()
                .filter_map(|(k, v)| match (k, v) {
                    (PickleValue::Str(k), PickleValue::Tensor(t)) => Some((k.clone(), t.clone())),
                    _ => None,
                })
                .collect())
        };
        widths.push((width, [state_dict(0)?, state_dict(1)?]));
    }
    Ok((options, widths))
}

/// The layers of a flattened file (`768.0.linear.0.weight`). A flat file has no place for the
/// options, so ComfyUI's defaults apply.
fn from_flat(sd: &StateDict) -> std::result::Result<(Options, Widths), LoadError> {
    let mut by_width: BTreeMap<usize, [Vec<String>; 2]> = BTreeMap::new();
    for name in sd.shapes().keys() {
        let mut parts = name.splitn(3, '.');
        let (Some(width), Some(index), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(width), Ok(index)) = (width.parse::<usize>(), index.parse::<usize>()) else {
            continue;
        };
        if let Some(names) = by_width.entry(width).or_default().get_mut(index) {
            names.push(name.clone());
        }
    }
    let mut widths = Vec::new();
    for (width, [k, v]) in by_width {
        let read = |names: &[String]| -> std::result::Result<_, LoadError> {
            names
                .iter()
                .map(|n| {
                    let local = n.splitn(3, '.').nth(2).unwrap_or_default();
                    Ok((local.to_string(), sd.get(n)?))
                })
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        widths.push((width, [read(&k)?, read(&v)?]));
    }
    Ok((Options::default(), widths))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::torch_zip;

    #[test]
    fn a_pickle_with_a_foreign_global_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evil.pt");
        std::fs::write(
            &path,
            torch_zip(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR."),
        )
        .unwrap();
        let err = Hypernetwork::open(&path).unwrap_err();
        assert!(matches!(err.kind, LoadErrorKind::UnsafePickle(_)), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("evil.pt") && message.contains("os.system"),
            "{message}"
        );
    }

    #[test]
    fn a_file_without_layers_or_with_an_unknown_activation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pt");
        // {"activation_func": "gelu"}
        std::fs::write(
            &path,
            torch_zip(
                b"\x80\x02}q\x00X\x0f\x00\x00\x00activation_funcq\x01X\x04\x00\x00\x00gelus.",
            ),
        )
        .unwrap();
        let err = Hypernetwork::open(&path).unwrap_err().to_string();
        assert!(err.contains("unsupported activation_func 'gelu'"), "{err}");
        std::fs::write(&path, torch_zip(b"\x80\x02}q\x00.")).unwrap();
        let err = Hypernetwork::open(&path).unwrap_err().to_string();
        assert!(err.contains("no hypernetwork layers"), "{err}");
    }
}
