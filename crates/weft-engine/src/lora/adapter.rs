//! One LoRA module's weights and the maths that patches its target, transcribed from ComfyUI's
//! `comfy/weight_adapter/{lora,loha,lokr,base}.py` and the `diff` patch of `comfy/lora.py`.
//!
//! Everything is computed in f32 (ComfyUI's `intermediate_dtype`); [`crate::lora::apply`]
//! converts the weight to f32 first and back to its dtype at the end.

use candle_core::{DType, Result, Tensor};

/// The adapter families Weft implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    /// LoRA / LoCon (`lora_up`/`lora_down`, diffusers and PEFT spellings, optional `lora_mid`).
    Lora,
    /// LyCORIS LoHa (`hada_w1_a/b`, `hada_w2_a/b`, optional Tucker `hada_t1/t2`).
    LoHa,
    /// LyCORIS LoKr (`lokr_w1` or `lokr_w1_a/b`, `lokr_w2` or `lokr_w2_a/b`, optional `lokr_t2`).
    LoKr,
    /// A full difference (`diff`, `diff_b`, `w_norm`, `b_norm`).
    Diff,
}

/// A Kronecker factor, stored whole or as a low-rank product `a @ b`.
#[derive(Debug, Clone)]
pub(crate) enum Factor {
    Full(Tensor),
    Product { a: Tensor, b: Tensor },
}

#[derive(Debug, Clone)]
pub(crate) enum Weights {
    Lora {
        up: Tensor,
        down: Tensor,
        mid: Option<Tensor>,
    },
    LoHa {
        w1a: Tensor,
        w1b: Tensor,
        w2a: Tensor,
        w2b: Tensor,
        /// Tucker cores (t1, t2).
        tucker: Option<(Tensor, Tensor)>,
    },
    LoKr {
        w1: Factor,
        w2: Factor,
        t2: Option<Tensor>,
    },
    Diff(Tensor),
}

/// One module's adapter: its factor weights, `alpha` and DoRA magnitude, if any.
#[derive(Debug, Clone)]
pub struct Adapter {
    weights: Weights,
    alpha: Option<f64>,
    dora_scale: Option<Tensor>,
}

impl Adapter {
    pub(crate) fn new(weights: Weights, alpha: Option<f64>, dora_scale: Option<Tensor>) -> Self {
        Self {
            weights,
            alpha,
            dora_scale,
        }
    }

    /// Which adapter type the module is (LoRA/LoCon, LoHa, LoKr or a full diff).
    pub fn kind(&self) -> AdapterKind {
        match self.weights {
            Weights::Lora { .. } => AdapterKind::Lora,
            Weights::LoHa { .. } => AdapterKind::LoHa,
            Weights::LoKr { .. } => AdapterKind::LoKr,
            Weights::Diff(_) => AdapterKind::Diff,
        }
    }

    /// The `alpha` stored with the module, if any.
    pub fn alpha(&self) -> Option<f64> {
        self.alpha
    }

    /// Whether the module carries a DoRA magnitude (`dora_scale`).
    pub fn is_dora(&self) -> bool {
        self.dora_scale.is_some()
    }

    /// Checks, from shapes only, that the adapter multiplies out to a weight of `shape`: the same
    /// element count (ComfyUI reshapes the product to the weight's shape, which lets a linear LoRA
    /// patch a 1x1 convolution) and the same number of output rows.
    pub(crate) fn check_fits(&self, shape: &[usize]) -> std::result::Result<(), String> {
        let numel: usize = shape.iter().product();
        if let Weights::Diff(d) = &self.weights {
            return if d.dims() == shape {
                Ok(())
            } else {
                Err(format!("the difference has shape {:?}", d.dims()))
            };
        }
        if shape.len() < 2 {
            return Err("a low-rank adapter cannot patch a one-dimensional weight".into());
        }
        let delta = self.delta_shape()?;
        let delta_numel: usize = delta.iter().product();
        if delta_numel != numel || delta.first() != shape.first() {
            return Err(format!("its factors multiply out to {delta:?}"));
        }
        if let Some(scale) = &self.dora_scale {
            let norm = dora_norm_shape(scale.dims(), shape);
            let combined = broadcast_shape(scale.dims(), &norm);
            if combined
                .as_ref()
                .and_then(|c| broadcast_shape(c, shape))
                .as_deref()
                != Some(shape)
            {
                return Err(format!(
                    "its dora_scale of shape {:?} does not broadcast over the weight",
                    scale.dims()
                ));
            }
        }
        Ok(())
    }

