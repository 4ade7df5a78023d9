//! 2-D convolution for the UNet, the VAE and ControlNet.
//!
//! Why our own: candle 0.11's CPU conv2d builds each 512-pixel im2col tile with one strided write
//! per element, after a single-threaded NCHW -> NHWC copy of the whole input. At the SD shapes it
//! ran at a third to a quarter of the speed of the matmul it feeds (`benches/ops.rs`). Here, on the
//! CPU in f32 with one group, the im2col matrix is built in `[C_in*kh*kw, pixels]` order from whole
//! input rows, for at most `COL_BUDGET` floats at a time (a chunk of images, or of output rows
//! when one image is larger: a 512x512x128 input would otherwise need a 1.2 GB buffer), and the
//! weight seen as `[C_out, C_in*kh*kw]` multiplies it, so the product is already NCHW and is
//! written, bias added, straight into its place in the output. A 1x1 stride-1 unpadded
//! convolution is that matmul on the input itself. A depthwise convolution (one kernel per
//! channel, PiDiNet's) is a direct loop per channel plane. Other devices, dtypes and grouped
//! convolutions use candle's conv2d. With bf16 weights on a CPU with AVX512_BF16 the matmul is
//! [`crate::ops::gemm_bf16`]'s, on the weight packed once per layer (bf16 products, f32 sums),
//! and the im2col columns are packed for it straight from the input, a task's group of panels
//! (up to 256 output pixels) at a time (`Im2ColPanels`): no f32 im2col matrix, no separate
//! packing pass, and the product is written once, bias added, into the output (a 512x512 VAE
//! decode in bf16 went from 9.8-10.9 s to 5.9-6.5 s, interleaved).

use std::ops::Range;

use candle_core::{
    CpuStorage, CustomOp1, DType, Device, InplaceOp3, Layout, Module, Result, Shape, Storage,
    Tensor,
};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::ops::gemm_bf16::{self, Packed, PackedWeight, PANEL};
use crate::ops::winograd::{self, Plan, Precision, WinogradWeight};
use crate::ops::{buffer, cast};

/// Most floats one im2col chunk may hold (8 MiB). In `benches/ops.rs` this beat 4, 6 and 8 Mi
/// floats at the VAE's 256- and 128-channel shapes (by 15-25%) and tied at the UNet's; 16 Mi and
/// more were far slower (each chunk then goes to a fresh mmap, zeroed by the kernel).
const COL_BUDGET: usize = 2 << 20;

/// A 2-D convolution layer with the same weights and names as `candle_nn::Conv2d`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
    /// The weight as `[C_out, C_in*kh*kw]` for the bf16 kernel, packed on first use.
    packed: PackedWeight,
    /// The weight transformed for [`winograd::conv`], on first use by a large image.
    winograd: PackedWeight<WinogradWeight>,
}

impl Conv2d {
    /// `weight`: `[C_out, C_in / groups, kh, kw]`; `bias`: `[C_out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Self {
        Self {
            weight,
            bias,
            config,
            packed: PackedWeight::default(),
            winograd: PackedWeight::default(),
        }
    }

    /// The kernel, `[C_out, C_in / groups, kh, kw]`, in its stored dtype.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[C_out]`; `None` when the layer has none.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Padding, stride, dilation and groups.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }
}

