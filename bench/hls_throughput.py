"""HLS C simulation throughput: images/s of the generated C++ under g++ beside the golden model's, in one run.

    python bench/hls_throughput.py [--build GEN_DIR] [--images 200] [--jobs 1 2] [--repeats 3] [--out FILE]

Without --build it generates the shipped PPQ ResNet-20 (models/resnet20-ppq.pt, default PAR) with
``shiftpq gen --backend hls`` into a temporary directory. The images are the first N CIFAR-10 test
images ($CIFAR10_DIR). Each figure is the median of ``repeats`` runs; every C simulation run is checked
against the golden model (a mismatch fails the bench). Writes JSON (default
bench/results/hls_throughput-cpu.json). The RTL simulation's figure comes from the RTL harness's own
bench (bench/sim_throughput.py), not from this one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "sw"), str(ROOT / "hw")]
from shiftpq.data import load_split  # noqa: E402
from shiftpq.golden import Golden, run_batched  # noqa: E402
from shiftpq.tables import load_tables  # noqa: E402
from shiftpq_hw.gen import HLS_DEFAULT_PAR, resolve_source  # noqa: E402
from shiftpq_hw.hls import generate_hls  # noqa: E402
from shiftpq_hw.hls_csim import build_csim, run_csim  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default=None, help="a `shiftpq gen --backend hls` output (default: ResNet-20, generated)")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="C simulation processes to compare")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "hls_throughput-cpu.json"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gen = Path(a.build) if a.build else Path(tmp) / "resnet20"
        if not a.build:
            generate_hls(resolve_source("resnet20"), gen, HLS_DEFAULT_PAR)
        tables = load_tables(gen / "tables")
        images = load_split(a.data_dir, "test", a.images)[0].numpy()
        exe, build_s, _ = build_csim(gen)
        golden = Golden(tables)
        want = run_batched(golden, images, progress=False)
        work = Path(tmp) / "work"
        work.mkdir()
        csim = {}
        for jobs in a.jobs:
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                got = run_csim(exe, images, work, jobs, want.shape[1], progress=False)
                times.append(time.perf_counter() - t0)
                if not np.array_equal(got, want):
                    raise SystemExit(f"C simulation differs from the golden model on "
                                     f"{int((got != want).any(axis=1).sum())} images")
            csim[str(jobs)] = round(len(images) / statistics.median(times), 2)
        gtimes = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            run_batched(golden, images, progress=False)
            gtimes.append(time.perf_counter() - t0)
        result = {"model": tables.model, "source": (tables.source or {}).get("path"),
                  "par": json.loads((gen / "cycles.json").read_text())["par"], "images": int(len(images)),
                  "repeats": a.repeats, "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                  "csim_build_s": round(build_s, 1), "csim_images_per_s_by_jobs": csim,
                  "golden_images_per_s": round(len(images) / statistics.median(gtimes), 2),
                  "rtl_images_per_s": "see bench/sim_throughput.py (the RTL harness's bench)",
                  "bit_exact": True}
    print(json.dumps(result, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
