"""Where a synthesized design's slow paths are, without placing it: shiftpq_hw.depth's estimate of
every register input's delay on ``shiftpq synth``'s Yosys netlist, grouped by block and by register.

    python bench/logic_depth.py --build build/resnet20 [--threshold 10] [--out FILE]

Reads <build>/synth/netlist.json (``make synth`` writes it before place and route starts) and writes
bench/results/logic_depth-<model>.json (the model from <build>/cycles.json). The seventh hardware round
used it to find the paths to cut between 40-minute place-and-route runs (docs/hw-round5-design.md,
section 6)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hw"))

from shiftpq_hw.depth import Netlist, summary  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, required=True, help="a `shiftpq gen` output synthesized by `shiftpq synth`")
    ap.add_argument("--threshold", type=float, default=10.0,
                    help="count the paths at or over this many ns of the model (default 10: about 110 MHz routed)")
    ap.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    ap.add_argument("--out", type=Path, help="the JSON to write (default bench/results/logic_depth-<model>.json)")
    a = ap.parse_args(argv)
    netlist = a.build / "synth" / "netlist.json"
    if not netlist.is_file():
        print(f"logic_depth: {netlist} is missing: run `shiftpq synth --build {a.build}` first", file=sys.stderr)
        return 2
    try:
        model = json.loads((a.build / "cycles.json").read_text())["model"]
    except (OSError, ValueError, KeyError):
        model = a.build.name
    s = summary(Netlist.load(netlist).endpoints(), a.threshold, a.top)
    out = a.out or Path(__file__).parent / "results" / f"logic_depth-{model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "build": str(a.build), **s}, indent=1) + "\n")
    print(f"{s['endpoints']} endpoints, {s['over']} at >= {a.threshold} ns (model), the slowest {s['worst_ns']} ns")
    for r in s["by_register"]:
        print(f"{r['endpoints']:7d} {r['worst_ns']:7.2f}  {r['name']}")
    print("slowest path:")
    for step in s["slowest"]:
        print(f"  {step['arrival_ns']:6.2f}  {step['cell']}.{step['port']}" + (f" (fanout {step['fanout']})" if "fanout" in step else ""))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