impl Conv2d {
    /// The convolution of `xs` upsampled 2x by nearest neighbour ([B, C, 2H, 2W]), as the UNet's
    /// and VAE's upsamplers do. On the CPU the im2col reads the small input directly, so the
    /// upsampled tensor (268 MB before the VAE's last level) is never built.
    pub fn forward_upsampled_2x(&self, xs: &Tensor) -> Result<Tensor> {
        if uses_cpu_kernel(xs, &self.config) {
            return self.cpu_forward(xs, 2);
        }
        let (_, _, h, w) = xs.dims4()?;
        self.forward(&xs.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

impl Conv2d {
    /// Our CPU kernel on `xs` upsampled by `upsample`: the bf16 matmul on the packed weight
    /// when it applies, the f32 one on the widened weight otherwise.
    fn cpu_forward(&self, xs: &Tensor, upsample: usize) -> Result<Tensor> {
        let bias = cast::operand_opt(self.bias.as_ref(), xs)?;
        let bf16 = gemm_bf16::applies(xs, &self.weight);
        let precision = if bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        };
        if let Some(out) = self.winograd_forward(xs, bias.as_ref(), upsample, precision)? {
            return Ok(out);
        }
        if bf16 {
            let packed = self
                .packed
                .get_or_pack(|| gemm_bf16::pack_lhs(&self.weight.flatten_from(1)?))?;
            let kernel = Kernel::Bf16(packed);
            return cpu_conv2d(
                xs,
                &self.weight,
                kernel,
                bias.as_ref(),
                &self.config,
                upsample,
            );
        }
        let weight = cast::operand(&self.weight, xs)?;
        cpu_conv2d(
            xs,
            &weight,
            Kernel::F32,
            bias.as_ref(),
            &self.config,
            upsample,
        )
    }

    /// [`winograd::conv`] where it [`winograd::applies`] (3x3, stride 1, a large output), else
    /// `None`.
    fn winograd_forward(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        upsample: usize,
        precision: Precision,
    ) -> Result<Option<Tensor>> {
        let (images, channels, h, w) = xs.dims4()?;
        let (_, _, kh, kw) = self.weight.dims4()?;
        let c = &self.config;
        let (height, width) = (h * upsample, w * upsample);
        let pixels = (height + 2 * c.padding).saturating_sub(kh - 1)
            * (width + 2 * c.padding).saturating_sub(kw - 1);
        let plan = winograd::plan(precision, (kh, kw), c.stride, c.dilation, pixels, images);
        let per_call;
        let weight = match plan {
            _ if c.groups != 1 => return Ok(None),
            None => return Ok(None),
            Some(Plan::Kept) => self
                .winograd
                .get_or_pack(|| winograd::pack_weight(&self.weight, precision))?,
            Some(Plan::PerCall) => {
                per_call = winograd::pack_weight(&self.weight, precision)?;
                &per_call
            }
        };
        if weight.precision() != precision {
            // Packed for the other kernel (the bf16 switch changed since): the direct form.
            return Ok(None);
        }
        let xs = xs.contiguous()?;
        let (storage, layout) = xs.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("the bf16 convolution runs on the CPU only");
        };
        let input = winograd::Input {
            data: buffer::contiguous_f32(cpu, layout, "conv")?,
            images,
            channels,
            height,
            width,
            padding: c.padding,
            upsample,
        };
        let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
        winograd::conv(weight, &input, bias.as_deref()).map(Some)
    }

    /// The weight and bias on `xs`'s device in its dtype (the same tensors when they are).
    fn weights_for(&self, xs: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        Ok((
            cast::operand(&self.weight, xs)?,
            cast::operand_opt(self.bias.as_ref(), xs)?,
        ))
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if uses_cpu_kernel(xs, &self.config) {
            return self.cpu_forward(xs, 1);
        }
        let (weight, bias) = self.weights_for(xs)?;
        conv2d_forward(xs, &weight, bias.as_ref(), &self.config)
    }
}

/// A square-kernel convolution with bias, read from `vb` like `candle_nn::conv2d` (`weight`,
/// `bias`).
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let layer = candle_nn::conv2d(in_channels, out_channels, kernel_size, config, vb)?;
    Ok(Conv2d::new(
        layer.weight().clone(),
        layer.bias().cloned(),
        config,
    ))
}

/// `xs`: `[B, C_in, H, W]`; `weight`: `[C_out, C_in / groups, kh, kw]`; `bias`: `[C_out]`, both in
/// the dtype of `xs`. Returns [B, C_out, H_out, W_out], the same as candle's `conv2d` plus the
/// bias.
pub fn conv2d_forward(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    config: &Conv2dConfig,
) -> Result<Tensor> {
    if uses_cpu_kernel(xs, config) && weight.dtype() == DType::F32 {
        return cpu_conv2d(xs, weight, Kernel::F32, bias, config, 1);
    }
    if is_depthwise(xs, weight, config)? {
        return cpu_depthwise(xs, weight, bias, config);
    }
    let out = xs.conv2d_with_algo(
        weight,
        config.padding,
        config.stride,
        config.dilation,
        config.groups,
        config.cudnn_fwd_algo,
    )?;
    match bias {
        None => Ok(out),
        Some(bias) => out.broadcast_add(&bias.reshape((1, bias.dims1()?, 1, 1))?),
    }
}

/// Whether our kernel runs `xs` (the weights are widened to its dtype first).
fn uses_cpu_kernel(xs: &Tensor, config: &Conv2dConfig) -> bool {
    matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32 && config.groups == 1
}

/// A depthwise convolution on the CPU in f32: one kernel per channel (`groups == C_in == C_out`).
fn is_depthwise(xs: &Tensor, weight: &Tensor, config: &Conv2dConfig) -> Result<bool> {
    if !matches!(xs.device(), Device::Cpu)
        || xs.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || config.groups < 2
    {
        return Ok(false);
    }
    let (_, c_in, _, _) = xs.dims4()?;
    let (c_out, per_group, _, _) = weight.dims4()?;
    Ok(per_group == 1 && c_in == config.groups && c_out == config.groups)
}

