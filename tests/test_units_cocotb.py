"""Unit-level cocotb benches (sim/shiftpq_sim/unit.py) on the generated Verilog of single components:
the PE exhaustively, the requantization units at every threshold boundary and at saturation, the
option-A shortcut, a folded conv engine (the MAC array), the fused residual add (two input streams),
the average pool and the FC against the golden model's trace, each with random input gaps and output backpressure."""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from shiftpq import intops, ir
from shiftpq.errors import ShiftPQError
from shiftpq.export import export_model
from shiftpq.golden import Golden
from shiftpq.levels import level_set
from shiftpq.testnets import images, random_net
from shiftpq_hw.blocks import AvgPoolRequant, FullyConnected, ShortcutPath
from shiftpq_hw.conv import ConvRequant
from shiftpq_hw.pe import ShiftAddPE, act_code_shape, reference
from shiftpq_hw.requant import AffineRequant, ThresholdRequant
from shiftpq_sim.unit import pack, run_unit
from test_pe import all_codes


@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_pe_every_weight_code_times_every_activation_code(simulator, tmp_path):
    wl, al, pairs = all_codes(4, 4)  # both signs, zero, every code
    want = reference([w for w, _ in pairs], [a for _, a in pairs], wl, al)
    r = run_unit(ShiftAddPE(wl, al), "pe", [{"w": w, "a": a} for w, a in pairs], [int(v) for v in want],
                 tmp_path, simulator)
    assert r["words"] == len(pairs) == 15 * 16 and r["mismatches"] == 0


def test_threshold_requant_at_every_boundary(tmp_path):
    """x = threshold - 1, threshold, threshold + 1 of every level of every channel (negative gains
    and a constant channel included), and the input extremes."""
    rng = np.random.default_rng(3)
    c, bound = 4, 2000
    gain = rng.uniform(-0.01, 0.01, c)
    gain[0], gain[1] = -abs(gain[0]), 0.0
    th, sign = intops.fold_thresholds(gain, rng.uniform(-0.5, 0.5, c), level_set(4, False).midpoints, 2.0, bound)
    cases = [(int(x), ch) for ch in range(c) for t in th[ch] for x in (sign[ch] * (t - 1), sign[ch] * t, sign[ch] * (t + 1))
             if -bound <= x <= bound] + [(x, ch) for ch in range(c) for x in (-bound, 0, bound)]
    want = [int(intops.requant_threshold(np.array([[x]]), th[ch:ch + 1], sign[ch:ch + 1])[0, 0]) for x, ch in cases]
    r = run_unit(ThresholdRequant(th, sign, signed(12)), "requant_th", [{"x": x, "c": ch} for x, ch in cases],
                 want, tmp_path)
    assert r["mismatches"] == 0 and set(want) == set(range(16))  # every output level is reached


def test_affine_requant_saturates_both_ways(tmp_path):
    rng = np.random.default_rng(5)
    c = 3
    muls, bias, shift = intops.fold_affine([rng.uniform(2e-4, 4e-4, c) * rng.choice([-1, 1], c), rng.uniform(0, 0.01, c)],
                                           rng.uniform(-0.5, 1.0, c), 255, 3.0)
    xs = [(x0, x1, ch) for ch in range(c) for x0 in (-(1 << 15), -1, 0, 1, (1 << 15) - 1) for x1 in (0, 1, 128, 255)]
    xs += [(int(a), int(b), int(ch)) for a, b, ch in zip(rng.integers(-(1 << 15), 1 << 15, 200),
                                                          rng.integers(0, 256, 200), rng.integers(0, c, 200))]
    want = [int(intops.requant_affine([(np.array([[a]]), muls[0][ch:ch + 1]), (np.array([[b]]), muls[1][ch:ch + 1])],
                                      bias[ch:ch + 1], shift[ch:ch + 1], 255)[0, 0]) for a, b, ch in xs]
    r = run_unit(AffineRequant(muls, bias, shift, 255, [signed(16), unsigned(8)]), "requant_affine",
                 [{"x0": a, "x1": b, "c": ch} for a, b, ch in xs], want, tmp_path)
    assert r["mismatches"] == 0 and 0 in want and 255 in want


