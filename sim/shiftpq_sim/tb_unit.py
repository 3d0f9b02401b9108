"""cocotb bench for one stream component (input streams, usually just ``i``; output ``o``): every
packed input word of every input stream goes in, in order, each stream with its own random gaps,
while the sink applies random backpressure; the outputs must equal the reference model's, word for
word. Driven by ``unit.run_unit``."""
from __future__ import annotations

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, select

from .axis import CLOCK_NS, AxisSink, AxisSource, StreamStopped, watchdog


@cocotb.test()
async def stream_unit(dut):
    with open(os.environ["SHIFTPQ_STIMULUS"]) as f:
        stim = json.load(f)
    inputs, expected, signed = stim["inputs"], stim["expected"], stim["signed"]
    gap, stall = float(os.environ.get("SHIFTPQ_GAP", "0.2")), float(os.environ.get("SHIFTPQ_STALL", "0.2"))
    budget = int(os.environ["SHIFTPQ_BUDGET"])
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    sources = {p: AxisSource(dut, p, dut.clk, gap=gap, seed=10 * k, style="amaranth")
               for k, p in enumerate(sorted(inputs))}
    sink = AxisSink(dut, "o", dut.clk, stall=stall, seed=1, style="amaranth")
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    for p, src in sources.items():
        cocotb.start_soon(src.send([inputs[p]]))
    try:
        _, beats = await select(sink.collect(len(expected), signed=signed), watchdog(budget, list(sources.values()), sink))
    except StreamStopped as e:
        with open(os.environ["SHIFTPQ_RESULTS"], "w") as f:
            json.dump({"stopped": str(e), "words": len(expected), "received": len(sink.beats)}, f)
        raise
    got = [b[0] for b in beats]
    wrong = [i for i, (g, w) in enumerate(zip(got, expected)) if g != w]
    with open(os.environ["SHIFTPQ_RESULTS"], "w") as f:
        json.dump({"words": len(expected), "mismatches": len(wrong),
                   "first_wrong": [{"index": i, "got": got[i], "expected": expected[i]} for i in wrong[:10]]}, f)
    assert not wrong, (f"{len(wrong)} of {len(expected)} outputs differ from the reference model; first: "
                       + ", ".join(f"#{i}: got {got[i]}, expected {expected[i]}" for i in wrong[:5]))
