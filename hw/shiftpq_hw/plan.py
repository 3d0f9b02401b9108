"""The hardware plan: layer tables -> the blocks of the accelerator, as explicit passes.

``make_plan(tables, par)`` runs ``PASSES`` in order, each a pure function from one ``HwPlan`` to the
next (nothing is built, nothing is elaborated):

    fuse             one block per conv and the requant or residual add after it, per code lookup
                     (a requant of codes), shortcut, max pool, average pool and its requant, FC
    insert_fifos     a shortcut FIFO before every add whose shortcut is the stream itself (identity)
    insert_forks     a fork chain for every tensor that several blocks read
    fold             lanes x simd of every conv and simd of the FC (``fold``: the fewest PEs that meet
                     the target period, largest conv's MACs / PAR), lanes of the average pool (the
                     fewest that keep it off the period the blocks before it set)
    size_fifos       every shortcut FIFO's depth, from the line buffers of the engines around it
    annotate_cycles  cycles per image, PEs and MACs of every block; the period, bottleneck, utilization

The result, ``HwPlan``, is the single home of the cycle model: ``cycle_model`` (cycles.json) and
``probe_map`` (probes.json) are written from it, ``Network(plan)`` elaborates it, the HLS backend
renders it and the simulators read the two files. The per-block cycle formulas are the blocks' own
static functions (``ConvRequant.cycles``, ``FullyConnected.cycles``, ``AvgPoolRequant.cycles``,
``MaxPool.cycles``), which describe their schedules; the plan is the only caller that sizes a network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum

from amaranth.hdl import Fragment, Shape

from shiftpq import ir
from shiftpq.errors import ShiftPQError
from shiftpq.ir import Tables

from .blocks import AvgPoolRequant, FullyConnected, MaxPool
from .conv import ConvRequant
from .pe import act_code_shape

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
    lanes: int | None = None  # conv: output channels at a time; avgpool: channels summed at a time
    simd: int | None = None  # conv, fc: input channels at a time
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


def fold_by_par(plan: HwPlan) -> HwPlan:
    """Every conv's and the FC's fold for the target period (all lanes and channels without a PAR),
    then the average pool's lanes: the fewest that keep it off the period of the blocks before it."""
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
        blocks.append(b)
    return replace(plan, target=target, blocks=tuple(blocks))


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
    """A block's cycles per image, from its fold (None for the blocks that pass a stream on: code
    lookups, shortcut FIFOs; they take a pixel per cycle, never the slowest)."""
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


PASSES = (fuse, insert_fifos, insert_forks, fold_by_par, size_fifos, annotate_cycles)


def make_plan(tables: Tables, par: int | None) -> HwPlan:
    """The hardware plan of ``tables`` at ``par`` (None: every conv fully parallel): ``PASSES`` in order."""
    if par is not None and (isinstance(par, bool) or not isinstance(par, int) or par < 1):
        raise ValueError(f"par must be a positive integer or None (fully parallel), got {par!r}")
    plan = HwPlan(tables, par)
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
    "into the requant units, then their pipeline and the output beat); maxpool in_hw^2; input 3 bytes "
    "per pixel. utilization = useful MACs / (PEs x cycles_per_image).")


def layers(plan: HwPlan) -> list[dict]:
    """cycles.json's rows: the input, then per block with a cycle model its PEs, MACs, cycles, fold."""
    rows = [{"name": "input", "kind": "bytes", "pes": 0, "macs": 0, "cycles": plan.input_cycles}]
    for b in plan.blocks:
        if b.cycles is None:
            continue
        row = {"name": b.name, "kind": str(b.kind), "pes": b.pes, "macs": b.macs, "cycles": b.cycles}
        if b.kind == Kind.CONV:
            row.update(lanes=b.lanes, simd=b.simd, groups=b.groups, chunks=b.chunks)
        elif b.kind == Kind.FC:
            row.update(simd=b.simd)
        elif b.kind == Kind.AVGPOOL:
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


# -- what the plan costs on a device (device-aware folding) -------------------------------------------
#
# ``estimate(plan)`` sizes a plan without building its netlist: logic cells and flip-flops from the
# linear model ``COST`` over the plan's counts (``cost_features``), block RAMs and DSPs counted from
# the memories and multipliers the blocks declare (``memories``, ``multipliers``) by Yosys' mapping
# rules for the ECP5 (``bram_cells``, ``dsp_cells``). ``fold_for_device`` picks the fastest plan whose
# estimate fits a device within ``MARGIN`` of its logic cells (the rest left to placement). The coefficients are
# fitted to Yosys' ``stat -json`` of generated designs by bench/fold_cost.py, which prints this table
# again after a change to the engines; docs/hw-round5-design.md, "Device-aware folding", says where
# each number comes from and how close the estimate is.

