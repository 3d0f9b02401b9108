"""Build the generated accelerator for Icarus or Verilator and run the network bench on it.

``simulate(gen_dir, simulator, images)`` reads only the generator's output (``rtl/``, ``tables/``,
``cycles.json``, ``probes.json``), computes the expected scores with the golden model from those tables, runs
``tb_network`` through ``cocotb_tools.runner`` and returns (and writes to
``<gen_dir>/sim/results-<simulator>.json`` and ``results.json``) what it measured. On a mismatch it
runs the first wrong image again with every block's output stream recorded and names, under
``first_wrong``, the first block, pixel and channel that differ from the golden model's trace.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from shiftpq.errors import ShiftPQError
from shiftpq.golden import Golden
from shiftpq.tables import load_tables

SIMULATORS = ("icarus", "verilator")


_TRIGGER = re.compile(r"^(\s*reg (\\\S*dump_module\S*) +=\s*0;)$", re.M)


def icarus_source(rtl: Path, out: Path) -> Path:
    """The RTL as Icarus 11 needs it. Yosys's Verilog puts a `reg ...dump_module$N = 0` into every
    `always @*` so that the block runs once at time zero; Icarus 11 applies such declaration
    initializers before the blocks wait, so a block whose inputs keep their initial values (a table
    indexed by a counter that stays 0) stays X. One `initial #1` toggle of that reg per module runs
    every such block once after time zero; the logic is untouched (the reg only appears in
    sensitivity lists, with empty bodies)."""
    out.write_text(_TRIGGER.sub(lambda m: f"{m.group(1)}\n  initial #1 {m.group(2)} = 1'b1;", rtl.read_text()))
    return out


def build_args(simulator: str) -> list[str]:
    return ["-Wno-fatal"] if simulator == "verilator" else []


def prepare_env(simulator: str) -> None:
    """The venv's bin (it holds the Verilator wrapper, Makefile) on PATH, also when the venv is not
    activated; for Verilator the PCH fix as a make command-line variable (cocotb runs make itself)."""
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if simulator == "verilator":
        from shiftpq_hw.verilog import VERILATOR_PCH_MAKEVAR
        if VERILATOR_PCH_MAKEVAR not in os.environ.get("MAKEFLAGS", ""):
            os.environ["MAKEFLAGS"] = " ".join(filter(None, [os.environ.get("MAKEFLAGS", ""), VERILATOR_PCH_MAKEVAR]))


def probe_points(gen_dir: str | Path, tables) -> list[dict]:
    """The blocks whose output stream carries one golden-model tensor, one beat per pixel (an array of
    the tensor's channel codes), in execution order, from the generator's ``probes.json``:
    ``instance``, ``block``, ``tensor``, ``width`` (bits per code), checked against ``tables``."""
    from shiftpq_hw.outputs import read_probes
    return read_probes(gen_dir, tables)


def first_wrong_block(tables, image: np.ndarray, points: list[dict], probed: dict) -> dict:
    """The first block (in execution order) whose recorded output differs from the golden model's
    trace of ``image``: its name, tensor, pixel (y, x), channel, and the codes got and wanted."""
    _, trace = Golden(tables).run(image[None], trace=True)
    for p in points:
        info = tables.tensors[p["tensor"]]
        want = trace[p["tensor"]][0].reshape(-1, len(info.channels))
        mask = (1 << p["width"]) - 1
        got = np.array([[(w >> (k * p["width"])) & mask for k in range(want.shape[1])]
                        for w in probed[p["instance"]]], dtype=np.int64).reshape(-1, want.shape[1])
        n = min(len(got), len(want))
        bad = np.argwhere(got[:n] != want[:n])
        if len(bad) or len(got) != len(want):
            pix, ch = (int(bad[0][0]), int(bad[0][1])) if len(bad) else (n, 0)
            hw = info.hw
            return {"block": p["block"], "tensor": p["tensor"], "pixel": [pix // hw, pix % hw],
                    "channel": int(info.channels[ch]) if ch < len(info.channels) else None,
                    "got": int(got[pix, ch]) if pix < len(got) else None,
                    "want": int(want[pix, ch]) if pix < len(want) else None,
                    "beats": [len(got), len(want)]}
    return {"block": None, "note": "every probed block matched the golden trace: the difference is after them"}


def simulate(gen_dir: str | Path, simulator: str, images: np.ndarray, labels: np.ndarray | None = None,
             waves: bool = False, gap: float = 0.0, stall: float = 0.0, tag: str = "", diagnose: bool = True) -> dict:
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    from shiftpq_hw.gen import TOP, primitive_models  # here, not at import: the CLI reads SIMULATORS without Amaranth
    from shiftpq_hw.outputs import read_cycles, require
    from .harness import budget_cycles, check_fraction
    gen_dir = Path(gen_dir).resolve()
    gap, stall = check_fraction("gap", gap), check_fraction("stall", stall)
    if simulator not in SIMULATORS:
        raise ShiftPQError(f"simulator must be one of {', '.join(SIMULATORS)}, got {simulator!r}")
    rtl, cyc_path = gen_dir / "rtl" / f"{TOP}.v", gen_dir / "cycles.json"
    require(rtl, cyc_path, gen_dir / "probes.json", gen_dir / "tables")
    cycles = read_cycles(gen_dir)
    tables = load_tables(gen_dir / "tables")
    blocks = probe_points(gen_dir, tables)  # checked before the simulation, read by the diagnosis
    images = np.ascontiguousarray(images, dtype=np.uint8)
    expected = Golden(tables).run(images)
    build = gen_dir / "sim" / simulator / "build"  # one build per simulator, shared by every run
    work = gen_dir / "sim" / simulator / (tag or "run")
    work.mkdir(parents=True, exist_ok=True)
    stim, measured = work / "stimulus.npz", work / "measured.json"
    np.savez(stim, images=images, expected=expected)
    for f in (measured, work / "results.xml"):
        f.unlink(missing_ok=True)
    prepare_env(simulator)
    runner = get_runner(simulator)
    t0 = time.perf_counter()
    src = icarus_source(rtl, build.parent / f"{TOP}.icarus.v") if simulator == "icarus" else rtl
    runner.build(sources=[src, *primitive_models(gen_dir)], hdl_toplevel=TOP, build_dir=build,
                 build_args=build_args(simulator),
                 timescale=("1ns", "1ps"), waves=waves, log_file=work / "build.log")
    t_build = time.perf_counter() - t0
    env = {"SHIFTPQ_STIMULUS": str(stim), "SHIFTPQ_RESULTS": str(measured),
           "SHIFTPQ_CYCLES": str(cycles["cycles_per_image"]), "SHIFTPQ_GAP": str(gap), "SHIFTPQ_STALL": str(stall),
           "SHIFTPQ_BUDGET": str(budget_cycles(cycles, gap, stall))}

    def bench(work: Path, env: dict) -> tuple[dict, int]:
        xml, measured = work / "results.xml", Path(env["SHIFTPQ_RESULTS"])
        try:
            runner.test(test_module="shiftpq_sim.tb_network", hdl_toplevel=TOP, build_dir=build, test_dir=work,
                        extra_env=env, waves=waves, results_xml=str(xml), log_file=work / "sim.log")
        except SystemExit:  # the runner exits when a test failed; the results file says which and why
            pass
        if not xml.exists():
            raise ShiftPQError(f"{simulator}: no test results; see {work / 'sim.log'}")
        if not measured.exists():
            raise ShiftPQError(f"{simulator}: the bench ended before writing results; see {work / 'sim.log'}")
        return json.loads(measured.read_text()), get_results(xml)[1]

    m, failed = bench(work, env)
    if "stopped" in m:  # the watchdog: a stream stopped moving
        result = {"model": cycles["model"], "simulator": simulator, "bench": "cocotb", "images": int(len(images)),
                  "passed": False, "stopped": [m["stopped"]], "images_done": m["images_done"], "mismatches": None,
                  "cycles_per_image": None, "cycles_match_model": None, "latency_cycles": None, "gap": gap, "stall": stall, "build_s": round(t_build, 1)}
        text = json.dumps(result, indent=1, sort_keys=True) + "\n"
        (gen_dir / "sim" / f"results-{simulator}{'-' + tag if tag else ''}.json").write_text(text)
        (gen_dir / "sim" / "results.json").write_text(text)
        return result
    result = {"bench": "cocotb", "model": cycles["model"], "source": cycles.get("source"), "simulator": simulator,
              "images": int(len(images)), "mismatches": m["mismatches"],
              "cycles_per_image": m["cycles_per_image"], "model_cycles_per_image": cycles["cycles_per_image"],
              "cycles_match_model": m["cycles_per_image"] == cycles["cycles_per_image"] if not (gap or stall) else None,
              "passed": failed == 0 and m["mismatches"] == 0, "latency_cycles": m["latency_cycles"],
              "build_s": round(t_build, 1), "sim_wall_s": m["wall_s"], "sim_cycles_per_s": m["sim_cycles_per_s"],
              "sim_cycles_per_cpu_s": m["sim_cycles_per_cpu_s"],
              "wall_s_per_image": m["wall_s_per_image"], "gap": gap, "stall": stall, "wrong": m["wrong"],
              "waves": str(next(work.rglob("*.fst"), "")) if waves else None}
    if m["mismatches"] and diagnose:  # name the first block whose output differs from the golden trace
        i = m["wrong"][0]["image"]
        dwork = work.parent / f"{work.name}-diagnosis"
        dwork.mkdir(exist_ok=True)
        dstim, dmeasured = dwork / "stimulus.npz", dwork / "measured.json"
        np.savez(dstim, images=images[i:i + 1], expected=expected[i:i + 1])
        dmeasured.unlink(missing_ok=True)
        (dwork / "results.xml").unlink(missing_ok=True)
        dm, _ = bench(dwork, {**env, "SHIFTPQ_STIMULUS": str(dstim), "SHIFTPQ_RESULTS": str(dmeasured),
                              "SHIFTPQ_PROBES": json.dumps([b["instance"] for b in blocks])})
        result["first_wrong"] = first_wrong_block(tables, images[i], blocks, dm["probed"])
        result["first_wrong"]["image"] = int(i)
    if labels is not None and m["mismatches"] == 0:  # the hardware's predictions are the golden model's
        result["accuracy"] = round(100.0 * float((expected.argmax(1) == np.asarray(labels)).mean()), 2)
    text = json.dumps(result, indent=1, sort_keys=True) + "\n"
    (gen_dir / "sim" / f"results-{simulator}{'-' + tag if tag else ''}.json").write_text(text)
    (gen_dir / "sim" / "results.json").write_text(text)
    return result


def fuzz(seeds: list[int], simulator: str, work: str | Path, n_images: int = 2, log=print,
         bench: str = "cocotb") -> list[dict]:
    """Random small networks (residual or plain, one or two blocks per stage, random widths, kept
    filters down to 1, random bit widths, random folding, random multiplier pairs, either target) through
    tables -> RTL -> simulation, each compared with its golden model. The seed of every network is
    logged first, so a failure reproduces with ``--fuzz 1 --first-seed SEED``."""
    import random as _random

    from shiftpq.export import export_model
    from shiftpq.testnets import images, random_net
    from shiftpq_hw.dsp import TARGETS
    from shiftpq_hw.gen import generate
    results = []
    for seed in seeds:
        par = _random.Random(seed).choice([None, 1, 2, 4, 8])
        pairs = _random.Random(f"pairs{seed}").choice([0, 3, 1000])  # multipliers for PE pairs (plan.assign_pairs)
        target = _random.Random(f"target{seed}").choice(sorted(TARGETS))  # the primitives instantiated, or none
        net = random_net(seed, random_bits=True, random_arch=True)
        s = net.spec
        log(f"fuzz seed {seed}: {s.name} widths {list(s.widths)} x{s.blocks} blocks, W{s.wbits}A{s.abits}, "
            f"PAR={par or 'max'}, a budget of {pairs} multiplier pairs, target {target}, {simulator} ({bench})")
        tables = export_model(net, {"path": None, "fuzz_seed": seed})
        out = Path(work) / f"seed{seed}"
        used = generate(tables, out, par, force=True, dsp_pairs=pairs, target=target)["dsp_pairs"]["used"]
        if bench == "harness":
            from .harness import run
            r = run(out, images(n_images, seed), jobs=1, progress=False)
        else:
            r = simulate(out, simulator, images(n_images, seed))
        r["seed"], r["par"], r["dsp_pairs"], r["target"] = seed, par, used, target
        results.append(r)
        log(f"fuzz seed {seed}: {'PASS' if r['passed'] else 'FAIL'} ({r['mismatches']} mismatches, "
            f"{r['cycles_per_image']} cycles per image, model {r['model_cycles_per_image']}, {used} multiplier pairs)")
    return results
