"""Requantization units: an integer (accumulator, sum, or codes) and its channel in, a level index out.

The constants come from the layer tables and sit in a memory indexed by channel; the arithmetic is
intops.py's, which is also these units' reference model. Both are pipelines of stream stages that
advance together when the output is free or taken (``en``): a channel's constants are read in the
first stage (a synchronous memory read), the arithmetic happens in the second (and third) stage.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from shiftpq import intops


def _index_shape(n: int) -> Shape:
    return unsigned(max(1, (n - 1).bit_length()))


def _code_shape(top: int) -> Shape:
    return unsigned(max(1, int(top).bit_length()))


def _signed_width(values: np.ndarray) -> int:
    return intops.signed_bits(int(values.min(initial=0)), int(values.max(initial=0)))


def threshold_code(m: Module, x, neg, thresholds: list, name: str = "th") -> Signal:
    """Combinational ``#{j : (-x if neg else x) >= thresholds[j]}``: a comparator bank and a popcount."""
    sx = Signal(signed(len(x) + 1), name=f"{name}_sx")
    m.d.comb += sx.eq(x)
    with m.If(neg):
        m.d.comb += sx.eq(-x)
    code = Signal(_code_shape(len(thresholds)), name=f"{name}_code")
    hits = Cat(*[sx >= t for t in thresholds])
    m.d.comb += code.eq(sum(hits[j] for j in range(len(thresholds))))
    return code


def shift_clamp(m: Module, acc, shift, top: int, name: str = "aff") -> Signal:
    """Combinational ``clamp(acc >> shift, 0, top)`` with an arithmetic (floor) shift."""
    y = Signal(signed(len(acc)), name=f"{name}_y")
    m.d.comb += y.eq(acc >> shift)
    code = Signal(_code_shape(top), name=f"{name}_code")
    with m.If(y < 0):
        m.d.comb += code.eq(0)
    with m.Elif(y > top):
        m.d.comb += code.eq(Const(top))
    with m.Else():
        m.d.comb += code.eq(y)
    return code


class ThresholdRequant(wiring.Component):
    """``code = #{j : sign[c] * x >= thresholds[c, j]}`` (APoT outputs); two-cycle latency.

    All 2^b - 1 comparisons of a channel run in parallel against one memory word that packs the
    channel's thresholds and sign (the word is as wide as a row: 15 x 21 bits for a ResNet-20 layer)."""

    def __init__(self, thresholds: np.ndarray, sign: np.ndarray, in_shape: Shape):
        thresholds, sign = np.asarray(thresholds, dtype=np.int64), np.asarray(sign, dtype=np.int64)
        if thresholds.ndim != 2 or sign.shape != (thresholds.shape[0],):
            self._MustUse__silence = True
            raise ValueError(f"thresholds must be [channels, levels - 1] and sign [channels], got "
                             f"{thresholds.shape!r} and {sign.shape!r}")
        self._th, self._sign, self._in = thresholds, sign, Shape.cast(in_shape)
        self._thw = max(_signed_width(thresholds), self._in.width + 1)
        self._top = thresholds.shape[1]
        channels = thresholds.shape[0]
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"x": self._in, "c": _index_shape(channels)}))),
            "o": Out(stream.Signature(_code_shape(self._top))),
        })

    def elaborate(self, platform):
        m = Module()
        c, n = self._th.shape
        word = data.StructLayout({"neg": 1, "th": data.ArrayLayout(signed(self._thw), n)})
        m.submodules.mem = mem = Memory(shape=word, depth=c, init=[
            {"neg": int(self._sign[k] < 0), "th": [int(v) for v in self._th[k]]} for k in range(c)])
        rd = mem.read_port()
        en = Signal()
        m.d.comb += [en.eq(self.o.ready | ~self.o.valid), self.i.ready.eq(en),
                     rd.en.eq(en), rd.addr.eq(self.i.payload.c)]
        # stage 1: the memory read; the input waits beside it
        valid1, x1 = Signal(), Signal(self._in)
        with m.If(en):
            m.d.sync += [valid1.eq(self.i.valid), x1.eq(self.i.payload.x)]
        # stage 2: the comparator bank and its population count
        count = threshold_code(m, x1, rd.data.neg, [rd.data.th[j] for j in range(n)])
        with m.If(en):
            m.d.sync += [self.o.valid.eq(valid1), self.o.payload.eq(count)]
        return m


