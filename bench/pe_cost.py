"""PE cost study: the same engine-shaped MAC array with every PE variant, against the uniform 4x4
multiplier mapped to LUTs.

    python bench/pe_cost.py [--shapes 2x12,1x23,8x8] [--variants ...] [--tree comb|registered]
                            [--device ecp5-85k] [--seed 1] [--freq 100] [--out FILE]

The array is ``shiftpq_hw.pe.MacArray``: ``lanes x simd`` PEs as in a conv engine (inputs
registered as the memories give them; the values shared by the lanes computed once per input
channel and registered; products registered with their ``+ 1`` count; each lane's balanced adder
tree registered; each lane's accumulator). Shapes: ``LxS`` (lanes x simd); the default ones are the
ResNet-20 engines at the default fold (2x12: layer1, 1x23: layers 2 and 3; build/resnet20/cycles.json)
and a lane-heavy 8x8, where the shared part is divided over more lanes. Variants (pe.py, ``VARIANTS``):

- uniform-lut: signed 4-bit x unsigned 4-bit ``*``, DSP inference off (``synth_ecp5 -nodsp``): the
  LUT-mapped uniform 4x4 multiplier every other row is compared with;
- uniform-dsp: the same with ``*`` on the DSPs (one MULT18X18D per product);
- shift-add: the engines' APoT PE (``product_terms``), the activation decoded once per channel;
- multiples: shared a, 3a, 5a per channel, a PE is a select of a shifted multiple and a sign;
- xy: shared a, 6a; the weight stored as two slot selects ({0, a, 6a} + {0, 2a, 4a}) and a sign;
- table: no decode, a (weight magnitude, activation code) product table per PE;
- dsp2: two channels' products summed in one MULT18X18D (exact packing, ``pe.dsp_pair``).

Every figure comes from Yosys' ``stat`` and nextpnr's report (``shiftpq_hw.synth.run_flow``, a pinned
seed): logic cells are nextpnr's TRELLIS_COMB (a LUT4 one, a carry cell two). The shared part of a
variant (its per-channel values and their registers) is synthesized alone (Yosys' count) to say how
much of a MAC's cost it is. ``--tree registered`` registers every level of the lanes' adder trees
(the engines build each tree as one expression). Written as JSON (default
bench/results/pe_cost-<device>.json, ``-registered-tree`` added for registered trees),
byte-identical for the same tools and arguments.
"""
from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "sw"), str(ROOT / "hw")]

from amaranth.back import rtlil  # noqa: E402
from amaranth.hdl import Cat, Fragment, Module, Signal  # noqa: E402
from amaranth.lib import data, wiring  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402
from tqdm import tqdm  # noqa: E402

from shiftpq.levels import level_set  # noqa: E402
from shiftpq_hw.pe import MacArray, act_code_shape, shared_values  # noqa: E402
from shiftpq_hw.synth import run_flow  # noqa: E402

BASELINE = "uniform-lut"
ALL = (BASELINE, "uniform-dsp", "shift-add", "multiples", "xy", "table", "dsp2")
WEIGHT_BITS = {"uniform-lut": 4, "uniform-dsp": 4, "shift-add": 4, "multiples": 4, "xy": 5, "table": 4, "dsp2": 5}


class SharedPart(wiring.Component):
    """The part of a variant the lanes share: ``simd`` activation codes in (registered), each
    channel's shared values registered and out; synthesized alone (Yosys only: the ports need no
    pins) to size the shared part."""

    def __init__(self, kind: str, wl, al, simd: int):
        self.kind, self.wl, self.al, self.simd = kind, wl, al, simd
        m = Module()  # the shared values' widths, for the output port (a scratch module, then discarded)
        width = sum(len(v) for j in range(simd) for v in shared_values(m, kind, Signal(act_code_shape(al)), wl, al,
                                                                       f"ch{j}").values())
        Fragment.get(m, None)  # used (Amaranth's public way): no unused-elaboratable warning for the scratch
        super().__init__({"a": In(data.ArrayLayout(act_code_shape(al), simd)), "o": Out(width)})

    def elaborate(self, platform):
        m = Module()
        a_in = Signal.like(self.a)
        m.d.sync += a_in.eq(self.a)
        outs = []
        for j in range(self.simd):
            for key, v in shared_values(m, self.kind, a_in[j], self.wl, self.al, f"ch{j}").items():
                r = Signal(v.shape(), name=f"ch{j}_s{key}")
                m.d.sync += r.eq(v)
                outs.append(r)
        m.d.comb += self.o.eq(Cat(*outs))
        return m


