"""The hardware plan's passes (hw/shiftpq_hw/plan.py), each on a tiny random network, and the cycle
model they give the shipped ResNet-20 (the values of cycles.json before the plan had its own module)."""
from __future__ import annotations

import dataclasses

import pytest

from shiftpq import ir
from shiftpq.export import export_model
from shiftpq_hw.blocks import AvgPoolRequant, CodeLUT
from shiftpq_hw.conv import ConvRequant
from shiftpq_hw.plan import (PASSES, HwPlan, Kind, annotate_cycles, assign_pairs, cycle_model, fewest_pool_lanes,
                             fold_by_par, fuse, insert_fifos, insert_forks, make_plan, pair_candidates, size_fifos)
from shiftpq.testnets import random_net


@pytest.fixture(scope="module")
def tiny():
    return export_model(random_net(4), {"path": "random"})


def test_passes_run_in_their_listed_order_and_are_pure(tiny):
    assert PASSES == (fuse, insert_fifos, insert_forks, fold_by_par, assign_pairs, size_fifos, annotate_cycles)
    plan = HwPlan(tiny, 6, dsp_pairs=3)
    for p in PASSES:
        before, snapshot = plan, dataclasses.replace(plan)
        plan = p(plan)
        assert before == snapshot and plan != before  # a new plan; the one it was given is untouched
    assert plan == make_plan(tiny, 6, 3)
    with pytest.raises(ValueError, match="par must be a positive integer"):
        make_plan(tiny, 0)
    with pytest.raises(ValueError, match="dsp_pairs must be a non-negative integer"):
        make_plan(tiny, 6, -1)


@pytest.mark.parametrize("budget", [0, 1, 3, 5, 7, 1000])
def test_assign_pairs_spends_at_most_the_budget_on_4_bit_convs(tiny, budget):
    """Multiplier pairs per lane: within the budget, at most simd // 2 per lane, only in the convs
    whose products fit (not the 8-bit stem), spread a round at a time (largest conv first); the
    fold, the cycles and the PE count do not change."""
    plan, plain = make_plan(tiny, 6, budget), make_plan(tiny, 6)
    cands = {b.name for b in pair_candidates(plain)}
    assert "stem" not in cands and len(cands) >= 3
    used = plan.pairs_used
    assert used <= budget
    for b, p in zip(plan.blocks, plain.blocks):
        assert dataclasses.replace(b, pairs=0) == p
        assert b.pairs == 0 or (2 * b.pairs <= b.simd and b.name in cands)
    # nothing left that the budget could still pay for
    assert all(2 * (b.pairs + 1) > b.simd or b.lanes > budget - used for b in plan.blocks if b.name in cands)
    assert (plan.period, plan.pes) == (plain.period, plain.pes)
    assert cycle_model(plan)["dsp_pairs"] == {"budget": budget, "used": used}


def test_fuse_gives_every_op_one_block(tiny):
    plan = fuse(HwPlan(tiny, None))
    ops = [o for b in plan.blocks for o in b.ops]
    assert sorted(ops) == sorted(op.name for op in tiny.ops)  # each op in exactly one block
    for b in plan.blocks:
        first = tiny.op(b.ops[0])
        if b.kind == Kind.CONV:  # a conv and the requant or add reading its accumulators
            second = tiny.op(b.ops[1])
            assert isinstance(first, ir.Conv) and isinstance(second, (ir.Requant, ir.Add)) and b.output == second.dst
            assert first.dst in second.inputs
            assert [p for p, _ in b.inputs] == (["i", "r"] if isinstance(second, ir.Add) else ["i"])
            assert b.slots == ConvRequant.line_buffer_slots(first.kernel, first.stride)
    assert plan.input_cycles == 3 * 32 * 32


