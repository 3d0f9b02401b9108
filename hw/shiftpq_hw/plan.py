"""The hardware plan: layer tables -> the blocks of the accelerator, as explicit passes.

``make_plan(tables, par, dsp_pairs)`` runs ``PASSES`` in order, each a pure function from one ``HwPlan`` to the
next (nothing is built, nothing is elaborated):

    fuse             one block per conv and the requant or residual add after it, per code lookup
                     (a requant of codes), shortcut, max pool, average pool and its requant, FC
    insert_fifos     a shortcut FIFO before every add whose shortcut is the stream itself (identity)
    insert_forks     a fork chain for every tensor that several blocks read
    fold             lanes x simd of every conv and simd of the FC (``fold``: the fewest PEs that meet
                     the target period, largest conv's MACs / PAR), lanes of the average pool (the
                     fewest that keep it off the period the blocks before it set) and of the code
                     lookups (the fewest that keep up with the engine before them)
    assign_pairs     of a budget of 18x18 multipliers (``dsp_pairs``), pairs of PEs per lane that
                     become one multiplier each (two products summed in one, ``pe.dsp_pair``)
    size_fifos       every shortcut FIFO's depth, from the line buffers of the engines around it
    annotate_cycles  cycles per image, PEs and MACs of every block; the period, bottleneck, utilization

The result, ``HwPlan``, is the single home of the cycle model: ``cycle_model`` (cycles.json) and
``probe_map`` (probes.json) are written from it, ``Network(plan)`` elaborates it, the HLS backend
renders it and the simulators read the two files. The per-block cycle formulas are the blocks' own
static functions (``ConvRequant.cycles``, ``FullyConnected.cycles``, ``AvgPoolRequant.cycles``,
``MaxPool.cycles``, ``CodeLUT.cycles``), which describe their schedules; the plan is the only caller that sizes a network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum

from amaranth.hdl import Shape

from shiftpq import ir
from shiftpq.ir import Tables

from .blocks import AvgPoolRequant, CodeLUT, FullyConnected, MaxPool
from .conv import ConvRequant
from .pe import IMAGE, act_code_shape, dsp_pairs_fit

REPORT_MHZ = (50, 100, 150)  # the clock rates cycles.json quotes inferences per second at


class Kind(StrEnum):
    """What a block is (``network.py`` builds one component per kind)."""
    CONV = "conv"  # ConvRequant: a conv and its requant or fused residual add
    LUT = "lut"  # CodeLUT: a requant of codes, by table
    SHORTCUT = "shortcut"  # ShortcutPath: an option-A shortcut's subsample and FIFO
    MAXPOOL = "maxpool"  # MaxPool
    AVGPOOL = "avgpool"  # AvgPoolRequant: the global average pool and the requant after it
    FC = "fc"  # FullyConnected: the class scores


@dataclass(frozen=True)
class Block:
    """One block of the accelerator: the ops it computes, its streams, its fold and its cycle model."""
    name: str  # its first op's name
    instance: str  # its RTL instance (a submodule of the top level)
    kind: Kind
    ops: tuple[str, ...]  # the tables' ops it computes, in order
    inputs: tuple[tuple[str, str], ...]  # (port, tensor): "i", and "r" for a fused add's shortcut
    output: str  # the tensor its output stream carries ("<tensor>@fifo": an identity shortcut's FIFO)
    lanes: int | None = None  # conv: output channels at a time; avgpool: channels summed; lut: looked up
    simd: int | None = None  # conv, fc: input channels at a time
    pairs: int = 0  # conv: per lane, multipliers computing two of its simd products each
    groups: int | None = None  # conv: output channel groups, ceil(channels / lanes)
    chunks: int | None = None  # conv, fc: input channel chunks, ceil(channels / simd)
    slots: int | None = None  # conv: line buffer rows
    stride: int | None = None  # shortcut: the subsample
    depth: int | None = None  # shortcut: FIFO depth in pixels
    cycles: int | None = None  # cycles per image (its steady-state period); None: never the bottleneck
    pes: int = 0
    macs: int = 0  # useful multiply-accumulates per image


@dataclass(frozen=True)
class ForkChain:
    """A tensor read by several blocks: a chain of two-way forks, the first one's ``a`` to the first
    reader, its ``b`` into the next fork, ..., the last one's ``b`` to the last reader."""
    tensor: str
    readers: tuple[tuple[str, str], ...]  # (block name, port), in plan order
    instances: tuple[str, ...]  # the forks' RTL instances, first to last


