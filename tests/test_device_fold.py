"""Device-aware folding (hw/shiftpq_hw/estimate.py: estimate, fold_for_device; shiftpq gen --device): the
memories and multipliers the estimate counts are the generated design's, Yosys' mapping rules as
Yosys applied them to ResNet-20, the fold is the fastest that fits, and a design that fits nothing
is one line, exit 2, nothing written."""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from amaranth.back import rtlil

from shiftpq.errors import ShiftPQError
from shiftpq.export import export_model
from shiftpq.testnets import random_net
from shiftpq_cli import main
from shiftpq_hw import estimate as estimate_mod
from shiftpq_hw.gen import DEFAULT_DSP_PAIRS, DEFAULT_PAR, TOP, generate
from shiftpq_hw.network import Network
from shiftpq_hw.estimate import (Mem, bram_cells, device_budget, dsp_cells, estimate, fold_for_device, memories,
                                 multipliers)
from shiftpq_hw.plan import cycle_model, make_plan


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return export_model(random_net(4), {"path": "random"})


def rtl_memories_and_products(plan) -> tuple[collections.Counter, collections.Counter]:
    """(width, depth) of every memory and (a, b) widths of every ``$mul`` in the plan's RTLIL."""
    il = rtlil.convert(Network(plan), name=TOP, emit_src=False)
    mems = collections.Counter((int(w), int(d)) for w, d in re.findall(r"^ *memory width (\d+) size (\d+) ", il, re.M))
    muls = collections.Counter()
    for params in re.findall(r"^ *cell \$mul \S+\n((?: *parameter .*\n)+)", il, re.M):
        p = dict(re.findall(r"parameter \\(\w+) (\S+)", params))
        muls[tuple(sorted((int(p["A_WIDTH"]), int(p["B_WIDTH"]))))] += 1
    return mems, muls


@pytest.mark.parametrize("seed,par,pairs", [(4, 2, 0), (4, None, 0), (11, 3, 0), (4, 2, 100), (11, 3, 7)])
def test_memories_and_multipliers_are_the_generated_designs(seed, par, pairs, tiny):
    """What the estimate counts is what the generator builds (catches a change to the engines that
    the estimate does not follow): every memory's declared width and depth, every product's widths
    (with multiplier pairs: their 18 x 18 products and the weight words' 10-bit pair fields)."""
    tables = tiny if seed == 4 else export_model(random_net(seed, name="tinyvgg"), {"path": "random"})
    plan = make_plan(tables, par, pairs)
    assert (plan.dsp_pairs == 0) == (sum(b.pairs for b in plan.blocks) == 0)
    mems = memories(plan)
    muls = multipliers(plan, mems)
    rtl_mems, rtl_muls = rtl_memories_and_products(plan)
    assert collections.Counter((m.declared, m.depth) for m in mems) == rtl_mems
    assert collections.Counter(tuple(sorted((a, b))) for _, a, b in muls) == rtl_muls
    assert all(0 <= m.width <= m.declared for m in mems)


# Yosys 0.70's memory_libmap on ResNet-20 at PAR 22 (synth_ecp5, bench/results/fold_cost-ecp5.json's
# design resnet20:22): shapes as it saw them (constant columns dropped) and where it put them
@pytest.mark.parametrize("mem,placed", [
    (Mem("", "wmem", 96, 54, rom=True), ("logic", 0)),  # layer1's weights: 324 in logic < 3 x 128
    (Mem("", "wmem", 92, 207, rom=True), ("bram", 3)),  # 512 x 36
    (Mem("", "wmem", 48, 810, rom=True), ("bram", 3)),  # 1024 x 18 (512 x 36 would take 4)
    (Mem("", "rq0_l0", 17, 128, rom=True), ("bram", 1)),  # 136 in logic > 128
    (Mem("", "rq0_l3", 32, 64, rom=True), ("logic", 0)),  # a tie: logic
    (Mem("", "rq0_mul0", 25, 64, rom=True), ("logic", 0)),
    (Mem("", "rows", 180, 32, rom=False), ("lutram", 90)),  # 360 + 180 (the read register) < 5 x 128
    (Mem("", "rows", 92, 64, rom=False), ("bram", 3)),  # 368 + 92 > 3 x 128
    (Mem("", "fifo", 184, 63, rom=False), ("bram", 6)),
    (Mem("", "fifo", 360, 63, rom=False), ("bram", 10)),
    (Mem("", "rq0_neg", 0, 128, rom=True), ("logic", 0)),  # one value in every row: a constant
])
def test_bram_cells_follow_yosys(mem, placed):
    assert bram_cells(mem) == placed