def test_insert_fifos_puts_a_fifo_on_an_identity_shortcut(tiny):
    fused = fuse(HwPlan(tiny, None))
    plan = insert_fifos(fused)
    new = [b for b in plan.blocks if b not in fused.blocks and b.kind == Kind.SHORTCUT]
    assert new, "the tiny ResNet's first stage adds its input itself: an identity shortcut"
    for fifo in new:
        src = fifo.inputs[0][1]
        assert fifo.stride == 1 and fifo.output == src + "@fifo" and fifo.name == src + ".fifo" and not fifo.ops
        adder = plan.blocks[plan.blocks.index(fifo) + 1]  # just before the block that adds it
        assert ("r", fifo.output) in adder.inputs and ("r", src) not in adder.inputs
    for b in plan.blocks:  # every residual input now comes out of a shortcut block
        for port, tensor in b.inputs:
            if port == "r":
                assert any(s.kind == Kind.SHORTCUT and s.output == tensor for s in plan.blocks)


def test_insert_forks_chains_one_fork_per_extra_reader(tiny):
    plan = insert_forks(insert_fifos(fuse(HwPlan(tiny, None))))
    chains = {f.tensor: f for f in plan.forks}
    tensors = [tiny.input] + [b.output for b in plan.blocks]
    for t in tensors:
        readers = plan.readers(t)
        if len(readers) > 1:
            assert chains[t].readers == tuple((b.name, p) for b, p in readers)
            assert len(chains[t].instances) == len(readers) - 1
        else:
            assert t not in chains
    assert chains, "a residual stream is read by the block's conv and its shortcut"