@dataclass(frozen=True)
class HwPlan:
    tables: Tables = field(repr=False, compare=False)
    par: int | None  # the largest conv's PEs (None: every conv fully parallel)
    dsp_pairs: int = 0  # multipliers the convs may use for their PEs, two products each (assign_pairs)
    target: int | None = None  # the target period: the largest conv's MACs / par
    input_cycles: int = 0  # cycles an image takes to enter: one byte per cycle
    blocks: tuple[Block, ...] = ()  # in execution order (the RTL's creation order)
    forks: tuple[ForkChain, ...] = ()  # in the order of the tensors' producers
    period: int | None = None  # cycles per image: one image per slowest block
    bottleneck: tuple[str, ...] = ()  # the blocks (or "input") whose cycles are the period
    pes: int = 0
    macs: int = 0
    utilization: float | None = None  # useful MACs / (PEs x period)

    def block(self, name: str) -> Block:
        return next(b for b in self.blocks if b.name == name)

    @property
    def pairs_used(self) -> int:
        """The multipliers that compute pairs of PEs (assign_pairs): at most ``dsp_pairs``."""
        return sum(b.lanes * b.pairs for b in self.blocks if b.kind == Kind.CONV)

    def readers(self, tensor: str) -> list[tuple[Block, str]]:
        """(block, port) of every block that reads ``tensor``, in plan order."""
        return [(b, port) for b in self.blocks for port, t in b.inputs if t == tensor]


# -- the IR as the plan sees it -----------------------------------------------------------------------

def _conv_work(conv: ir.Conv) -> int:
    """Cycles of one lane on one input channel: output pixels x taps."""
    return conv.out_hw ** 2 * conv.kernel ** 2


def _channels(tables: Tables, tensor: str) -> int:
    return len(tables.tensors[tensor].channels)


# -- the passes ---------------------------------------------------------------------------------------

def fuse(plan: HwPlan) -> HwPlan:
    """One block per op, a conv fused with the requant or add that reads its accumulators and an
    average pool with the requant after it."""
    t = plan.tables
    blocks, absorbed = [], set()
    for op in t.ops:
        name = op.name
        if name in absorbed:
            continue
        ops, ins, out, extra = (name,), [("i", op.inputs[0])], op.dst, {}
        if isinstance(op, ir.Conv):
            nxt = t.readers(op.dst)[0]
            absorbed.add(nxt.name)
            kind, ops, out, extra = Kind.CONV, (name, nxt.name), nxt.dst, {"slots": ConvRequant.line_buffer_slots(
                op.kernel, op.stride)}
            if isinstance(nxt, ir.Add):
                ins.append(("r", nxt.shortcut_src))
        elif isinstance(op, ir.Requant):
            src = t.tensors[op.src]
            if src.kind != ir.TensorKind.CODES:
                raise ValueError(f"requant {name!r} of a {src.kind} tensor has no block yet")
            kind = Kind.LUT
        elif isinstance(op, ir.Shortcut):
            kind, extra = Kind.SHORTCUT, {"stride": op.stride}
        elif isinstance(op, ir.MaxPool):
            kind = Kind.MAXPOOL
        elif isinstance(op, ir.AvgPool):
            nxt = t.readers(op.dst)[0]
            absorbed.add(nxt.name)
            kind, ops, out = Kind.AVGPOOL, (name, nxt.name), nxt.dst
        elif isinstance(op, ir.FC):
            kind = Kind.FC
        else:
            raise ValueError(f"op {name!r} ({type(op).__name__}) has no hardware block yet")
        blocks.append(Block(name, name.replace(".", "_"), kind, ops, tuple(ins), out, **extra))
    return replace(plan, blocks=tuple(blocks), input_cycles=math.prod(ir.INPUT_SHAPE))


def insert_fifos(plan: HwPlan) -> HwPlan:
    """An add whose shortcut is the stream itself (an identity shortcut) still reads it through a
    FIFO: a shortcut block of stride 1, just before the adding block."""
    blocks = []
    for b in plan.blocks:
        ins = list(b.inputs)
        for j, (port, tensor) in enumerate(ins):
            if port == "r" and not any(o.output == tensor and o.kind == Kind.SHORTCUT for o in plan.blocks):
                fifo = tensor + ".fifo"
                blocks.append(Block(fifo, fifo.replace(".", "_"), Kind.SHORTCUT, (), (("i", tensor),),
                                    tensor + "@fifo", stride=1))
                ins[j] = (port, tensor + "@fifo")
        blocks.append(replace(b, inputs=tuple(ins)))
    return replace(plan, blocks=tuple(blocks))