COST = {  # per unit of cost_features: logic cells (min_logic_cells of Yosys' ECP5 cells) and flip-flops
    # bench/fold_cost.py: non-negative least squares over the designs of bench/results/fold_cost-ecp5.json
    # (tiny, tinyvgg, ResNet-20 at several PARs; Yosys 0.70), within 5 % of every one of them
    "logic": {"shift_add_pes": 75.8, "lanes": 0.0, "engines": 417.5, "stream_bits": 3.8, "rom_luts": 0.7, "fixed": 0.0},
    "ffs": {"shift_add_pes": 14.1, "lanes": 69.1, "engines": 195.9, "stream_bits": 4.0, "rom_luts": 0.9,
            "fixed": 431.2},
}
# placement margin: the share of a device's logic cells an estimate may use, by Yosys' count (the capacity
# check's, synth.min_logic_cells). ResNet-20 at PAR 22 has 65,704 by Yosys' count (78.6 % of an ECP5-85k);
# nextpnr packed it into 68,700 TRELLIS_COMB (+ 900 LUT-RAM write ports: 69,600, 5.9 % more than Yosys'
# count, 83 % of the device) and routed it (router2, seeds 1-3, 30-40 min); PAR 16 routed at 69 %; PAR 32
# has 78,516 by Yosys' count (94 %) and was never placed. Nothing at 90 % or more has routed here: 80 % of
# the device by Yosys' count is about 85 % by nextpnr's, and the estimate's own error (4 %) is inside the rest.
MARGIN = 0.80


@dataclass(frozen=True)
class Mem:
    """A memory a block declares: ``width`` its bits that vary between rows (Yosys drops the columns
    that hold one value in every row of a constant table), ``rom`` constant (no write port),
    ``sync`` read through a register (an asynchronous read cannot go to block RAM)."""
    block: str
    name: str
    width: int
    depth: int
    rom: bool
    sync: bool = True
    declared: int = 0  # the width the generator declares (a multiplier's operand is that wide)


def _varying_bits(mem) -> int:
    """Columns of a constant table (padded with zero rows to its depth) that do not hold the same bit
    in every row: Yosys keeps only those (``opt_mem``)."""
    mask = (1 << Shape.cast(mem.shape).width) - 1
    words = [int(w) & mask for w in mem.init] + [0] * (mem.depth - len(mem.init))
    diff = 0
    for w in words:
        diff |= w ^ words[0]
    return bin(diff).count("1")


def _declared(block: str, module, names) -> list[Mem]:
    """The memories ``names`` of a block's module (one level of elaboration: the block's own module)."""
    out = []
    for name in names:
        mem = module.submodules[name]
        width = Shape.cast(mem.shape).width
        if mem.write_ports:
            sync = all(p.domain != "comb" for p in mem.read_ports)
            out.append(Mem(block, name, width, mem.depth, rom=False, sync=sync, declared=width))
        else:
            out.append(Mem(block, name, _varying_bits(mem), mem.depth, rom=True, declared=width))
    return out


def _requant_tables(unit: str, threshold_levels: int | None, shortcut: bool) -> list[str]:
    """The constant tables of one requant unit (requant.threshold_search: the sign and one per search
    level; requant.affine_unit: a multiplier per input, the bias and the shift)."""
    if threshold_levels is not None:
        return [f"{unit}_neg"] + [f"{unit}_l{k}" for k in range(threshold_levels)]
    return [f"{unit}_mul0"] + ([f"{unit}_mul1"] if shortcut else []) + [f"{unit}_bias", f"{unit}_shift"]


