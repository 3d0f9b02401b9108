"""cocotb regression, fast subset (`make sim` runs the full one): the generated RTL of tiny networks
streams real CIFAR-10 images and random networks' images on Verilator (and Icarus) through the
cocotb bench, bit-exact with the golden model and at exactly the modelled cycles per image; and a
deliberately broken generator output is caught."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shiftpq import ir
from shiftpq.data import load_split
from shiftpq.export import export_model
from shiftpq.testnets import images, random_net
from shiftpq_hw.gen import generate
from shiftpq_sim.runner import simulate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny network's generator output (trained or not does not matter for bit-exactness)."""
    t = export_model(random_net(11), {"path": None, "note": "random test network"})
    out = tmp_path_factory.mktemp("gen") / "tiny"
    generate(t, out, par=None)
    return out


def test_tiny_network_on_verilator_real_images(tiny, cifar_dir):
    x, y = load_split(cifar_dir, "test", 3)
    r = simulate(tiny, "verilator", x.numpy(), y.numpy())
    assert r["passed"] and r["mismatches"] == 0 and r["images"] == 3
    assert r["cycles_per_image"] == r["model_cycles_per_image"] == json.loads((tiny / "cycles.json").read_text())["cycles_per_image"]
    saved = json.loads((tiny / "sim" / "results.json").read_text())
    assert {"simulator", "images", "mismatches", "cycles_per_image", "passed"} <= set(saved)
    assert saved["simulator"] == "verilator" and saved["passed"] is True


def test_icarus_and_verilator_agree_cycle_for_cycle(tiny):
    x = images(2, 5)
    ic = simulate(tiny, "icarus", x, tag="agree")
    vl = simulate(tiny, "verilator", x, tag="agree")
    assert ic["passed"] and vl["passed"]  # both bit-exact with the golden model, so with each other
    for key in ("latency_cycles", "cycles_per_image", "mismatches"):
        assert ic[key] == vl[key], key


def test_tiny_network_under_random_gaps_and_backpressure(tiny):
    """Edge images too: all pixels 0 and all 255 (the extreme int8 input codes), then a random one."""
    x = np.concatenate([np.zeros((1, 3, 32, 32), np.uint8), np.full((1, 3, 32, 32), 255, np.uint8), images(1, 3)])
    r = simulate(tiny, "verilator", x, gap=0.3, stall=0.3, tag="stalls")
    assert r["passed"] and r["mismatches"] == 0 and r["images"] == 3


def test_fuzz_random_network_on_verilator(tmp_path):
    """The cocotb bench on a random network (the harness runs another: tests/test_harness.py)."""
    from shiftpq_sim.runner import fuzz
    (r,) = fuzz([1], "verilator", tmp_path, log=lambda s: None)
    assert r["passed"] and r["cycles_match_model"] and r["bench"] == "cocotb", "fuzz seed 1"


def _observable_mutation(t, broken, x, mutation):
    """Change one weight code (or move one requant threshold by one) in ``broken`` so that the
    golden model's scores on ``x`` change: a mutation the images cannot see would prove nothing."""
    from shiftpq.golden import Golden
    want = Golden(t).run(x)
    if mutation == "weight":
        op = next(o for o in broken.ops if o.name == "stem")
        w = op.weight
        cands = [(arr, idx, 1 if arr[idx] != 1 else -1) for arr in [w] for idx in np.ndindex(*w.shape)]
    else:
        op = next(o for o in broken.ops if isinstance(o, ir.Requant) and o.mode == ir.RequantMode.THRESHOLD)
        th = op.thresholds
        cands = [(arr, idx, arr[idx] + d) for arr in [th] for idx in np.ndindex(*th.shape) for d in (1, -1)]
    for arr, idx, new in cands:
        old = arr[idx]
        arr[idx] = new
        if mutation == "threshold" and not np.all(np.diff(arr[idx[0]]) >= 0):
            arr[idx] = old
            continue
        if not np.array_equal(Golden(broken).run(x), want):
            return f"{op.name}{list(idx)}: {old} -> {new}"
        arr[idx] = old
    pytest.fail("no observable mutation found")


@pytest.mark.parametrize("mutation,bench", [("weight", "harness"), ("threshold", "cocotb")])
def test_broken_generator_output_is_caught(mutation, bench, tmp_path):
    """The RTL is generated from tables with one weight code changed (or one requant threshold
    moved by one), the bench's golden model reads the true tables: it must report mismatches, the
    compiled harness as well as the cocotb bench (the harness hands the first wrong image to the
    cocotb bench's diagnosis)."""
    from shiftpq_sim.harness import run
    from shiftpq.tables import save_tables
    t = export_model(random_net(12), {"path": None})
    broken = export_model(random_net(12), {"path": None})
    x = images(2, 12)
    what = _observable_mutation(t, broken, x, mutation)
    out = tmp_path / "broken"
    generate(broken, out, par=None)
    save_tables(t, out / "tables", force=True)  # the bench's golden model reads the true tables
    r = run(out, x, jobs=2, progress=False) if bench == "harness" else simulate(out, "verilator", x)
    assert not r["passed"] and r["mismatches"] > 0 and r["bench"] == bench, f"a broken RTL ({what}) went unnoticed"
    # the diagnosis names the block the mutation is in: a requant after a conv is fused into its engine
    f = r["first_wrong"]
    mutated = next(o for o in t.ops if o.name == what.split("[")[0])
    block = next((o.name for o in t.ops if isinstance(o, ir.Conv) and isinstance(mutated, ir.Requant)
                  and o.dst == mutated.src), mutated.name)
    assert f["block"] == block and f["got"] != f["want"] and f["image"] == r["wrong"][0]["image"], (what, f)
