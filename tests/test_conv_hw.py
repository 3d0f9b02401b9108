"""A conv layer engine in Amaranth simulation equals the golden model's conv + requant, bit for bit,
and takes exactly the cycles its analytic model says."""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from shiftpq.export import export_model
from shiftpq.golden import Golden
from shiftpq_hw.conv import ConvRequant
from test_export import images, random_net


def run_engine(dut, frames: list[np.ndarray]):
    """Feed frames (H, W, C codes) back to back with an always-ready sink; returns the output
    pixels per frame and the cycle at which each frame's last pixel left."""
    outs, done_at = [], []
    n_out = dut._out_hw ** 2

    async def source(ctx):
        for f in frames:
            for px in f.reshape(-1, f.shape[-1]):
                ctx.set(dut.i.payload, [int(v) for v in px])
                ctx.set(dut.i.valid, 1)
                await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

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
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return outs, done_at


@pytest.mark.parametrize("seed,layer,fold", [(0, "layer1.0.conv1", "all"), (1, "layer2.0.conv1", "all"),
                                             (2, "layer3.0.conv1", "one"), (3, "layer3.0.conv1", "half"),
                                             (5, "layer2.0.conv1", "half")])
def test_conv_engine_equals_golden_and_its_cycle_model(seed, layer, fold):
    t = export_model(random_net(seed), {"path": "random"})
    conv = next(op for op in t.ops if op["name"] == layer)
    kept = len(conv["kept"])
    lanes = {"all": None, "one": 1, "half": max(1, kept // 2)}[fold]
    rq = next(op for op in t.ops if op["op"] == "requant" and op["src"] == conv["dst"])
    x = images(2, seed)
    _, env = Golden(t).run(x, trace=True)
    dut = ConvRequant.from_tables(t, conv, rq, lanes)
    outs, done_at = run_engine(dut, [env[conv["src"]][i] for i in range(len(x))])
    for i in range(len(x)):
        want = env[rq["dst"]][i].reshape(-1, len(conv["kept"]))
        assert np.array_equal(outs[i], want), f"image {i}"
    # back to back, the second image takes exactly the modelled cycles
    assert done_at[1] - done_at[0] == dut.cycles_per_image
    assert dut.pes == dut.lanes * len(conv["in_channels"])
    assert fold == "all" and dut.groups == 1 or dut.groups > 1 or kept == 1


def test_conv_engine_rejects_bad_parameters():
    t = export_model(random_net(0), {"path": "random"})
    conv = next(op for op in t.ops if op["name"] == "layer1.0.conv1")
    rq = next(op for op in t.ops if op["op"] == "requant" and op["src"] == conv["dst"])
    with pytest.raises(ValueError, match="lanes must be in"):
        ConvRequant.from_tables(t, conv, rq, lanes=99)
    stem = next(op for op in t.ops if op["name"] == "stem")
    with pytest.raises(ValueError, match="reads the image"):
        ConvRequant.from_tables(t, stem, next(op for op in t.ops if op["src"] == "stem"))


def test_conv_engine_affine_requant_equals_intops():
    """The uniform-output path (fixed-point multiply-add, shift, clamp) on synthetic constants."""
    from shiftpq import intops
    from shiftpq.levels import level_set
    rng = np.random.default_rng(7)
    wl, al, ol = level_set(4, True), level_set(4, False), level_set(8, False)
    w = rng.integers(-7, 8, (3, 2, 3, 3))
    values = np.sign(w) * np.asarray(wl.ints)[np.abs(w)]
    lo, hi, partial = intops.conv_bounds(values, 0, al.denom)
    (mul,), bias, shift = intops.fold_affine([rng.uniform(5e-3, 2e-2, 3) * rng.choice([-1, 1], 3)],
                                             rng.uniform(-1, 1, 3), 255, 3.0)
    rq = {"mode": "affine", "mul": mul, "bias": bias, "shift": shift}
    dut = ConvRequant(w, wl, al, ol, stride=1, padding=1, in_hw=8, requant=rq, partial_bound=partial, lanes=2)
    frames = [rng.integers(0, 16, (8, 8, 2)) for _ in range(2)]
    outs, done_at = run_engine(dut, frames)
    for f, got in zip(frames, outs):
        acc = intops.conv2d(np.asarray(al.ints)[f][None], values, 1, 1, partial)
        want = intops.requant_affine([(acc, mul)], bias, shift, 255)[0].reshape(-1, 3)
        assert np.array_equal(got, want)
        assert len(np.unique(want)) > 20  # spans the range, not a clamped constant
    assert done_at[1] - done_at[0] == dut.cycles_per_image == 64 + 64 * 2 * 9
