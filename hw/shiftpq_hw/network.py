"""The full-network accelerator: the layer tables' ops as a layer-pipelined chain of stream blocks.

Image bytes in (``s_axis_*``: raster order, three bytes R, G, B per pixel, ``tlast`` on the last),
class scores out (``m_axis_*``: ten int32 beats, ``tlast`` on the tenth), a free-running cycle counter.
Each conv and the requant (or fused residual add) after it is one ``ConvRequant`` engine; a tensor
read twice goes through a ``Fork``; the shortcut goes through a ``ShortcutPath`` FIFO.

Folding (``par``): every engine works on its own image rows at once, so the throughput is one image
per slowest block. ``par=None`` gives every conv all its lanes and input channels (fastest, largest);
``par=P`` sets the target period to the largest conv's MACs / P and gives every conv and the FC the
fewest PEs (lanes x simd, fewest lanes on a tie: each lane has its own requant) that meet it, so P
is the PE count of the largest layer and the total PE count grows in proportion to P.
"""

import math

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from shiftpq import ir
from shiftpq.golden import Golden

from .blocks import AvgPoolRequant, CodeLUT, Fork, FullyConnected, MaxPool, ShortcutPath
from .conv import ConvRequant


class PixelAssembler(wiring.Component):
    """Bytes to pixels: three bytes make one pixel of three int8 values (``byte ^ 0x80`` = pixel - 128)."""
    i: In(stream.Signature(8))
    o: Out(stream.Signature(data.ArrayLayout(signed(8), 3)))

    def elaborate(self, platform):
        m = Module()
        k = Signal(range(3))
        held = [Signal(8, name=f"b{j}") for j in range(2)]
        m.d.comb += self.i.ready.eq((k < 2) | self.o.ready)
        m.d.comb += self.o.valid.eq((k == 2) & self.i.valid)
        m.d.comb += [self.o.payload[0].eq(held[0] ^ 0x80), self.o.payload[1].eq(held[1] ^ 0x80),
                     self.o.payload[2].eq(self.i.payload ^ 0x80)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += k.eq(k + 1)
            with m.If(k == 0):
                m.d.sync += held[0].eq(self.i.payload)
            with m.Elif(k == 1):
                m.d.sync += held[1].eq(self.i.payload)
            with m.Else():
                m.d.sync += k.eq(0)
        return m


def fold(out_ch: int, in_ch: int, steps: int, target: int) -> tuple[int, int]:
    """(lanes, simd) with the fewest PEs, then the fewest lanes, whose cycles per image
    ``steps * ceil(out_ch / lanes) * ceil(in_ch / simd)`` are at most ``target``; all of them when
    none is fast enough."""
    best = None
    for lanes in range(1, out_ch + 1):
        groups = -(-out_ch // lanes)
        if lanes > 1 and -(-out_ch // (lanes - 1)) == groups:
            continue  # the same cycles with fewer lanes
        chunks = target // (steps * groups)
        if chunks < 1:
            continue
        simd = -(-in_ch // min(chunks, in_ch))
        key = (lanes * simd, lanes)
        if best is None or key < best[0]:
            best = (key, (lanes, simd))
    return best[1] if best else (out_ch, in_ch)


def plan(tables, par: int | None) -> "Network":
    """The planned network, never elaborated: its blocks (``Network.blocks``: each engine's fold, each
    shortcut FIFO's depth) and cycle model, for a backend that follows the same plan without building
    this RTL (the HLS C++ backend)."""
    net = Network(tables, par)
    net._MustUse__silence = True  # read for its plan only
    return net


class Network(wiring.Component):
    s_axis_tdata: In(8)
    s_axis_tvalid: In(1)
    s_axis_tready: Out(1)
    s_axis_tlast: In(1)
    m_axis_tdata: Out(32)
    m_axis_tvalid: Out(1)
    m_axis_tready: In(1)
    m_axis_tlast: Out(1)
    cycles: Out(32)

    def __init__(self, tables, par: int | None = None):
        if par is not None and par < 1:
            self._MustUse__silence = True
            raise ValueError(f"par must be a positive integer or None (fully parallel), got {par!r}")
        self._t, self.par = tables, par
        convs = [op for op in tables.ops if isinstance(op, ir.Conv)]
        self.target = None if par is None else -(-max(self._work(op) * len(op.kept) * len(op.in_channels)
                                                        for op in convs) // par)
        self.blocks = self._plan()
        for _, blk, _, _ in self.blocks:
            blk._MustUse__silence = True  # elaborated with the network; the network itself still must be used
        super().__init__()

    @property
    def tables(self):
        return self._t

    @staticmethod
    def _work(conv_op) -> int:
        """Cycles of one lane on one input channel: output pixels x taps."""
        return conv_op.out_hw ** 2 * conv_op.kernel ** 2

    def _fold(self, out_ch: int, in_ch: int, steps: int) -> tuple[int | None, int | None]:
        return (None, None) if self.target is None else fold(out_ch, in_ch, steps, self.target)

    def _input_cycles(self) -> int:
        """Cycles an image takes to enter: one byte per cycle."""
        return math.prod(ir.INPUT_SHAPE)

    def _plan(self) -> list[tuple[str, wiring.Component, list[tuple[str, str]], str]]:
        """(name, block, [(input port, tensor)], output tensor) in execution order."""
        t = self._t
        ops = t.ops
        golden = Golden(t)  # its code tables are the CodeLUT contents: built once, not per block
        by_src: dict[str, list[ir.Op]] = {}
        for op in ops:
            for s in op.inputs:
                by_src.setdefault(s, []).append(op)
        plan, absorbed = [], set()
        for op in ops:
            if op.name in absorbed:
                continue
            if isinstance(op, ir.Conv):
                nxt = by_src[op.dst][0]
                absorbed.add(nxt.name)
                lanes, simd = self._fold(len(t.tensors[nxt.dst].channels), len(op.in_channels),
                                         self._work(op))
                eng = ConvRequant.from_tables(t, op, nxt, lanes, simd)
                ins = [("i", op.src)] + ([("r", nxt.shortcut_src)] if isinstance(nxt, ir.Add) else [])
                plan.append((op.name, eng, ins, nxt.dst))
            elif isinstance(op, ir.Requant):
                src = t.tensors[op.src]
                if src.kind != ir.TensorKind.CODES:
                    raise ValueError(f"requant {op.name!r} of a {src.kind} tensor has no block yet")
                plan.append((op.name, CodeLUT(golden.code_table(op.name), t.level_set(src.levels),
                                              t.level_set(op.levels)),
                             [("i", op.src)], op.dst))
            elif isinstance(op, ir.Shortcut):
                src = t.tensors[op.src]
                shape = data.ArrayLayout(8, len(src.channels))
                plan.append((op.name, ShortcutPath(shape, src.hw, op.stride), [("i", op.src)], op.dst))
            elif isinstance(op, ir.MaxPool):
                src = t.tensors[op.src]
                blk = MaxPool(t.level_set(src.levels), len(src.channels), src.hw, op.size)
                plan.append((op.name, blk, [("i", op.src)], op.dst))
            elif isinstance(op, ir.AvgPool):
                nxt = by_src[op.dst][0]
                absorbed.add(nxt.name)
                src = t.tensors[op.src]
                # the fewest lanes that keep the pool off the period the blocks before it set
                period = max([self._input_cycles()] + [getattr(b, "cycles_per_image", 0) for _, b, _, _ in plan])
                lanes = AvgPoolRequant.fewest_lanes(op.hw, len(src.channels), period)
                blk = AvgPoolRequant(t.level_set(src.levels), t.level_set(nxt.levels), op.hw,
                                     nxt.mul, nxt.bias, nxt.shift, lanes)
                plan.append((op.name, blk, [("i", op.src)], nxt.dst))
            elif isinstance(op, ir.FC):
                src = t.tensors[op.src]
                w = op.weight
                _, simd = self._fold(1, w.shape[1], w.shape[0])
                blk = FullyConnected(w, t.level_set(op.weight_levels), t.level_set(src.levels),
                                     op.bias, op.shift, simd)
                plan.append((op.name, blk, [("i", op.src)], op.dst))
            else:
                raise ValueError(f"op {op.name!r} ({type(op).__name__}) has no hardware block yet")
        # an identity shortcut (the add reads the stream itself) still needs its FIFO
        fixed = []
        for name, blk, ins, out in plan:
            for port, tensor in ins:
                if port == "r" and not any(o == tensor and isinstance(b, ShortcutPath) for _, b, _, o in plan):
                    info = t.tensors[tensor]
                    sp_out = tensor + "@fifo"
                    fixed.append((tensor + ".fifo", ShortcutPath(data.ArrayLayout(8, len(info.channels)),
                                                                 info.hw, 1), [("i", tensor)], sp_out))
                    ins[ins.index((port, tensor))] = (port, sp_out)
            fixed.append((name, blk, ins, out))
        # a shortcut FIFO holds what has entered the block but not yet been added: at most the
        # first engine's line buffer rows plus one (in shortcut rows), the adding engine's line
        # buffer rows (it takes a shortcut pixel as it requantizes the output pixel), and a row of
        # slack for the registers between (fork, code lookup), so the fork before it never waits
        readers = {}
        for _, blk, ins, out in fixed:
            for _, tensor in ins:
                readers.setdefault(tensor, []).append((blk, out))
        for _, blk, ins, out in fixed:
            if isinstance(blk, ShortcutPath):
                src = ins[0][1]
                engines = [b for b, _ in readers[src] if isinstance(b, ConvRequant)]
                engines += [b for c, o in readers[src] if isinstance(c, CodeLUT)
                            for b, _ in readers.get(o, []) if isinstance(b, ConvRequant)]
                adders = [b for b, _ in readers.get(out, []) if isinstance(b, ConvRequant)]
                if engines:
                    out_hw = -(-blk._hw // blk._s)
                    rows = max(-(-e.slots // blk._s) for e in engines) + max((e.slots for e in adders), default=0) + 2
                    blk.depth = min(out_hw * out_hw, rows * out_hw)
        return fixed

    def layers(self) -> list[dict]:
        """Per block: PEs, MACs and cycles per image (its steady-state period)."""
        rows = [{"name": "input", "kind": "bytes", "pes": 0, "macs": 0, "cycles": self._input_cycles()}]
        for name, blk, _, _ in self.blocks:
            if isinstance(blk, (ConvRequant, FullyConnected)):
                row = {"name": name, "kind": "conv" if isinstance(blk, ConvRequant) else "fc", "pes": blk.pes,
                       "macs": blk.macs_per_image, "cycles": blk.cycles_per_image}
                if isinstance(blk, ConvRequant):
                    row.update(lanes=blk.lanes, simd=blk.simd, groups=blk.groups, chunks=blk.chunks)
                else:
                    row.update(simd=blk.pes)
                rows.append(row)
            elif isinstance(blk, (AvgPoolRequant, MaxPool)):
                rows.append({"name": name, "kind": "avgpool" if isinstance(blk, AvgPoolRequant) else "maxpool",
                             "pes": 0, "macs": 0, "cycles": blk.cycles_per_image})
                if isinstance(blk, AvgPoolRequant):
                    rows[-1]["lanes"] = blk.lanes
        return rows

    @property
    def cycles_per_image(self) -> int:
        """The steady-state period: one image per slowest block."""
        return max(r["cycles"] for r in self.layers())

    @property
    def pes(self) -> int:
        return sum(r["pes"] for r in self.layers())

    @property
    def utilization(self) -> float:
        """Useful MACs / (PEs x cycles per image)."""
        return sum(r["macs"] for r in self.layers()) / (self.pes * self.cycles_per_image)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.cycles.eq(self.cycles + 1)
        m.submodules.pixels = pix = PixelAssembler()
        m.d.comb += [pix.i.payload.eq(self.s_axis_tdata), pix.i.valid.eq(self.s_axis_tvalid),
                     self.s_axis_tready.eq(pix.i.ready)]
        producers = {self._t.input: pix.o}
        readers: dict[str, list] = {}
        for _, blk, ins, _ in self.blocks:
            for port, tensor in ins:
                readers.setdefault(tensor, []).append(getattr(blk, port))
        for name, blk, ins, out in self.blocks:
            m.submodules[name.replace(".", "_")] = blk
        for name, blk, ins, out in [("input", None, [], self._t.input)] + self.blocks:
            src = producers[out] if blk is None else blk.o
            consumers = readers.get(out, [])
            while len(consumers) > 1:  # a tensor read twice: fork it
                fork = Fork(src.payload.shape())
                m.submodules[f"fork_{out.replace('.', '_')}_{len(consumers)}"] = fork
                wiring.connect(m, src, fork.i)
                wiring.connect(m, fork.a, consumers[0])
                src, consumers = fork.b, consumers[1:]
            if consumers:
                wiring.connect(m, src, consumers[0])
            producers[out] = src
        fc = self.blocks[-1][1]
        m.d.comb += [self.m_axis_tdata.eq(fc.o.payload.score), self.m_axis_tlast.eq(fc.o.payload.last),
                     self.m_axis_tvalid.eq(fc.o.valid), fc.o.ready.eq(self.m_axis_tready)]
        return m