def test_unit_bench_catches_a_wrong_reference(tmp_path):
    """The bench can fail: one expected product changed by one is reported, with its index."""
    wl, al = level_set(4, True), level_set(4, False)
    pairs = [(w, a) for w in (-7, 3, 7) for a in (0, 5, 15)]
    want = [int(v) for v in reference([w for w, _ in pairs], [a for _, a in pairs], wl, al)]
    want[4] += 1
    with pytest.raises(ShiftPQError, match=r"1 of 9 outputs differ.*'index': 4"):
        run_unit(ShiftAddPE(wl, al), "pe", [{"w": w, "a": a} for w, a in pairs], want, tmp_path)


def test_unit_bench_stops_a_hung_component(tmp_path):
    """A component that never takes its input: the watchdog ends the bench after its budget (from
    the word counts) and names the input stream whose tready stayed low, instead of waiting for ever."""
    from amaranth.hdl import Module, Signal
    from amaranth.lib import stream, wiring
    from amaranth.lib.wiring import In, Out

    class Hung(wiring.Component):
        def __init__(self):
            super().__init__({"i": In(stream.Signature(8)), "o": Out(stream.Signature(8))})

        def elaborate(self, platform):
            m = Module()
            held = Signal(8)
            m.d.sync += held.eq(self.i.payload)  # a clock domain, as every real block has
            m.d.comb += [self.i.ready.eq(0), self.o.payload.eq(held), self.o.valid.eq(0)]
            return m

    with pytest.raises(ShiftPQError, match=r"hung on icarus: i stopped: tready low for \d+ cycles while word 0 of 3"):
        run_unit(Hung(), "hung", [1, 2, 3], [1, 2, 3], tmp_path, simulator="icarus")


def _traced(seed: int):
    """Tables of a random network and the golden model's trace of two images through it."""
    t = export_model(random_net(seed), {"path": None})
    _, env = Golden(t).run(images(2, seed), trace=True)
    return t, env


def _pixels(a: np.ndarray) -> list[list[int]]:
    return [[int(v) for v in px] for px in a.reshape(-1, a.shape[-1])]


