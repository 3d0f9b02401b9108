"""Which piece of the fake quantizer does torch.compile (Inductor) compute differently from eager?

    python bench/inductor_quant.py [--device cpu|cuda] [--shape N C H W] [--out FILE]

Round 7 (docs/experiments.md) found that Inductor's CUDA code for the quantizer trains nothing, and
not because of bucketize alone; training therefore calls the quantizer as opaque custom ops. This
script narrows it down for a bug report: each piece of ``shiftpq.quant`` (the level index, the
level values, the forward, the gradients, and the fused quantizer's forward and gradients) runs eagerly and compiled (Inductor, ``fullgraph``) on
the same inputs (activations, unsigned, and weights, signed; float32 and bfloat16; channels_last),
and the elements that differ are counted. Element-wise outputs must agree exactly; the alpha
gradient is a sum, where a different summation order is legitimate, so its relative difference is
reported. Writes JSON (default ``bench/results/inductor_quant-<device>.json``). On the CPU every
piece agrees (tests/test_quant.py runs a small case); a piece that differs on CUDA is the culprit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sw"))
from shiftpq.quant import (ALPHA_A_INIT, _fake_quant_forward, _fake_quant_grads, _fused_levels,  # noqa: E402
                           _level_index, _levels_of, _quant_grads, fused_consts)
from shiftpq.levels import level_set  # noqa: E402


def _mag(xs: torch.Tensor, signed: bool) -> torch.Tensor:
    return xs.abs() if signed else xs


def _pieces(signed: bool, vals: torch.Tensor, mids: torch.Tensor, consts: tuple) -> dict:
    """name -> function of (x, alpha, g): the quantizer's steps, each ending in what the next takes."""
    return {
        "index": lambda x, alpha, g: _level_index(_mag(x.float() / alpha, signed).permute(0, 2, 3, 1), mids),
        "levels": lambda x, alpha, g: _levels_of(x.float() / alpha, vals, mids, signed),
        "forward": lambda x, alpha, g: _fake_quant_forward(x, alpha, vals, mids, signed),
        "grads": lambda x, alpha, g: _fake_quant_grads(g, x, alpha, vals, mids, signed),
        # the fused quantizer (what shiftpq train --compile traces by default), forward and gradients
        "fused_forward": lambda x, alpha, g: (_fused_levels(x.float() / alpha, consts, signed) * alpha).to(x.dtype),
        "fused_grads": lambda x, alpha, g: _quant_grads(g, x.float() / alpha, _fused_levels(x.float() / alpha, consts,
                                                                                             signed), alpha, signed),
    }


def compare(device: str, shape: tuple[int, ...], seed: int = 0,
            dtypes: tuple = (torch.float32, torch.bfloat16)) -> list[dict]:
    """One row per (quantizer, dtype, piece): element mismatches, alpha-gradient relative difference."""
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows = []
    for kind, signed, bits, scale in (("activation", False, 4, ALPHA_A_INIT / 2), ("weight", True, 4, 1.0)):
        lv = level_set(bits, signed)
        vals = torch.tensor(lv.values, dtype=torch.float32, device=dev)
        mids = torch.tensor(lv.midpoints, dtype=torch.float32, device=dev)
        x32 = torch.randn(shape, generator=gen) * scale
        x32 = (x32.relu() if not signed else x32).to(dev).contiguous(memory_format=torch.channels_last)
        g32 = torch.randn(shape, generator=gen).to(dev).contiguous(memory_format=torch.channels_last)
        alpha = torch.tensor(ALPHA_A_INIT if not signed else 3.0, device=dev)
        for dtype in dtypes:
            x, g = x32.to(dtype), g32.to(dtype)
            for name, fn in _pieces(signed, vals, mids, fused_consts(lv)).items():
                want = fn(x, alpha, g)
                torch._dynamo.reset()
                got = torch.compile(fn, fullgraph=True)(x, alpha, g)
                want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
                row = {"quantizer": kind, "dtype": str(dtype).removeprefix("torch."), "piece": name,
                       "elements": x.numel(), "mismatches": 0, "alpha_grad_rel_diff": None}
                for w, c in zip(want, got):
                    if w.dim() == 0:  # the alpha gradient: a sum
                        row["alpha_grad_rel_diff"] = float((c.float() - w.float()).abs() / w.float().abs().clamp_min(1e-30))
                    else:
                        row["mismatches"] += int((w != c).sum())
                        row["layout_equal"] = w.stride() == c.stride()
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", type=int, nargs=4, default=(256, 16, 32, 32), metavar=("N", "C", "H", "W"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = compare(a.device, tuple(a.shape))
    for r in rows:
        rel = "" if r["alpha_grad_rel_diff"] is None else f"  alpha grad rel. diff {r['alpha_grad_rel_diff']:.2e}"
        print(f"{r['quantizer']:<10} {r['dtype']:<8} {r['piece']:<8} {r['mismatches']:>9} of {r['elements']} "
              f"elements differ{rel}")
    name = torch.cuda.get_device_name() if a.device == "cuda" else a.device
    out = Path(a.out or Path(__file__).parent / "results" / f"inductor_quant-{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "torch": torch.__version__, "shape": list(a.shape), "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