# ResNet-20's products (Yosys: 47 MULT18X18D in all) and the tiny networks' 19-bit stem sums
@pytest.mark.parametrize("a,b,n", [(8, 8, 1), (18, 25, 2), (9, 25, 2), (16, 22, 2), (19, 25, 2), (20, 25, 4),
                                   (37, 8, 2), (1, 8, 0)])
def test_dsp_cells(a, b, n):
    assert dsp_cells(a, b) == n


def test_fold_for_device_is_the_fastest_that_fits(tiny):
    # 33 % of the 25k's logic cells: the tiny network's fold lands between PAR 1 and fully parallel
    plan, fit = fold_for_device(tiny, "ecp5-25k", margin=0.33)
    budget = device_budget("ecp5-25k", 0.33)
    assert fit["budget"] == budget and fit["estimate"] == estimate(plan) and fit["margin"] == 0.33
    assert all(fit["estimate"][k] <= budget[k] for k in budget)
    assert 1 < plan.par and make_plan(tiny, plan.par - 1).period > plan.period  # the least PAR for its period
    faster = next(p for p in range(plan.par + 1, 64) if make_plan(tiny, p).period < plan.period)
    est = estimate(make_plan(tiny, faster))
    assert any(est[k] > budget[k] for k in budget), (faster, est)
    # the default margin on a larger device: at least as fast; here the fastest plan there is
    assert fold_for_device(tiny, "ecp5-85k")[0].period == make_plan(tiny, None).period < plan.period


def test_fold_for_device_uses_the_free_dsps_as_pairs(tiny):
    """With ``pairs`` the fold gives the DSPs the plan leaves free (at most ``pairs``, and up to 82 %
    of the device's DSPs in all, ``PAIR_DSP_SHARE``) to multiplier pairs: fewer shift-add PEs in
    logic, so a faster fold fits; by default (0) none."""
    budget = device_budget("ecp5-45k", 0.2)
    assert budget["dsps"] == 72  # 82 % of them: 59.04, so 60
    plain, _ = fold_for_device(tiny, "ecp5-45k", margin=0.2)
    assert plain.dsp_pairs == 0 and not any(b.pairs for b in plain.blocks)
    paired, fit = fold_for_device(tiny, "ecp5-45k", margin=0.2, pairs=1000)
    assert paired.dsp_pairs == 60 - estimate(make_plan(tiny, paired.par))["dsps"] >= paired.pairs_used > 0
    assert fit["estimate"] == estimate(paired) and all(fit["estimate"][k] <= budget[k] for k in budget)
    assert paired.period < plain.period and paired.par > plain.par  # the pairs' logic let a larger fold in
    capped, fit = fold_for_device(tiny, "ecp5-45k", margin=0.2, pairs=3)
    assert 0 < capped.pairs_used <= capped.dsp_pairs == 3
    with pytest.raises(ValueError, match="pairs must be a non-negative integer"):
        fold_for_device(tiny, "ecp5-45k", pairs=-1)


