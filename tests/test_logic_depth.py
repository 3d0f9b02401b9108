"""The placement-free timing estimate (hw/shiftpq_hw/depth.py, bench/logic_depth.py) on netlists made
by hand, where every delay can be worked out from the model's constants."""
from __future__ import annotations

import json
import math

import pytest

from shiftpq.errors import ShiftPQError
from shiftpq_hw import depth
from shiftpq_hw.depth import Netlist, summary


def ff(d: int, q: int, clk: int = 1) -> dict:
    return {"type": "TRELLIS_FF", "port_directions": {"CLK": "input", "DI": "input", "Q": "output"},
            "connections": {"CLK": [clk], "DI": [d], "Q": [q]}}


def lut(a: int, b: int, z: int) -> dict:
    return {"type": "LUT4", "port_directions": {p: "input" for p in "ABCD"} | {"Z": "output"},
            "connections": {"A": [a], "B": [b], "C": ["0"], "D": ["0"], "Z": [z]}}


def net(fanout: int) -> float:
    return depth.NET_BASE + depth.NET_PER_DOUBLING * math.log2(fanout)


def test_a_path_through_two_luts_and_a_wide_net():
    """r0 -> LUT -> LUT -> r1, r0 also driving three more LUT inputs (fanout 4); r1 -> r2 directly."""
    cells = {"r0": ff(20, 10), "a": lut(10, 10, 11), "b": lut(11, 10, 12), "r1": ff(12, 13), "r2": ff(13, 20),
             "x": lut(10, 13, 14)}
    eps = Netlist({"cells": cells}).endpoints()
    got = {(e.cell, e.port): e.delay for e in eps}
    q = depth.CLOCK_TO_Q["TRELLIS_FF"]
    r0_fanout = 4  # a.A, a.B, b.B, x.A
    want_r1 = q + net(r0_fanout) + depth.LUT + net(1) + depth.LUT + net(1)
    assert got["r1", "DI"] == pytest.approx(want_r1, abs=0.01)
    assert got["r2", "DI"] == pytest.approx(q + net(2), abs=0.01)  # r1.Q loads r2 and x
    worst = eps[0]
    assert (worst.cell, worst.port) == ("r1", "DI")
    assert [c for c, *_ in worst.path] == ["r0", "a", "b"]
    s = summary(eps, threshold_ns=want_r1 - 0.01)
    assert s["over"] == 1 and s["by_register"][0] == {"name": "r1.DI", "endpoints": 1, "worst_ns": round(want_r1, 2)}


def test_carry_chains_are_not_routed_and_loops_are_refused():
    cc = {"type": "CCU2C", "port_directions": {"A0": "input", "CIN": "input", "COUT": "output", "S0": "output"},
          "connections": {"A0": [10], "CIN": ["0"], "COUT": [11], "S0": [12]}}
    cc2 = {"type": "CCU2C", "port_directions": {"A0": "input", "CIN": "input", "COUT": "output", "S0": "output"},
           "connections": {"A0": ["0"], "CIN": [11], "COUT": [13], "S0": [14]}}
    cells = {"r0": ff(14, 10), "c0": cc, "c1": cc2}
    e = {(x.cell, x.port): x.delay for x in Netlist({"cells": cells}).endpoints()}
    q = depth.CLOCK_TO_Q["TRELLIS_FF"]
    assert e["r0", "DI"] == pytest.approx(q + net(1) + depth.CARRY_LOGIC + depth.CARRY_SUM + net(1), abs=0.01)
    with pytest.raises(ShiftPQError, match="combinational loop"):
        Netlist({"cells": {"a": lut(11, 0, 10), "b": lut(10, 0, 11), "r": ff(11, 12)}}).endpoints()


def mult(a: int, b: int, p: int, registered: bool) -> dict:
    """A MULT18X18D on one bit of each operand and of the product (the model's arcs do not care)."""
    regs = {f"REG_{r}_CLK": "CLK0" if registered else "NONE" for r in ("INPUTA", "INPUTB", "OUTPUT")}
    return {"type": "MULT18X18D", "parameters": regs,
            "port_directions": {"A0": "input", "B0": "input", "CE0": "input", "CLK0": "input", "P0": "output"},
            "connections": {"A0": [a], "B0": [b], "CE0": [a], "CLK0": [1], "P0": [p]}}


@pytest.mark.parametrize("registered", [False, True])
def test_a_multiplier_with_and_without_its_own_registers(registered):
    """r0, r1 -> MULT18X18D -> LUT -> r2: one path through the multiplier; with its registers, one
    path into its operand pins and one from its product."""
    cells = {"r0": ff(20, 10), "r1": ff(21, 11), "m": mult(10, 11, 12, registered), "x": lut(12, 12, 13),
             "r2": ff(13, 20), "r3": ff(13, 21)}
    e = {(x.cell, x.port): x.delay for x in Netlist({"cells": cells}).endpoints()}
    q = depth.CLOCK_TO_Q["TRELLIS_FF"]
    if registered:
        assert e["m", "A0"] == pytest.approx(q + net(2), abs=0.01)  # r0.Q loads the operand and CE (ignored)
        assert e["m", "B0"] == pytest.approx(q + net(1), abs=0.01)
        assert e["r2", "DI"] == pytest.approx(depth.CLOCK_TO_Q["MULT18X18D"] + net(2) + depth.LUT + net(2), abs=0.01)
    else:
        assert ("m", "A0") not in e
        assert e["r2", "DI"] == pytest.approx(q + net(2) + depth.MULT + net(2) + depth.LUT + net(2), abs=0.01)


def test_bad_netlists_are_refused(tmp_path):
    (tmp_path / "n.json").write_text("{}")
    with pytest.raises(ShiftPQError, match="not a Yosys JSON netlist"):
        Netlist.load(tmp_path / "n.json")
    (tmp_path / "m.json").write_text(json.dumps({"modules": {"top": {"cells": {"u": {
        "type": "SB_LUT4", "port_directions": {"O": "output"}, "connections": {"O": [5]}}, "r": ff(5, 6)}}}}))
    with pytest.raises(ShiftPQError, match="not modelled"):
        Netlist.load(tmp_path / "m.json").endpoints()


@pytest.mark.parametrize("regmode", ["NOREG", "OUTREG"])
def test_a_block_ram_read_with_and_without_its_output_register(regmode):
    """A DP16KD's data output straight into a register: its clock to output is the output register's
    once the netlist pass (outreg.py) set REGMODE."""
    ram = {"type": "DP16KD", "parameters": {"REGMODE_A": regmode, "REGMODE_B": "NOREG"},
           "port_directions": {"CLKA": "input", "DOA0": "output"}, "connections": {"CLKA": [1], "DOA0": [10]}}
    got = {(e.cell, e.port): e.delay for e in Netlist({"cells": {"m": ram, "r": ff(10, 11)}}).endpoints()}
    q = depth.OUTREG_CLOCK_TO_Q if regmode == "OUTREG" else depth.CLOCK_TO_Q["DP16KD"]
    assert got["r", "DI"] == pytest.approx(q + net(1), abs=0.01)