def test_option_a_shortcut_subsamples_like_the_golden_model(tmp_path):
    """The stride-2 shortcut keeps the pixels on the stride grid of both images, in order."""
    t, env = _traced(1)
    op = next(o for o in t.ops if isinstance(o, ir.Shortcut) and o.stride == 2)
    src = env[op.src]
    shape = data.ArrayLayout(act_code_shape(t.level_set(t.tensors[op.src].levels)), src.shape[-1])
    want = [pack(shape, px) for px in _pixels(env[op.src][:, ::2, ::2])]
    r = run_unit(ShortcutPath(shape, src.shape[1], 2), "shortcut", _pixels(src), want, tmp_path)
    assert r["mismatches"] == 0 and r["words"] == 2 * (src.shape[1] // 2) ** 2


def test_average_pool_and_fc_equal_the_golden_model(tmp_path):
    """Average pool + requantization, then the 8-bit FC: the class scores of two images, `last` on
    every tenth, against the golden model's trace."""
    t, env = _traced(2)
    pool = next(o for o in t.ops if isinstance(o, ir.AvgPool))
    act = next(o for o in t.ops if isinstance(o, ir.Requant) and o.src == pool.dst)
    fc = next(o for o in t.ops if isinstance(o, ir.FC))
    dut = AvgPoolRequant(t.level_set(t.tensors[pool.src].levels), t.level_set(act.levels), pool.hw,
                         act.mul, act.bias, act.shift)
    out = dut.signature.members["o"].signature.members["payload"].shape
    r = run_unit(dut, "avgpool", _pixels(env[pool.src]), [pack(out, row) for row in _pixels(env[act.dst])],
                 tmp_path / "pool")
    assert r["mismatches"] == 0 and r["words"] == 2
    fcd = FullyConnected(fc.weight, t.level_set(fc.weight_levels), t.level_set(act.levels),
                         fc.bias, fc.shift)
    out = fcd.signature.members["o"].signature.members["payload"].shape
    want = [pack(out, {"score": int(s), "last": int(k == 9)}) for row in env[fc.dst] for k, s in enumerate(row)]
    r = run_unit(fcd, "fc", _pixels(env[act.dst]), want, tmp_path / "fc")
    assert r["mismatches"] == 0 and r["words"] == 20


@pytest.mark.parametrize("layer", ["layer1.0.conv1", "layer3.0.conv1"])
def test_folded_conv_engine_equals_the_golden_model(layer, tmp_path):
    """A conv engine alone (line buffer, the MAC array of shift-add PEs folded over half the output
    and half the input channels, threshold requantization; stride 1 and stride 2) on a real layer's
    input maps of two images, against the golden model's trace."""
    t, env = _traced(3)
    conv = next(o for o in t.ops if o.name == layer)
    rq = next(o for o in t.ops if isinstance(o, ir.Requant) and o.src == conv.dst)
    kept, c_in = len(t.tensors[rq.dst].channels), len(conv.in_channels)
    dut = ConvRequant.from_tables(t, conv, rq, max(1, kept // 2), max(1, c_in // 2))
    out = dut.signature.members["o"].signature.members["payload"].shape
    want = [pack(out, px) for px in _pixels(env[rq.dst])]
    r = run_unit(dut, "conv", _pixels(env[conv.src]), want, tmp_path)
    assert r["mismatches"] == 0 and r["words"] == 2 * conv.out_hw ** 2


@pytest.mark.parametrize("block", ["layer1.0", "layer2.0"])
def test_fused_residual_add_equals_the_golden_model(block, tmp_path):
    """A block's second conv engine with the residual add fused into it (two input streams: the conv
    input ``i`` and the shortcut ``r``, each with its own random gaps), folded over half the output
    and input channels: the identity shortcut (layer1.0) and the stride-2 option-A shortcut with its
    zero channels (layer2.0). Two real images' tensors from the golden trace, then edge cases run
    through the golden model's own ops: both inputs all zero, both at the top code (saturation),
    and each at the top with the other zero."""
    t, env = _traced(4)
    g = Golden(t)
    add = next(o for o in t.ops if o.name == f"{block}.add")
    conv = next(o for o in t.ops if o.dst == add.srcs[0])
    src, sc = conv.src, add.srcs[1]
    kept, c_in = len(t.tensors[add.dst].channels), len(conv.in_channels)
    dut = ConvRequant.from_tables(t, conv, add, max(1, kept // 2), max(1, c_in // 2))
    tops = {n: len(t.level_set(t.tensors[n].levels).ints) - 1 for n in (src, sc)}
    edge = {src: [], sc: []}
    for top_i, top_r in ((0, 0), (1, 1), (1, 0), (0, 1)):
        edge[src].append(np.full(env[src].shape[1:], top_i * tops[src], env[src].dtype))
        edge[sc].append(np.full(env[sc].shape[1:], top_r * tops[sc], env[sc].dtype))
    x = {n: np.concatenate([env[n], np.stack(edge[n])]) for n in (src, sc)}
    x[conv.dst] = g.apply(conv, x)
    want_codes = g.apply(add, x)
    top_out = len(t.level_set(add.levels).ints) - 1
    assert {0, top_out} <= set(np.unique(want_codes))  # the edge cases reach both ends of the output
    out = dut.signature.members["o"].signature.members["payload"].shape
    r = run_unit(dut, "resadd", {"i": _pixels(x[src]), "r": _pixels(x[sc])},
                 [pack(out, px) for px in _pixels(want_codes)], tmp_path)
    assert r["mismatches"] == 0 and r["words"] == 6 * conv.out_hw ** 2
    assert np.array_equal(want_codes[:2], env[add.dst])
