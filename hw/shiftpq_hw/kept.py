"""Copies of a register, one home for ``keep``: a register whose loads are spread over the placement
(a wide register's load, an activation read by every lane, a table's part select) is built as
several equal registers, each placed beside the loads it drives. Yosys' ``opt_merge`` merges equal
registers back into one unless the cell is kept; the generator marks each copy's wire ``keep`` and
the synth scripts keep the cell driving a kept wire (templates/synth/). ``engine.replicas``,
``engine.lane_copies`` and ``memmap.SplitRom`` make their copies here.
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal


def kept_register(m: Module, name: str, value, *, en=None, reset_less: bool = False) -> Signal:
    """``value`` registered (its value one cycle later; with ``en``, only on cycles where ``en``
    holds) in a register named ``name`` that synthesis keeps as a copy of its own."""
    reg = Signal(value.shape(), name=name, reset_less=reset_less, attrs={"keep": 1})
    if en is None:
        m.d.sync += reg.eq(value)
    else:
        with m.If(en):
            m.d.sync += reg.eq(value)
    return reg
