"""Unit-level cocotb runs: one Amaranth stream component, converted to Verilog the way the
generator converts the whole network (RTLIL, then Yosys), against its NumPy reference model.

``run_unit(component, name, payloads, expected, work, simulator)`` packs each payload (a dict or
list of field values, or an int) into the component's input layout, runs ``tb_unit`` on Icarus or
Verilator and returns ``{"words", "mismatches", "first_wrong"}``; a mismatch raises. ``payloads`` is
the list of words for the input stream ``i``, or a dict of such lists by input port name for a
component with several input streams (the fused residual add's ``i`` and ``r``), each driven by its
own source with its own random gaps. ``target``: the FPGA family whose primitives the Verilog
instantiates (``dsp.TARGETS``, as ``shiftpq gen --target``), their simulation models compiled beside it."""
from __future__ import annotations

import json
from pathlib import Path

from shiftpq.errors import ShiftPQError

from .harness import stream_budget
from .runner import SIMULATORS, build_args, icarus_source, prepare_env

PIPELINE_FILL = 64  # cycles: more than any block's pipeline depth (registers between input and output)


def pack(layout, value) -> int:
    """An int with each field of a (nested) struct or array layout at its offset (a dict or a list of
    field values), two's complement per field."""
    from amaranth.hdl import Shape
    from amaranth.lib import data
    if isinstance(layout, data.Layout):
        word = 0
        for name, field in layout:
            word |= pack(field.shape, value[name]) << field.offset
        return word
    width = Shape.cast(layout).width
    v = int(value)
    if not -(1 << width) < v < (1 << width):
        raise ValueError(f"{v} does not fit {width} bits")
    return v & ((1 << width) - 1)


def run_unit(component, name: str, payloads: list, expected: list[int], work: str | Path,
             simulator: str = "verilator", gap: float = 0.2, stall: float = 0.2, target: str = "generic") -> dict:
    from amaranth.back import rtlil
    from amaranth.hdl import Shape
    from cocotb_tools.runner import get_runner

    from shiftpq_hw.dsp import TARGETS, sim_models
    from shiftpq_hw.verilog import verilog_from_rtlil
    if simulator not in SIMULATORS:
        raise ShiftPQError(f"simulator must be one of {', '.join(SIMULATORS)}, got {simulator!r}")
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    members = component.signature.members
    ports = sorted(n for n, m in members.items() if m.is_signature and m.flow.name == "In")
    if not isinstance(payloads, dict):
        payloads = {"i": payloads}
    if sorted(payloads) != ports:
        raise ShiftPQError(f"{name}: payloads for input streams {sorted(payloads)}, the component has {ports}")
    words = {p: [pack(members[p].signature.members["payload"].shape, v) for v in vs] for p, vs in payloads.items()}
    # the watchdog: no output may take longer than the component's image period (a folded engine)
    # plus every input word and every output, plus the pipeline's fill
    budget = stream_budget(getattr(component, "cycles_per_image", 0) + sum(map(len, words.values())) + len(expected)
                           + PIPELINE_FILL, gap, stall)
    out_shape = members["o"].signature.members["payload"].shape
    rtl = work / f"{name}.v"
    rtl.write_text(verilog_from_rtlil(rtlil.convert(component, name=name, platform=TARGETS[target])))
    sources = [icarus_source(rtl, work / f"{name}.icarus.v") if simulator == "icarus" else rtl]
    models = sim_models(rtl.read_text())
    if models:  # the simulation models of the primitives the Verilog instantiates
        (work / "primitives_sim.v").write_text(models)
        sources.append(work / "primitives_sim.v")
    stim, res, xml = work / "stimulus.json", work / "results.json", work / "results.xml"
    stim.write_text(json.dumps({"inputs": words, "expected": [int(v) for v in expected],
                                "signed": Shape.cast(out_shape).signed}))
    res.unlink(missing_ok=True)
    prepare_env(simulator)
    runner = get_runner(simulator)
    build = work / f"build-{simulator}"
    runner.build(sources=sources, hdl_toplevel=name, build_dir=build, timescale=("1ns", "1ps"),
                 build_args=build_args(simulator),
                 log_file=work / "build.log")
    try:
        runner.test(test_module="shiftpq_sim.tb_unit", hdl_toplevel=name, build_dir=build, test_dir=work,
                    extra_env={"SHIFTPQ_STIMULUS": str(stim), "SHIFTPQ_RESULTS": str(res),
                               "SHIFTPQ_GAP": str(gap), "SHIFTPQ_STALL": str(stall), "SHIFTPQ_BUDGET": str(budget)},
                    results_xml=str(xml), log_file=work / "sim.log")
    except SystemExit:  # the runner exits when the test failed; the results file says why
        pass
    if not res.exists():
        raise ShiftPQError(f"{name} on {simulator}: the bench ended without results; see {work / 'sim.log'}")
    r = json.loads(res.read_text())
    if "stopped" in r:
        raise ShiftPQError(f"{name} on {simulator}: {r['stopped']}")
    if r["mismatches"]:
        raise ShiftPQError(f"{name} on {simulator}: {r['mismatches']} of {r['words']} outputs differ from the "
                           f"reference model; first: {r['first_wrong'][:3]}")
    return r