    /// The shape of the product before ComfyUI reshapes it to the weight's shape.
    fn delta_shape(&self) -> std::result::Result<Vec<usize>, String> {
        fn rows_cols(t: &Tensor) -> (usize, usize) {
            let d = t.dims();
            (d[0], d[1..].iter().product())
        }
        match &self.weights {
            Weights::Lora { up, down, mid } => {
                if up.rank() < 2 || down.rank() < 2 {
                    return Err("lora up and down must have at least two dimensions".into());
                }
                let (out, rank_up) = rows_cols(up);
                let (rank, cols) = match mid {
                    None => rows_cols(down),
                    Some(mid) => {
                        let (d, m) = (down.dims(), mid.dims());
                        let down_cols: usize = d[2..].iter().product();
                        if m.len() != 4 || m[1] != d[0] * down_cols || m[0] != d[0] {
                            return Err(format!(
                                "lora_mid of shape {m:?} does not fit lora_down of shape {d:?}"
                            ));
                        }
                        (d[0], d[1] * m[2] * m[3])
                    }
                };
                if rank_up != rank {
                    return Err(format!(
                        "lora up has rank {rank_up} but lora down has rank {rank}"
                    ));
                }
                Ok(vec![out, cols])
            }
            Weights::LoHa {
                w1a,
                w1b,
                w2a,
                w2b,
                tucker,
            } => {
                let two_d = [w1a, w1b, w2a, w2b].iter().all(|t| t.rank() == 2);
                if !two_d {
                    return Err("loha factors must be matrices".into());
                }
                let m1 = match tucker {
                    None => mm_shape(w1a.dims(), w1b.dims())?,
                    Some((t1, _)) => tucker_shape(t1.dims(), w1b.dims(), w1a.dims())?,
                };
                let m2 = match tucker {
                    None => mm_shape(w2a.dims(), w2b.dims())?,
                    Some((_, t2)) => tucker_shape(t2.dims(), w2b.dims(), w2a.dims())?,
                };
                if m1 != m2 {
                    return Err(format!("loha halves differ: {m1:?} and {m2:?}"));
                }
                Ok(m1)
            }
            Weights::LoKr { w1, w2, t2 } => {
                let w1 = match w1 {
                    Factor::Full(t) => t.dims().to_vec(),
                    Factor::Product { a, b } => mm_shape(a.dims(), b.dims())?,
                };
                let w2 = match (w2, t2) {
                    (Factor::Full(t), _) => t.dims().to_vec(),
                    (Factor::Product { a, b }, None) => mm_shape(a.dims(), b.dims())?,
                    (Factor::Product { a, b }, Some(t)) => {
                        tucker_shape(t.dims(), b.dims(), a.dims())?
                    }
                };
                if w1.len() != 2 || (w2.len() != 2 && w2.len() != 4) {
                    return Err(format!(
                        "lokr factors of shapes {w1:?} and {w2:?} are not 2-d (and 4-d) matrices"
                    ));
                }
                let mut out = vec![w1[0] * w2[0], w1[1] * w2[1]];
                out.extend_from_slice(&w2[2..]);
                Ok(out)
            }
            Weights::Diff(d) => Ok(d.dims().to_vec()),
        }
    }