def insert_forks(plan: HwPlan) -> HwPlan:
    """A fork chain for every tensor read more than once, in the order of the tensors' producers."""
    forks = []
    for tensor in [plan.tables.input] + [b.output for b in plan.blocks]:
        readers = tuple((b.name, port) for b, port in plan.readers(tensor))
        if len(readers) > 1:
            base = "fork_" + tensor.replace(".", "_")
            forks.append(ForkChain(tensor, readers, tuple(f"{base}_{n}" for n in range(len(readers), 1, -1))))
    return replace(plan, forks=tuple(forks))


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


def fewest_pool_lanes(hw: int, channels: int, period: int) -> int:
    """The average pool's fewest lanes whose cycles per image stay within ``period`` (all channels if
    none do)."""
    return next((k for k in range(1, channels) if AvgPoolRequant.cycles(hw, channels, k) <= period), channels)


def fewest_lookup_lanes(channels: int, interval: int) -> int:
    """A code lookup's fewest lanes whose cycles per pixel (``CodeLUT.cycles``) are at most
    ``interval``, the cycles the engine before it takes to issue a pixel, so the lookup never holds
    the stream up (all channels if none are fast enough: then ``block_cycles`` counts the lookup's
    own period)."""
    return next((k for k in range(1, channels) if CodeLUT.cycles(1, channels, k) <= interval), channels)


