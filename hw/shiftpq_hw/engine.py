"""The units of a conv layer engine (``conv.ConvRequant`` wires them), in dataflow order:

    LineBuffer      input rows in a circular buffer of memory words, loaded while a slot is free
    TapSequencer    one (group, tap, chunk) per cycle: the line buffer's and the weight memory's reads
    ShortcutQueue   the fused residual add's shortcut pixels: a queue and a lane register
    MacPipeline     lanes x simd shift-add PEs, each lane's adder tree and accumulator
    LaneRequant     the requantization units, each taking its lanes in turn
    OutputAssembly  the codes placed into the output queue's pixels; the credits that start a pixel

Each unit is a class: its parameters in the constructor (checked eagerly), ``build(m, ...)`` adding
its logic to the engine's Module ``m`` from named input signals and leaving its outputs as
attributes, a docstring with its timing in cycles, and a NumPy reference model beside it
(tests/test_engine_units.py drives each unit alone against its model). Only the sequencer waits;
every register after it loads every cycle, its data qualified by its stage's valid bit, so no
enable fans out over the engine (the earlier design's engine-wide stall enable was the critical
path of every routed ResNet-20, and its delay depended on where the placer spread the engine).

Which registers have a reset: those of control (valid bits, counters, pointers, counts, credits).
A register of data (the MAC pipeline's stages, the adder trees and accumulators, the queues' entries)
counts only with a valid bit or a count beside it, so it has none (``reset_less``): the reset then
reaches the control registers only, a slice's two flip-flops no longer need the same reset logic to
share it, and Yosys has no reset to merge into LUTs before them.

Why not a ``wiring.Component`` each: an Amaranth submodule is its own module in the generated
RTLIL and Verilog (Amaranth 0.5 does not flatten), which would rename and re-port every engine in
``rtl/shiftpq_top.v``; the generated RTL is a contract (``make gen`` byte-identical across
refactors), so the units add their logic to the one engine module, with the signal names of the
engine they were split from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory

from shiftpq import intops
from shiftpq.levels import LevelSet

from .dsp import GENERIC, Target, registered_products
from .kept import KEEP, kept_register
from .memmap import NO_COLLISION, rom_port
from .queues import CreditQueue, select, wrap_increment
from .pe import (IMAGE, act_code_shape, act_value, adder_tree, dsp_pair_fields, dsp_pair_operands, dsp_pairs_fit,
                 ones_bit, pack_lane_words,
                 pack_words, product_shape, product_terms, registered_tree, variant_field_shape, variant_fields,
                 weight_code_shape, weight_field_shape, weight_fields)
from .requant import AFFINE_STAGES, Pipe, affine_unit, search_stages, threshold_search


#: Flip-flops one copy of a replicated control register drives at most (``replicas``).
REPLICA_LOADS = 64


def spans(count: int, width: int) -> list[range]:
    """``count`` items of ``width`` bits in consecutive runs of at most ``REPLICA_LOADS`` bits (at
    least one item each): the part of a wide register that one copy of its control drives."""
    step = max(1, REPLICA_LOADS // max(1, width))
    return [range(lo, min(lo + step, count)) for lo in range(0, count, step)]


def replicas(m: Module, name: str, value, n: int) -> list[Signal]:
    """``value`` registered (its value one cycle later) in ``n`` copies (``kept.kept_register``),
    one per part of a wide register it controls (``spans``): the load of a register hundreds of
    bits wide, spread over the placement, is then a few copies each placed beside its part, not one
    register driving hundreds of loads through a tree of LUTs (the load of the shortcut's lane
    register was the critical path of two of three routed seeds: 6.4 + 3.9 ns of routing)."""
    return [kept_register(m, f"{name}{k}", value) for k in range(n)]


def lane_copies(m: Module, name: str, values, n: int) -> list[list[Signal]]:
    """``values`` registered (their values one cycle later) in ``n`` copies (``kept.kept_register``),
    one per lane that reads them (``name{copy}_{index}``): data read by every lane (a channel's
    activation, read by that channel's PE in each lane) then comes from a register the placer can
    put beside each lane, not from one register routed to all of them. No reset: data that count
    only with the valid bit staged beside them (the module docstring)."""
    return [[kept_register(m, f"{name}{k}_{i}", v, reset_less=True) for i, v in enumerate(values)]
            for k in range(n)]


def counter(n: int) -> Signal:
    """A counter over range(n), at least one bit wide (zero-width signals upset Verilog linters)."""
    return Signal(range(max(n, 2)))


def last_flag(n: int, name: str) -> Signal:
    """A counter over range(n)'s ``== n - 1``, as a register (reset: the counter at 0)."""
    return Signal(init=int(n == 1), name=name)


def advance(cnt: Signal, last: Signal, n: int) -> list:
    """The statements that step ``cnt`` over range(n) (0 after n - 1) and keep ``last`` its flag."""
    if n == 1:
        return []  # always 0, always last
    return [cnt.eq(Mux(last, 0, cnt + 1)), last.eq(Mux(last, 0, cnt == n - 2))]


def _power_of_two(name: str, n: int, least: int = 2):
    if n < least or n & (n - 1):
        raise ValueError(f"{name} must be a power of two >= {least}, got {n!r}")


# -- the line buffer ------------------------------------------------------------------------------
class LineBuffer:
    """Input rows in a circular buffer of ``slots`` rows (a power of two), one memory word per pixel
    (all its channels) at address ``Cat(x, slot)`` (``address``): a row goes into the slot after the
    newest held row while one is free, so loading overlaps computing and runs into the next image
    without a gap.

    In: the pixel stream ``i`` (raster order); ``release(m, done, n)``: the ``n`` oldest rows are
    freed when ``done``. Out: ``avail`` (complete rows held), ``write`` (the write port), ``read``
    (the memory's read port: the reader drives ``addr`` and ``en``, ``data`` is the addressed word
    one cycle later). Timing: ``i.ready`` while ``avail < slots``; a pixel is written the cycle after
    it is taken (a register: no read ever meets the write, ``memmap.NO_COLLISION``); a row counts in
    ``avail`` from the cycle after its last pixel was taken, and released rows leave it the cycle
    after ``done``."""

    def __init__(self, in_hw: int, slots: int):
        _power_of_two("in_hw", in_hw)
        _power_of_two("slots", slots)
        self.in_hw, self.slots = in_hw, slots
        self.addr_bits = (in_hw - 1).bit_length()
        self.slot_bits = max(1, (slots - 1).bit_length())

    def address(self, row: int, x: int) -> int:
        """Reference: the word of pixel ``x`` of the ``row``-th row taken since reset."""
        return (row % self.slots) << self.addr_bits | x

    def build(self, m: Module, i) -> "LineBuffer":
        hw, nslots, ab, sb = self.in_hw, self.slots, self.addr_bits, self.slot_bits
        # a read never meets the write (NO_COLLISION): the write is registered, so a pixel lands the
        # cycle after it is taken; a row is read from the cycle after its last pixel was taken (read
        # at the edge after that: its last pixel written by then), and a freed slot's last read comes
        # at the edge its first new pixel can be taken, a cycle before that pixel is written
        m.submodules.rows = rows = Memory(shape=i.payload.shape(), depth=nslots * hw, init=[], attrs=NO_COLLISION)
        fw, fr = rows.write_port(), rows.read_port()
        avail = Signal(range(nslots + 1))  # complete rows held
        lslot = Signal(sb)
        lx = counter(hw)
        take, row_loaded = Signal(), Signal()
        can_load = avail < nslots
        wdata = Signal(i.payload.shape(), name="lb_wdata", reset_less=True)  # data: no reset
        waddr, wen = Signal(len(fw.addr), name="lb_waddr"), Signal(name="lb_wen")
        m.d.comb += [i.ready.eq(can_load), take.eq(i.valid & can_load)]
        m.d.sync += [wdata.eq(i.payload), waddr.eq(Cat(lx[:ab], lslot)), wen.eq(take)]
        m.d.comb += [fw.addr.eq(waddr), fw.data.eq(wdata), fw.en.eq(wen), row_loaded.eq(take & (lx == hw - 1))]
        with m.If(take):
            m.d.sync += lx.eq(lx + 1)
            with m.If(lx == hw - 1):
                m.d.sync += [lx.eq(0), lslot.eq(lslot + 1)]
        self.read, self.write, self.avail, self.row_loaded = fr, fw, avail, row_loaded
        return self

    def release(self, m: Module, done, n):
        # the four next values from registers alone (``n`` is a register), then the late ``done`` (the
        # sequencer's issue logic) and ``row_loaded`` (the upstream ``valid``) pick one: no carry chain
        # after either (the sum after them was a critical path of the placement-free model)
        nxt = [Signal.like(self.avail, name=f"avail_{k}") for k in ("kept", "loaded", "dropped", "both")]
        m.d.comb += [nxt[0].eq(self.avail), nxt[1].eq(self.avail + 1),
                     nxt[2].eq(self.avail - n), nxt[3].eq(self.avail + 1 - n)]
        m.d.sync += self.avail.eq(Mux(done, Mux(self.row_loaded, nxt[3], nxt[2]), Mux(self.row_loaded, nxt[1], nxt[0])))


# -- the tap and chunk sequencer ------------------------------------------------------------------
@dataclass(frozen=True)
class Issue:
    """One cycle of the MAC array, as the sequencer issues it (the reference model's record)."""
    pixel: int | None  # the line buffer word read (None: padding, the activations are zero)
    weight: int  # the weight memory word read
    chunk: int
    group: int
    first: bool  # the first tap and chunk of the group (the accumulators restart)
    last: bool  # the last tap and chunk of the group (the lanes' sums are complete)
    done: bool  # the last of the output pixel


class TapSequencer:
    """Stage 0 of the MAC pipeline: for every output pixel (raster order), every group of lanes,
    every kernel tap and every chunk of simd input channels, one issue per cycle: the tap's input
    pixel is read from the line buffer (``Cat(x, slot)``; outside the map: padding, no read needed)
    and the (group, tap, chunk)'s weight word from the weight memory. An output row starts once the
    input rows it reads are held (``avail >= need``); at its end the ``free`` rows the next output
    row no longer reads are released (``row_done``). ``rows``: per output row (rows needed, rows
    freed), ``ConvRequant.rows()``.

    This is the only place the engine waits: once issued, a (group, tap, chunk) runs through the
    pipeline to the output without stopping (every later register loads every cycle, its data
    qualified by a valid bit). An output pixel's first issue waits for a credit (``credit``: a place
    in the output queue, ``OutputAssembly``) and, with a fused residual add, for a shortcut pixel no
    started pixel has claimed; a pixel once started issues every cycle its rows are held.

    In: ``avail`` (the line buffer's rows held), the two memory read ports (addressed here, always
    enabled: their data are qualified by ``v1``), ``credit``, and optionally a ``ShortcutQueue``,
    whose ``start`` this drives. Out: ``issue`` (an issue this cycle), ``started`` (the issue is an
    output pixel's first), ``row_done``/``free`` (for ``LineBuffer.release``) and stage 1
    (``stage1``): the issue's control registered beside the memories' read data, ``READ_LATENCY``
    cycles after the issue (the read addresses are registered, then read): ``v1`` valid, ``pad1``,
    ``first1``, ``last1``, ``g1`` group, ``ch1`` chunk, ``done1``."""

    READ_LATENCY = 2

    def __init__(self, kernel: int, stride: int, padding: int, in_hw: int, groups: int, chunks: int,
                 slots: int, rows: list[tuple[int, int]]):
        _power_of_two("in_hw", in_hw)
        _power_of_two("slots", slots)
        out_hw = (in_hw + 2 * padding - kernel) // stride + 1
        if min(kernel, stride, groups, chunks) < 1 or padding < 0 or out_hw < 1 or len(rows) != out_hw:
            raise ValueError(f"TapSequencer needs kernel, stride, groups, chunks >= 1, padding >= 0 and one "
                             f"(need, free) per output row, got {kernel!r}, {stride!r}, {groups!r}, {chunks!r}, "
                             f"{padding!r}, {len(rows)!r} rows for out_hw {out_hw!r}")
        self.k, self.s, self.p, self.in_hw, self.out_hw = kernel, stride, padding, in_hw, out_hw
        self.groups, self.chunks, self.slots, self.rows = groups, chunks, slots, list(rows)

    def reference(self, images: int = 1) -> list[Issue]:
        """The issues of ``images`` images in order, the input rows loaded in raster order from reset."""
        k, s, p, hw, ab = self.k, self.s, self.p, self.in_hw, (self.in_hw - 1).bit_length()
        out = []
        for n in range(images):
            for oy in range(self.out_hw):
                for ox in range(self.out_hw):
                    for g in range(self.groups):
                        for t in range(k * k):
                            for ch in range(self.chunks):
                                iy, ix = oy * s - p + t // k, ox * s - p + t % k
                                inside = 0 <= iy < hw and 0 <= ix < hw
                                pixel = (n * hw + iy) % self.slots << ab | ix if inside else None
                                first, last = t == 0 and ch == 0, t == k * k - 1 and ch == self.chunks - 1
                                out.append(Issue(pixel, (g * k * k + t) * self.chunks + ch, ch, g, first, last,
                                                 last and g == self.groups - 1))
        return out

    def build(self, m: Module, avail, pixels, weights, credit,
              shortcut: "ShortcutQueue | None" = None) -> "TapSequencer":
        k, hw, ohw, groups, chunks, nslots = self.k, self.in_hw, self.out_hw, self.groups, self.chunks, self.slots
        taps = k * k
        ab, sb = (hw - 1).bit_length(), max(1, (nslots - 1).bit_length())
        oy, ox = counter(ohw), counter(ohw)
        oy_last, ox_last = last_flag(ohw, "oy_last"), last_flag(ohw, "ox_last")
        by, bx = Signal(signed(ab + 2), init=-self.p), Signal(signed(ab + 2), init=-self.p)  # oy*s - p, ox*s - p
        lo = Signal(unsigned(ab + 1))  # the oldest held row, max(0, by)
        cslot = Signal(sb)  # its slot
        g, ky, kx, ch = counter(groups), counter(k), counter(k), counter(chunks)
        # each counter's last value, a register of its own (``last_flag``): the issue's conditions are
        # ANDs of registers, not compares (a row's end enabled the row registers through five levels)
        g_last, ky_last, kx_last, ch_last = (last_flag(n, name) for n, name in
                                             ((groups, "g_last"), (k, "ky_last"), (k, "kx_last"), (chunks, "ch_last")))
        waddr = counter(groups * taps * chunks)
        # the current output row's (rows needed, rows freed), registered: loaded with the next row's
        # pair when a row ends (a combinational table of a register that rarely changes stays X in
        # Icarus 11, which does not evaluate `always @*` at time zero)
        plan = self.rows
        need = Signal(range(nslots + 1), init=plan[0][0])
        free = Signal(range(nslots + 1), init=plan[0][1])
        iy, ix = Signal(signed(ab + 2)), Signal(signed(ab + 2))
        m.d.comb += [iy.eq(by + ky), ix.eq(bx + kx)]
        issue, started = Signal(), Signal()
        # an output pixel's first issue (g, ky, kx, ch all zero), a register: the issue after a pixel's last
        start = Signal(init=1, name="at_start")
        may_start = credit
        if shortcut is not None:
            # an output pixel starts only with a shortcut pixel in the queue that no started pixel has
            # claimed
            m.d.comb += shortcut.build(m).start.eq(start)
            may_start = credit & shortcut.unclaimed
        m.d.comb += [issue.eq((avail >= need) & (~start | may_start)), started.eq(issue & start)]
        if shortcut is not None:
            shortcut.claim(m, started)
        pad = (iy < 0) | (iy >= hw) | (ix < 0) | (ix >= hw)
        slot = Signal(sb)
        m.d.comb += slot.eq(cslot + (iy - lo))
        # the read addresses registered: the line buffer's address is two adds away from the counters
        # and fans out to every cell of a LUT-RAM line buffer (the engine's critical path otherwise)
        raddr, waddr_q = Signal(ab + sb, name="raddr"), Signal.like(waddr, name="waddr_q")
        m.d.sync += [raddr.eq(Cat(ix[:ab], slot)), waddr_q.eq(waddr)]
        m.d.comb += [pixels.en.eq(1), pixels.addr.eq(raddr), weights.en.eq(1), weights.addr.eq(waddr_q)]
        last_tc = ky_last & kx_last & ch_last
        last_group = g_last
        row_done = Signal()
        # released at once (``avail`` must fall at the edge ``lo`` and ``need`` move on, or the next
        # row's first issue could read a row not yet loaded); the row's last read, whose address is
        # registered, happens at the edge a pixel for a freed slot can first be taken, which the
        # line buffer writes an edge later (``LineBuffer``: the read never meets the write)
        m.d.comb += row_done.eq(issue & last_tc & last_group & ox_last)
        with m.If(issue):
            m.d.sync += [waddr.eq(waddr + 1), start.eq(last_tc & last_group)]
            m.d.sync += advance(ch, ch_last, chunks)
            with m.If(ch_last):
                m.d.sync += advance(kx, kx_last, k)
                with m.If(kx_last):
                    m.d.sync += advance(ky, ky_last, k)
                    with m.If(ky_last):
                        m.d.sync += advance(g, g_last, groups)
                        with m.If(last_group):
                            m.d.sync += [waddr.eq(0), bx.eq(bx + self.s), *advance(ox, ox_last, ohw)]
                            with m.If(ox_last):
                                nby = by + self.s
                                m.d.sync += [bx.eq(-self.p), by.eq(nby), *advance(oy, oy_last, ohw),
                                             lo.eq(Mux(nby < 0, 0, nby)), cslot.eq(cslot + free)]
                                with m.Switch(oy):
                                    for y in range(ohw):
                                        with (m.Case(y) if y < ohw - 1 else m.Default()):
                                            nd, fr_ = plan[(y + 1) % ohw]
                                            m.d.sync += [need.eq(nd), free.eq(fr_)]
                                with m.If(oy_last):
                                    m.d.sync += [by.eq(-self.p), lo.eq(0)]
        self.issue, self.started, self.row_done, self.free = issue, started, row_done, free
        self._pad, self._last_tc, self._last_group = pad, last_tc, last_group
        self._g, self._ky, self._kx, self._ch = g, ky, kx, ch
        return self

    def stage1(self, m: Module) -> "TapSequencer":
        """Stage 1: the issue's control, registered beside the read addresses and then beside the
        memories' read data (``READ_LATENCY`` cycles after the issue)."""
        groups, chunks, issue, pad = self.groups, self.chunks, self.issue, self._pad
        last_tc, last_group, g, ky, kx, ch = self._last_tc, self._last_group, self._g, self._ky, self._kx, self._ch
        ctl = [issue, pad, (ky == 0) & (kx == 0) & (ch == 0), last_tc, g, ch, last_tc & last_group]
        ctl = Pipe(m, Const(1)).stage("s0_ctl", *ctl)
        v1, pad1, first1, last1, done1 = Signal(), Signal(), Signal(), Signal(), Signal()
        g1 = counter(groups)
        ch1 = counter(chunks)
        m.d.sync += [r.eq(v) for r, v in zip([v1, pad1, first1, last1, g1, ch1, done1], ctl)]
        self.v1, self.pad1, self.first1, self.last1, self.g1, self.ch1, self.done1 = \
            v1, pad1, first1, last1, g1, ch1, done1
        return self


# -- the shortcut of a fused residual add ---------------------------------------------------------
class ShortcutQueue:
    """The shortcut stream of a fused residual add: its pixels wait in a queue of ``depth`` and are
    taken (``pop``), one per output pixel, when the pixel's first group reaches the requantization
    units; an output pixel starts only with a shortcut pixel in the queue that no started pixel has
    claimed (``start``, ``unclaimed``, ``claim``: the sequencer's). Taken, the pixel's values go into a
    register in lane order (``lane_order``: position ``q`` holds output channel ``q``'s shortcut
    value, zero for a zero channel of the option-A shortcut or past the last filter), which moves on
    by one group (``lanes`` values) at each next group: a requantization unit picks its lane's value
    by its turn alone (a pick by channel is a mux as wide as the layer: the engine's critical path).

    ``build(m)`` (called by the sequencer): ``r.ready`` while fewer than ``depth`` are held; a pixel
    is held from the cycle after it is taken. ``depth_for``: the fewest entries that never make a
    pixel wait for its shortcut pixel while the source keeps the queue full. ``latch(m, load,
    group)`` (called by the scheduler with its condition that a group's sums are complete, a cycle
    early): the lane register ``lanes_reg`` is loaded with the oldest held pixel (``group == 0``,
    which ``pop``s it) or moved on, at the edge that ends the sums' cycle."""

    def __init__(self, r, index: list[int], lanes: int, groups: int, depth: int = 2):
        if lanes < 1 or groups < 1 or len(index) > lanes * groups or depth < 2:
            raise ValueError(f"ShortcutQueue needs lanes, groups >= 1, at most lanes * groups shortcut "
                             f"indices and a depth >= 2, got {lanes!r}, {groups!r}, {len(index)!r}, {depth!r}")
        self.r, self.index, self.lanes, self.groups, self.depth = r, list(index), lanes, groups, depth

    @staticmethod
    def depth_for(pop_latency: int, period: int) -> int:
        """Entries so that pixels start every ``period`` cycles: pixel ``n``'s shortcut pixel is
        popped ``pop_latency`` cycles after it started, the next one is taken the cycle after the
        pop frees its entry and is claimable a cycle later, when pixel ``n + depth`` starts, ``depth
        * period`` cycles after pixel ``n``; one cycle more as a margin."""
        if pop_latency < 0 or period < 1:
            raise ValueError(f"depth_for needs pop_latency >= 0 and period >= 1, got {pop_latency!r}, {period!r}")
        return max(2, -(-(pop_latency + 3) // period))

    def lane_order(self) -> list[int]:
        """The shortcut channel of each lane position, group by group (-1: zero)."""
        k_out = len(self.index)
        return [self.index[q] if q < k_out else -1 for q in range(self.groups * self.lanes)]

    def reference(self, pixel: np.ndarray) -> np.ndarray:
        """The lane values of one shortcut pixel, [groups, lanes]."""
        pixel = np.asarray(pixel, dtype=np.int64)
        return np.array([pixel[i] if i >= 0 else 0 for i in self.lane_order()]).reshape(self.groups, self.lanes)

    def build(self, m: Module) -> "ShortcutQueue":
        r = self.r
        depth = self.depth
        # a circular buffer: a pixel is written at ``wptr`` and taken from the read pointer (one per
        # part of the lane register, ``latch``), so a pop moves only the pointers and the count (a
        # queue whose entries move up made the pop select every entry's input: the pop's control
        # fanned out to the whole queue, the network's critical path)
        rpix = [Signal(r.payload.shape(), name=f"rpix{j}", reset_less=True) for j in range(depth)]
        rcount = Signal(range(depth + 1))
        waiting = Signal(range(depth + 1), name="unclaimed_n")  # held pixels no started pixel has claimed
        wptr = counter(depth)
        push, pop, start = Signal(), Signal(), Signal()
        m.d.comb += [r.ready.eq(rcount < depth), push.eq(r.valid & r.ready)]
        with m.If(push):
            m.d.sync += wptr.eq(wrap_increment(wptr, depth))
            for j in range(depth):  # if statements, not a case statement that the Verilog backend
                with m.If(wptr == j):  # would split into incomplete ones per entry
                    m.d.sync += rpix[j].eq(r.payload)
        m.d.sync += rcount.eq(rcount + push - pop)
        self.rpix, self.rcount, self.waiting, self.push, self.pop, self.start = rpix, rcount, waiting, push, pop, start
        self.unclaimed = waiting != 0  # a count of its own, not rcount > claimed: one LUT before the issue
        self.lanes_reg = Signal(data.ArrayLayout(r.payload.shape().elem_shape, self.groups * self.lanes), name="rsr",
                                reset_less=True)
        return self

    def claim(self, m: Module, started):
        """A started output pixel (``started``) claims the next unclaimed shortcut pixel."""
        m.d.sync += self.waiting.eq(self.waiting + self.push - started)

    def latch(self, m: Module, load, group):
        """Load or move the lane register the cycle after ``load`` (the scheduler's condition that a
        group's sums are complete the next cycle, ``valid & last`` a cycle early; ``group``: its
        group): loaded with the oldest held pixel at group 0, which pops it, moved on at each next.
        Each part of the register (``spans``) has its own copies of the load, the select and the
        read pointer (``replicas``; a pointer's copies each count the pops of their load)."""
        rsr, depth = self.lanes_reg, self.depth
        vshape = self.r.payload.shape().elem_shape
        width, order = Shape.cast(vshape).width, self.lane_order()
        parts = spans(len(order), width)
        loads = replicas(m, "rsr_load", load, len(parts))
        firsts = replicas(m, "rsr_first", load & (group == 0), len(parts))
        for k, (part, en, first) in enumerate(zip(parts, loads, firsts)):
            rptr = Signal(range(max(depth, 2)), name=f"rsr_rptr{k}", attrs=KEEP)
            with m.If(first):
                m.d.sync += rptr.eq(wrap_increment(rptr, depth))
            for q in part:  # position q: the oldest pixel's channel order[q], or the value lanes on
                if order[q] >= 0:
                    loaded = Signal(vshape, name=f"rsr_in{q}")
                    select(m, loaded, [pixel[order[q]] for pixel in self.rpix], rptr)
                else:
                    loaded = Const(0, vshape)
                moved = rsr[q + self.lanes] if q + self.lanes < len(order) else Const(0, vshape)
                with m.If(en):
                    m.d.sync += rsr[q].eq(Mux(first, loaded, moved))
        m.d.comb += self.pop.eq(firsts[0])


# -- the MAC array --------------------------------------------------------------------------------
class MacPipeline:
    """``lanes x simd`` PEs, each lane's adder tree and accumulator, and the weight memory (a word
    per (group, tap, chunk) of ``lanes x simd`` weight fields, ``words``: signed weight codes
    [groups * taps * chunks, lanes * simd]).

    In (stage 1, ``build``): ``pixel`` (the line buffer's word: all input channels of the tap's
    pixel), ``pad``, ``chunk`` (which ``simd`` channels of the word; those past the last channel
    and the whole chunk in the padding are zero), ``valid``, ``first`` (the accumulators restart),
    and ``carry`` (control staged alongside). Every register loads every cycle; what it holds
    counts only with its stage's valid bit. Stages: P, the two memories' words registered as they
    come out (a block RAM's clock-to-output is most of a cycle); A, the activations decoded to
    their integer levels (once for all lanes) and the weight word registered; B, the products
    registered, one PE per (lane, channel), with each lane's count of negative weights (the + 1s of
    the ones'-complement products; uniform weights, the FPGA's multipliers, have their operands
    registered once more before, A', and their products once more after, B'; for the ECP5 target A'
    and B are the multiplier's own registers, ``dsp.RegisteredProduct``); T, each lane's
    balanced adder tree, every level registered (``tree_levels``); then the accumulators. Out,
    ``latency`` cycles after the inputs:
    ``valid2`` and ``sums`` (per lane: the tree's sum plus the accumulator, or the sum alone on
    ``first``; the accumulators take ``sums`` on ``valid2``); ``early_valid`` and ``early_carry``:
    the valid bit and ``carry`` a cycle before ``valid2``, for a unit that registers its own copies
    beside its loads (``replicas``; the scheduler, ``LaneRequant``).

    ``pairs``: the first ``2 * pairs`` channels of each lane's ``simd`` are multiplied in ``pairs``
    18x18 multipliers, two products each (``pe.dsp_pair``; the FPGA's DSPs as PEs), the rest by
    shift-add PEs. A lane's word then holds its ``pairs`` fields (``variant_fields("dsp2")``) below
    its shift-add fields. A pair's multiplier has its own registers (``dsp.RegisteredProduct``: for
    the ECP5 the MULT18X18D's): its operands in stage A', for which the shift-add PEs' operands are
    registered once more too, and its product in stage B, whose middle field and borrow bit are
    leaves of the lane's tree: ``simd - 2 * pairs`` products, ``pairs`` middle fields, ``pairs``
    borrow bits and the count of negative weights, ``simd + 1`` leaves as without pairs. So pairs
    add one cycle of latency (A') and none to the cycles per image."""

    def __init__(self, words: np.ndarray, wlevels: LevelSet, alevels: LevelSet | None, lanes: int, simd: int,
                 c_in: int, acc_shape: Shape, pairs: int = 0):
        words = np.asarray(words, dtype=np.int64)
        if lanes < 1 or not 1 <= simd <= c_in or words.ndim != 2 or words.shape[1] != lanes * simd:
            raise ValueError(f"MacPipeline needs lanes >= 1, simd in [1, c_in = {c_in!r}] and weight words "
                             f"[rows, lanes * simd], got {lanes!r}, {simd!r}, {words.shape!r}")
        problem = self.pairs_problem(pairs, simd, wlevels, alevels)
        if problem:
            raise ValueError(f"MacPipeline: {problem}")
        self.words, self.wl, self.al, self.lanes, self.simd, self.c_in = words, wlevels, alevels, lanes, simd, c_in
        self.pairs = pairs
        self.chunks = -(-c_in // simd)
        self.acc_shape = Shape.cast(acc_shape)
        if pairs:
            lane = {"pairs": data.ArrayLayout(variant_field_shape("dsp2", wlevels), pairs)}
            if simd > 2 * pairs:
                lane["pes"] = data.ArrayLayout(weight_field_shape(wlevels), simd - 2 * pairs)
            self.word_shape = data.ArrayLayout(data.StructLayout(lane), lanes)
        else:
            self.word_shape = data.ArrayLayout(data.ArrayLayout(weight_field_shape(wlevels), simd), lanes)
        self.tree_levels = simd.bit_length()  # ceil(log2(simd + 1)): simd products and the count of + 1s
        self.latency = self.latency_of(simd, wlevels, pairs)

    @staticmethod
    def pairs_problem(pairs, simd: int, wlevels: LevelSet, alevels: LevelSet | None) -> str | None:
        """What is wrong with ``pairs`` multiplier pairs per lane of ``simd`` PEs (None: nothing)."""
        if isinstance(pairs, bool) or not isinstance(pairs, int) or not 0 <= 2 * pairs <= simd:
            return f"pairs must be an integer in [0, simd // 2 = {simd // 2}], got {pairs!r}"
        if pairs and not dsp_pairs_fit(wlevels, alevels):
            return ("multiplier pairs need APoT weights and decoded activations whose two products fit one "
                    "18x18 multiplier (pe.dsp_pair_layout)")
        return None

    @staticmethod
    def latency_of(simd: int, wlevels: LevelSet, pairs: int = 0) -> int:
        """Cycles from the inputs to ``valid2``/``sums``: stages P, A, B and the tree's levels; for
        uniform weights (the FPGA's multipliers) A' and B'; with multiplier pairs A'."""
        return 3 + simd.bit_length() + (2 if wlevels.kind != "apot" else 1 if pairs else 0)

    def reference(self, weight_rows: list[int], pixels: np.ndarray, chunks: list[int], pads: list[bool],
                  firsts: list[bool]) -> np.ndarray:
        """The lane sums after each issue (``sums``), [issues, lanes], from the weight words read,
        the pixels' activation codes [issues, c_in], the chunks, the padding flags and the restarts."""
        wv = intops.decode_weights(self.words, self.wl.ints).reshape(len(self.words), self.lanes, self.simd)
        acc, out = np.zeros(self.lanes, dtype=np.int64), []
        for row, px, ch, pad, first in zip(weight_rows, pixels, chunks, pads, firsts):
            codes = np.zeros(self.chunks * self.simd, dtype=np.int64)
            codes[:self.c_in] = px
            a = codes[ch * self.simd:(ch + 1) * self.simd]
            a = a if self.al is IMAGE else np.asarray(self.al.ints, dtype=np.int64)[a]  # the stem: pixel - 128
            s = wv[row] @ (np.zeros_like(a) if pad else a)
            acc = s if first else acc + s
            out.append(acc)
        return np.array(out)

    def weight_init(self) -> list[int]:
        """The weight memory's words, packed (``word_shape``)."""
        if not self.pairs:
            return pack_words(weight_fields(self.wl, self.words), weight_code_shape(self.wl).width)
        w, d = self.words.reshape(len(self.words), self.lanes, self.simd), 2 * self.pairs
        pair_bits = variant_field_shape("dsp2", self.wl).size
        return pack_lane_words([(variant_fields("dsp2", self.wl, w[..., :d]), pair_bits),
                                (weight_fields(self.wl, w[..., d:]), weight_code_shape(self.wl).width)])

    def _pe_field(self, word, p: int, j: int):
        """Lane ``p``'s shift-add weight field of channel ``j`` (``j >= 2 * pairs``) in a word view."""
        return word[p]["pes"][j - 2 * self.pairs] if self.pairs else word[p][j]

    def weight_memory(self, m: Module):
        """The weight memory (submodule ``wmem``, or parts of it where Yosys would build it of LUTs:
        ``memmap.rom_port``); returns its read port (``addr``, ``en``; ``data``, the word one cycle
        after its address: ``wmem__data``)."""
        return rom_port(m, "wmem", unsigned(self.word_shape.size), self.weight_init(), max(len(self.words), 2))

    def build(self, m: Module, pixel, weights, pad, chunk, valid, first, carry: list,
              target: Target = GENERIC) -> "MacPipeline":
        simd, chunks, c_in, lanes = self.simd, self.chunks, self.c_in, self.lanes
        stage = Pipe(m, Const(1)).stage

        def data_stage(name, *values):  # the data registers: no reset (the module docstring)
            return stage(name, *values, reset_less=True)
        # stage P: the memories' words and the control, registered
        pixel, weights_p = data_stage("sp_px", pixel, weights)
        valid, first, *carry = stage("sp_ctl", valid, first, *carry)
        # the chunk's input channels (zero in the padding), each selected under its own stage-P copy of
        # the padding flag and the chunk (``replicas``: one register driving every channel's select
        # was a routed critical path, 6.15 + 3.45 ns of routing)
        acts = [Signal(act_code_shape(self.al), name=f"a{j}") for j in range(simd)]
        sels = replicas(m, "sp_sel", Cat(pad, chunk), simd)
        for j, (a, sel) in enumerate(zip(acts, sels)):
            with m.If(~sel[0]):
                with m.Switch(sel[1:]):
                    for cj in range(chunks):
                        with (m.Case(cj) if cj < chunks - 1 else m.Default()):  # channels past the last: zero
                            m.d.comb += a.eq(pixel[cj * simd + j] if cj * simd + j < c_in else 0)
        ctl = [valid, first, *carry]
        # stage A: the activations (decoded to their integer levels, once for all lanes) and the weight
        # codes registered (the memories' outputs go no further)
        avals = [act_value(m, a, self.al, name=f"act{j}") for j, a in enumerate(acts)]
        *acts_a, wflat_a = data_stage("sa_act", *avals, weights_p)
        wdata_a = self.word_shape(wflat_a)
        ctl = stage("sa_ctl", *ctl)
        # the + 1s of the ones'-complement products (``product_terms``' ``c``) are the word's negative
        # weights, whatever the activations: counted from the word as it comes out of stage P, in fours
        # in stage A, the fours summed in stage B (all in one stage: five levels of LUTs, one of the
        # engine's deepest paths)
        wdata_p = self.word_shape(weights_p)
        d = 2 * self.pairs  # channels [0, d) on multiplier pairs, [d, simd) on shift-add PEs
        fours = [[adder_tree([ones_bit(self._pe_field(wdata_p, p, j), self.wl) for j in range(q, min(q + 4, simd))])
                  for q in range(d, simd, 4)] or [Const(0, 1)] for p in range(lanes)]
        fours_a = data_stage("sa_negs", *[f for lane in fours for f in lane])
        nq = len(fours[0])
        dsp = self.wl.kind != "apot" and target.dsp_registers
        # a multiplier per pair of a lane's channels (``pe.dsp_pair``), with its own registers: its
        # operands (stage A') and its product (stage B; ``dsp.RegisteredProduct``, the MULT18X18D's own
        # for the ECP5), so the route into a DSP and the route out of it are separate cycles
        pair_products = registered_products(m, [dsp_pair_operands(m, wdata_a[p]["pairs"][f], acts_a[2 * f],
                                                                  acts_a[2 * f + 1], self.wl, self.al, f"dsp{p}_{f}")
                                                for p in range(lanes) for f in range(self.pairs)], name="pair")
        op_stage = self.wl.kind != "apot" or self.pairs > 0  # stage A': uniform weights, or pairs
        if dsp:
            # uniform weights (the stem) on the ECP5: a multiplier per (lane, input channel), its operands
            # in its own input registers (stage A') and its product in its output register (stage B;
            # ``dsp.RegisteredProduct``)
            prods = registered_products(m, [(self._pe_field(wdata_a, p, j), acts_a[j]) for p in range(lanes)
                                            for j in range(d, simd)], product_shape(self.wl, self.al), name="pe_dsp")
        elif op_stage:
            # a multiplier's operands registered once more, where the placer can put them beside it
            # (the FPGA's multipliers sit in a few columns, far from the weight memory and the
            # activations' decode): stage A'; beside pairs, the shift-add PEs' operands, in step with
            # the pairs' multipliers. The activations in a copy per lane (``lane_copies``): one register
            # driving a channel's PE in every lane was a routed critical path (6.46 ns of routing to one
            # lane's term select, PAR 29 with pairs); a copy is read by its own lane's PEs only
            lane_acts = lane_copies(m, "sa_op", acts_a[d:], lanes)
            wflat_a, = data_stage("sa_opw", wflat_a)
            wdata_a = self.word_shape(wflat_a)
        if op_stage:
            fours_a = data_stage("sa_op_negs", *fours_a)
            ctl = stage("sa_op_ctl", *ctl)
        if not dsp:
            # stage B: the products, registered; one PE per (lane, input channel of the chunk)
            terms = [product_terms(m, self._pe_field(wdata_a, p, j), lane_acts[p][j - d] if op_stage else acts_a[j],
                                   self.wl, self.al, name=f"pe{p}_{j}")
                     for p in range(lanes) for j in range(d, simd)]
            prods = data_stage("sb_prod", *[t for t, _ in terms])
        # a pair's middle field and borrow bit: bits of its product's register (stage B)
        fields = [dsp_pair_fields(m, pp, self.wl, self.al, f"dsp{i}") for i, pp in enumerate(pair_products)]
        mids, borrows = [mid for mid, _ in fields], [c for _, c in fields]
        ones = data_stage("sb_ones", *[adder_tree(fours_a[p * nq:(p + 1) * nq]) for p in range(lanes)])
        ctl = stage("sb_ctl", *ctl)
        if self.wl.kind != "apot":
            # and its product registered twice, once beside it and once beside the adder tree: B'
            prods, ones, ctl = data_stage("sb_prod2", *prods), data_stage("sb_ones2", *ones), stage("sb_ctl2", *ctl)
        # stage T: each lane's adder tree (balanced, every level registered) with its count of
        # negative weights (the + 1s, counted beside the products); then accumulate over the taps and
        # chunks
        sums2, n_pe, n_pair = [], simd - d, self.pairs
        for p, o in enumerate(ones):
            leaves = [*prods[p * n_pe:(p + 1) * n_pe], *mids[p * n_pair:(p + 1) * n_pair],
                      *borrows[p * n_pair:(p + 1) * n_pair], o]
            tree, levels = registered_tree(m, leaves, f"tree{p}", reset_less=True)
            assert levels == self.tree_levels
            sums2.append(tree)
        assert self.tree_levels >= 1  # two leaves at least: a product and the count of negative weights
        for level in range(self.tree_levels):
            early, ctl = ctl, stage(f"st{level}_ctl", *ctl)
        v2, first2, *_ = ctl
        accs = [Signal(self.acc_shape, name=f"acc{p}", reset_less=True) for p in range(lanes)]  # restart on first
        nexts = [Signal(self.acc_shape, name=f"acc_next{p}") for p in range(lanes)]
        for acc, nxt, s in zip(accs, nexts, sums2):
            m.d.comb += nxt.eq(s + acc)
            with m.If(first2):
                m.d.comb += nxt.eq(s)
        with m.If(v2):
            m.d.sync += [acc.eq(nxt) for acc, nxt in zip(accs, nexts)]
        self.valid2, self.sums = v2, nexts
        self.early_valid, _, *self.early_carry = early
        return self


# -- the lane requantization scheduler ------------------------------------------------------------
class LaneRequant:
    """The requantization units (the layer's BatchNorm, ReLU and next quantizer: requant.py's binary
    threshold search or fixed-point multiply-add) shared by the lanes: a group's lanes finish
    together once every ``taps x chunks`` cycles, so each of ``units`` units takes ``per`` lanes in
    turn within that time instead of a requantizer per lane. Unit ``u``'s constant tables hold, at
    row ``Cat(turn, group)``, the constants of output channel ``channels(u)[row]``.

    The constants, per output channel: ``thresholds`` and ``sign`` (the threshold search) or ``mul``,
    ``bias`` and ``shift`` (the multiply-add); ``shortcut``: ``(mul, levels)`` of a fused residual add (its
    values come from ``ShortcutQueue``'s lane register). In (``build``): ``sums`` (the lanes'
    results, taken the cycle after ``valid & last``) and, a cycle before the sums (``MacPipeline``'s
    ``early_valid``, ``early_carry``), ``valid``, ``last``, ``group``, ``done`` (the pixel's last
    group). The
    lanes' results are held (``fin``) while ``turn`` counts through a unit's lanes, one per cycle
    (``busy``); a group's last turn ends at most ``taps x chunks`` cycles after it was taken, before
    the next group's sums. Out (``codes``, one per unit; ``valid``, ``turn``, ``group``,
    ``done``: the pixel's last lane), ``latency`` cycles later. Every register loads every cycle
    (the units' pipelines and table reads too); ``valid`` qualifies the codes."""

    def __init__(self, lanes: int, groups: int, slots_per_result: int, k_out: int, acc_shape: Shape,
                 partial_bound: int, olevels: LevelSet, *, thresholds=None, sign=None, mul=None, bias=None,
                 shift=None, shortcut: tuple | None = None):
        given = {f: np.asarray(v, dtype=np.int64) for f, v in (("thresholds", thresholds), ("sign", sign),
                 ("mul", mul), ("bias", bias), ("shift", shift)) if v is not None}
        self.threshold = set(given) == {"thresholds", "sign"}
        affine = set(given) == {"mul", "bias", "shift"}
        if not (self.threshold and shortcut is None or affine and (shortcut is None or len(shortcut) == 2)) \
                or any(len(v) != k_out for v in given.values()):
            raise ValueError(f"LaneRequant needs thresholds and sign, or mul, bias and shift (and an optional "
                             f"shortcut (mul, levels)), each per output channel ({k_out!r}), got "
                             f"{ {f: v.shape for f, v in given.items()}!r}")
        self.lanes, self.groups, self.k_out, self.consts = lanes, groups, k_out, given
        self.units = -(-lanes // slots_per_result)
        self.per = -(-lanes // self.units)
        self.lane_bits = max(1, (self.per - 1).bit_length())
        self.acc_shape, self.partial_bound = Shape.cast(acc_shape), partial_bound
        self.ol, self.shortcut = olevels, shortcut

    @property
    def latency(self) -> int:
        """Registers from the lanes' sums to the first lane's codes (the codes are valid ``latency``
        cycles after the sums): the held sums, then ``threshold_search``'s
        ``search_stages`` or ``affine_unit``'s ``AFFINE_STAGES``."""
        if self.threshold:
            return 1 + search_stages(self.consts["thresholds"].shape[1])
        return 1 + AFFINE_STAGES

    def channels(self, unit: int) -> list[int | None]:
        """The output channel of each row of a unit's constant tables, row ``g << lane_bits | j`` for
        group g and the unit's j-th lane (None: no such channel; its row is padding)."""
        per, lanes, k_out = self.per, self.lanes, self.k_out
        return [g * lanes + unit * per + j if j < per and unit * per + j < lanes
                and g * lanes + unit * per + j < k_out else None
                for g in range(self.groups) for j in range(1 << self.lane_bits)]

    def reference(self, sums: np.ndarray, group: int, shortcut: np.ndarray | None = None) -> dict[int, int]:
        """The codes of one group's lane sums [lanes] (and shortcut lane values [lanes]): output
        channel -> code (intops, the golden model's requantization)."""
        out = {}
        for p in range(self.lanes):
            c = group * self.lanes + p
            if c >= self.k_out:
                continue
            x = np.array([[int(sums[p])]])
            q = self.consts
            if self.threshold:
                th, sign = q["thresholds"], q["sign"]
                out[c] = int(intops.requant_threshold(x, th[c:c + 1], sign[c:c + 1])[0, 0])
            else:
                terms = [(x, q["mul"][c:c + 1])]
                if self.shortcut is not None:
                    terms.append((np.array([[int(shortcut[p])]]), np.asarray(self.shortcut[0])[c:c + 1]))
                out[c] = int(intops.requant_affine(terms, q["bias"][c:c + 1], q["shift"][c:c + 1], self.ol.denom)[0, 0])
        return out

    def build(self, m: Module, sums, valid, last, group, done,
              shortcut: ShortcutQueue | None = None, target: Target = GENERIC) -> "LaneRequant":
        lanes, groups, units, per, jb = self.lanes, self.groups, self.units, self.per, self.lane_bits
        # the lanes' results of a group, held while the requantization units take them in turn
        # (the control comes a cycle before the sums: the load of the held sums and of the shortcut's
        # lane register, hundreds of flip-flops, is registered here in copies, one per part, ``replicas``)
        fins = [Signal(self.acc_shape, name=f"fin{p}") for p in range(lanes)]
        parts = spans(lanes, self.acc_shape.width)
        for part, load in zip(parts, replicas(m, "fin_load", valid & last, len(parts))):
            with m.If(load):
                m.d.sync += [fins[p].eq(sums[p]) for p in part]
        if shortcut is not None:
            shortcut.latch(m, valid & last, group)
        take, group, done = Pipe(m, Const(1)).stage("fin_ctl", valid & last, group, done)
        busy, turn, gq, doneq = Signal(), Signal(jb), counter(groups), Signal()
        rsr = shortcut.lanes_reg if shortcut is not None else None
        with m.If(take):
            m.d.sync += [busy.eq(1), turn.eq(0), gq.eq(group), doneq.eq(done)]
        with m.Elif(busy):
            m.d.sync += turn.eq(turn + 1)
            with m.If(turn == per - 1):
                m.d.sync += busy.eq(0)
        # stage 3: each unit takes lane `turn` of its lanes (table row Cat(turn, group)): the threshold
        # search (one comparator per code bit) or the fixed-point multiply-add (the DSPs)
        addr = Cat(turn, gq)
        carry = [busy, turn, gq, doneq & (turn == per - 1)]
        codes = []

        def by_turn(u: int, values: list, shape, name: str) -> Signal:
            """Unit u's lane value at its turn; 0 on a padding turn (complete case statements; the
            turn's code is dropped)."""
            out = Signal(shape, name=name)
            with m.Switch(turn):
                for jj in range(per):
                    if u * per + jj < lanes:
                        with m.Case(jj):
                            m.d.comb += out.eq(values[u * per + jj])
                with m.Default():
                    m.d.comb += out.eq(0)
            return out

        for u in range(units):
            chans = self.channels(u)
            x = by_turn(u, fins, self.acc_shape, f"rq{u}_x")
            q = self.consts
            if self.threshold:
                th, sign = q["thresholds"], q["sign"]
                rows_th = np.stack([th[c] if c is not None else np.zeros_like(th[0]) for c in chans])
                rows_sign = np.array([sign[c] if c is not None else 1 for c in chans])
                code, out = threshold_search(m, Pipe(m, Const(1)), x, addr, rows_th, rows_sign, carry, name=f"rq{u}")
            else:
                pick = lambda a: np.array([int(np.asarray(a)[c]) if c is not None else 0 for c in chans])  # noqa: E731
                xs, muls, bounds = [x], [pick(q["mul"])], [self.partial_bound]
                if rsr is not None:  # the shortcut value of the lane's channel
                    sc_mul, sc_levels = self.shortcut
                    xs.append(by_turn(u, rsr, act_code_shape(sc_levels), f"rq{u}_sc"))
                    muls.append(pick(sc_mul))
                    bounds.append(sc_levels.denom)
                code, out = affine_unit(m, Pipe(m, Const(1), target), xs, addr, muls, pick(q["bias"]), pick(q["shift"]),
                                        self.ol.denom, bounds, carry, name=f"rq{u}")
            codes.append(code)
        self.codes = codes
        self.valid, self.turn, self.group, self.done = out  # the units run in lockstep: any unit's carried control
        return self


# -- the output assembly --------------------------------------------------------------------------
class OutputAssembly:
    """The units' codes placed into the output pixels (``tables[u][row]``: the output channel of unit
    ``u``'s code at row ``Cat(turn, group)``, None: a padding turn places nothing) of a queue of
    ``depth`` pixels, whose oldest complete pixel is the output stream ``o``; and the credits that
    keep the queue from overflowing.

    Nothing after the sequencer ever stops, so every output pixel that starts must find a place:
    the sequencer starts a pixel only with a credit (``credit``: one of ``depth``, taken by
    ``started``, given back when the sink takes a pixel). Pixel ``n`` is assembled in entry ``n mod
    depth`` from its first code on, and that entry is free: pixel ``n - depth`` left before pixel
    ``n`` started. The sink's ``ready`` reaches the credit counter and the read pointer only,
    never the pipeline (``ready`` is a chain through forks and FIFOs in a network). Timing: a pixel
    is ``o.valid`` the cycle after its last code enters the queue, ``LATENCY`` cycles after it is
    given; its credit can be taken again the cycle after the sink takes it. ``depth_for(latency,
    period)``: the fewest entries that never make a pixel wait for a credit while the sink takes
    each pixel at once (``latency`` counts ``LATENCY``)."""

    LATENCY = 1  # the codes registered before they enter the queue

    def __init__(self, tables: list[list[int | None]], lane_bits: int, groups: int, depth: int):
        if any(len(t) != groups << lane_bits for t in tables) or depth < 2:
            raise ValueError(f"OutputAssembly needs one channel per (group, turn) row, {groups << lane_bits} per "
                             f"unit, and a depth >= 2, got {[len(t) for t in tables]!r}, {depth!r}")
        self.tables, self.lane_bits, self.groups, self.depth = tables, lane_bits, groups, depth
        self.credit = Signal(name="credit")  # a pixel may start (for the sequencer)
        self.started = Signal(name="started")  # a pixel starts (from the sequencer)

    @staticmethod
    def depth_for(latency: int, period: int) -> int:
        """Entries so that pixels start every ``period`` cycles: pixel ``n`` is taken ``period +
        latency`` cycles after it started (``period - 1`` to its last issue, ``latency`` from there
        to its last code, one to ``o.valid``), its credit is usable the cycle after, and pixel ``n +
        depth`` starts ``depth * period`` cycles after pixel ``n``; one cycle more as a margin."""
        if latency < 0 or period < 1:
            raise ValueError(f"depth_for needs latency >= 0 and period >= 1, got {latency!r}, {period!r}")
        return max(2, 1 + -(-(latency + 2) // period))

    def reference(self, placed: list[tuple[int, int, list[int]]], channels: int) -> np.ndarray:
        """The output pixel after the codes ``(turn, group, codes per unit)``, in order (unplaced
        channels keep the entry's previous pixel's codes; here zero)."""
        pixel = np.zeros(channels, dtype=np.int64)
        for turn, group, codes in placed:
            row = group << self.lane_bits | turn
            for t, code in zip(self.tables, codes):
                if t[row] is not None:
                    pixel[t[row]] = code
        return pixel

    def build(self, m: Module, o, codes, valid, turn, group, done) -> "OutputAssembly":
        # the codes and their row registered first (``LATENCY``), in a copy per entry: a code fans
        # out to its channel of every entry, a copy to one entry's, placed beside it
        valid_r, done_r = Signal(name="oq_valid"), Signal(name="oq_done")
        m.d.sync += [valid_r.eq(valid), done_r.eq(done)]
        q = CreditQueue(o.payload.shape(), self.depth, "opix").build(m, o, push=valid_r & done_r, take=self.started)
        m.d.comb += self.credit.eq(q.credit)
        # each code goes straight into its channel of the entry being assembled: one (unit, row) per
        # output channel, so a channel's bits load one code under one condition (no mux in front).
        # The condition's registers (a code is given, to this entry, at this row) in a copy per
        # part of the entry (``spans``), each loading its part only: one copy's compare routed to
        # every channel of an entry was a routed critical path (8.43 ns of routing, PAR 29 with
        # pairs, docs/hw-round5-design.md section 23); ``kept``: equal registers are otherwise
        # merged back into one
        tables = self.tables
        rows = [row for row in range(self.groups << self.lane_bits) if any(t[row] is not None for t in tables)]
        layout = o.payload.shape()
        parts = spans(layout.length, Shape.cast(layout.elem_shape).width)
        for e, entry in enumerate(q.entries):
            cs = [kept_register(m, f"oq{e}_code{u}", c, reset_less=True) for u, c in enumerate(codes)]
            for k, part in enumerate(parts):
                at = kept_register(m, f"oq{e}_at{k}", valid & q.at_next(e))  # the entry being assembled
                where = kept_register(m, f"oq{e}_row{k}", Cat(turn, group))
                for row in rows:
                    loads = [entry[t[row]].eq(code) for t, code in zip(tables, cs) if t[row] in part]
                    if loads:
                        with m.If(at & (where == row)):
                            m.d.sync += loads
        return self
