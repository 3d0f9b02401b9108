"""A conv layer engine in Amaranth simulation equals the golden model's conv + requant, bit for bit,
and takes exactly the cycles its analytic model says."""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from shiftpq import ir
from shiftpq.export import export_model
from shiftpq.golden import Golden
from shiftpq.testnets import images, random_net
from shiftpq_hw.conv import ConvRequant


def run_engine(dut, frames: list[np.ndarray], residual: list[np.ndarray] | None = None):
    """Feed frames (H, W, C codes) back to back with an always-ready sink; returns the output
    pixels per frame and the cycle at which each frame's last pixel left."""
    outs, done_at = [], []
    n_out = dut._out_hw ** 2

    def feeder(port, frames):
        async def source(ctx):
            for f in frames:
                for px in f.reshape(-1, f.shape[-1]):
                    ctx.set(port.payload, [int(v) for v in px])
                    ctx.set(port.valid, 1)
                    await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
        return source

    async def sink(ctx):
        ctx.set(dut.o.ready, 1)
        cycle, cur = 0, []
        while len(outs) < len(frames):
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            cycle += 1
            if valid:
                cur.append([int(v) for v in payload])
                if len(cur) == n_out:
                    outs.append(np.array(cur))
                    done_at.append(cycle)
                    cur = []

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feeder(dut.i, frames))
    if residual is not None:
        sim.add_testbench(feeder(dut.r, residual))
    sim.add_testbench(sink)
    sim.run()
    return outs, done_at


@pytest.mark.parametrize("seed,layer,fold", [(0, "layer1.0.conv1", "all"), (1, "layer2.0.conv1", "all"),
                                             (6, "stem", "all"), (7, "stem", "half"), (8, "stem", "simd"),
                                             (0, "layer1.0.conv2", "all"), (1, "layer2.0.conv2", "half"),
                                             (2, "layer3.0.conv2", "one"), (3, "layer1.0.conv2", "half"),
                                             (4, "layer1.0.conv2", "simd"), (2, "layer3.0.conv1", "one"),
                                             (3, "layer3.0.conv1", "half"), (5, "layer2.0.conv1", "half"),
                                             (9, "layer2.0.conv1", "simd")])
