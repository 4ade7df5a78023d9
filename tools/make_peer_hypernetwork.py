#!/usr/bin/env python3
"""Writes `hypernetwork-random.pt`: an A1111-format hypernetwork for SD1.x (widths 768, 320, 640,
1280; layer structure 1, 2, 2, 1; relu; `use_dropout`) with random weights, for
`tools/peer_parity.py`'s HypernetworkLoader case against the comfy-peer. ComfyUI leaves its
dropout on, drawing the masks from torch's global generator, so the case checks Weft's draws too.
Put the file in both servers' `models/hypernetworks/`.

    /tmp/peer-venv/bin/python tools/make_peer_hypernetwork.py /tmp/ckpts/hypernetwork-random.pt
"""
import sys

import torch

g = torch.Generator().manual_seed(3)


def module(width, structure=(1, 2, 2, 1)):
    """One MLP's state dict as A1111's HypernetworkModule names it (dropout layers hold no weights
    but take their place in the numbering)."""
    layers = []
    for i, (a, b) in enumerate(zip(structure, structure[1:])):
        linear = torch.nn.Linear(a * width, b * width)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) / (a * width) ** 0.5)
            linear.bias.copy_(torch.randn(linear.bias.shape, generator=g) * 0.1)
        layers.append(linear)
        if i < len(structure) - 2:
            layers += [torch.nn.ReLU(), torch.nn.Dropout(0.3)]

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Sequential(*layers)
    return Holder().state_dict()


sd = {w: [module(w), module(w)] for w in (768, 320, 640, 1280)}
sd.update(activation_func="relu", is_layer_norm=False, use_dropout=True, activate_output=False,
          last_layer_dropout=False, layer_structure=[1, 2, 2, 1], name="hypernetwork-random", step=100)
torch.save(sd, sys.argv[1])
print(f"{sys.argv[1]}: widths 768, 320, 640, 1280")
