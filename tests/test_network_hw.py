"""The whole tiny network in Amaranth simulation: image bytes in, class scores out, equal to the
golden model bit for bit, at exactly the modelled rate, unfolded and folded (the generated Verilog's
lint and Icarus build: test_gen.py)."""
from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from shiftpq.export import export_model
from shiftpq.golden import Golden
from shiftpq.testnets import images, random_net
from shiftpq_hw.network import Network
from shiftpq_hw.plan import Kind, make_plan


def run_network(dut, x: np.ndarray):
    scores, last, stamps = [], [], []

    async def source(ctx):
        for img in x:
            data = img.transpose(1, 2, 0).reshape(-1)  # raster order, R G B per pixel
            for j, b in enumerate(data):
                ctx.set(dut.s_axis_tdata, int(b))
                ctx.set(dut.s_axis_tlast, int(j == len(data) - 1))
                ctx.set(dut.s_axis_tvalid, 1)
                await ctx.tick().until(dut.s_axis_tready)
            ctx.set(dut.s_axis_tvalid, 0)

    async def sink(ctx):
        ctx.set(dut.m_axis_tready, 1)
        while len(scores) < 10 * len(x):
            _, _, valid, d, lst, cyc = await ctx.tick().sample(dut.m_axis_tvalid, dut.m_axis_tdata,
                                                               dut.m_axis_tlast, dut.cycles)
            if valid:
                scores.append(d - (1 << 32) if d >= 1 << 31 else d)
                last.append(lst)
                stamps.append(cyc)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return np.array(scores).reshape(len(x), 10), last, stamps


def test_tiny_network_equals_golden_model_back_to_back_at_the_modelled_rate():
    """Three images back to back: every score bit-exact, and from the second image on one image
    leaves every ``cycles_per_image`` cycles exactly (the slowest block's period)."""
    t = export_model(random_net(0), {"path": "random"})
    x = images(3, 0)
    plan = make_plan(t, None)
    got, last, stamps = run_network(Network(plan), x)
    assert np.array_equal(got, Golden(t).run(x))
    assert last == ([0] * 9 + [1]) * 3
    ends = stamps[9::10]
    assert [b - a for a, b in zip(ends, ends[1:])] == [plan.period] * 2


def test_folded_tiny_network_equals_golden_model_at_the_modelled_rate():
    """PAR chosen so the busiest layers fold (lanes and simd below their channel counts)."""
    t = export_model(random_net(4), {"path": "random"})
    plan = make_plan(t, 6)
    folded = [b for b in plan.blocks if b.kind == Kind.CONV and b.groups * b.chunks > 1]
    assert len(folded) >= 3
    x = images(2, 4)
    got, _, stamps = run_network(Network(plan), x)
    assert np.array_equal(got, Golden(t).run(x))
    assert stamps[19] - stamps[9] == plan.period == 18432


def test_tiny_network_with_multiplier_pairs_equals_golden_model():
    """Every 4-bit conv's PEs as many multiplier pairs as its lanes allow (all of a lane's channels on
    multipliers where simd is even, one left in logic where it is odd): the same scores and cycles."""
    t = export_model(random_net(4), {"path": "random"})
    plan = make_plan(t, 6, dsp_pairs=100)
    convs = [b for b in plan.blocks if b.kind == Kind.CONV]
    assert {(b.simd, b.pairs) for b in convs if b.pairs} >= {(2, 1), (5, 2)}
    assert all(b.pairs == 0 for b in convs if b.name == "stem")  # 8-bit image: no pairs
    assert plan.period == make_plan(t, 6).period
    x = images(2, 4)
    got, _, stamps = run_network(Network(plan), x)
    assert np.array_equal(got, Golden(t).run(x))
    assert stamps[19] - stamps[9] == plan.period
