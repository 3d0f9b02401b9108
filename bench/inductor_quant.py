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

Round 9 ran it on an H200: every piece agreed. So the model-level mode, ``--model NAME``, compares
one forward and backward of a whole 30 %-pruned model (eager vs compiled from the same weights and
batch; quantizers off and on; the fused quantizer and the custom ops; bf16 autocast and float32):
the logits and every parameter's gradient, as relative L2 errors. Reassociation moves compiled
results a little, and with quantizers on a moved value can cross a rounding threshold, so the
quantized rows differ from eager even when nothing is wrong: on the CPU (tiny model, batch 8,
float32) logits 3e-3 and a median gradient 9e-2 apart, alike for both quantizers, against 3e-7 and
2e-6 with quantizers off. Read the fused rows against the ops rows (the custom ops train when
compiled): a miscompile of the fused quantizer shows as fused errors far above the ops errors.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sw"))
from shiftpq.quant import (ALPHA_A_INIT, _fake_quant_forward, _fake_quant_grads, _fused_forward,  # noqa: E402
                           _fused_grads, _level_index, _levels_of, fused_consts)
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
        # (and what the "inductor" quantizer kernels compile, each on its own)
        "fused_forward": lambda x, alpha, g: _fused_forward(x, alpha, consts, signed),
        "fused_grads": lambda x, alpha, g: _fused_grads(g, x, alpha, consts, signed),
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
                    if w is None and c is None:  # the fused weight gradient: g itself, not computed
                        continue
                    if w.dim() == 0:  # the alpha gradient: a sum
                        row["alpha_grad_rel_diff"] = float((c.float() - w.float()).abs() / w.float().abs().clamp_min(1e-30))
                    else:
                        row["mismatches"] += int((w != c).sum())
                        row["layout_equal"] = w.stride() == c.stride()
                rows.append(row)
    return rows


def _model_step(model_name: str, dev: torch.device, quant: bool, compiled: bool, amp: bool, batch: int):
    """Logits and parameter gradients of one forward and backward of a 30 %-pruned model (seed 0,
    calibrated quantizers) on a fixed batch of CIFAR-like noise."""
    from shiftpq.models import build_model, model_input
    from shiftpq.pruning import gm_prune, layer_rates
    from shiftpq.quant import calibrate_quantizers
    torch.manual_seed(0)
    model = build_model(model_name).to(dev)
    gm_prune(model, layer_rates(model, 0.3), incremental=True)
    gen = torch.Generator(device="cpu").manual_seed(1)
    images = torch.randint(0, 256, (batch, 3, 32, 32), generator=gen, dtype=torch.uint8).to(dev)
    labels = torch.randint(0, 10, (batch,), generator=gen).to(dev)
    if quant:
        calibrate_quantizers(model, images)
    model.set_quant(quant)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    torch._dynamo.reset()
    fwd = torch.compile(model) if compiled else model
    with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
        out = fwd(model_input(images))
    torch.nn.functional.cross_entropy(out.float(), labels).backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach().float(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def compare_model(model_name: str, device: str, batch: int = 64, quantizers=("fused", "ops"),
                  amps: tuple[bool, ...] = (True, False), worst: int = 5) -> list[dict]:
    """One row per (quantizers on/off, compiled quantizer, autocast): relative errors of compiled vs
    eager logits and gradients; the ``worst`` parameters by gradient error."""
    from shiftpq.quant import _compiled, set_compiled_quantizer
    dev = torch.device(device)
    rows = []
    before = _compiled["kind"]
    try:
        rows = _compare_model(model_name, dev, batch, quantizers, amps, worst)
    finally:
        set_compiled_quantizer(before)
        torch._dynamo.reset()
    return rows


def _compare_model(model_name, dev, batch, quantizers, amps, worst) -> list[dict]:
    from shiftpq.quant import set_compiled_quantizer
    rows = []
    for amp in amps:
        if amp and dev.type != "cuda":
            continue
        for quant, qz in [(False, None)] + [(True, q) for q in quantizers]:
            if qz:
                set_compiled_quantizer(qz)
            e_out, e_g = _model_step(model_name, dev, quant, False, amp, batch)
            c_out, c_g = _model_step(model_name, dev, quant, True, amp, batch)
            errs = sorted(((_rel(e_g[n], c_g[n]), n) for n in e_g), reverse=True)
            rows.append({"model": model_name, "quantized": quant, "quantizer": qz, "bf16": amp,
                         "logits_rel_err": _rel(e_out, c_out),
                         "top1_agreement": float((e_out.argmax(1) == c_out.argmax(1)).float().mean()),
                         "grad_rel_err_median": float(torch.tensor([x for x, _ in errs]).median()),
                         "worst": [{"param": n, "rel_err": x} for x, n in errs[:worst]]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", type=int, nargs=4, default=(256, 16, 32, 32), metavar=("N", "C", "H", "W"))
    ap.add_argument("--model", default=None, help="compare a whole model's step instead of the pieces (e.g. resnet20)")
    ap.add_argument("--batch", type=int, default=64, help="with --model: images in the batch (default 64)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.model:
        rows = compare_model(a.model, a.device, a.batch)
        for r in rows:
            print(f"{r['model']} quantized={r['quantized']!s:<5} quantizer={r['quantizer'] or '-':<5} "
                  f"bf16={r['bf16']!s:<5} logits rel. err {r['logits_rel_err']:.2e}, top-1 agreement "
                  f"{r['top1_agreement']:.3f}, gradient rel. err median {r['grad_rel_err_median']:.2e}; worst: "
                  + ", ".join(f"{w['param']} {w['rel_err']:.2e}" for w in r["worst"][:3]))
        name = torch.cuda.get_device_name() if a.device == "cuda" else a.device
        out = Path(a.out or Path(__file__).parent / "results" / f"inductor_quant-{a.model}-{a.device}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"device": name, "torch": torch.__version__, "batch": a.batch, "rows": rows},
                                  indent=2) + "\n")
        print(f"wrote {out}")
        return 0
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
