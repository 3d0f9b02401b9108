"""Requantization units: an integer (accumulator, sum, or codes) and a row of constants (its
channel) in, a level index out. intops.py is their reference model.

- ``threshold_search``: APoT outputs, ``#{j : sign[c] * x >= thresholds[c, j]}`` as a pipelined
  binary search (one comparator per code bit instead of one per threshold);
- ``affine_unit``: uniform outputs and the fused residual add, ``clamp((sum_k x_k * mul_k[c] +
  bias[c]) >> shift[c], 0, top)`` with registered products and sum.
Both are pipelines of registers that advance together with an enable (``Pipe``) and read their
constants from tables in ``ROM_STAGES`` stages (``rom``: block RAM or logic, as Yosys maps them). The conv
engines run one unit per engine over their lanes in turn; ``ThresholdRequant`` and
``AffineRequant`` wrap a unit as a stream component.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from shiftpq import intops

from .checked import Checked
from .dsp import DSP_BITS, GENERIC, Target, registered_products, target_of
from .memmap import rom_port


def _index_shape(n: int) -> Shape:
    return unsigned(max(1, (n - 1).bit_length()))


def _code_shape(top: int) -> Shape:
    return unsigned(max(1, int(top).bit_length()))


def signed_width(values: np.ndarray) -> int:
    """Bits of the smallest signed shape holding every value of a constant table (and zero)."""
    return intops.signed_bits(int(values.min(initial=0)), int(values.max(initial=0)))


class Pipe:
    """The registers of a pipeline whose stages all advance together with ``en``; ``target`` (the
    ``platform`` of the ``elaborate`` building it, ``dsp.target_of``): whether its multipliers are the
    FPGA's primitive with its own registers."""

    def __init__(self, m: Module, en, target: Target = GENERIC):
        self.m, self.en, self.target = m, en, target

    def stage(self, name: str, *values, reset_less: bool = False) -> list[Signal]:
        """Registered copies of ``values``: one pipeline stage; ``reset_less`` for data that count
        only with a valid bit staged beside them (engine.py: which registers have no reset)."""
        regs = [Signal(v.shape(), name=f"{name}{i}", reset_less=reset_less) for i, v in enumerate(values)]
        with self.m.If(self.en):
            self.m.d.sync += [r.eq(v) for r, v in zip(regs, values)]
        return regs

    def rom(self, name: str, shape, rows: list, addr, stages: int | None = None) -> Signal:
        """Row ``addr`` of a constant table, ``stages`` (default ``ROM_STAGES``) stages later (``rom``)."""
        return rom(self.m, name, shape, rows, addr, self.en, stages)


ROM_STAGES = 3  # the stages of a table read (``rom``)


def rom(m: Module, name: str, shape, rows: list, addr, en, stages: int | None = None) -> Signal:
    """A constant table read in ``stages`` (default ``ROM_STAGES``, at least 2) stages: the row at
    ``addr`` comes out that many cycles later, beside the values as many ``Pipe`` stages with the same
    ``en`` register from this cycle, and holds while ``en`` is low. The memory's own read register,
    then its output register (``_q``: an ECP5 block RAM's clock to output alone takes about 5.5 ns,
    too long to be followed by a comparator or an adder in the same cycle; ``outreg.py`` moves ``_q``
    into the block RAM), then registers in logic (``_r``: the block RAMs sit in a few rows of the
    FPGA, the route from one to the logic that reads the row is a cycle of its own). Padded with zero
    rows to every address; Yosys maps it to block RAM or to logic by size (in logic: two or four parts,
    ``memmap.rom_port``)."""
    stages = ROM_STAGES if stages is None else stages
    if stages < 2:
        raise ValueError(f"{name}: a table read takes at least 2 stages, got {stages!r}")
    depth = max(2, 1 << len(addr))
    if len(rows) > depth:
        raise ValueError(f"{name}: {len(rows)} rows do not fit a {len(addr)}-bit address")
    port = rom_port(m, name, shape, list(rows) + [0] * (depth - len(rows)), depth)
    m.d.comb += [port.addr.eq(addr), port.en.eq(en)]
    out = port.data
    for i in range(stages - 1):  # data: no reset (the first is a block RAM's output register)
        reg = Signal(shape, name=f"{name}_q" if i == 0 else f"{name}_r" if i == 1 else f"{name}_r{i}", reset_less=True)
        with m.If(en):
            m.d.sync += reg.eq(out)
        out = reg
    return out


