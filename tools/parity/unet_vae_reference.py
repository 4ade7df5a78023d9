"""Reference fixtures for Weft's UNet/VAE parity tests (unet/tests/).

Builds TINY diffusers `UNet2DConditionModel`s (mirroring SD1, SD2-v, SDXL base and refiner) and a tiny
`AutoencoderKL`, fills every weight with the shared synthetic generator (scripts/synth.py), and writes
small inputs/outputs to unet/tests/fixtures/:

- unet_<name>.safetensors: x, t, context, [pooled, size_values], out (plain forward), control_down_<k>,
  control_mid, out_control (forward with ControlNet residuals)
- vae_tiny.safetensors: image, mean, logvar, z, decoded, decoded_tiled (ComfyUI tiled_scale
  re-implemented below), encoded_tiled
- keymap_<name>.json / keymap_vae_tiny.json: [ldm_key, diffusers_key, shape] for every tensor. The LDM
  names come from the inverse map below, and are validated here: diffusers' own
  `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` must turn them back into exactly the
  diffusers state dict.
- unet_config_<name>.json / vae_config_tiny.json: the diffusers config.json of each tiny model
- tiny_ldm.ckpt / tiny_plain.pt: tiny torch pickles (f16/bf16/f32 synthetic tensors) for the .ckpt reader
- synth_expected.txt: a few generator values checked bit-exactly by crates/weft-engine/src/synth.rs.

Run: /opt/refpy/bin/python unet/scripts/unet_vae_reference.py   (deterministic; CPU; seconds)
"""
import itertools
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from synth import fill_synth, synth  # noqa: E402

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "unet")