/// candle runs a grouped convolution as one convolution per group, which made PiDiNet's
/// depthwise layers (60 to 240 channels at 512x512) the bulk of its time; here each output
/// plane is accumulated tap by tap from its own input plane, the planes in parallel.
fn cpu_depthwise(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    config: &Conv2dConfig,
) -> Result<Tensor> {
    let (_, channels, height, width) = xs.dims4()?;
    let (_, _, kernel_h, kernel_w) = weight.dims4()?;
    let kernels = weight.flatten_all()?.to_vec1::<f32>()?;
    let bias = match bias {
        Some(b) => b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        None => vec![0.0; channels],
    };
    if bias.len() != channels {
        candle_core::bail!(
            "conv2d bias has {} values for {channels} output channels",
            bias.len()
        );
    }
    let geometry = Geometry {
        channels,
        height,
        width,
        kernel_h,
        kernel_w,
        stride: config.stride,
        padding: config.padding,
        dilation: config.dilation,
        upsample: 1,
    };
    geometry.out_size()?;
    xs.contiguous()?.apply_op1_no_bwd(&Depthwise {
        geometry,
        kernels,
        bias,
    })
}

/// [`cpu_depthwise`]'s kernel: `kernels` `[C, kh * kw]`, `bias` `[C]`.
struct Depthwise {
    geometry: Geometry,
    kernels: Vec<f32>,
    bias: Vec<f32>,
}

impl CustomOp1 for Depthwise {
    fn name(&self) -> &'static str {
        "weft-depthwise-conv"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let data = buffer::contiguous_f32(storage, layout, "conv")?;
        let (batch, _, _, _) = layout.shape().dims4()?;
        let (out_h, out_w) = g.out_size()?;
        let (plane, taps) = (g.height * g.width, g.kernel_h * g.kernel_w);
        let (stride, padding) = (g.stride, g.padding as isize);
        let mut out = buffer::zeros(batch * g.channels * out_h * out_w);
        if out_h * out_w > 0 {
            out.par_chunks_mut(out_h * out_w)
                .enumerate()
                .for_each(|(index, dst)| {
                    let channel = index % g.channels;
                    let src = &data[index * plane..(index + 1) * plane];
                    let kernel = &self.kernels[channel * taps..(channel + 1) * taps];
                    dst.fill(self.bias[channel]);
                    for i in 0..g.kernel_h {
                        for j in 0..g.kernel_w {
                            let k = kernel[i * g.kernel_w + j];
                            let x_shift = (j * g.dilation) as isize - padding;
                            let (x_lo, x_hi) = valid_columns(out_w, stride, x_shift, g.width);
                            for y in 0..out_h {
                                let in_y = (y * stride + i * g.dilation) as isize - padding;
                                if in_y < 0 || in_y >= g.height as isize || x_lo >= x_hi {
                                    continue;
                                }
                                let src_row = &src[in_y as usize * g.width..][..g.width];
                                let out_row = &mut dst[y * out_w..][..out_w];
                                if stride == 1 {
                                    let from = (x_lo as isize + x_shift) as usize;
                                    let span = x_hi - x_lo;
                                    for (o, &v) in out_row[x_lo..x_hi]
                                        .iter_mut()
                                        .zip(&src_row[from..from + span])
                                    {
                                        *o += k * v;
                                    }
                                } else {
                                    for (x, o) in
                                        out_row.iter_mut().enumerate().take(x_hi).skip(x_lo)
                                    {
                                        let in_x = (x * stride) as isize + x_shift;
                                        *o += k * src_row[in_x as usize];
                                    }
                                }
                            }
                        }
                    }
                });
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, g.channels, out_h, out_w)),
        ))
    }
}

/// Sizes of one convolution, in the input's terms.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    channels: usize,
    height: usize,
    width: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    /// Nearest-neighbour factor from the stored input to `height` x `width` (1: none; a power
    /// of two, so that the source index is a shift).
    upsample: usize,
}

impl Geometry {
    fn out_len(&self, len: usize, kernel: usize) -> Result<usize> {
        let span = self.dilation * (kernel - 1) + 1;
        let padded = len + 2 * self.padding;
        if kernel == 0 || self.stride == 0 || padded < span {
            candle_core::bail!(
                "conv2d kernel of {kernel} (dilation {}) does not fit an input of {len} padded by {}",
                self.dilation,
                self.padding
            );
        }
        Ok((padded - span) / self.stride + 1)
    }

    fn out_size(&self) -> Result<(usize, usize)> {
        Ok((
            self.out_len(self.height, self.kernel_h)?,
            self.out_len(self.width, self.kernel_w)?,
        ))
    }

    /// Rows of the im2col matrix: C_in * kh * kw.
    fn patch_len(&self) -> usize {
        self.channels * self.kernel_h * self.kernel_w
    }
}

/// How [`cpu_conv2d`] multiplies: by the (f32) weight tensor with candle, or by the packed weight
/// with the bf16 kernel.
#[derive(Clone, Copy)]
enum Kernel<'a> {
    F32,
    Bf16(&'a Packed),
}