def search_levels(n: int) -> int:
    """Comparison levels of a binary search over ``n`` sorted thresholds."""
    return max(1, n.bit_length())


def search_stages(n: int) -> int:
    """``threshold_search``'s pipeline over ``n`` thresholds: the input and its signed value
    (``ROM_STAGES + 1``), ``ROM_STAGES`` per level but the last, one for the last."""
    return ROM_STAGES * search_levels(n) + 2


def threshold_search(m: Module, pipe: Pipe, x, addr, thresholds: np.ndarray, sign: np.ndarray,
                     carry: list = (), name: str = "th") -> tuple[Signal, list]:
    """``#{j : sign[c] * x >= thresholds[c, j]}`` of row ``c = addr``, by a pipelined binary search
    over the row's ascending thresholds: ``b = search_levels(n)`` stages, one comparator each (level L
    compares with the threshold that splits the codes whose first L bits were already decided), so the
    code comes out one bit per stage, most significant first. Equal to the count because the rows are
    ascending (the tables' loader checks it). ``ROM_STAGES + 1`` stages before the search register
    the input (while its sign is read) and its sign-corrected value; each level but the last takes
    ``ROM_STAGES`` stages: the next level's two candidates are read (``rom``, ``ROM_STAGES - 1``
    stages) and the level's result picks one of them into a register (the next comparison is then a
    register, a carry chain and a register, with no select before or after the chain).
    ``carry``: values staged alongside. Returns the code (valid after ``search_stages(n)`` stages)
    and the carried values."""
    thresholds, sign = np.asarray(thresholds, dtype=np.int64), np.asarray(sign, dtype=np.int64)
    rows, n = thresholds.shape
    if n and np.any(np.diff(thresholds, axis=1) < 0):
        raise ValueError(f"{name}: thresholds must be ascending in every row")
    b = search_levels(n)
    xw = len(x) + 1  # -x fits
    never = (1 << (xw - 1)) + 1  # above any +-x: the padding past the last threshold
    padded = np.full((rows, (1 << b) - 1), never, dtype=np.int64)
    padded[:, :n] = thresholds
    thw = max(intops.signed_bits(int(padded.min(initial=0)), int(padded.max(initial=0))), xw)
    mask = (1 << thw) - 1

    def node(r: int, level: int, p: int) -> int:  # the threshold of node p of a level: it splits its codes
        span = 1 << (b - level)
        return int(padded[r, p * span + span // 2 - 1])

    # no table read waits on a comparison: the sign and level 0's threshold are read by the row,
    # level L + 1's two candidates (the children of the node level L compares with) by the row and
    # the code before level L; level L's result picks one of them into a register, the one level
    # L + 1 compares with (one comparator per level, a register on each side of its carry chain)
    neg = pipe.rom(f"{name}_neg", unsigned(1), [int(v < 0) for v in sign], addr)
    x, addr, *carry = pipe.stage(f"{name}_in_", x, addr, *carry)  # the input, registered
    th = pipe.rom(f"{name}_l0", signed(thw), [node(r, 0, 0) for r in range(rows)], addr)
    for i in range(2, ROM_STAGES + 1):  # again, until its sign is read
        x, addr, *carry = pipe.stage(f"{name}_in{i}_", x, addr, *carry)
    sx = Signal(signed(xw), name=f"{name}_sx")
    m.d.comb += sx.eq(Mux(neg, -x, x))
    sx, addr, *carry = pipe.stage(f"{name}_sx_", sx, addr, *carry)  # the signed value, registered
    code = Const(0, 0)
    hit = sx >= th
    for level in range(b):
        if level + 1 < b:
            pairs = [(node(r, level + 1, 2 * p + 1) & mask) << thw | node(r, level + 1, 2 * p) & mask
                     for r in range(rows) for p in range(1 << level)]
            # read in ROM_STAGES - 1 stages (the memory's read register and its output register); the
            # last of the ROM_STAGES is the pick below
            pair = pipe.rom(f"{name}_l{level + 1}", unsigned(2 * thw), pairs, Cat(code, addr), ROM_STAGES - 1)
        sx, addr, code, *carry = pipe.stage(f"{name}_s{level}_", sx, addr, Cat(hit, code), *carry)
        if level + 1 < b:
            for i in range(1, ROM_STAGES - 1):  # the code carried until the candidates are read
                sx, addr, code, *carry = pipe.stage(f"{name}_t{level}_" if i == 1 else f"{name}_t{level}_{i}_",
                                                    sx, addr, code, *carry)
            # level L's result (code[0]) picks the candidate, registered beside the value: the next
            # comparison is a register, a carry chain and a register
            th, sx, addr, code, *carry = pipe.stage(f"{name}_l{level + 1}_pick_", Mux(code[0], pair[thw:], pair[:thw]),
                                                    sx, addr, code, *carry)
            hit = sx >= th.as_signed()
    return code, carry


AFFINE_STAGES = ROM_STAGES + 7  # affine_unit's pipeline: the inputs while the tables are read, operands,
#                                partial products (twice), the products and the bias, their sum, shift, clamp



def dsp_parts(width: int, is_signed: bool) -> list[tuple[int, int, bool]]:
    """``(low bit, width, signed)`` of each part of a ``width``-bit value (``dsp_chunks``)."""
    room = DSP_BITS if is_signed else DSP_BITS - 1  # the top part's bits
    parts, low = [], 0
    while width - low > room:
        parts.append((low, DSP_BITS - 1, False))
        low += DSP_BITS - 1
    return parts + [(low, width - low, is_signed)]


def dsp_chunks(v) -> list[tuple[Value, int]]:
    """``v == sum(part << shift)`` with every part a signed operand of at most ``DSP_BITS`` bits as
    Amaranth extends it (an unsigned part one bit wider): unsigned ``DSP_BITS - 1``-bit slices from
    the bottom, the rest (signed if ``v`` is) on top. A product of two such parts is one multiplier,
    exactly, whatever Yosys' own splitting of wider products would add after it in the same cycle."""
    return [(v[low:low + w].as_signed() if sgn else v[low:low + w], low)
            for low, w, sgn in dsp_parts(len(v), v.shape().signed)]


def dsp_products(a: Shape, b: Shape) -> list[tuple[int, int]]:
    """The operand widths of the ``*`` cells ``affine_unit`` builds for an ``a`` x ``b`` product (one
    per pair of ``dsp_chunks``; a signed product's unsigned operand one bit wider, as Amaranth
    emits it)."""
    a, b = Shape.cast(a), Shape.cast(b)
    out = []
    for _, wa, sa in dsp_parts(a.width, a.signed):
        for _, wb, sb in dsp_parts(b.width, b.signed):
            out.append((wa + (sb and not sa), wb + (sa and not sb)))
    return out


def partial_products(xs: list, consts: list) -> list[tuple[int, str, Value, Value, int]]:
    """``xs[k] * consts[k] == sum(xp * cp << shift)`` over the ``(k, tag, xp, cp, shift)`` with input
    ``k``: every pair of their ``dsp_chunks``, one multiplier each (``tag``: ``"{k}_{i}{j}"``, the
    chunks' indices)."""
    return [(k, f"{k}_{i}{j}", xp, cp, xsh + csh) for k, (x, c) in enumerate(zip(xs, consts))
            for i, (xp, xsh) in enumerate(dsp_chunks(x)) for j, (cp, csh) in enumerate(dsp_chunks(c))]


def affine_unit(m: Module, pipe: Pipe, xs: list, addr, muls: list[np.ndarray], bias: np.ndarray,
                shift: np.ndarray, top: int, bounds: list[int], carry: list = (),
                name: str = "aff") -> tuple[Signal, list]:
    """``clamp((sum_k xs[k] * muls[k][c] + bias[c]) >> shift[c], 0, top)`` of row ``c = addr``: the
    inputs registered ``ROM_STAGES`` times while the row's constants are read (``rom``); the operands registered
    once more where the multipliers can have them beside them; the partial products (``dsp_chunks``
    of each input and constant: one FPGA multiplier each, 25-bit constants, intops.MUL_BITS)
    registered as they leave the multipliers (for the ECP5 target both registers are the
    multiplier's own, ``dsp.RegisteredProduct``), then again in logic beside the adders; each input's
    product (its partial products summed, the bias added to the first) registered; their sum
    registered; the arithmetic shift registered; the clamp registered. ``bounds``: |xs[k]| <=
    bounds[k]. Returns the code (valid after ``AFFINE_STAGES`` stages) and the carried values."""
    muls = [np.asarray(mk, dtype=np.int64) for mk in muls]
    bias, shift = np.asarray(bias, dtype=np.int64), np.asarray(shift, dtype=np.int64)
    mshape = [signed(max(2, signed_width(mk))) for mk in muls]
    bshape = signed(max(2, signed_width(bias)))
    sshape = unsigned(max(1, int(shift.max(initial=0)).bit_length()))
    n = len(xs)
    # the inputs registered while the tables are read, then beside the row's constants
    consts = [pipe.rom(f"{name}_mul{k}", sh, [int(v) for v in mk], addr) for k, (sh, mk) in enumerate(zip(mshape, muls))]
    b0 = pipe.rom(f"{name}_bias", bshape, [int(v) for v in bias], addr)
    s0 = pipe.rom(f"{name}_shift", sshape, [int(v) for v in shift], addr)
    for i in range(1, ROM_STAGES + 1):
        staged = pipe.stage(f"{name}_in_" if i == 1 else f"{name}_in{i}_", *xs, *carry)
        xs, carry = staged[:n], staged[n:]
    width = intops.affine_bits(bounds, muls, bias)
    if pipe.target.dsp_registers:
        # the partial products (``dsp_chunks`` of each input and constant: one multiplier each), their
        # operands in the multipliers' own input registers, the bias and shift beside them, out of the
        # multipliers' output registers (``dsp.RegisteredProduct``): the route into a multiplier and
        # the route out of it are cycles of their own
        chunks = partial_products(xs, consts)
        pregs = registered_products(m, [(xp, cp) for _, _, xp, cp, _ in chunks], en=pipe.en, name=f"{name}_dsp")
        parts, shifts = [(k, p) for (k, *_), p in zip(chunks, pregs)], [sh for *_, sh in chunks]
        b1, s1, *carry = pipe.stage(f"{name}_op_", b0, s0, *carry)
        b2, s2, *carry = pipe.stage(f"{name}_s0_", b1, s1, *carry)
    else:
        # the operands, registered again (the multipliers sit in a few columns of the FPGA; the tables
        # and the inputs' registers may be placed far from them)
        staged = pipe.stage(f"{name}_op_", *xs, *consts, b0, s0, *carry)
        xs, consts, (b1, s1), carry = staged[:n], staged[n:2 * n], staged[2 * n:2 * n + 2], staged[2 * n + 2:]
        # the partial products, each one multiplier, registered as they come out
        parts, shifts = [], []
        for k, tag, xp, cp, sh in partial_products(xs, consts):
            p = Signal(signed(len(xp) + len(cp) + 1), name=f"{name}_p{tag}")
            m.d.comb += p.eq(xp * cp)
            parts.append((k, p))
            shifts.append(sh)
        staged = pipe.stage(f"{name}_s0_", b1, s1, *[p for _, p in parts], *carry)
        b2, s2, pregs, carry = staged[0], staged[1], staged[2:2 + len(parts)], staged[2 + len(parts):]
    # the partial products registered again, beside the adders (the multipliers sit in a few columns
    # of the FPGA: the route out of one is a cycle of its own, not the start of a sum's carry chains)
    staged = pipe.stage(f"{name}_pr_", b2, s2, *pregs, *carry)
    b2, s2, pregs, carry = staged[0], staged[1], staged[2:2 + len(parts)], staged[2 + len(parts):]
    # each input's product (the bias added to the first input's), registered
    prods = []
    for k in range(n):
        pk = Signal(signed(width), name=f"{name}_prod{k}")
        m.d.comb += pk.eq(sum(pr << sh for (kk, _), pr, sh in zip(parts, pregs, shifts) if kk == k)
                          + (b2 if k == 0 else 0))
        prods.append(pk)
    staged = pipe.stage(f"{name}_s1_", s2, *prods, *carry)
    s3, prods, carry = staged[0], staged[1:1 + n], staged[1 + n:]
    y = Signal(signed(width), name=f"{name}_y")
    m.d.comb += y.eq(sum(prods))
    y2, s4, *carry = pipe.stage(f"{name}_s2_", y, s3, *carry)
    shifted = Signal(signed(width), name=f"{name}_shifted")
    m.d.comb += shifted.eq(y2 >> s4)
    y3, *carry = pipe.stage(f"{name}_s3_", shifted, *carry)
    code, *carry = pipe.stage(f"{name}_s4_", clamp(m, y3, top, name), *carry)
    return code, carry


def clamp(m: Module, y, top: int, name: str = "aff") -> Signal:
    """Combinational ``clamp(y, 0, top)`` of a signed value: the code of a uniform output."""
    code = Signal(_code_shape(top), name=f"{name}_code")
    with m.If(y < 0):
        m.d.comb += code.eq(0)
    with m.Elif(y > top):
        m.d.comb += code.eq(Const(top))
    with m.Else():
        m.d.comb += code.eq(y)
    return code


class ThresholdRequant(Checked, wiring.Component):
    """``code = #{j : sign[c] * x >= thresholds[c, j]}`` (APoT outputs): the binary search of
    ``threshold_search`` (``ROM_STAGES`` stages per code bit but the last), then the output register."""

    @staticmethod
    def check(thresholds: np.ndarray, sign: np.ndarray, in_shape: Shape):
        if np.ndim(thresholds) != 2 or np.shape(sign) != (np.shape(thresholds)[0],):
            raise ValueError(f"thresholds must be [channels, levels - 1] and sign [channels], got "
                             f"{np.shape(thresholds)!r} and {np.shape(sign)!r}")

    def __init__(self, thresholds: np.ndarray, sign: np.ndarray, in_shape: Shape):
        thresholds, sign = np.asarray(thresholds, dtype=np.int64), np.asarray(sign, dtype=np.int64)
        self._th, self._sign, self._in = thresholds, sign, Shape.cast(in_shape)
        self._top = thresholds.shape[1]
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"x": self._in, "c": _index_shape(thresholds.shape[0])}))),
            "o": Out(stream.Signature(_code_shape(self._top))),
        })

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        m.d.comb += [en.eq(self.o.ready | ~self.o.valid), self.i.ready.eq(en)]
        code, (valid,) = threshold_search(m, Pipe(m, en), self.i.payload.x, self.i.payload.c, self._th,
                                          self._sign, [self.i.valid])
        with m.If(en):
            m.d.sync += [self.o.valid.eq(valid), self.o.payload.eq(code)]
        return m


