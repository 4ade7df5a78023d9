"""Reference fixtures for Weft's latent nodes (src/nodes/latent_ops.rs, latent_filters.rs,
latent_files.rs).

ComfyUI's formulas re-stated from comfy_extras/nodes_latent.py (LatentAdd, LatentSubtract,
LatentMultiply, LatentInterpolate, LatentBatch, LatentOperationTonemapReinhard,
LatentOperationSharpen, LatentApplyOperationCFG's pre-CFG function), comfy_extras/nodes_mask.py
(`composite`), nodes.py (LatentCrop, LatentFlip, LatentRotate, SaveLatent, LoadLatent),
comfy_extras/nodes_rebatch.py (LatentRebatch) and comfy/utils.py (`common_upscale`,
`repeat_to_batch_size`), on small seeded latents.

Writes tests/fixtures/latent/latent_nodes_ref.safetensors (inputs and outputs, f32; batch
indices as i64), comfy_written.latent (what SaveLatent writes) and old_format.latent (a file from
before the format marker, samples scaled by 0.18215). Run with /tmp/peer-venv/bin/python
(torch, safetensors).
"""
import json
import math
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "latent")


# ---------------------------------------------------------------- comfy/utils.py
def repeat_to_batch_size(tensor, batch_size, dim=0):
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    elif tensor.shape[dim] < batch_size:
        return tensor.repeat(dim * [1] + [math.ceil(batch_size / tensor.shape[dim])] + [1] * (len(tensor.shape) - 1 - dim)).narrow(dim, 0, batch_size)
    return tensor


def common_upscale(samples, width, height, upscale_method, crop):
    if crop == "center":
        old_width = samples.shape[-1]
        old_height = samples.shape[-2]
        old_aspect = old_width / old_height
        new_aspect = width / height
        x = 0
        y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        s = samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)
    else:
        s = samples
    return torch.nn.functional.interpolate(s, size=(height, width), mode=upscale_method)


# ---------------------------------------------------------------- nodes_latent.py
def reshape_latent_to(target_shape, latent):
    if latent.shape[1:] != target_shape[1:]:
        latent = common_upscale(latent, target_shape[3], target_shape[2], "bilinear", "center")
    return repeat_to_batch_size(latent, target_shape[0])


def latent_interpolate(s1, s2, ratio):
    s2 = reshape_latent_to(s1.shape, s2)
    m1 = torch.linalg.vector_norm(s1, dim=(1))
    m2 = torch.linalg.vector_norm(s2, dim=(1))
    s1 = torch.nan_to_num(s1 / m1)
    s2 = torch.nan_to_num(s2 / m2)
    t = (s1 * ratio + s2 * (1.0 - ratio))
    mt = torch.linalg.vector_norm(t, dim=(1))
    st = torch.nan_to_num(t / mt)
    return st * (m1 * ratio + m2 * (1.0 - ratio))


def latent_batch(s1, s2):
    if s1.shape[1:] != s2.shape[1:]:
        s2 = common_upscale(s2, s1.shape[3], s1.shape[2], "bilinear", "center")
    return torch.cat((s1, s2), dim=0)


def tonemap_reinhard(latent, multiplier):
    latent_vector_magnitude = (torch.linalg.vector_norm(latent, dim=(1)) + 0.0000000001)[:, None]
    normalized_latent = latent / latent_vector_magnitude
    mean = torch.mean(latent_vector_magnitude, dim=(1, 2, 3), keepdim=True)
    std = torch.std(latent_vector_magnitude, dim=(1, 2, 3), keepdim=True)
    top = (std * 5 + mean) * multiplier
    latent_vector_magnitude *= (1.0 / top)
    new_magnitude = latent_vector_magnitude / (latent_vector_magnitude + 1.0)
    new_magnitude *= top
    return normalized_latent * new_magnitude


def gaussian_kernel(kernel_size, sigma, device=None):
    x, y = torch.meshgrid(torch.linspace(-1, 1, kernel_size, device=device), torch.linspace(-1, 1, kernel_size, device=device), indexing="ij")
    d = torch.sqrt(x * x + y * y)
    g = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return g / g.sum()


