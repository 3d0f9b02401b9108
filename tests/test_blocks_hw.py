"""Stream blocks against the golden model's ops, in Amaranth simulation."""
from __future__ import annotations

import numpy as np
import pytest

from shiftpq import intops, ir
from shiftpq.export import export_model
from shiftpq.golden import Golden
from shiftpq.levels import level_set
from shiftpq.testnets import images, random_net
from shiftpq_hw.blocks import AvgPoolRequant, CodeLUT, FullyConnected, MaxPool, ShortcutPath
from streams import run_stream


def _setup(seed=0):
    t = export_model(random_net(seed), {"path": "random"})
    x = images(2, seed)
    g = Golden(t)
    _, env = g.run(x, trace=True)
    return t, g, env


@pytest.fixture(scope="module")
def code_lut_case():
    """layer2.0's 4-bit quantizer of the 8-bit stream: (a CodeLUT maker taking its lanes, its input
    pixels, its golden output)."""
    t, g, env = _setup(0)
    op = next(o for o in t.ops if o.name == "layer2.0.act_in")
    src = env[op.src]
    make = lambda lanes=1: CodeLUT(g.code_table(op.name), t.level_set(t.tensors[op.src].levels),
                                   t.level_set(op.levels), lanes)
    return make, [[int(v) for v in px] for px in src.reshape(-1, src.shape[-1])], env[op.dst]


@pytest.mark.parametrize("lanes", [1, 2, "all"])
def test_code_lut_equals_golden_requant_of_codes(code_lut_case, lanes):
    make, pixels, want = code_lut_case
    got = run_stream(make(len(pixels[0]) if lanes == "all" else lanes), pixels)
    assert np.array_equal(np.array(got), want.reshape(len(got), -1))


@pytest.mark.parametrize("lanes", [1, 2, "all"])
def test_code_lut_takes_a_pixel_every_steps_plus_overhead_cycles(code_lut_case, lanes):
    """With the source and the sink never waiting, a pixel leaves every ``CodeLUT.cycles(1, ...)``
    cycles: the plan's cycle model of the block."""
    make, pixels, _ = code_lut_case
    c = len(pixels[0])
    lanes = c if lanes == "all" else lanes
    cycles = []
    got = run_stream(make(lanes), pixels[:20], gap=0, stall=0, cycles=cycles)
    assert len(got) == 20 and set(np.diff(cycles)) == {CodeLUT.cycles(1, c, lanes)}


def test_code_lut_with_a_table_per_channel():
    """Channels with different tables (a lane indexes its tables by the step), a channel count that
    is not a multiple of the lanes, and every input code in every channel."""
    rng = np.random.default_rng(5)
    u8, a4 = level_set(8, False), level_set(4, False)
    luts = np.sort(rng.integers(0, 16, (256, 7)), axis=0)
    pixels = [[(p + 37 * ch) % 256 for ch in range(7)] for p in range(256)]
    for lanes in (1, 3):
        got = run_stream(CodeLUT(luts, u8, a4, lanes), pixels, seed=lanes)
        assert np.array_equal(np.array(got), luts[np.array(pixels), np.arange(7)])


def test_shortcut_path_subsamples_and_buffers_a_whole_map():
    t, g, env = _setup(1)
    op = next(o for o in t.ops if isinstance(o, ir.Shortcut))
    src = env[op.src][0]
    levels = t.level_set(t.tensors[op.src].levels)
    from amaranth.lib import data
    from shiftpq_hw.pe import act_code_shape
    dut = ShortcutPath(data.ArrayLayout(act_code_shape(levels), src.shape[-1]), src.shape[0], op.stride)
    n_out = env[op.dst][0].shape[0] * env[op.dst][0].shape[1]
    got = run_stream(dut, [[int(v) for v in px] for px in src.reshape(-1, src.shape[-1])], n_out=n_out)
    assert np.array_equal(np.array([[int(v) for v in o] for o in got]), env[op.dst][0].reshape(len(got), -1))



def test_shortcut_path_gives_a_pixel_every_third_cycle_in_order():
    """The FIFO's read side runs on its own registers (blocks.ShortcutPath): with the source and
    the sink never waiting, a pixel every third cycle, in order, the first four cycles after the
    first one went in."""
    from amaranth.lib import data
    cycles = []
    got = run_stream(ShortcutPath(data.ArrayLayout(8, 4), 4, 1, depth=8),
                     [[(7 * p + c) % 256 for c in range(4)] for p in range(16)], gap=0, stall=0, cycles=cycles)
    assert [[int(v) for v in px] for px in got] == [[(7 * p + c) % 256 for c in range(4)] for p in range(16)]
    assert cycles == [4 + 3 * p for p in range(16)]

