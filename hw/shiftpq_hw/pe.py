"""The shift-add processing element: a weight code times an activation code, without a multiplier.

A weight's magnitude level is a sum of at most ``max_terms`` powers of two (levels.py: the APoT
construction; 2 terms at 4 bits), so ``w * a`` is ``a`` shifted by each term's amount, summed and
negated for a negative code. The PE holds, per term slot, a small multiplexer over the shifts that
slot can take; an activation code is first decoded to its integer level (a 16-entry table at 4 bits).
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from shiftpq import intops
from shiftpq.levels import LevelSet


def weight_code_shape(levels: LevelSet) -> Shape:
    """A weight code is ``sign * index``: a signed integer with room for +-(levels - 1)."""
    return signed((len(levels.ints) - 1).bit_length() + 1)


def pack_words(codes: np.ndarray, bits: int) -> list[int]:
    """Memory words from a [words, fields] array of (signed) codes: field j at bits [j*bits, (j+1)*bits)
    in two's complement, the layout of an ``ArrayLayout`` of ``bits``-wide elements. Vectorized: a
    large weight memory is initialized from integers, not element by element."""
    codes = np.asarray(codes, dtype=np.int64)
    n, f = codes.shape
    bitplanes = (codes[:, :, None] >> np.arange(bits)) & 1  # two's complement bits, LSB first
    packed = np.packbits(bitplanes.reshape(n, f * bits).astype(np.uint8), axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


IMAGE = None  # activation "levels" of the stem: the int8 image itself (pixel - 128)


def act_code_shape(levels: LevelSet | None) -> Shape:
    if levels is IMAGE:
        return signed(8)
    return unsigned(max(1, (len(levels.ints) - 1).bit_length()))


def product_shape(wlevels: LevelSet, alevels: LevelSet | None) -> Shape:
    top = wlevels.denom * (128 if alevels is IMAGE else alevels.denom)
    return signed(top.bit_length() + 1)


def reference(wcode: np.ndarray, acode: np.ndarray, wlevels: LevelSet, alevels: LevelSet) -> np.ndarray:
    """NumPy model of the PE: ``sign(w) * wints[|w|] * aints[a]``."""
    return intops.decode_weights(wcode, wlevels.ints) * np.asarray(alevels.ints)[np.asarray(acode, dtype=np.int64)]


def term_slots(levels: LevelSet) -> list[list[int | None]]:
    """Per slot, per magnitude index: the left shift this slot adds (None: nothing). Slot 0 takes
    each level's largest term, slot 1 the next, ..."""
    slots = [[None] * len(levels.ints) for _ in range(levels.max_terms)]
    for i, terms in enumerate(levels.terms):
        for k, s in enumerate(sorted(terms, reverse=True)):
            slots[k][i] = s
    return slots


class ShiftAddPE(wiring.Component):
    """One product per cycle, registered: ``o.payload = w * a`` one cycle after ``i`` is accepted.

    ``i.payload``: ``w`` (signed weight code) and ``a`` (activation code); ``o.payload``: the signed
    product. Stream handshake: a stage of one register, ready when its output is free or taken."""

    def __init__(self, wlevels: LevelSet, alevels: LevelSet):
        if not wlevels.signed or alevels.signed:
            self._MustUse__silence = True  # a rejected component is not an unused one
            raise ValueError(f"ShiftAddPE needs signed weight levels and unsigned activation levels, "
                             f"got {wlevels!r} and {alevels!r}")
        self._wl, self._al = wlevels, alevels
        self._layout = data.StructLayout({"w": weight_code_shape(wlevels), "a": act_code_shape(alevels)})
        super().__init__({"i": In(stream.Signature(self._layout)),
                          "o": Out(stream.Signature(product_shape(wlevels, alevels)))})

    def elaborate(self, platform):
        m = Module()
        product = shift_add(m, self.i.payload.w, self.i.payload.a, self._wl, self._al)
        with m.If(self.o.ready | ~self.o.valid):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(product)]
        m.d.comb += self.i.ready.eq(self.o.ready | ~self.o.valid)
        return m


def act_value(m: Module, a, al: LevelSet | None, name: str = "pe") -> Signal:
    """The integer level of an activation code (the int8 pixel itself for the stem; the code itself
    for uniform levels; a 2^b-entry table for APoT levels), added to module ``m``."""
    if al is IMAGE:
        aval = Signal(signed(8), name=f"{name}_aval")
        m.d.comb += aval.eq(a)  # the stem reads pixel - 128 directly
    elif list(al.ints) == list(range(len(al.ints))):
        aval = Signal(unsigned(max(al.ints).bit_length()), name=f"{name}_aval")
        m.d.comb += aval.eq(a)  # uniform levels: the code is the value
    else:
        aval = Signal(unsigned(max(al.ints).bit_length()), name=f"{name}_aval")
        with m.Switch(a):
            for idx, v in enumerate(al.ints):
                with m.Case(idx):
                    m.d.comb += aval.eq(v)
            if len(al.ints) < 1 << len(a):
                with m.Default():
                    m.d.comb += aval.eq(0)
    return aval