# name -> (diffusers kwargs, pooled dim or None, number of size values)
UNETS = {
    # SD1-like: conv projection, cross-attention on the first levels, 8 heads.
    "sd1_tiny": (dict(
        block_out_channels=(32, 64, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48, attention_head_dim=8, use_linear_projection=False,
    ), None, 0),
    # SD2-v-like: linear projection, 64-wide heads (diffusers' attention_head_dim = head counts).
    "sd2_tiny": (dict(
        block_out_channels=(64, 128, 128), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=[1, 2, 2], use_linear_projection=True,
    ), None, 0),
    # SDXL-base-like: no attention on level 0, depth 2 on the last level and the mid block,
    # text_time add embedding from pooled(32) + 6 x 256.
    "sdxl_tiny": (dict(
        block_out_channels=(32, 64, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=[1, 1, 2],
        cross_attention_dim=64, attention_head_dim=[1, 1, 2], use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=32 + 6 * 256,
    ), 32, 6),
    # Refiner-like: 4 levels, attention (depth 2) on the two middle levels and mid, context = pooled
    # width (bigG only), add embedding from pooled(32) + 5 x 256 (sizes, crop, aesthetic score).
    "refiner_tiny": (dict(
        block_out_channels=(32, 64, 128, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=2,
        cross_attention_dim=32, attention_head_dim=[1, 1, 2, 2], use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=32 + 5 * 256,
    ), 32, 5),
}

RESNET_TO_LDM = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                 ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def unet_diffusers_to_ldm(key: str, cfg) -> str:
    """Inverse of convert_ldm_unet_checkpoint, written independently of the Rust map."""
    lpb = cfg["layers_per_block"]
    up_has_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    p = key.split(".")

    def resnet(rest):
        for d, l in RESNET_TO_LDM:
            if rest.startswith(d + "."):
                return l + rest[len(d):]
        raise KeyError(key)

    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head = ".".join(p[:-1])
    if head in simple:
        return simple[head] + "." + p[-1]
    rest = ".".join(p[4:])
    if p[0] == "down_blocks":
        i, kind, j = int(p[1]), p[2], int(p[3])
        if kind == "resnets":
            return f"input_blocks.{(lpb + 1) * i + j + 1}.0.{resnet(rest)}"
        if kind == "attentions":
            return f"input_blocks.{(lpb + 1) * i + j + 1}.1.{rest}"
        if kind == "downsamplers":
            return f"input_blocks.{(lpb + 1) * (i + 1)}.0.op.{'.'.join(p[5:])}"
    if p[0] == "mid_block":
        kind, j = p[1], int(p[2])
        rest = ".".join(p[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{resnet(rest)}"
        return f"middle_block.1.{rest}"
    if p[0] == "up_blocks":
        i, kind, j = int(p[1]), p[2], int(p[3])
        if kind == "resnets":
            return f"output_blocks.{(lpb + 1) * i + j}.0.{resnet(rest)}"
        if kind == "attentions":
            return f"output_blocks.{(lpb + 1) * i + j}.1.{rest}"
        if kind == "upsamplers":
            idx = 2 if up_has_attn[i] else 1
            return f"output_blocks.{(lpb + 1) * i + lpb}.{idx}.conv.{'.'.join(p[5:])}"
    raise KeyError(key)


def vae_diffusers_to_ldm(key: str, n_levels: int) -> str:
    p = key.split(".")
    simple = {"conv_norm_out": "norm_out"}
    if p[0] in ("quant_conv", "post_quant_conv"):
        return key
    side = p[0]
    if p[1] in ("conv_in", "conv_out"):
        return key
    if p[1] in simple:
        return f"{side}.{simple[p[1]]}.{p[2]}"

    def resnet(rest):
        return rest.replace("conv_shortcut", "nin_shortcut")

    if p[1] == "down_blocks":
        i, kind = int(p[2]), p[3]
        if kind == "resnets":
            return f"encoder.down.{i}.block.{p[4]}.{resnet('.'.join(p[5:]))}"
        return f"encoder.down.{i}.downsample.conv.{p[-1]}"
    if p[1] == "up_blocks":
        i, kind = int(p[2]), p[3]
        b = n_levels - 1 - i
        if kind == "resnets":
            return f"decoder.up.{b}.block.{p[4]}.{resnet('.'.join(p[5:]))}"
        return f"decoder.up.{b}.upsample.conv.{p[-1]}"
    if p[1] == "mid_block":
        if p[2] == "resnets":
            return f"{side}.mid.block_{int(p[3]) + 1}.{resnet('.'.join(p[4:]))}"
        names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
        sub = p[4]
        return f"{side}.mid.attn_1.{names[sub]}.{p[-1]}"
    raise KeyError(key)


def public_config(model):
    """The model's config.json content without diffusers' private (and unordered) bookkeeping."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items() if not k.startswith("_")}


def check_unet_keymap(name, model):
    cfg = dict(model.config)
    sd = model.state_dict()
    ldm = {}
    rows = []
    for k, v in sd.items():
        lk = unet_diffusers_to_ldm(k, cfg)
        assert lk not in ldm, lk
        ldm["model.diffusion_model." + lk] = v
        rows.append([lk, k, list(v.shape)])
    back = convert_ldm_unet_checkpoint(ldm, cfg)
    assert set(back.keys()) == set(sd.keys()), set(back.keys()) ^ set(sd.keys())
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    with open(os.path.join(OUT, f"keymap_{name}.json"), "w") as f:
        json.dump(sorted(rows), f, indent=0)
    print(f"{name}: ldm key map round-trips through diffusers ({len(rows)} tensors)")


def check_vae_keymap(model):
    cfg = dict(model.config)
    n = len(cfg["down_block_types"])
    sd = model.state_dict()
    ldm = {}
    rows = []
    for k, v in sd.items():
        lk = vae_diffusers_to_ldm(k, n)
        shape = list(v.shape)
        if ".mid.attn_1." in lk and lk.split(".")[-2] in ("q", "k", "v", "proj_out") and v.dim() == 2:
            v = v[:, :, None, None]  # LDM stores these as 1x1 convs
            shape = list(v.shape)
        assert lk not in ldm, lk
        ldm["first_stage_model." + lk] = v
        rows.append([lk, k, shape])
    back = convert_ldm_vae_checkpoint(ldm, cfg)
    assert set(back.keys()) == set(sd.keys()), set(back.keys()) ^ set(sd.keys())
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    with open(os.path.join(OUT, "keymap_vae_tiny.json"), "w") as f:
        json.dump(sorted(rows), f, indent=0)
    print(f"vae_tiny: ldm key map round-trips through diffusers ({len(rows)} tensors)")


def unet_fixture(name, kwargs, pooled_dim, n_sizes):
    torch.manual_seed(0)
    model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **kwargs)
    model.eval()
    fill_synth(model)
    check_unet_keymap(name, model)
    with open(os.path.join(OUT, f"unet_config_{name}.json"), "w") as f:
        json.dump(public_config(model), f, indent=1, sort_keys=True)
    ctx_dim = kwargs["cross_attention_dim"]
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([999.0, 10.5])
    context = torch.randn(2, 5, ctx_dim, generator=g)
    tensors = {"x": x, "t": t, "context": context}
    added = None
    if pooled_dim is not None:
        pooled = torch.randn(2, pooled_dim, generator=g)
        if n_sizes == 6:
            sizes = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [1024.0, 768.0, 16.0, 8.0, 1024.0, 1024.0]])
        else:
            sizes = torch.tensor([[64.0, 64.0, 0.0, 0.0, 6.0], [1024.0, 768.0, 16.0, 8.0, 2.5]])
        tensors["pooled"] = pooled
        tensors["size_values"] = sizes
        added = {"text_embeds": pooled, "time_ids": sizes}
    with torch.no_grad():
        out = model(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        # Shapes of every skip (conv_in + each resnet/attention + each downsampler) via hooks-free
        # bookkeeping: run the down path manually is overkill; derive from the config instead.
        ch = kwargs["block_out_channels"]
        lpb = kwargs["layers_per_block"]
        shapes = [(ch[0], 8)]
        size = 8
        for i, c in enumerate(ch):
            for _ in range(lpb):
                shapes.append((c, size))
            if i + 1 < len(ch):
                size = (size + 1) // 2
                shapes.append((c, size))
        down = [0.5 * torch.randn(2, c, s, s, generator=g) for c, s in shapes]
        mid = 0.5 * torch.randn(2, ch[-1], size, size, generator=g)
        out_c = model(x, t, encoder_hidden_states=context, added_cond_kwargs=added,
                      down_block_additional_residuals=tuple(d.clone() for d in down),
                      mid_block_additional_residual=mid.clone()).sample
    tensors["out"] = out
    tensors["out_control"] = out_c
    for k, d in enumerate(down):
        tensors[f"control_down_{k}"] = d
    tensors["control_mid"] = mid
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, f"unet_{name}.safetensors"))
    print(f"{name}: out |max| {out.abs().max():.4f}, control changes by {(out_c - out).abs().max():.4f}")


def tiled_scale(samples, function, tile, overlap, scale, out_channels, downscale):
    """ComfyUI comfy/utils.py tiled_scale_multidim (2-D, integer scale), re-implemented."""
    def get_scale(v):
        return v / scale if downscale else v * scale

    out_hw = [round(get_scale(s)) for s in samples.shape[2:]]
    output = torch.empty([samples.shape[0], out_channels] + out_hw)
    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        if all(s.shape[d + 2] <= tile[d] for d in range(2)):
            output[b:b + 1] = function(s)
            continue
        out = torch.zeros([1, out_channels] + out_hw)
        out_div = torch.zeros([1, out_channels] + out_hw)
        positions = [range(0, s.shape[d + 2] - overlap, tile[d] - overlap) if s.shape[d + 2] > tile[d] else [0]
                     for d in range(2)]
        for it in itertools.product(*positions):
            s_in = s
            upscaled = []
            for d in range(2):
                pos = max(0, min(s.shape[d + 2] - overlap, it[d]))
                ln = min(tile[d], s.shape[d + 2] - pos)
                s_in = s_in.narrow(d + 2, pos, ln)
                upscaled.append(round(get_scale(pos)))
            ps = function(s_in)
            mask = torch.ones_like(ps)
            feather = round(get_scale(overlap))
            for d in range(2, 4):
                if feather >= mask.shape[d]:
                    continue
                for t in range(feather):
                    a = (t + 1) / feather
                    mask.narrow(d, t, 1).mul_(a)
                    mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(a)
            o = out
            o_d = out_div
            for d in range(2):
                o = o.narrow(d + 2, upscaled[d], mask.shape[d + 2])
                o_d = o_d.narrow(d + 2, upscaled[d], mask.shape[d + 2])
            o.add_(ps * mask)
            o_d.add_(mask)
        output[b:b + 1] = out / out_div
    return output


def vae_fixture():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32, layers_per_block=2,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        sample_size=32,
    )
    vae.eval()
    fill_synth(vae)
    check_vae_keymap(vae)
    with open(os.path.join(OUT, "vae_config_tiny.json"), "w") as f:
        json.dump(public_config(vae), f, indent=1, sort_keys=True)
    g = torch.Generator().manual_seed(99)
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        decoded = vae.decode(z).sample
        decoded_tiled = tiled_scale(z, lambda a: vae.decode(a).sample, (4, 4), 2, 4, 3, False)
        encoded_tiled = tiled_scale(image, lambda a: vae.encode(a).latent_dist.mean, (16, 16), 4, 4, 4, True)
    save_file({"image": image, "mean": dist.mean.contiguous(), "logvar": dist.logvar.contiguous(), "z": z,
               "decoded": decoded, "decoded_tiled": decoded_tiled, "encoded_tiled": encoded_tiled},
              os.path.join(OUT, "vae_tiny.safetensors"))
    print(f"vae_tiny: tiled vs plain decode differ by {(decoded_tiled - decoded).abs().max():.4f}")


def pickle_fixtures():
    """Two tiny torch zip pickles for the .ckpt reader: LDM-style (weights under "state_dict", f16 and
    bf16 storages, a non-tensor entry) and a plain state dict."""
    a = synth("first_stage_model.a", (2, 3)).half()
    b = synth("model.diffusion_model.b", (4,)).bfloat16()
    torch.save({"state_dict": {"first_stage_model.a": a, "model.diffusion_model.b": b}, "global_step": 5},
               os.path.join(OUT, "tiny_ldm.ckpt"))
    torch.save({"w": synth("w", (3, 2))}, os.path.join(OUT, "tiny_plain.pt"))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    v = torch.cat([synth("conv_in.weight", (2, 3)).flatten(), synth("conv_in.bias", (3,)),
                   synth("norm.weight", (2,))])
    with open(os.path.join(OUT, "synth_expected.txt"), "w") as f:
        # f32 bit patterns, so the Rust check is exact.
        bits = v.numpy().view("uint32").tolist()
        f.write("[" + ", ".join(f"0x{b:08x}_u32" for b in bits) + "]\n")
    for name, (kwargs, pooled, n) in UNETS.items():
        unet_fixture(name, kwargs, pooled, n)
    vae_fixture()
    pickle_fixtures()


if __name__ == "__main__":
    main()
