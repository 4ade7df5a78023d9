"""Reference fixtures for Weft's mask, compositing and image-editing nodes (issue 17).

Each case runs the node's maths as ComfyUI (current master, the V3 `define_schema` versions of
comfy_extras/nodes_mask.py, nodes_compositing.py, nodes_post_processing.py, nodes_morphology.py,
nodes_images.py, plus node_helpers.image_alpha_fix and comfy.utils.common_upscale /
repeat_to_batch_size) computes it, re-stated below with the same torch / numpy / scipy / kornia /
PIL calls, on small deterministic inputs. Writes
tests/fixtures/image_nodes/reference.safetensors (inputs and outputs, f32) and cases.json (which
node, which inputs, which outputs, tolerance, library versions). tests/image_edit_nodes.rs runs the
same cases through Weft's registry.

Run with /tmp/peer-venv/bin/python (torch, numpy, scipy, kornia, pillow, safetensors).
"""
import hashlib
import json
import math
import os

import kornia
import numpy as np
import PIL
import scipy
import scipy.ndimage
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "image_nodes")


# ------------------------------------------------------------ comfy.utils / node_helpers
def lanczos(samples, width, height):
    images = [Image.fromarray(np.clip(255. * image.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8)) for image in samples]
    images = [image.resize((width, height), resample=Image.Resampling.LANCZOS) for image in images]
    images = [torch.from_numpy(np.array(image).astype(np.float32) / 255.0).movedim(-1, 0) for image in images]
    return torch.stack(images)


def common_upscale(samples, width, height, upscale_method, crop):
    if crop == "center":
        old_width = samples.shape[3]
        old_height = samples.shape[2]
        old_aspect = old_width / old_height
        new_aspect = width / height
        x = 0
        y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        s = samples[:, :, y:old_height - y, x:old_width - x]
    else:
        s = samples
    if upscale_method == "lanczos":
        return lanczos(s, width, height)
    return F.interpolate(s, size=(height, width), mode=upscale_method)


def repeat_to_batch_size(tensor, batch_size, dim=0):
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    elif tensor.shape[dim] < batch_size:
        return tensor.repeat(dim * [1] + [math.ceil(batch_size / tensor.shape[dim])] + [1] * (len(tensor.shape) - 1 - dim)).narrow(dim, 0, batch_size)
    return tensor


def image_alpha_fix(destination, source):
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = torch.nn.functional.pad(source, (0, 1))
        source[..., -1] = 1.0
    return destination, source


# ------------------------------------------------------------ nodes_mask.py
def composite(destination, source, x, y, mask=None, multiplier=8, resize_source=False):
    if resize_source:
        source = torch.nn.functional.interpolate(source, size=(destination.shape[-2], destination.shape[-1]), mode="bilinear")
    source = repeat_to_batch_size(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = (x // multiplier, y // multiplier)
    right, bottom = (left + source.shape[-1], top + source.shape[-2],)
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.clone()
        mask = torch.nn.functional.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])), size=(source.shape[-2], source.shape[-1]), mode="bilinear")
        mask = repeat_to_batch_size(mask, source.shape[0])
    visible_width, visible_height = (destination.shape[-1] - left + min(0, x), destination.shape[-2] - top + min(0, y),)
    mask = mask[:, :, :visible_height, :visible_width]
    if mask.ndim < source.ndim:
        mask = mask.unsqueeze(1)
    inverse_mask = torch.ones_like(mask) - mask
    source_portion = mask * source[..., :visible_height, :visible_width]
    destination_portion = inverse_mask * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = source_portion + destination_portion
    return destination


def image_composite_masked(destination, source, x, y, resize_source, mask=None):
    destination, source = image_alpha_fix(destination, source)
    destination = destination.clone().movedim(-1, 1)
    return composite(destination, source.movedim(-1, 1), x, y, mask, 1, resize_source).movedim(1, -1)


def mask_to_image(mask):
    return mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)


def image_to_mask(image, channel):
    return image[:, :, :, ["red", "green", "blue", "alpha"].index(channel)]


def image_color_to_mask(image, color):
    temp = (torch.clamp(image, 0, 1.0) * 255.0).round().to(torch.int)
    temp = torch.bitwise_left_shift(temp[:, :, :, 0], 16) + torch.bitwise_left_shift(temp[:, :, :, 1], 8) + temp[:, :, :, 2]
    return torch.where(temp == color, 1.0, 0).float()


def solid_mask(value, width, height):
    return torch.full((1, height, width), value, dtype=torch.float32)


def invert_mask(mask):
    return 1.0 - mask


def crop_mask(mask, x, y, width, height):
    mask = mask.reshape((-1, mask.shape[-2], mask.shape[-1]))
    return mask[:, y:y + height, x:x + width]