/// `weight`: `[C_out, C_in, kh, kw]`, f32 unless `kernel` is the packed weight (its dtype then
/// does not matter); `bias`: f32.
fn cpu_conv2d(
    xs: &Tensor,
    weight: &Tensor,
    kernel: Kernel,
    bias: Option<&Tensor>,
    config: &Conv2dConfig,
    upsample: usize,
) -> Result<Tensor> {
    let (batch, channels, source_h, source_w) = xs.dims4()?;
    let (height, width) = (source_h * upsample, source_w * upsample);
    let (c_out, w_channels, kernel_h, kernel_w) = weight.dims4()?;
    if w_channels != channels {
        candle_core::bail!("conv2d input has {channels} channels, the kernel expects {w_channels}");
    }
    let geometry = Geometry {
        channels,
        height,
        width,
        kernel_h,
        kernel_w,
        stride: config.stride,
        padding: config.padding,
        dilation: config.dilation,
        upsample,
    };
    let (out_h, out_w) = geometry.out_size()?;
    let k = geometry.patch_len();
    let weight = match kernel {
        Kernel::F32 => Some(weight.contiguous()?.reshape((c_out, k))?),
        Kernel::Bf16(_) => None,
    };
    let xs = xs.contiguous()?;
    if let Some(bias) = bias {
        if bias.dims1()? != c_out {
            candle_core::bail!(
                "conv2d bias has {} values for {c_out} output channels",
                bias.elem_count()
            );
        }
    }
    if let Kernel::Bf16(packed) = kernel {
        // The im2col columns go from the image to the kernel a group of panels at a time.
        let (storage, layout) = xs.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("the bf16 convolution runs on the CPU only");
        };
        let panels = Im2ColPanels {
            data: buffer::contiguous_f32(cpu, layout, "conv")?,
            geometry,
            images: batch,
            out_w,
            pixels: out_h * out_w,
        };
        let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
        return gemm_bf16::matmul_packed_lhs_panels(packed, &panels, bias.as_deref())?
            .reshape((batch, c_out, out_h, out_w));
    }
    let times = |rhs: &Tensor| match &weight {
        Some(weight) => weight.matmul(rhs),
        None => candle_core::bail!("conv2d weight missing"),
    };
    let bias = match bias {
        Some(bias) => bias.contiguous()?,
        None => Tensor::zeros(c_out, DType::F32, xs.device())?,
    };
    // Every matmul result is written (plus the bias) straight into its place in `out`, so there
    // is no concatenation and no separate pass for the bias.
    let out = Tensor::from_vec(
        buffer::zeros::<f32>(batch * c_out * out_h * out_w),
        (batch, c_out, out_h, out_w),
        xs.device(),
    )?;
    let place = |product: &Tensor, images: Range<usize>, rows: Range<usize>| {
        out.inplace_op3(
            product,
            &bias,
            &PlaceProduct {
                images,
                rows,
                out_w,
            },
        )
    };

    let per_image = k * out_h * out_w;
    let pointwise = kernel_h == 1
        && kernel_w == 1
        && config.stride == 1
        && config.padding == 0
        && upsample == 1;
    // A 1x1 convolution is a matmul on the input itself, image by image, unless the images are
    // small enough that copying them side by side into one matmul pays (below).
    if pointwise && (batch == 1 || per_image > COL_BUDGET / 4) {
        let pixels = xs.reshape((batch, channels, height * width))?;
        for image in 0..batch {
            place(&times(&pixels.get(image)?)?, image..image + 1, 0..out_h)?;
        }
        return Ok(out);
    }

    if per_image <= COL_BUDGET {
        // Whole images, side by side in the columns of one matmul: small late-level images then
        // give one [C_out, K] x [K, images*pixels] product instead of several thin ones.
        let images_per_chunk = (COL_BUDGET / per_image.max(1)).clamp(1, batch.max(1));
        for first in (0..batch).step_by(images_per_chunk) {
            let images = first..(first + images_per_chunk).min(batch);
            let col = xs.apply_op1_no_bwd(&Im2Col {
                geometry,
                images: images.clone(),
                rows: 0..out_h,
            })?;
            place(&times(&col)?, images, 0..out_h)?;
        }
        return Ok(out);
    }

    // One image at a time, in chunks of output rows.
    let rows_per_chunk = (COL_BUDGET / (k * out_w).max(1)).clamp(1, out_h);
    for image in 0..batch {
        for first in (0..out_h).step_by(rows_per_chunk) {
            let rows = first..(first + rows_per_chunk).min(out_h);
            let col = xs.apply_op1_no_bwd(&Im2Col {
                geometry,
                images: image..image + 1,
                rows: rows.clone(),
            })?;
            place(&times(&col)?, image..image + 1, rows)?;
        }
    }
    Ok(out)
}

