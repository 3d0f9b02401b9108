"""Requantization units in Amaranth simulation against intops (their reference model), bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import signed, unsigned

from shiftpq import intops
from shiftpq.levels import level_set
from shiftpq_hw.requant import AffineRequant, ThresholdRequant
from streams import run_stream


def test_threshold_requant_matches_intops():
    rng = np.random.default_rng(0)
    lv = level_set(4, False)
    c, bound = 5, 3000
    gain = rng.uniform(-0.01, 0.01, c)
    gain[2] = 0.0  # a constant channel
    th, sign = intops.fold_thresholds(gain, rng.uniform(-0.5, 0.5, c), lv.midpoints, 2.0, bound)
    dut = ThresholdRequant(th, sign, signed(13))
    xs = rng.integers(-bound, bound + 1, 400)
    chans = rng.integers(0, c, 400)
    xs[:c] = bound  # extremes on every channel
    xs[c:2 * c] = -bound
    chans[:2 * c] = np.tile(np.arange(c), 2)
    got = run_stream(dut, [{"x": int(x), "c": int(ch)} for x, ch in zip(xs, chans)])
    want = [int(intops.requant_threshold(np.array([[x]]), th[ch:ch + 1], sign[ch:ch + 1])[0, 0])
            for x, ch in zip(xs, chans)]
    assert got == want
    assert len(set(want)) > 8  # the test spans many levels


@pytest.mark.parametrize("inputs", [1, 2])
def test_affine_requant_matches_intops(inputs):
    rng = np.random.default_rng(inputs)
    c = 6
    gains = [rng.uniform(-1e-5, 1e-5, c)] + ([rng.uniform(0, 0.01, c)] if inputs == 2 else [])
    muls, bias, shift = intops.fold_affine(gains, rng.uniform(-0.5, 1.0, c), 255, 3.0)
    shapes = [signed(20)] + ([unsigned(8)] if inputs == 2 else [])
    dut = AffineRequant(muls, bias, shift, 255, shapes)
    n = 400
    xs = [rng.integers(-(1 << 19), 1 << 19, n)] + ([rng.integers(0, 256, n)] if inputs == 2 else [])
    chans = rng.integers(0, c, n)
    payloads = [{**{f"x{k}": int(x[i]) for k, x in enumerate(xs)}, "c": int(chans[i])} for i in range(n)]
    got = run_stream(dut, payloads, seed=inputs)
    want = []
    for i in range(n):
        ch = chans[i]
        terms = [(np.array([[x[i]]]), mk[ch:ch + 1]) for x, mk in zip(xs, muls)]
        want.append(int(intops.requant_affine(terms, bias[ch:ch + 1], shift[ch:ch + 1], 255)[0, 0]))
    assert got == want
    assert 0 in want and 255 in want and len(set(want)) > 50  # clamps both ways and spans the range


def test_requant_units_reject_mismatched_constants():
    with pytest.raises(ValueError, match="thresholds must be"):
        ThresholdRequant(np.zeros((3, 15)), np.ones(2), signed(8))
    with pytest.raises(ValueError, match="one multiplier array per input"):
        AffineRequant([np.zeros(3)], np.zeros(3), np.zeros(3), 255, [signed(8), unsigned(8)])



@pytest.mark.parametrize("shape", [signed(20), unsigned(8), unsigned(17), unsigned(18), signed(18), signed(36),
                                   unsigned(35), signed(25)])
def test_dsp_chunks_are_multiplier_operands_that_sum_to_the_value(shape):
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator
    from shiftpq_hw.requant import DSP_BITS, dsp_chunks

    v = Signal(shape)
    parts = dsp_chunks(v)
    # every part one multiplier operand: signed, or unsigned with room for Amaranth's sign bit
    assert all(len(p) + (0 if p.shape().signed else 1) <= DSP_BITS for p, _ in parts)
    operand = len(v) + (0 if shape.signed else 1)  # the value's width as a signed operand
    fewest = 1 if operand <= DSP_BITS else 1 + -(-(operand - DSP_BITS) // (DSP_BITS - 1))
    assert len(parts) == fewest  # 17 new bits per part below a full-width top
    total = Signal(signed(len(v) + 2))
    m = Module()
    m.d.comb += total.eq(sum(p << s for p, s in parts))
    lo, hi = (-(1 << (len(v) - 1)), (1 << (len(v) - 1)) - 1) if shape.signed else (0, (1 << len(v)) - 1)
    values = [lo, hi, 0, 1, -1 if shape.signed else 2] + list(np.random.default_rng(len(v)).integers(lo, hi, 40))
    sim = Simulator(m)

    async def tb(ctx):
        for x in values:
            ctx.set(v, int(x))
            assert ctx.get(total) == int(x), (shape, x)

    sim.add_testbench(tb)
    sim.run()
