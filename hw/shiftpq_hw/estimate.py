"""What a hardware plan costs on a device, and device-aware folding (``shiftpq gen --device``).

``estimate(plan)`` sizes a plan without building its netlist: logic cells and flip-flops from the
linear model ``COST`` over the plan's counts (``cost_features``), block RAMs and DSPs counted from
the memories and multipliers the blocks declare (``memories``, ``multipliers``) by Yosys' mapping
rules for the ECP5 (``bram_cells``, ``dsp_cells``). ``fold_for_device`` picks the fastest plan whose
estimate fits a device within ``MARGIN`` of its logic cells (the rest left to placement). The coefficients are
fitted to Yosys' ``stat -json`` of generated designs by bench/fold_cost.py, which prints this table
again after a change to the engines; docs/hw-round5-design.md, "Device-aware folding", says where
each number comes from and how close the estimate is.
"""
from __future__ import annotations

import math

from amaranth.hdl import Fragment, Shape, signed, unsigned

from shiftpq import intops, ir
from shiftpq.errors import ShiftPQError
from shiftpq.ir import Tables

from .memmap import NO_COLLISION, Mem, bram_cells, varying_bits
from .network import components
from .pe import IMAGE, act_code_shape, dsp_pair_layout, weight_code_shape
from .plan import HwPlan, Kind, make_plan
from .requant import dsp_products, search_levels


COST = {  # per unit of cost_features: logic cells (min_logic_cells of Yosys' ECP5 cells) and flip-flops
    # bench/fold_cost.py: non-negative least squares over the designs of bench/results/fold_cost-ecp5.json
    # (tiny, tinyvgg, ResNet-20 at several PARs, three of them with multiplier pairs; Yosys 0.70): within
    # 1 % of every ResNet-20 design (left out of the fit: 4.3 %), 2 % of the tiny ones, 11 % of tinyvgg's
    "logic": {"shift_add_pes": 64.2, "dsp_pairs": 13.1, "lanes": 43.5, "engines": 384.8,
              "stream_bits": 2.9, "rom_luts": 1.4, "fixed": 400.7},
    "ffs": {"shift_add_pes": 19.6, "dsp_pairs": 3.0, "lanes": 107.6, "engines": 234.2,
            "stream_bits": 4.8, "rom_luts": 3.2, "fixed": 464.1},
}
# placement margin: the share of a device's logic cells an estimate may use, by Yosys' count (the capacity
# check's, synth.min_logic_cells). ResNet-20 at PAR 22 had 65,704 by Yosys' count (78.6 % of an ECP5-85k;
# 64,700 in the eighth round); nextpnr packed it into 68,700 TRELLIS_COMB (+ 900 LUT-RAM write ports:
# 69,600, 5.9 % more than Yosys' count, 83 % of the device) and routed it (router2, seeds 1-3, 30-40 min;
# in the eighth round, with 57,162 FFs, seed 1 did not route); PAR 16 routed at 69 %; PAR 32 has 78,516 by
# Yosys' count (94 %) and was never placed. Nothing at 90 % or more has routed here: 80 % of the device by
# Yosys' count is about 85 % by nextpnr's, and the estimate's own error (4 %) is inside the rest.
MARGIN = 0.80
# the share of a device's DSP sites a fold's multipliers may use when it gives the free ones to multiplier
# pairs (``fold_for_device``'s ``pairs``): on the ECP5-85k 128 of 156 (82 %: PAR 29 with 78 pairs) routed on
# every seed; 148 (95 %: PAR 29 with 98 pairs) on one seed of three, 155 (99 %: PAR 31 and 34) on none
# (docs/hw-round5-design.md sections 7, 8 and 22)
PAIR_DSP_SHARE = 0.82