def mask_composite(destination, source, x, y, operation):
    output = destination.reshape((-1, destination.shape[-2], destination.shape[-1])).clone()
    source = source.reshape((-1, source.shape[-2], source.shape[-1]))
    left, top = (x, y,)
    right, bottom = (min(left + source.shape[-1], destination.shape[-1]), min(top + source.shape[-2], destination.shape[-2]))
    visible_width, visible_height = (right - left, bottom - top,)
    source_portion = source[:, :visible_height, :visible_width]
    destination_portion = output[:, top:bottom, left:right]
    if operation == "multiply":
        output[:, top:bottom, left:right] = destination_portion * source_portion
    elif operation == "add":
        output[:, top:bottom, left:right] = destination_portion + source_portion
    elif operation == "subtract":
        output[:, top:bottom, left:right] = destination_portion - source_portion
    elif operation == "and":
        output[:, top:bottom, left:right] = torch.bitwise_and(destination_portion.round().bool(), source_portion.round().bool()).float()
    elif operation == "or":
        output[:, top:bottom, left:right] = torch.bitwise_or(destination_portion.round().bool(), source_portion.round().bool()).float()
    elif operation == "xor":
        output[:, top:bottom, left:right] = torch.bitwise_xor(destination_portion.round().bool(), source_portion.round().bool()).float()
    return torch.clamp(output, 0.0, 1.0)


def feather_mask(mask, left, top, right, bottom):
    output = mask.reshape((-1, mask.shape[-2], mask.shape[-1])).clone()
    left = min(left, output.shape[-1])
    right = min(right, output.shape[-1])
    top = min(top, output.shape[-2])
    bottom = min(bottom, output.shape[-2])
    for x in range(left):
        output[:, :, x] *= (x + 1.0) / left
    for x in range(right):
        output[:, :, -x] *= (x + 1) / right
    for y in range(top):
        output[:, y, :] *= (y + 1) / top
    for y in range(bottom):
        output[:, -y, :] *= (y + 1) / bottom
    return output


def grow_mask(mask, expand, tapered_corners):
    c = 0 if tapered_corners else 1
    kernel = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    mask = mask.reshape((-1, mask.shape[-2], mask.shape[-1]))
    out = []
    for m in mask:
        output = m.numpy()
        for _ in range(abs(expand)):
            if expand < 0:
                output = scipy.ndimage.grey_erosion(output, footprint=kernel)
            else:
                output = scipy.ndimage.grey_dilation(output, footprint=kernel)
        out.append(torch.from_numpy(output))
    return torch.stack(out, dim=0)


def threshold_mask(mask, value):
    return (mask > value).float()


# ------------------------------------------------------------ nodes_compositing.py
MODES = ["ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER", "LIGHTEN",
         "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR"]


def porter_duff_composite(src_image, src_alpha, dst_image, dst_alpha, mode):
    src_alpha = 1 - src_alpha
    dst_alpha = 1 - dst_alpha
    src_image = src_image * src_alpha
    dst_image = dst_image * dst_alpha
    if mode == "ADD":
        out_alpha = torch.clamp(src_alpha + dst_alpha, 0, 1)
        out_image = torch.clamp(src_image + dst_image, 0, 1)
    elif mode == "CLEAR":
        out_alpha = torch.zeros_like(dst_alpha)
        out_image = torch.zeros_like(dst_image)
    elif mode == "DARKEN":
        out_alpha = src_alpha + dst_alpha - src_alpha * dst_alpha
        out_image = (1 - dst_alpha) * src_image + (1 - src_alpha) * dst_image + torch.min(src_image, dst_image)
    elif mode == "DST":
        out_alpha = dst_alpha
        out_image = dst_image
    elif mode == "DST_ATOP":
        out_alpha = src_alpha
        out_image = src_alpha * dst_image + (1 - dst_alpha) * src_image
    elif mode == "DST_IN":
        out_alpha = src_alpha * dst_alpha
        out_image = dst_image * src_alpha
    elif mode == "DST_OUT":
        out_alpha = (1 - src_alpha) * dst_alpha
        out_image = (1 - src_alpha) * dst_image
    elif mode == "DST_OVER":
        out_alpha = dst_alpha + (1 - dst_alpha) * src_alpha
        out_image = dst_image + (1 - dst_alpha) * src_image
    elif mode == "LIGHTEN":
        out_alpha = src_alpha + dst_alpha - src_alpha * dst_alpha
        out_image = (1 - dst_alpha) * src_image + (1 - src_alpha) * dst_image + torch.max(src_image, dst_image)
    elif mode == "MULTIPLY":
        out_alpha = src_alpha * dst_alpha
        out_image = src_image * dst_image
    elif mode == "OVERLAY":
        out_alpha = src_alpha + dst_alpha - src_alpha * dst_alpha
        out_image = torch.where(2 * dst_image < dst_alpha, 2 * src_image * dst_image,
                                src_alpha * dst_alpha - 2 * (dst_alpha - src_image) * (src_alpha - dst_image))
    elif mode == "SCREEN":
        out_alpha = src_alpha + dst_alpha - src_alpha * dst_alpha
        out_image = src_image + dst_image - src_image * dst_image
    elif mode == "SRC":
        out_alpha = src_alpha
        out_image = src_image
    elif mode == "SRC_ATOP":
        out_alpha = dst_alpha
        out_image = dst_alpha * src_image + (1 - src_alpha) * dst_image
    elif mode == "SRC_IN":
        out_alpha = src_alpha * dst_alpha
        out_image = src_image * dst_alpha
    elif mode == "SRC_OUT":
        out_alpha = (1 - dst_alpha) * src_alpha
        out_image = (1 - dst_alpha) * src_image
    elif mode == "SRC_OVER":
        out_alpha = src_alpha + (1 - src_alpha) * dst_alpha
        out_image = src_image + (1 - src_alpha) * dst_image
    elif mode == "XOR":
        out_alpha = (1 - dst_alpha) * src_alpha + (1 - src_alpha) * dst_alpha
        out_image = (1 - dst_alpha) * src_image + (1 - src_alpha) * dst_image
    out_image = torch.where(out_alpha > 1e-5, out_image / out_alpha, torch.zeros_like(out_image))
    out_image = torch.clamp(out_image, 0, 1)
    out_alpha = 1 - out_alpha
    return out_image, out_alpha


