"""Seeded random networks for bit-exactness tests and architecture fuzzing: random stage widths,
random weights, BatchNorm statistics and pruning masks (kept filters down to 1), optionally random
bit widths. The same seed always gives the same network."""
from __future__ import annotations

import numpy as np
import torch

from shiftpq.levels import ACT_BITS, WEIGHT_BITS
from shiftpq.models import ModelSpec, Net
from shiftpq.train import calibrate_quantizers


def random_net(seed: int, name: str = "tiny", layer_masks: bool = True, random_bits: bool = False) -> Net:
    """A quantized network with random widths, weights, BatchNorm statistics and pruning masks
    (per-conv masks, so a shortcut can carry a channel its block pruned). ``random_bits``: inner
    weight and activation bit widths drawn from the supported ones (first and last layer stay 8-bit)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    widths = tuple(sorted(int(v) for v in rng.integers(1, 7, 3))) if name == "tiny" else None
    bits = {}
    if random_bits:
        bits = {"wbits": int(rng.choice([b for b in WEIGHT_BITS if b <= 5])),
                "abits": int(rng.choice([b for b in ACT_BITS if b <= 5]))}
    net = Net(ModelSpec(name, widths=widths, **bits))
    for cb in net.prunable().values():
        n = cb.conv.out_channels
        keep = rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False) if layer_masks else np.arange(n)
        mask = torch.zeros(n)
        mask[torch.from_numpy(keep)] = 1
        cb.conv.mask.copy_(mask)
        bn = cb.bn
        bn.running_mean.copy_(torch.from_numpy(rng.uniform(-0.3, 0.3, n)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.3, 2.0, n)))
        bn.weight.data.copy_(torch.from_numpy(rng.uniform(-1.5, 1.5, n)))  # negative scales too
        bn.bias.data.copy_(torch.from_numpy(rng.uniform(-0.3, 0.3, n)))
    net.fc.bias.data.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, 10)))
    net.set_quant(True)
    calibrate_quantizers(net, torch.from_numpy(rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)))
    return net.eval()


def images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random uint8 images [n, 3, 32, 32]."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
