"""Reference fixtures for Weft's ControlNet and T2I-Adapter parity tests (tests/engine/controlnet_parity.rs).

Builds TINY diffusers `ControlNetModel`s for the tiny SD1 and SDXL test UNets of unet_vae_reference.py (plus an
SDXL "mid"-style ControlNet with reduced transformer depth) and tiny diffusers `T2IAdapter`s (SD1 full, SD1 light,
SDXL full), fills every weight with the shared synthetic generator (synth.py), and writes small inputs/outputs to
tests/fixtures/controlnet/:

- controlnet_<name>.safetensors: x, t, context, [pooled, size_values], hint, down_<k>, mid (ControlNet residuals at
  conditioning scale 1), out_control (one UNet forward with down_block_additional_residuals /
  mid_block_additional_residual).
- keymap_controlnet_<name>.json: [ldm_key, diffusers_key, shape] for every ControlNet tensor. The LDM names come from
  the inverse map below and are validated here: diffusers' own `convert_controlnet_checkpoint` must turn a
  `control_model.`-prefixed LDM copy back into exactly the diffusers state dict. diffusers' converter does not map
  `label_emb` (it never copies `add_embedding` for SDXL ControlNets), so those keys are checked against diffusers'
  UNet table (`DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]`) instead.
- controlnet_config_<name>.json: the ControlNet's diffusers config.json.
- adapter_<name>.safetensors: hint, feature_<k> (the adapter's outputs), out_adapter (one UNet forward with
  down_intrablock_additional_residuals = features * STRENGTH, diffusers' T2I-Adapter injection, which for these
  layouts adds at the same places ComfyUI's T2IAdapter control does).
- keymap_adapter_<name>.json: [tencentarc_key, diffusers_key, shape]; the TencentARC (ComfyUI) names are the inverse of
  ComfyUI's `load_t2i_adapter` diffusers -> ComfyUI renaming.
- adapter_light_sd1_tiny.pth: that adapter's weights under TencentARC names as a torch zip pickle, for the .pth path.

Run: /opt/refpy/bin/python tools/parity/controlnet_reference.py   (deterministic; CPU; seconds)

The union ControlNet (ControlNet++) fixture comes from controlnet_union_reference.py, which reuses this script's helpers.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from synth import fill_synth  # noqa: E402
from unet_vae_reference import UNETS, public_config, unet_diffusers_to_ldm  # noqa: E402

from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    DIFFUSERS_TO_LDM_MAPPING,
    convert_controlnet_checkpoint,
)

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "controlnet")
HINT_CHANNELS = (16, 32, 96, 256)
STRENGTH = 0.75

# ControlNet name -> (tiny UNet it controls, overrides of the ControlNet config)
CONTROLNETS = {
    "sd1_tiny": ("sd1_tiny", {}),
    "sdxl_tiny": ("sdxl_tiny", {}),
    # Like diffusers' controlnet-canny-sdxl-1.0-mid/small: fewer transformer blocks than the UNet (mid block 1).
    "sdxl_mid_tiny": ("sdxl_tiny", {"transformer_layers_per_block": [0, 1, 1]}),
}

# Adapter name -> (tiny UNet, T2IAdapter kwargs)
ADAPTERS = {
    "full_sd1_tiny": ("sd1_tiny", dict(in_channels=3, channels=[32, 64, 64], num_res_blocks=2,
                                       downscale_factor=8, adapter_type="full_adapter")),
    "light_sd1_tiny": ("sd1_tiny", dict(in_channels=3, channels=[32, 64], num_res_blocks=2,
                                        downscale_factor=8, adapter_type="light_adapter")),
    "xl_sdxl_tiny": ("sdxl_tiny", dict(in_channels=3, channels=[32, 64, 128, 128], num_res_blocks=2,
                                       downscale_factor=16, adapter_type="full_adapter_xl")),
}


def controlnet_diffusers_to_ldm(key: str, cfg) -> str:
    """Inverse of convert_controlnet_checkpoint (written independently of the Rust map)."""
    p = key.split(".")
    if p[0] == "controlnet_cond_embedding":
        if p[1] == "conv_in":
            return f"input_hint_block.0.{p[-1]}"
        if p[1] == "conv_out":
            return f"input_hint_block.{2 * (2 * (len(HINT_CHANNELS) - 1) + 1)}.{p[-1]}"
        return f"input_hint_block.{2 * (int(p[2]) + 1)}.{p[-1]}"
    if p[0] == "controlnet_down_blocks":
        return f"zero_convs.{p[1]}.0.{p[-1]}"
    if p[0] == "controlnet_mid_block":
        return f"middle_block_out.0.{p[-1]}"
    # The shared encoder names like the UNet's; ControlNet configs have no up blocks.
    return unet_diffusers_to_ldm(key, {**cfg, "up_block_types": []})


def check_controlnet_keymap(name, model):
    cfg = dict(model.config)
    sd = model.state_dict()
    ldm = {}
    rows = []
    for k, v in sd.items():
        lk = controlnet_diffusers_to_ldm(k, cfg)
        assert "control_model." + lk not in ldm, lk
        ldm["control_model." + lk] = v
        rows.append([lk, k, list(v.shape)])
    back = convert_controlnet_checkpoint(ldm, cfg)
    back = {k: v for k, v in back.items() if v is not None}
    # diffusers' converter drops label_emb; check those names against its UNet table.
    add_table = DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]
    for k in sd:
        if k.startswith("add_embedding."):
            assert add_table[k] == controlnet_diffusers_to_ldm(k, cfg), k
            back[k] = sd[k]
    assert set(back.keys()) == set(sd.keys()), set(back.keys()) ^ set(sd.keys())
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    with open(os.path.join(OUT, f"keymap_controlnet_{name}.json"), "w") as f:
        json.dump(sorted(rows), f, indent=0)
    print(f"controlnet {name}: ldm key map round-trips through diffusers ({len(rows)} tensors)")


def tiny_unet(unet_name):
    kwargs, pooled_dim, n_sizes = UNETS[unet_name]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **kwargs)
    unet.eval()
    fill_synth(unet)
    return unet, kwargs, pooled_dim, n_sizes


def inputs(kwargs, pooled_dim, n_sizes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([999.0, 10.5])
    context = torch.randn(2, 5, kwargs["cross_attention_dim"], generator=g)
    hint = torch.rand(2, 3, 64, 64, generator=g)
    tensors = {"x": x, "t": t, "context": context, "hint": hint}
    added = None
    if pooled_dim is not None:
        pooled = torch.randn(2, pooled_dim, generator=g)
        sizes = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [1024.0, 768.0, 16.0, 8.0, 1024.0, 1024.0]])
        assert n_sizes == 6
        tensors["pooled"] = pooled
        tensors["size_values"] = sizes
        added = {"text_embeds": pooled, "time_ids": sizes}
    return tensors, added


def controlnet_fixture(name, unet_name, overrides):
    unet, kwargs, pooled_dim, n_sizes = tiny_unet(unet_name)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    if overrides:
        cfg = {k: v for k, v in dict(cn.config).items() if not k.startswith("_")}
        cfg.update(overrides)
        cn = ControlNetModel(**cfg)
    cn.eval()
    fill_synth(cn)
    check_controlnet_keymap(name, cn)
    with open(os.path.join(OUT, f"controlnet_config_{name}.json"), "w") as f:
        json.dump(public_config(cn), f, indent=1, sort_keys=True)
    tensors, added = inputs(kwargs, pooled_dim, n_sizes, 4321)
    with torch.no_grad():
        down, mid = cn(tensors["x"], tensors["t"], encoder_hidden_states=tensors["context"],
                       controlnet_cond=tensors["hint"], conditioning_scale=1.0, added_cond_kwargs=added,
                       return_dict=False)
        out = unet(tensors["x"], tensors["t"], encoder_hidden_states=tensors["context"], added_cond_kwargs=added,
                   down_block_additional_residuals=tuple(d.clone() for d in down),
                   mid_block_additional_residual=mid.clone()).sample
        plain = unet(tensors["x"], tensors["t"], encoder_hidden_states=tensors["context"],
                     added_cond_kwargs=added).sample
    for k, d in enumerate(down):
        tensors[f"down_{k}"] = d
    tensors["mid"] = mid
    tensors["out_control"] = out
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, f"controlnet_{name}.safetensors"))
    print(f"controlnet {name}: {len(down)} down residuals, |mid| max {mid.abs().max():.4f}, "
          f"control changes the UNet output by {(out - plain).abs().max():.4f}")


# Adapters also written as a torch pickle (the smallest, to keep the fixtures small).
PICKLED = {"light_sd1_tiny"}


def adapter_diffusers_to_tencentarc(key: str, kind: str, num_res_blocks: int) -> str:
    """Inverse of ComfyUI's load_t2i_adapter renaming (full: body.{i}.resnets.{j} -> body.{i*nrb+j}, body.{i}.in_conv ->
    body.{i*nrb}.in_conv; light: body.{i}.resnets.{j} -> body.{i}.body.{j})."""
    p = key.split(".")
    assert p[0] == "adapter", key
    if p[1] == "conv_in":
        return "conv_in." + p[-1]
    i = int(p[2])
    if kind == "light_adapter":
        if p[3] == "resnets":
            return f"body.{i}.body.{p[4]}.{p[5]}.{p[6]}"
        return f"body.{i}.{p[3]}.{p[4]}"
    if p[3] == "resnets":
        return f"body.{i * num_res_blocks + int(p[4])}.{p[5]}.{p[6]}"
    return f"body.{i * num_res_blocks}.{p[3]}.{p[4]}"


def adapter_fixture(name, unet_name, akw):
    unet, kwargs, pooled_dim, n_sizes = tiny_unet(unet_name)
    torch.manual_seed(0)
    adapter = T2IAdapter(**akw)
    adapter.eval()
    fill_synth(adapter)
    rows = [[adapter_diffusers_to_tencentarc(k, akw["adapter_type"], akw["num_res_blocks"]), k, list(v.shape)]
            for k, v in adapter.state_dict().items()]
    assert len({r[0] for r in rows}) == len(rows)
    with open(os.path.join(OUT, f"keymap_adapter_{name}.json"), "w") as f:
        json.dump(sorted(rows), f, indent=0)
    if name in PICKLED:
        # A TencentARC-style .pth (torch zip pickle of the renamed state dict) for the pickle path.
        sd = adapter.state_dict()
        torch.save({ta: sd[d] for ta, d, _ in sorted(rows)}, os.path.join(OUT, f"adapter_{name}.pth"))
    tensors, added = inputs(kwargs, pooled_dim, n_sizes, 8765)
    with torch.no_grad():
        features = adapter(tensors["hint"])
        out = unet(tensors["x"], tensors["t"], encoder_hidden_states=tensors["context"], added_cond_kwargs=added,
                   down_intrablock_additional_residuals=[f.clone() * STRENGTH for f in features]).sample
        plain = unet(tensors["x"], tensors["t"], encoder_hidden_states=tensors["context"],
                     added_cond_kwargs=added).sample
    for k, f in enumerate(features):
        tensors[f"feature_{k}"] = f
    tensors["strength"] = torch.tensor([STRENGTH])
    tensors["out_adapter"] = out
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, f"adapter_{name}.safetensors"))
    print(f"adapter {name}: features {[tuple(f.shape[1:]) for f in features]}, "
          f"changes the UNet output by {(out - plain).abs().max():.4f}")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    for name, (unet_name, overrides) in CONTROLNETS.items():
        controlnet_fixture(name, unet_name, overrides)
    for name, (unet_name, akw) in ADAPTERS.items():
        adapter_fixture(name, unet_name, akw)


if __name__ == "__main__":
    main()
