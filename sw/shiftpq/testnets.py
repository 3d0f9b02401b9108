"""Seeded random networks, the one home of the test networks: the tests, architecture fuzzing
(``shiftpq sim --fuzz``: shiftpq_sim.runner.fuzz) and the benches import them. Random stage widths,
random weights, BatchNorm statistics and pruning masks (kept filters down to 1), optionally random
bit widths and a random architecture (residual or plain, one or two blocks per stage). The same
seed always gives the same network."""
from __future__ import annotations

import numpy as np
import torch

from .levels import ACT_BITS, WEIGHT_BITS
from .models import ModelSpec, Net
from .quant import calibrate_quantizers


def random_spec(seed: int) -> ModelSpec:
    """A random small architecture: residual (``tiny``, stride-2 blocks with option-A shortcuts) or
    plain (``tinyvgg``, max pools), one or two blocks per stage, stage widths 1-6 (from a generator
    of its own, so random_net's other draws do not depend on it)."""
    rng = np.random.default_rng([seed, 1])
    name = str(rng.choice(["tiny", "tinyvgg"]))
    widths = [int(v) for v in rng.integers(1, 7, 3)]
    return ModelSpec(name, widths=tuple(sorted(widths) if name == "tiny" else widths), blocks=int(rng.integers(1, 3)))


def random_net(seed: int, name: str = "tiny", layer_masks: bool = True, random_bits: bool = False,
               random_arch: bool = False, widths: tuple[int, ...] | None = None) -> Net:
    """A quantized network with random widths, weights, BatchNorm statistics and pruning masks
    (per-conv masks, so a shortcut can carry a channel its block pruned). ``random_bits``: inner
    weight and activation bit widths drawn from the supported ones (first and last layer stay 8-bit).
    ``random_arch``: the architecture of ``random_spec(seed)`` instead of ``name``. ``widths``: these
    stage widths instead of random ones."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    drawn = tuple(sorted(int(v) for v in rng.integers(1, 7, 3))) if name == "tiny" else None
    widths = widths or drawn
    bits = {}
    if random_bits:
        bits = {"wbits": int(rng.choice([b for b in WEIGHT_BITS if b <= 5])),
                "abits": int(rng.choice([b for b in ACT_BITS if b <= 5]))}
    spec = random_spec(seed) if random_arch else ModelSpec(name, widths=widths)
    spec.wbits, spec.abits = bits.get("wbits", spec.wbits), bits.get("abits", spec.abits)
    net = Net(spec)
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
