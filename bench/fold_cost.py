"""Refit the device-aware fold's cost model (``shiftpq_hw.estimate.COST``) to Yosys' counts.

    python bench/fold_cost.py [--designs resnet20:8,resnet20:16,resnet20:22,tiny:4,resnet20:34:106,...]
                              [--device ecp5-85k] [--work build/fold_cost]
                              [--out bench/results/fold_cost-ecp5.json] [--refit | --add DESIGNS]
    python bench/fold_cost.py --table resnet32,resnet56,vgg16 [--out bench/results/fold_table-ecp5.json]

For every design ``MODEL:PAR[:PAIRS]`` (the model's default source: the shipped checkpoint, else the
deterministic untrained model; ``PAIRS``: ``shiftpq gen --dsp-pairs``, default 0) it generates the
RTL (``shiftpq_hw.gen.generate``), runs Yosys only
(``synth.run_flow(..., place=False)``: ``stat -json`` of the ECP5 mapping, no place and route) and
records Yosys' cells beside the plan's ``cost_features`` and ``estimate``. A design whose
``<work>/<model>-<par>[-p<pairs>]/y/stat.json`` exists is not synthesized again (delete it after
changing the generator). Then it fits ``COST``'s logic and flip-flop rows by least squares with
non-negative coefficients: logic to ``min_logic_cells`` less the LUT RAMs' six cells each (which ``estimate``
counts exactly), flip-flops to TRELLIS_FF; prints the fitted table (paste it into estimate.py) and each
design's estimate against Yosys, and writes the JSON (byte-identical for the same tools and
designs). ``--refit``: fit the records already in ``--out`` again, running nothing; ``--add DESIGNS``:
measure these designs only and fit them with the records already in ``--out`` (a design measured
again replaces its record).

``--table MODELS``: no fit; for each model (its default source) and each ECP5 the fold
``shiftpq gen --device`` picks (``estimate.fold_for_device``) with its PEs, cycles per image,
inferences/s at 100 MHz and estimate, or why none fits; printed as Markdown rows and written as JSON.

Block RAMs, LUT RAMs and DSPs are not fitted: ``estimate`` counts them by Yosys' rules; the JSON
lists them beside Yosys' own counts, which must be equal.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "sw"), str(ROOT / "hw")]

from shiftpq_hw.gen import TOP, generate, resolve_source  # noqa: E402
from shiftpq.errors import ShiftPQError  # noqa: E402
from shiftpq_hw.estimate import COST, cost_features, estimate, fold_for_device, memories  # noqa: E402
from shiftpq_hw.plan import make_plan  # noqa: E402
from shiftpq_hw.synth import DEVICES, min_logic_cells, run_flow  # noqa: E402

DESIGNS = ("tiny:2,tiny:8,tiny:max,tinyvgg:4,tinyvgg:max,resnet20:8,resnet20:16,resnet20:22,"
           "tiny:8:1000,tinyvgg:max:1000,resnet20:34:106")


def nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients (Lawson and Hanson's active set, small problems)."""
    n = a.shape[1]
    free, x = [], np.zeros(n)
    for _ in range(3 * n):
        grad = a.T @ (y - a @ x)
        cand = [j for j in range(n) if j not in free and grad[j] > 1e-9]
        if not cand:
            break
        free.append(max(cand, key=lambda j: grad[j]))
        while True:
            z = np.zeros(n)
            z[free] = np.linalg.lstsq(a[:, free], y, rcond=None)[0]
            if all(z[j] > 0 for j in free):
                x = z
                break
            ratios = [x[j] / (x[j] - z[j]) for j in free if z[j] <= 0]
            x = x + min(ratios) * (z - x)
            free = [j for j in free if x[j] > 1e-9]
    return x


def measure(spec: str, device: str, work: Path) -> dict:
    model, par, *rest = spec.split(":")
    tables = resolve_source(model)
    p = None if par == "max" else int(par)
    pairs = int(rest[0]) if rest else 0
    out = work / (f"{model}-{par}" + (f"-p{pairs}" if pairs else ""))
    stat_path = out / "y" / "stat.json"
    if not stat_path.is_file():
        generate(tables, out, p, force=True, dsp_pairs=pairs)
        (out / "y").mkdir()
        run_flow(out / "y", "../rtl/" + TOP + ".il", TOP, device, place=False, log=lambda s: print(" ", s))
    cells = {k: v for k, v in json.loads(stat_path.read_text())["design"]["num_cells_by_type"].items()
             if not k.startswith("$scopeinfo")}
    plan = make_plan(tables, p, pairs)
    mems = memories(plan)
    dev = DEVICES[device]
    return {"design": spec, "pes": plan.pes, "cycles_per_image": plan.period,
            "features": cost_features(plan, mems), "estimate": estimate(plan, mems),
            "yosys": {"logic": min_logic_cells(cells, dev.family), "ffs": cells.get("TRELLIS_FF", 0),
                      "brams": cells.get(dev.yosys_cells["brams"], 0), "lutrams": cells.get("TRELLIS_DPR16X4", 0),
                      "dsps": cells.get(dev.yosys_cells["dsps"], 0)}}


