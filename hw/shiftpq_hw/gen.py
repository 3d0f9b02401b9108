"""Layer tables -> the accelerator's Verilog and its cycle model: the generator behind ``make gen``.

The pipeline is explicit: ``resolve_source`` (a checkpoint, a tables directory, or the model's default:
the shipped checkpoint, else a deterministic untrained model, labelled as such) gives layer tables;
``plan.make_plan(tables, par)`` runs the hardware plan's passes (the folded engines, the FIFOs, the
cycle model), or ``estimate.fold_for_device(tables, device)`` picks the PAR whose estimated size fits an
FPGA, and ``Network(plan)`` elaborates it; ``generate`` writes, into a temporary directory
renamed into place at the end (never a half-written build):

    <out>/rtl/shiftpq_top.v   the whole accelerator (weights and constants as memory initializers),
                              for the simulators
    <out>/rtl/shiftpq_top.il  the same design as RTLIL, for Yosys (which reads it far faster)
    <out>/rtl/primitives_sim.v  simulation models of the FPGA primitives the RTL instantiates
                              (``dsp.sim_models``; absent when it instantiates none): for the
                              simulators, beside shiftpq_top.v, never for synthesis
    <out>/tables/             the layer tables it was built from (manifest.json + .npy)
    <out>/cycles.json         PEs, cycles per image, utilization, per layer (the model the simulation
                              must match exactly; ``plan.cycle_model``)
    <out>/probes.json         per block its RTL instance, ops and the tensor it produces (``plan.probe_map``:
                              the simulators' first-wrong-block diagnosis reads it)

The same tables and ``par`` give byte-identical files. cycles.json's ``generator`` is a digest of the
generator's sources (``generator_digest``): ``shiftpq sim`` refuses a build made by other sources, which
would test that code instead of this one.
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

from .dsp import DEFAULT_TARGET, TARGETS, sim_models
from .estimate import fold_for_device
from .network import Network
from .outputs import generator_digest
from .plan import cycle_model, make_plan, probe_map
from .verilog import verilog_from_rtlil

TOP = "shiftpq_top"
RESET = "rst"  # the top's reset port: Amaranth's name for the sync domain's reset
PRIMITIVES_SIM = "primitives_sim.v"  # rtl/: the simulators' models of the primitives (dsp.sim_models)
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models"
# The default fold of the RTL (`shiftpq gen` with neither --par nor --device): the largest layer gets
# 29 PEs and up to 78 of the ECP5's multipliers (MULT18X18D) compute two of the 4-bit convs' products
# each: ResNet-20 at 43,200 cycles per image, 552 PEs, the fastest fold routed on every seed on an
# ECP5-85k, `make synth`'s default device (hw/README.md; PAR 34 does not place in hours on 2 cores).
DEFAULT_PAR = 29
DEFAULT_DSP_PAIRS = 78
# the HLS backend's (the vendor tool maps its multipliers): ResNet-20 at 55,296 cycles, 405 PEs (docs/hls.md)
HLS_DEFAULT_PAR = 22


def primitive_models(gen_dir: str | Path) -> list[Path]:
    """The simulation models a generated design's RTL needs beside rtl/shiftpq_top.v (rtl/primitives_sim.v
    when the RTL instantiates FPGA primitives): every simulator build compiles them with the RTL."""
    p = Path(gen_dir) / "rtl" / PRIMITIVES_SIM
    return [p] if p.is_file() else []


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


def generate(tables: Tables, out: str | Path, par: int | None = DEFAULT_PAR, force: bool = False,
             log=lambda s: None, device: str | None = None, dsp_pairs: int = 0, target: str = DEFAULT_TARGET) -> dict:
    """Plan, convert and write the accelerator for ``tables`` into ``out``; returns cycles.json.
    ``device``: the fold is the fastest whose estimate fits it (``estimate.fold_for_device``; ``par`` is
    not used), recorded in cycles.json; a design that fits no fold raises before anything is written.
    ``dsp_pairs``: multipliers the convs may use for pairs of PEs (``plan.assign_pairs``; with
    ``device``, of those the fold leaves free). ``target``: the FPGA family whose primitives the RTL
    instantiates (``dsp.TARGETS``: ``ecp5``, the default, the MULT18X18D with its own registers;
    ``generic``: none, Yosys infers every multiplier), recorded in cycles.json."""
    if target not in TARGETS:
        raise ShiftPQError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    out = prepare_output(out, force)  # before the work: a rerun never replaces sim/ or synth/ results unasked
    t0 = time.perf_counter()
    fit = None
    if device is not None:
        plan, fit = fold_for_device(tables, device, pairs=dsp_pairs)
        est, budget = fit["estimate"], fit["budget"]
        log(f"{device}: PAR {plan.par} with {plan.pairs_used} multiplier pairs is the fastest fold that fits: estimate "
            f"{est['logic']:,} of {budget['logic']:,} logic cells ({fit['margin']:.0%} of the device), {est['ffs']:,} "
            f"FFs, {est['brams']} of {budget['brams']} block RAMs, {est['dsps']} of {budget['dsps']} DSPs "
            f"({time.perf_counter() - t0:.1f} s)")
    else:
        plan = make_plan(tables, par, dsp_pairs)
    model = {**cycle_model(plan, fit), "target": target, "generator": generator_digest()}
    probes = probe_map(plan, TOP)
    log(f"planned {len(plan.blocks)} blocks: {model['pes']} PEs, {model['cycles_per_image']} cycles per image, "
        f"utilization {model['utilization']:.1%} ({time.perf_counter() - t0:.1f} s)")
    t1 = time.perf_counter()
    il = rtlil.convert(Network(plan), name=TOP, emit_src=False, platform=TARGETS[target])
    text = verilog_from_rtlil(il)
    models = sim_models(text)
    log(f"RTLIL {len(il) / 1e6:.1f} MB, Verilog {len(text) / 1e6:.1f} MB ({time.perf_counter() - t1:.1f} s)")
    with atomic_dir(out) as tmp:
        (tmp / "rtl").mkdir()
        (tmp / "rtl" / f"{TOP}.v").write_text(text)
        (tmp / "rtl" / f"{TOP}.il").write_text(il)
        if models:
            (tmp / "rtl" / PRIMITIVES_SIM).write_text(models)
        save_tables(tables, tmp / "tables")
        (tmp / "cycles.json").write_text(json.dumps(model, indent=1, sort_keys=True) + "\n")
        (tmp / "probes.json").write_text(json.dumps(probes, indent=1, sort_keys=True) + "\n")
    return model