def shift_add(m: Module, w, a, wl: LevelSet, al: LevelSet, name: str = "pe") -> Signal:
    """The combinational shift-add product ``w * a`` of a weight code (two's complement) and an
    activation code, added to module ``m``; returns the product signal."""
    neg = Signal(name=f"{name}_neg")
    m.d.comb += neg.eq(w < 0)
    p, c = shift_add_terms(m, Mux(neg, -w, w), neg, act_value(m, a, al, name), wl, al, name)
    product = Signal(product_shape(wl, al), name=f"{name}_product")
    m.d.comb += product.eq(p + c)
    return product


def shift_add_terms(m: Module, mag, neg, aval, wl: LevelSet, al: LevelSet, name: str = "pe") -> tuple[Signal, Value]:
    """The PE's arithmetic, its one home: a weight given as magnitude index and sign times a decoded
    activation value, as ``(p, neg)`` with ``w * a == p + neg``: the magnitude level's shifted
    copies of ``aval`` summed, then inverted bit by bit for a negative weight (``-x == ~x + 1``).
    An engine adds the ``+ 1`` of all its PEs once, after the adder tree (a count of the negative
    weights), instead of a negation per product."""
    pshape = product_shape(wl, al)
    psum = Signal(pshape if al is IMAGE else unsigned(pshape.width - 1), name=f"{name}_mag")
    parts = []
    for k, shifts in enumerate(term_slots(wl)):
        part = Signal(psum.shape(), name=f"{name}_term{k}")
        with m.Switch(mag):
            for idx, s in enumerate(shifts):
                if s is not None:
                    with m.Case(idx):
                        m.d.comb += part.eq(aval << s)
            with m.Default():  # no term in this slot (and codes outside the set, which export rejects)
                m.d.comb += part.eq(0)
        parts.append(part)
    m.d.comb += psum.eq(sum(parts))
    ext = Signal(pshape, name=f"{name}_ext")
    m.d.comb += ext.eq(psum)
    p = Signal(pshape, name=f"{name}_ones")
    m.d.comb += p.eq(Mux(neg, ~ext, ext))
    return p, neg


def adder_tree(values: list) -> Value:
    """The sum of ``values`` as a balanced tree of two-input adds (Python's ``sum`` builds a chain,
    which Yosys keeps: a chain of 1-bit terms becomes a long path of LUTs)."""
    vals = list(values)
    while len(vals) > 1:
        vals = [vals[i] + vals[i + 1] if i + 1 < len(vals) else vals[i] for i in range(0, len(vals), 2)]
    return vals[0]


def weight_field_shape(wl: LevelSet):
    """How an engine stores a weight code in its memory: APoT weights as sign and magnitude index
    (the PE needs no negation of the code), uniform weights as the signed weight (the multiplier's
    operand)."""
    if wl.kind == "apot":
        return data.StructLayout({"mag": unsigned(weight_code_shape(wl).width - 1), "neg": 1})
    return weight_code_shape(wl)


def weight_fields(wl: LevelSet, codes: np.ndarray) -> np.ndarray:
    """The integers of ``weight_field_shape`` for signed weight codes (for ``pack_words``)."""
    codes = np.asarray(codes, dtype=np.int64)
    if wl.kind == "apot":
        return np.abs(codes) | ((codes < 0).astype(np.int64) << (weight_code_shape(wl).width - 1))
    return codes


def product_terms(m: Module, w, aval, wl: LevelSet, al: LevelSet, name: str = "pe") -> tuple[Signal, Value]:
    """``w * a == p + c`` as the engines compute it, for a weight field (``weight_field_shape``) and
    a decoded activation (``act_value``): the shift-add PE for APoT weights (at most a few shifted
    terms per level, no multiplier; ``c`` is the negative weight's ``+ 1``, ``shift_add_terms``), a
    multiplication for uniform weights (``c = 0``; the 8-bit first conv and FC: a level has up to
    seven terms, and the FPGA's 18x18 DSP multiplier is the smaller and faster unit for an 8 x 8-bit
    product; for uniform sets the weight code is the weight)."""
    if wl.kind == "apot":
        return shift_add_terms(m, w.mag, w.neg, aval, wl, al, name)
    out = Signal(product_shape(wl, al), name=f"{name}_product")
    m.d.comb += out.eq(w * aval)
    return out, Const(0, 1)
