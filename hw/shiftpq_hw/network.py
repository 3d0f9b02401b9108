"""The full-network accelerator: a hardware plan (plan.py) elaborated as a layer-pipelined chain of
stream blocks.

Image bytes in (``s_axis_*``: raster order, three bytes R, G, B per pixel, ``tlast`` on the last),
class scores out (``m_axis_*``: ten int32 beats, ``tlast`` on the tenth), a free-running cycle counter.
Every block of the plan is one component (``components``: a conv and the requant or fused residual
add after it is one ``ConvRequant`` engine, a shortcut a ``ShortcutPath`` FIFO, ...), every fork
chain of the plan a chain of ``Fork``s. What is built, how it is folded (``par``), how deep each FIFO
is and how many cycles each block takes are the plan's decisions; ``Network`` only elaborates them.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from shiftpq.golden import Golden

from .blocks import AvgPoolRequant, CodeLUT, Fork, FullyConnected, MaxPool, ShortcutPath
from .conv import ConvRequant
from .plan import HwPlan, Kind


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


def components(plan: HwPlan) -> dict[str, wiring.Component]:
    """Block name -> its component, created in the plan's order (Amaranth names and emits in
    creation order: the same plan gives the same RTL)."""
    t = plan.tables
    golden = Golden(t) if any(b.kind == Kind.LUT for b in plan.blocks) else None  # the code lookups' tables
    out = {}
    for b in plan.blocks:
        op = t.op(b.ops[0]) if b.ops else None
        if b.kind == Kind.CONV:
            blk = ConvRequant.from_tables(t, op, t.op(b.ops[1]), b.lanes, b.simd, b.pairs)
        elif b.kind == Kind.LUT:
            blk = CodeLUT(golden.code_table(b.name), t.level_set(t.tensors[op.src].levels), t.level_set(op.levels),
                          b.lanes)
        elif b.kind == Kind.SHORTCUT:
            src = t.tensors[b.inputs[0][1].split("@")[0]]
            blk = ShortcutPath(data.ArrayLayout(8, len(src.channels)), src.hw, b.stride, b.depth)
        elif b.kind == Kind.MAXPOOL:
            src = t.tensors[op.src]
            blk = MaxPool(t.level_set(src.levels), len(src.channels), src.hw, op.size)
        elif b.kind == Kind.AVGPOOL:
            rq = t.op(b.ops[1])
            blk = AvgPoolRequant(t.level_set(t.tensors[op.src].levels), t.level_set(rq.levels), op.hw,
                                 rq.mul, rq.bias, rq.shift, b.lanes)
        elif b.kind == Kind.FC:
            blk = FullyConnected(op.weight, t.level_set(op.weight_levels), t.level_set(t.tensors[op.src].levels),
                                 op.bias, op.shift, b.simd)
        else:
            raise ValueError(f"block {b.name!r} ({b.kind}) has no component")
        out[b.name] = blk
    return out


class Network(wiring.Component):
    """The accelerator of one hardware plan (``plan.make_plan``); its blocks are created as it is
    elaborated."""
    s_axis_tdata: In(8)
    s_axis_tvalid: In(1)
    s_axis_tready: Out(1)
    s_axis_tlast: In(1)
    m_axis_tdata: Out(32)
    m_axis_tvalid: Out(1)
    m_axis_tready: In(1)
    m_axis_tlast: Out(1)
    cycles: Out(32)

    def __init__(self, plan: HwPlan):
        if not isinstance(plan, HwPlan):
            raise TypeError(f"Network takes a hardware plan (plan.make_plan), got {type(plan).__name__}")
        self.plan = plan
        super().__init__()

    def elaborate(self, platform):
        plan = self.plan
        blocks = components(plan)
        m = Module()
        m.d.sync += self.cycles.eq(self.cycles + 1)
        m.submodules.pixels = pix = PixelAssembler()
        m.d.comb += [pix.i.payload.eq(self.s_axis_tdata), pix.i.valid.eq(self.s_axis_tvalid),
                     self.s_axis_tready.eq(pix.i.ready)]
        for b in plan.blocks:
            m.submodules[b.instance] = blocks[b.name]
        producers = {plan.tables.input: pix.o}
        for b in plan.blocks:
            producers[b.output] = blocks[b.name].o
        chains = {f.tensor: f for f in plan.forks}
        for tensor, src in producers.items():
            consumers = [getattr(blocks[b.name], port) for b, port in plan.readers(tensor)]
            for inst in chains[tensor].instances if tensor in chains else ():  # a tensor read twice: fork it
                m.submodules[inst] = fork = Fork(src.payload.shape())
                wiring.connect(m, src, fork.i)
                wiring.connect(m, fork.a, consumers[0])
                src, consumers = fork.b, consumers[1:]
            if consumers:
                wiring.connect(m, src, consumers[0])
        fc = blocks[plan.blocks[-1].name]
        m.d.comb += [self.m_axis_tdata.eq(fc.o.payload.score), self.m_axis_tlast.eq(fc.o.payload.last),
                     self.m_axis_tvalid.eq(fc.o.valid), fc.o.ready.eq(self.m_axis_tready)]
        return m
