"""The whole tiny network in Amaranth simulation: image bytes in, class scores out, equal to the
golden model bit for bit; and its Verilog lints and compiles in Icarus."""
from __future__ import annotations

import subprocess

import numpy as np
from amaranth.back import verilog
from amaranth.sim import Simulator

from shiftpq.export import export_model
from shiftpq.golden import Golden
from shiftpq_hw.network import Network
from shiftpq_hw.verilog import verilator_lint_args
from test_export import images, random_net


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


def test_tiny_network_equals_golden_model_back_to_back():
    t = export_model(random_net(0), {"path": "random"})
    x = images(2, 0)
    got, last, _ = run_network(Network(t), x)
    assert np.array_equal(got, Golden(t).run(x))
    assert last == ([0] * 9 + [1]) * 2


def test_tiny_network_verilog_lints_and_compiles(tmp_path):
    t = export_model(random_net(1), {"path": "random"})
    (tmp_path / "top.v").write_text(verilog.convert(Network(t, lanes=2), name="shiftpq_top"))
    lint = subprocess.run(["verilator", *verilator_lint_args(), "top.v"], cwd=tmp_path, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stderr[-3000:]
    ivl = subprocess.run(["iverilog", "-o", "top.vvp", "top.v"], cwd=tmp_path, capture_output=True, text=True)
    assert ivl.returncode == 0, ivl.stderr[-3000:]
    v = (tmp_path / "top.v").read_text()
    for port in ("s_axis_tdata", "s_axis_tvalid", "s_axis_tready", "s_axis_tlast",
                 "m_axis_tdata", "m_axis_tvalid", "m_axis_tready", "m_axis_tlast", "cycles"):
        assert port in v
