"""The PE cost study's MAC-array variants (hw/shiftpq_hw/pe.py): every weight code times every
activation code, exactly, through the array the bench synthesizes, against their NumPy models."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from amaranth.hdl import unsigned
from amaranth.sim import Simulator

from shiftpq.levels import level_set
from shiftpq_hw import pe
from shiftpq_hw.pe import MacArray, VARIANTS


def run_array(dut: MacArray, w_codes: np.ndarray, a_codes: np.ndarray) -> np.ndarray:
    """Feed [cycles, lanes, simd] weight codes and [cycles, simd] activation codes, one cycle each;
    return each cycle's per-lane increment of ``acc`` ([cycles, lanes]): the lane sums."""
    fields = np.asarray(dut.fields_of(w_codes), dtype=np.int64)
    fw = pe.variant_field_shape(dut.kind, dut.wl)
    fbits = fw.size if hasattr(fw, "size") else fw.width
    abits = pe.act_code_shape(dut.al).width
    accbits = dut.acc_shape.width
    steps = len(a_codes)
    words_w = [sum((int(v) & ((1 << fbits) - 1)) << (fbits * (p * dut.fields + f))
                   for p, row in enumerate(fields[t]) for f, v in enumerate(row)) for t in range(steps)]
    words_a = [sum(int(v) << (abits * j) for j, v in enumerate(a_codes[t])) for t in range(steps)]
    accs = []

    async def bench(ctx):
        for t in range(steps + dut.latency + 1):
            ctx.set(dut.w.as_value(), words_w[t] if t < steps else 0)
            ctx.set(dut.a.as_value(), words_a[t] if t < steps else 0)
            await ctx.tick()
            raw = ctx.get(dut.acc.as_value())
            accs.append([((raw >> (accbits * p)) & ((1 << accbits) - 1)) for p in range(dut.lanes)])
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    acc = np.asarray(accs, dtype=np.int64)
    # acc read after the (t + 1)-th tick holds the inputs of cycles 0 .. t - latency + 1; a step is
    # taken modulo the accumulator's width (a long run wraps it), then read as signed
    acc = np.concatenate([np.zeros((1, dut.lanes), dtype=np.int64), acc[dut.latency - 1:]])
    step = np.diff(acc, axis=0)[:steps] & ((1 << accbits) - 1)
    return np.where(step >= 1 << (accbits - 1), step - (1 << accbits), step)


WL, AL = level_set(4, True), level_set(4, False)
N = len(WL.ints) - 1  # weight codes -N .. N


@pytest.mark.parametrize("kind", [k for k in VARIANTS if k != "dsp2"])
def test_variant_every_code_pair(kind):
    """One lane per weight code, one channel, every activation code in turn: each lane's step is one
    product, so every (weight, activation) pair is checked on its own, and against the variant's
    NumPy model (which equals the PE's ``reference``)."""
    wc = np.arange(-N, N + 1)
    ac = np.arange(len(AL.ints))
    if kind == "uniform":  # the uniform baseline's codes are the values: a signed and an unsigned 4-bit
        wc, ac = np.arange(-8, 8), np.arange(16)
    dut = MacArray(kind, WL, AL, lanes=len(wc), simd=1)
    got = run_array(dut, np.broadcast_to(wc[None, :, None], (len(ac), len(wc), 1)), ac[:, None])
    W, A = np.meshgrid(wc, ac, indexing="xy")  # [act, weight]
    p, c = pe.variant_reference(kind, W, A, WL, AL)
    want = W * A if kind == "uniform" else pe.reference(W, A, WL, AL)
    assert (p + c == want).all()
    assert (got == want).all()


def test_dsp_pair_every_code_quadruple():
    """Two products in one 18x18 multiplier: every (w_hi, w_lo, a0, a1) code quadruple, in NumPy
    (the packing arithmetic, bit for bit) and through the array (one lane per w_hi, every w_lo x a0
    x a1 in turn)."""
    h, lo, a0, a1 = (x.ravel() for x in np.meshgrid(np.arange(-N, N + 1), np.arange(-N, N + 1),
                                                   np.arange(16), np.arange(16), indexing="ij"))
    mid, c = pe.dsp_reference(h, lo, a0, a1, WL, AL)
    assert (mid + c == pe.reference(h, a0, WL, AL) + pe.reference(lo, a1, WL, AL)).all()
    assert set(np.unique(c)) == {0, 1}  # the borrow happens
    his = np.arange(-N, N + 1)
    rest = list(itertools.product(range(-N, N + 1), range(16), range(16)))
    w = np.asarray([[[hh, l] for hh in his] for l, _, _ in rest])
    a = np.asarray([[x, y] for _, x, y in rest])
    dut = MacArray("dsp2", WL, AL, lanes=len(his), simd=2)
    assert (run_array(dut, w, a) == dut.reference(a, w)).all()


@pytest.mark.parametrize("kind,lanes,simd,tree", [(k, 2, 5, "comb") for k in VARIANTS]
                         + [("dsp2", 3, 4, "comb"), ("multiples", 1, 12, "comb"), ("xy", 2, 5, "registered"),
                            ("dsp2", 1, 7, "registered")])
def test_array_sums_random_streams(kind, lanes, simd, tree):
    """Several lanes and channels (an odd simd: dsp2's last pair has one channel), both kinds of
    adder tree: the lane sums with their + 1s, cycle by cycle."""
    rng = np.random.default_rng(lanes * 100 + simd)
    wc = rng.integers(-N, N + 1, size=(40, lanes, simd))
    ac = rng.integers(0, len(AL.ints), size=(40, simd))
    dut = MacArray(kind, WL, AL, lanes, simd, tree=tree)
    assert (run_array(dut, wc, ac) == dut.reference(ac, wc)).all()


def test_xy_split_and_rejections():
    xs, ys, picks = pe.xy_split(WL)
    assert (xs, ys) == ((1, 6), (2, 4))
    X, Y = (0, *xs), (0, *ys)
    assert [X[i] + Y[j] for i, j in picks] == list(WL.ints)
    with pytest.raises(ValueError, match="do not pack"):
        pe.dsp_pair_layout(level_set(8, True), level_set(8, False))
    with pytest.raises(ValueError, match="variant"):
        MacArray("booth", WL, AL, 1, 1)
    assert unsigned(3).width == 3
