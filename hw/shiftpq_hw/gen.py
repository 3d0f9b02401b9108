"""Layer tables -> the accelerator's Verilog and its cycle model: the generator behind ``make gen``.

The pipeline is explicit: ``resolve_source`` (a checkpoint, a tables directory, or the model's default:
the shipped checkpoint, else a deterministic untrained model, labelled as such) gives layer tables;
``Network(tables, par)`` plans the folded engines; ``generate`` writes, into a temporary directory
renamed into place at the end (never a half-written build):

    <out>/rtl/shiftpq_top.v   the whole accelerator (weights and constants as memory initializers),
                              for the simulators
    <out>/rtl/shiftpq_top.il  the same design as RTLIL, for Yosys (which reads it far faster)
    <out>/tables/             the layer tables it was built from (manifest.json + .npy)
    <out>/cycles.json         PEs, cycles per image, utilization, per layer (the model the simulation
                              must match exactly)

The same tables and ``par`` give byte-identical files.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from amaranth.back import rtlil

from shiftpq.atomic import atomic_dir, prepare_output
from shiftpq.errors import ShiftPQError
from shiftpq.ir import Tables
from shiftpq.tables import load_tables, save_tables

from .network import Network
from .verilog import verilog_from_rtlil

TOP = "shiftpq_top"
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models"
# the largest layer gets 22 PEs: ResNet-20 at 55,296 cycles per image, 405 PEs, the largest fold that
# fits an ECP5-85k (`make synth`'s default device; PAR 32 does not fit, hw/README.md)
DEFAULT_PAR = 22
REPORT_MHZ = (50, 100, 150)


def shipped_checkpoint(model: str) -> Path | None:
    """The PPQ checkpoint shipped for ``model`` (models/<model>-ppq.pt), if any."""
    p = SHIPPED / f"{model}-ppq.pt"
    return p if p.is_file() else None


def resolve_source(model: str | None, checkpoint: str | None = None, tables: str | None = None,
                   seed: int = 0) -> Tables:
    """The layer tables to build: from ``tables``, from ``checkpoint``, or the model's default."""
    from shiftpq.export import export_checkpoint, untrained_tables
    if tables is not None:
        return load_tables(tables)
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise ShiftPQError(f"{checkpoint}: checkpoint not found")
        return export_checkpoint(checkpoint)
    if model is None:
        raise ShiftPQError("give a model, a checkpoint or a tables directory")
    ckpt = shipped_checkpoint(model)
    return export_checkpoint(ckpt) if ckpt else untrained_tables(model, seed)


def cycle_model(net: Network) -> dict:
    """cycles.json: the analytic cycle model of the planned network."""
    period = net.cycles_per_image
    layers = []
    for r in net.layers():
        row = dict(r)
        row["utilization"] = round(r["macs"] / (r["pes"] * period), 4) if r["pes"] else None
        layers.append(row)
    bottleneck = [r["name"] for r in layers if r["cycles"] == period]
    src = net.tables.source or {}
    return {
        "model": net.tables.model,
        "source": src,
        "par": net.par,
        "target_cycles": net.target,
        "pes": net.pes,
        "macs_per_image": sum(r["macs"] for r in layers),
        "cycles_per_image": period,
        "utilization": round(net.utilization, 4),
        "bottleneck": bottleneck,
        "inferences_per_s": {f"{mhz}MHz": round(mhz * 1e6 / period, 1) for mhz in REPORT_MHZ},
        "notes": "cycles_per_image is the steady-state period with images back to back and the score "
                 "stream always ready: one image per slowest block. A block's cycles: conv "
                 "out_hw^2 * 9 * groups * chunks; fc classes * chunks + 5; avgpool hw^2 + channels + 4; "
                 "input 3 bytes per pixel. utilization = useful MACs / (PEs x cycles_per_image).",
        "layers": layers,
    }


def generate(tables: Tables, out: str | Path, par: int | None = DEFAULT_PAR, force: bool = False,
             log=lambda s: None) -> dict:
    """Plan, convert and write the accelerator for ``tables`` into ``out``; returns cycles.json."""
    out = prepare_output(out, force)  # before the work: a rerun never replaces sim/ or synth/ results unasked
    t0 = time.perf_counter()
    net = Network(tables, par)
    model = cycle_model(net)
    log(f"planned {len(net.blocks)} blocks: {model['pes']} PEs, {model['cycles_per_image']} cycles per image, "
        f"utilization {model['utilization']:.1%} ({time.perf_counter() - t0:.1f} s)")
    t1 = time.perf_counter()
    il = rtlil.convert(net, name=TOP, emit_src=False)
    text = verilog_from_rtlil(il)
    log(f"RTLIL {len(il) / 1e6:.1f} MB, Verilog {len(text) / 1e6:.1f} MB ({time.perf_counter() - t1:.1f} s)")
    with atomic_dir(out) as tmp:
        (tmp / "rtl").mkdir()
        (tmp / "rtl" / f"{TOP}.v").write_text(text)
        (tmp / "rtl" / f"{TOP}.il").write_text(il)
        save_tables(tables, tmp / "tables")
        (tmp / "cycles.json").write_text(json.dumps(model, indent=1, sort_keys=True) + "\n")
    return model
