"""Drive an Amaranth component's ``i`` stream and collect its ``o`` stream, with random stalls."""
from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator


def run_stream(dut, payloads: list, seed: int = 0, gap: float = 0.2, stall: float = 0.2,
               n_out: int | None = None, cycles: list | None = None, monitors: tuple = ()) -> list:
    """Every payload in ``payloads`` goes in, in order; returns the output payloads as integers.
    Inputs pause with probability ``gap`` and the sink refuses with probability ``stall``; the run
    ends after ``n_out`` outputs (default: one per input). ``cycles``, when given, receives the
    cycle of each output; ``monitors``: testbenches run in the background alongside."""
    n_out = len(payloads) if n_out is None else n_out
    rng = np.random.default_rng(seed)
    out = []
    cycle = 0

    async def source(ctx):
        for p in payloads:
            ctx.set(dut.i.payload, p)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
            if rng.random() < gap:
                await ctx.tick()

    async def sink(ctx):
        nonlocal cycle
        while len(out) < n_out:
            ready = int(rng.random() >= stall)
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            cycle += 1
            if valid and ready:
                out.append(payload)
                if cycles is not None:
                    cycles.append(cycle)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    for monitor in monitors:
        sim.add_testbench(monitor, background=True)
    sim.run()
    return out