/// Writes a matmul product [C_out, images*rows*W_out] (images side by side, as [`Im2Col`] lays
/// them out) plus the bias into rows `rows` of `images` of the [B, C_out, H_out, W_out] output.
struct PlaceProduct {
    images: Range<usize>,
    rows: Range<usize>,
    out_w: usize,
}

impl InplaceOp3 for PlaceProduct {
    fn name(&self) -> &'static str {
        "weft-conv-place"
    }

    fn cpu_fwd(
        &self,
        out: &mut CpuStorage,
        out_layout: &Layout,
        product: &CpuStorage,
        product_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<()> {
        let product = buffer::contiguous_f32(product, product_layout, "conv")?;
        let bias = buffer::contiguous_f32(bias, bias_layout, "conv")?;
        let (start, end) = out_layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("conv output must be contiguous".into()))?;
        let CpuStorage::F32(out) = out else {
            candle_core::bail!("conv output must be f32");
        };
        let (_, c_out, out_h, _) = out_layout.shape().dims4()?;
        let pixels = self.rows.len() * self.out_w;
        let row_len = self.images.len() * pixels;
        let first = self.rows.start * self.out_w;
        out[start..end]
            .par_chunks_mut(out_h * self.out_w)
            .enumerate()
            .for_each(|(plane, dst)| {
                let (image, channel) = (plane / c_out, plane % c_out);
                if !self.images.contains(&image) {
                    return;
                }
                let offset = channel * row_len + (image - self.images.start) * pixels;
                let src = &product[offset..offset + pixels];
                let b = bias[channel];
                for (d, &s) in dst[first..first + pixels].iter_mut().zip(src) {
                    *d = s + b;
                }
            });
        Ok(())
    }
}

/// The im2col matrix of `images` for the output rows `rows`: [C_in*kh*kw, images*rows*W_out],
/// row `(c, i, j)` holding input channel `c` shifted by kernel tap `(i, j)` for each image in
/// turn, zero outside the input.
struct Im2Col {
    geometry: Geometry,
    images: Range<usize>,
    rows: Range<usize>,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "weft-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let data = buffer::contiguous_f32(storage, layout, "conv")?;
        let (_, out_w) = g.out_size()?;
        let plane = (g.height / g.upsample) * (g.width / g.upsample);
        let taps = g.kernel_h * g.kernel_w;
        let pixels = self.rows.len() * out_w;
        let images = self.images.len();
        let row_len = images * pixels;
        let mut col = buffer::zeros(g.patch_len() * row_len);
        if row_len > 0 {
            col.par_chunks_mut(taps * row_len)
                .enumerate()
                .for_each(|(channel, dst)| {
                    for (i, image) in self.images.clone().enumerate() {
                        let offset = (image * g.channels + channel) * plane;
                        let src = &data[offset..offset + plane];
                        let place = Placement {
                            offset: i * pixels,
                            row_len,
                        };
                        fill_channel(g, src, &self.rows, out_w, place, dst);
                    }
                });
        }
        Ok((CpuStorage::F32(col), Shape::from((g.patch_len(), row_len))))
    }
}

/// The im2col matrix of each image (`[C_in*kh*kw, H_out*W_out]`, as [`Im2Col`] builds it) for
/// the bf16 kernel, packed a group of panels of output pixels at a time straight from the input.
struct Im2ColPanels<'a> {
    /// The input, `[images, C_in, H, W]` (before any upsampling), contiguous.
    data: &'a [f32],
    geometry: Geometry,
    images: usize,
    out_w: usize,
    pixels: usize,
}