def predict(cost: dict, r: dict) -> dict:
    """A record's logic cells and flip-flops by ``cost`` (the LUT RAMs counted as ``estimate`` does)."""
    est = {k: round(sum(cost[k][f] * v for f, v in r["features"].items())) for k in ("logic", "ffs")}
    est["logic"] += 6 * r["estimate"]["lutrams"]
    return est


def fit(records: list[dict]) -> dict:
    """``COST`` refitted; a feature that is zero in every design (no design with multiplier pairs)
    keeps its present price."""
    names = [k for k in COST["logic"] if any(r["features"].get(k) for r in records)]
    a = np.array([[r["features"].get(k, 0) for k in names] for r in records], dtype=float)
    targets = {"logic": [r["yosys"]["logic"] - 6 * r["yosys"]["lutrams"] for r in records],
               "ffs": [r["yosys"]["ffs"] for r in records]}
    return {kind: {**COST[kind], **{k: round(float(v), 1) for k, v in zip(names, nnls(a, np.array(y, dtype=float)))}}
            for kind, y in targets.items()}


def table(models: list[str]) -> list[dict]:
    """The fold ``shiftpq gen --device`` picks for each model on each ECP5, or why none fits."""
    rows = []
    for model in models:
        tables = resolve_source(model)
        for device in (d for d in DEVICES if DEVICES[d].family == "ecp5"):
            row = {"model": model, "device": device}
            try:
                plan, fit = fold_for_device(tables, device)
                row.update(par=plan.par, pes=plan.pes, cycles_per_image=plan.period,
                           inferences_per_s_100mhz=round(100e6 / plan.period, 1), estimate=fit["estimate"],
                           budget=fit["budget"])
                text = (f"PAR {plan.par}: {plan.pes:,} PEs, {plan.period:,} cycles, {100e6 / plan.period:,.0f}/s; "
                        + ", ".join(f"{fit['estimate'][k]:,}/{fit['budget'][k]:,} {k}" for k in fit["budget"]))
            except ShiftPQError as e:
                row["none_fits"] = text = str(e)
            print(f"| {model} | {device} | {text} |", flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--designs", default=DESIGNS, help=f"MODEL:PAR[:PAIRS],... (default {DESIGNS})")
    ap.add_argument("--device", default="ecp5-85k", choices=[d for d in DEVICES if DEVICES[d].family == "ecp5"])
    ap.add_argument("--work", default=str(ROOT / "build" / "fold_cost"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fold_cost-ecp5.json"))
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--refit", action="store_true", help="fit the records in --out again; run nothing")
    how.add_argument("--add", default=None, metavar="DESIGNS",
                     help="measure these designs only; fit them with the records in --out")
    ap.add_argument("--table", default=None, metavar="MODELS", help="the folds chosen for these models instead")
    a = ap.parse_args()
    out = Path(a.out)
    if a.table:
        out = out if a.out != ap.get_default("out") else out.with_name("fold_table-ecp5.json")
        rows = table(a.table.split(","))
        out.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
        print(f"wrote {out}")
        return
    if a.refit:
        records = json.loads(out.read_text())["designs"]
    else:
        specs = (a.add or a.designs).split(",")
        records = [r for r in json.loads(out.read_text())["designs"] if r["design"] not in specs] if a.add else []
        for r in records:  # a record from before a feature existed: the feature was zero
            r["features"] = {k: r["features"].get(k, 0) for k in COST["logic"]}
        for spec in specs:
            print(f"{spec}: generating and synthesizing (Yosys only) ...", flush=True)
            records.append(measure(spec, a.device, Path(a.work)))
    cost = fit(records)
    print("COST = " + json.dumps(cost, indent=1).replace("\n ", "\n    "))
    for i, r in enumerate(records):
        # the fit, and the fit of the other designs (leave one out: how the model does on a design it has not seen)
        r["refit"], r["left_out"] = predict(cost, r), predict(fit(records[:i] + records[i + 1:]), r)
        est, loo, y = r["refit"], r["left_out"], r["yosys"]
        print(f"{r['design']:>14}: {r['pes']:5} PEs  logic {est['logic']:6} vs Yosys {y['logic']:6} "
              f"({est['logic'] / y['logic'] - 1:+.1%}; left out {loo['logic'] / y['logic'] - 1:+.1%})  "
              f"FF {est['ffs']:6} vs {y['ffs']:6} ({est['ffs'] / y['ffs'] - 1:+.1%}; left out "
              f"{loo['ffs'] / y['ffs'] - 1:+.1%})  BRAM {r['estimate']['brams']} vs {y['brams']}  "
              f"LUT RAM {r['estimate']['lutrams']} vs {y['lutrams']}  DSP {r['estimate']['dsps']} vs {y['dsps']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": a.device, "cost": cost, "designs": records}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