class AffineRequant(Checked, wiring.Component):
    """``code = clamp((sum_k x_k * mul_k[c] + bias[c]) >> shift[c], 0, top)`` (uniform outputs, and the
    residual add with two inputs): ``affine_unit``, then the output register."""

    @staticmethod
    def check(muls: list[np.ndarray], bias: np.ndarray, shift: np.ndarray, top: int, in_shapes: list[Shape]):
        if len(muls) != len(in_shapes) or any(np.shape(mk) != np.shape(bias) for mk in muls) or \
                np.shape(shift) != np.shape(bias):
            raise ValueError(f"one multiplier array per input, all shaped like bias {np.shape(bias)!r}")

    def __init__(self, muls: list[np.ndarray], bias: np.ndarray, shift: np.ndarray, top: int,
                 in_shapes: list[Shape]):
        muls = [np.asarray(mk, dtype=np.int64) for mk in muls]
        bias, shift = np.asarray(bias, dtype=np.int64), np.asarray(shift, dtype=np.int64)
        self._muls, self._bias, self._shift, self._top = muls, bias, shift, int(top)
        self._ins = [Shape.cast(s) for s in in_shapes]
        fields = {f"x{k}": s for k, s in enumerate(self._ins)}
        fields["c"] = _index_shape(bias.shape[0])
        super().__init__({"i": In(stream.Signature(data.StructLayout(fields))),
                          "o": Out(stream.Signature(_code_shape(self._top)))})

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        m.d.comb += [en.eq(self.o.ready | ~self.o.valid), self.i.ready.eq(en)]
        bounds = [1 << (s.width - 1) if s.signed else (1 << s.width) - 1 for s in self._ins]
        xs = [self.i.payload[f"x{k}"] for k in range(len(self._ins))]
        pipe = Pipe(m, en, target_of(platform))
        code, (valid,) = affine_unit(m, pipe, xs, self.i.payload.c, self._muls, self._bias, self._shift,
                                     self._top, bounds, [self.i.valid])
        with m.If(en):
            m.d.sync += [self.o.valid.eq(valid), self.o.payload.eq(code)]
        return m