def memories(plan: HwPlan) -> list[Mem]:
    """Every memory of the plan's design, with the width and depth the generator gives it: the
    engines' line buffers, weight memories and requant tables, the shortcut FIFOs, the max pools'
    rows, the average pool's tables and the FC's weights. Each block's own module is elaborated for
    its tables' contents (a few seconds for ResNet-20; no netlist is built)."""
    from .network import components  # network.py builds on the plan
    from .requant import search_levels
    t = plan.tables
    comps = components(plan)
    out = []
    for b in plan.blocks:
        c, names = comps.get(b.name), []
        if b.kind not in (Kind.CONV, Kind.FC, Kind.MAXPOOL, Kind.AVGPOOL):
            if b.kind == Kind.SHORTCUT:  # SyncFIFOBuffered: a memory of depth - 1 and its output register
                width = 8 * len(t.tensors[b.inputs[0][1].split("@")[0]].channels)  # ShortcutPath's stream
                out.append(Mem(b.name, "fifo", width, b.depth - 1, rom=False, declared=width))
            if c is not None:
                Fragment.get(c, None)  # used: no unused-elaboratable warning
            continue
        if b.kind == Kind.CONV:
            rq = t.op(b.ops[1])
            th = isinstance(rq, ir.Requant) and rq.mode == ir.RequantMode.THRESHOLD
            names = ["rows", "wmem"] + [n for u in range(c.requant_units) for n in _requant_tables(
                f"rq{u}", search_levels(rq.thresholds.shape[1]) if th else None, isinstance(rq, ir.Add))]
        elif b.kind == Kind.FC:
            names = ["wmem"]
        elif b.kind == Kind.MAXPOOL:
            names = ["rows"]
        elif b.kind == Kind.AVGPOOL:
            names = [n for lane in range(b.lanes) for n in _requant_tables(f"pool{lane}", None, False)]
        module = c.elaborate(None)  # the block's own module: its memories are its submodules
        out += _declared(b.name, module, names)
        Fragment.get(module, None)  # both used (Amaranth's public way): no unused-elaboratable warnings
        Fragment.get(c, None)
    return out


# Yosys' memory_libmap (passes/memory/memory_libmap.cc) with the ECP5 libraries (share/lattice/
# brams_16kd.txt, lutrams_trellis.txt), as it treats the memories the generator makes (one write port
# with one enable or none, one read port, no transparency): a memory stays in logic at
# int(bits x LOGIC_COST) (1/16 a bit for a constant table, 1 for a RAM) unless a RAM cell's cost is
# lower. A cell's cost: its library cost (EBR_COST; LUTRAM_COST; LUT RAM takes no constant tables:
# prune_rom) times the cells, plus 0.5 a bit for the read multiplexer and 0.5 per write enable for the
# decoder when the depth spans several cells, plus 2 (one read port of its own), plus 12 for a RAM in
# block RAM (its read port reads the old word in the cycle of a write, which the ECP5 libraries do not
# declare: memory_libmap emulates it, 3 points for the write port and 3 for the read port, x 2).
# Block RAM shapes: (bits a word, words) of one DP16KD, 36 x 512 only as a simple dual-port RAM
# (PDPW16KD). Checked memory by memory against Yosys' log for eight designs (bench/fold_cost.py).
EBR_SHAPES = ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512))
LUTRAM_SHAPE = (4, 16)  # TRELLIS_DPR16X4
EBR_COST, LUTRAM_COST, LOGIC_COST_ROM, LOGIC_COST_RAM, READ_PORT_COST, READ_FIRST_COST = 128, 4, 1 / 16, 1, 2, 12