def _declared(block: str, module, names) -> list[Mem]:
    """The memories ``names`` of a block's module (one level of elaboration: the block's own module);
    a table built in parts (``memmap.SplitRom``: submodules ``<name>0``, ``<name>1``, ...) is a memory
    of that name per part."""
    out = []
    for name in names:
        try:
            parts = [module.submodules[name]]
        except AttributeError:
            parts = [module.submodules[f"{name}0"], module.submodules[f"{name}1"]]
            for j in range(2, 4):
                try:
                    parts.append(module.submodules[f"{name}{j}"])
                except AttributeError:
                    break
        for mem in parts:
            width = Shape.cast(mem.shape).width
            if mem.write_ports:
                sync = all(p.domain != "comb" for p in mem.read_ports)
                out.append(Mem(block, name, width, mem.depth, rom=False, sync=sync, declared=width,
                               no_collision=NO_COLLISION.items() <= mem.attrs.items()))
            else:
                out.append(Mem(block, name, varying_bits(width, mem.init, mem.depth), mem.depth, rom=True,
                               declared=width))
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
    rows, the average pool's tables and the FC's weights and biases. Each block's own module is elaborated for
    its tables' contents (a few seconds for ResNet-20; no netlist is built)."""
    t = plan.tables
    comps = components(plan)
    out = []
    for b in plan.blocks:
        c, names = comps.get(b.name), []
        if b.kind not in (Kind.CONV, Kind.FC, Kind.MAXPOOL, Kind.AVGPOOL):
            if b.kind == Kind.SHORTCUT:  # ShortcutPath: a memory of depth pixels and its output register
                width = 8 * len(t.tensors[b.inputs[0][1].split("@")[0]].channels)  # ShortcutPath's stream
                out.append(Mem(b.name, "fifo", width, b.depth, rom=False, declared=width, no_collision=True))
            if c is not None:
                Fragment.get(c, None)  # used: no unused-elaboratable warning
            continue
        if b.kind == Kind.CONV:
            rq = t.op(b.ops[1])
            th = isinstance(rq, ir.Requant) and rq.mode == ir.RequantMode.THRESHOLD
            names = ["rows", "wmem"] + [n for u in range(c.requant_units) for n in _requant_tables(
                f"rq{u}", search_levels(rq.thresholds.shape[1]) if th else None, isinstance(rq, ir.Add))]
        elif b.kind == Kind.FC:
            names = ["wmem", "fc_bias"]
        elif b.kind == Kind.MAXPOOL:
            names = ["rows"]
        elif b.kind == Kind.AVGPOOL:
            names = [n for lane in range(b.lanes) for n in _requant_tables(f"pool{lane}", None, False)]
        module = c.elaborate(None)  # the block's own module: its memories are its submodules
        out += _declared(b.name, module, names)
        Fragment.get(module, None)  # both used (Amaranth's public way): no unused-elaboratable warnings
        Fragment.get(c, None)
    return out


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
    add's shortcut code, times its table's constant; the average pool's sums likewise; each in its
    multiplier-sized parts, ``requant.dsp_products``)."""

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
            elif b.pairs:  # two products per 18x18 multiplier (pe.dsp_pair)
                lay = dsp_pair_layout(wl, t.level_set(src.levels))
                out += [(b.name, lay["a_bits"], lay["b_bits"])] * (b.lanes * b.pairs)
        if b.kind == Kind.CONV:
            rq = t.op(b.ops[1])
            acc = intops.signed_bits(-op.partial_bound, op.partial_bound)
            for u in range(-(-b.lanes // (op.kernel ** 2 * b.chunks))):  # LaneRequant.units
                if (b.name, f"rq{u}_mul0") in table:
                    out += [(b.name, *w) for w in dsp_products(signed(acc), signed(table[b.name, f"rq{u}_mul0"]))]
                if (b.name, f"rq{u}_mul1") in table:
                    sc = t.level_set(t.tensors[rq.shortcut_src].levels)
                    mul1 = signed(table[b.name, f"rq{u}_mul1"])
                    out += [(b.name, *w) for w in dsp_products(act_code_shape(sc), mul1)]
        elif b.kind == Kind.AVGPOOL:
            levels = t.level_set(t.tensors[op.src].levels)
            ring = max(1, (max(levels.ints) * op.hw ** 2).bit_length())  # AvgPoolRequant's sums, unsigned
            out += [(b.name, *w) for lane in range(b.lanes)
                    for w in dsp_products(unsigned(ring), signed(table[b.name, f"pool{lane}_mul0"]))]
    return out


def cost_features(plan: HwPlan, mems: list[Mem] | None = None) -> dict[str, float]:
    """The counts ``COST`` prices: shift-add PEs (a product, its adder-tree input and register each),
    multiplier pairs (``dsp_pairs``: a pair's weight field, its middle field and borrow bit into the
    tree), conv lanes (an adder tree's root, an accumulator, a held sum), conv engines (line buffer
    and sequencer control, the requant units), ``stream_bits`` (every block's output pixel in bits:
    the registers and multiplexers a pixel's width costs in every block, which grow with the
    channels, not the fold), the look-up tables Yosys builds for the constant tables it keeps out of
    block RAM (``rom_luts``: their bits / 16, a LUT4's) and one (``fixed``: the pool's control, the
    FC, the input). ``mems``: ``memories(plan)``, when known (otherwise ``rom_luts`` is left out: the
    fold search prices the tables once, for the candidates)."""
    t = plan.tables
    convs = [b for b in plan.blocks if b.kind == Kind.CONV]
    apot = [b for b in convs if t.level_set(t.op(b.name).weight_levels).kind == "apot"]
    stream = 0
    for b in plan.blocks:
        info = t.tensors.get(b.output.split("@")[0])  # a shortcut FIFO's output: its source's pixels
        if info is not None and info.kind == ir.TensorKind.CODES:
            stream += len(info.channels) * Shape.cast(act_code_shape(t.level_set(info.levels))).width
    f = {"shift_add_pes": sum(b.pes for b in apot) - 2 * plan.pairs_used, "dsp_pairs": plan.pairs_used,
         "lanes": sum(b.lanes for b in convs), "engines": len(convs),
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


def fold_for_device(tables: Tables, device: str, margin: float | None = None,
                    pairs: int = 0) -> tuple[HwPlan, dict]:
    """The plan with the fewest cycles per image whose ``estimate`` fits ``device_budget`` (on a tie
    the smallest PAR: the fewest PEs), and cycles.json's ``fit``: the device, the margin, the budget
    and the estimate. ``pairs``: at most this many of the DSPs the plan leaves free compute pairs of
    PEs (``plan.assign_pairs``), which shrinks the logic a fold needs (0, the default: none), up to
    ``PAIR_DSP_SHARE`` of the device's DSPs in all (designs with more have not routed on every seed).
    PAR runs from 1 to the largest conv's PEs unfolded; the logic model is searched first (pure,
    milliseconds a plan; with the most pairs any PAR could have, a lower bound), the memories and
    multipliers counted for the candidates (seconds). Nothing fits: ShiftPQError, one line naming
    the device, the limiting resources and their numbers at PAR 1."""
    margin = MARGIN if margin is None else margin
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 0:
        raise ValueError(f"pairs must be a non-negative integer, got {pairs!r}")
    budget = device_budget(device, margin)
    convs = [op for op in tables.ops if isinstance(op, ir.Conv)]
    top = max(len(op.kept) * len(op.in_channels) for op in convs)  # the largest conv's PEs, unfolded
    pair_dsps = math.ceil(PAIR_DSP_SHARE * budget["dsps"])  # the DSPs a plan with pairs may use in all
    most = min(pairs, pair_dsps)  # pairs any plan may get

    def quick_fits(par: int) -> bool:  # the logic model without the constant tables' LUTs (a lower bound)
        fs = [cost_features(make_plan(tables, par, n)) for n in {0, most}]
        return all(min(_linear(kind, f) for f in fs) <= budget[kind] for kind in ("logic", "ffs"))

    def full(par: int) -> tuple[HwPlan, dict]:
        """The plan at ``par`` with as many pairs as the DSPs it leaves free allow (and ``pairs``)."""
        plan = make_plan(tables, par)
        est = estimate(plan)
        free = min(most, pair_dsps - est["dsps"])
        if free > 0:
            paired = make_plan(tables, par, free)
            if any(b.pairs for b in paired.blocks):
                plan, est = paired, estimate(paired)
        return plan, est

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
    for par in range(lo, best + 1):  # with pairs a smaller PAR of that period may get fewer of them
        plan, est = full(par)
        if not _over(est, budget):
            break
    return plan, {"device": device, "margin": margin, "budget": budget, "estimate": est}