def sharpen(latent, sharpen_radius, sigma, alpha):
    luminance = (torch.linalg.vector_norm(latent, dim=(1)) + 1e-6)[:, None]
    normalized_latent = latent / luminance
    channels = latent.shape[1]
    kernel_size = sharpen_radius * 2 + 1
    kernel = gaussian_kernel(kernel_size, sigma, device=luminance.device)
    center = kernel_size // 2
    kernel *= alpha * -10
    kernel[center, center] = kernel[center, center] - kernel.sum() + 1.0
    padded_image = torch.nn.functional.pad(normalized_latent, (sharpen_radius, sharpen_radius, sharpen_radius, sharpen_radius), 'reflect')
    sharpened = torch.nn.functional.conv2d(padded_image, kernel.repeat(channels, 1, 1).unsqueeze(1), padding=kernel_size // 2, groups=channels)[:, :, sharpen_radius:-sharpen_radius, sharpen_radius:-sharpen_radius]
    return luminance * sharpened


def pre_cfg(operation, cond, uncond):
    """LatentApplyOperationCFG's pre_cfg_function on conds_out = [cond, uncond]."""
    return operation(latent=(cond - uncond)) + uncond


# ---------------------------------------------------------------- nodes_mask.py
def composite(destination, source, x, y, mask=None, multiplier=8, resize_source=False):
    source = source.to(destination.device)
    if resize_source:
        source = torch.nn.functional.interpolate(source, size=(destination.shape[2], destination.shape[3]), mode="bilinear")
    source = repeat_to_batch_size(source, destination.shape[0])
    x = max(-source.shape[3] * multiplier, min(x, destination.shape[3] * multiplier))
    y = max(-source.shape[2] * multiplier, min(y, destination.shape[2] * multiplier))
    left, top = (x // multiplier, y // multiplier)
    right, bottom = (left + source.shape[3], top + source.shape[2],)
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device, copy=True)
        mask = torch.nn.functional.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])), size=(source.shape[2], source.shape[3]), mode="bilinear")
        mask = repeat_to_batch_size(mask, source.shape[0])
    visible_width, visible_height = (destination.shape[3] - left + min(0, x), destination.shape[2] - top + min(0, y),)
    mask = mask[:, :, :visible_height, :visible_width]
    inverse_mask = torch.ones_like(mask) - mask
    source_portion = mask * source[:, :, :visible_height, :visible_width]
    destination_portion = inverse_mask * destination[:, :, top:bottom, left:right]
    destination[:, :, top:bottom, left:right] = source_portion + destination_portion
    return destination


# ---------------------------------------------------------------- nodes.py
def latent_crop(samples, width, height, x, y):
    x = x // 8
    y = y // 8
    if x > (samples.shape[3] - 8):
        x = samples.shape[3] - 8
    if y > (samples.shape[2] - 8):
        y = samples.shape[2] - 8
    new_height = height // 8
    new_width = width // 8
    to_x = new_width + x
    to_y = new_height + y
    return samples[:, :, y:to_y, x:to_x]


