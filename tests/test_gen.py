"""``shiftpq gen`` / ``make gen``: tables -> Verilog + cycle model, deterministic, atomic, linted."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from shiftpq.export import export_model
from shiftpq.tables import save_tables
from shiftpq.testnets import random_net
from shiftpq_cli import main
from shiftpq_hw.gen import DEFAULT_DSP_PAIRS, DEFAULT_PAR, generate
from shiftpq_hw.plan import fold, make_plan
from shiftpq_hw.verilog import VERILATOR_BUILD_ARGS, verilator_lint_args


def test_gen_tiny_default_is_labelled_untrained_deterministic_lints_and_builds(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["gen", "--model", "tiny", "--par", "2", "--target", "ecp5", "--out", str(a)]) == 0
    assert main(["gen", "--model", "tiny", "--par", "2", "--target", "ecp5", "--out", str(b)]) == 0
    assert "cycles per image" in capsys.readouterr().out
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert {"rtl/shiftpq_top.v", "rtl/shiftpq_top.il", "rtl/primitives_sim.v", "cycles.json",
            "tables/manifest.json"} <= {str(f) for f in files}
    for f in files:  # the same source and PAR give byte-identical outputs
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    cyc = json.loads((a / "cycles.json").read_text())
    assert cyc["source"]["untrained"] is True and "UNTRAINED" in cyc["source"]["note"]
    assert cyc["par"] == 2 and cyc["pes"] == sum(r["pes"] for r in cyc["layers"])
    assert cyc["cycles_per_image"] == max(r["cycles"] for r in cyc["layers"])
    assert 0 < cyc["utilization"] <= 1
    assert cyc["utilization"] == pytest.approx(cyc["macs_per_image"] / (cyc["pes"] * cyc["cycles_per_image"]), abs=1e-4)
    rtl = a / "rtl"
    # the ECP5 target instantiates the FPGA's multipliers: their model is compiled beside the RTL, and
    # lints with it (UNUSEDSIGNAL on too: no waiver for the hand-written model)
    assert cyc["target"] == "ecp5" and "MULT18X18D #(" in (rtl / "shiftpq_top.v").read_text()
    srcs = ["shiftpq_top.v", "primitives_sim.v"]
    lint = subprocess.run(["verilator", *verilator_lint_args(), *srcs], cwd=rtl, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stderr[-3000:]
    lint = subprocess.run(["verilator", *verilator_lint_args(), "-Wwarn-UNUSEDSIGNAL", "--top-module", "MULT18X18D",
                           "primitives_sim.v"], cwd=rtl, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stderr[-3000:]
    ivl = subprocess.run(["iverilog", "-o", str(tmp_path / "top.vvp"), *srcs], cwd=rtl,
                         capture_output=True, text=True)
    assert ivl.returncode == 0, ivl.stderr[-3000:]
    build = subprocess.run(["verilator", "--cc", "--build", "-j", "2", *VERILATOR_BUILD_ARGS, "--Mdir",
                            str(tmp_path / "obj"), "--top-module", "shiftpq_top", *srcs], cwd=rtl, capture_output=True,
                           text=True)
    assert build.returncode == 0 and (tmp_path / "obj" / "Vshiftpq_top__ALL.a").is_file(), build.stderr[-3000:]
    assert (rtl / "shiftpq_top.il").read_text().startswith("attribute")
    v = (rtl / "shiftpq_top.v").read_text()
    for port in ("s_axis_tdata", "s_axis_tvalid", "s_axis_tready", "s_axis_tlast",
                 "m_axis_tdata", "m_axis_tvalid", "m_axis_tready", "m_axis_tlast", "cycles"):
        assert f" {port}" in v, port


def test_gen_from_tables_matches_the_plan_and_maps_its_probes(tmp_path):
    t = export_model(random_net(5), {"path": "random"})
    save_tables(t, tmp_path / "tables")
    cyc = generate(t, tmp_path / "out", par=3)
    plan = make_plan(t, 3)
    assert cyc["cycles_per_image"] == plan.period and cyc["pes"] == plan.pes
    probes = json.loads((tmp_path / "out" / "probes.json").read_text())
    v = (tmp_path / "out" / "rtl" / "shiftpq_top.v").read_text()
    assert [p["instance"] for p in probes["blocks"]] == [b.instance for b in plan.blocks]
    for p in probes["blocks"]:  # every block is an instance of the top level, by that name
        module, inst = p["path"].split(".")
        assert module == probes["top"] == "shiftpq_top" and inst == p["instance"]
        assert re.search(rf"^  \\{re.escape(p['path'])}  {re.escape(inst)} \($", v, re.M), p
    assert main(["gen", "--tables", str(tmp_path / "tables"), "--par", "3", "--out", str(tmp_path / "out2")]) == 0
    assert (tmp_path / "out" / "rtl" / "shiftpq_top.v").read_bytes() == \
        (tmp_path / "out2" / "rtl" / "shiftpq_top.v").read_bytes()


def test_fold_meets_the_target_with_the_fewest_pes():
    # 16 -> 12 channels, 1024 pixels x 9 taps: 32 PEs of work at 55,296 cycles
    lanes, simd = fold(12, 16, 1024 * 9, 1024 * 9 * 12 * 16 // 32)
    assert (lanes, simd) in ((2, 16), (4, 8)) and lanes * simd == 32
    assert fold(12, 16, 1024 * 9, 1) == (12, 16)  # nothing is fast enough: fully parallel
    assert fold(3, 3, 10, 10 ** 9) == (1, 1)
    for out_ch, in_ch, target in ((45, 64, 41472), (23, 32, 20736), (10, 45, 100)):
        lanes, simd = fold(out_ch, in_ch, 64 * 9, target)
        cycles = 64 * 9 * -(-out_ch // lanes) * -(-in_ch // simd)
        assert cycles <= target or (lanes, simd) == (out_ch, in_ch)
        # no (l, s) with fewer PEs meets the target
        assert not any(64 * 9 * -(-out_ch // l) * -(-in_ch // s) <= target
                       for l in range(1, out_ch + 1) for s in range(1, in_ch + 1) if l * s < lanes * simd)


def test_resnet20_default_design_point(capsys):
    """The shipped PPQ ResNet-20 at the default fold: 2,000 inferences/s from 86.4 MHz on (routed on
    an ECP5-85k, seeds 1 and 2 are faster and seed 3 is not, hw/README.md), 78 pairs of products on the multipliers,
    the MAC array busy, and `shiftpq gen --help` states that default (the generator itself is timed
    by `make gen`, see README)."""
    from shiftpq_hw.gen import resolve_source
    plan = make_plan(resolve_source("resnet20"), DEFAULT_PAR, DEFAULT_DSP_PAIRS)
    assert 86.4e6 / plan.period == 2000 and plan.pes == 552 and plan.pairs_used == DEFAULT_DSP_PAIRS
    assert plan.utilization > 0.89
    with pytest.raises(SystemExit):
        main(["gen", "--help"])
    assert f"(default {DEFAULT_PAR} with up to {DEFAULT_DSP_PAIRS} multiplier pairs" in \
        " ".join(capsys.readouterr().out.split())


def test_gen_bad_input_gives_clear_errors(tmp_path, capsys):
    assert main(["gen", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.pt: checkpoint not found" in capsys.readouterr().err
    assert main(["gen", "--tables", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user data")
    assert main(["gen", "--model", "tiny", "--out", str(tmp_path / "mine")]) == 2
    assert "already exists and holds keep.txt" in capsys.readouterr().err
    assert (tmp_path / "mine" / "keep.txt").read_text() == "user data"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written left behind
    with pytest.raises(SystemExit) as e:
        main(["gen", "--model", "tiny", "--par", "0"])
    assert e.value.code == 2
