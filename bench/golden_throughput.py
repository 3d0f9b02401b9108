"""Golden-model throughput: images/s of the integer-only NumPy model, by worker threads.

    python bench/golden_throughput.py [--tables DIR] [--images 1000] [--repeats 3] [--out FILE]

Without --tables it exports a GM-pruned (30 %), calibrated, untrained ResNet-20 (the cost of the
golden model does not depend on the weights' values). Prints the figures and writes them as JSON
(default bench/results/golden_throughput-cpu.json). Each figure is the median of ``repeats`` runs;
the thread ratio compares runs made in the same call.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sw"))
from shiftpq.export import export_model  # noqa: E402
from shiftpq.golden import Golden, run_batched  # noqa: E402
from shiftpq.models import build_model  # noqa: E402
from shiftpq.pruning import gm_prune, layer_rates  # noqa: E402
from shiftpq.quant import calibrate_quantizers  # noqa: E402
from shiftpq.tables import load_tables  # noqa: E402
from shiftpq.testnets import images as random_images  # noqa: E402


def default_tables():
    torch.manual_seed(0)
    model = build_model("resnet20")
    gm_prune(model, layer_rates(model, 0.3), incremental=True)
    model.set_quant(True)
    calibrate_quantizers(model, torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8))
    return export_model(model.eval(), {"path": "untrained resnet20 (benchmark)"})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", default=None)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "golden_throughput-cpu.json"))
    a = p.parse_args()
    tables = load_tables(a.tables) if a.tables else default_tables()
    golden = Golden(tables)
    images = random_images(a.images)
    run_batched(golden, images[:250], progress=False)  # warm-up
    result = {"model": tables.model, "images": a.images, "repeats": a.repeats,
              "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(), "runs": {}}
    for workers in (1, 2, 4):
        secs = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            run_batched(golden, images, progress=False, workers=workers)
            secs.append(time.perf_counter() - t0)
        med = statistics.median(secs)
        result["runs"][str(workers)] = {"median_s": round(med, 3), "images_per_s": round(a.images / med, 1),
                                        "seconds_per_10k": round(10000 * med / a.images, 1)}
        print(f"{workers} worker thread(s): {a.images / med:8.1f} img/s, {10000 * med / a.images:6.1f} s per 10,000 images")
    base = result["runs"]["1"]["median_s"]
    result["speedup_vs_1_thread"] = {k: round(base / v["median_s"], 2) for k, v in result["runs"].items()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
