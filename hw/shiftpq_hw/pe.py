"""The shift-add processing element: a weight code times an activation code, without a multiplier.

A weight's magnitude level is a sum of at most ``max_terms`` powers of two (levels.py: the APoT
construction; 2 terms at 4 bits), so ``w * a`` is ``a`` shifted by each term's amount, summed and
negated for a negative code. The PE holds, per term slot, a small multiplexer over the shifts that
slot can take; an activation code is first decoded to its integer level (a 16-entry table at 4 bits).
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from shiftpq import intops
from shiftpq.levels import LevelSet

from .checked import Checked


def weight_code_shape(levels: LevelSet) -> Shape:
    """A weight code is ``sign * index``: a signed integer with room for +-(levels - 1)."""
    return signed((len(levels.ints) - 1).bit_length() + 1)


def pack_words(codes: np.ndarray, bits: int) -> list[int]:
    """Memory words from a [words, fields] array of (signed) codes: field j at bits [j*bits, (j+1)*bits)
    in two's complement, the layout of an ``ArrayLayout`` of ``bits``-wide elements. Vectorized: a
    large weight memory is initialized from integers, not element by element."""
    codes = np.asarray(codes, dtype=np.int64)
    return pack_lane_words([(codes[:, None, :], bits)])  # one lane of f fields


def pack_lane_words(parts: list[tuple[np.ndarray, int]]) -> list[int]:
    """Memory words of ``lanes`` fields each, a lane's fields of several widths: ``parts`` is
    ``(fields [words, lanes, n], bits)`` in a lane's bit order (the first part's fields at its low
    bits). The layout of an ``ArrayLayout`` (over lanes) of a ``StructLayout`` of ``ArrayLayout``s
    (``pack_words``: one lane, one part)."""
    planes = []
    for fields, bits in parts:
        f = np.asarray(fields, dtype=np.int64)
        n, lanes, k = f.shape
        planes.append(((f[..., None] >> np.arange(bits)) & 1).reshape(n, lanes, k * bits))  # LSB first
    bitplanes = np.concatenate(planes, axis=2)
    n, lanes, bits_per_lane = bitplanes.shape
    packed = np.packbits(bitplanes.reshape(n, lanes * bits_per_lane).astype(np.uint8), axis=1, bitorder="little")
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


class ShiftAddPE(Checked, wiring.Component):
    """One product per cycle, registered: ``o.payload = w * a`` one cycle after ``i`` is accepted.

    ``i.payload``: ``w`` (signed weight code) and ``a`` (activation code); ``o.payload``: the signed
    product. Stream handshake: a stage of one register, ready when its output is free or taken."""

    @staticmethod
    def check(wlevels: LevelSet, alevels: LevelSet):
        if not wlevels.signed or alevels.signed:
            raise ValueError(f"ShiftAddPE needs signed weight levels and unsigned activation levels, "
                             f"got {wlevels!r} and {alevels!r}")

    def __init__(self, wlevels: LevelSet, alevels: LevelSet):
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


def _ones(m: Module, mag, neg, pshape: Shape, name: str) -> Signal:
    """``mag`` (unsigned), inverted bit by bit when ``neg``: ``-x == ~x + 1`` with the ``+ 1`` left to
    the lane."""
    ext = Signal(pshape, name=f"{name}_ext")
    m.d.comb += ext.eq(mag)
    p = Signal(pshape, name=f"{name}_ones")
    m.d.comb += p.eq(Mux(neg, ~ext, ext))
    return p


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
    return _ones(m, psum, neg, pshape, name), neg


def adder_tree(values: list) -> Value:
    """The sum of ``values`` as a balanced tree of two-input adds (Python's ``sum`` builds a chain,
    which Yosys keeps: a chain of 1-bit terms becomes a long path of LUTs)."""
    vals = list(values)
    while len(vals) > 1:
        vals = [vals[i] + vals[i + 1] if i + 1 < len(vals) else vals[i] for i in range(0, len(vals), 2)]
    return vals[0]


def registered_tree(m: Module, values: list, name: str, shape=None, reset_less: bool = False) -> tuple[Signal, int]:
    """The sum of ``values`` as a balanced tree of two-input adds with every level registered (each
    add a carry chain of its own; one expression would be merged by Yosys into a multi-operand sum
    mapped to full adders in LUTs, slower and larger). Returns the sum's register and the levels
    (cycles from ``values`` to the sum); at least one level, a lone value is registered once. Each
    register is ``shape``, or (None) exactly as wide as its add; ``reset_less``: registers without a reset
    (for data that count only with a valid bit staged beside them)."""
    level, depth = list(values), 0
    while len(level) > 1 or depth == 0:
        nxt = []
        for i in range(0, len(level), 2):
            v = level[i] + level[i + 1] if i + 1 < len(level) else level[i]
            s = Signal(shape if shape is not None else v.shape(), name=f"{name}_{depth}_{i // 2}", reset_less=reset_less)
            m.d.sync += s.eq(v)
            nxt.append(s)
        level, depth = nxt, depth + 1
    return level[0], depth


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


def ones_bit(w, wl: LevelSet) -> Value:
    """``product_terms``' ``c`` of a weight field, which depends on the weight alone: the sign of an
    APoT weight (the ones' complement's ``+ 1``), zero for a uniform one."""
    return w.neg if wl.kind == "apot" else Const(0, 1)


def product_terms(m: Module, w, aval, wl: LevelSet, al: LevelSet, name: str = "pe") -> tuple[Signal, Value]:
    """``w * a == p + c`` for a weight field (``weight_field_shape``) and a decoded activation
    (``act_value``): the shift-add PE for APoT weights (at most a few shifted terms per level, no
    multiplier; ``c`` is the negative weight's ``+ 1``, ``shift_add_terms``), as the engines compute
    it; a multiplication for uniform weights (``c = 0``; for uniform sets the weight code is the
    weight; a level has up to seven terms, and an 18x18 DSP is the smaller and faster unit for an 8 x
    8-bit product): the PE study (``MacArray``) uses it as written, the conv engines and the FC compute
    a uniform product on the FPGA's multipliers with their own registers (``dsp.registered_products``)."""
    if wl.kind == "apot":
        return shift_add_terms(m, w.mag, w.neg, aval, wl, al, name)
    out = Signal(product_shape(wl, al), name=f"{name}_product")
    m.d.comb += out.eq(w * aval)
    return out, ones_bit(w, wl)


# -- MAC-array variants (the PE cost study, bench/pe_cost.py) -------------------------------------
#
# In an engine every lane reads the same activation of an input channel, so whatever depends on the
# activation alone can be computed once per channel and shared by the lanes ("shared"); a PE is then
# what is left per (lane, channel). Each variant below is a pair (``product``, NumPy ``reference``)
# with ``w * a == p + c`` (``p`` the product in ones' complement for a negative weight, ``c`` its
# ``+ 1``, added once per lane after the adder tree as in the engines). ``MacArray`` puts a variant
# into an array of ``lanes x simd`` PEs shaped like an engine's.
#
# - ``shift-add``: the engines' PE (``product_terms``): per term slot a mux over shifts of the
#   decoded activation, the slots added; shared: the decode;
# - ``multiples``: every weight level is an odd multiple of the activation shifted (4-bit APoT:
#   {1, 2, 3, 4, 6, 8, 10} = {1, 3, 5} << {0..3}): shared: the decode and ``3a``, ``5a``; a PE is
#   one select among the levels' shifted multiples and a sign;
# - ``xy``: the level as the sum of two slots, each of which picks one of two shared multiples or
#   zero (4-bit APoT: {0, a, 6a} + {0, 2a, 4a}); the weight stored recoded (two slot selects and a
#   sign), so each slot bit is one 4-input function; shared: the decode and ``6a``;
# - ``table``: no decode, the product a table of (weight magnitude, activation code) per PE;
# - ``uniform``: a signed x unsigned ``*`` of the codes themselves (the uniform 4x4 baseline,
#   mapped to LUTs with ``synth_ecp5 -nodsp``);
# - ``dsp2``: two channels' products summed in one 18x18 multiplier (``dsp_pair``).

VARIANTS = ("shift-add", "multiples", "xy", "table", "uniform", "dsp2")


def odd_shift(v: int) -> tuple[int, int]:
    """``v == odd << shift`` with ``odd`` odd (v > 0)."""
    s = (v & -v).bit_length() - 1
    return v >> s, s


def level_odds(wl: LevelSet) -> list[int]:
    """The odd multiples of the activation that a weight level set needs (4-bit APoT: 1, 3, 5)."""
    return sorted({odd_shift(v)[0] for v in wl.ints if v})


def xy_split(wl: LevelSet) -> tuple[tuple[int, int], tuple[int, int], list[tuple[int, int]]]:
    """Two slots, each ``{0, x0, x1}`` and ``{0, y0, y1}`` of multiples of the activation, whose sums
    cover every magnitude level: ``(xs, ys, picks)`` with ``level[i] == X[picks[i][0]] +
    Y[picks[i][1]]`` where ``X = (0, *xs)``, ``Y = (0, *ys)``. The first such pair in a fixed search
    order (smallest largest multiple, then fewest distinct odd multiples); ValueError when none exists."""
    targets = [v for v in wl.ints if v]
    cands = list(range(1, wl.denom + 1))
    found = []
    for x0 in cands:
        for x1 in cands[x0:]:
            for y0 in cands:
                for y1 in cands[y0:]:
                    if (x0, x1) > (y0, y1):
                        continue
                    X, Y = (0, x0, x1), (0, y0, y1)
                    sums = {X[i] + Y[j]: (i, j) for j in (2, 1, 0) for i in (2, 1, 0)}
                    if all(t in sums for t in targets):
                        odds = {odd_shift(v)[0] for v in (x0, x1, y0, y1)}
                        found.append(((max(x1, y1), len(odds), x0, x1, y0, y1), (x0, x1), (y0, y1),
                                      [sums[v] if v else (0, 0) for v in wl.ints]))
    if not found:
        raise ValueError(f"no two-slot split of the weight levels {wl.ints}")
    _, xs, ys, picks = min(found)
    return xs, ys, picks


def variant_field_shape(kind: str, wl: LevelSet) -> Shape | data.Layout:
    """How a variant's weight memory stores one weight (``dsp2``: a pair of channels, ``dsp_fields``)."""
    if kind == "uniform":
        return weight_code_shape(wl)
    if kind == "xy":
        return data.StructLayout({"x": 2, "y": 2, "neg": 1})
    if kind == "dsp2":
        vb = intops.signed_bits(-wl.denom - 1, wl.denom)
        return data.StructLayout({"lo": signed(vb), "hi": signed(vb)})
    return weight_field_shape(wl)


def variant_fields(kind: str, wl: LevelSet, codes: np.ndarray) -> np.ndarray:
    """The integers a variant's weight memory holds for signed weight codes ``codes`` [..., n]
    (``dsp2``: [..., ceil(n / 2)] pairs). Bit layout as ``variant_field_shape``."""
    codes = np.asarray(codes, dtype=np.int64)
    if kind == "uniform":
        return codes
    if kind == "xy":
        _, _, picks = xy_split(wl)
        pk = np.asarray(picks, dtype=np.int64)[np.abs(codes)]
        return pk[..., 0] | pk[..., 1] << 2 | (codes < 0).astype(np.int64) << 4
    if kind == "dsp2":
        vals = intops.decode_weights(codes, wl.ints)
        if vals.shape[-1] % 2:
            vals = np.concatenate([vals, np.zeros_like(vals[..., :1])], axis=-1)
        hi, lo = vals[..., 0::2], vals[..., 1::2]
        vb = variant_field_shape(kind, wl).size // 2
        hi = hi - (lo < 0)  # the low field's borrow, taken out of the high one once, at compile time
        return (lo & ((1 << vb) - 1)) | (hi & ((1 << vb) - 1)) << vb
    return weight_fields(wl, codes)


def shared_values(m: Module, kind: str, a, wl: LevelSet, al: LevelSet, name: str) -> dict:
    """What a variant computes once per input channel from its activation code ``a`` (shared by
    every lane reading the channel), as combinational signals: ``{"a": code}`` for ``table`` and
    ``uniform``, else ``{odd: odd * value}`` (``1``: the decoded value itself)."""
    if kind in ("table", "uniform"):
        return {"a": a}
    aval = act_value(m, a, al, name)
    odds = [1]
    if kind == "multiples":
        odds = level_odds(wl)
    elif kind == "xy":
        xs, ys, _ = xy_split(wl)
        odds = sorted({odd_shift(v)[0] for v in (*xs, *ys)} | {1})
    out = {1: aval}
    for o in odds:
        if o != 1:
            v = Signal(unsigned((al.denom * o).bit_length()), name=f"{name}_x{o}")
            m.d.comb += v.eq(adder_tree([aval << s for s in range(o.bit_length()) if o >> s & 1]))
            out[o] = v
    return out


def _multiple(shared: dict, v: int) -> Value:
    o, s = odd_shift(v)
    return shared[o] << s


def variant_product(m: Module, kind: str, w, shared: dict, wl: LevelSet, al: LevelSet,
                    name: str) -> tuple[Value, Value]:
    """One PE of variant ``kind`` (not ``dsp2``): weight field ``w`` (``variant_field_shape``) times
    the channel's ``shared`` values, as ``(p, c)`` with ``w * a == p + c``."""
    pshape = product_shape(wl, al)
    if kind == "uniform":
        out = Signal(signed(len(w) + len(shared["a"]) + 1), name=f"{name}_product")
        m.d.comb += out.eq(w * shared["a"])
        return out, Const(0, 1)
    if kind == "shift-add":
        return product_terms(m, w, shared[1], wl, al, name)
    mag = Signal(unsigned(pshape.width - 1), name=f"{name}_mag")
    if kind == "multiples":
        with m.Switch(w.mag):
            for idx, v in enumerate(wl.ints):
                if v:
                    with m.Case(idx):
                        m.d.comb += mag.eq(_multiple(shared, v))
            with m.Default():
                m.d.comb += mag.eq(0)
    elif kind == "xy":
        xs, ys, _ = xy_split(wl)
        slots = []
        for sel, opts, tag in ((w.x, xs, "x"), (w.y, ys, "y")):
            slot = Signal(unsigned((al.denom * max(opts)).bit_length()), name=f"{name}_{tag}")
            with m.Switch(sel):
                for k, v in enumerate(opts):
                    with m.Case(k + 1):
                        m.d.comb += slot.eq(_multiple(shared, v))
                with m.Default():
                    m.d.comb += slot.eq(0)
            slots.append(slot)
        m.d.comb += mag.eq(slots[0] + slots[1])
    elif kind == "table":
        with m.Switch(Cat(shared["a"], w.mag)):
            for idx, v in enumerate(wl.ints):
                for j, av in enumerate(al.ints):
                    if v * av:
                        with m.Case(j | idx << len(shared["a"])):
                            m.d.comb += mag.eq(v * av)
            with m.Default():
                m.d.comb += mag.eq(0)
    else:
        raise ValueError(f"unknown PE variant {kind!r}; expected one of {', '.join(VARIANTS)}")
    neg = w.neg
    return _ones(m, mag, neg, pshape, name), neg


def variant_reference(kind: str, wcodes, acodes, wl: LevelSet, al: LevelSet) -> tuple[np.ndarray, np.ndarray]:
    """NumPy model of ``variant_product``: ``(p, c)`` for signed weight codes and activation codes,
    computed the way the variant computes them (the multiples, the two slots, the table, the
    ones' complement), so a test compares the hardware with this and this with ``reference``."""
    wcodes, acodes = np.asarray(wcodes, dtype=np.int64), np.asarray(acodes, dtype=np.int64)
    if kind == "uniform":
        return wcodes * acodes, np.zeros_like(wcodes)
    aval = np.asarray(al.ints, dtype=np.int64)[acodes]
    neg = (wcodes < 0).astype(np.int64)
    idx = np.abs(wcodes)
    if kind in ("shift-add", "table"):
        mag = np.asarray(wl.ints, dtype=np.int64)[idx] * aval
    elif kind == "multiples":
        odd = np.asarray([odd_shift(v)[0] if v else 0 for v in wl.ints])[idx]
        sh = np.asarray([odd_shift(v)[1] if v else 0 for v in wl.ints])[idx]
        mag = (odd * aval) << sh
    elif kind == "xy":
        xs, ys, picks = xy_split(wl)
        pk = np.asarray(picks)[idx]
        mag = np.asarray((0, *xs))[pk[..., 0]] * aval + np.asarray((0, *ys))[pk[..., 1]] * aval
    else:
        raise ValueError(f"no per-PE reference for {kind!r}")
    return np.where(neg == 1, ~mag, mag), neg


def dsp_pair_layout(wl: LevelSet, al: LevelSet) -> dict:
    """The field width ``k`` of two products packed into one 18x18 signed multiplier and its
    operands' widths: ``A = hi * 2**k + lo`` (two weights), ``B = a0 + a1 * 2**k`` (two activations),
    ``A * B = lo*a0 + (hi*a0 + lo*a1) * 2**k + hi*a1 * 2**(2k)``. ``k`` holds the middle field, a
    two-term dot product, minus one (the low field's borrow) as a signed number, and the low field's
    sign is its bit ``k - 1``; ValueError when an operand does not fit 18 signed bits."""
    top = wl.denom * al.denom
    k = intops.signed_bits(-2 * top - 1, 2 * top)
    a_max = (wl.denom + 1) * (1 << k) + wl.denom
    b_max = al.denom * ((1 << k) + 1)
    if max(a_max, b_max) >= 1 << 17:
        raise ValueError(f"two {wl.bits}-bit x {al.bits}-bit products do not pack into an 18x18 multiplier "
                         f"(field {k} bits: |A| up to {a_max}, B up to {b_max})")
    vb = intops.signed_bits(-wl.denom - 1, wl.denom)  # a stored weight (variant_field_shape)
    # the product's operand widths as the RTL's multiply has them: A = Cat(lo sign-extended to k bits, hi)
    # (its top bit the sign), B an 18-bit signed operand
    return {"k": k, "a_bits": k + vb, "b_bits": 18}


def dsp_pairs_fit(wl: LevelSet, al: LevelSet | None) -> bool:
    """Whether an engine of these weight and activation levels can put two products in one
    multiplier (``dsp_pair``): APoT weights, decoded activations (not the stem's image), fields that
    fit (``dsp_pair_layout``)."""
    if wl.kind != "apot" or al is IMAGE:
        return False
    try:
        dsp_pair_layout(wl, al)
    except ValueError:
        return False
    return True


def dsp_reference(hi_codes, lo_codes, a0_codes, a1_codes, wl: LevelSet, al: LevelSet) -> tuple[np.ndarray, np.ndarray]:
    """NumPy model of ``dsp_pair``, bit for bit: the stored fields (``variant_fields``), the
    operands, the 36-bit product, the middle field sign-extended and the low field's sign bit:
    ``(m, c)`` with ``m + c == w_hi * a0 + w_lo * a1``."""
    k = dsp_pair_layout(wl, al)["k"]
    f = variant_fields("dsp2", wl, np.stack([np.asarray(hi_codes), np.asarray(lo_codes)], axis=-1))[..., 0]
    vb = variant_field_shape("dsp2", wl).size // 2
    sx = lambda x, b: (x & ((1 << b) - 1)) - ((x >> (b - 1) & 1) << b)  # noqa: E731  (sign-extend b bits)
    lo, hi = sx(f, vb), sx(f >> vb, vb)
    a = (hi << k) + (lo & ((1 << k) - 1))  # Cat(lo sign-extended to k bits, hi)
    ints = np.asarray(al.ints, dtype=np.int64)
    b = ints[np.asarray(a0_codes)] + (ints[np.asarray(a1_codes)] << k)
    p = (a * b) & ((1 << 36) - 1)  # the multiplier's 36-bit output
    return sx(p >> k, k), p >> (k - 1) & 1


def dsp_pair(m: Module, w, a0, a1, wl: LevelSet, al: LevelSet, name: str) -> tuple[Signal, Signal]:
    """Two products summed in one 18x18 signed multiplier (ECP5 MULT18X18D), exactly:
    ``w.hi * a0 + w.lo * a1 == m + c`` for decoded activations ``a0``, ``a1`` and a stored pair
    ``w`` (``variant_fields``: the low weight's borrow already taken out of the high one, so
    ``A`` is the fields' concatenation, no adder). The sum is the product's middle field; ``c`` is
    the low field's sign (its borrow from the middle), for the lane to add after its tree like the
    shift-add PE's ``+ 1``."""
    a, b = dsp_pair_operands(m, w, a0, a1, wl, al, name)
    p = Signal(signed(36), name=f"{name}_P")
    m.d.comb += p.eq(a * b)
    return dsp_pair_fields(m, p, wl, al, name)


def dsp_pair_operands(m: Module, w, a0, a1, wl: LevelSet, al: LevelSet, name: str) -> tuple[Signal, Signal]:
    """``dsp_pair``'s multiplier operands ``(A, B)`` (``dsp_pair_layout``'s ``a_bits`` and ``b_bits``,
    signed): the RTL's product is ``a_bits x b_bits``, as ``estimate.multipliers`` counts it."""
    lay = dsp_pair_layout(wl, al)
    k = lay["k"]
    a = Signal(signed(lay["a_bits"]), name=f"{name}_A")
    b = Signal(signed(lay["b_bits"]), name=f"{name}_B")
    m.d.comb += [a.eq(Cat(w.lo, w.lo[-1].replicate(k - len(w.lo)), w.hi).as_signed()),
                 b.eq(Cat(a0, Const(0, k - len(a0)), a1))]
    return a, b


def dsp_pair_fields(m: Module, p, wl: LevelSet, al: LevelSet, name: str) -> tuple[Signal, Signal]:
    """``dsp_pair``'s middle field and borrow bit of the multiplier's product ``p``."""
    k = dsp_pair_layout(wl, al)["k"]
    mid = Signal(signed(k), name=f"{name}_mid")
    c = Signal(name=f"{name}_borrow")
    m.d.comb += [mid.eq(p[k:2 * k]), c.eq(p[k - 1])]
    return mid, c


class MacArray(Checked, wiring.Component):
    """``lanes x simd`` PEs of one variant (``VARIANTS``), shaped like a conv engine's MAC array.

    Each cycle: an activation code per input channel (``a``) and a weight field per (lane, channel)
    (``w``, ``variant_field_shape``, as the weight memory gives it; ``dsp2``: a field per pair of
    channels, ``variant_fields``) in, registered (the engine's memory outputs); the values shared by
    the lanes computed once per channel and registered with the weights; the products registered
    with the count of their ``+ 1``s (``dsp2``: its borrow bits registered, counted in the tree's
    stage); each lane's balanced adder tree registered; each lane's
    accumulator ``acc`` (from reset): ``latency`` registers from an input to ``acc``. Uniform
    variant: the codes are the values (signed weight, unsigned activation).

    ``tree="comb"``: each lane's tree one registered expression, as the engines build it (Yosys
    merges the adds into one multi-operand sum, mapped to full adders in LUTs); ``"registered"``:
    every level of two-input adds registered (each add a carry chain)."""

    @staticmethod
    def check(kind: str, wl: LevelSet, al: LevelSet, lanes: int, simd: int, acc_bits: int | None = None,
              tree: str = "comb"):
        if kind not in VARIANTS or lanes < 1 or simd < 1 or tree not in ("comb", "registered"):
            raise ValueError(f"MacArray needs a variant in {VARIANTS}, lanes, simd >= 1 and tree 'comb' or "
                             f"'registered', got {kind!r}, {lanes!r}, {simd!r}, {tree!r}")
        if kind == "dsp2":
            dsp_pair_layout(wl, al)  # raises when two products do not fit

    def __init__(self, kind: str, wl: LevelSet, al: LevelSet, lanes: int, simd: int, acc_bits: int | None = None,
                 tree: str = "comb"):
        self.kind, self.wl, self.al, self.lanes, self.simd, self.tree = kind, wl, al, lanes, simd, tree
        self.fields = -(-simd // 2) if kind == "dsp2" else simd
        if kind == "uniform":
            self.pshape = signed(weight_code_shape(wl).width + act_code_shape(al).width + 1)
        elif kind == "dsp2":
            self.pshape = signed(dsp_pair_layout(wl, al)["k"])
        else:
            self.pshape = product_shape(wl, al)
        self.tree_shape = signed(self.pshape.width + self.fields.bit_length())
        # input, shared, product, tree (one register per level when registered), accumulator
        self.latency = 4 + (max(1, self.fields.bit_length()) if tree == "registered" else 1)
        self.acc_shape = signed(acc_bits or self.tree_shape.width + 8)
        super().__init__({
            "a": In(data.ArrayLayout(act_code_shape(al), simd)),
            "w": In(data.ArrayLayout(data.ArrayLayout(variant_field_shape(kind, wl), self.fields), lanes)),
            "acc": Out(data.ArrayLayout(self.acc_shape, lanes))})

    def elaborate(self, platform):
        m = Module()
        kind, wl, al = self.kind, self.wl, self.al
        a_in = Signal.like(self.a, name="a_in")
        w_in = Signal.like(self.w, name="w_in")
        m.d.sync += [a_in.eq(self.a), w_in.eq(self.w)]  # the memories' outputs
        # stage A: per input channel, once for all lanes; the weights registered beside
        shared = []
        for j in range(self.simd):
            vals = shared_values(m, "shift-add" if kind == "dsp2" else kind, a_in[j], wl, al, f"ch{j}")
            regs = {}
            for key, v in vals.items():
                r = Signal(v.shape(), name=f"ch{j}_s{key}")
                m.d.sync += r.eq(v)
                regs[key] = r
            shared.append(regs)
        w_a = Signal.like(self.w, name="w_a")
        m.d.sync += w_a.eq(w_in)
        # stage B: the products and their + 1s, registered
        prods, ones = [], []
        for p in range(self.lanes):
            terms = []
            for f in range(self.fields):
                name = f"pe{p}_{f}"
                if kind == "dsp2":
                    a1 = shared[2 * f + 1][1] if 2 * f + 1 < self.simd else Const(0, len(shared[0][1]))
                    terms.append(dsp_pair(m, w_a[p][f], shared[2 * f][1], a1, wl, al, name))
                else:
                    terms.append(variant_product(m, kind, w_a[p][f], shared[f], wl, al, name))
            lane_p = [Signal(self.pshape, name=f"prod{p}_{f}") for f in range(self.fields)]
            m.d.sync += [r.eq(t) for r, (t, _) in zip(lane_p, terms)]
            if kind == "dsp2":
                # the borrow bits come out of the multiplier: registered as they are, counted in the
                # tree's stage (counted beside the products they were the arrays' critical path)
                bits = Signal(self.fields, name=f"borrows{p}")
                m.d.sync += bits.eq(Cat(*[c for _, c in terms]))
                one = adder_tree(list(bits))
            else:  # a negative weight's + 1 comes from the weight register: counted beside the products
                one = Signal(range(self.fields + 1), name=f"ones{p}")
                m.d.sync += one.eq(adder_tree([c for _, c in terms]))
            prods.append(lane_p)
            ones.append(one)
        # stage C: each lane's tree; then the accumulators
        for p in range(self.lanes):
            if self.tree == "comb":
                tree = Signal(self.tree_shape, name=f"tree{p}")
                m.d.sync += tree.eq(adder_tree([*prods[p], ones[p]]))
            else:
                tree, _ = registered_tree(m, [*prods[p], ones[p]], f"tree{p}", self.tree_shape)
            acc = Signal(self.acc_shape, name=f"acc{p}")
            m.d.sync += acc.eq(acc + tree)
            m.d.comb += self.acc[p].eq(acc)
        return m

    def reference(self, a_codes: np.ndarray, w_codes: np.ndarray) -> np.ndarray:
        """NumPy model: each lane's sum of ``w * a`` over channels, from signed weight codes
        [cycles, lanes, simd] and activation codes [cycles, simd]: [cycles, lanes]."""
        w = np.asarray(w_codes, dtype=np.int64)
        a = np.asarray(a_codes, dtype=np.int64)
        if self.kind == "uniform":
            wv, av = w, a
        else:
            wv, av = intops.decode_weights(w, self.wl.ints), np.asarray(self.al.ints, dtype=np.int64)[a]
        return np.einsum("tls,ts->tl", wv, av)

    def fields_of(self, w_codes: np.ndarray) -> np.ndarray:
        """The weight fields (``variant_fields``) for signed weight codes [..., lanes, simd]."""
        return variant_fields(self.kind, self.wl, w_codes)