def fold_by_par(plan: HwPlan) -> HwPlan:
    """Every conv's and the FC's fold for the target period (all lanes and channels without a PAR),
    the average pool's lanes (the fewest that keep it off the period of the blocks before it) and a
    code lookup's (the fewest that keep up with the engine whose pixels it reads)."""
    t, par = plan.tables, plan.par
    target = None
    if par is not None:
        target = -(-max(_conv_work(op) * len(op.kept) * len(op.in_channels)
                        for op in t.ops if isinstance(op, ir.Conv)) // par)
    blocks = []
    for b in plan.blocks:
        op = t.op(b.name) if b.ops else None
        if b.kind == Kind.CONV:
            out_ch, in_ch = _channels(t, b.output), len(op.in_channels)
            lanes, simd = (out_ch, in_ch) if target is None else fold(out_ch, in_ch, _conv_work(op), target)
            b = replace(b, lanes=lanes, simd=simd, groups=-(-out_ch // lanes), chunks=-(-in_ch // simd))
        elif b.kind == Kind.FC:
            classes, in_ch = op.weight.shape
            simd = in_ch if target is None else fold(1, in_ch, classes, target)[1]
            b = replace(b, simd=simd, chunks=-(-in_ch // simd))
        elif b.kind == Kind.AVGPOOL:
            period = max([plan.input_cycles] + [c for c in map(block_cycles(t), blocks) if c is not None])
            b = replace(b, lanes=fewest_pool_lanes(op.hw, _channels(t, op.src), period))
        elif b.kind == Kind.LUT:
            producer = next((p for p in blocks if p.output == b.inputs[0][1]), None)
            interval = 1 if producer is None or producer.kind != Kind.CONV else ConvRequant.cycles(
                1, t.op(producer.name).kernel, producer.groups, producer.chunks)  # per output pixel
            b = replace(b, lanes=fewest_lookup_lanes(_channels(t, op.src), interval))
        blocks.append(b)
    return replace(plan, target=target, blocks=tuple(blocks))


def pair_candidates(plan: HwPlan) -> list[Block]:
    """The convs whose PEs can be multiplier pairs (``pe.dsp_pairs_fit``: APoT weights, decoded
    activations), largest first (most PEs, then plan order)."""
    t = plan.tables
    out = []
    for b in plan.blocks:
        if b.kind == Kind.CONV:
            op = t.op(b.name)
            src = t.tensors[op.src].levels
            if dsp_pairs_fit(t.level_set(op.weight_levels), t.level_set(src) if src else IMAGE):
                out.append(b)
    return sorted(out, key=lambda b: -b.lanes * b.simd)


def assign_pairs(plan: HwPlan) -> HwPlan:
    """Of ``dsp_pairs`` multipliers, give the convs pairs of PEs per lane, one round at a time: in
    each round every candidate (``pair_candidates``, largest first) whose lanes still have two
    shift-add PEs gets one more pair per lane if the multipliers left cover its lanes. The
    products and the cycles do not change, only which PEs compute them (fewer in logic)."""
    left, pairs = plan.dsp_pairs, {}
    cands = pair_candidates(plan)
    grew = True
    while grew:
        grew = False
        for b in cands:
            if 2 * (pairs.get(b.name, 0) + 1) <= b.simd and b.lanes <= left:
                pairs[b.name] = pairs.get(b.name, 0) + 1
                left -= b.lanes
                grew = True
    return replace(plan, blocks=tuple(replace(b, pairs=pairs.get(b.name, 0)) for b in plan.blocks))


def size_fifos(plan: HwPlan) -> HwPlan:
    """Every shortcut FIFO's depth. It holds what has entered the residual block but not yet been
    added: at most the first engine's line buffer rows plus one (in shortcut rows), the adding
    engine's line buffer rows (it takes a shortcut pixel as it requantizes the output pixel), and a
    row of slack for the registers between (fork, code lookup), so the fork before it never waits.
    Without an engine reading its source (none in a residual block) it holds a whole map."""
    t = plan.tables
    blocks = []
    for b in plan.blocks:
        if b.kind == Kind.SHORTCUT:
            src = b.inputs[0][1]
            out_hw = -(-t.tensors[src.split("@")[0]].hw // b.stride)
            engines = [r for r, _ in plan.readers(src) if r.kind == Kind.CONV]
            engines += [e for r, _ in plan.readers(src) if r.kind == Kind.LUT
                        for e, _ in plan.readers(r.output) if e.kind == Kind.CONV]
            adders = [r for r, _ in plan.readers(b.output) if r.kind == Kind.CONV]
            depth = out_hw * out_hw
            if engines:
                rows = max(-(-e.slots // b.stride) for e in engines) + max((e.slots for e in adders), default=0) + 2
                depth = min(depth, rows * out_hw)
            b = replace(b, depth=depth)
        blocks.append(b)
    return replace(plan, blocks=tuple(blocks))


def block_cycles(t: Tables):
    """A block's cycles per image, from its fold (None for the shortcut FIFOs: they take a pixel per
    cycle, never the slowest)."""
    def cycles(b: Block) -> int | None:
        op = t.op(b.name) if b.ops else None
        if b.kind == Kind.CONV:
            return ConvRequant.cycles(op.out_hw, op.kernel, b.groups, b.chunks)
        if b.kind == Kind.FC:
            return FullyConnected.cycles(op.weight.shape[0], b.chunks)
        if b.kind == Kind.AVGPOOL:
            return AvgPoolRequant.cycles(op.hw, _channels(t, op.src), b.lanes)
        if b.kind == Kind.MAXPOOL:
            return MaxPool.cycles(t.tensors[op.src].hw)
        if b.kind == Kind.LUT:
            return CodeLUT.cycles(t.tensors[op.src].hw ** 2, _channels(t, op.src), b.lanes)
        return None
    return cycles


def annotate_cycles(plan: HwPlan) -> HwPlan:
    """Every block's cycles per image, PEs and useful MACs; the network's period (one image per
    slowest block, the input's bytes included), its bottleneck, PEs, MACs and utilization."""
    t = plan.tables
    blocks = []
    for b in plan.blocks:
        pes = macs = 0
        if b.kind == Kind.CONV:
            conv, rq = t.op(b.ops[0]), t.op(b.ops[1])
            # the filters the conv has (not the fused add's shortcut-only channels)
            filters = sum(j >= 0 for j in rq.conv_index) if isinstance(rq, ir.Add) else conv.weight.shape[0]
            pes, macs = b.lanes * b.simd, filters * int(conv.weight[0].size) * conv.out_hw ** 2
        elif b.kind == Kind.FC:
            pes, macs = b.simd, int(t.op(b.name).weight.size)
        blocks.append(replace(b, cycles=block_cycles(t)(b), pes=pes, macs=macs))
    period = max([plan.input_cycles] + [b.cycles for b in blocks if b.cycles is not None])
    pes, macs = sum(b.pes for b in blocks), sum(b.macs for b in blocks)
    bottleneck = (("input",) if plan.input_cycles == period else ()) + tuple(
        b.name for b in blocks if b.cycles == period)
    return replace(plan, blocks=tuple(blocks), period=period, bottleneck=bottleneck, pes=pes, macs=macs,
                   utilization=macs / (pes * period))


PASSES = (fuse, insert_fifos, insert_forks, fold_by_par, assign_pairs, size_fifos, annotate_cycles)


def make_plan(tables: Tables, par: int | None, dsp_pairs: int = 0) -> HwPlan:
    """The hardware plan of ``tables`` at ``par`` (None: every conv fully parallel) with ``dsp_pairs``
    multipliers for PE pairs: ``PASSES`` in order."""
    if par is not None and (isinstance(par, bool) or not isinstance(par, int) or par < 1):
        raise ValueError(f"par must be a positive integer or None (fully parallel), got {par!r}")
    if isinstance(dsp_pairs, bool) or not isinstance(dsp_pairs, int) or dsp_pairs < 0:
        raise ValueError(f"dsp_pairs must be a non-negative integer, got {dsp_pairs!r}")
    plan = HwPlan(tables, par, dsp_pairs=dsp_pairs)
    for p in PASSES:
        plan = p(plan)
    return plan


# -- what the plan writes -----------------------------------------------------------------------------

CYCLE_NOTES = (
    "cycles_per_image is the steady-state period with images back to back and the score stream always "
    "ready: one image per slowest block. A block's cycles: conv out_hw^2 * kernel^2 * groups * chunks "
    f"(groups = ceil(channels / lanes), chunks = ceil(in channels / simd)); fc classes * chunks + "
    f"{FullyConnected.LATENCY + 1}; avgpool hw^2 * steps + steps + {AvgPoolRequant.LATENCY + 1} with "
    "steps = ceil(channels / lanes) (its ring of sums turns once per pixel and step, once more per step "
    "into the requant units, then their pipeline and the output beat); maxpool in_hw^2; lut (a "
    f"requant of codes) hw^2 * (ceil(channels / lanes) + {CodeLUT.OVERHEAD}); input 3 bytes "
    "per pixel. utilization = useful MACs / (PEs x cycles_per_image).")


def layers(plan: HwPlan) -> list[dict]:
    """cycles.json's rows: the input, then per block with a cycle model its PEs, MACs, cycles, fold."""
    rows = [{"name": "input", "kind": "bytes", "pes": 0, "macs": 0, "cycles": plan.input_cycles}]
    for b in plan.blocks:
        if b.cycles is None:
            continue
        row = {"name": b.name, "kind": str(b.kind), "pes": b.pes, "macs": b.macs, "cycles": b.cycles}
        if b.kind == Kind.CONV:
            row.update(lanes=b.lanes, simd=b.simd, pairs=b.pairs, groups=b.groups, chunks=b.chunks)
        elif b.kind == Kind.FC:
            row.update(simd=b.simd)
        elif b.kind in (Kind.AVGPOOL, Kind.LUT):
            row.update(lanes=b.lanes)
        rows.append(row)
    return rows


def cycle_model(plan: HwPlan, fit: dict | None = None) -> dict:
    """cycles.json: the analytic cycle model of the plan (the simulations must match it exactly);
    with ``fit`` (``fold_for_device``'s) also the device its fold was chosen for (``device``) and
    ``fit``: the placement margin, the budget it was held to and the plan's estimate."""
    rows = layers(plan)
    for r in rows:
        r["utilization"] = round(r["macs"] / (r["pes"] * plan.period), 4) if r["pes"] else None
    device = {} if fit is None else {"device": fit["device"],
                                     "fit": {k: fit[k] for k in ("margin", "budget", "estimate")}}
    return {**device, 
        "model": plan.tables.model,
        "source": plan.tables.source or {},
        "par": plan.par,
        "dsp_pairs": {"budget": plan.dsp_pairs, "used": plan.pairs_used},
        "target_cycles": plan.target,
        "pes": plan.pes,
        "macs_per_image": plan.macs,
        "cycles_per_image": plan.period,
        "utilization": round(plan.utilization, 4),
        "bottleneck": list(plan.bottleneck),
        "inferences_per_s": {f"{mhz}MHz": round(mhz * 1e6 / plan.period, 1) for mhz in REPORT_MHZ},
        "notes": CYCLE_NOTES,
        "layers": rows,
    }


def probe_map(plan: HwPlan, top: str) -> dict:
    """probes.json: per block in execution order its RTL instance (a submodule of the top level
    ``top``; ``path``: its hierarchical name), the tables' ops it computes and the tensor its output stream carries. ``golden``: that stream is the
    golden model's tensor, one beat per pixel, each an array of the channels' codes of ``width`` bits
    (the first-wrong-block diagnosis compares those); not a shortcut's FIFO nor the FC's scores."""
    t = plan.tables
    blocks = []
    for b in plan.blocks:
        info = t.tensors.get(b.output)
        golden = b.kind != Kind.SHORTCUT and info is not None and info.kind == ir.TensorKind.CODES
        blocks.append({"block": b.name, "instance": b.instance, "path": f"{top}.{b.instance}", "kind": str(b.kind), "ops": list(b.ops),
                       "inputs": [list(i) for i in b.inputs], "tensor": b.output, "golden": golden,
                       "width": Shape.cast(act_code_shape(t.level_set(info.levels))).width if golden else None})
    forks = [{"tensor": f.tensor, "instances": list(f.instances), "readers": [list(r) for r in f.readers]}
             for f in plan.forks]
    return {"model": t.model, "par": plan.par, "top": top, "input": t.input,
            "blocks": blocks, "forks": forks}
