"""Reference fixtures for the UNet's concat channels (crates/weft-engine/src/diffusion/concat.rs)
and ModelSamplingContinuousEDM (crates/weft-engine/src/sampling/model_sampling.rs,
LatentFormat::sdxl_playground_2_5).

Run: `/tmp/peer-venv/bin/python tools/parity/cond_patches_reference.py` (torch, safetensors).
Writes tests/fixtures/sampling/cond_patches_reference.safetensors.

Transcribed from ComfyUI: comfy/model_base.py BaseModel.concat_cond (concat_keys ("mask",
"masked_image") of inpainting models) and IP2P.concat_cond; comfy/utils.py common_upscale and
resize_to_batch_size; comfy/samplers.py's process_latent_in of the sampler's latent;
comfy/model_sampling.py ModelSamplingContinuousEDM, EPS, V_PREDICTION, EDM;
comfy/latent_formats.py SDXL, SDXL_Playground_2_5. Inputs are seeded random tensors.
"""
import math
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "sampling", "cond_patches_reference.safetensors")


# ---------------------------------------------------------------- comfy/utils.py
def common_upscale(samples, width, height, upscale_method, crop):
    if crop == "center":
        old_width, old_height = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_width / old_height, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        s = samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)
    else:
        s = samples
    return torch.nn.functional.interpolate(s, size=(height, width), mode=upscale_method)


def resize_to_batch_size(tensor, batch_size):
    in_batch_size = tensor.shape[0]
    if in_batch_size == batch_size:
        return tensor
    if batch_size <= 1:
        return tensor[:batch_size]
    output = torch.empty([batch_size] + list(tensor.shape)[1:], dtype=tensor.dtype, device=tensor.device)
    if batch_size < in_batch_size:
        scale = (in_batch_size - 1) / (batch_size - 1)
        for i in range(batch_size):
            output[i] = tensor[min(round(i * scale), in_batch_size - 1)]
    else:
        scale = in_batch_size / batch_size
        for i in range(batch_size):
            output[i] = tensor[min(math.floor((i + 0.5) * scale), in_batch_size - 1)]
    return output


# ---------------------------------------------------------------- comfy/latent_formats.py
SD15_SCALE = 0.18215


def playground_in(latent):
    mean = torch.tensor([-1.6574, 1.886, -1.383, 2.5155]).view(1, 4, 1, 1)
    std = torch.tensor([8.4927, 5.9022, 6.5498, 5.2299]).view(1, 4, 1, 1)
    return (latent - mean) * 0.5 / std


def playground_out(latent):
    mean = torch.tensor([-1.6574, 1.886, -1.383, 2.5155]).view(1, 4, 1, 1)
    std = torch.tensor([8.4927, 5.9022, 6.5498, 5.2299]).view(1, 4, 1, 1)
    return latent * std / 0.5 + mean


# ---------------------------------------------------------------- comfy/model_base.py
def blank_inpaint_image_like(latent_image):
    blank_image = torch.ones_like(latent_image)
    blank_image[:, 0] *= 0.8223
    blank_image[:, 1] *= -0.6876
    blank_image[:, 2] *= 0.6364
    blank_image[:, 3] *= 0.1380
    return blank_image


def inpaint_concat_cond(noise, latent_image, denoise_mask=None, concat_mask=None, concat_latent_image=None):
    """BaseModel.concat_cond with concat_keys ("mask", "masked_image"); latent_image is the
    sampler's, already process_latent_in'd; denoise_mask the sampler's prepare_mask'd mask."""
    cond_concat = []
    denoise_mask = concat_mask if concat_mask is not None else denoise_mask
    if concat_latent_image is None:
        concat_latent_image = latent_image
    else:
        concat_latent_image = concat_latent_image * SD15_SCALE
    if concat_latent_image.shape[1:] != noise.shape[1:]:
        concat_latent_image = common_upscale(concat_latent_image, noise.shape[-1], noise.shape[-2], "bilinear", "center")
    concat_latent_image = resize_to_batch_size(concat_latent_image, noise.shape[0])
    if denoise_mask is not None:
        if len(denoise_mask.shape) == len(noise.shape):
            denoise_mask = denoise_mask[:, :1]
        num_dim = noise.ndim - 2
        denoise_mask = denoise_mask.reshape((-1, 1) + tuple(denoise_mask.shape[-num_dim:]))
        if denoise_mask.shape[-2:] != noise.shape[-2:]:
            denoise_mask = common_upscale(denoise_mask, noise.shape[-1], noise.shape[-2], "bilinear", "center")
        denoise_mask = resize_to_batch_size(denoise_mask.round(), noise.shape[0])
    for ck in ("mask", "masked_image"):
        if denoise_mask is not None:
            cond_concat.append(denoise_mask if ck == "mask" else concat_latent_image)
        else:
            cond_concat.append(torch.ones_like(noise)[:, :1] if ck == "mask" else blank_inpaint_image_like(noise))
    return torch.cat(cond_concat, dim=1)


