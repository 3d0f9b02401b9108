"""One convolution layer engine: a stream of input pixels in, requantized output pixels out.

Dataflow, a line buffer and a folded MAC array, wired from the units of engine.py (their timing is
in their docstrings):
- ``LineBuffer``: input pixels (all channels of a pixel per beat, raster order) go into a circular
  buffer of ``slots`` rows (a power of two, at least ``kernel + stride``) whenever a slot is free, so
  loading overlaps computing and runs into the next image without a gap;
- ``TapSequencer``: for every output pixel, every group of ``lanes`` output channels, every kernel
  tap and every chunk of ``simd`` input channels, one cycle: the tap's input pixel (zero outside the
  map: the padding) and the weight codes of that (group, tap, chunk) are read; an output row starts
  once the input rows it reads are loaded, and at its end the rows the next output row no longer
  reads are freed;
- ``MacPipeline``: ``lanes x simd`` shift-add PEs multiply, an adder tree sums the chunk and each
  lane accumulates (stages: memory read; the memories' words registered; activations and weights
  registered; products registered; every level of the adder tree registered; accumulate);
- ``LaneRequant``: after the last tap and chunk the lanes' sums are held, and the requantization
  units (the layer's BatchNorm, ReLU and next quantizer: a binary threshold search or a fixed-point
  multiply-add, requant.py) take the lanes in turn, one unit per ``kernel**2 * chunks`` lanes,
  before the next group's sums arrive;
- ``ShortcutQueue``: a fused residual add takes one shortcut pixel (second input ``r``) per output
  pixel, from a queue (``shortcut_depth``), as the pixel's first group is requantized;
- ``OutputAssembly``: the codes go into the output pixel's entry of the output queue, which the
  pixel leaves, in order, once its last group is done.
Only the sequencer waits: for the input rows of an output row, and at an output pixel's start for a
credit (a free entry of the output queue) and a shortcut pixel. Every register after it loads every
cycle, its data qualified by its stage's valid bit, so no enable fans out over the engine and the
sink's ready reaches only the output queue's pointers and the credit counter (the clock does not
depend on how the placer spreads an engine). The queue is deep enough that a pixel never waits for
a credit while the sink takes each pixel as it comes (``output_depth``). Cycles per image, in steady
state with a source that keeps the buffer ahead and such a sink: ``out_hw**2 * groups * chunks *
kernel**2`` (``cycles_per_image``): the MAC array never idles; the pipeline adds latency only.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from shiftpq import intops, ir
from shiftpq.levels import LevelSet

from .checked import Checked
from .dsp import target_of
from .engine import LaneRequant, LineBuffer, MacPipeline, OutputAssembly, ShortcutQueue, TapSequencer
from .pe import IMAGE, act_code_shape


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class ConvRequant(Checked, wiring.Component):
    """Conv + requant of one layer, sized by its kept filters and folded: ``lanes`` output channels
    at a time (default: all of them) times ``simd`` input channels at a time (default: all of them)
    of shift-add PEs."""

    def __init__(self, weights: np.ndarray, wlevels: LevelSet, alevels: LevelSet, olevels: LevelSet,
                 stride: int, padding: int, in_hw: int, requant: ir.Requant | ir.Add, partial_bound: int,
                 lanes: int | None = None, shortcut: tuple[LevelSet, int] | None = None, simd: int | None = None,
                 pairs: int = 0):
        """``requant``: the IR op that reads the accumulators (its constants by output channel, in the
        order of ``weights``): a ``Requant``, or an ``Add`` (the fused residual add: ``shortcut`` gives
        the level set and channel count of its second input, the stream ``r``). ``pairs``: per lane,
        the multiplier pairs among its ``simd`` PEs (``MacPipeline``)."""
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
        self._pairs = pairs
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
              lanes: int | None = None, shortcut: tuple[LevelSet, int] | None = None, simd: int | None = None,
              pairs: int = 0):
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
        problem = MacPipeline.pairs_problem(pairs, simd or c_in, wlevels, alevels)
        if problem:
            problems.append(problem)
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
                    lanes: int | None = None, simd: int | None = None, pairs: int = 0) -> "ConvRequant":
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
                   conv_op.partial_bound, lanes, shortcut, simd, pairs)

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
    def pairs(self) -> int:
        return self._pairs

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

    def _lane_requant(self) -> LaneRequant:
        rq = self._rq
        threshold = isinstance(rq, ir.Requant) and rq.mode == ir.RequantMode.THRESHOLD
        consts = {"thresholds": rq.thresholds, "sign": rq.sign} if threshold else \
            {"mul": rq.mul, "bias": rq.bias, "shift": rq.shift}
        shortcut = (self._res.shortcut_mul, self._sc_levels) if self._res else None
        return LaneRequant(self._lanes, self._groups, self._k ** 2 * self._chunks, self._w.shape[0], self._acc_shape,
                           self._partial_bound, self._ol, shortcut=shortcut, **consts)

    @property
    def latency(self) -> int:
        """Cycles from a pixel's last issue to its last code in the output queue (stage 1, the MAC
        pipeline, the requantization units and their turns, the output assembly's register)."""
        rq = self._lane_requant()
        macs = MacPipeline.latency_of(self._simd, self._wl, self._pairs)
        return TapSequencer.READ_LATENCY + macs + rq.latency + rq.per - 1 + OutputAssembly.LATENCY

    @property
    def output_depth(self) -> int:
        """Pixels the output queue holds (``OutputAssembly.depth_for``)."""
        return OutputAssembly.depth_for(self.latency, self._groups * self._chunks * self._k ** 2)

    @property
    def shortcut_depth(self) -> int:
        """Shortcut pixels a fused residual add's queue holds (``ShortcutQueue.depth_for``): a pixel's
        shortcut is popped when its first group's sums are complete."""
        first_group = self._k ** 2 * self._chunks
        macs = MacPipeline.latency_of(self._simd, self._wl, self._pairs)
        pop_latency = first_group - 1 + TapSequencer.READ_LATENCY + macs
        return ShortcutQueue.depth_for(pop_latency, self._groups * first_group)

    def _macs(self) -> MacPipeline:
        return MacPipeline(self._lane_weights(), self._wl, self._al, self._lanes, self._simd, self._w.shape[1],
                           self._acc_shape, self._pairs)

    @property
    def requant_units(self) -> int:
        """Requantization units: each serves ``lanes / units`` lanes in turn, within the
        ``taps x chunks`` cycles before the lanes' next results."""
        return self._lane_requant().units

    def elaborate(self, platform):
        """The wiring of the engine's units (engine.py), in the order the pipeline runs. Only the
        sequencer waits (for input rows, a credit, a shortcut pixel); everything after it loads
        every cycle, its data qualified by valid bits."""
        m = Module()
        k = self._k
        lines = LineBuffer(self._in_hw, self._slots).build(m, self.i)
        macs = self._macs()
        weights = macs.weight_memory(m)
        lane_rq = self._lane_requant()
        output = OutputAssembly([lane_rq.channels(u) for u in range(lane_rq.units)], lane_rq.lane_bits,
                                self._groups, self.output_depth)
        shortcut = ShortcutQueue(self.r, self._res.shortcut_index, self._lanes, self._groups,
                                 self.shortcut_depth) if self._res else None
        # stage 0: one (group, tap, chunk) per cycle reads the line buffer and the weight memory
        seq = TapSequencer(k, self._s, self._p, self._in_hw, self._groups, self._chunks, self._slots,
                           self.rows()).build(m, lines.avail, lines.read, weights, output.credit, shortcut)
        lines.release(m, seq.row_done, seq.free)
        m.d.comb += output.started.eq(seq.started)
        # stage 1: the memories' data and the issue's control; then the MAC lanes
        seq.stage1(m)
        macs.build(m, lines.read.data, weights.data, seq.pad1, seq.ch1, seq.v1, seq.first1,
                   [seq.last1, seq.g1, seq.done1], target_of(platform))
        # the requantization units take the lanes of each finished group in turn (the control a cycle
        # before the sums: they register it beside their loads)
        rq = lane_rq.build(m, macs.sums, macs.early_valid, *macs.early_carry, shortcut, target_of(platform))
        # the codes into the output queue
        output.build(m, self.o, rq.codes, rq.valid, rq.turn, rq.group, rq.done)
        return m
