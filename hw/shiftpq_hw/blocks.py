"""The stream blocks between the conv engines: fork, shortcut path, code lookup, average pool + requant, FC.

Every block is one ``wiring.Component`` with ``i``/``o`` streams (``Fork`` has two outputs); payloads
are whole pixels (one code per channel). Their reference models are the golden model's ops
(golden.py), which the tests compare against.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from shiftpq import intops
from shiftpq.levels import LevelSet

from .pe import act_code_shape, shift_add, weight_code_shape
from .requant import shift_clamp


def _table(items: list, index) -> Array:
    """An Array indexed by ``index``, padded with its last item to every value the index can take, so
    the generated case statement is complete."""
    items = list(items)
    return Array(items + [items[-1]] * ((1 << len(index)) - len(items)))


def _silence_and_raise(obj, msg: str):
    obj._MustUse__silence = True  # a rejected component is not an unused one
    raise ValueError(msg)


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
    subsample; the channel padding is the fused add's business) and buffer them in a FIFO deep enough
    for one whole map, until the block's second conv engine loads them beside its own input."""

    def __init__(self, shape, in_hw: int, stride: int):
        self._shape, self._hw, self._s = shape, in_hw, stride
        self._depth = (-(-in_hw // stride)) ** 2
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        hw, s = self._hw, self._s
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=Shape.cast(self._shape).width, depth=self._depth)
        y, x = Signal(range(max(hw, 2))), Signal(range(max(hw, 2)))
        keep = ((y % s) == 0) & ((x % s) == 0) if s > 1 else Const(1)
        m.d.comb += [fifo.w_data.eq(self.i.payload), fifo.w_en.eq(self.i.valid & keep),
                     self.i.ready.eq(fifo.w_rdy | ~keep)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += x.eq(x + 1)
            with m.If(x == hw - 1):
                m.d.sync += [x.eq(0), y.eq(y + 1)]
                with m.If(y == hw - 1):
                    m.d.sync += y.eq(0)
        m.d.comb += [self.o.payload.eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy), fifo.r_en.eq(self.o.ready)]
        return m


class CodeLUT(wiring.Component):
    """A requant whose input is codes (e.g. a block's 4-bit quantizer reading the 8-bit stream): every
    channel maps its code through a table tabulated from the op's thresholds; one register stage."""

    def __init__(self, luts: np.ndarray, in_levels: LevelSet, out_levels: LevelSet):
        luts = np.asarray(luts, dtype=np.int64)  # [codes in, channels]
        if luts.shape[0] != len(in_levels.ints):
            _silence_and_raise(self, f"luts must have one row per input code ({len(in_levels.ints)}), got {luts.shape!r}")
        self._luts, self._il, self._ol = luts, in_levels, out_levels
        c = luts.shape[1]
        super().__init__({"i": In(stream.Signature(data.ArrayLayout(act_code_shape(in_levels), c))),
                          "o": Out(stream.Signature(data.ArrayLayout(act_code_shape(out_levels), c)))})

    def elaborate(self, platform):
        m = Module()
        en = self.o.ready | ~self.o.valid
        m.d.comb += self.i.ready.eq(en)
        with m.If(en):
            m.d.sync += self.o.valid.eq(self.i.valid)
            for c in range(self._luts.shape[1]):
                table = Array(Const(int(v), act_code_shape(self._ol)) for v in self._luts[:, c])
                m.d.sync += self.o.payload[c].eq(table[self.i.payload[c]])
        return m


class AvgPoolRequant(wiring.Component):
    """Global average pool and the 8-bit requant after it: per channel, the sum of the ``hw x hw``
    values of a map, then ``clamp((sum * mul + bias) >> shift, 0, top)`` one channel per cycle (one
    multiplier); the pooled vector leaves as one beat."""

    def __init__(self, in_levels: LevelSet, out_levels: LevelSet, hw: int, mul, bias, shift):
        self._il, self._ol, self._hw = in_levels, out_levels, hw
        self._mul, self._bias, self._shift = (np.asarray(a, dtype=np.int64) for a in (mul, bias, shift))
        c = len(self._mul)
        super().__init__({"i": In(stream.Signature(data.ArrayLayout(act_code_shape(in_levels), c))),
                          "o": Out(stream.Signature(data.ArrayLayout(act_code_shape(out_levels), c)))})

    @property
    def cycles_per_image(self) -> int:
        return self._hw ** 2 + len(self._mul) + 1

    def elaborate(self, platform):
        m = Module()
        c, n = len(self._mul), self._hw ** 2
        top = max(self._il.ints)
        sum_shape = unsigned(max(1, (top * n).bit_length()))
        sums = [Signal(sum_shape, name=f"sum{k}") for k in range(c)]
        decode = Array(Const(v, unsigned(max(1, top.bit_length()))) for v in self._il.ints)
        count = Signal(range(n + 1))
        ch = Signal(range(max(c, 2)))
        state = Signal(2)  # 0: accumulate, 1: requantize channel by channel, 2: output
        m.d.comb += self.i.ready.eq(state == 0)
        with m.If((state == 0) & self.i.valid):
            for k in range(c):
                m.d.sync += sums[k].eq(Mux(count == 0, 0, sums[k]) + decode[self.i.payload[k]])
            m.d.sync += count.eq(count + 1)
            with m.If(count == n - 1):
                m.d.sync += [count.eq(0), state.eq(1), ch.eq(0)]
        mul = _table([Const(int(v), signed(intops.MUL_BITS)) for v in self._mul], ch)
        bias = _table([Const(int(v), signed(max(2, intops.signed_bits(int(self._bias.min()), int(self._bias.max())))))
                       for v in self._bias], ch)
        shift = _table([Const(int(v), unsigned(max(1, int(self._shift.max()).bit_length()))) for v in self._shift], ch)
        width = intops.affine_bits([top * n], [self._mul], self._bias)
        y = Signal(signed(width))
        m.d.comb += y.eq(_table(sums, ch)[ch] * mul[ch] + bias[ch])
        code = shift_clamp(m, y, shift[ch], self._ol.denom, name="pool")
        with m.If(state == 1):
            with m.Switch(ch):
                for k in range(c):
                    with (m.Case(k) if k < c - 1 else m.Default()):
                        m.d.sync += self.o.payload[k].eq(code)
            m.d.sync += ch.eq(ch + 1)
            with m.If(ch == c - 1):
                m.d.sync += [state.eq(2), self.o.valid.eq(1)]
        with m.If((state == 2) & self.o.ready):
            m.d.sync += [state.eq(0), self.o.valid.eq(0)]
        return m


class FullyConnected(wiring.Component):
    """The 8-bit FC: one class per cycle, ``channels`` shift-add PEs and an adder tree, then
    ``score = (acc << shift) + bias``. Output: one int32 score per beat, ``last`` on the final class."""

    def __init__(self, weights: np.ndarray, wlevels: LevelSet, alevels: LevelSet, bias, shift: int):
        self._w = np.asarray(weights, dtype=np.int64)
        self._wl, self._al = wlevels, alevels
        self._bias, self._shift = np.asarray(bias, dtype=np.int64), int(shift)
        k, c = self._w.shape
        super().__init__({"i": In(stream.Signature(data.ArrayLayout(act_code_shape(alevels), c))),
                          "o": Out(stream.Signature(data.StructLayout({"score": signed(32), "last": 1})))})

    @property
    def cycles_per_image(self) -> int:
        return self._w.shape[0] + 1

    def elaborate(self, platform):
        m = Module()
        k, c = self._w.shape
        x = Signal(self.i.payload.shape())
        busy = Signal()
        cls = Signal(range(max(k, 2)))
        m.submodules.wmem = wmem = Memory(shape=data.ArrayLayout(weight_code_shape(self._wl), c),
                                          depth=max(k, 2), init=[[int(v) for v in row] for row in self._w])
        rd = wmem.read_port(domain="comb")
        m.d.comb += [rd.addr.eq(cls), self.i.ready.eq(~busy)]
        with m.If(self.i.valid & ~busy):
            m.d.sync += [x.eq(self.i.payload), busy.eq(1), cls.eq(0)]
        acc = sum(shift_add(m, rd.data[j], x[j], self._wl, self._al, name=f"fc{j}") for j in range(c))
        bias = _table([Const(int(v), signed(32)) for v in self._bias], cls)
        score = Signal(signed(32))
        m.d.comb += score.eq((acc << self._shift) + bias[cls])
        m.d.comb += [self.o.valid.eq(busy), self.o.payload.score.eq(score), self.o.payload.last.eq(cls == k - 1)]
        with m.If(busy & self.o.ready):
            m.d.sync += cls.eq(cls + 1)
            with m.If(cls == k - 1):
                m.d.sync += [busy.eq(0), cls.eq(0)]
        return m
