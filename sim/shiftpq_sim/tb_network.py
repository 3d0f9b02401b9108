"""The whole accelerator against the golden model: real images stream in back to back, every class
score must equal the golden model's, and the interval between images must equal cycles.json.

Configured by the runner through environment variables: ``SHIFTPQ_STIMULUS`` (an .npz with
``images`` uint8 [N, 3, 32, 32] and ``expected`` int64 [N, 10]), ``SHIFTPQ_CYCLES`` (the modelled
cycles per image), ``SHIFTPQ_RESULTS`` (where to write the measured figures as JSON),
``SHIFTPQ_GAP`` / ``SHIFTPQ_STALL`` (random source pauses / sink backpressure probabilities),
``SHIFTPQ_BUDGET`` (the watchdog: cycles without a score beat after which the bench fails, naming the
stream that stopped; ``harness.budget_cycles``),
``SHIFTPQ_PROBES`` (optional: a JSON list of block instance names whose output streams are recorded,
every accepted beat, into ``SHIFTPQ_RESULTS`` under ``probed``: the mismatch diagnosis)."""
from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, select

from shiftpq_sim.axis import CLOCK_NS, AxisSink, AxisSource, StreamStopped, watchdog
from shiftpq_sim.harness import IMAGE_BYTES, raster_bytes
from shiftpq_sim.scoreboard import Scoreboard


async def probe(clk, block, words: list[int]) -> None:
    """Record the payload of every beat that ``block``'s output stream hands over."""
    valid, ready, payload = block.o__valid, block.o__ready, block.o__payload
    while True:
        await RisingEdge(clk)
        await ReadOnly()
        v = valid.value
        if v.is_resolvable and int(v) and int(ready.value):
            words.append(payload.value.to_unsigned())


@cocotb.test()
async def scores_equal_golden_and_cycles_equal_model(dut):
    with np.load(os.environ["SHIFTPQ_STIMULUS"], allow_pickle=False) as f:
        images, expected = f["images"], f["expected"]
    model_cycles = int(os.environ["SHIFTPQ_CYCLES"])
    gap, stall = float(os.environ.get("SHIFTPQ_GAP", 0)), float(os.environ.get("SHIFTPQ_STALL", 0))
    n, classes = expected.shape
    budget = int(os.environ["SHIFTPQ_BUDGET"])
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    source = AxisSource(dut, "s_axis", dut.clk, gap=gap)
    sink = AxisSink(dut, "m_axis", dut.clk, counter=dut.cycles, stall=stall)
    probed = {name: [] for name in json.loads(os.environ.get("SHIFTPQ_PROBES", "[]"))}
    for name, words in probed.items():
        cocotb.start_soon(probe(dut.clk, getattr(dut, name), words))
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    t0, c0 = time.perf_counter(), time.process_time()
    stream = raster_bytes(images)
    frames = [stream[i * IMAGE_BYTES:(i + 1) * IMAGE_BYTES] for i in range(n)]
    cocotb.start_soon(source.send(frames, log=dut._log if os.environ.get("SHIFTPQ_DEBUG") else None))
    try:
        for i in range(n):
            _, beats = await select(sink.collect((i + 1) * classes), watchdog(budget, [source], sink))
            dut._log.info(f"image {i + 1}/{n}: scores out at cycle {beats[-1][2]}")
    except StreamStopped as e:
        with open(os.environ["SHIFTPQ_RESULTS"], "w") as f:
            json.dump({"stopped": str(e), "images_done": len(sink.beats) // classes}, f, indent=1)
        raise
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0  # the simulator and Python: one process
    board = Scoreboard(expected)
    ends = []
    for i in range(n):
        b = beats[i * classes:(i + 1) * classes]
        board.check(i, [d for d, _, _ in b], [last for _, last, _ in b])
        ends.append(b[-1][2])
    intervals = [e1 - e0 for e0, e1 in zip(ends, ends[1:])]
    result = {"images": n, "mismatches": len(board.wrong), "wrong": board.wrong[:10],
              "latency_cycles": ends[0], "intervals": intervals,
              "cycles_per_image": intervals[-1] if intervals else None, "model_cycles_per_image": model_cycles,
              "simulated_cycles": ends[-1], "wall_s": round(wall, 3),
              "sim_cycles_per_s": round(ends[-1] / wall, 1), "wall_s_per_image": round(wall / n, 3),
              "sim_cycles_per_cpu_s": round(ends[-1] / cpu, 1),
              **({"probed": probed} if probed else {})}
    with open(os.environ["SHIFTPQ_RESULTS"], "w") as f:
        json.dump(result, f, indent=1)
    board.raise_if_wrong()
    if not (gap or stall):  # a steady stream: from the second image on, exactly the modelled period
        assert all(d == model_cycles for d in intervals), f"intervals {intervals} != model {model_cycles}"