impl Im2ColPanels<'_> {
    /// Row `kk` (input channel, kernel tap) of image `image`'s im2col matrix at the output
    /// pixels `first..first + out.len()`, into `out` (0 past the last pixel): one stretch of an
    /// input row per output row it spans, so the index arithmetic is paid per stretch, not per
    /// pixel.
    fn row(&self, image: usize, kk: usize, first: usize, out: &mut [f32]) {
        let g = &self.geometry;
        let taps = g.kernel_h * g.kernel_w;
        let (channel, tap) = (kk / taps, kk % taps);
        let (i, j) = (tap / g.kernel_w, tap % g.kernel_w);
        let (shift, source_w) = (g.upsample.trailing_zeros(), g.width / g.upsample);
        let plane = (g.height / g.upsample) * source_w;
        let offset = (image * g.channels + channel) * plane;
        let src = &self.data[offset..offset + plane];
        let x_shift = (j * g.dilation) as isize - g.padding as isize;
        let end = (first + out.len()).min(self.pixels);
        out[end.saturating_sub(first)..].fill(0.0);
        let mut q = first;
        while q < end {
            let (y, x0) = (q / self.out_w, q % self.out_w);
            let x1 = self.out_w.min(x0 + end - q);
            let seg = &mut out[q - first..q - first + (x1 - x0)];
            q += x1 - x0;
            let in_y = (y * g.stride + i * g.dilation) as isize - g.padding as isize;
            if in_y < 0 || in_y >= g.height as isize {
                seg.fill(0.0);
                continue;
            }
            let src_row = &src[(in_y as usize >> shift) * source_w..][..source_w];
            let (lo, hi) = valid_columns(x1, g.stride, x_shift, g.width);
            let (lo, hi) = (lo.max(x0), hi.max(x0));
            if lo >= hi {
                seg.fill(0.0);
                continue;
            }
            seg[..lo - x0].fill(0.0);
            seg[hi - x0..].fill(0.0);
            let dst = &mut seg[lo - x0..hi - x0];
            if g.stride == 1 && shift == 0 {
                let from = (lo as isize + x_shift) as usize;
                dst.copy_from_slice(&src_row[from..from + dst.len()]);
            } else {
                for (x, d) in (lo..hi).zip(dst) {
                    let in_x = (x as isize * g.stride as isize + x_shift) as usize;
                    *d = src_row[in_x >> shift];
                }
            }
        }
    }
}

impl gemm_bf16::RhsPanels for Im2ColPanels<'_> {
    fn depth(&self) -> usize {
        self.geometry.patch_len()
    }

    fn columns(&self) -> usize {
        self.pixels
    }

    fn images(&self) -> usize {
        self.images
    }

    fn pack(&self, image: usize, first: usize, panels: usize, dst: &mut [u32]) {
        const MOST: usize = gemm_bf16::MAX_PANELS * PANEL;
        let (depth, columns) = (self.depth(), panels * PANEL);
        assert!(columns <= MOST, "at most MAX_PANELS panels");
        let pairs = dst.len() / columns.max(1);
        let (mut lo, mut hi) = ([0f32; MOST], [0f32; MOST]);
        for p in 0..pairs {
            let (k0, k1) = (2 * p, 2 * p + 1);
            if k0 < depth {
                self.row(image, k0, first, &mut lo[..columns]);
            }
            if k1 < depth {
                self.row(image, k1, first, &mut hi[..columns]);
            }
            for j in 0..panels {
                let words = &mut dst[(j * pairs + p) * PANEL..][..PANEL];
                if k0 >= depth {
                    words.fill(0);
                    continue;
                }
                let run = j * PANEL..(j + 1) * PANEL;
                let Ok(lo) = <&[f32; PANEL]>::try_from(&lo[run.clone()]) else {
                    unreachable!("a panel is PANEL columns")
                };
                let hi = (k1 < depth)
                    .then(|| <&[f32; PANEL]>::try_from(&hi[run]).ok())
                    .flatten();
                gemm_bf16::pack_pair(lo, hi, words);
            }
        }
    }
}

/// Where one image's pixels go in the im2col rows.
#[derive(Debug, Clone, Copy)]
struct Placement {
    offset: usize,
    row_len: usize,
}

/// Writes the kh*kw shifted copies of one input channel `src` ([H, W]) into `dst`
/// ([kh*kw, row_len], zero on entry), at `place.offset` in each row.
fn fill_channel(
    g: &Geometry,
    src: &[f32],
    rows: &Range<usize>,
    out_w: usize,
    place: Placement,
    dst: &mut [f32],
) {
    let pixels = rows.len() * out_w;
    let (stride, padding, dilation) = (g.stride, g.padding as isize, g.dilation);
    let (shift, source_w) = (g.upsample.trailing_zeros(), g.width / g.upsample);
    for i in 0..g.kernel_h {
        for j in 0..g.kernel_w {
            let row = (i * g.kernel_w + j) * place.row_len + place.offset;
            let tap = &mut dst[row..row + pixels];
            // Input column of output column x: x * stride + x_shift.
            let x_shift = (j * dilation) as isize - padding;
            let (x_lo, x_hi) = valid_columns(out_w, stride, x_shift, g.width);
            if x_lo >= x_hi {
                continue;
            }
            for (r, y) in rows.clone().enumerate() {
                let in_y = (y * stride + i * dilation) as isize - padding;
                if in_y < 0 || in_y >= g.height as isize {
                    continue;
                }
                let src_row = &src[(in_y as usize >> shift) * source_w..][..source_w];
                let out_row = &mut tap[r * out_w..][..out_w];
                if stride == 1 && shift == 0 {
                    let from = (x_lo as isize + x_shift) as usize;
                    out_row[x_lo..x_hi].copy_from_slice(&src_row[from..from + (x_hi - x_lo)]);
                } else {
                    for (x, out) in out_row[x_lo..x_hi].iter_mut().enumerate() {
                        let in_x = ((x_lo + x) * stride) as isize + x_shift;
                        *out = src_row[in_x as usize >> shift];
                    }
                }
            }
        }
    }
}