def ip2p_concat_cond(noise, concat_latent_image=None):
    image = concat_latent_image
    if image is None:
        image = torch.zeros_like(noise)
    if image.shape[1:] != noise.shape[1:]:
        image = common_upscale(image, noise.shape[-1], noise.shape[-2], "bilinear", "center")
    return resize_to_batch_size(image, noise.shape[0])


def prepare_mask(noise_mask, shape):
    """comfy/sampler_helpers.py prepare_mask."""
    noise_mask = torch.nn.functional.interpolate(noise_mask.reshape((-1, 1, noise_mask.shape[-2], noise_mask.shape[-1])), size=(shape[2], shape[3]), mode="bilinear")
    noise_mask = torch.cat([noise_mask] * shape[1], dim=1)
    return resize_to_batch_size(noise_mask, shape[0])


# ---------------------------------------------------------------- comfy/model_sampling.py
class ContinuousEDM:
    def __init__(self, sigma_min, sigma_max, sigma_data, kind):
        self.sigma_data = sigma_data
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.kind = kind

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return 0.25 * sigma.log()

    def sigma(self, timestep):
        return (timestep / 0.25).exp()

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        percent = 1.0 - percent
        log_sigma_min = math.log(self.sigma_min)
        return math.exp((math.log(self.sigma_max) - log_sigma_min) * percent + log_sigma_min)

    def calculate_input(self, sigma, noise):
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sd = self.sigma_data
        if self.kind == "eps":
            return model_input - model_output * sigma
        if self.kind == "v":
            return model_input * sd ** 2 / (sigma ** 2 + sd ** 2) - model_output * sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5
        return model_input * sd ** 2 / (sigma ** 2 + sd ** 2) + model_output * sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5


def main():
    g = torch.Generator().manual_seed(1717)
    out = {}
    noise = torch.randn(2, 4, 6, 10, generator=g)
    latent = torch.randn(2, 4, 6, 10, generator=g) * SD15_SCALE
    out["concat/noise"], out["concat/latent"] = noise, latent
    # InpaintModelConditioning's outputs: a 48x72 image latent (other aspect) and its pixel mask.
    image = torch.randn(1, 4, 6, 9, generator=g)
    # Smooth values: none lands on a rounding tie after the resize.
    pixel_mask = torch.rand(1, 1, 48, 72, generator=g)
    noise_mask = torch.rand(1, 1, 20, 32, generator=g)
    out["concat/image"], out["concat/pixel_mask"], out["concat/noise_mask"] = image, pixel_mask, noise_mask
    prepared = prepare_mask(noise_mask, noise.shape)
    out["concat/prepared_noise_mask"] = prepared
    out["concat/inpaint_entry"] = inpaint_concat_cond(noise, latent, prepared, pixel_mask, image)
    out["concat/inpaint_entry_no_mask"] = inpaint_concat_cond(noise, latent, None, pixel_mask, image)
    out["concat/inpaint_noise_mask"] = inpaint_concat_cond(noise, latent, prepared)
    out["concat/inpaint_image_only"] = inpaint_concat_cond(noise, latent, None, None, image)
    out["concat/inpaint_nothing"] = inpaint_concat_cond(noise, latent)
    out["concat/ip2p_image"] = ip2p_concat_cond(noise, image)
    out["concat/ip2p_nothing"] = ip2p_concat_cond(noise)
    batch5 = torch.randn(5, 4, 3, 3, generator=g)
    out["batch/in"] = batch5
    for n in (1, 2, 3, 7):
        out[f"batch/{n}"] = resize_to_batch_size(batch5, n)

    # ModelSamplingContinuousEDM's three SD-relevant variants at the node's defaults and others.
    x = torch.randn(1, 4, 5, 5, generator=g)
    model_out = torch.randn(1, 4, 5, 5, generator=g)
    out["edm/x"], out["edm/out"] = x, model_out
    for name, (smin, smax, sd, kind) in {
        "v_prediction": (0.002, 120.0, 1.0, "v"),
        "edm": (0.002, 120.0, 0.5, "edm"),
        "eps": (0.03, 14.6, 1.0, "eps"),
    }.items():
        ms = ContinuousEDM(smin, smax, sd, kind)
        out[f"edm/{name}/sigmas"] = ms.sigmas
        sig = torch.tensor([80.0, 3.3, 0.05])
        out[f"edm/{name}/timestep"] = ms.timestep(sig)
        out[f"edm/{name}/sigma"] = ms.sigma(torch.tensor([1.2, -0.4, -1.5]))
        out[f"edm/{name}/percent"] = torch.tensor([ms.percent_to_sigma(p) for p in (0.0, 0.25, 0.5, 0.9, 1.0)], dtype=torch.float64)
        s = torch.tensor(2.7)
        out[f"edm/{name}/input"] = ms.calculate_input(s, x)
        out[f"edm/{name}/denoised"] = ms.calculate_denoised(s, model_out, x)
    out["playground/in"] = playground_in(x)
    out["playground/out"] = playground_out(x)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in out.items()}, OUT, metadata={"torch_version": torch.__version__})
    print(f"wrote {len(out)} tensors to {OUT}")


if __name__ == "__main__":
    main()