def porter_duff(source, source_alpha, destination, destination_alpha, mode):
    batch_size = min(len(source), len(source_alpha), len(destination), len(destination_alpha))
    out_images, out_alphas = [], []
    for i in range(batch_size):
        src_image = source[i]
        dst_image = destination[i]
        src_alpha = source_alpha[i].unsqueeze(2)
        dst_alpha = destination_alpha[i].unsqueeze(2)
        if dst_alpha.shape[:2] != dst_image.shape[:2]:
            dst_alpha = common_upscale(dst_alpha.unsqueeze(0).permute(0, 3, 1, 2), dst_image.shape[1], dst_image.shape[0], 'bicubic', 'center').permute(0, 2, 3, 1).squeeze(0)
        if src_image.shape != dst_image.shape:
            src_image = common_upscale(src_image.unsqueeze(0).permute(0, 3, 1, 2), dst_image.shape[1], dst_image.shape[0], 'bicubic', 'center').permute(0, 2, 3, 1).squeeze(0)
        if src_alpha.shape != dst_alpha.shape:
            src_alpha = common_upscale(src_alpha.unsqueeze(0).permute(0, 3, 1, 2), dst_alpha.shape[1], dst_alpha.shape[0], 'bicubic', 'center').permute(0, 2, 3, 1).squeeze(0)
        out_image, out_alpha = porter_duff_composite(src_image, src_alpha, dst_image, dst_alpha, mode)
        out_images.append(out_image)
        out_alphas.append(out_alpha.squeeze(2))
    return torch.stack(out_images), torch.stack(out_alphas)


def split_image_with_alpha(image):
    out_images = [i[:, :, :3] for i in image]
    out_alphas = [i[:, :, 3] if i.shape[2] > 3 else torch.ones_like(i[:, :, 0]) for i in image]
    return torch.stack(out_images), 1.0 - torch.stack(out_alphas)


def join_image_with_alpha(image, alpha):
    batch_size = min(len(image), len(alpha))
    alpha = 1.0 - F.interpolate(alpha.reshape((-1, 1, alpha.shape[-2], alpha.shape[-1])), size=(image.shape[1], image.shape[2]), mode="bilinear").squeeze(1)
    return torch.stack([torch.cat((image[i][:, :, :3], alpha[i].unsqueeze(2)), dim=2) for i in range(batch_size)])


# ------------------------------------------------------------ nodes_post_processing.py
def blend(image1, image2, blend_factor, blend_mode):
    image1, image2 = image_alpha_fix(image1, image2)
    if image1.shape != image2.shape:
        image2 = common_upscale(image2.permute(0, 3, 1, 2), image1.shape[2], image1.shape[1], 'bicubic', 'center').permute(0, 2, 3, 1)
    img1, img2 = image1, image2
    if blend_mode == "normal":
        b = img2
    elif blend_mode == "multiply":
        b = img1 * img2
    elif blend_mode == "screen":
        b = 1 - (1 - img1) * (1 - img2)
    elif blend_mode == "overlay":
        b = torch.where(img1 <= 0.5, 2 * img1 * img2, 1 - 2 * (1 - img1) * (1 - img2))
    elif blend_mode == "soft_light":
        g = torch.where(img1 <= 0.25, ((16 * img1 - 12) * img1 + 4) * img1, torch.sqrt(img1))
        b = torch.where(img2 <= 0.5, img1 - (1 - 2 * img2) * img1 * (1 - img1), img1 + (2 * img2 - 1) * (g - img1))
    elif blend_mode == "difference":
        b = img1 - img2
    return torch.clamp(image1 * (1 - blend_factor) + b * blend_factor, 0, 1)


def gaussian_kernel(kernel_size, sigma, device=None):
    x, y = torch.meshgrid(torch.linspace(-1, 1, kernel_size, device=device), torch.linspace(-1, 1, kernel_size, device=device), indexing="ij")
    d = torch.sqrt(x * x + y * y)
    g = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return g / g.sum()


