"""One convolution layer engine: a stream of input pixels in, requantized output pixels out.

Dataflow, a line buffer and a folded MAC array:
- load: input pixels (all channels of a pixel per beat, raster order) go into a circular buffer of
  ``slots`` rows (a power of two, at least ``kernel + stride``), one memory word per pixel at address
  ``Cat(x, slot)``; a row is loaded whenever a slot is free, so loading overlaps computing and runs
  into the next image without a gap;
- compute: for every output pixel, every group of ``lanes`` output channels, every kernel tap and
  every chunk of ``simd`` input channels, one cycle: the tap's input pixel (zero outside the map: the
  padding) meets the weight codes of that (group, tap, chunk), ``lanes x simd`` shift-add PEs
  multiply, an adder tree sums the chunk and each lane accumulates (stages: memory read;
  activations and weights registered; products registered; adder tree registered; accumulate).
  After the last tap and chunk the lanes' sums are held, and the engine's requantization units (the
  layer's BatchNorm, ReLU and next quantizer: a binary threshold search or a fixed-point
  multiply-add, requant.py) take the lanes in turn, one unit per ``kernel**2 * chunks`` lanes, before
  the next group's sums arrive; the codes go into the output pixel, which leaves when its last group
  is done. A fused residual add takes one shortcut pixel (second input ``r``) per output pixel, from
  a two-entry queue, as the pixel's first group is requantized. An output row starts once the input
  rows it reads are loaded; at its end the rows the next output row no longer reads are freed.
Every pipeline register advances together (``en``); the engine stalls as a whole only while a
finished pixel waits for the output register, which still holds the one before. ``en`` depends on
the engine's own registers, never on the sink's ready: in a whole network that ready is a chain
through forks and FIFOs, and ``en`` fans out to every pipeline register (that path was the critical
path of ResNet-20 on the ECP5-85k). Cycles per image, in steady state with a source that keeps the
buffer ahead and a sink that takes each pixel before the next one is finished (``groups * chunks *
kernel**2`` cycles later): ``out_hw**2 * groups * chunks * kernel**2`` (``cycles_per_image``): the
MAC array never idles; the pipeline adds latency only.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from shiftpq import intops, ir
from shiftpq.levels import LevelSet

from .checked import Checked
from .pe import (IMAGE, act_code_shape, act_value, adder_tree, pack_words, product_shape, product_terms, weight_code_shape,
                 weight_field_shape, weight_fields)
from .requant import Pipe, affine_unit, threshold_search


def _counter(n: int) -> Signal:
    """A counter over range(n), at least one bit wide (zero-width signals upset Verilog linters)."""
    return Signal(range(max(n, 2)))


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class ConvRequant(Checked, wiring.Component):
    """Conv + requant of one layer, sized by its kept filters and folded: ``lanes`` output channels
    at a time (default: all of them) times ``simd`` input channels at a time (default: all of them)
    of shift-add PEs."""

    def __init__(self, weights: np.ndarray, wlevels: LevelSet, alevels: LevelSet, olevels: LevelSet,
                 stride: int, padding: int, in_hw: int, requant: ir.Requant | ir.Add, partial_bound: int,
                 lanes: int | None = None, shortcut: tuple[LevelSet, int] | None = None, simd: int | None = None):
        """``requant``: the IR op that reads the accumulators (its constants by output channel, in the
        order of ``weights``): a ``Requant``, or an ``Add`` (the fused residual add: ``shortcut`` gives
        the level set and channel count of its second input, the stream ``r``)."""
        weights = np.asarray(weights, dtype=np.int64)
        k_out, c_in, k, _ = weights.shape
        self._res = requant if isinstance(requant, ir.Add) else None
        self._sc_levels = shortcut[0] if shortcut is not None else None
        self._w, self._wl, self._al, self._ol = weights, wlevels, alevels, olevels
        self._k, self._s, self._p, self._in_hw = k, stride, padding, in_hw
        self._out_hw = (in_hw + 2 * padding - k) // stride + 1
        self._lanes = lanes or k_out
        self._groups = -(-k_out // self._lanes)
        self._simd = simd or c_in
        self._chunks = -(-c_in // self._simd)
        self._slots = self.line_buffer_slots(k, stride)
        self._rq = requant
        self._acc_shape = signed(intops.signed_bits(-partial_bound, partial_bound))
        self._partial_bound = partial_bound
        ports = {"i": In(stream.Signature(data.ArrayLayout(act_code_shape(alevels), c_in))),
                 "o": Out(stream.Signature(data.ArrayLayout(act_code_shape(olevels), k_out)))}
        if self._res is not None:  # the shortcut tensor, one pixel per output pixel as it is requantized
            ports["r"] = In(stream.Signature(data.ArrayLayout(act_code_shape(shortcut[0]), shortcut[1])))
        super().__init__(ports)

    @staticmethod
    def check(weights, wlevels, alevels, olevels, stride: int, padding: int, in_hw: int, requant, partial_bound: int,
              lanes: int | None = None, shortcut: tuple[LevelSet, int] | None = None, simd: int | None = None):
        k_out, c_in, k, k2 = np.shape(weights)
        problems = []
        if k != k2:
            problems.append(f"square kernels only, got {np.shape(weights)!r}")
        if in_hw < 2 or in_hw & (in_hw - 1):
            problems.append(f"in_hw must be a power of two >= 2 (the line buffer is addressed by Cat(x, slot)), "
                            f"got {in_hw!r}")
        if lanes is not None and not 1 <= lanes <= k_out:
            problems.append(f"lanes must be in [1, {k_out}], got {lanes!r}")
        if simd is not None and not 1 <= simd <= c_in:
            problems.append(f"simd must be in [1, {c_in}], got {simd!r}")
        residual = requant if isinstance(requant, ir.Add) else None
        if not isinstance(requant, (ir.Requant, ir.Add)):
            problems.append(f"requant must be an ir.Requant or ir.Add op, got {requant!r}")
        elif (residual is not None) != (shortcut is not None):
            problems.append("a shortcut stream goes with an ir.Add requant, and only with one")
        elif residual is not None and (stride != 1 or 2 * padding != k - 1 or len(residual.shortcut_index) != k_out
                                       or list(shortcut[0].ints) != list(range(len(shortcut[0].ints)))):
            problems.append("a residual input needs stride 1, 'same' padding, one shortcut index per output and "
                            "a uniform (8-bit) stream")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_tables(cls, tables: ir.Tables, conv_op: ir.Conv, requant_op: ir.Requant | ir.Add,
                    lanes: int | None = None, simd: int | None = None) -> "ConvRequant":
        """The engine of one conv op and the requant op that reads its accumulators."""
        lv = tables.level_set
        src_levels = tables.tensors[conv_op.src].levels
        weights, shortcut = conv_op.weight, None
        if isinstance(requant_op, ir.Add) and requant_op.conv_src == conv_op.dst:
            # the fused residual add: lanes over the add's output channels, zero filters where the
            # conv has none (the shortcut alone), and the shortcut as a second input
            weights = np.stack([weights[j] if j >= 0 else np.zeros_like(weights[0]) for j in requant_op.conv_index])
            sc = tables.tensors[requant_op.shortcut_src]
            shortcut = (lv(sc.levels), len(sc.channels))
        elif not (isinstance(requant_op, ir.Requant) and requant_op.src == conv_op.dst):
            raise ValueError(f"{requant_op.name!r} does not requantize {conv_op.name!r}")
        return cls(weights, lv(conv_op.weight_levels), lv(src_levels) if src_levels else IMAGE,
                   lv(requant_op.levels), conv_op.stride, conv_op.padding, conv_op.in_hw, requant_op,
                   conv_op.partial_bound, lanes, shortcut, simd)

    # -- the analytic model the simulation must match (the hardware plan, plan.py, sizes with it) --
    @staticmethod
    def line_buffer_slots(kernel: int, stride: int) -> int:
        """Rows of the line buffer: a power of two (the address is ``Cat(x, slot)``), at least
        ``kernel + stride`` (the rows an output row reads and the next output row's new ones)."""
        return _pow2_at_least(kernel + stride)

    @staticmethod
    def cycles(out_hw: int, kernel: int, groups: int, chunks: int) -> int:
        """Cycles per image in steady state: one cycle per output pixel, group, tap and chunk."""
        return out_hw ** 2 * groups * chunks * kernel ** 2

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def simd(self) -> int:
        return self._simd

    @property
    def groups(self) -> int:
        return self._groups

    @property
    def chunks(self) -> int:
        return self._chunks

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def pes(self) -> int:
        return self._lanes * self._simd

    @property
    def cycles_per_image(self) -> int:
        return self.cycles(self._out_hw, self._k, self._groups, self._chunks)

    @property
    def macs_per_image(self) -> int:
        """Useful MACs: the filters the conv has (not the fused add's shortcut-only channels) times
        their weights times the output pixels."""
        filters = sum(j >= 0 for j in self._res.conv_index) if self._res else self._w.shape[0]
        return filters * int(self._w[0].size) * self._out_hw ** 2

    def rows(self) -> list[tuple[int, int]]:
        """Per output row: (input rows it needs loaded, counted from the oldest held row; rows freed
        when it is done). Over an image the freed rows add up to ``in_hw``."""
        hw, k, s, p = self._in_hw, self._k, self._s, self._p
        lo = [max(0, y * s - p) for y in range(self._out_hw)] + [hw]
        out = []
        for y in range(self._out_hw):
            hi = min(hw - 1, y * s - p + k - 1)
            free = lo[y + 1] - lo[y]
            out.append((max(hi - lo[y] + 1, free), free))
        return out

    # -- hardware ----------------------------------------------------------------------------------
    def _lane_weights(self) -> np.ndarray:
        """Weight memory words, one per (group, tap, chunk), each lanes x simd codes (zero past the
        last filter and the last input channel): an array [groups * taps * chunks, lanes * simd]."""
        k_out, c_in, k, _ = self._w.shape
        lanes, simd, groups, chunks = self._lanes, self._simd, self._groups, self._chunks
        w = np.zeros((groups * lanes, chunks * simd, k, k), dtype=np.int64)
        w[:k_out, :c_in] = self._w
        w = w.reshape(groups, lanes, chunks, simd, k * k)  # [g, lane, chunk, j, tap]
        return w.transpose(0, 4, 2, 1, 3).reshape(groups * k * k * chunks, lanes * simd)

    @property
    def requant_units(self) -> int:
        """Requantization units: each serves ``lanes / units`` lanes in turn, within the
        ``taps x chunks`` cycles before the lanes' next results."""
        return -(-self._lanes // (self._k ** 2 * self._chunks))

    def _unit_channels(self, unit: int, lane_bits: int) -> list[int | None]:
        """The output channel of each row of a unit's constant tables, row ``g << lane_bits | j`` for
        group g and the unit's j-th lane (None: no such channel; its row is padding)."""
        per = -(-self._lanes // self.requant_units)
        k_out = self._w.shape[0]
        return [g * self._lanes + unit * per + j if j < per and unit * per + j < self._lanes
                and g * self._lanes + unit * per + j < k_out else None
                for g in range(self._groups) for j in range(1 << lane_bits)]

    def elaborate(self, platform):
        m = Module()
        k_out, c_in, k, _ = self._w.shape
        hw, ohw, lanes, groups, taps = self._in_hw, self._out_hw, self._lanes, self._groups, k * k
        simd, chunks, nslots = self._simd, self._chunks, self._slots
        ab, sb = (hw - 1).bit_length(), max(1, (nslots - 1).bit_length())
        en = Signal()  # the pipeline advances (driven at the end, from the last stage and the output)

        # memories: the input rows, the weight codes, and each lane's requantization constants
        m.submodules.rows = rows = Memory(shape=self.i.payload.shape(), depth=nslots * hw, init=[])
        fw, fr = rows.write_port(), rows.read_port()
        wshape = data.ArrayLayout(data.ArrayLayout(weight_field_shape(self._wl), simd), lanes)
        m.submodules.wmem = wmem = Memory(shape=unsigned(wshape.size), depth=max(groups * taps * chunks, 2),
                                          init=pack_words(weight_fields(self._wl, self._lane_weights()),
                                                          weight_code_shape(self._wl).width))
        wr = wmem.read_port()
        # the loader: a row goes into the slot after the newest held row while one is free
        avail = Signal(range(nslots + 1))  # complete rows held
        lslot = Signal(sb)
        lx = _counter(hw)
        take, row_loaded = Signal(), Signal()
        can_load = avail < nslots
        m.d.comb += [self.i.ready.eq(can_load), take.eq(self.i.valid & can_load)]
        m.d.comb += [fw.addr.eq(Cat(lx[:ab], lslot)), fw.data.eq(self.i.payload), fw.en.eq(take),
                     row_loaded.eq(take & (lx == hw - 1))]
        with m.If(take):
            m.d.sync += lx.eq(lx + 1)
            with m.If(lx == hw - 1):
                m.d.sync += [lx.eq(0), lslot.eq(lslot + 1)]

        # stage 0: issue one (tap, chunk) per cycle once the output row's input rows are loaded
        oy, ox = _counter(ohw), _counter(ohw)
        by, bx = Signal(signed(ab + 2), init=-self._p), Signal(signed(ab + 2), init=-self._p)  # oy*s - p, ox*s - p
        lo = Signal(unsigned(ab + 1))  # the oldest held row, max(0, by)
        cslot = Signal(sb)  # its slot
        g, ky, kx, ch = _counter(groups), _counter(k), _counter(k), _counter(chunks)
        waddr = _counter(groups * taps * chunks)
        # the current output row's (rows needed, rows freed), registered: loaded with the next row's
        # pair when a row ends (a combinational table of a register that rarely changes stays X in
        # Icarus 11, which does not evaluate `always @*` at time zero)
        plan = self.rows()
        need = Signal(range(nslots + 1), init=plan[0][0])
        free = Signal(range(nslots + 1), init=plan[0][1])
        iy, ix = Signal(signed(ab + 2)), Signal(signed(ab + 2))
        m.d.comb += [iy.eq(by + ky), ix.eq(bx + kx)]
        issue = Signal()
        m.d.comb += issue.eq(en & (avail >= need))
        if self._res is not None:
            # the shortcut stream: its pixels wait in a two-entry queue and are taken, one per output
            # pixel, when the pixel's first group reaches the requantization units; an output pixel
            # starts only with a shortcut pixel in the queue that no started pixel has claimed
            rpix = [Signal(self.r.payload.shape(), name=f"rpix{j}") for j in range(2)]
            rcount, claimed = Signal(range(3)), Signal(range(3))
            push, pop, start = Signal(), Signal(), Signal()
            m.d.comb += [self.r.ready.eq(rcount < 2), push.eq(self.r.valid & self.r.ready),
                         start.eq(en & (g == 0) & (ky == 0) & (kx == 0) & (ch == 0)),
                         issue.eq(en & (avail >= need) & (~start | (rcount > claimed)))]
            with m.If(pop):
                m.d.sync += rpix[0].eq(rpix[1])
            with m.If(push):
                with m.If(rcount - pop == 0):
                    m.d.sync += rpix[0].eq(self.r.payload)
                with m.Else():
                    m.d.sync += rpix[1].eq(self.r.payload)
            m.d.sync += [rcount.eq(rcount + push - pop), claimed.eq(claimed + (issue & start) - pop)]
        pad = (iy < 0) | (iy >= hw) | (ix < 0) | (ix >= hw)
        slot = Signal(sb)
        m.d.comb += slot.eq(cslot + (iy - lo))
        m.d.comb += [fr.en.eq(en), fr.addr.eq(Cat(ix[:ab], slot)), wr.en.eq(en), wr.addr.eq(waddr)]
        last_tc = (ky == k - 1) & (kx == k - 1) & (ch == chunks - 1)
        last_group = g == groups - 1
        row_done = Signal()
        m.d.comb += row_done.eq(issue & last_tc & last_group & (ox == ohw - 1))
        with m.If(issue):
            m.d.sync += [waddr.eq(waddr + 1), ch.eq(ch + 1)]
            with m.If(ch == chunks - 1):
                m.d.sync += [ch.eq(0), kx.eq(kx + 1)]
                with m.If(kx == k - 1):
                    m.d.sync += [kx.eq(0), ky.eq(ky + 1)]
                    with m.If(ky == k - 1):
                        m.d.sync += [ky.eq(0), g.eq(g + 1)]
                        with m.If(last_group):
                            m.d.sync += [g.eq(0), waddr.eq(0), ox.eq(ox + 1), bx.eq(bx + self._s)]
                            with m.If(ox == ohw - 1):
                                nby = by + self._s
                                m.d.sync += [ox.eq(0), bx.eq(-self._p), oy.eq(oy + 1), by.eq(nby),
                                             lo.eq(Mux(nby < 0, 0, nby)), cslot.eq(cslot + free)]
                                with m.Switch(oy):
                                    for y in range(ohw):
                                        with (m.Case(y) if y < ohw - 1 else m.Default()):
                                            nd, fr_ = plan[(y + 1) % ohw]
                                            m.d.sync += [need.eq(nd), free.eq(fr_)]
                                with m.If(oy == ohw - 1):
                                    m.d.sync += [oy.eq(0), by.eq(-self._p), lo.eq(0)]
        m.d.sync += avail.eq(avail + row_loaded - Mux(row_done, free, 0))

        stage = Pipe(m, en).stage

        # stage 1: memory data and the issue's control; the chunk's input channels (zero in the padding)
        v1, pad1, first1, last1, done1 = Signal(), Signal(), Signal(), Signal(), Signal()
        g1 = _counter(groups)
        ch1 = _counter(chunks)
        with m.If(en):
            m.d.sync += [v1.eq(issue), pad1.eq(pad), first1.eq((ky == 0) & (kx == 0) & (ch == 0)),
                         last1.eq(last_tc), g1.eq(g), ch1.eq(ch), done1.eq(last_tc & last_group)]
        acts = [Signal(act_code_shape(self._al), name=f"a{j}") for j in range(simd)]
        with m.If(~pad1):
            with m.Switch(ch1):
                for cj in range(chunks):
                    with (m.Case(cj) if cj < chunks - 1 else m.Default()):
                        for j, a in enumerate(acts):  # channels past the last are zero (complete cases)
                            m.d.comb += a.eq(fr.data[cj * simd + j] if cj * simd + j < c_in else 0)
        ctl = [v1, first1, last1, g1, done1]
        # stage A: the activations (decoded to their integer levels, once for all lanes) and the weight
        # codes registered (the memories' outputs go no further)
        avals = [act_value(m, a, self._al, name=f"act{j}") for j, a in enumerate(acts)]
        *acts_a, wflat_a = stage("sa_act", *avals, wr.data)
        wdata_a = wshape(wflat_a)
        ctl = stage("sa_ctl", *ctl)
        # stage B: the products, registered; one PE per (lane, input channel of the chunk)
        terms = [product_terms(m, wdata_a[p][j], a, self._wl, self._al, name=f"pe{p}_{j}")
                 for p in range(lanes) for j, a in enumerate(acts_a)]
        prods = stage("sb_prod", *[t for t, _ in terms])
        ones = stage("sb_ones", *[adder_tree([c for _, c in terms[p * simd:(p + 1) * simd]]) for p in range(lanes)])
        ctl = stage("sb_ctl", *ctl)
        # stage 2: each lane's adder tree (balanced) with its count of negative weights (the + 1s,
        # counted beside the products), registered; then accumulate
        # over the taps and chunks
        trees = [Signal(signed(product_shape(self._wl, self._al).width + simd.bit_length()), name=f"tree{p}")
                 for p in range(lanes)]
        m.d.comb += [t.eq(adder_tree([*prods[p * simd:(p + 1) * simd], o])) for p, (t, o) in enumerate(zip(trees, ones))]
        sums2 = stage("sum", *trees)
        v2, first2, last2, g2, done2 = stage("s2_ctl", *ctl)
        accs = [Signal(self._acc_shape, name=f"acc{p}") for p in range(lanes)]
        nexts = [Signal(self._acc_shape, name=f"acc_next{p}") for p in range(lanes)]
        for acc, nxt, s in zip(accs, nexts, sums2):
            m.d.comb += nxt.eq(s + acc)
            with m.If(first2):
                m.d.comb += nxt.eq(s)
        # the lanes' results of a group, held while the requantization units take them in turn
        units = self.requant_units
        per = -(-lanes // units)
        jb = max(1, (per - 1).bit_length())
        fins = [Signal(self._acc_shape, name=f"fin{p}") for p in range(lanes)]
        busy, turn, gq, doneq = Signal(), Signal(jb), _counter(groups), Signal()
        if self._res is not None:
            # the shortcut values of the pixel in lane order (position q: channel q, zero for a zero
            # channel of the option-A shortcut or past the last filter), loaded with its first group
            # and moved on by one group at each next one: a unit picks its lane's value by its turn
            # alone (a pick by channel is a mux as wide as the layer: the engine's critical path)
            vshape = self.r.payload.shape().elem_shape
            order = [self._res.shortcut_index[q] if q < k_out else -1 for q in range(groups * lanes)]
            rsr = Signal(data.ArrayLayout(vshape, groups * lanes), name="rsr")
            loaded = Cat(*[rpix[0][i] if i >= 0 else Const(0, vshape) for i in order])
            moved = rsr.as_value()[lanes * Shape.cast(vshape).width:]
        with m.If(en):
            with m.If(v2):
                m.d.sync += [acc.eq(nxt) for acc, nxt in zip(accs, nexts)]
            with m.If(v2 & last2):
                m.d.sync += [f.eq(nxt) for f, nxt in zip(fins, nexts)]
                m.d.sync += [busy.eq(1), turn.eq(0), gq.eq(g2), doneq.eq(done2)]
                if self._res is not None:
                    m.d.sync += rsr.eq(Mux(g2 == 0, loaded, moved))
                    m.d.comb += pop.eq(g2 == 0)
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
            chans = self._unit_channels(u, jb)
            x = by_turn(u, fins, self._acc_shape, f"rq{u}_x")
            rq = self._rq
            if isinstance(rq, ir.Requant) and rq.mode == ir.RequantMode.THRESHOLD:
                th, sign = np.asarray(rq.thresholds), np.asarray(rq.sign)
                rows_th = np.stack([th[c] if c is not None else np.zeros_like(th[0]) for c in chans])
                rows_sign = np.array([sign[c] if c is not None else 1 for c in chans])
                code, out = threshold_search(m, Pipe(m, en), x, addr, rows_th, rows_sign, carry, name=f"rq{u}")
            else:
                pick = lambda a: np.array([int(np.asarray(a)[c]) if c is not None else 0 for c in chans])  # noqa: E731
                xs, muls, bounds = [x], [pick(rq.mul)], [self._partial_bound]
                if self._res is not None:  # the shortcut value of the lane's channel
                    xs.append(by_turn(u, rsr, act_code_shape(self._sc_levels), f"rq{u}_sc"))
                    muls.append(pick(self._res.shortcut_mul))
                    bounds.append(self._sc_levels.denom)
                code, out = affine_unit(m, Pipe(m, en), xs, addr, muls, pick(rq.bias), pick(rq.shift),
                                        self._ol.denom, bounds, carry, name=f"rq{u}")
            codes.append(code)
        v4, j4, g4, done4 = out  # the units run in lockstep: any unit's carried control
        # the pipeline stops only while a finished pixel waits for the output register, which still
        # holds the one before: registers of this engine alone, not the sink's ready, drive `en`
        m.d.comb += en.eq(~(self.o.valid & v4 & done4))
        # stage 4: place the codes into the output pixel; emit it after its last group's last lane
        buf = Signal(self.o.payload.shape())
        merged = Signal(self.o.payload.shape())
        m.d.comb += merged.eq(buf)
        tables = [self._unit_channels(u, jb) for u in range(units)]
        rows = [row for row in range(groups << jb) if any(t[row] is not None for t in tables)]
        with m.Switch(Cat(j4, g4)):
            for row in rows:
                with m.Case(row):
                    m.d.comb += [merged[t[row]].eq(code) for t, code in zip(tables, codes) if t[row] is not None]
            with m.Default():  # a padding turn places nothing
                m.d.comb += merged.eq(buf)
        with m.If(en & v4):
            m.d.sync += buf.eq(merged)
        with m.If(en & v4 & done4):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(merged)]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
