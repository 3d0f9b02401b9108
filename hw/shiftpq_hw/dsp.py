"""The FPGA's multiplier as a registered block, and the FPGA family the RTL is written for.

``RegisteredProduct``: ``p == a * b`` two enabled cycles after ``a`` and ``b``, the operands
registered, then the product. For an ECP5 (``ECP5``: ``shiftpq gen --target ecp5``) it is one
``MULT18X18D`` with its own input and output registers. Yosys does not move fabric registers into an
ECP5 multiplier, and a product built from ``*`` between fabric registers is timed by nextpnr as
route, multiplier and route in one cycle. The DSP columns sit far from the logic that feeds them, so
such a product was the critical path of two of three seeds of the twelfth round (docs/
hw-round5-design.md, section 9). With its registers inside the block the route in and the route out
are separate cycles. For any other target (``GENERIC``, and Amaranth's simulator, which cannot run
an ``Instance``) the same registers are built in logic, with the same latency and enable, so one
cycle model holds for both. ``DEFAULT_TARGET`` is ``ecp5``: routed, its ResNet-20 was faster than
the generic RTL's on each of seeds 1-3 (section 11).

The simulators get the primitive from ``primitives/MULT18X18D.v``, a model of the subset
instantiated here (``sim_models``). tests/test_dsp.py checks it and the logic version against
``a * b`` on both simulators, with the clock enable toggling.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import ClockSignal, Const, Module, Shape, Signal, Value, signed
from amaranth.hdl import Instance
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .checked import Checked

DSP_BITS = 18  # a signed operand of the ECP5's multiplier (MULT18X18D)
PRIMITIVES = Path(__file__).resolve().parent / "primitives"


@dataclass(frozen=True)
class Target:
    """The FPGA family the RTL is written for: which vendor primitives it instantiates. It is the
    ``platform`` Amaranth passes to every ``elaborate``."""
    family: str
    primitives: tuple[str, ...]

    @property
    def dsp_registers(self) -> bool:
        """Whether a ``RegisteredProduct`` is the FPGA's multiplier with its own registers (an
        instantiated ``MULT18X18D``), rather than ``*`` between registers in logic."""
        return "MULT18X18D" in self.primitives


GENERIC = Target("generic", ())
ECP5 = Target("ecp5", ("MULT18X18D",))
TARGETS = {t.family: t for t in (GENERIC, ECP5)}
DEFAULT_TARGET = ECP5.family  # ``shiftpq gen``'s (docs/hw-round5-design.md section 11)


def target_of(platform) -> Target:
    """The target an ``elaborate`` was given: ``GENERIC`` for None (Amaranth's simulator, a plain
    conversion)."""
    return platform if isinstance(platform, Target) else GENERIC


def sim_models(verilog: str) -> str:
    """The simulation models of the vendor primitives ``verilog`` instantiates, as one Verilog text
    (empty when it instantiates none): for the simulators only, never for synthesis. A primitive is
    instantiated where its name opens a statement (``MULT18X18D #(`` or ``MULT18X18D name (``), whatever
    the indentation."""
    texts = []
    for name in ECP5.primitives:
        if re.search(rf"^\s*{name}\s*(#|[A-Za-z_\\])", verilog, re.MULTILINE):
            texts.append((PRIMITIVES / f"{name}.v").read_text())
    return "\n".join(texts)


def _fits(shape: Shape) -> bool:
    return shape.width <= (DSP_BITS if shape.signed else DSP_BITS - 1)


class RegisteredProduct(Checked, wiring.Component):
    """``p == a * b`` (Amaranth's product shape) two cycles with ``en`` high after ``a`` and ``b``:
    the operands registered, the product registered; everything holds while ``en`` is low. The
    operands must fit one 18x18 signed multiplier: a signed operand up to 18 bits, an unsigned one
    up to 17 (``requant.dsp_chunks`` splits wider values). No reset: the product is data, valid only
    with the valid bit its pipeline stages beside it (engine.py)."""

    @staticmethod
    def check(a_shape, b_shape):
        a, b = Shape.cast(a_shape), Shape.cast(b_shape)
        if not (_fits(a) and _fits(b)):
            raise ValueError(f"a multiplier's operands are at most {DSP_BITS} bits signed or {DSP_BITS - 1} "
                             f"unsigned, got {a!r} and {b!r}")

    def __init__(self, a_shape, b_shape):
        a, b = Shape.cast(a_shape), Shape.cast(b_shape)
        self.p_shape = (Signal(a) * Signal(b)).shape()
        super().__init__({"a": In(a), "b": In(b), "en": In(1, init=1), "p": Out(self.p_shape)})

    def elaborate(self, platform):
        m = Module()
        if target_of(platform).dsp_registers:
            A, B, P = Signal(signed(DSP_BITS)), Signal(signed(DSP_BITS)), Signal(2 * DSP_BITS)
            m.d.comb += [A.eq(self.a), B.eq(self.b)]  # extended by their signedness: exact signed operands
            regs = {f"p_REG_{r}_{kind}": val for r in ("INPUTA", "INPUTB", "OUTPUT")
                    for kind, val in (("CLK", "CLK0"), ("CE", "CE0"), ("RST", "RST0"))}
            m.submodules.mult = Instance(
                "MULT18X18D", **regs, p_REG_PIPELINE_CLK="NONE", p_RESETMODE="SYNC",
                i_CLK0=ClockSignal(), i_CE0=self.en, i_RST0=Const(0, 1),
                i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1), i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
                **{f"i_A{i}": A[i] for i in range(DSP_BITS)}, **{f"i_B{i}": B[i] for i in range(DSP_BITS)},
                **{f"i_C{i}": Const(0, 1) for i in range(DSP_BITS)},
                **{f"o_P{i}": P[i] for i in range(2 * DSP_BITS)})
            m.d.comb += self.p.eq(P[:self.p_shape.width])
        else:
            a = Signal(self.a.shape(), reset_less=True)
            b = Signal(self.b.shape(), reset_less=True)
            p = Signal(self.p_shape, reset_less=True)
            with m.If(self.en):
                m.d.sync += [a.eq(self.a), b.eq(self.b), p.eq(a * b)]
            m.d.comb += self.p.eq(p)
        return m


def registered_products(m: Module, operands: list, shape=None, en=None, name: str = "mul") -> list[Signal]:
    """``a * b`` for each ``(a, b)`` of ``operands``, two stages later, as ``shape`` (None: the
    product's own, ``RegisteredProduct.p_shape``): a ``RegisteredProduct`` each (submodules
    ``{name}{i}``), enabled by ``en`` (always, without)."""
    out = []
    for i, (a, b) in enumerate(operands):
        a, b = Value.cast(a), Value.cast(b)
        mul = m.submodules[f"{name}{i}"] = RegisteredProduct(a.shape(), b.shape())
        p = Signal(shape if shape is not None else mul.p_shape, name=f"{name}{i}_p")
        m.d.comb += [mul.a.eq(a), mul.b.eq(b), p.eq(mul.p)]
        if en is not None:
            m.d.comb += mul.en.eq(en)
        out.append(p)
    return out
