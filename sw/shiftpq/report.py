"""The compression and hardware report behind ``make report``: one page per generated model.

Reads only the generator's output directory (``shiftpq gen``): ``tables/`` (structure, codes, the
source checkpoint's recorded accuracy), ``cycles.json``, and when present ``sim/results.json``
(``shiftpq sim``) and ``synth/report.json`` (``shiftpq synth``). Runs the integer golden model on
the first N CIFAR-10 test images for its accuracy. Writes ``<build>/report/`` (built in a temporary
directory, renamed into place): ``index.html`` (plots embedded) and ``report.md`` (plots as PNG
files beside it), both rendered from templates/report/.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from .atomic import atomic_dir
from .errors import ShiftPQError, check_fields
from .ir import FC, Conv, Tables
from .metrics import tables_metrics
from .tables import load_tables
from .templating import render

# The seed paper's Table II/III (CIFAR-10 top-1 %, W4A4, 30 % pruning) and reductions vs FP32.
PAPER = {
    "resnet20": {"baseline": 92.61, "ppq": 91.84, "spq": 90.47, "size": 15.78, "bops": 115.85},
    "resnet32": {"baseline": 93.08, "ppq": 92.96, "spq": 91.59, "size": 15.84, "bops": 118.18},
    "resnet56": {"baseline": 94.30, "ppq": 93.99, "spq": 92.09, "size": 15.89, "bops": 119.88},
    "resnet110": {"baseline": 94.50, "ppq": 94.56, "spq": 92.59, "size": 15.94, "bops": 120.95},
    "vgg16": {"baseline": 94.05, "ppq": 93.46, "spq": 93.81, "size": 15.95, "bops": 126.24},
}


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ShiftPQError(f"{path}: not valid JSON ({e})") from None


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _plots(t: Tables, layers: list[dict]) -> dict[str, bytes]:
    """name -> PNG: per-layer cost and cycles, weight-code histograms with the levels, pruning pattern."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 8})
    plots = {}
    names = [l["name"] for l in layers]
    x = np.arange(len(names))

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    a1.bar(x, [l["macs"] / 1e6 for l in layers], color="#4c72b0")
    a1.set_ylabel("MACs (M)")
    a1b = a1.twinx()
    a1b.plot(x, [l["bops"] / 1e6 for l in layers], "o-", color="#dd8452", ms=3)
    a1b.set_ylabel("BOPs (M)", color="#dd8452")
    a2.bar(x, [l.get("cycles") or 0 for l in layers], color="#55a868")
    a2.set_ylabel("cycles per image")
    a2b = a2.twinx()
    a2b.plot(x, [100 * (l.get("utilization") or 0) for l in layers], "s-", color="#c44e52", ms=3)
    a2b.set_ylabel("PE utilization (%)", color="#c44e52")
    a2b.set_ylim(0, 105)
    a2.set_xticks(x, names, rotation=70, ha="right")
    plots["layers"] = _png(fig)

    weighted = [op for op in t.ops if isinstance(op, (Conv, FC))]
    cols = 5
    rows = -(-len(weighted) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 1.9 * rows), squeeze=False)
    for ax, op in zip(axes.flat, weighted):
        codes = op.weight.ravel().astype(int)
        lv = t.level_set(op.weight_levels)
        ints = np.array(lv.ints)
        levels = np.unique(np.concatenate([-ints, ints])) if lv.signed else ints
        counts = [(codes == v).sum() for v in levels]
        pos = np.arange(len(levels))
        ax.bar(pos, counts, color="#4c72b0", width=0.8)
        if len(levels) <= 16:
            ax.set_xticks(pos, [str(v) for v in levels], fontsize=6)
        else:
            ax.set_xticks(pos[::len(levels) // 8], [str(v) for v in levels[::len(levels) // 8]], fontsize=6)
        if len(levels) <= 16:  # APoT sets: mark every level (the 8-bit sets are uniform)
            for p in pos:
                ax.axvline(p, color="#999999", lw=0.3, zorder=0)
        ax.set_title(f"{op.name} ({op.weight_levels})", fontsize=7)
    for ax in list(axes.flat)[len(weighted):]:
        ax.axis("off")
    fig.suptitle("weight codes per layer; every level of the layer's level set is a tick (APoT: non-uniform values)")
    fig.tight_layout()
    plots["weights"] = _png(fig)

    convs = [op for op in t.ops if isinstance(op, Conv)]
    width = max(op.filters for op in convs)
    img = np.full((len(convs), width), np.nan)
    for i, op in enumerate(convs):
        img[i, :op.filters] = 0
        img[i, list(op.kept)] = 1
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(convs) + 1))
    cmap = matplotlib.colors.ListedColormap(["#c44e52", "#4c72b0"]).with_extremes(bad="white")
    ax.imshow(img, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(convs)), [op.name for op in convs])
    ax.set_xlabel("filter index (blue: kept, red: pruned)")
    plots["pruning"] = _png(fig)
    return plots