def blur(image, blur_radius, sigma):
    batch_size, height, width, channels = image.shape
    kernel_size = blur_radius * 2 + 1
    kernel = gaussian_kernel(kernel_size, sigma).repeat(channels, 1, 1).unsqueeze(1)
    image = image.permute(0, 3, 1, 2)
    padded_image = F.pad(image, (blur_radius, blur_radius, blur_radius, blur_radius), 'reflect')
    blurred = F.conv2d(padded_image, kernel, padding=kernel_size // 2, groups=channels)[:, :, blur_radius:-blur_radius, blur_radius:-blur_radius]
    return blurred.permute(0, 2, 3, 1)


def sharpen(image, sharpen_radius, sigma, alpha):
    batch_size, height, width, channels = image.shape
    kernel_size = sharpen_radius * 2 + 1
    kernel = gaussian_kernel(kernel_size, sigma) * -(alpha * 10)
    kernel = kernel.to(dtype=image.dtype)
    center = kernel_size // 2
    kernel[center, center] = kernel[center, center] - kernel.sum() + 1.0
    kernel = kernel.repeat(channels, 1, 1).unsqueeze(1)
    tensor_image = image.permute(0, 3, 1, 2)
    tensor_image = F.pad(tensor_image, (sharpen_radius, sharpen_radius, sharpen_radius, sharpen_radius), 'reflect')
    sharpened = F.conv2d(tensor_image, kernel, padding=center, groups=channels)[:, :, sharpen_radius:-sharpen_radius, sharpen_radius:-sharpen_radius]
    return torch.clamp(sharpened.permute(0, 2, 3, 1), 0, 1)


def bayer(im, pal_im, order):
    def normalized_bayer_matrix(n):
        if n == 0:
            return np.zeros((1, 1), "float32")
        q = 4 ** n
        m = q * normalized_bayer_matrix(n - 1)
        return np.bmat(((m - 1.5, m + 0.5), (m + 1.5, m - 0.5))) / q

    num_colors = len(pal_im.getpalette()) // 3
    spread = 2 * 256 / num_colors
    bayer_n = int(math.log2(order))
    bayer_matrix = torch.from_numpy(spread * normalized_bayer_matrix(bayer_n) + 0.5)
    result = torch.from_numpy(np.array(im).astype(np.float32))
    tw = math.ceil(result.shape[0] / bayer_matrix.shape[0])
    th = math.ceil(result.shape[1] / bayer_matrix.shape[1])
    tiled_matrix = bayer_matrix.tile(tw, th).unsqueeze(-1)
    result.add_(tiled_matrix[:result.shape[0], :result.shape[1]]).clamp_(0, 255)
    result = result.to(dtype=torch.uint8)
    im = Image.fromarray(result.cpu().numpy())
    return im.quantize(palette=pal_im, dither=Image.Dither.NONE)


def quantize(image, colors, dither):
    result = torch.zeros_like(image)
    for b in range(image.shape[0]):
        im = Image.fromarray((image[b] * 255).to(torch.uint8).numpy(), mode='RGB')
        pal_im = im.quantize(colors=colors)
        if dither == "none":
            q = im.quantize(palette=pal_im, dither=Image.Dither.NONE)
        elif dither == "floyd-steinberg":
            q = im.quantize(palette=pal_im, dither=Image.Dither.FLOYDSTEINBERG)
        else:
            q = bayer(im, pal_im, int(dither.split('-')[-1]))
        result[b] = torch.tensor(np.array(q.convert("RGB"))).float() / 255
    return result


# ------------------------------------------------------------ nodes_morphology.py
def morphology(image, operation, kernel_size):
    from kornia.morphology import dilation, erosion, opening, closing, gradient, top_hat, bottom_hat
    kernel = torch.ones(kernel_size, kernel_size)
    image_k = image.movedim(-1, 1)
    op = {"erode": erosion, "dilate": dilation, "open": opening, "close": closing,
          "gradient": gradient, "top_hat": top_hat, "bottom_hat": bottom_hat}[operation]
    return op(image_k, kernel).movedim(1, -1)


# ------------------------------------------------------------ nodes_images.py
def image_crop(image, width, height, x, y):
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return image[:, y:y + height, x:x + width, :]


def image_from_batch(image, batch_index, length):
    batch_index = min(image.shape[0] - 1, batch_index)
    length = min(image.shape[0] - batch_index, length)
    return image[batch_index:batch_index + length].clone()


def add_noise(image, seed, strength):
    generator = torch.manual_seed(seed)
    return torch.clip((image + strength * torch.randn(image.size(), generator=generator, device="cpu").to(image)), min=0.0, max=1.0)


def stitch(image1, direction, match_image_size, spacing_width, spacing_color, image2):
    if image1.shape[0] != image2.shape[0]:
        max_batch = max(image1.shape[0], image2.shape[0])
        if image1.shape[0] < max_batch:
            image1 = torch.cat([image1, image1[-1:].repeat(max_batch - image1.shape[0], 1, 1, 1)])
        if image2.shape[0] < max_batch:
            image2 = torch.cat([image2, image2[-1:].repeat(max_batch - image2.shape[0], 1, 1, 1)])
    if match_image_size:
        h1, w1 = image1.shape[1:3]
        h2, w2 = image2.shape[1:3]
        aspect_ratio = w2 / h2
        if direction in ["left", "right"]:
            target_h, target_w = h1, int(h1 * aspect_ratio)
        else:
            target_w, target_h = w1, int(w1 / aspect_ratio)
        image2 = common_upscale(image2.movedim(-1, 1), target_w, target_h, "lanczos", "disabled").movedim(1, -1)
    color_map = {"white": 1.0, "black": 0.0, "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
    color_val = color_map[spacing_color]
    if not match_image_size:
        h1, w1 = image1.shape[1:3]
        h2, w2 = image2.shape[1:3]
        pad_value = 0.0
        if not isinstance(color_val, tuple):
            pad_value = color_val
        if direction in ["left", "right"]:
            if h1 != h2:
                target_h = max(h1, h2)
                if h1 < target_h:
                    pad_h = target_h - h1
                    image1 = F.pad(image1, (0, 0, 0, 0, pad_h // 2, pad_h - pad_h // 2), mode='constant', value=pad_value)
                if h2 < target_h:
                    pad_h = target_h - h2
                    image2 = F.pad(image2, (0, 0, 0, 0, pad_h // 2, pad_h - pad_h // 2), mode='constant', value=pad_value)
        else:
            if w1 != w2:
                target_w = max(w1, w2)
                if w1 < target_w:
                    pad_w = target_w - w1
                    image1 = F.pad(image1, (0, 0, pad_w // 2, pad_w - pad_w // 2), mode='constant', value=pad_value)
                if w2 < target_w:
                    pad_w = target_w - w2
                    image2 = F.pad(image2, (0, 0, pad_w // 2, pad_w - pad_w // 2), mode='constant', value=pad_value)
    if image1.shape[-1] != image2.shape[-1]:
        max_channels = max(image1.shape[-1], image2.shape[-1])
        if image1.shape[-1] < max_channels:
            image1 = torch.cat([image1, torch.ones(*image1.shape[:-1], max_channels - image1.shape[-1])], dim=-1)
        if image2.shape[-1] < max_channels:
            image2 = torch.cat([image2, torch.ones(*image2.shape[:-1], max_channels - image2.shape[-1])], dim=-1)
    if spacing_width > 0:
        spacing_width = spacing_width + (spacing_width % 2)
        if direction in ["left", "right"]:
            spacing_shape = (image1.shape[0], max(image1.shape[1], image2.shape[1]), spacing_width, image1.shape[-1])
        else:
            spacing_shape = (image1.shape[0], spacing_width, max(image1.shape[2], image2.shape[2]), image1.shape[-1])
        spacing = torch.full(spacing_shape, 0.0)
        if isinstance(color_val, tuple):
            for i, c in enumerate(color_val):
                if i < spacing.shape[-1]:
                    spacing[..., i] = c
            if spacing.shape[-1] == 4:
                spacing[..., 3] = 1.0
        else:
            spacing[..., : min(3, spacing.shape[-1])] = color_val
            if spacing.shape[-1] == 4:
                spacing[..., 3] = 1.0
    images = [image2, image1] if direction in ["left", "up"] else [image1, image2]
    if spacing_width > 0:
        images.insert(1, spacing)
    return torch.cat(images, dim=2 if direction in ["left", "right"] else 1)


def resize_and_pad(image, target_width, target_height, padding_color, interpolation):
    batch_size, orig_height, orig_width, channels = image.shape
    scale = min(target_width / orig_width, target_height / orig_height)
    new_width = int(orig_width * scale)
    new_height = int(orig_height * scale)
    resized = common_upscale(image.permute(0, 3, 1, 2), new_width, new_height, interpolation, "disabled")
    pad_value = 0.0 if padding_color == "black" else 1.0
    padded = torch.full((batch_size, channels, target_height, target_width), pad_value, dtype=image.dtype)
    y_offset = (target_height - new_height) // 2
    x_offset = (target_width - new_width) // 2
    padded[:, :, y_offset:y_offset + new_height, x_offset:x_offset + new_width] = resized
    return padded.permute(0, 2, 3, 1)


def rotate(image, rotation):
    k = {"none": 0, "90 degrees": 1, "180 degrees": 2, "270 degrees": 3}[rotation]
    return torch.rot90(image, k=k, dims=[2, 1])


def flip(image, flip_method):
    return torch.flip(image, dims=[1] if flip_method.startswith("x") else [2])


# ------------------------------------------------------------ cases
def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(17)
    rand = lambda *shape: torch.rand(*shape, generator=g)
    tensors = {
        "image_a": rand(2, 9, 11, 3),
        "image_b": rand(2, 9, 11, 3),
        "image_small": rand(1, 7, 5, 3),
        "image_rgba": rand(2, 9, 11, 4),
        "mask_a": rand(2, 9, 11),
        "mask_small": rand(1, 5, 6),
        "mask_binary": (rand(2, 9, 11) > 0.7).float(),
        # Four grey levels, so colours repeat (ImageColorToMask) and halves test rounding.
        "image_levels": torch.randint(0, 4, (2, 9, 11, 3), generator=g).float() * 85.0 / 255.0,
        "mask_halves": torch.randint(0, 3, (2, 9, 11), generator=g).float() * 0.5,
    }
    # A gradient with noise: ~200 colours per image for the median cut.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 12), torch.linspace(0, 1, 16), indexing="ij")
    grad = torch.stack([xx, yy, (xx + yy) / 2], dim=-1)
    tensors["image_gradient"] = torch.clamp(torch.stack([grad, grad.flip(0)]) + 0.08 * rand(2, 12, 16, 3), 0, 1)

    cases = []

    def case(name, cls, inputs, outputs, tol=1e-5):
        keys = []
        for i, out in enumerate(outputs):
            key = f"out.{name}.{i}"
            tensors[key] = out.contiguous().float().clone()
            keys.append(key)
        cases.append({"name": name, "class": cls, "inputs": inputs, "outputs": keys, "tolerance": tol})

    T = tensors
    img = lambda k: {"image": k}
    msk = lambda k: {"mask": k}

    # nodes_mask.py
    for ch in ["red", "green", "blue"]:
        case(f"image_to_mask_{ch}", "ImageToMask", {"image": img("image_a"), "channel": ch}, [image_to_mask(T["image_a"], ch)])
    case("image_to_mask_alpha", "ImageToMask", {"image": img("image_rgba"), "channel": "alpha"}, [image_to_mask(T["image_rgba"], "alpha")])
    case("mask_to_image", "MaskToImage", {"mask": msk("mask_a")}, [mask_to_image(T["mask_a"])])
    levels = T["image_levels"]
    color = int((levels[0, 0, 0] * 255).round()[0]) << 16 | int((levels[0, 0, 0] * 255).round()[1]) << 8 | int((levels[0, 0, 0] * 255).round()[2])
    case("image_color_to_mask", "ImageColorToMask", {"image": img("image_levels"), "color": color}, [image_color_to_mask(levels, color)])
    case("solid_mask", "SolidMask", {"value": 0.3, "width": 7, "height": 5}, [solid_mask(0.3, 7, 5)])
    case("invert_mask", "InvertMask", {"mask": msk("mask_a")}, [invert_mask(T["mask_a"])])
    case("crop_mask", "CropMask", {"mask": msk("mask_a"), "x": 2, "y": 3, "width": 5, "height": 100}, [crop_mask(T["mask_a"], 2, 3, 5, 100)])
    for op in ["multiply", "add", "subtract", "and", "or", "xor"]:
        case(f"mask_composite_{op}_clipped", "MaskComposite",
             {"destination": msk("mask_a"), "source": msk("mask_small"), "x": 7, "y": 6, "operation": op},
             [mask_composite(T["mask_a"], T["mask_small"], 7, 6, op)])
        case(f"mask_composite_{op}_halves", "MaskComposite",
             {"destination": msk("mask_halves"), "source": msk("mask_a"), "x": 0, "y": 0, "operation": op},
             [mask_composite(T["mask_halves"], T["mask_a"], 0, 0, op)])
    case("feather_mask", "FeatherMask", {"mask": msk("mask_a"), "left": 3, "top": 2, "right": 4, "bottom": 3},
         [feather_mask(T["mask_a"], 3, 2, 4, 3)])
    case("feather_mask_wider_than_mask", "FeatherMask", {"mask": msk("mask_small"), "left": 0, "top": 9, "right": 20, "bottom": 0},
         [feather_mask(T["mask_small"], 0, 9, 20, 0)])
    for expand in [2, -1, -3]:
        for tapered in [True, False]:
            case(f"grow_mask_{expand}_{tapered}", "GrowMask", {"mask": msk("mask_binary"), "expand": expand, "tapered_corners": tapered},
                 [grow_mask(T["mask_binary"], expand, tapered)])
    case("grow_mask_grey", "GrowMask", {"mask": msk("mask_a"), "expand": 1, "tapered_corners": True}, [grow_mask(T["mask_a"], 1, True)])
    case("threshold_mask", "ThresholdMask", {"mask": msk("mask_a"), "value": 0.4}, [threshold_mask(T["mask_a"], 0.4)])
    case("composite_masked_clipped", "ImageCompositeMasked",
         {"destination": img("image_a"), "source": img("image_small"), "x": 8, "y": 4, "resize_source": False, "mask": msk("mask_small")},
         [image_composite_masked(T["image_a"], T["image_small"], 8, 4, False, T["mask_small"])])
    case("composite_masked_resized", "ImageCompositeMasked",
         {"destination": img("image_a"), "source": img("image_small"), "x": 0, "y": 0, "resize_source": True},
         [image_composite_masked(T["image_a"], T["image_small"], 0, 0, True)])
    case("composite_masked_rgba_source", "ImageCompositeMasked",
         {"destination": img("image_a"), "source": img("image_rgba"), "x": 3, "y": 2, "resize_source": False, "mask": msk("mask_a")},
         [image_composite_masked(T["image_a"], T["image_rgba"], 3, 2, False, T["mask_a"])])
    case("composite_masked_rgb_source_on_rgba", "ImageCompositeMasked",
         {"destination": img("image_rgba"), "source": img("image_small"), "x": 1, "y": 1, "resize_source": False},
         [image_composite_masked(T["image_rgba"], T["image_small"], 1, 1, False)])

    # nodes_compositing.py
    for mode in MODES:
        case(f"porter_duff_{mode}", "PorterDuffImageComposite",
             {"source": img("image_a"), "source_alpha": msk("mask_a"), "destination": img("image_b"), "destination_alpha": msk("mask_halves"), "mode": mode},
             list(porter_duff(T["image_a"], T["mask_a"], T["image_b"], T["mask_halves"], mode)))
    case("porter_duff_resized", "PorterDuffImageComposite",
         {"source": img("image_small"), "source_alpha": msk("mask_small"), "destination": img("image_b"), "destination_alpha": msk("mask_a"), "mode": "SRC_OVER"},
         list(porter_duff(T["image_small"], T["mask_small"], T["image_b"], T["mask_a"], "SRC_OVER")))
    case("split_rgba", "SplitImageWithAlpha", {"image": img("image_rgba")}, list(split_image_with_alpha(T["image_rgba"])))
    case("split_rgb", "SplitImageWithAlpha", {"image": img("image_a")}, list(split_image_with_alpha(T["image_a"])))
    case("join_alpha_resized", "JoinImageWithAlpha", {"image": img("image_a"), "alpha": msk("mask_small")}, [join_image_with_alpha(T["image_a"], T["mask_small"])])
    case("join_alpha", "JoinImageWithAlpha", {"image": img("image_rgba"), "alpha": msk("mask_a")}, [join_image_with_alpha(T["image_rgba"], T["mask_a"])])

    # nodes_post_processing.py
    for mode in ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]:
        case(f"blend_{mode}", "ImageBlend", {"image1": img("image_a"), "image2": img("image_b"), "blend_factor": 0.3, "blend_mode": mode},
             [blend(T["image_a"], T["image_b"], 0.3, mode)])
    case("blend_resized_broadcast", "ImageBlend", {"image1": img("image_a"), "image2": img("image_small"), "blend_factor": 0.6, "blend_mode": "overlay"},
         [blend(T["image_a"], T["image_small"], 0.6, "overlay")])
    case("blend_rgba_on_rgb", "ImageBlend", {"image1": img("image_a"), "image2": img("image_rgba"), "blend_factor": 0.5, "blend_mode": "screen"},
         [blend(T["image_a"], T["image_rgba"], 0.5, "screen")])
    for r, s in [(1, 1.0), (3, 0.5), (4, 3.0)]:
        case(f"blur_{r}_{s}", "ImageBlur", {"image": img("image_a"), "blur_radius": r, "sigma": s}, [blur(T["image_a"], r, s)])
    for r, s, a in [(1, 1.0, 1.0), (2, 0.7, 0.35)]:
        case(f"sharpen_{r}_{s}_{a}", "ImageSharpen", {"image": img("image_a"), "sharpen_radius": r, "sigma": s, "alpha": a},
             [sharpen(T["image_a"], r, s, a)])
    for colors in [1, 5, 16, 256]:
        for dither in ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-16"]:
            case(f"quantize_{colors}_{dither}", "ImageQuantize", {"image": img("image_gradient"), "colors": colors, "dither": dither},
                 [quantize(T["image_gradient"], colors, dither)], tol=0.5 / 255)
    case("quantize_few_colours", "ImageQuantize", {"image": img("image_levels"), "colors": 8, "dither": "floyd-steinberg"},
         [quantize(T["image_levels"], 8, "floyd-steinberg")], tol=0.5 / 255)

    # nodes_morphology.py
    for op in ["erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat"]:
        for k in [3, 4, 7]:
            case(f"morphology_{op}_{k}", "Morphology", {"image": img("image_a"), "operation": op, "kernel_size": k},
                 [morphology(T["image_a"], op, k)])

    # nodes_images.py
    case("crop_clamped", "ImageCrop", {"image": img("image_a"), "width": 5, "height": 100, "x": 20, "y": 3}, [image_crop(T["image_a"], 5, 100, 20, 3)])
    case("crop_inside", "ImageCrop", {"image": img("image_a"), "width": 4, "height": 3, "x": 2, "y": 1}, [image_crop(T["image_a"], 4, 3, 2, 1)])
    case("from_batch", "ImageFromBatch", {"image": img("image_a"), "batch_index": 1, "length": 5}, [image_from_batch(T["image_a"], 1, 5)])
    case("from_batch_past_end", "ImageFromBatch", {"image": img("image_a"), "batch_index": 7, "length": 1}, [image_from_batch(T["image_a"], 7, 1)])
    case("repeat_batch", "RepeatImageBatch", {"image": img("image_a"), "amount": 3}, [T["image_a"].repeat((3, 1, 1, 1))])
    for rot in ["none", "90 degrees", "180 degrees", "270 degrees"]:
        case(f"rotate_{rot.split()[0]}", "ImageRotate", {"image": img("image_a"), "rotation": rot}, [rotate(T["image_a"], rot)])
    for fm in ["x-axis: vertically", "y-axis: horizontally"]:
        case(f"flip_{fm[0]}", "ImageFlip", {"image": img("image_a"), "flip_method": fm}, [flip(T["image_a"], fm)])
    case("stitch_right_matched", "ImageStitch",
         {"image1": img("image_a"), "direction": "right", "match_image_size": True, "spacing_width": 0, "spacing_color": "white", "image2": img("image_small")},
         [stitch(T["image_a"], "right", True, 0, "white", T["image_small"])], tol=1.01 / 255)
    case("stitch_down_padded", "ImageStitch",
         {"image1": img("image_a"), "direction": "down", "match_image_size": False, "spacing_width": 3, "spacing_color": "black", "image2": img("image_small")},
         [stitch(T["image_a"], "down", False, 3, "black", T["image_small"])])
    case("stitch_left_rgba_red", "ImageStitch",
         {"image1": img("image_small"), "direction": "left", "match_image_size": False, "spacing_width": 2, "spacing_color": "red", "image2": img("image_rgba")},
         [stitch(T["image_small"], "left", False, 2, "red", T["image_rgba"])])
    case("stitch_up_white", "ImageStitch",
         {"image1": img("image_a"), "direction": "up", "match_image_size": False, "spacing_width": 2, "spacing_color": "white", "image2": img("image_b")},
         [stitch(T["image_a"], "up", False, 2, "white", T["image_b"])])
    case("stitch_alone", "ImageStitch",
         {"image1": img("image_a"), "direction": "right", "match_image_size": True, "spacing_width": 0, "spacing_color": "white"},
         [T["image_a"]])
    case("resize_and_pad_bilinear", "ResizeAndPadImage",
         {"image": img("image_a"), "target_width": 20, "target_height": 12, "padding_color": "white", "interpolation": "bilinear"},
         [resize_and_pad(T["image_a"], 20, 12, "white", "bilinear")])
    case("resize_and_pad_area", "ResizeAndPadImage",
         {"image": img("image_a"), "target_width": 6, "target_height": 15, "padding_color": "black", "interpolation": "area"},
         [resize_and_pad(T["image_a"], 6, 15, "black", "area")])
    for tw, th in [(7, 20), (30, 30)]:
        case(f"resize_and_pad_lanczos_{tw}x{th}", "ResizeAndPadImage",
             {"image": img("image_a"), "target_width": tw, "target_height": th, "padding_color": "white", "interpolation": "lanczos"},
             [resize_and_pad(T["image_a"], tw, th, "white", "lanczos")], tol=1.01 / 255)
    case("add_noise", "ImageAddNoise", {"image": img("image_a"), "seed": 42, "strength": 0.3}, [add_noise(T["image_a"], 42, 0.3)])
    case("add_noise_big_seed", "ImageAddNoise", {"image": img("image_b"), "seed": 2**64 - 5, "strength": 1.0}, [add_noise(T["image_b"], 2**64 - 5, 1.0)])

    # A 320x240 image with 73,551 colours: Pillow's histogram then drops a bit per channel (over
    # 65,536 entries). Too big to commit: both sides draw it from this formula, and the fixture
    # keeps a SHA-256 of the output's uint8 levels.
    yy, xx = np.mgrid[0:240, 0:320]
    big = np.stack([(xx * 7 + yy * 13) % 256, (xx * xx // 5 + yy * 3) % 256, ((xx * 5) ^ (yy * 11)) % 256], -1)
    big = torch.from_numpy(big.astype(np.uint8)).float().unsqueeze(0) / 255
    large = []
    for colors, dither in [(16, "none"), (64, "floyd-steinberg"), (7, "bayer-8")]:
        out = quantize(big, colors, dither)
        levels = (out * 255).round().to(torch.uint8).numpy().tobytes()
        large.append({"colors": colors, "dither": dither, "sha256": hashlib.sha256(levels).hexdigest()})

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "reference.safetensors"))
    meta = {
        "generated_by": "tools/parity/image_nodes_reference.py",
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                     "kornia": kornia.__version__, "pillow": PIL.__version__},
        "cases": cases,
        "large_quantize": large,
    }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{len(cases)} cases, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