def _ram_cost(mem: Mem, unit: int, words: int, cost: int, byte: int) -> tuple[float, int]:
    """(memory_libmap's cost, cells) of ``mem`` in cells of ``unit`` bits x ``words``: the word padded
    to whole write bytes (none for a constant table), the depth in whole cells."""
    byte = 1 if mem.rom else min(byte, unit)
    mult_a = -(-mem.depth // words)
    cells = -(-mult_a * (-(-mem.width // byte) * byte) // unit)
    mux = 0.5 * (mult_a - 1) * mem.width + (0.5 * mult_a if mult_a > 1 and not mem.rom else 0)
    read_first = READ_FIRST_COST if cost == EBR_COST and not mem.rom else 0
    return cells * cost + mux + READ_PORT_COST + read_first, cells


def bram_cells(mem: Mem) -> tuple[str, int]:
    """Where Yosys puts a memory on an ECP5 and how many cells it takes: ("bram", DP16KDs),
    ("lutram", 16 x 4 LUT RAMs) or ("logic", 0), by memory_libmap's costs; logic on a tie."""
    if mem.width == 0:
        return "logic", 0  # a table of one value: a constant
    best, kind, cells = int(mem.width * mem.depth * (LOGIC_COST_ROM if mem.rom else LOGIC_COST_RAM)), "logic", 0
    options = [("bram", *_ram_cost(mem, w, d, EBR_COST, 9)) for w, d in EBR_SHAPES if mem.sync]
    if not mem.rom:
        options.append(("lutram", *_ram_cost(mem, *LUTRAM_SHAPE, LUTRAM_COST, 4)))
    for name, cost, n in options:
        if cost < best:
            best, kind, cells = cost, name, n
    return kind, cells


def dsp_cells(a: int, b: int) -> int:
    """MULT18X18Ds of a signed ``a`` x ``b``-bit product: Yosys splits each operand into 18-bit pieces
    (techmap mul2dsp, DSP_A/B_MAXWIDTH 18) and leaves a partial product with a piece under 2 bits in
    logic (DSP_A/B_MINWIDTH 2): a 19 x 25 product takes 2, not 4."""
    def pieces(w: int) -> int:
        return w // 18 + (w % 18 >= 2)
    return pieces(a) * pieces(b)


def _signed_width(shape) -> int:
    """An operand's width in a signed product (an unsigned value gains a sign bit)."""
    shape = Shape.cast(shape)
    return shape.width + (not shape.signed)


def multipliers(plan: HwPlan, mems: list[Mem]) -> list[tuple[str, int, int]]:
    """(block, a bits, b bits) of every ``*`` in the design: a PE of a uniform (8-bit) layer (the stem,
    the FC), and each requant unit's fixed-point multiplies (affine_unit: the accumulator, and a fused
    add's shortcut code, times its table's constant; the average pool's sums likewise)."""
    from shiftpq import intops

    from .pe import IMAGE, weight_code_shape
    t = plan.tables
    table = {(m.block, m.name): m.declared for m in mems}
    out = []
    for b in plan.blocks:
        op = t.op(b.ops[0]) if b.ops else None
        if b.kind in (Kind.CONV, Kind.FC):
            wl = t.level_set(op.weight_levels)
            src = t.tensors[op.src]
            act = act_code_shape(t.level_set(src.levels) if src.levels else IMAGE)
            if wl.kind != "apot":
                out += [(b.name, _signed_width(act), weight_code_shape(wl).width)] * b.pes
        if b.kind == Kind.CONV:
            rq = t.op(b.ops[1])
            acc = intops.signed_bits(-op.partial_bound, op.partial_bound)
            for u in range(-(-b.lanes // (op.kernel ** 2 * b.chunks))):  # LaneRequant.units
                if (b.name, f"rq{u}_mul0") in table:
                    out.append((b.name, acc, table[b.name, f"rq{u}_mul0"]))
                if (b.name, f"rq{u}_mul1") in table:
                    sc = t.level_set(t.tensors[rq.shortcut_src].levels)
                    out.append((b.name, _signed_width(act_code_shape(sc)), table[b.name, f"rq{u}_mul1"]))
        elif b.kind == Kind.AVGPOOL:
            levels = t.level_set(t.tensors[op.src].levels)
            ring = max(1, (max(levels.ints) * op.hw ** 2).bit_length())  # AvgPoolRequant's sums, unsigned
            out += [(b.name, ring + 1, table[b.name, f"pool{lane}_mul0"]) for lane in range(b.lanes)]
    return out


def cost_features(plan: HwPlan, mems: list[Mem] | None = None) -> dict[str, float]:
    """The counts ``COST`` prices: shift-add PEs (a product, its adder-tree input and register each),
    conv lanes (an adder tree's root, an accumulator, a held sum), conv engines (line buffer and
    sequencer control, the requant units), ``stream_bits`` (every block's output pixel in bits: the
    registers and multiplexers a pixel's width costs in every block, which grow with the channels,
    not the fold), the look-up tables Yosys builds for the constant tables it keeps out of block
    RAM (``rom_luts``: their bits / 16, a LUT4's) and one (``fixed``: the pool's control, the FC,
    the input). ``mems``: ``memories(plan)``, when known (otherwise ``rom_luts`` is left out: the fold
    search prices the tables once, for the candidates)."""
    t = plan.tables
    convs = [b for b in plan.blocks if b.kind == Kind.CONV]
    apot = [b for b in convs if t.level_set(t.op(b.name).weight_levels).kind == "apot"]
    stream = 0
    for b in plan.blocks:
        info = t.tensors.get(b.output.split("@")[0])  # a shortcut FIFO's output: its source's pixels
        if info is not None and info.kind == ir.TensorKind.CODES:
            stream += len(info.channels) * Shape.cast(act_code_shape(t.level_set(info.levels))).width
    f = {"shift_add_pes": sum(b.pes for b in apot), "lanes": sum(b.lanes for b in convs), "engines": len(convs),
         "stream_bits": stream, "rom_luts": 0.0, "fixed": 1}
    if mems is not None:
        f["rom_luts"] = sum(m.width * m.depth for m in mems if m.rom and bram_cells(m)[0] == "logic") / 16
    return f


def _linear(kind: str, features: dict[str, float]) -> int:
    return round(sum(COST[kind][k] * v for k, v in features.items()))


def estimate(plan: HwPlan, mems: list[Mem] | None = None) -> dict[str, int]:
    """The plan's size on an ECP5: ``logic`` (logic cells as ``synth.min_logic_cells`` counts Yosys'
    cells: the ``COST`` model plus six per 16 x 4 LUT RAM), ``ffs``, ``brams`` (DP16KD), ``lutrams``
    (TRELLIS_DPR16X4) and ``dsps`` (MULT18X18D); the last three counted as Yosys maps them."""
    mems = memories(plan) if mems is None else mems
    placed = [bram_cells(m) for m in mems]
    lutrams = sum(n for kind, n in placed if kind == "lutram")
    f = cost_features(plan, mems)
    return {"logic": _linear("logic", f) + 6 * lutrams, "ffs": _linear("ffs", f),
            "brams": sum(n for kind, n in placed if kind == "bram"), "lutrams": lutrams,
            "dsps": sum(dsp_cells(a, b) for _, a, b in multipliers(plan, mems))}


def device_budget(device: str, margin: float | None = None) -> dict[str, int]:
    """What a plan may use of ``device`` (synth.DEVICES' capacities): ``margin`` of its logic cells,
    as many flip-flops (an ECP5 slice holds two LUT4s and two flip-flops), all its block RAMs and DSPs."""
    from .synth import DEVICES  # synth.py builds on gen.py, which builds on the plan
    margin = MARGIN if margin is None else margin
    if device not in DEVICES or DEVICES[device].family != "ecp5":
        raise ShiftPQError(f"unknown device {device!r} for the fold's estimate; expected one of "
                           f"{', '.join(d for d in DEVICES if DEVICES[d].family == 'ecp5')}")
    cap = DEVICES[device].capacity
    logic = int(cap["logic"] * margin)
    return {"logic": logic, "ffs": logic, "brams": cap["brams"], "dsps": cap["dsps"]}


RESOURCE_NAMES = {"logic": "logic cells", "ffs": "flip-flops", "brams": "block RAMs (DP16KD)",
                  "dsps": "DSP multipliers (MULT18X18D)"}


def _over(est: dict, budget: dict) -> list[str]:
    return [k for k in budget if est[k] > budget[k]]


def fold_for_device(tables: Tables, device: str, margin: float | None = None) -> tuple[HwPlan, dict]:
    """The plan with the fewest cycles per image whose ``estimate`` fits ``device_budget`` (on a tie
    the smallest PAR: the fewest PEs), and cycles.json's ``fit``: the device, the margin, the budget
    and the estimate. PAR runs from 1 to the largest conv's PEs unfolded; the logic model is searched
    first (pure, milliseconds a plan), the memories and multipliers counted for the candidates
    (seconds). Nothing fits: ShiftPQError, one line naming the device, the limiting resources and
    their numbers at PAR 1."""
    margin = MARGIN if margin is None else margin
    budget = device_budget(device, margin)
    convs = [op for op in tables.ops if isinstance(op, ir.Conv)]
    top = max(len(op.kept) * len(op.in_channels) for op in convs)  # the largest conv's PEs, unfolded

    def quick_fits(par: int) -> bool:  # the logic model without the constant tables' LUTs (a lower bound)
        f = cost_features(make_plan(tables, par))
        return _linear("logic", f) <= budget["logic"] and _linear("ffs", f) <= budget["ffs"]

    def full(par: int) -> tuple[HwPlan, dict]:
        plan = make_plan(tables, par)
        return plan, estimate(plan)

    def largest(fits, lo: int, hi: int) -> int | None:
        """The largest PAR in [lo, hi] that fits (fits is monotone: more PAR, more PEs)."""
        if fits(hi):
            return hi
        if not fits(lo):
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    best = largest(quick_fits, 1, top)
    if best is not None:
        best = largest(lambda p: not _over(full(p)[1], budget), 1, best)
    if best is None:
        plan, est = full(1)
        over = _over(est, budget)
        why = ", ".join(f"{est[k]:,} {RESOURCE_NAMES[k]} > {budget[k]:,}" for k in over) or \
            f"the logic model alone needs more than {budget['logic']:,} logic cells"
        raise ShiftPQError(f"{tables.model} fits no fold on {device}: at PAR 1 ({plan.pes} PEs, the least) the "
                           f"estimate needs {why} (the budget: {margin:.0%} of the logic cells, every block RAM and "
                           f"DSP); choose a larger device")
    period = make_plan(tables, best).period  # the smallest PAR with the same cycles per image: fewest PEs
    lo, hi = 1, best
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if make_plan(tables, mid).period == period else (mid + 1, hi)
    plan, est = full(lo)
    return plan, {"device": device, "margin": margin, "budget": budget, "estimate": est}
