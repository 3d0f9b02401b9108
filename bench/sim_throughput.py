"""RTL simulation throughput: the cocotb bench against the compiled Verilator harness, one design.

    python bench/sim_throughput.py --build build/resnet20 [--cocotb-images 3] [--harness-images 40] [--out FILE]

Both run the same `shiftpq gen` output on the first CIFAR-10 test images, one process each (the
harness's --jobs sharding multiplies its figure by the cores), both must be bit-exact with the golden
model. Simulated cycles/s: the DUT's cycle counter at the last score over the wall time of the run
(cocotb: from the end of reset; harness: the process's whole run), and over the CPU time of the
simulating process (what a free core gives; on a shared machine the wall figure depends on the load).
Build times are measured when the build is not cached (``null`` when it was). Prints the figures and
writes them as JSON (default bench/results/sim_throughput-<model>.json); the ratios are harness / cocotb.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("sw", "hw", "sim"):
    sys.path.insert(0, str(ROOT / sub))
from shiftpq.data import load_split  # noqa: E402
from shiftpq_sim import harness  # noqa: E402
from shiftpq_sim.runner import simulate  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", required=True, metavar="GEN_DIR", help="a `shiftpq gen` output")
    p.add_argument("--cocotb-images", type=int, default=3, help="images through the cocotb bench (slow)")
    p.add_argument("--harness-images", type=int, default=40, help="images through the harness")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 binary directory (default: $CIFAR10_DIR)")
    p.add_argument("--out", default=None, help="default bench/results/sim_throughput-<model>.json")
    a = p.parse_args()
    x, y = load_split(a.data_dir, "test", max(a.cocotb_images, a.harness_images))
    x, y = x.numpy(), y.numpy()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    h = harness.run(a.build, x[:a.harness_images], y[:a.harness_images], jobs=1, tag="bench", progress=False, log=log)
    log(f"harness: {h['sim_cycles_per_s']:.0f} simulated cycles/s, {h['sim_cycles_per_cpu_s']:.0f} per CPU second "
        f"({h['images']} images)")
    c = simulate(a.build, "verilator", x[:a.cocotb_images], y[:a.cocotb_images], tag="bench")
    log(f"cocotb: {c['sim_cycles_per_s']:.0f} simulated cycles/s, {c['sim_cycles_per_cpu_s']:.0f} per CPU second "
        f"({c['images']} images)")
    for r in (h, c):
        if not r["passed"]:
            raise SystemExit(f"{r['bench']}: not bit-exact with the golden model; see {a.build}/sim/")
    result = {"model": h["model"], "cycles_per_image": h["cycles_per_image"], "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "load_average_1min": round(os.getloadavg()[0], 2),
              "cocotb": {"images": c["images"], "sim_cycles_per_s": c["sim_cycles_per_s"],
                         "sim_cycles_per_cpu_s": c["sim_cycles_per_cpu_s"], "wall_s_per_image": c["wall_s_per_image"],
                         "build_s": c["build_s"]},
              "harness": {"images": h["images"], "sim_cycles_per_s": h["sim_cycles_per_s"],
                          "sim_cycles_per_cpu_s": h["sim_cycles_per_cpu_s"], "wall_s_per_image": h["wall_s_per_image"],
                          "build_s": None if h["build"]["cached"] else h["build"]["build_s"],
                          "build_options": h["build"]["options"]},
              "ratio": round(h["sim_cycles_per_s"] / c["sim_cycles_per_s"], 1),
              "ratio_cpu": round(h["sim_cycles_per_cpu_s"] / c["sim_cycles_per_cpu_s"], 1)}
    out = Path(a.out or ROOT / "bench" / "results" / f"sim_throughput-{h['model']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{h['model']}: cocotb {c['sim_cycles_per_s']:,.0f} simulated cycles/s ({c['sim_cycles_per_cpu_s']:,.0f} per "
          f"CPU second), harness {h['sim_cycles_per_s']:,.0f} per process ({h['sim_cycles_per_cpu_s']:,.0f} per CPU "
          f"second): {result['ratio']}x ({result['ratio_cpu']}x per CPU second); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