class AffineRequant(wiring.Component):
    """``code = clamp((sum_k x_k * mul_k[c] + bias[c]) >> shift[c], 0, top)`` (uniform outputs, and the
    residual add with two inputs); three-cycle latency. The products use the FPGA's multipliers
    (25-bit constants: intops.MUL_BITS)."""

    def __init__(self, muls: list[np.ndarray], bias: np.ndarray, shift: np.ndarray, top: int,
                 in_shapes: list[Shape]):
        muls = [np.asarray(mk, dtype=np.int64) for mk in muls]
        bias, shift = np.asarray(bias, dtype=np.int64), np.asarray(shift, dtype=np.int64)
        if len(muls) != len(in_shapes) or any(mk.shape != bias.shape for mk in muls) or shift.shape != bias.shape:
            self._MustUse__silence = True
            raise ValueError(f"one multiplier array per input, all shaped like bias {bias.shape!r}")
        self._muls, self._bias, self._shift, self._top = muls, bias, shift, int(top)
        self._ins = [Shape.cast(s) for s in in_shapes]
        channels = bias.shape[0]
        fields = {f"x{k}": s for k, s in enumerate(self._ins)}
        fields["c"] = _index_shape(channels)
        bounds = [1 << (s.width - 1) if s.signed else (1 << s.width) - 1 for s in self._ins]
        self._sum_w = intops.affine_bits(bounds, muls, bias)
        super().__init__({"i": In(stream.Signature(data.StructLayout(fields))),
                          "o": Out(stream.Signature(_code_shape(self._top)))})

    def elaborate(self, platform):
        m = Module()
        c = self._bias.shape[0]
        k_in = len(self._muls)
        word = data.StructLayout({**{f"m{k}": signed(max(2, _signed_width(mk))) for k, mk in enumerate(self._muls)},
                                  "bias": signed(max(2, _signed_width(self._bias))),
                                  "shift": unsigned(max(1, int(self._shift.max(initial=0)).bit_length()))})
        m.submodules.mem = mem = Memory(shape=word, depth=c, init=[
            {**{f"m{k}": int(mk[ch]) for k, mk in enumerate(self._muls)}, "bias": int(self._bias[ch]),
             "shift": int(self._shift[ch])} for ch in range(c)])
        rd = mem.read_port()
        en = Signal()
        m.d.comb += [en.eq(self.o.ready | ~self.o.valid), self.i.ready.eq(en),
                     rd.en.eq(en), rd.addr.eq(self.i.payload.c)]
        # stage 1: constants read; inputs wait
        valid1 = Signal()
        xs = [Signal(s, name=f"x{k}_1") for k, s in enumerate(self._ins)]
        with m.If(en):
            m.d.sync += valid1.eq(self.i.valid)
            m.d.sync += [x.eq(self.i.payload[f"x{k}"]) for k, x in enumerate(xs)]
        # stage 2: multiply-add (registered, so the DSP output register can absorb it)
        valid2, acc, shift2 = Signal(), Signal(signed(self._sum_w)), Signal.like(rd.data.shift)
        with m.If(en):
            m.d.sync += [valid2.eq(valid1), shift2.eq(rd.data.shift),
                         acc.eq(sum(xs[k] * rd.data[f"m{k}"] for k in range(k_in)) + rd.data.bias)]
        # stage 3: arithmetic shift (a floor) and clamp to [0, top]
        code = shift_clamp(m, acc, shift2, self._top)
        with m.If(en):
            m.d.sync += [self.o.valid.eq(valid2), self.o.payload.eq(code)]
        return m
