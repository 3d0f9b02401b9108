"""A placement-free timing estimate of a Yosys-mapped ECP5 netlist (``<build>/synth/netlist.json``
of ``shiftpq synth``): the delay of every path into a register or memory input under a crude model
of the fabric, so the deep or widely fanned-out paths show in seconds rather than after a
40-minute place and route (bench/logic_depth.py prints and records them).

The model, in ns: clock to output 0.52 (a flip-flop), 3.5 (a block RAM without output register);
a LUT4 0.24; a CCU2C 0.45 from its LUT inputs, 0.06 (carry out) or 0.25 (sum) from its carry in;
a LUT RAM's read 0.5; a MULT18X18D 4.0, or with its own registers (``dsp.RegisteredProduct``) 0.74
from its clock to its product, its operand pins endpoints; every net ``NET_BASE + NET_PER_DOUBLING * log2(fanout)``,
none on a carry chain. The routing is the unknown: nextpnr's is 85-90 % of a routed ResNet-20's
critical path. Checked against nextpnr on the sixth round's ResNet-20 (seed 1): the routed critical
path, 14.94 ns, is this model's worst too, at 16.43 ns (the same path, the same registers).
"""
from __future__ import annotations

import collections
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from shiftpq.errors import ShiftPQError

CLOCK_TO_Q = {"TRELLIS_FF": 0.52, "DP16KD": 3.5, "MULT18X18D": 0.74}  # the DSP's: from its output register
OUTREG_CLOCK_TO_Q = 0.97  # a DP16KD port read through its output register (outreg.py; nextpnr's model)
LUT, CARRY_IN, CARRY_SUM, CARRY_LOGIC, LUTRAM_READ, MULT = 0.24, 0.06, 0.25, 0.45, 0.5, 4.0
NET_BASE, NET_PER_DOUBLING = 0.9, 0.35
ENDPOINT_CELLS = ("TRELLIS_FF", "DP16KD", "TRELLIS_DPR16X4")
CLOCKS = ("CLK", "CLKA", "CLKB", "WCK")


def clock_to_q(cell: dict, port: str) -> float:
    """A register cell's clock to output at ``port`` (a block RAM's ``DOA``/``DOB`` pins through
    their output register when the netlist pass set it)."""
    if cell["type"] == "DP16KD" and cell["parameters"].get(f"REGMODE_{port[2:3]}") == "OUTREG":
        return OUTREG_CLOCK_TO_Q
    return CLOCK_TO_Q[cell["type"]]


@dataclass(frozen=True)
class Endpoint:
    delay: float  # ns, at the input pin
    cell: str
    port: str
    path: tuple[tuple[str, str, int, float], ...]  # (cell, output port, fanout, arrival) from the start


def registered(cell: dict, reg: str) -> bool:
    """Whether a MULT18X18D's register ``reg`` (``INPUTA``, ``INPUTB``, ``OUTPUT``) is in use."""
    return str(cell.get("parameters", {}).get(f"REG_{reg}_CLK", "NONE")).strip() != "NONE"


