"""The stream blocks between the conv engines: fork, shortcut path, code lookup, average pool + requant, FC.

Every block is one ``wiring.Component`` with ``i``/``o`` streams (``Fork`` has two outputs); payloads
are whole pixels (one code per channel). Their reference models are the golden model's ops
(golden.py), which the tests compare against.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from shiftpq import intops
from shiftpq.levels import LevelSet

from .checked import Checked
from .memmap import NO_COLLISION
from .queues import CreditQueue, up_down, wrap_increment
from .dsp import registered_products, target_of
from .pe import (act_code_shape, act_value, adder_tree, pack_words, product_shape, product_terms, weight_code_shape,
                 weight_field_shape, weight_fields)
from .engine import OutputAssembly, advance, last_flag, replicas, spans
from .kept import KEEP
from .requant import AFFINE_STAGES, Pipe, affine_unit, signed_width


def _table(items: list, index) -> Array:
    """An Array indexed by ``index``, padded with its last item to every value the index can take, so
    the generated case statement is complete."""
    items = list(items)
    return Array(items + [items[-1]] * ((1 << len(index)) - len(items)))


class Fork(wiring.Component):
    """One stream to two consumers; a beat leaves when both take it."""

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "a": Out(stream.Signature(shape)),
                          "b": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.a.payload.eq(self.i.payload), self.b.payload.eq(self.i.payload),
                     self.a.valid.eq(self.i.valid & self.b.ready), self.b.valid.eq(self.i.valid & self.a.ready),
                     self.i.ready.eq(self.a.ready & self.b.ready)]
        return m


class ShortcutPath(wiring.Component):
    """The option-A shortcut on a stream of pixels: keep the pixels on the ``stride`` grid (the
    subsample; the channel padding is the fused add's business) and buffer them in a FIFO until the
    block's second conv engine adds them, one as it requantizes each output pixel. ``depth``
    (default: one whole map) must cover how far the block's input runs ahead of that (the hardware
    plan's ``size_fifos`` sizes it from both engines' line buffers), or the fork before it stalls:
    ``depth`` pixels in a memory and one in the output register (``head``).

    The FIFO's read side runs on its own registers alone: a pixel is read (``issue``) while the
    memory holds one and the output register is neither full nor being filled (``free``), lands in
    the memory's read register the cycle after, and in ``head`` the cycle after that, ``o.valid``
    from then until the sink takes it, which frees ``head`` the cycle after. So the sink's ``ready``
    (a register of the second conv engine, often across the chip) reaches two registers, not the
    read port's enable (a whole pixel wide, the routed network's critical path when the FIFO's read
    followed ``ready`` the same cycle), and the memory's output (about 5.8 ns clock to output out of
    a block RAM) goes no further than ``head``. A pixel every third cycle while the sink is ready;
    the engine takes one every few dozen."""

    def __init__(self, shape, in_hw: int, stride: int, depth: int | None = None):
        self._shape, self._hw, self._s = shape, in_hw, stride
        self.depth = depth or (-(-in_hw // stride)) ** 2
        if self.depth < 1:
            raise ValueError(f"ShortcutPath needs a depth >= 1, got {depth!r}")
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        hw, s, depth = self._hw, self._s, max(self.depth, 2)
        width = Shape.cast(self._shape).width
        y, x = Signal(range(max(hw, 2))), Signal(range(max(hw, 2)))
        keep = ((y % s) == 0) & ((x % s) == 0) if s > 1 else Const(1)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += x.eq(x + 1)
            with m.If(x == hw - 1):
                m.d.sync += [x.eq(0), y.eq(y + 1)]
                with m.If(y == hw - 1):
                    m.d.sync += y.eq(0)
        # the addresses of the read and the write meet only while the memory is empty, when the word
        # read is not used: NO_COLLISION
        m.submodules.storage = storage = Memory(shape=unsigned(width), depth=depth, init=[], attrs=NO_COLLISION)
        wr, rd = storage.write_port(), storage.read_port(domain="sync")
        produce, consume = Signal(range(depth)), Signal(range(depth))
        level = Signal(range(depth + 1))  # pixels in the memory, written and not yet read
        write, issue, issued, free = Signal(), Signal(), Signal(), Signal(init=1)
        head = Signal(width, name="head", reset_less=True)  # data: no reset (engine.py)
        not_full, not_empty = up_down(m, level, write, issue, depth, 0)  # registers, kept with the level
        m.d.comb += [self.i.ready.eq(not_full | ~keep), write.eq(self.i.valid & keep & not_full),
                     wr.addr.eq(produce), wr.data.eq(self.i.payload), wr.en.eq(write),
                     rd.addr.eq(consume), rd.en.eq(1),  # the read register loads every cycle: no enable
                     issue.eq(not_empty & free), self.o.payload.eq(head)]
        with m.If(write):
            m.d.sync += produce.eq(wrap_increment(produce, depth))
        with m.If(issue):
            m.d.sync += consume.eq(wrap_increment(consume, depth))
        m.d.sync += issued.eq(issue)
        with m.If(issued):
            m.d.sync += [head.eq(rd.data), self.o.valid.eq(1)]
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(issue):
            m.d.sync += free.eq(0)
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += free.eq(1)
        return m


class CodeLUT(Checked, wiring.Component):
    """A requant whose input is codes (e.g. a block's 4-bit quantizer reading the 8-bit stream): every
    channel maps its code through a table tabulated from the op's thresholds, ``lanes`` channels a
    cycle. The stream between engines carries a pixel every few dozen cycles or more, so the lookups
    run one chunk of ``lanes`` channels after another through ``lanes`` tables (a channel ``k *
    lanes + j`` in lane ``j`` at step ``k``; every distinct table of a lane's channels indexed by the
    step, most often one table for all), not one table per channel: a ResNet-20 lookup of 45 channels
    took 1,200 logic cells as 45 tables and an output queue of three pixels.

    Timing (every control signal a register; ``OVERHEAD``): a pixel is taken while the input register
    is free (``i.ready`` is that register) and lands in it the cycle after; the chunks are issued once
    the output register is free, the input register shifting down a chunk a cycle (a C-way selection
    instead was six LUT levels, the critical path of a routed ResNet-20), each chunk's codes
    registered, looked up and registered, then shifted into the output register, which is valid the
    cycle after the last chunk arrives and free the cycle after the sink takes it. A pixel every
    ``steps + OVERHEAD`` cycles while the sink is ready (``cycles``); the hardware plan gives the block
    the fewest lanes that keep this within the interval at which the engine before it issues pixels,
    so the lookup never slows the stream."""

    OVERHEAD = 4  # start, chunk registered, looked up, output valid -> taken: cycles per pixel besides the steps

    @staticmethod
    def check(luts: np.ndarray, in_levels: LevelSet, out_levels: LevelSet, lanes: int = 1):
        if np.ndim(luts) != 2 or np.shape(luts)[0] != len(in_levels.ints) or np.shape(luts)[1] < 1:
            raise ValueError(f"luts must have one row per input code ({len(in_levels.ints)}) and a column "
                             f"per channel, got {np.shape(luts)!r}")
        if not 1 <= lanes <= np.shape(luts)[1]:
            raise ValueError(f"lanes must be in 1..{np.shape(luts)[1]} (the channels), got {lanes!r}")

    @staticmethod
    def cycles(pixels: int, channels: int, lanes: int) -> int:
        """Cycles for ``pixels`` pixels while the source and the sink never wait."""
        return pixels * (-(-channels // lanes) + CodeLUT.OVERHEAD)

    def __init__(self, luts: np.ndarray, in_levels: LevelSet, out_levels: LevelSet, lanes: int = 1):
        luts = np.asarray(luts, dtype=np.int64)  # [codes in, channels]
        self._luts, self._il, self._ol, self.lanes = luts, in_levels, out_levels, lanes
        self.steps = -(-luts.shape[1] // lanes)
        c = luts.shape[1]
        super().__init__({"i": In(stream.Signature(data.ArrayLayout(act_code_shape(in_levels), c))),
                          "o": Out(stream.Signature(data.ArrayLayout(act_code_shape(out_levels), c)))})

    def elaborate(self, platform):
        m = Module()
        c, lanes, steps = self._luts.shape[1], self.lanes, self.steps
        ishape, oshape = act_code_shape(self._il), act_code_shape(self._ol)
        iw, ow = Shape.cast(ishape).width, Shape.cast(oshape).width
        held, busy, full, run = (Signal(name=n) for n in ("held", "busy", "full", "run"))
        v1, v2, l1, l2 = (Signal(name=n) for n in ("v1", "v2", "l1", "l2"))
        k, k1 = Signal(range(max(steps, 2)), name="step"), Signal(range(max(steps, 2)), name="step1")
        last = last_flag(steps, "step_last")
        p1 = Signal(self.i.payload.shape(), name="codes_in")
        q = Signal(steps * lanes * ow, name="codes_out")
        sel = [Signal(ishape, name=f"sel{j}") for j in range(lanes)]
        looked = [Signal(oshape, name=f"looked{j}") for j in range(lanes)]
        take = self.i.valid & ~held
        start = held & ~busy
        m.d.comb += [self.i.ready.eq(~held), self.o.valid.eq(full),
                     self.o.payload.eq(q[:c * ow])]
        # the pixel taken goes to the input register a cycle later: the payload registered every cycle
        # (no enable), then loaded into the input register by registered copies of the take, one per
        # part of it (``engine.replicas``), as the chunks shift down by copies of ``run``. The input
        # register is read the cycle after ``start``, which is the cycle after the take at the earliest,
        # so the pixel's timing does not change; the take itself (the source's valid through a FIFO's
        # level, a combinational path) then drives a few registers, not hundreds of loads (its enable
        # over the input register was the critical path of two of three routed seeds: 5.4 ns of routing)
        staged = Signal(self.i.payload.shape(), name="codes_staged")
        m.d.sync += staged.eq(self.i.payload)
        parts = spans(c, iw)
        loads = replicas(m, "codes_load", take, len(parts))
        runs = [Signal(name=f"run{k}", attrs=KEEP) for k in range(len(parts))]
        flat, shifted = p1.as_value(), Cat(p1.as_value()[lanes * iw:], Const(0, lanes * iw))
        for part, load, run_k in zip(parts, loads, runs):
            bits = slice(part.start * iw, part.stop * iw)
            with m.If(load):
                m.d.sync += flat[bits].eq(staged.as_value()[bits])
            with m.Elif(run_k):  # the next chunk moves down to the lanes: one LUT level, not a C-way selection
                m.d.sync += flat[bits].eq(shifted[bits])
        with m.If(take):
            m.d.sync += held.eq(1)
        with m.If(start):
            m.d.sync += [busy.eq(1), run.eq(1), *(r.eq(1) for r in runs)]
        with m.If(run):
            m.d.sync += advance(k, last, steps)
            with m.If(last):
                m.d.sync += [run.eq(0), held.eq(0), *(r.eq(0) for r in runs)]
        m.d.sync += [v1.eq(run), l1.eq(run & last), k1.eq(k), v2.eq(v1), l2.eq(l1)]
        for j in range(lanes):
            chans = [s * lanes + j for s in range(steps)]
            m.d.sync += sel[j].eq(p1[j])
            tables = sorted({tuple(int(v) for v in self._luts[:, ch]) for ch in chans if ch < c})
            if len(tables) == 1:
                word = _table([Const(v, oshape) for v in tables[0]], sel[j])[sel[j]]
            else:  # a table per step: (step, code) -> code
                n_in = 1 << iw
                flat = [Const(int(self._luts[min(code, len(self._luts) - 1), ch]) if ch < c else 0, oshape)
                        for ch in chans for code in range(n_in)]
                word = _table(flat, Cat(sel[j], k1))[Cat(sel[j], k1)]
            m.d.sync += looked[j].eq(word)
        with m.If(v2):
            m.d.sync += q.eq(Cat(q[lanes * ow:], *looked))
        with m.If(l2):
            m.d.sync += full.eq(1)
        with m.If(full & self.o.ready):
            m.d.sync += [full.eq(0), busy.eq(0)]
        return m


class MaxPool(Checked, wiring.Component):
    """``size x size`` max pooling with stride ``size`` on a raster stream of code pixels (APoT and
    uniform level sets are ascending, so the largest code is the largest value). A row memory holds
    one partial maximum per output column; a pooled pixel leaves on the window's last input pixel.
    One input pixel per cycle: ``in_hw**2`` cycles per image."""

    @staticmethod
    def check(levels: LevelSet, channels: int, in_hw: int, size: int):
        if list(levels.ints) != sorted(levels.ints):
            raise ValueError(f"max pooling of codes needs ascending levels, got {levels!r}")
        if size < 1 or in_hw % size:
            raise ValueError(f"in_hw {in_hw} must be a multiple of the pool size {size}")

    def __init__(self, levels: LevelSet, channels: int, in_hw: int, size: int):
        self._hw, self._k, self._c = in_hw, size, channels
        shape = data.ArrayLayout(act_code_shape(levels), channels)
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    @staticmethod
    def cycles(in_hw: int) -> int:
        return in_hw ** 2

    @property
    def cycles_per_image(self) -> int:
        return self.cycles(self._hw)

    def elaborate(self, platform):
        m = Module()
        hw, k, c = self._hw, self._k, self._c
        ow = hw // k
        shape = self.i.payload.shape()
        m.submodules.rows = rows = Memory(shape=shape, depth=max(ow, 2), init=[])
        rd, wr = rows.read_port(domain="comb"), rows.write_port()
        x = Signal(range(max(hw, 2)))
        wy, wx, col = Signal(range(max(k, 2))), Signal(range(max(k, 2))), Signal(range(max(ow, 2)))
        run = Signal(shape)  # the window's maximum so far along this row
        prev = Signal(shape)  # what the window holds before this pixel
        best = Signal(shape)
        m.d.comb += prev.eq(Mux(wx == 0, rd.data, run))
        for j in range(c):
            fresh = (wx == 0) & (wy == 0)
            m.d.comb += best[j].eq(Mux(fresh | (self.i.payload[j] > prev[j]), self.i.payload[j], prev[j]))
        en = self.o.ready | ~self.o.valid
        take = self.i.valid & en
        m.d.comb += [self.i.ready.eq(en), rd.addr.eq(col), wr.addr.eq(col), wr.data.eq(best),
                     wr.en.eq(take & (wx == k - 1))]
        with m.If(en):
            m.d.sync += self.o.valid.eq(take & (wx == k - 1) & (wy == k - 1))
        with m.If(take):
            m.d.sync += [run.eq(best), self.o.payload.eq(best), x.eq(x + 1), wx.eq(wx + 1)]
            with m.If(wx == k - 1):
                m.d.sync += [wx.eq(0), col.eq(col + 1)]
            with m.If(x == hw - 1):  # hw is a multiple of k: wy wraps at the end of every image
                m.d.sync += [x.eq(0), col.eq(0), wy.eq(wy + 1)]
                with m.If(wy == k - 1):
                    m.d.sync += wy.eq(0)
        return m


class AvgPoolRequant(Checked, wiring.Component):
    """Global average pool and the 8-bit requant after it, ``lanes`` channels per cycle: per channel
    the sum of the ``hw x hw`` codes' values of a map, then ``clamp((sum * mul + bias) >> shift, 0,
    top)`` (``requant.affine_unit``, one per lane); the pooled vector leaves as one beat.

    The channels' sums are a ring of registers, ``lanes`` to a step, that turns once per input
    pixel: the step at the head takes its channels' codes from the held input pixel and enters the
    tail (no adder per channel and no multiplexer over the sums). After the last pixel the ring turns
    once more into the requant units, whose codes enter a ring of output registers the same way.
    ``lanes`` (the hardware plan picks the fewest that keep the pool off the critical period) trades
    ``hw * hw * steps`` cycles per image against adders and multipliers."""

    @staticmethod
    def check(in_levels: LevelSet, out_levels: LevelSet, hw: int, mul, bias, shift, lanes: int = 1):
        if not 1 <= lanes <= len(mul):
            raise ValueError(f"lanes must be in [1, {len(mul)}] (the channels), got {lanes}")

    def __init__(self, in_levels: LevelSet, out_levels: LevelSet, hw: int, mul, bias, shift, lanes: int = 1):
        self._il, self._ol, self._hw = in_levels, out_levels, hw
        self._mul, self._bias, self._shift = (np.asarray(a, dtype=np.int64) for a in (mul, bias, shift))
        c = len(self._mul)
        self.lanes, self.steps = lanes, -(-c // lanes)
        super().__init__({"i": In(stream.Signature(data.ArrayLayout(act_code_shape(in_levels), c))),
                          "o": Out(stream.Signature(data.ArrayLayout(act_code_shape(out_levels), c)))})

    LATENCY = AFFINE_STAGES  # the requant units' pipeline

    @staticmethod
    def cycles(hw: int, channels: int, lanes: int) -> int:
        """Cycles per image with the input always there and the output always taken: a step per
        pixel and ring position, one per position into the requant units, their latency, the beat out."""
        steps = -(-channels // lanes)
        return hw * hw * steps + steps + AvgPoolRequant.LATENCY + 1

    @property
    def cycles_per_image(self) -> int:
        return self.cycles(self._hw, len(self._mul), self.lanes)

    def elaborate(self, platform):
        m = Module()
        c, n, L, k = len(self._mul), self._hw ** 2, self.lanes, self.steps
        top = max(self._il.ints)
        sum_shape = unsigned(max(1, (top * n).bit_length()))
        decode = Array(Const(v, unsigned(max(1, top.bit_length()))) for v in self._il.ints)
        ring = [[Signal(sum_shape, name=f"sum{j}_{l}") for l in range(L)] for j in range(k)]
        count = Signal(range(max(n, 2)))  # the pixel
        count_first = Signal(init=1, name="pool_count_first")  # == (count == 0)
        count_last = last_flag(n, "pool_count_last")  # == (count == n - 1)
        step = Signal(range(k + 1))  # the ring position at the head (the requant tables' row)
        pos = Signal(k + 1, init=1, name="pool_pos")  # the same, one-hot: the control's compares are bits
        state = Signal(2)  # 0: accumulate, 1: requantize, 2: output
        w = Shape.cast(act_code_shape(self._il)).width
        # the control's next values (``*_n``, combinational) and, registered from them, the
        # conditions that fan out to the ring, the held codes and the input register: each a register
        # of its own (they were combinations of the state, the step compare and the input's valid bit,
        # and the ring's turn enable, 45 x 13 clock enables in ResNet-20, was the pool's slowest net);
        # the position one-hot, so no next value waits on a carry chain (the binary step's increment
        # and compares were the pool's deepest path)
        step_n, pos_n, state_n, vin_n = Signal.like(step), Signal.like(pos), Signal.like(state), Signal()
        accumulate = Signal(name="pool_accumulate")  # == (state == 0) & vin
        feed = Signal(name="pool_feed")  # == (state == 1) & (step < k)
        last = Signal(init=int(k == 1), name="pool_last")  # == (state == 0) & (step == k - 1)
        head = Signal(init=1, name="pool_head")  # == (step == 0)
        turn = Signal(name="pool_turn")  # == accumulate | feed: the ring's and the held codes' enable alone
        # the input pixel, registered (``px``, ``vin``): the ring turns on a register's valid bit, not
        # on the producer's (its output queue's count drove the whole ring's enable), and the next
        # pixel is taken as the last step of this one turns, so no cycle is lost
        vin = Signal()
        px = Signal(self.i.payload.shape(), name="pool_px")
        m.d.comb += [step_n.eq(step), pos_n.eq(pos), state_n.eq(state), vin_n.eq(vin),
                     self.i.ready.eq(~vin | last)]
        with m.If(self.i.ready):
            m.d.comb += vin_n.eq(self.i.valid)
            m.d.sync += px.eq(self.i.payload)
        m.d.sync += [step.eq(step_n), pos.eq(pos_n), state.eq(state_n), vin.eq(vin_n),
                     accumulate.eq((state_n == 0) & vin_n), feed.eq((state_n == 1) & ~pos_n[k]),
                     last.eq((state_n == 0) & pos_n[k - 1]), head.eq(pos_n[0]),
                     turn.eq(((state_n == 0) & vin_n) | ((state_n == 1) & ~pos_n[k]))]
        # the channels past c that fill the last step: code 0 and constants 0, dropped at the output
        codes = Cat(*[px[ch] if ch < c else Const(0, w) for ch in range(k * L)])
        # the held pixel's codes of the step at the head: at its first step straight from the input,
        # then from a register that moves on by a step's channels each step (a multiplexer over the
        # steps, 45 of them in ResNet-20, was the critical path of the routed network)
        held = Signal(L * w, name="pool_held")
        if k == 1:
            m.d.comb += held.eq(codes)
        else:
            rest = Signal((k - 1) * L * w, name="pool_rest")  # the codes of the steps after the head
            m.d.comb += held.eq(Mux(head, codes[:L * w], rest[:L * w]))
            with m.If(turn):  # also while feeding, harmlessly: a pixel's first step reloads it from px
                m.d.sync += rest.eq(Mux(head, codes[L * w:], rest[L * w:]))
        with m.If(turn):  # the ring turns: the head, plus its channels' codes, to the tail
            m.d.sync += [ring[j][l].eq(ring[j + 1][l]) for j in range(k - 1) for l in range(L)]
            m.d.sync += [ring[k - 1][l].eq(Mux(count_first, 0, ring[0][l]) + decode[held[l * w:(l + 1) * w]])
                         for l in range(L)]
        with m.If(accumulate | feed):  # the same condition as ``turn``, kept apart from its fanout
            m.d.comb += [step_n.eq(step + 1), pos_n.eq(pos << 1)]
        with m.If(accumulate & pos[k - 1]):
            m.d.comb += [step_n.eq(0), pos_n.eq(1)]
            m.d.sync += [*advance(count, count_last, n), count_first.eq(count_last)]
            with m.If(count_last):
                m.d.comb += state_n.eq(1)
        pipe = Pipe(m, Const(1), target_of(platform))
        outs = [[Signal(self.o.payload[0].shape(), name=f"out{j}_{l}") for l in range(L)] for j in range(k)]
        for l in range(L):  # lane l requantizes channels l, L + l, ...; its table row is the step
            col = lambda a: np.array([a[j * L + l] if j * L + l < c else 0 for j in range(k)], dtype=np.int64)
            # the feed's valid bit and its last step go through the unit beside the codes: the last
            # ends the requantization (a count of the valid codes made the valid bit, which loads
            # the whole output ring, part of the control's paths)
            code, (valid, final) = affine_unit(m, pipe, [ring[0][l]], step, [col(self._mul)], col(self._bias),
                                               col(self._shift), self._ol.denom, [top * n],
                                               [feed, feed & pos[k - 1]], name=f"pool{l}")
            with m.If(valid):  # every lane's valid is the same
                m.d.sync += [*(outs[j][l].eq(outs[j + 1][l]) for j in range(k - 1)), outs[k - 1][l].eq(code)]
            if l == 0:
                with m.If(final):
                    m.d.sync += self.o.valid.eq(1)
                    m.d.comb += [step_n.eq(0), pos_n.eq(1), state_n.eq(2)]
        m.d.comb += [self.o.payload[ch].eq(outs[ch // L][ch % L]) for ch in range(c)]
        with m.If((state == 2) & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
            m.d.comb += state_n.eq(0)
        return m


class FullyConnected(Checked, wiring.Component):
    """The 8-bit FC, folded: ``simd`` PEs (default: one per input channel; ``pe.product_terms``: the
    DSP multiplier for the 8-bit uniform weights) and an adder tree; one class takes ``chunks``
    cycles, accumulating, then ``score = (acc << shift) + bias``. A pipeline that never stalls
    (weights and the chunk's inputs registered; the multipliers' operands registered again and the
    products registered twice, for uniform weights in the multipliers' own registers,
    ``dsp.RegisteredProduct``; the tree and accumulator; the class's score from the accumulator,
    its bias read from a table by the class issued, two stages, and carried beside the pipeline)
    into an output queue of scores (``queues.CreditQueue``): a class is issued only with a credit,
    so the sink's ``ready`` reaches the queue's pointers and credits, not the pipeline (its stall
    enable fanned out to the input vector's ring: the FC's slowest path). Output: one int32 score
    per beat, ``last`` on the final class. An image takes ``classes * chunks + LATENCY + 1`` cycles
    while the sink takes every score at once (the input beat, the steps, the pipeline draining
    before the next image is taken)."""

    LATENCY = 7  # cycles from a step's issue to its score on the output

    @staticmethod
    def check(weights: np.ndarray, wlevels: LevelSet, alevels: LevelSet, bias, shift: int, simd: int | None = None):
        c = np.shape(weights)[1]
        if simd is not None and not 1 <= simd <= c:
            raise ValueError(f"simd must be in [1, {c}], got {simd!r}")

    def __init__(self, weights: np.ndarray, wlevels: LevelSet, alevels: LevelSet, bias, shift: int,
                 simd: int | None = None):
        self._w = np.asarray(weights, dtype=np.int64)
        self._wl, self._al = wlevels, alevels
        self._bias, self._shift = np.asarray(bias, dtype=np.int64), int(shift)
        k, c = self._w.shape
        self._simd = simd or c
        self._chunks = -(-c // self._simd)
        super().__init__({"i": In(stream.Signature(data.ArrayLayout(act_code_shape(alevels), c))),
                          "o": Out(stream.Signature(data.StructLayout({"score": signed(32), "last": 1})))})

    @property
    def pes(self) -> int:
        return self._simd

    @property
    def macs_per_image(self) -> int:
        return int(self._w.size)

    @staticmethod
    def cycles(classes: int, chunks: int) -> int:
        return classes * chunks + FullyConnected.LATENCY + 1

    @property
    def cycles_per_image(self) -> int:
        return self.cycles(self._w.shape[0], self._chunks)

    def elaborate(self, platform):
        m = Module()
        k, c = self._w.shape
        simd, chunks, steps = self._simd, self._chunks, self._w.shape[0] * self._chunks
        pipe = Pipe(m, Const(1), target_of(platform))
        stage = pipe.stage
        w = np.zeros((k, chunks * simd), dtype=np.int64)
        w[:, :c] = self._w
        wshape = data.ArrayLayout(weight_field_shape(self._wl), simd)
        m.submodules.wmem = wmem = Memory(shape=unsigned(wshape.size), depth=max(steps, 2),
                                          init=pack_words(weight_fields(self._wl, w.reshape(steps, simd)),
                                                          weight_code_shape(self._wl).width))
        rd = wmem.read_port()
        # the scores' queue: a class takes a credit at its first issue, its score is pushed the
        # cycle it leaves the accumulator (``depth_for`` as the conv engines' output queue)
        take, push = Signal(), Signal()
        q = CreditQueue(self.o.payload.shape(), OutputAssembly.depth_for(self.LATENCY, chunks), "fc_q")
        q.build(m, self.o, push=push, take=take)
        # the input vector is held while its steps are issued; the next one is taken once the last
        # score has left the queue
        # (in a ring of its chunks that turns by one chunk per issue: the chunk being issued is always
        # at the front, so no multiplexer over the chunks, which was the FC's slowest path)
        aw = Shape.cast(act_code_shape(self._al)).width
        x = Signal(chunks * simd * aw, name="fc_x_ring")
        busy, issuing, issue = Signal(), Signal(), Signal()
        step, cls, ch = Signal(range(max(steps, 2))), Signal(range(max(k, 2))), Signal(range(max(chunks, 2)))
        # the compares of the counters, as registers of their own
        ch_first, ch_last = Signal(init=1, name="fc_ch_first"), last_flag(chunks, "fc_ch_last")
        step_last = Signal(init=int(steps == 1), name="fc_step_last")
        m.d.comb += [self.i.ready.eq(~busy), issue.eq(issuing & (~ch_first | q.credit)), take.eq(issue & ch_first)]
        with m.If(self.i.valid & ~busy):
            m.d.sync += [busy.eq(1), issuing.eq(1), step.eq(0), cls.eq(0),
                         ch.eq(0), ch_first.eq(1), ch_last.eq(chunks == 1), step_last.eq(steps == 1)]
        # the ring loads the input whenever the FC is not busy (the beat it takes is the last one it
        # loads), under copies of ``busy``, one per part: the source's ``valid`` reaches the control
        # registers only, not the hundreds of bits of the ring (a routed seed's slowest net)
        busy_next, inp = Signal(), Signal(len(x))  # the channels past c that fill the last chunk: code 0
        m.d.comb += [busy_next.eq((busy | self.i.valid) & ~(self.o.valid & self.o.ready & self.o.payload.last)),
                     inp.eq(self.i.payload.as_value())]
        parts = spans(chunks * simd, aw)
        rotated = x.rotate_right(simd * aw) if chunks > 1 else x
        for part, busy_copy in zip(parts, replicas(m, "fc_busy", busy_next, len(parts))):
            bits = slice(part.start * aw, part.stop * aw)
            with m.If(~busy_copy):
                m.d.sync += x[bits].eq(inp[bits])
            with m.Elif(issue):
                m.d.sync += x[bits].eq(rotated[bits])
        m.d.comb += [rd.en.eq(1), rd.addr.eq(step)]
        with m.If(issue):
            m.d.sync += [step.eq(step + 1), step_last.eq(step == steps - 2), ch_first.eq(ch_last),
                         *advance(ch, ch_last, chunks)]
            with m.If(ch_last):
                m.d.sync += cls.eq(cls + 1)
            with m.If(step_last):
                m.d.sync += issuing.eq(0)
        # stage 1: the weight memory's word; the chunk's inputs beside it
        acts = [Signal(act_code_shape(self._al), name=f"x{j}") for j in range(simd)]
        m.d.comb += [a.eq(x[j * aw:(j + 1) * aw]) for j, a in enumerate(acts)]
        ctl = [issue, ch_first, ch_last, cls == k - 1]
        acts = stage("fc_a", *[act_value(m, a, self._al, name=f"fc_x{j}") for j, a in enumerate(acts)])
        ctl = stage("fc_c1_", *ctl)
        # stage 2: the weights and inputs registered (the memory's output goes no further); the
        # class's bias beside them (a table read from the class issued, ``requant.rom``; two stages:
        # a few words in logic, carried, not computed with)
        wflat, *acts = stage("fc_w", rd.data, *acts)
        bshape = signed(signed_width(self._bias))
        ctl = [*stage("fc_c2_", *ctl), pipe.rom("fc_bias", bshape, [int(v) for v in self._bias], cls, stages=2)]
        # stage 3: the products, the multipliers' operands registered where they can have them beside
        # them and the products registered as they leave them, then again
        if self._wl.kind == "apot":  # shift-add PEs (pe.product_terms)
            wflat, *acts = stage("fc_op", wflat, *acts)
            wdata = wshape(wflat)
            terms = [product_terms(m, wdata[j], a, self._wl, self._al, name=f"fc{j}") for j, a in enumerate(acts)]
            prods = stage("fc_p", *[t for t, _ in terms], *[cr for _, cr in terms])
        else:  # uniform weights: the FPGA's multipliers with their own registers (dsp.RegisteredProduct)
            wdata = wshape(wflat)
            prods = registered_products(m, [(wdata[j], a) for j, a in enumerate(acts)],
                                        product_shape(self._wl, self._al), name="fc_mul")
        ctl = stage("fc_c3_", *stage("fc_c2b_", *ctl))
        prods = stage("fc_p2", *prods)
        v3, first3, last3, final3, bias3 = stage("fc_c3b_", *ctl)
        # stage 4: the adder tree into the accumulator
        bound = int(np.abs(intops.decode_weights(self._w, self._wl.ints)).sum(1).max()) * max(self._al.ints)
        acc_shape = signed(intops.signed_bits(-bound, bound))
        acc, total = Signal(acc_shape, reset_less=True), Signal(acc_shape)
        m.d.comb += total.eq(Mux(first3, 0, acc) + adder_tree(prods))
        with m.If(v3):
            m.d.sync += acc.eq(total)
        # stage 5: a class's score from the accumulator after its last chunk, into the queue
        push4, final4, bias4 = stage("fc_c4_", v3 & last3, final3, bias3)
        m.d.comb += push.eq(push4)
        for e, entry in enumerate(q.entries):
            with m.If(push & q.at(e)):
                m.d.sync += [entry.score.eq((acc << self._shift) + bias4), entry.last.eq(final4)]
        with m.If(self.o.valid & self.o.ready & self.o.payload.last):
            m.d.sync += busy.eq(0)
        return m