/// The output columns `x_lo..x_hi` whose input column `x * stride + shift` lies in `0..width`.
fn valid_columns(out_w: usize, stride: usize, shift: isize, width: usize) -> (usize, usize) {
    let stride_i = stride as isize;
    // Smallest x with x * stride + shift >= 0.
    let lo = if shift >= 0 {
        0
    } else {
        ((-shift + stride_i - 1) / stride_i) as usize
    };
    // Smallest x with x * stride + shift >= width.
    let end = width as isize - shift;
    let hi = if end <= 0 {
        0
    } else {
        ((end + stride_i - 1) / stride_i) as usize
    };
    (lo.min(out_w), hi.min(out_w))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module, Tensor};
    use candle_nn::Conv2dConfig;

    use crate::ops::conv::{conv2d_forward, Conv2d};

    /// Compares [`conv2d_forward`] with candle's conv2d (plus bias) on random inputs.
    fn check(
        (batch, c_in, height, width): (usize, usize, usize, usize),
        (c_out, kernel_h, kernel_w): (usize, usize, usize),
        config: Conv2dConfig,
    ) {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1.0, (batch, c_in, height, width), &dev).unwrap();
        let weight = Tensor::randn(
            0f32,
            1.0,
            (c_out, c_in / config.groups, kernel_h, kernel_w),
            &dev,
        )
        .unwrap();
        let bias = Tensor::randn(0f32, 1.0, c_out, &dev).unwrap();
        let expected = candle_nn::Conv2d::new(weight.clone(), Some(bias.clone()), config)
            .forward(&xs)
            .unwrap();
        let got = conv2d_forward(&xs, &weight, Some(&bias), &config).unwrap();
        assert_eq!(got.dims(), expected.dims());
        let diff = crate::ops::max_abs_diff(&got, &expected);
        assert!(diff < 1e-4, "max abs diff {diff}");
    }

    fn cfg(padding: usize, stride: usize, dilation: usize) -> Conv2dConfig {
        Conv2dConfig {
            padding,
            stride,
            dilation,
            ..Default::default()
        }
    }

    #[test]
    fn same_padding_3x3_matches_candle() {
        check((2, 5, 7, 9), (6, 3, 3), cfg(1, 1, 1));
        check((1, 3, 1, 1), (2, 3, 3), cfg(1, 1, 1));
    }

    #[test]
    fn stride_2_and_odd_sizes_match_candle() {
        check((2, 4, 9, 7), (3, 3, 3), cfg(1, 2, 1));
        check((1, 4, 10, 8), (5, 3, 3), cfg(0, 2, 1));
        check((3, 2, 11, 6), (4, 3, 3), cfg(2, 3, 1));
    }

    #[test]
    fn depthwise_matches_candle() {
        let depthwise = |padding, stride, dilation, channels| Conv2dConfig {
            groups: channels,
            ..cfg(padding, stride, dilation)
        };
        check((2, 4, 9, 7), (4, 3, 3), depthwise(1, 1, 1, 4));
        check((1, 3, 12, 10), (3, 5, 5), depthwise(2, 1, 1, 3));
        check((1, 5, 11, 8), (5, 3, 3), depthwise(1, 2, 2, 5));
        check((1, 2, 6, 6), (2, 5, 5), depthwise(0, 1, 1, 2));
    }

    #[test]
    fn other_kernels_padding_and_dilation_match_candle() {
        check((2, 3, 8, 8), (4, 1, 1), cfg(0, 1, 1));
        check((2, 3, 8, 8), (4, 1, 1), cfg(1, 2, 1));
        check((1, 3, 12, 10), (2, 5, 5), cfg(2, 1, 1));
        check((1, 2, 12, 10), (2, 3, 3), cfg(2, 1, 2));
        check((2, 3, 6, 9), (4, 2, 4), cfg(0, 1, 1));
        check((1, 2, 5, 5), (3, 3, 3), cfg(4, 1, 1));
    }

    #[test]
    fn upsampled_input_matches_candle() {
        let dev = Device::Cpu;
        for (batch, c_in, h, w, stride) in [(2, 3, 5, 7, 1), (1, 4, 8, 6, 1), (2, 2, 3, 5, 2)] {
            let xs = Tensor::randn(0f32, 1.0, (batch, c_in, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (4, c_in, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
            let layer = Conv2d::new(weight.clone(), Some(bias.clone()), cfg(1, stride, 1));
            let expected = candle_nn::Conv2d::new(weight, Some(bias), cfg(1, stride, 1))
                .forward(&xs.upsample_nearest2d(2 * h, 2 * w).unwrap())
                .unwrap();
            let got = layer.forward_upsampled_2x(&xs).unwrap();
            assert_eq!(got.dims(), expected.dims());
            let diff = crate::ops::max_abs_diff(&got, &expected);
            assert!(diff < 1e-4, "max abs diff {diff}");
        }
    }

    /// bf16 weights: the same as candle's f32 convolution of the input and weights rounded to
    /// bf16 (the bf16 kernel sums in f32); without the kernel, of the input as it is.
    #[test]
    fn bf16_weights_match_the_rounded_f32_convolution() {
        crate::ops::gemm_bf16::enable_in_this_test();
        // The direct form (`winograd` tests its own), whatever `winograd::plan` would take.
        crate::ops::winograd::off_in_this_test();
        use candle_core::DType;
        let dev = Device::Cpu;
        let round = |t: &Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let shapes = [
            ((2, 5, 7, 9), (6, 3, 3), cfg(1, 1, 1), 1),
            ((1, 4, 10, 8), (5, 3, 3), cfg(0, 2, 1), 1),
            ((2, 3, 5, 7), (33, 3, 3), cfg(1, 1, 1), 2),
            ((1, 16, 60, 128), (8, 3, 3), cfg(1, 1, 1), 1),
            ((2, 64, 100, 100), (7, 1, 1), cfg(0, 1, 1), 1),
            ((3, 8, 6, 6), (15, 1, 1), cfg(0, 1, 1), 1),
            // Whole panels within one output row (copied runs), with an odd k ...
            ((1, 3, 40, 64), (9, 3, 3), cfg(1, 1, 1), 1),
            // ... read through the upsampling, ...
            ((2, 5, 16, 32), (4, 3, 3), cfg(1, 1, 1), 2),
            // ... dilated, with a short last panel, ...
            ((1, 6, 30, 70), (5, 3, 3), cfg(2, 1, 2), 1),
            // ... strided.
            ((1, 4, 20, 65), (3, 3, 3), cfg(1, 2, 1), 1),
            // Several row chunks of the weight and several passes over k (> 512).
            ((1, 64, 12, 36), (200, 3, 3), cfg(1, 1, 1), 1),
        ];
        for ((batch, c_in, h, w), (c_out, kh, kw), config, upsample) in shapes {
            let xs = Tensor::randn(0f32, 1.0, (batch, c_in, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (c_out, c_in, kh, kw), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, c_out, &dev).unwrap();
            let layer = Conv2d::new(
                weight.to_dtype(DType::BF16).unwrap(),
                Some(bias.to_dtype(DType::BF16).unwrap()),
                config,
            );
            let input = xs.upsample_nearest2d(h * upsample, w * upsample).unwrap();
            let expected = candle_nn::Conv2d::new(round(&weight), Some(round(&bias)), config)
                .forward(&if crate::ops::gemm_bf16::available() {
                    round(&input)
                } else {
                    input
                })
                .unwrap();
            let got = if upsample == 2 {
                layer.forward_upsampled_2x(&xs).unwrap()
            } else {
                layer.forward(&xs).unwrap()
            };
            assert_eq!(got.dtype(), DType::F32);
            assert_eq!(got.dims(), expected.dims());
            // f32 summation order only, over k products of normal samples.
            let k = (c_in * kh * kw) as f32;
            let diff = crate::ops::max_abs_diff(&got, &expected);
            assert!(
                diff < 1e-3 * (k / 64.0).sqrt().max(1.0),
                "max abs diff {diff}"
            );
        }
    }

    #[test]
    fn groups_fall_back_to_candle() {
        let groups = Conv2dConfig {
            padding: 1,
            groups: 2,
            ..Default::default()
        };
        check((2, 4, 6, 6), (6, 3, 3), groups);
    }

    #[test]
    fn chunked_rows_and_images_match_candle() {
        // 16 channels x 9 taps x 128 x 128 pixels is above the im2col budget, so the output rows
        // are split into chunks.
        check((2, 16, 128, 128), (8, 3, 3), cfg(1, 1, 1));
        // 16 x 9 x 100 x 100 fits once but not twice: one image per matmul.
        check((3, 16, 100, 100), (5, 3, 3), cfg(1, 1, 1));
        // Large 1x1 inputs go image by image straight into the matmul.
        check((2, 64, 100, 100), (7, 1, 1), cfg(0, 1, 1));
    }

    #[test]
    fn non_contiguous_input_matches_candle() {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1.0, (2, 9, 7, 3), &dev)
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap();
        let weight = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev).unwrap();
        let layer = Conv2d::new(weight.clone(), None, cfg(1, 1, 1));
        let expected = xs.conv2d(&weight, 1, 1, 1, 1).unwrap();
        let diff = crate::ops::max_abs_diff(&layer.forward(&xs).unwrap(), &expected);
        assert!(diff < 1e-4, "max abs diff {diff}");
    }
}