def test_avgpool_requant_and_fc_equal_golden():
    t, g, env = _setup(2)
    pool = next(o for o in t.ops if isinstance(o, ir.AvgPool))
    act = next(o for o in t.ops if isinstance(o, ir.Requant) and o.src == pool.dst)
    fc = next(o for o in t.ops if isinstance(o, ir.FC))
    src = env[pool.src]
    dut = AvgPoolRequant(t.level_set(t.tensors[pool.src].levels), t.level_set(act.levels), pool.hw,
                         act.mul, act.bias, act.shift)
    pixels = [[int(v) for v in px] for px in src.reshape(-1, src.shape[-1])]
    got = run_stream(dut, pixels, n_out=2)
    assert np.array_equal(np.array([[int(v) for v in o] for o in got]), env[act.dst])
    fcd = FullyConnected(fc.weight, t.level_set(fc.weight_levels), t.level_set(act.levels),
                         fc.bias, fc.shift)
    out = run_stream(fcd, [[int(v) for v in row] for row in env[act.dst]], n_out=20)
    scores = np.array([int(o.score) for o in out]).reshape(2, 10)
    assert np.array_equal(scores, env[fc.dst])
    assert [int(o.last) for o in out] == ([0] * 9 + [1]) * 2
    c = len(t.tensors[act.dst].channels)
    folded = FullyConnected(fc.weight, t.level_set(fc.weight_levels), t.level_set(act.levels),
                            fc.bias, fc.shift, simd=max(1, (c + 1) // 2))
    out = run_stream(folded, [[int(v) for v in row] for row in env[act.dst]], n_out=20)
    assert np.array_equal(np.array([int(o.score) for o in out]).reshape(2, 10), env[fc.dst])
    assert folded.cycles_per_image == 10 * folded._chunks + FullyConnected.LATENCY + 1 and folded.pes == max(1, (c + 1) // 2)
    # with the input always there and the sink always ready, an image every cycles_per_image cycles
    # (the score queue's credits never hold an issue back), folded or one class per cycle
    rows = [[int(v) for v in row] for row in env[act.dst]] * 2
    for simd in (None, max(1, (c + 1) // 2)):
        dut, times = FullyConnected(fc.weight, t.level_set(fc.weight_levels), t.level_set(act.levels), fc.bias,
                                    fc.shift, simd=simd), []
        run_stream(dut, rows, gap=0, stall=0, n_out=40, cycles=times)
        assert np.diff(times[9::10]).tolist() == [dut.cycles_per_image] * 3, simd


@pytest.mark.parametrize("wbits,abits,simd", [(8, 8, None), (8, 4, 3), (4, 4, None), (4, 8, 2), (5, 3, 7)])
def test_fc_of_uniform_and_apot_weights_equals_numpy(wbits, abits, simd):
    """The FC on the multipliers (8-bit uniform weights) and on shift-add PEs (APoT weights), one class
    per cycle and folded: ``(sum(w * a) << shift) + bias`` per class, extreme codes included."""
    rng = np.random.default_rng(wbits * 100 + abits * 10 + (simd or 0))
    wl, al = level_set(wbits, True), level_set(abits, False)
    wtop, atop = len(wl.ints) - 1, len(al.ints) - 1
    w = rng.integers(-wtop, wtop + 1, (10, 7))
    w[0], w[1] = wtop, -wtop  # the largest products of both signs
    bias, shift = rng.integers(-5000, 5000, 10), 3
    x = rng.integers(0, atop + 1, (4, 7))
    x[0] = atop
    ref = (intops.decode_weights(w, wl.ints) @ np.asarray(al.ints)[x].T).T * (1 << shift) + bias
    dut = FullyConnected(w, wl, al, bias, shift, simd=simd)
    out = run_stream(dut, [[int(v) for v in row] for row in x], n_out=40, seed=wbits + abits)
    assert np.array_equal(np.array([int(o.score) for o in out]).reshape(4, 10), ref)
    assert [int(o.last) for o in out] == ([0] * 9 + [1]) * 4


@pytest.mark.parametrize("lanes", [1, 2, 3, "all"])
def test_avgpool_requant_lanes_equal_golden_and_keep_their_period(lanes):
    """The pool's ring of sums at 1, 2, 3 (not dividing the channels: padded) and all channels per
    step: the golden model's pooled codes, and with the input always there and the output always
    taken, one image every ``cycles_per_image`` cycles, as the cycle model counts it."""
    t, g, env = _setup(3)
    pool = next(o for o in t.ops if isinstance(o, ir.AvgPool))
    act = next(o for o in t.ops if isinstance(o, ir.Requant) and o.src == pool.dst)
    c = len(t.tensors[pool.src].channels)
    assert c % 3, "the test wants a channel count that 3 lanes do not divide"
    lanes = c if lanes == "all" else lanes
    make = lambda: AvgPoolRequant(t.level_set(t.tensors[pool.src].levels), t.level_set(act.levels),
                                  pool.hw, act.mul, act.bias, act.shift, lanes)
    pixels = [[int(v) for v in px] for px in env[pool.src].reshape(-1, c)]
    got = run_stream(make(), pixels, seed=lanes, n_out=2)
    assert np.array_equal(np.array([[int(v) for v in o] for o in got]), env[act.dst])
    dut, times = make(), []
    run_stream(dut, pixels * 2, gap=0, stall=0, n_out=4, cycles=times)
    assert np.diff(times).tolist() == [dut.cycles_per_image] * 3
    assert dut.steps == -(-c // lanes)


def test_maxpool_equals_golden_on_vgg_maps():
    t = export_model(random_net(4, "vgg16"), {"path": "random"})
    x = images(2, 4)
    _, env = Golden(t).run(x, trace=True)
    for op in [o for o in t.ops if isinstance(o, ir.MaxPool)][:2]:  # 32x32 and 16x16 maps
        src = t.tensors[op.src]
        dut = MaxPool(t.level_set(src.levels), len(src.channels), src.hw, op.size)
        pixels = [[int(v) for v in px] for px in env[op.src].reshape(-1, len(src.channels))]
        want = env[op.dst].reshape(-1, len(src.channels))
        got = run_stream(dut, pixels, seed=1, n_out=len(want))
        assert np.array_equal(np.array([[int(v) for v in p] for p in got]), want), op.name
        assert dut.cycles_per_image == src.hw ** 2