    /// `weight` patched at `strength`; `weight` is f32, and so is the result.
    pub(crate) fn patch(&self, weight: &Tensor, strength: f64) -> Result<Tensor> {
        let device = weight.device();
        let f32 = |t: &Tensor| t.to_device(device)?.to_dtype(DType::F32);
        if let Weights::Diff(d) = &self.weights {
            // ComfyUI's "diff" patch: no alpha, no DoRA.
            return weight + f32(d)?.affine(strength, 0.0)?;
        }
        let (diff, scale) = match &self.weights {
            Weights::Lora { up, down, mid } => {
                let scale = match self.alpha {
                    Some(alpha) => alpha / down.dims()[0] as f64,
                    None => 1.0,
                };
                let mut down = f32(down)?;
                if let Some(mid) = mid {
                    // LoCon's Tucker mid, exactly as ComfyUI contracts it.
                    let mid = f32(mid)?;
                    let (d, m) = (down.dims().to_vec(), mid.dims().to_vec());
                    let final_shape = [d[1], d[0], m[2], m[3]];
                    down = down
                        .transpose(0, 1)?
                        .contiguous()?
                        .flatten_from(1)?
                        .matmul(&mid.transpose(0, 1)?.contiguous()?.flatten_from(1)?)?
                        .reshape(&final_shape[..])?
                        .transpose(0, 1)?
                        .contiguous()?;
                }
                let diff = f32(up)?.flatten_from(1)?.matmul(&down.flatten_from(1)?)?;
                (diff, scale)
            }
            Weights::LoHa {
                w1a,
                w1b,
                w2a,
                w2b,
                tucker,
            } => {
                let scale = match self.alpha {
                    Some(alpha) => alpha / w1b.dims()[0] as f64,
                    None => 1.0,
                };
                let (m1, m2) = match tucker {
                    None => (f32(w1a)?.matmul(&f32(w1b)?)?, f32(w2a)?.matmul(&f32(w2b)?)?),
                    Some((t1, t2)) => (
                        tucker_product(&f32(t1)?, &f32(w1b)?, &f32(w1a)?)?,
                        tucker_product(&f32(t2)?, &f32(w2b)?, &f32(w2a)?)?,
                    ),
                };
                ((m1 * m2)?, scale)
            }
            Weights::LoKr { w1, w2, t2 } => {
                // `dim` is the rank of the last factorised half, as in ComfyUI.
                let mut dim = None;
                let w1 = match w1 {
                    Factor::Full(t) => f32(t)?,
                    Factor::Product { a, b } => {
                        dim = Some(b.dims()[0]);
                        f32(a)?.matmul(&f32(b)?)?
                    }
                };
                let w2 = match w2 {
                    Factor::Full(t) => f32(t)?,
                    Factor::Product { a, b } => {
                        dim = Some(b.dims()[0]);
                        match t2 {
                            None => f32(a)?.matmul(&f32(b)?)?,
                            Some(t) => tucker_product(&f32(t)?, &f32(b)?, &f32(a)?)?,
                        }
                    }
                };
                let scale = match (self.alpha, dim) {
                    (Some(alpha), Some(dim)) => alpha / dim as f64,
                    _ => 1.0,
                };
                (kron(&w1, &w2)?, scale)
            }
            Weights::Diff(_) => unreachable!("handled above"),
        };
        let diff = diff.reshape(weight.shape())?;
        match &self.dora_scale {
            None => weight + diff.affine(strength * scale, 0.0)?,
            Some(dora_scale) => weight_decompose(&f32(dora_scale)?, weight, &diff, scale, strength),
        }
    }
}

/// DoRA, as ComfyUI's `weight_decompose`: the patched weight's direction rescaled to the stored
/// magnitude, then blended with the original weight by `strength`.
///
/// When `dora_scale` runs along the output axis (its first dimension is the weight's), ComfyUI
/// takes the norm of the *original* weight per output row; otherwise the norm of the patched
/// weight per input column. Both add f32 epsilon to the norm.
fn weight_decompose(
    dora_scale: &Tensor,
    weight: &Tensor,
    diff: &Tensor,
    alpha: f64,
    strength: f64,
) -> Result<Tensor> {
    let patched = (weight + diff.affine(alpha, 0.0)?)?;
    let dims = weight.dims().to_vec();
    let ones = vec![1usize; dims.len().saturating_sub(1)];
    let norm = if dora_scale.dims().first() == dims.first() {
        let mut shape = vec![dims[0]];
        shape.extend_from_slice(&ones);
        weight
            .reshape((dims[0], ()))?
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .reshape(shape)?
    } else {
        let mut shape = vec![dims[1]];
        shape.extend_from_slice(&ones);
        patched
            .transpose(0, 1)?
            .contiguous()?
            .reshape((dims[1], ()))?
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .reshape(shape)?
            .transpose(0, 1)?
    };
    let norm = norm.affine(1.0, f64::from(f32::EPSILON))?;
    let patched = patched.broadcast_mul(&dora_scale.broadcast_div(&norm)?)?;
    if patched.dims() != dims.as_slice() {
        candle_core::bail!(
            "dora_scale of shape {:?} does not broadcast over a weight of shape {dims:?}",
            dora_scale.dims()
        );
    }
    if strength == 1.0 {
        Ok(patched)
    } else {
        weight + (patched - weight)?.affine(strength, 0.0)?
    }
}

