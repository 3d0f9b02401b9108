"""`shiftpq synth` (Yosys + nextpnr) and `shiftpq report` on a small generated network.

The synthesized network is the smallest fuzz architecture (widths 1/2/5, PAR 1: 8 PEs): Yosys and
nextpnr take about 100 s on it on 2 cores. The tiny model itself (136 PEs at PAR 32) took about
6 minutes (Yosys 54 s, nextpnr 318 s), too long for `make test`; `make synth MODEL=tiny` runs it.
"""
import json

import jinja2
import pytest
from amaranth.hdl import Elaboratable, Module, Signal

from shiftpq import ir
from shiftpq.export import export_model
from shiftpq.metrics import model_metrics, tables_metrics
from shiftpq.tables import load_tables
from shiftpq.templating import render
from shiftpq.testnets import random_net
from shiftpq_cli import main
from shiftpq_hw.gen import generate


def small_tables():
    return export_model(random_net(3), {"path": None, "untrained": True, "note": "UNTRAINED: a fuzz network"})


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A generated small network (the default target, ECP5 multipliers), synthesized for an ECP5-25k
    and placed and routed with seeds 1 and 2."""
    out = tmp_path_factory.mktemp("synth") / "small"
    generate(small_tables(), out, 1, force=True)
    assert main(["synth", "--build", str(out), "--device", "ecp5-25k", "--seed", "2,1"]) == 0
    return out


@pytest.mark.slow
def test_synth_report_numbers_come_from_the_tools_own_output(small):
    d = small / "synth"
    r = json.loads((d / "report.json").read_text())
    stat = json.loads((d / "stat.json").read_text())["design"]["num_cells_by_type"]
    cycles = json.loads((small / "cycles.json").read_text())
    assert r["device"] == "ecp5-25k" and r["fits"] is True and r["reason"] is None
    assert cycles["target"] == "ecp5"
    assert r["yosys_cells"] == {k: v for k, v in stat.items() if not k.startswith("$scopeinfo")}
    assert r["cycles_per_image"] == cycles["cycles_per_image"]
    # the scripts were rendered from the templates; Yosys ran once, nextpnr once per seed, in its own directory
    assert "read_rtlil ../rtl/shiftpq_top.il" in (d / "synth.ys").read_text()
    assert 'FREQUENCY PORT "clk" 100.0 MHz;' in (d / "constraints.lpf").read_text()
    assert [row["seed"] for row in r["seeds"]] == [2, 1]
    for row in r["seeds"]:
        pnr = json.loads((d / f"seed{row['seed']}" / "pnr.json").read_text())
        util = pnr["utilization"]
        assert (row["luts"], row["ffs"], row["brams"], row["dsps"]) == (
            util["TRELLIS_COMB"]["used"], util["TRELLIS_FF"]["used"], util["DP16KD"]["used"], util["MULT18X18D"]["used"])
        assert row["luts"] > 0 and row["ffs"] > 0 and row["fits"] is True
        assert row["fmax_mhz"] == round(min(c["achieved"] for c in pnr["fmax"].values()), 2) > 0
        assert row["inferences_per_s"] == round(row["fmax_mhz"] * 1e6 / cycles["cycles_per_image"], 1)
        assert f" --seed {row['seed']} " in row["nextpnr_command"] and "--25k" in row["nextpnr_command"]
        assert row["nextpnr_s"] > 0 and "Max frequency" in (d / f"seed{row['seed']}" / "nextpnr.log").read_text()
    # the top level is the worst seed's; min / median / max over both
    worst = min(r["seeds"], key=lambda row: row["fmax_mhz"])
    assert r["seed"] == worst["seed"] and r["fmax_mhz"] == worst["fmax_mhz"]
    assert (r["luts"], r["inferences_per_s"], r["nextpnr_command"]) == (
        worst["luts"], worst["inferences_per_s"], worst["nextpnr_command"])
    f = sorted(row["fmax_mhz"] for row in r["seeds"])
    assert r["over_seeds"]["fmax_mhz"] == {"min": f[0], "median": round((f[0] + f[1]) / 2, 2), "max": f[1]}
    assert not list(small.glob(".synth.*"))


def test_seeds_over_seeds_and_the_seed_list():
    from shiftpq_hw.synth import over_seeds, parse_seeds
    assert parse_seeds("1,2,3") == [1, 2, 3] and parse_seeds("7") == [7]
    for bad in ("", "1,1", "-1", "a", "1,,2"):
        with pytest.raises(ValueError, match="distinct seeds"):
            parse_seeds(bad)
    rows = [{"f": 93.0}, {"f": None}, {"f": 91.5}, {"f": 92.0}]
    assert over_seeds(rows, "f") == {"min": 91.5, "median": 92.0, "max": 93.0}
    assert over_seeds(rows[:1] + rows[2:3], "f") == {"min": 91.5, "median": 92.25, "max": 93.0}
    assert over_seeds([{"f": None}], "f") is None


@pytest.mark.slow
def test_a_design_too_large_for_the_device_gets_a_clear_message(tmp_path, capsys):
    build = tmp_path / "b"
    generate(small_tables(), build, 1, force=True, target="generic")  # an iCE40 has no ECP5 multipliers
    capsys.readouterr()
    assert main(["synth", "--build", str(build), "--device", "ice40-up5k"]) == 1
    err = capsys.readouterr().err
    r = json.loads((build / "synth" / "report.json").read_text())
    # 80 port bits on a 39-pin package and more multipliers than the 8 DSPs, by Yosys' own count
    macs = r["yosys_cells"]["SB_MAC16"]
    assert r["fits"] is False and r["nextpnr_s"] is None and macs > 8
    assert "does not fit ice40-up5k" in err and "80 I/O pins > 39" in err and f"{macs} DSP multipliers > 8" in err
    assert r["fmax_mhz"] is None and r["inferences_per_s"] is None and "place and route skipped" in r["reason"]


def test_a_stopped_nextpnr_is_one_line_not_its_log(tmp_path, monkeypatch):
    """A seed whose nextpnr was stopped by a signal (a user's kill, a time limit) is reported as
    that, in one line, not as a failure with the tail of its log (the unconstrained pins' warnings)."""
    import subprocess
    from shiftpq_hw import synth
    warnings = "".join(f"Warning: IO 'cycles[{i}]' is unconstrained in LPF\n" for i in range(40))
    (tmp_path / "nextpnr.log").write_text(warnings)
    monkeypatch.setattr(synth, "_run", lambda cmd, cwd: subprocess.CompletedProcess(cmd, -15, "", warnings))
    r = synth.run_nextpnr(tmp_path, "ecp5-85k", 100.0, 3, {}, log=lambda s: None)
    assert r["fits"] is False and r["fmax_mhz"] is None
    assert r["reason"] == f"nextpnr stopped by SIGTERM after {r['nextpnr_s']:.0f} s"
    monkeypatch.setattr(synth, "_run", lambda cmd, cwd: subprocess.CompletedProcess(cmd, 1, "", warnings))
    assert synth.run_nextpnr(tmp_path, "ecp5-85k", 100.0, 3, {}, log=lambda s: None)["reason"].startswith(
        "nextpnr failed (exit status 1): ")
    # the CLI's line: a stopped seed was not placed, which says nothing of whether the design fits
    from shiftpq_cli.hardware import Synthesized
    report = {"model": "resnet20", "device": "ecp5-85k", "fits": False, "seed": 3, "seeds": [r, r],
              "reason": r["reason"]}
    assert Synthesized(report, "r.json").problems() == [
        f"resnet20 was not placed on ecp5-85k (seed 3): {r['reason']} (report: r.json)"]
    report["reason"] = "over capacity: DP16KD 210/208"
    assert Synthesized(report, "r.json").problems()[0].startswith("resnet20 does not fit ecp5-85k (seed 3): over")


def test_synth_of_a_missing_build_names_the_file(tmp_path, capsys):
    assert main(["synth", "--build", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "shiftpq_top.il is missing" in err and "shiftpq gen" in err
    assert not (tmp_path / "nothing" / "synth").exists()


def test_templates_refuse_missing_values():
    with pytest.raises(jinja2.UndefinedError):
        render("synth/ecp5.ys.j2", rtlil="x.il", top="t")  # no netlist, stat, device, dsp


def test_tables_metrics_equal_model_metrics():
    """The report counts size and BOPs from the exported tables; the same numbers as `shiftpq metrics`."""
    for seed in range(6):
        net = random_net(seed, random_bits=True, random_arch=True)
        assert tables_metrics(export_model(net, {"path": None})) == model_metrics(net)


@pytest.mark.slow
def test_report_renders_every_section_deterministically(small, cifar_dir, capsys):
    sim = {"simulator": "verilator", "images": 2, "mismatches": 0, "accuracy": 50.0, "cycles_per_image": 1,
           "model_cycles_per_image": 1, "latency_cycles": 3}
    (small / "sim").mkdir(exist_ok=True)
    (small / "sim" / "results.json").write_text(json.dumps(sim))
    outs = []
    for _ in range(2):
        assert main(["report", "--build", str(small), "--images", "50", "--data-dir", cifar_dir]) == 0
        outs.append({p.name: p.read_bytes() for p in (small / "report").iterdir()})
    assert outs[0] == outs[1]  # byte-identical, plots included
    files = outs[0]
    assert set(files) == {"index.html", "report.md", "layers.png", "weights.png", "pruning.png"}
    html, md = files["index.html"].decode(), files["report.md"].decode()
    assert html.count("data:image/png;base64,") == 3
    for png in ("layers.png", "weights.png", "pruning.png"):
        assert files[png].startswith(b"\x89PNG") and f"]({png})" in md
    t = load_tables(small / "tables")
    m = tables_metrics(t)
    synth = json.loads((small / "synth" / "report.json").read_text())
    for text in (html, md):
        assert "{:,}".format(m["total"]["bops"]) in text and "{:,}".format(m["fp32"]["bops"]) in text
        assert f"{synth['fmax_mhz']} MHz" in text and "ecp5-25k" in text
        assert f"Placement seeds 2, 1: Fmax {synth['seeds'][0]['fmax_mhz']} / {synth['seeds'][1]['fmax_mhz']} MHz" in text
        assert f"the worst seed's ({synth['seed']})" in text
        assert "UNTRAINED" in text and "2 images, 0 mismatches" in text.replace('<span class="">', "").replace("</span>", "")
        for op in t.ops:
            if isinstance(op, ir.Conv):
                assert op.name in text


def test_report_counts_render_a_figure_a_stopped_run_never_measured():
    # a simulation stopped by its watchdog records cycles_per_image and latency as null
    from shiftpq.templating import count, environment
    assert count(55296) == "55,296" and count(None) == "n/a"
    t = environment().from_string("{{ sim.cycles_per_image|count }} / {{ sim.latency_cycles|count }}")
    assert t.render(sim={"cycles_per_image": None, "latency_cycles": 184765}) == "n/a / 184,765"


class _Resets(Elaboratable):
    """Three registers: ``a`` reset by the design's reset; ``b`` and ``c`` without one, loaded with 0
    under a condition of their own (Yosys would give each a synchronous reset from the logic)."""

    def __init__(self):
        self.d, self.clr, self.x, self.y, self.q = Signal(8), Signal(), Signal(), Signal(), Signal(8)

    def elaborate(self, platform):
        m = Module()
        a, b, c = Signal(8, name="a"), Signal(8, name="b", reset_less=True), Signal(8, name="c", reset_less=True)
        m.d.sync += [a.eq(self.d + 1), b.eq(self.d ^ 0x5A), c.eq(self.d - 3)]
        with m.If(self.clr):
            m.d.sync += b.eq(0)
        with m.If(self.x & self.y):
            m.d.sync += c.eq(0)
        m.d.comb += self.q.eq(a ^ b ^ c)
        return m


def test_only_the_design_reset_drives_the_flip_flops_lsr(tmp_path):
    """The 8 flip-flops of an ECP5 logic tile share one LSR net: a register that Yosys gives a
    synchronous reset of its own (a load of 0 under a condition) would take a tile to itself. The
    ECP5 flow keeps the LSR pin for the design's reset and puts every other condition in the logic."""
    from amaranth.back import rtlil
    from shiftpq_hw.gen import RESET
    from shiftpq_hw.synth import run_flow
    dut = _Resets()
    (tmp_path / "t.il").write_text(rtlil.convert(dut, name="top", ports=[dut.d, dut.clr, dut.x, dut.y, dut.q]))
    run_flow(tmp_path, "t.il", "top", "ecp5-85k", place=False, log=lambda *a: None)
    top = json.loads((tmp_path / "netlist.json").read_text())["modules"]["top"]
    reset_bits = top["netnames"][RESET]["bits"]
    ffs = [c for c in top["cells"].values() if c["type"] == "TRELLIS_FF"]
    lsr = [c["connections"].get("LSR", ["0"]) for c in ffs]
    assert len(ffs) == 24
    assert sum(b == reset_bits for b in lsr) == 8, lsr  # a's eight
    assert all(b in (reset_bits, ["0"]) for b in lsr), lsr  # b's and c's conditions are logic
