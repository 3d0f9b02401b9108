"""C simulation of the generated HLS C++ with g++, compared with the golden model image by image:
the backend of ``shiftpq sim --backend hls``.

``simulate_hls(gen_dir, images)`` reads only the generator's output (``hls/``, ``tables/``,
``cycles.json``); builds the testbench once per content (``GEN_DIR/sim/hls/build-<sha256>/csim``: the
hash covers every generated source, the flags and the compiler's version, so an unchanged design is
never rebuilt and a changed one always is); runs it on ``jobs`` shards of the images in parallel;
compares every score vector with the golden model's from the same tables; writes
``GEN_DIR/sim/results-hls.json`` (images, mismatches, accuracy, wall_s, shards: the fields of the RTL
simulation's results) and returns it. On a mismatch it runs the first wrong image again with every
stream between blocks recorded (the g++ stream's ``SHIFTPQ_TRACE_DIR``) and names, under
``first_wrong``, the first block, pixel and channel whose output differs from the golden model's trace.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from shiftpq import children
from shiftpq.atomic import write_text_atomic
from shiftpq.errors import ShiftPQError
from shiftpq.golden import Golden, predict, run_batched
from shiftpq.tables import load_tables

from .hls import FILES, HLS_DIR, Design, block_outputs
from .outputs import read_cycles

RESULTS = "results-hls.json"
WRONG_LISTED = 20  # mismatching images named in the results


def image_bytes(images: np.ndarray) -> bytes:
    """uint8 images (N, 3, H, W) in the order the top level's input stream takes them: raster order,
    the channels of a pixel one after another."""
    return np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 2, 3, 1)).tobytes()


def score_bytes(scores: np.ndarray) -> bytes:
    return np.ascontiguousarray(np.asarray(scores), dtype="<i4").tobytes()


def _compiler_version() -> str:
    try:
        return subprocess.run(["g++", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError) as e:
        raise ShiftPQError(f"g++ not found or not working ({e}): the HLS C simulation needs g++") from None


def build_csim(gen_dir: Path, log=lambda s: None) -> tuple[Path, float, bool]:
    """The testbench binary of ``gen_dir/hls`` (built with its Makefile unless a build of the same
    sources, flags and compiler exists): (path, build seconds, whether it was cached)."""
    src = gen_dir / HLS_DIR
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise ShiftPQError(f"{src / missing[0]}: missing; run `shiftpq gen --backend hls` first")
    h = hashlib.sha256(_compiler_version().encode())
    for f in FILES:
        h.update(f.encode() + b"\0" + (src / f).read_bytes() + b"\0")
    build = gen_dir / "sim" / "hls" / f"build-{h.hexdigest()[:16]}"
    exe = build / "csim"
    if exe.is_file():
        return exe, 0.0, True
    build.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"building the C simulation (g++) in {build}")
    tmp = Path(tempfile.mkdtemp(dir=build.parent, prefix=".build-"))
    try:
        r = children.run(["make", "-s", "-C", str(src), f"BUILD={tmp.resolve()}", "csim"])
        if r.returncode != 0:
            raise ShiftPQError(f"g++ failed on {src} (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
        os.replace(tmp, build)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in build.parent.glob("build-*"):  # one build per design: older ones are stale
        if old != build:
            shutil.rmtree(old, ignore_errors=True)
    return exe, time.perf_counter() - t0, False


def run_csim(exe: Path, images: np.ndarray, work: Path, jobs: int, classes: int, progress: bool = True) -> np.ndarray:
    """Scores (N, classes) int64 of the testbench on ``images``, split into ``jobs`` shards run at once."""
    from tqdm import tqdm
    n = len(images)
    bounds = np.linspace(0, n, jobs + 1).astype(int)
    procs, lock = [], threading.Lock()
    with tqdm(total=n, desc="hls csim", unit="img", disable=not progress, leave=False) as bar:
        def follow(p):
            for line in p.stdout:  # one line per image
                with lock:
                    bar.update(1)

        threads = []
        for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
            if a == b:
                continue
            img, out = work / f"images-{k}.bin", work / f"scores-{k}.bin"
            img.write_bytes(image_bytes(images[a:b]))
            out.unlink(missing_ok=True)
            p = children.popen([str(exe), str(img), str(out)], stdout=subprocess.PIPE,
                               stderr=open(work / f"csim-{k}.log", "w"), text=True)
            procs.append((p, a, b, out, work / f"csim-{k}.log"))
            threads.append(threading.Thread(target=follow, args=(p,), daemon=True))
            threads[-1].start()
        for t in threads:
            t.join()
    scores = np.zeros((n, classes), dtype=np.int64)
    for p, a, b, out, logf in procs:
        code = p.wait()
        children.forget(p)
        if code != 0:
            raise ShiftPQError(f"the C simulation failed (exit {p.returncode}) on images {a}..{b - 1}: "
                               f"{logf.read_text().strip()[-2000:]}")
        got = np.frombuffer(out.read_bytes(), dtype="<i4")
        if got.size != (b - a) * classes:
            raise ShiftPQError(f"{out}: {got.size} scores, expected {(b - a) * classes}")
        scores[a:b] = got.reshape(b - a, classes)
    return scores


def require_hls_build(gen_dir: str | Path) -> None:
    """A `shiftpq gen --backend hls` output is there (checked before any data is loaded)."""
    gen_dir = Path(gen_dir)
    for p in (gen_dir / HLS_DIR, gen_dir / "cycles.json", gen_dir / "tables"):
        if not p.exists():
            raise ShiftPQError(f"{p}: missing; run `shiftpq gen --backend hls` (make gen BACKEND=hls) first")


def simulate_hls(gen_dir: str | Path, images: np.ndarray, labels: np.ndarray | None = None,
                 jobs: int | None = None, progress: bool = True, diagnose: bool = True, log=lambda s: None) -> dict:
    gen_dir = Path(gen_dir)
    require_hls_build(gen_dir)
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise ShiftPQError(f"--jobs must be a positive integer, got {jobs}")
    cycles = read_cycles(gen_dir)
    tables = load_tables(gen_dir / "tables")
    images = np.ascontiguousarray(images, dtype=np.uint8)
    classes = tables.classes
    exe, build_s, cached = build_csim(gen_dir, log)
    work = gen_dir / "sim" / "hls" / "run"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    got = run_csim(exe, images, work, min(jobs, max(1, len(images))), classes, progress)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    want = run_batched(Golden(tables), images, progress=progress)
    golden_s = time.perf_counter() - t1
    # the stimulus and the golden scores for a vendor tool's csim/cosim (run_vitis.tcl)
    (work / "images.bin").write_bytes(image_bytes(images))
    (work / "expected.bin").write_bytes(score_bytes(want))
    bad = np.flatnonzero((got != want).any(axis=1))
    result = {"model": cycles["model"], "source": cycles.get("source"), "backend": "hls", "simulator": "g++ csim",
              "compiler": _compiler_version(), "images": int(len(images)), "mismatches": int(len(bad)),
              "passed": len(bad) == 0, "wall_s": round(wall, 2), "shards": min(jobs, max(1, len(images))),
              "images_per_s": round(len(images) / wall, 1) if wall > 0 else None,
              "build_s": round(build_s, 1), "build_cached": cached, "golden_s": round(golden_s, 2),
              "wrong": [{"image": int(i), "got": got[i].tolist(), "want": want[i].tolist()}
                        for i in bad[:WRONG_LISTED]]}
    if len(bad) and diagnose:
        result["first_wrong"] = first_wrong_block(exe, tables, cycles.get("par"), images[bad[0]], work / "trace")
        result["first_wrong"]["image"] = int(bad[0])
    if labels is not None and len(labels):
        result["accuracy"] = round(100.0 * float((predict(got) == np.asarray(labels)).mean()), 2)
    res = gen_dir / "sim" / RESULTS
    write_text_atomic(res, json.dumps(result, indent=1, sort_keys=True) + "\n")  # never a half-written results file
    return result


def first_wrong_block(exe: Path, tables, par, image: np.ndarray, work: Path) -> dict:
    """The first block (in the DATAFLOW region's order) whose output stream, recorded while ``image``
    runs alone, differs from the golden model's trace: its name, tensor, stream, pixel (y, x), channel
    (logical), and the codes got and wanted."""
    design = Design(tables, par)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "image.bin").write_bytes(image_bytes(image[None]))
    r = subprocess.run([str(exe), str(work / "image.bin"), str(work / "scores.bin")], capture_output=True, text=True,
                       env={**os.environ, "SHIFTPQ_TRACE_DIR": str(work)})
    if r.returncode != 0:
        return {"block": None, "note": f"the traced run failed (exit {r.returncode}): {r.stderr.strip()[-500:]}"}
    _, trace = Golden(tables).run(image[None], trace=True)
    for b in design.blocks:
        for s in block_outputs(b):
            tensor = design.streams[s]["tensor"].split("@")[0]
            info, px = tables.tensors[tensor], design.tensor(tensor)
            dtype = np.dtype(design.types.defs[px["code"]]["gxx"].removesuffix("_t"))
            f = work / f"{s}.bin"
            got = np.fromfile(f, dtype=dtype) if f.is_file() else np.zeros(0, dtype=dtype)
            want = trace[tensor][0].reshape(-1, px["channels"])
            got = got[:len(got) // px["channels"] * px["channels"]].reshape(-1, px["channels"])
            n = min(len(got), len(want))
            diff = np.argwhere(got[:n] != want[:n])
            if len(diff) or len(got) != len(want):
                pix, ch = (int(diff[0][0]), int(diff[0][1])) if len(diff) else (n, 0)
                hw = info.hw
                return {"block": b["name"], "tensor": tensor, "stream": s, "pixel": [pix // hw, pix % hw],
                        "channel": int(info.channels[ch]),
                        "got": int(got[pix, ch]) if pix < len(got) else None,
                        "want": int(want[pix, ch]) if pix < len(want) else None, "beats": [len(got), len(want)]}
    fc = design.blocks[-1]
    return {"block": fc["name"], "tensor": tables.output,
            "note": "every stream between blocks matched the golden trace: the last block's scores differ"}
