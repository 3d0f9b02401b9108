"""The compiled Verilator harness (sim/shiftpq_sim/harness.py, templates/verilator/): a small tiny
network streams real CIFAR-10 images bit-exact with the golden model at exactly the modelled cycles
per image; shards give what one process gives; random gaps and backpressure change nothing but the
timing and are reproducible from the seed; a design whose output never comes fails with a timeout
naming the stream, instead of hanging; bad arguments are refused."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from shiftpq.data import load_split
from shiftpq.errors import ShiftPQError
from shiftpq.export import export_model
from shiftpq.testnets import images, random_net
from shiftpq_hw.gen import TOP, generate
from shiftpq_sim import harness


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny residual network, narrow and folded (PAR 1), so that its harness builds quickly."""
    t = export_model(random_net(12, widths=(1, 2, 2)), {"path": None, "note": "harness test network"})
    out = tmp_path_factory.mktemp("harness") / "small"
    generate(t, out, par=1)
    return out


def _lines(gen_dir, tag, jobs):
    work = gen_dir / "sim" / f"harness-{tag}"
    return [line for k in range(jobs) for line in (work / f"shard{k}.txt").read_text().splitlines()]


def test_shards_give_what_one_process_gives(small, cifar_dir):
    x, y = load_split(cifar_dir, "test", 7)
    one = harness.run(small, x.numpy(), y.numpy(), jobs=1, tag="one", progress=False)
    three = harness.run(small, x.numpy(), y.numpy(), jobs=3, tag="three", progress=False)
    model = json.loads((small / "cycles.json").read_text())["cycles_per_image"]
    for r in (one, three):
        assert r["passed"] and r["mismatches"] == 0 and r["images"] == 7 and "accuracy" in r
        assert r["cycles_per_image"] == r["model_cycles_per_image"] == model and r["cycles_match_model"] is True
    assert [s["images"] for s in three["shards"]] == [2, 2, 3] and three["build"]["cached"]
    assert three["latency_cycles_seen"] == [one["latency_cycles"]] and one["accuracy"] == three["accuracy"]
    # every image's scores and tlast flags the same; the end cycles only differ by each shard's own start
    strip = lambda lines: [(f[0], *f[2:]) for f in map(str.split, lines)]  # noqa: E731
    assert strip(_lines(small, "one", 1)) == strip(_lines(small, "three", 3))
    saved = json.loads((small / "sim" / "results.json").read_text())
    assert saved["bench"] == "harness" and saved["jobs"] == 3 and saved["passed"] is True
    assert {"images", "mismatches", "accuracy", "sim_cycles_per_s", "sim_wall_s", "shards"} <= set(saved)


def test_gaps_and_backpressure_are_exact_and_reproducible(small):
    """Edge images too: all pixels 0 and all 255 (the extreme input codes), then random ones."""
    x = np.concatenate([np.zeros((1, 3, 32, 32), np.uint8), np.full((1, 3, 32, 32), 255, np.uint8), images(3, 3)])
    a = harness.run(small, x, jobs=2, gap=0.3, stall=0.3, seed=5, tag="stalls", progress=False)
    assert a["passed"] and a["mismatches"] == 0 and a["cycles_match_model"] is None
    first = _lines(small, "stalls", 2)
    b = harness.run(small, x, jobs=2, gap=0.3, stall=0.3, seed=5, tag="stalls", progress=False)
    assert b["passed"] and _lines(small, "stalls", 2) == first  # the same seed: the same cycles
    c = harness.run(small, x, jobs=2, gap=0.3, stall=0.3, seed=6, tag="stalls", progress=False)
    assert c["passed"] and _lines(small, "stalls", 2) != first  # the gaps did change the timing


def test_a_hung_design_fails_with_a_timeout_naming_the_stream(small, tmp_path):
    """The accelerator's score stream never raises tvalid: the harness stops at the watchdog's
    budget (from cycles.json) and names m_axis, instead of running for ever."""
    import shutil
    hung = tmp_path / "hung"
    shutil.copytree(small / "rtl", hung / "rtl")
    shutil.copytree(small / "tables", hung / "tables")
    for f in ("cycles.json", "probes.json"):
        shutil.copy(small / f, hung)
    v = (hung / "rtl" / f"{TOP}.v").read_text()
    top = v.index(f"module {TOP}(")
    head, body = v[:top], v[top:]
    edits = [(".o__valid(m_axis_tvalid),", ".o__valid(hung_valid),"),
             ("  wire m_axis_tvalid;\n", "  wire m_axis_tvalid = 1'h0;\n  wire hung_valid;\n")]
    for old, new in edits:
        assert body.count(old) == 1, f"the top module no longer has {old!r}: update this test's mutation"
        body = body.replace(old, new)
    (hung / "rtl" / f"{TOP}.v").write_text(head + body)
    r = harness.run(hung, images(2, 1), jobs=1, progress=False)
    assert not r["passed"] and r["stopped"] and "m_axis stopped" in r["stopped"][0], r
    assert re.search(r"no score beat for \d+ cycles \(budget %d\)" % r["budget_cycles"], r["stopped"][0])
    assert r["budget_cycles"] == harness.budget_cycles(json.loads((hung / "cycles.json").read_text()))


def test_fuzz_network_with_gaps_and_backpressure(tmp_path):
    """A random network (seed 8: plain, with max pools, random bit widths, PAR 1; small, so that it
    builds quickly), steady and then with random source gaps and sink stalls over two shards."""
    from shiftpq_sim.runner import fuzz
    (r,) = fuzz([8], "verilator", tmp_path, log=lambda s: None, bench="harness")
    assert r["passed"] and r["cycles_match_model"] and r["bench"] == "harness", "fuzz seed 8"
    s = harness.run(tmp_path / "seed8", images(4, 8), jobs=2, gap=0.25, stall=0.25, seed=8, progress=False)
    assert s["passed"] and s["mismatches"] == 0 and s["build"]["cached"]


@pytest.mark.parametrize("kwargs,needle", [
    ({"gap": 1.0}, "gap must be a probability in [0, 1)"),
    ({"stall": -0.1}, "stall must be a probability in [0, 1)"),
    ({"jobs": 0}, "jobs must be a positive integer"),
])
def test_bad_arguments_are_refused(small, kwargs, needle):
    with pytest.raises(ShiftPQError, match=re.escape(needle)):
        harness.run(small, images(1, 0), progress=False, **kwargs)


@pytest.mark.parametrize("args,needle", [
    (["--gap", "1.0"], "a probability (at 1 the stream never moves) must be in [0, 1), got 1.0"),
    (["--stall", "x"], "expected a number in [0, 1), got 'x'"),
    (["--images", "0"], "expected a positive integer"),
    (["--jobs", "0"], "expected a positive integer"),
])
def test_cli_refuses_bad_sim_arguments(args, needle, capsys):
    from shiftpq_cli import main
    with pytest.raises(SystemExit) as e:
        main(["sim", "--build", "nowhere", *args])
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_shards_split_evenly():
    assert harness._shards(10_000, 2) == [(0, 5000), (5000, 5000)]
    assert harness._shards(7, 3) == [(0, 2), (2, 2), (4, 3)]
    assert harness._shards(2, 8) == [(0, 1), (1, 1)]


def test_watchdog_budget_from_the_cycle_model():
    cycles = {"cycles_per_image": 100, "layers": [{"cycles": 100}, {"cycles": 40}]}
    assert harness.budget_cycles(cycles) == 4 * 240
    assert harness.budget_cycles(cycles, gap=0.5) == 4 * 480
    assert harness.budget_cycles(cycles, gap=0.5, stall=0.5) == 4 * 960
