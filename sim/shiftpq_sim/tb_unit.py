"""cocotb bench for one stream component (``i`` in, ``o`` out, one output per input): every packed
input word goes in, in order, with random gaps, while the sink applies random backpressure; the
outputs must equal the reference model's, word for word. Driven by ``unit.run_unit``."""
from __future__ import annotations

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles

from .axis import AxisSink, AxisSource


@cocotb.test()
async def stream_unit(dut):
    stim = np.load(os.environ["SHIFTPQ_STIMULUS"], allow_pickle=False)
    inputs = [int(v) for v in stim["inputs"]]
    expected = [int(v) for v in stim["expected"]]
    signed = bool(stim["signed"])
    gap, stall = float(os.environ.get("SHIFTPQ_GAP", "0.2")), float(os.environ.get("SHIFTPQ_STALL", "0.2"))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    src = AxisSource(dut, "i", dut.clk, gap=gap, seed=0, style="amaranth")
    sink = AxisSink(dut, "o", dut.clk, stall=stall, seed=1, style="amaranth")
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    cocotb.start_soon(src.send([inputs]))
    beats = await sink.collect(len(expected), signed=signed)
    got = [b[0] for b in beats]
    wrong = [i for i, (g, w) in enumerate(zip(got, expected)) if g != w]
    with open(os.environ["SHIFTPQ_RESULTS"], "w") as f:
        json.dump({"words": len(expected), "mismatches": len(wrong),
                   "first_wrong": [{"index": i, "input": inputs[i], "got": got[i], "expected": expected[i]}
                                   for i in wrong[:10]]}, f)
    assert not wrong, (f"{len(wrong)} of {len(expected)} outputs differ from the reference model; first: "
                       + ", ".join(f"#{i} input {inputs[i]:#x}: got {got[i]}, expected {expected[i]}" for i in wrong[:5]))