/// `einsum("i j k l, j r, i p -> p r k l", t, wb, wa)`: a Tucker core `t` [i, j, k, l] with its
/// two projections `wb` [j, r] and `wa` [i, p], giving [p, r, k, l].
fn tucker_product(t: &Tensor, wb: &Tensor, wa: &Tensor) -> Result<Tensor> {
    let (i, j, k, l) = t.dims4()?;
    let (_, r) = wb.dims2()?;
    let (_, p) = wa.dims2()?;
    // [i, k, l, j] @ [j, r] -> [i, k*l*r]
    let t = t
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((i * k * l, j))?
        .matmul(wb)?
        .reshape((i, k * l * r))?;
    // [k*l*r, i] @ [i, p] -> [k, l, r, p] -> [p, r, k, l]
    t.t()?
        .contiguous()?
        .matmul(wa)?
        .reshape((k, l, r, p))?
        .permute((3, 2, 0, 1))?
        .contiguous()
}

/// `torch.kron` of a matrix `w1` [a, b] with `w2` [c, d] or [c, d, kh, kw] (w1 then acts as
/// [a, b, 1, 1]): [a*c, b*d, ...].
fn kron(w1: &Tensor, w2: &Tensor) -> Result<Tensor> {
    let (a, b) = w1.dims2()?;
    let w2_dims = w2.dims().to_vec();
    if w2_dims.len() < 2 {
        candle_core::bail!("lokr w2 of shape {w2_dims:?} is not a matrix");
    }
    let (c, d) = (w2_dims[0], w2_dims[1]);
    let rest: usize = w2_dims[2..].iter().product();
    let prod = w1
        .reshape((a, 1, b, 1, 1))?
        .broadcast_mul(&w2.reshape((1, c, 1, d, rest))?)?;
    let mut shape = vec![a * c, b * d];
    shape.extend_from_slice(&w2_dims[2..]);
    prod.reshape(shape)
}

fn mm_shape(a: &[usize], b: &[usize]) -> std::result::Result<Vec<usize>, String> {
    match (a, b) {
        ([m, k1], [k2, n]) if k1 == k2 => Ok(vec![*m, *n]),
        _ => Err(format!("factors of shapes {a:?} and {b:?} do not multiply")),
    }
}

fn tucker_shape(
    t: &[usize],
    wb: &[usize],
    wa: &[usize],
) -> std::result::Result<Vec<usize>, String> {
    match (t, wb, wa) {
        ([i, j, k, l], [j2, r], [i2, p]) if i == i2 && j == j2 => Ok(vec![*p, *r, *k, *l]),
        _ => Err(format!(
            "tucker core {t:?} does not fit factors {wb:?} and {wa:?}"
        )),
    }
}

/// The shape of the norm `weight_decompose` divides by.
fn dora_norm_shape(scale: &[usize], weight: &[usize]) -> Vec<usize> {
    let mut shape = vec![1; weight.len()];
    if scale.first() == weight.first() {
        shape[0] = weight[0];
    } else if weight.len() > 1 {
        shape[1] = weight[1];
    }
    shape
}

/// numpy/torch broadcasting of two shapes.
fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; n - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (a, b) = (pad(a), pad(b));
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| match (x, y) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn kron_matches_the_definition() {
        let w1 = t(&[1., 2., 3., 4.], &[2, 2]);
        let w2 = t(&[0., 1., 1., 0.], &[2, 2]);
        let k = kron(&w1, &w2).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            k,
            vec![
                vec![0., 1., 0., 2.],
                vec![1., 0., 2., 0.],
                vec![0., 3., 0., 4.],
                vec![3., 0., 4., 0.]
            ]
        );
    }

    #[test]
    fn tucker_matches_a_direct_sum() {
        let core = Tensor::arange(0f32, 2. * 3. * 2. * 1., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2, 1))
            .unwrap();
        let wb = t(&[1., 0., 2., 1., 0., 1.], &[3, 2]);
        let wa = t(&[1., 2., 3., 0., 1., 1.], &[2, 3]);
        let got = tucker_product(&core, &wb, &wa).unwrap();
        assert_eq!(got.dims(), &[3, 2, 2, 1]);
        let (b, a) = (wb.to_vec2::<f32>().unwrap(), wa.to_vec2::<f32>().unwrap());
        let cv = core.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gv = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for p in 0..3 {
            for r in 0..2 {
                for k in 0..2 {
                    let mut sum = 0.0;
                    for i in 0..2 {
                        for j in 0..3 {
                            sum += cv[((i * 3 + j) * 2) + k] * b[j][r] * a[i][p];
                        }
                    }
                    assert_eq!(gv[(p * 2 + r) * 2 + k], sum);
                }
            }
        }
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shape(&[1, 4], &[3, 1]), Some(vec![3, 4]));
        assert_eq!(broadcast_shape(&[4], &[3, 1]), Some(vec![3, 4]));
        assert_eq!(broadcast_shape(&[2, 4], &[3, 1]), None);
    }
}