@pytest.mark.parametrize("par", [1, 3, 6, 40])
def test_fold_meets_the_target_period(tiny, par):
    plan = make_plan(tiny, par)
    convs = [op for op in tiny.ops if isinstance(op, ir.Conv)]
    assert plan.target == -(-max(op.out_hw ** 2 * op.kernel ** 2 * len(op.kept) * len(op.in_channels)
                                 for op in convs) // par)
    for b in plan.blocks:
        if b.kind == Kind.CONV:
            op = tiny.op(b.name)
            out_ch, in_ch = len(tiny.tensors[b.output].channels), len(op.in_channels)
            assert b.cycles <= plan.target or (b.lanes, b.simd) == (out_ch, in_ch)
            assert (b.groups, b.chunks) == (-(-out_ch // b.lanes), -(-in_ch // b.simd))
        elif b.kind == Kind.AVGPOOL:  # the fewest lanes that keep the pool off the blocks' period
            before = [c.cycles for c in plan.blocks[:plan.blocks.index(b)] if c.cycles is not None]
            src = tiny.tensors[b.inputs[0][1]]
            hw, ch = src.hw, len(src.channels)
            assert b.lanes == fewest_pool_lanes(hw, ch, max([plan.input_cycles] + before))
    unfolded = make_plan(tiny, None)
    assert unfolded.target is None and all(b.groups == b.chunks == 1 for b in unfolded.blocks if b.kind == Kind.CONV)


def test_avgpool_lanes_are_the_fewest_that_keep_the_period():
    """64 channels of an 8x8 map against a 3,072-cycle period (a 32x32x3 image's bytes): one lane
    takes 4,171 cycles (the requant pipeline's 10 stages among them), two take 2,091; a period no
    lane count meets gets every channel at once."""
    assert AvgPoolRequant.LATENCY == 10
    assert AvgPoolRequant.cycles(8, 64, 1) == 64 * 64 + 64 + 11 > 3072
    assert fewest_pool_lanes(8, 64, 3072) == 2 and AvgPoolRequant.cycles(8, 64, 2) == 2091
    assert fewest_pool_lanes(8, 64, 4170) == 2 and fewest_pool_lanes(8, 64, 4171) == 1
    assert fewest_pool_lanes(8, 64, 100) == 64


def test_size_fifos_covers_the_line_buffers_within_one_map(tiny):
    plan = make_plan(tiny, 6)
    fifos = [b for b in plan.blocks if b.kind == Kind.SHORTCUT]
    assert fifos
    for f in fifos:
        src = tiny.tensors[f.inputs[0][1].split("@")[0]]
        out_hw = -(-src.hw // f.stride)
        adder = next(b for b, p in plan.readers(f.output) if p == "r")
        assert adder.slots * out_hw <= f.depth <= out_hw * out_hw  # at least the adding engine's rows


def test_annotate_cycles_is_the_cycle_model(tiny):
    plan = make_plan(tiny, 6)
    cyc = cycle_model(plan)
    rows = {r["name"]: r for r in cyc["layers"]}
    assert plan.period == max(r["cycles"] for r in cyc["layers"]) == cyc["cycles_per_image"]
    assert plan.pes == sum(b.pes for b in plan.blocks) == cyc["pes"]
    for b in plan.blocks:
        if b.kind == Kind.CONV:
            assert b.cycles == rows[b.name]["cycles"] == b.groups * b.chunks * ConvRequant.cycles(
                tiny.op(b.name).out_hw, 3, 1, 1)
            assert b.pes == b.lanes * b.simd
        elif b.kind == Kind.LUT:  # keeps up with the engine before it, so never the bottleneck
            src = tiny.tensors[tiny.op(b.name).src]
            producer = next(p for p in plan.blocks if p.output == tiny.op(b.name).src)
            assert b.cycles == rows[b.name]["cycles"] == CodeLUT.cycles(src.hw ** 2, len(src.channels), b.lanes)
            assert CodeLUT.cycles(1, len(src.channels), b.lanes) <= producer.cycles // src.hw ** 2
            assert b.lanes == 1 or CodeLUT.cycles(1, len(src.channels), b.lanes - 1) > producer.cycles // src.hw ** 2
        elif b.kind == Kind.SHORTCUT:
            assert b.cycles is None and b.name not in rows
    assert list(plan.bottleneck) == cyc["bottleneck"] == [r["name"] for r in cyc["layers"] if r["cycles"] == plan.period]


# ResNet-20 (models/resnet20-ppq.pt) as `make gen` planned it before the plan module: per cycles.json
# row but the code lookups' (the input first, the average pool and FC last) its cycles, lanes and simd (the pool's four
# cycles more since its requant pipeline registers the multipliers' operands and partial products (twice)
# and reads its tables in three stages, the FC's three more since its products are registered the same
# way and its score is computed from the accumulator's register)
RESNET20 = {
    22: (60323, 55296, 405, [(3072, None, None), (55296, 2, 3)] + [(55296, 2, 12)] * 6 + [(52992, 1, 12)]
         + [(52992, 1, 23)] * 5 + [(51840, 1, 12)] + [(51840, 1, 23)] * 5 + [(2936, 1, None), (458, None, 1)]),
    8: (165888, 165888, 139, [(3072, None, None), (165888, 2, 1)] + [(165888, 2, 4)] * 6 + [(158976, 1, 4)]
        + [(158976, 1, 8)] * 5 + [(155520, 1, 4)] + [(155520, 1, 8)] * 5 + [(2936, 1, None), (458, None, 1)]),
}


@pytest.fixture(scope="module")
def resnet20():
    from shiftpq_hw.gen import resolve_source
    return resolve_source("resnet20")


@pytest.mark.parametrize("par", sorted(RESNET20))
def test_resnet20_cycle_model_is_unchanged(resnet20, par):
    target, period, pes, rows = RESNET20[par]
    cyc = cycle_model(make_plan(resnet20, par))
    assert (cyc["target_cycles"], cyc["cycles_per_image"], cyc["pes"], cyc["macs_per_image"]) == (target, period, pes,
                                                                                                  21452994)
    assert [(r["cycles"], r.get("lanes"), r.get("simd")) for r in cyc["layers"] if r["kind"] != "lut"] == rows
    luts = [r for r in cyc["layers"] if r["kind"] == "lut"]  # the blocks' 4-bit quantizers: one lane each
    assert len(luts) == 9 and all(r["lanes"] == 1 and r["cycles"] < period // 2 for r in luts)
    assert cyc["bottleneck"] == ["stem"] + [f"layer1.{i}.conv{j}" for i in range(3) for j in (1, 2)]
