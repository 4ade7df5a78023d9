#!/usr/bin/env python3
"""Writes `sdxl-controlnet-random.safetensors`: an SDXL ControlNet (diffusers layout, fp16, one
file) with random weights, for `tools/peer_parity.py --sdxl` against the comfy-peer.

Its zero convolutions and the hint encoder's last conv get a small random init (diffusers
zero-inits them, which would make the control a no-op), as comfy-peer's SD1.5 ControlNet does.

    /tmp/peer-venv/bin/python tools/make_peer_sdxl_controlnet.py /tmp/ckpts/sdxl-controlnet-random.safetensors
"""
import os
import sys

import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "comfy-peer"))
from make_checkpoints import SDXL_UNET_CONFIG  # noqa: E402

torch.manual_seed(11)
config = {k: v for k, v in SDXL_UNET_CONFIG.items() if k not in ("out_channels", "up_block_types", "sample_size")}
cn = ControlNetModel(**config, conditioning_embedding_out_channels=(16, 32, 96, 256)).eval()
for m in [cn.controlnet_cond_embedding.conv_out, cn.controlnet_mid_block, *cn.controlnet_down_blocks]:
    m.reset_parameters()
    m.weight.data.mul_(0.1)
    m.bias.data.mul_(0.1)
state = {k: v.half().contiguous() for k, v in cn.state_dict().items()}
save_file(state, sys.argv[1])
print(f"{sys.argv[1]}: {len(state)} tensors")