def test_nothing_fits_names_the_device_and_resource(tiny):
    with pytest.raises(ShiftPQError, match=r"fits no fold on ecp5-25k: at PAR 1 \(\d+ PEs, the least\) the "
                       r"estimate needs [\d,]+ logic cells > 242, [\d,]+ flip-flops > 242 \(the budget: 1% "):
        fold_for_device(tiny, "ecp5-25k", margin=0.01)
    with pytest.raises(ShiftPQError, match="unknown device 'ice40-up5k' for the fold's estimate"):
        fold_for_device(tiny, "ice40-up5k")


def test_block_rams_can_be_the_limit(tiny, monkeypatch):
    """Weights, line buffers and FIFOs on chip do not shrink with the fold: with fewer block RAMs than
    PAR 1 needs, nothing fits, and the line names them (as ResNet-32 on the 85k: 232 > 208)."""
    from shiftpq_hw import synth
    need = estimate(make_plan(tiny, 1))["brams"]
    cap = dict(synth.DEVICES["ecp5-85k"].capacity, brams=need - 1)
    monkeypatch.setitem(synth.DEVICES, "ecp5-85k", dataclasses.replace(synth.DEVICES["ecp5-85k"], capacity=cap))
    with pytest.raises(ShiftPQError, match=rf"fits no fold on ecp5-85k: .* needs {need} block RAMs \(DP16KD\) > "
                                           rf"{need - 1} \(the budget"):
        fold_for_device(tiny, "ecp5-85k")


def test_make_gen_passes_device_only_from_the_command_line():
    """make gen DEVICE=... adds --device; plain make gen (and DEVICE from the environment, which
    make synth's default also is) keeps --par's default."""
    def gen_line(*args, env=None) -> str:
        out = subprocess.run(["make", "-n", "gen", "MODEL=tiny", *args], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, **(env or {})}, check=True).stdout
        return next(ln for ln in out.splitlines() if "shiftpq gen" in ln)
    assert "--device ecp5-25k" in gen_line("DEVICE=ecp5-25k")
    assert "--device" not in gen_line() and "--par" not in gen_line()
    assert "--device" not in gen_line(env={"DEVICE": "ecp5-45k"})


def test_gen_device_records_the_fit_and_default_gen_does_not(tiny, tmp_path, monkeypatch):
    """cycles.json with --device: the device, the chosen PAR, the margin, budget and estimate; without
    it nothing new (the default build stays byte-identical to the one before device-aware folding)."""
    tables = tmp_path / "tables"
    from shiftpq.tables import save_tables
    save_tables(tiny, tables)
    assert main(["gen", "--tables", str(tables), "--device", "ecp5-45k", "--out", str(tmp_path / "d")]) == 0
    cyc = json.loads((tmp_path / "d" / "cycles.json").read_text())
    plan, fit = fold_for_device(tiny, "ecp5-45k")
    assert (cyc["device"], cyc["par"], cyc["pes"]) == ("ecp5-45k", plan.par, plan.pes)
    assert cyc["fit"] == {k: fit[k] for k in ("margin", "budget", "estimate")}
    assert "device" not in cycle_model(plan) and "fit" not in cycle_model(plan)
    assert cyc["dsp_pairs"]["budget"] == 0  # --device alone: no pairs (the default fold's are its own)
    # --dsp-pairs with --device: the fold with pairs, recorded
    assert main(["gen", "--tables", str(tables), "--device", "ecp5-45k", "--dsp-pairs", "1000",
                 "--out", str(tmp_path / "p")]) == 0
    cyc = json.loads((tmp_path / "p" / "cycles.json").read_text())
    plan, fit = fold_for_device(tiny, "ecp5-45k", pairs=1000)
    assert cyc["dsp_pairs"] == {"budget": plan.dsp_pairs, "used": plan.pairs_used} and plan.pairs_used > 0
    assert cyc["par"] == plan.par and cyc["fit"]["estimate"] == fit["estimate"]