def test_conv_engine_equals_golden_and_its_cycle_model(seed, layer, fold):
    t = export_model(random_net(seed), {"path": "random"})
    conv = next(op for op in t.ops if op.name == layer)
    rq = next(op for op in t.ops if isinstance(op, (ir.Requant, ir.Add)) and conv.dst in op.inputs)
    kept = len(t.tensors[rq.dst].channels)
    c_in = len(conv.in_channels)
    lanes, simd = {"all": (None, None), "one": (1, 1), "half": (max(1, kept // 2), max(1, c_in // 2)),
                   "simd": (None, max(1, (c_in + 1) // 3))}[fold]
    x = images(2, seed)
    _, env = Golden(t).run(x, trace=True)
    dut = ConvRequant.from_tables(t, conv, rq, lanes, simd)
    residual = [env[rq.srcs[1]][i] for i in range(len(x))] if isinstance(rq, ir.Add) else None
    outs, done_at = run_engine(dut, [env[conv.src][i] for i in range(len(x))], residual)
    for i in range(len(x)):
        want = env[rq.dst][i].reshape(-1, kept)
        assert np.array_equal(outs[i], want), f"image {i}"
    # back to back, the second image takes exactly the modelled cycles
    assert done_at[1] - done_at[0] == dut.cycles_per_image
    assert dut.pes == dut.lanes * dut.simd
    assert dut.cycles_per_image == conv.out_hw ** 2 * 9 * -(-kept // dut.lanes) * -(-c_in // dut.simd)
    if isinstance(rq, ir.Add):  # the fused add covers shortcut-only channels and conv-only channels
        assert kept >= len(conv.kept)
    assert sum(free for _, free in dut.rows()) == conv.in_hw


@pytest.mark.parametrize("layer", ["layer3.0.conv1", "layer3.0.conv2"])
def test_wide_engine_shares_several_requant_units(layer):
    """12 lanes with all input channels at once finish a group every 9 cycles, more than one
    requantization unit can take in turn: the engine runs two (six lanes each), threshold search
    (conv1) and the fused residual add (conv2), and still equals the golden model at its modelled rate."""
    t = export_model(random_net(0, widths=(2, 4, 12), layer_masks=False), {"path": "random"})
    conv = next(op for op in t.ops if op.name == layer)
    rq = next(op for op in t.ops if isinstance(op, (ir.Requant, ir.Add)) and conv.dst in op.inputs)
    x = images(2, 0)
    _, env = Golden(t).run(x, trace=True)
    dut = ConvRequant.from_tables(t, conv, rq)
    assert (dut.lanes, dut.requant_units) == (12, 2)
    residual = [env[rq.srcs[1]][i] for i in range(len(x))] if isinstance(rq, ir.Add) else None
    outs, done_at = run_engine(dut, [env[conv.src][i] for i in range(len(x))], residual)
    for i in range(len(x)):
        assert np.array_equal(outs[i], env[rq.dst][i].reshape(-1, 12)), f"image {i}"
    assert done_at[1] - done_at[0] == dut.cycles_per_image


def test_conv_engine_rejects_bad_parameters():
    t = export_model(random_net(0), {"path": "random"})
    conv = next(op for op in t.ops if op.name == "layer1.0.conv1")
    rq = next(op for op in t.ops if isinstance(op, ir.Requant) and op.src == conv.dst)
    with pytest.raises(ValueError, match="lanes must be in"):
        ConvRequant.from_tables(t, conv, rq, lanes=99)
    with pytest.raises(ValueError, match="simd must be in"):
        ConvRequant.from_tables(t, conv, rq, simd=0)
    with pytest.raises(ValueError, match="does not requantize"):
        ConvRequant.from_tables(t, conv, next(op for op in t.ops if op.name == "stem_act"))


def test_conv_engine_affine_requant_equals_intops():
    """The uniform-output path (fixed-point multiply-add, shift, clamp) on synthetic constants."""
    from shiftpq import intops
    from shiftpq.levels import level_set
    rng = np.random.default_rng(7)
    wl, al, ol = level_set(4, True), level_set(4, False), level_set(8, False)
    w = rng.integers(-7, 8, (3, 2, 3, 3))
    values = intops.decode_weights(w, wl.ints)
    lo, hi, partial = intops.conv_bounds(values, 0, al.denom)
    (mul,), bias, shift = intops.fold_affine([rng.uniform(5e-3, 2e-2, 3) * rng.choice([-1, 1], 3)],
                                             rng.uniform(-1, 1, 3), 255, 3.0)
    rq = ir.Requant(name="rq", src="acc", dst="codes", levels="uniform8u", mode=ir.RequantMode.AFFINE, alpha=3.0,
                    mul=mul, bias=bias, shift=shift)
    dut = ConvRequant(w, wl, al, ol, stride=1, padding=1, in_hw=8, requant=rq, partial_bound=partial, lanes=2, simd=1)
    frames = [rng.integers(0, 16, (8, 8, 2)) for _ in range(2)]
    outs, done_at = run_engine(dut, frames)
    for f, got in zip(frames, outs):
        acc = intops.conv2d(np.asarray(al.ints)[f][None], values, 1, 1, partial)
        want = intops.requant_affine([(acc, mul)], bias, shift, 255)[0].reshape(-1, 3)
        assert np.array_equal(got, want)
        assert len(np.unique(want)) > 20  # spans the range, not a clamped constant
    assert done_at[1] - done_at[0] == dut.cycles_per_image == 64 * 2 * 2 * 9


def test_conv_engine_under_random_gaps_and_backpressure():
    """A source that pauses and a sink that refuses at random: the line buffer, the row
    bookkeeping and the stalled pipeline still give the golden model's pixels, over three images."""
    from streams import run_stream
    t = export_model(random_net(3), {"path": "random"})
    conv = next(op for op in t.ops if op.name == "layer2.0.conv1")  # stride 2: eight row slots
    rq = next(op for op in t.ops if isinstance(op, ir.Requant) and op.src == conv.dst)
    x = images(3, 3)
    _, env = Golden(t).run(x, trace=True)
    dut = ConvRequant.from_tables(t, conv, rq, lanes=1, simd=1)
    assert dut.slots == 8
    pixels = [[int(v) for v in px] for i in range(len(x)) for px in env[conv.src][i].reshape(-1, len(conv.in_channels))]
    want = env[rq.dst].reshape(-1, len(t.tensors[rq.dst].channels))
    got = run_stream(dut, pixels, seed=5, gap=0.3, stall=0.3, n_out=len(want))
    assert np.array_equal(np.array([[int(v) for v in p] for p in got]), want)


@pytest.mark.parametrize("layer", ["layer2.0.conv1", "layer1.0.conv1"])
def test_line_buffer_never_reads_the_word_being_written(layer, monkeypatch):
    """The line buffer's memory is marked NO_COLLISION (memmap.py: the synth scripts map it with the
    read undefined when it meets a write): a read never has the address written the same cycle,
    whatever the gaps and stalls (three images; stride 2 and stride 1)."""
    from streams import run_stream

    from shiftpq_hw import engine
    ports, seqs = [], []
    build, stage1 = engine.LineBuffer.build, engine.TapSequencer.stage1

    def recording(self, m, i):
        ports.append(build(self, m, i))
        return ports[-1]

    def recording1(self, m):
        seqs.append(stage1(self, m))
        return seqs[-1]
    monkeypatch.setattr(engine.LineBuffer, "build", recording)
    monkeypatch.setattr(engine.TapSequencer, "stage1", recording1)
    t = export_model(random_net(3), {"path": "random"})
    conv = next(op for op in t.ops if op.name == layer)
    rq = next(op for op in t.ops if isinstance(op, ir.Requant) and op.src == conv.dst)
    x = images(3, 3)
    _, env = Golden(t).run(x, trace=True)
    dut = ConvRequant.from_tables(t, conv, rq, lanes=1, simd=1)
    pixels = [[int(v) for v in px] for i in range(len(x)) for px in env[conv.src][i].reshape(-1, len(conv.in_channels))]
    want = env[rq.dst].reshape(-1, len(t.tensors[rq.dst].channels))
    seen = {"reads": 0, "collisions": 0}

    async def monitor(ctx):  # a read's valid and padding (stage 1) come a cycle after its address
        lb, seq = ports[0], seqs[0]
        met = False  # the write and the read had one address the cycle before
        async for _, _, we, wa, ra, v, pad in ctx.tick().sample(lb.write.en, lb.write.addr, lb.read.addr,
                                                                 seq.v1, seq.pad1):
            seen["reads"] += int(v and not pad)
            seen["collisions"] += int(met and v and not pad)
            met = bool(we) and wa == ra
    got = run_stream(dut, pixels, seed=11, gap=0.3, stall=0.3, n_out=len(want), monitors=(monitor,))
    assert seen["reads"] > 0 and seen["collisions"] == 0, seen
    assert np.array_equal(np.array([[int(v) for v in p] for p in got]), want)