class PinLimited(wiring.Component):
    """The array as it sits inside an engine, not on the package's pins (an 8x8 array's ports alone
    are more than the ECP5-85k's 205 user I/O): its weight and activation inputs are a shift register
    loaded one bit per cycle from ``din`` (flip-flops only, no logic), and each lane's accumulator
    shows its top bit (which depends on every lower bit, so no logic is removed)."""

    def __init__(self, array: MacArray):
        self.array = array
        super().__init__({"din": In(1), "msb": Out(array.lanes)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = arr = self.array
        sr = Signal(len(arr.w.as_value()) + len(arr.a.as_value()))
        m.d.sync += sr.eq(Cat(self.din, sr[:-1]))
        m.d.comb += [arr.w.as_value().eq(sr[:len(arr.w.as_value())]), arr.a.as_value().eq(sr[len(arr.w.as_value()):])]
        m.d.comb += self.msb.eq(Cat(*[arr.acc[p][-1] for p in range(arr.lanes)]))
        return m


def _kind(variant: str) -> str:
    return "uniform" if variant.startswith("uniform") else variant


@functools.lru_cache(maxsize=None)
def _shared_cells(variant: str, simd: int, device: str) -> int:
    """Logic cells of the shared part by Yosys' count (LUT4 + 2 x CCU2C; 0: the variant shares
    nothing). Yosys only: placed alone, a block of registers fed straight from I/O pins takes logic
    cells of its own that it would not take inside an engine. It depends on the channels, not the
    lanes: measured once per (variant, simd)."""
    kind = _kind(variant)
    if kind in ("uniform", "table"):
        return 0
    wl, al = level_set(4, True), level_set(4, False)
    work = Path(tempfile.mkdtemp(prefix=f"pe_cost-shared-{variant}-"))
    try:
        comp = SharedPart("shift-add" if kind == "dsp2" else kind, wl, al, simd)
        (work / "top.il").write_text(rtlil.convert(comp, name="top", emit_src=False))
        return run_flow(work, "top.il", "top", device, log=lambda s: None, place=False)["min_logic_cells"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(variant: str, lanes: int, simd: int, tree: str, device: str, freq: float, seed: int, log) -> dict:
    wl, al = level_set(4, True), level_set(4, False)
    work = Path(tempfile.mkdtemp(prefix=f"pe_cost-{variant}-"))
    try:
        arr = PinLimited(MacArray(_kind(variant), wl, al, lanes, simd, tree=tree))
        (work / "top.il").write_text(rtlil.convert(arr, name="top", emit_src=False))
        r = run_flow(work, "top.il", "top", device, freq, seed, log=log, dsp=variant != BASELINE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    macs = lanes * simd
    shared = _shared_cells(variant, simd, device)
    return {"variant": variant, "lanes": lanes, "simd": simd, "tree": tree, "macs": macs,
            **{k: r[k] for k in ("luts", "ffs", "dsps", "fmax_mhz", "yosys_cells", "reason")},
            "luts_per_mac": round(r["luts"] / macs, 2) if r["luts"] is not None else None,
            "shared_cells": shared, "shared_per_mac": round(shared / macs, 2),
            "dsps_per_mac": round((r["dsps"] or 0) / macs, 3), "weight_bits": WEIGHT_BITS[variant]}


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        try:
            lanes, simd = (int(x) for x in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--shapes: {item!r} is not LANESxSIMD (e.g. 2x12)") from None
        if lanes < 1 or simd < 1:
            raise ValueError(f"--shapes: {item!r} needs lanes and simd >= 1")
        shapes.append((lanes, simd))
    return shapes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="2x12,1x23,8x8", help="comma-separated LANESxSIMD arrays (default %(default)s)")
    ap.add_argument("--variants", default=",".join(ALL), help="comma-separated, from: " + ", ".join(ALL))
    ap.add_argument("--tree", default="comb", choices=("comb", "registered"),
                    help="each lane's adder tree: one expression as in the engines (comb), or every level registered")
    ap.add_argument("--device", default="ecp5-85k")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--freq", type=float, default=100.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    try:
        shapes = parse_shapes(a.shapes)
    except ValueError as e:
        print(f"pe_cost.py: {e}", file=sys.stderr)
        return 2
    variants = a.variants.split(",")
    bad = [v for v in variants if v not in ALL]
    if bad:
        print(f"pe_cost.py: --variants: unknown {', '.join(bad)}; expected some of {', '.join(ALL)}", file=sys.stderr)
        return 2
    if BASELINE not in variants:
        variants.insert(0, BASELINE)  # every ratio is to the LUT multiplier in the same array
    rows = []
    runs = [(s, v) for s in shapes for v in variants]
    with tqdm(runs, desc="pe_cost", unit="run") as bar:
        for (lanes, simd), variant in bar:
            bar.set_postfix_str(f"{variant} {lanes}x{simd}")
            row = measure(variant, lanes, simd, a.tree, a.device, a.freq, a.seed, log=lambda s: None)
            rows.append(row)
            if row["luts"] is None:
                tqdm.write(f"{variant} {lanes}x{simd}: no placement: {row['reason']}")
                continue
            tqdm.write(f"{variant:<12} {lanes}x{simd}: {row['luts']} cells ({row['luts_per_mac']}/MAC, shared "
                       f"{row['shared_per_mac']}/MAC), {row['ffs']} FFs, {row['dsps']} DSPs, Fmax {row['fmax_mhz']} MHz")
    for row in rows:
        base = next(r for r in rows if r["variant"] == BASELINE and (r["lanes"], r["simd"]) == (row["lanes"], row["simd"]))
        row["vs_uniform_lut"] = round(row["luts"] / base["luts"], 3) if base["luts"] and row["luts"] else None
    suffix = "" if a.tree == "comb" else "-registered-tree"
    out = Path(a.out or ROOT / "bench" / "results" / f"pe_cost-{a.device}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": a.device, "seed": a.seed, "freq_target_mhz": a.freq, "tree": a.tree,
                               "baseline": BASELINE, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
