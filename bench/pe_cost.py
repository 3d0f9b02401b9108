"""PE cost study: the same MAC array with the APoT shift-add PE and with multiplier PEs.

    python bench/pe_cost.py [--pes 16] [--device ecp5-85k] [--seed 1] [--freq 100] [--out FILE]

Each array has N PEs fed from input registers, one product per PE per cycle (registered), an adder
tree (registered) and an accumulator: the structure of one lane of the generator's conv engines.
Variants:
- apot4:   4-bit APoT weight code x 4-bit APoT activation code, shift-add PE (hw/shiftpq_hw/pe.py),
           the plain ``shift_add``: two's-complement weight code, decode and negation per product;
- apot4-engine: the PE as the conv engines build it (``product_terms``): the weight stored as sign
           and magnitude, the activation decoded and registered before the PE (an engine decodes
           each input channel once for all its lanes; here every PE has its own channel), the
           product in ones' complement and the negative weights' ``+ 1`` counted and added once
           after the adder tree;
- uint4:   uniform signed 4-bit weight x unsigned 4-bit activation, `*` (Yosys picks LUTs or DSPs);
- uint4-lut: the same with DSP inference off (synth_ecp5 -nodsp): the multiplier in LUTs;
- uint8:   uniform signed 8-bit x unsigned 8-bit, `*`.
Every figure comes from Yosys' stat and nextpnr's report (shiftpq_hw.synth.run_flow), with a pinned
seed; written as JSON (default bench/results/pe_cost-<device>.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "sw"), str(ROOT / "hw")]

from amaranth.back import rtlil  # noqa: E402
from amaranth.hdl import Module, Mux, Signal, signed, unsigned  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402

from shiftpq.levels import level_set  # noqa: E402
from shiftpq_hw.pe import (act_code_shape, act_value, adder_tree, product_terms, shift_add,  # noqa: E402
                           weight_code_shape, weight_field_shape)
from shiftpq_hw.synth import run_flow  # noqa: E402

ACC_BITS = 24


class MacArray(wiring.Component):
    """N PEs + registered adder tree + accumulator; ``kind`` picks the PE."""

    def __init__(self, n: int, kind: str):
        self.n, self.kind = n, kind
        if kind.startswith("apot4"):
            self.wl, self.al = level_set(4, True), level_set(4, False)
            wshape, ashape = weight_code_shape(self.wl), act_code_shape(self.al)
        else:
            bits = 8 if kind == "uint8" else 4
            wshape, ashape = signed(bits), unsigned(bits)
        super().__init__({"w": In(wshape.width * n), "a": In(ashape.width * n), "acc": Out(signed(ACC_BITS))})
        self._wshape, self._ashape = wshape, ashape

    def elaborate(self, platform):
        m = Module()
        products = []
        wr = Signal(len(self.w))
        ar = Signal(len(self.a))
        m.d.sync += [wr.eq(self.w), ar.eq(self.a)]  # registered inputs: the paths start at flip-flops
        ww, aw = self._wshape.width, self._ashape.width
        negs = []
        for i in range(self.n):
            w = wr[i * ww:(i + 1) * ww].as_signed()
            a = ar[i * aw:(i + 1) * aw]
            if self.kind == "apot4-engine":
                wf = Signal(weight_field_shape(self.wl), name=f"pe{i}_wf")  # the stored sign and magnitude
                decoded = act_value(m, a, self.al, f"pe{i}")
                aval = Signal.like(decoded, name=f"pe{i}_aval")
                m.d.sync += [wf.mag.eq(Mux(w < 0, -w, w)), wf.neg.eq(w < 0), aval.eq(decoded)]
                p, c = product_terms(m, wf, aval, self.wl, self.al, name=f"pe{i}")
                neg = Signal(name=f"pe{i}_neg")
                m.d.sync += neg.eq(c)
                negs.append(neg)
            elif self.kind == "apot4":
                p = shift_add(m, w, a, self.wl, self.al, name=f"pe{i}")
            else:
                p = Signal(signed(ww + aw + 1), name=f"pe{i}_product")
                m.d.comb += p.eq(w * a)
            reg = Signal(signed(ACC_BITS), name=f"p{i}")
            m.d.sync += reg.eq(p)
            products.append(reg)
        level = products
        while len(level) > 1:  # registered binary adder tree
            nxt = []
            for j in range(0, len(level) - 1, 2):
                s = Signal(signed(ACC_BITS), name=f"t{len(level)}_{j}")
                m.d.sync += s.eq(level[j] + level[j + 1])
                nxt.append(s)
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        acc = Signal(signed(ACC_BITS))
        if negs:  # the negative weights' + 1, counted beside the tree and delayed to its sum
            ones = Signal(range(self.n + 1))
            m.d.sync += ones.eq(adder_tree(negs))
            for k in range((self.n - 1).bit_length() - 1):  # the tree's levels but the first
                delayed = Signal.like(ones, name=f"ones_d{k}")
                m.d.sync += delayed.eq(ones)
                ones = delayed
            m.d.sync += acc.eq(acc + level[0] + ones)
        else:
            m.d.sync += acc.eq(acc + level[0])
        m.d.comb += self.acc.eq(acc)
        return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pes", type=int, default=16)
    ap.add_argument("--device", default="ecp5-85k")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--freq", type=float, default=100.0)
    ap.add_argument("--variants", default="apot4,apot4-engine,uint4,uint4-lut,uint8")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    for variant in a.variants.split(","):
        kind = variant.removesuffix("-lut")
        work = Path(tempfile.mkdtemp(prefix=f"pe_cost-{variant}-"))
        try:
            (work / "top.il").write_text(rtlil.convert(MacArray(a.pes, kind), name="top", emit_src=False))
            r = run_flow(work, "top.il", "top", a.device, a.freq, a.seed, log=lambda s: print(f"  {variant}: {s}"),
                         dsp=not variant.endswith("-lut"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        row = {"variant": variant, "pes": a.pes, **{k: r[k] for k in ("luts", "ffs", "dsps", "fmax_mhz", "yosys_cells")},
               "luts_per_pe": r["luts"] / a.pes if r["luts"] is not None else None}
        rows.append(row)
        print(f"{variant:<10} {a.pes} PEs: {r['luts']} LUTs ({row['luts_per_pe']:.1f}/PE), {r['ffs']} FFs, "
              f"{r['dsps']} DSPs, Fmax {r['fmax_mhz']} MHz", flush=True)
    base = rows[0]
    for row in rows[1:]:
        if base["luts"] and row["luts"]:
            row["luts_vs_" + base["variant"]] = round(row["luts"] / base["luts"], 3)
    out = Path(a.out or ROOT / "bench" / "results" / f"pe_cost-{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": a.device, "seed": a.seed, "freq_target_mhz": a.freq, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