class Netlist:
    """A flattened Yosys JSON netlist of ECP5 cells: who drives each bit, who loads it."""

    def __init__(self, module: dict):
        self.cells = module["cells"]
        self.driver: dict[int, tuple[str, str]] = {}
        self.loads: dict[int, int] = collections.Counter()
        for name, cell in self.cells.items():
            dirs = cell.get("port_directions", {})
            for port, bits in cell["connections"].items():
                for b in bits:
                    if isinstance(b, str):
                        continue  # a constant
                    if dirs.get(port) == "output":
                        self.driver[b] = (name, port)
                    else:
                        self.loads[b] += 1

    @classmethod
    def load(cls, path: Path, top: str | None = None) -> "Netlist":
        path = Path(path)
        try:
            modules = json.loads(path.read_text())["modules"]
        except (OSError, ValueError, KeyError) as e:
            raise ShiftPQError(f"{path}: not a Yosys JSON netlist ({e})") from None
        names = [n for n, m in modules.items() if m.get("attributes", {}).get("top")] or list(modules)
        name = top or names[0]
        if name not in modules:
            raise ShiftPQError(f"{path}: no module {name!r} (modules: {', '.join(sorted(modules))})")
        return cls(modules[name])

    def net(self, bit: int) -> float:
        return NET_BASE + NET_PER_DOUBLING * math.log2(max(self.loads.get(bit, 1), 1))

    def arcs(self, cell: dict, port: str) -> list[tuple[str, float]] | None:
        """The inputs an output depends on within its cell and each arc's delay; None: the output
        starts a path (a register's or a block RAM's)."""
        kind = cell["type"]
        if kind == "LUT4":
            return [(p, LUT) for p in "ABCD"]
        if kind == "CCU2C":
            if port == "COUT":
                return [("CIN", CARRY_IN)] + [(p + s, CARRY_LOGIC) for p in "ABCD" for s in "01"]
            half = "01" if port == "S1" else "0"
            return [("CIN", CARRY_SUM)] + [(p + s, CARRY_LOGIC) for p in "ABCD" for s in half]
        if kind == "TRELLIS_DPR16X4":
            return [("RAD", LUTRAM_READ)]
        if kind == "MULT18X18D":
            if registered(cell, "OUTPUT"):
                return None
            return [(p, MULT) for p, d in cell["port_directions"].items()
                    if d == "input" and p[0] in "AB" and p[1:].isdigit() and not registered(cell, "INPUT" + p[0])]
        if kind in CLOCK_TO_Q:
            return None
        raise ShiftPQError(f"cell type {kind!r} is not modelled (ECP5 cells after synth_ecp5 expected)")

    def arrivals(self) -> tuple[dict[int, float], dict[int, int | None]]:
        """Every driven bit's arrival time and the input bit it arrives through (None: a start)."""
        arrival: dict[int, float] = {}
        via: dict[int, int | None] = {}
        inputs: dict[int, list] = {}  # a bit's (input bit, port, arc delay), between its two visits
        for root in self.driver:
            stack = [(root, False)]
            on_stack = set()
            while stack:
                bit, expanded = stack.pop()
                if bit in arrival:
                    continue
                name, port = self.driver[bit]
                cell = self.cells[name]
                if not expanded:
                    arcs = self.arcs(cell, port)
                    if arcs is None:
                        arrival[bit], via[bit] = clock_to_q(cell, port), None
                        continue
                    ins = inputs[bit] = [(b, p, d) for p, d in arcs for b in cell["connections"].get(p, ())
                                         if not isinstance(b, str)]
                    if bit in on_stack:
                        raise ShiftPQError(f"combinational loop through {name}.{port}")
                    on_stack.add(bit)
                    stack.append((bit, True))
                    stack += [(b, False) for b, _, _ in ins if b in self.driver and b not in arrival]
                    continue
                best, best_in = 0.0, None
                for b, p, d in inputs.pop(bit):
                    chained = cell["type"] == "CCU2C" and p == "CIN"
                    t = arrival.get(b, 0.0) + (0.0 if chained else self.net(b)) + d
                    if t > best:
                        best, best_in = t, b
                arrival[bit], via[bit] = best, best_in
                on_stack.discard(bit)
        return arrival, via

    def endpoints(self) -> list[Endpoint]:
        """Every register, block RAM and LUT RAM input (clocks aside) with its path, slowest first."""
        arrival, via = self.arrivals()
        out = []
        for name, cell in self.cells.items():
            dsp_inputs = [r for r in "AB" if cell["type"] == "MULT18X18D" and registered(cell, "INPUT" + r)]
            if cell["type"] not in ENDPOINT_CELLS and not dsp_inputs:
                continue
            for port, bits in cell["connections"].items():
                if cell["port_directions"].get(port) != "input" or port in CLOCKS:
                    continue
                if cell["type"] == "MULT18X18D" and not (port[0] in dsp_inputs and port[1:].isdigit()):
                    continue  # a registered operand's pins end paths; its control pins are not modelled
                if cell["type"] == "TRELLIS_DPR16X4" and port == "RAD":
                    continue  # the asynchronous read: a path through, not an end
                for b in bits:
                    if isinstance(b, str) or b not in self.driver:
                        continue
                    path, x = [], b
                    while x is not None and x in self.driver:
                        c, p = self.driver[x]
                        path.append((c, p, self.loads.get(x, 0), round(arrival[x], 2)))
                        x = via[x]
                    out.append(Endpoint(round(arrival[b] + self.net(b), 2), name, port, tuple(reversed(path))))
        out.sort(key=lambda e: (-e.delay, e.cell, e.port))
        return out


def register_class(e: Endpoint) -> str:
    """An endpoint's register with its bit index, the Yosys suffixes and the block's layer index
    taken out (``layer3_1_conv2.rpix0_TRELLIS_FF_Q_99`` -> ``L_conv2.rpix0``), and its port."""
    name = re.sub(r"_TRELLIS_FF_Q(_\d+)?$", "", e.cell)
    name = re.sub(r"^layer\d+_\d+", "L", name)
    return re.sub(r"\.\d+\.\d+$", "", name) + "." + e.port


def summary(endpoints: list[Endpoint], threshold_ns: float, top: int = 30) -> dict:
    """The endpoints at or over ``threshold_ns``: how many, by block and by register class (the
    ``top`` largest of each, with their worst delay), and the slowest path."""
    slow = [e for e in endpoints if e.delay >= threshold_ns]

    def grouped(key) -> list[dict]:
        n, worst = collections.Counter(), {}
        for e in slow:
            k = key(e)
            n[k] += 1
            worst[k] = max(worst.get(k, 0.0), e.delay)
        return [{"name": k, "endpoints": c, "worst_ns": worst[k]} for k, c in n.most_common(top)]

    return {"endpoints": len(endpoints), "threshold_ns": threshold_ns, "over": len(slow),
            "worst_ns": endpoints[0].delay if endpoints else 0.0,
            "by_block": grouped(lambda e: e.cell.split(".")[0]), "by_register": grouped(register_class),
            "slowest": [{"cell": c, "port": p, "fanout": f, "arrival_ns": a} for c, p, f, a in endpoints[0].path]
            + [{"cell": endpoints[0].cell, "port": endpoints[0].port, "arrival_ns": endpoints[0].delay}]
            if endpoints else []}
