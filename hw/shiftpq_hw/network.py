"""The full-network accelerator: the layer tables' ops as a layer-pipelined chain of stream blocks.

Image bytes in (``s_axis_*``: raster order, three bytes R, G, B per pixel, ``tlast`` on the last),
class scores out (``m_axis_*``: ten int32 beats, ``tlast`` on the tenth), a free-running cycle counter.
Each conv and the requant (or fused residual add) after it is one ``ConvRequant`` engine; a tensor
read twice goes through a ``Fork``; the shortcut goes through a ``ShortcutPath`` FIFO.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from shiftpq.golden import Golden

from .blocks import AvgPoolRequant, CodeLUT, Fork, FullyConnected, ShortcutPath
from .conv import ConvRequant
from .pe import IMAGE


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

    def __init__(self, tables, lanes=None):
        self._t, self._lanes = tables, lanes
        self.blocks = self._plan()
        super().__init__()

    def _plan(self) -> list[tuple[str, wiring.Component, list[tuple[str, str]], str]]:
        """(name, block, [(input port, tensor)], output tensor) in execution order."""
        t = self._t
        ops = t.ops
        golden = Golden(t)  # its code tables are the CodeLUT contents: built once, not per block
        by_src: dict[str, list[dict]] = {}
        for op in ops:
            for s in op.get("srcs", [op.get("src")]):
                by_src.setdefault(s, []).append(op)
        plan, absorbed = [], set()
        for op in ops:
            kind = op["op"]
            if op["name"] in absorbed:
                continue
            if kind == "conv":
                nxt = by_src[op["dst"]][0]
                absorbed.add(nxt["name"])
                lanes = None if self._lanes is None else min(self._lanes, len(t.tensors[nxt["dst"]]["channels"]))
                eng = ConvRequant.from_tables(t, op, nxt, lanes)
                ins = [("i", op["src"])] + ([("r", nxt["srcs"][1])] if nxt["op"] == "add" else [])
                plan.append((op["name"], eng, ins, nxt["dst"]))
            elif kind == "requant":
                src = t.tensors[op["src"]]
                if src["kind"] != "codes":
                    raise ValueError(f"requant {op['name']!r} of a {src['kind']} tensor has no block yet")
                plan.append((op["name"], CodeLUT(golden.code_table(op["name"]), t.level_set(src["levels"]),
                                                 t.level_set(op["levels"])),
                             [("i", op["src"])], op["dst"]))
            elif kind == "shortcut":
                src = t.tensors[op["src"]]
                shape = data.ArrayLayout(8, len(src["channels"]))
                plan.append((op["name"], ShortcutPath(shape, src["hw"], op["stride"]), [("i", op["src"])], op["dst"]))
            elif kind == "avgpool":
                nxt = by_src[op["dst"]][0]
                absorbed.add(nxt["name"])
                src = t.tensors[op["src"]]
                blk = AvgPoolRequant(t.level_set(src["levels"]), t.level_set(nxt["levels"]), op["hw"],
                                     t.array(nxt, "mul"), t.array(nxt, "bias"), t.array(nxt, "shift"))
                plan.append((op["name"], blk, [("i", op["src"])], nxt["dst"]))
            elif kind == "fc":
                src = t.tensors[op["src"]]
                blk = FullyConnected(t.array(op, "weight"), t.level_set(op["weight_levels"]), t.level_set(src["levels"]),
                                     t.array(op, "bias"), op["shift"])
                plan.append((op["name"], blk, [("i", op["src"])], op["dst"]))
            else:
                raise ValueError(f"op {op['name']!r} ({kind}) has no hardware block yet")
        # an identity shortcut (the add reads the stream itself) still needs its FIFO
        fixed = []
        for name, blk, ins, out in plan:
            for port, tensor in ins:
                if port == "r" and not any(o == tensor and isinstance(b, ShortcutPath) for _, b, _, o in plan):
                    info = t.tensors[tensor]
                    sp_out = tensor + "@fifo"
                    fixed.append((tensor + ".fifo", ShortcutPath(data.ArrayLayout(8, len(info["channels"])),
                                                                 info["hw"], 1), [("i", tensor)], sp_out))
                    ins[ins.index((port, tensor))] = (port, sp_out)
            fixed.append((name, blk, ins, out))
        return fixed

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.cycles.eq(self.cycles + 1)
        m.submodules.pixels = pix = PixelAssembler()
        m.d.comb += [pix.i.payload.eq(self.s_axis_tdata), pix.i.valid.eq(self.s_axis_tvalid),
                     self.s_axis_tready.eq(pix.i.ready)]
        producers = {self._t.manifest["input"]["tensor"]: pix.o}
        readers: dict[str, list] = {}
        for _, blk, ins, _ in self.blocks:
            for port, tensor in ins:
                readers.setdefault(tensor, []).append(getattr(blk, port))
        for name, blk, ins, out in self.blocks:
            m.submodules[name.replace(".", "_")] = blk
        for name, blk, ins, out in [("input", None, [], self._t.manifest["input"]["tensor"])] + self.blocks:
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