# ---------------------------------------------------------------- nodes_rebatch.py
def get_batch(latents, list_ind, offset):
    samples = latents[list_ind]['samples']
    shape = samples.shape
    mask = latents[list_ind]['noise_mask'] if 'noise_mask' in latents[list_ind] else torch.ones((shape[0], 1, shape[2] * 8, shape[3] * 8), device='cpu')
    if mask.shape[0] < samples.shape[0]:
        mask = mask.repeat((shape[0] - 1) // mask.shape[0] + 1, 1, 1, 1)[:shape[0]]
    if 'batch_index' in latents[list_ind]:
        batch_inds = latents[list_ind]['batch_index']
    else:
        batch_inds = [x + offset for x in range(shape[0])]
    return samples, mask, batch_inds


def get_slices(indexable, num, batch_size):
    slices = []
    for i in range(num):
        slices.append(indexable[i * batch_size:(i + 1) * batch_size])
    if num * batch_size < len(indexable):
        return slices, indexable[num * batch_size:]
    else:
        return slices, None


def slice_batch(batch, num, batch_size):
    result = [get_slices(x, num, batch_size) for x in batch]
    return list(zip(*result))


def cat_batch(batch1, batch2):
    if batch1[0] is None:
        return batch2
    return [torch.cat((b1, b2)) if torch.is_tensor(b1) else b1 + b2 for b1, b2 in zip(batch1, batch2)]


def rebatch(latents, batch_size):
    output_list = []
    current_batch = (None, None, None)
    processed = 0
    for i in range(len(latents)):
        next_batch = get_batch(latents, i, processed)
        processed += len(next_batch[2])
        if current_batch[0] is None:
            current_batch = next_batch
        elif next_batch[0].shape[-1] != current_batch[0].shape[-1] or next_batch[0].shape[-2] != current_batch[0].shape[-2]:
            sliced, _ = slice_batch(current_batch, 1, batch_size)
            output_list.append({'samples': sliced[0][0], 'noise_mask': sliced[1][0], 'batch_index': sliced[2][0]})
            current_batch = next_batch
        else:
            current_batch = cat_batch(current_batch, next_batch)
        if current_batch[0].shape[0] > batch_size:
            num = current_batch[0].shape[0] // batch_size
            sliced, remainder = slice_batch(current_batch, num, batch_size)
            for i in range(num):
                output_list.append({'samples': sliced[0][i], 'noise_mask': sliced[1][i], 'batch_index': sliced[2][i]})
            current_batch = remainder
    if current_batch[0] is not None:
        sliced, _ = slice_batch(current_batch, 1, batch_size)
        output_list.append({'samples': sliced[0][0], 'noise_mask': sliced[1][0], 'batch_index': sliced[2][0]})
    for s in output_list:
        if s['noise_mask'].mean() == 1.0:
            del s['noise_mask']
    return output_list


# ---------------------------------------------------------------- fixtures
def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(20261205)
    r = lambda *shape: torch.randn(*shape, generator=g)
    t = {
        "a": r(2, 4, 8, 12),
        "c": r(1, 4, 6, 10),
        "single1": r(1, 4, 8, 12),
        "single2": r(1, 4, 8, 12),
        "a4": r(4, 4, 8, 12),
        "b4": r(4, 4, 8, 12),
        "big": r(1, 4, 12, 16),
        "mask": torch.rand(1, 20, 30, generator=g),
        "half_mask": torch.full((1, 1, 64, 96), 0.5),
    }
    a, c = t["a"], t["c"]
    t["add"] = a + reshape_latent_to(a.shape, c)
    t["subtract"] = a - reshape_latent_to(a.shape, c)
    t["multiply"] = a * 1.7
    t["interpolate_single"] = latent_interpolate(t["single1"], t["single2"], 0.3)
    t["interpolate_four"] = latent_interpolate(t["a4"], t["b4"], 0.7)
    t["batch"] = latent_batch(a, c)
    t["composite_mask"] = composite(a.clone(), c, 16, 8, t["mask"], 8, False)
    t["composite_resize"] = composite(a.clone(), c, 0, 0, None, 8, True)
    t["composite_edge"] = composite(a.clone(), c, 64, 40, None, 8, False)
    t["crop"] = latent_crop(a, 64, 40, 16, 8).contiguous()
    t["crop_clamped"] = latent_crop(a, 128, 128, 200, 200).contiguous()
    t["flip_x"] = torch.flip(a, dims=[2])
    t["flip_y"] = torch.flip(a, dims=[3])
    for k, name in [(1, "rotate_90"), (2, "rotate_180"), (3, "rotate_270")]:
        t[name] = torch.rot90(a, k=k, dims=[3, 2]).contiguous()
    t["tonemap"] = tonemap_reinhard(a.clone(), 1.3)
    t["sharpen"] = sharpen(a, 3, 1.0, 0.5)
    t["sharpen_default"] = sharpen(t["big"], 9, 1.0, 0.1)
    t["cfg_cond"] = r(2, 4, 8, 12)
    t["cfg_uncond"] = r(2, 4, 8, 12)
    t["cfg_tonemap"] = pre_cfg(lambda latent: tonemap_reinhard(latent, 1.0), t["cfg_cond"], t["cfg_uncond"])

    # RebatchLatents([a, a4 with a half mask, c], batch_size=3).
    out = rebatch([{"samples": a}, {"samples": t["a4"], "noise_mask": t["half_mask"]}, {"samples": c}], 3)
    for i, item in enumerate(out):
        t[f"rebatch_{i}_samples"] = item["samples"].contiguous()
        t[f"rebatch_{i}_index"] = torch.tensor(item["batch_index"], dtype=torch.int64)
        if "noise_mask" in item:
            t[f"rebatch_{i}_mask"] = item["noise_mask"].contiguous()
    t["rebatch_count"] = torch.tensor([len(out)], dtype=torch.int64)

    save_file({k: v.contiguous().clone() for k, v in t.items()}, os.path.join(OUT, "latent_nodes_ref.safetensors"))

    # SaveLatent, as nodes.py writes it (comfy.utils.save_torch_file is safetensors' save_file).
    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 64, "batch_size": 2}}}
    save_file({"latent_tensor": a, "latent_format_version_0": torch.tensor([])},
              os.path.join(OUT, "comfy_written.latent"), metadata={"prompt": json.dumps(prompt)})
    # A file from before the marker: LoadLatent multiplies by 1 / 0.18215.
    save_file({"latent_tensor": a * 0.18215}, os.path.join(OUT, "old_format.latent"))
    t_old = (a * 0.18215).float() * (1.0 / 0.18215)
    save_file({"loaded_old": t_old}, os.path.join(OUT, "old_format_loaded.safetensors"))
    with open(os.path.join(OUT, "latent_nodes_ref.json"), "w") as f:
        json.dump({"torch": torch.__version__, "rebatch_sizes": [list(o["samples"].shape) for o in out]}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