# the fields of the generator's, the simulation's and synthesis' outputs that the report shows
CYCLES_FIELDS = {"pes": (int,), "par": (int, None), "cycles_per_image": (int,), "utilization": (float,),
                 "inferences_per_s": (dict,), "layers": (list,)}
CYCLES_LAYER_FIELDS = {"name": (str,), "cycles": (int,), "pes": (int,), "utilization": (float, None)}
SIM_FIELDS = {"simulator": (str,), "images": (int,), "mismatches": (int,), "accuracy": (float, None),
              "cycles_per_image": (int, None), "model_cycles_per_image": (int,), "latency_cycles": (int, None)}
SYNTH_FIELDS = {"device": (str,), "fits": (bool,), "fmax_mhz": (float, None), "freq_target_mhz": (float,),
                "luts": (int, None), "ffs": (int, None), "brams": (int, None), "dsps": (int, None),
                "min_logic_cells": (int,), "yosys_cells": (dict,), "reason": (str, None),
                "inferences_per_s": (float, None), "latency_us": (float, None)}
SYNTH_SEED_FIELDS = {"seed": (int,), "fits": (bool,), "fmax_mhz": (float, None), "inferences_per_s": (float, None)}


def _check_outputs(build: Path, cycles: dict) -> tuple[dict | None, dict | None]:
    """Every field the report shows, of cycles.json and (when present) sim/results.json and
    synth/report.json, present and of its type: a hand-edited or older file is one line naming the
    file and the field, not a template error after the golden model ran. Returns the last two (None
    when absent)."""
    check_fields(build / "cycles.json", cycles, CYCLES_FIELDS)
    for i, row in enumerate(cycles["layers"]):
        check_fields(build / "cycles.json", row, CYCLES_LAYER_FIELDS, f"layers[{i}].")
    rates = cycles["inferences_per_s"]
    check_fields(build / "cycles.json", rates, {k: (float,) for k in rates}, "inferences_per_s.")
    found = []
    for rel, spec in (("sim/results.json", SIM_FIELDS), ("synth/report.json", SYNTH_FIELDS)):
        d = _json(build / rel)
        found.append(d if d is None else check_fields(build / rel, d, spec))
    synth = found[1]
    if synth is not None:  # each seed's figures (a report.json of one seed before they were listed: none)
        check_fields(build / "synth/report.json", synth, {"seeds": (list,), "seed": (int,)} if "seeds" in synth else {})
        for i, row in enumerate(synth.setdefault("seeds", [])):
            check_fields(build / "synth/report.json", row, SYNTH_SEED_FIELDS, f"seeds[{i}].")
    return found[0], synth


def report_context(build: str | Path, n_images: int, data_dir: str | None, log=print) -> tuple[dict, dict]:
    """(template context, plots) of a generator output directory."""
    from .data import load_split
    from .golden import Golden, predict
    build = Path(build)
    cycles = _json(build / "cycles.json")
    if cycles is None or not (build / "tables" / "manifest.json").is_file():
        raise ShiftPQError(f"{build}: cycles.json or tables/ missing: run `shiftpq gen --out {build}` (make gen) first")
    sim, synth = _check_outputs(build, cycles)
    t = load_tables(build / "tables")
    m = tables_metrics(t)
    per_layer = {l["name"]: l for l in cycles["layers"]}
    layers = [{**l, **{k: per_layer.get(l["name"], {}).get(k) for k in ("cycles", "pes", "utilization")}}
              for l in m["layers"]]
    images, labels = load_split(data_dir, "test", n_images)
    log(f"golden model on {len(labels)} test images ...")
    pred = predict(Golden(t).run(images.numpy()))
    golden_acc = round(100.0 * float((pred == labels.numpy()).mean()), 2)
    source = t.source or {}
    ctx = {"model": t.model, "spec": t.spec, "source": source,
           "untrained": bool(source.get("untrained")), "metrics": m, "layers": layers,
           "paper": PAPER.get(t.model), "cycles": cycles,
           "accuracy": {"fakequant": source.get("test_accuracy"), "golden": golden_acc, "golden_images": len(labels)},
           "sim": sim, "synth": synth}
    log("plots ...")
    return ctx, _plots(t, layers)


def build_report(build: str | Path, n_images: int = 1000, data_dir: str | None = None, log=print) -> Path:
    """Write ``<build>/report/index.html`` and ``report.md``; returns the report directory."""
    ctx, plots = report_context(build, n_images, data_dir, log)
    out = Path(build) / "report"
    with atomic_dir(out) as tmp:
        for name, png in plots.items():
            (tmp / f"{name}.png").write_bytes(png)
        (tmp / "report.md").write_text(render("report/report.md.j2", **ctx, images={k: f"{k}.png" for k in plots}))
        embedded = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in plots.items()}
        (tmp / "index.html").write_text(render("report/report.html.j2", **ctx, images=embedded))
    return out