def test_default_fold_has_pairs_and_a_fold_by_hand_none(tiny, tmp_path):
    """Without --par and --device: the default fold, PAR 29 with up to 78 pairs; a fold by --par or
    --device, or the generic target (no ECP5 multipliers), has none unless --dsp-pairs gives some."""
    from shiftpq.tables import save_tables
    tables = tmp_path / "tables"
    save_tables(tiny, tables)
    for name, args, par, budget in [("a", [], DEFAULT_PAR, DEFAULT_DSP_PAIRS), ("b", ["--par", "2"], 2, 0),
                                    ("c", ["--target", "generic"], DEFAULT_PAR, 0),
                                    ("e", ["--device", "ecp5-45k"], fold_for_device(tiny, "ecp5-45k")[0].par, 0),
                                    ("d", ["--par", "2", "--dsp-pairs", "3"], 2, 3)]:
        assert main(["gen", "--tables", str(tables), *args, "--out", str(tmp_path / name)]) == 0
        cyc = json.loads((tmp_path / name / "cycles.json").read_text())
        assert (cyc["par"], cyc["dsp_pairs"]["budget"]) == (par, budget), name


def test_gen_device_refusals_are_one_line_exit_2(tiny, tmp_path, capsys, monkeypatch):
    from shiftpq.tables import save_tables
    tables = tmp_path / "tables"
    save_tables(tiny, tables)

    def refused(*args) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(list(args))
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    line = refused("gen", "--tables", str(tables), "--device", "ecp5-25k", "--par", "4", "--out", str(tmp_path / "a"))
    assert "--par: not allowed with argument --device" in line
    assert "invalid choice: 'ice40-up5k'" in refused("gen", "--tables", str(tables), "--device", "ice40-up5k")
    monkeypatch.setattr(estimate_mod, "MARGIN", 0.01)  # nothing fits
    capsys.readouterr()
    assert main(["gen", "--tables", str(tables), "--device", "ecp5-25k", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error" in ln]  # after the progress line naming the source
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "fits no fold on ecp5-25k" in errors[0] and "logic cells > 242" in errors[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]  # no b, no temporary beside it
    capsys.readouterr()
    assert main(["gen", "--tables", str(tables), "--device", "ecp5-25k", "--backend", "hls",
                 "--out", str(tmp_path / "c")]) == 2
    assert "with --backend hls give --par" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    capsys.readouterr()
    assert main(["gen", "--tables", str(tables), "--par", "2", "--dsp-pairs", "4", "--backend", "hls",
                 "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dsp-pairs 4 goes with the RTL backend" in err[0], err
    assert not (tmp_path / "d").exists()
    assert "expected a non-negative integer, got -1" in refused("gen", "--tables", str(tables), "--dsp-pairs", "-1")


@pytest.mark.parametrize("pairs", [0, 100])
def test_estimate_against_yosys_for_a_small_network(tiny, tmp_path, pairs):
    """Yosys' own count of a generated tiny network: block RAMs, LUT RAMs and DSPs exactly (each
    multiplier pair one MULT18X18D), logic cells and flip-flops within the model's accuracy on small
    designs (docs/hw-round5-design.md)."""
    from shiftpq_hw.synth import min_logic_cells, run_flow
    plan = make_plan(tiny, 2, pairs)
    generate(tiny, tmp_path / "g", 2, dsp_pairs=pairs)
    (tmp_path / "g" / "y").mkdir()
    r = run_flow(tmp_path / "g" / "y", f"../rtl/{TOP}.il", TOP, "ecp5-85k", place=False, log=lambda s: None)
    cells, est = r["yosys_cells"], estimate(plan)
    assert (est["brams"], est["lutrams"], est["dsps"]) == (cells.get("DP16KD", 0), cells.get("TRELLIS_DPR16X4", 0),
                                                          cells.get("MULT18X18D", 0))
    assert abs(est["logic"] / min_logic_cells(cells, "ecp5") - 1) < 0.25
    assert abs(est["ffs"] / cells["TRELLIS_FF"] - 1) < 0.25
