"""Copies of a register, one home for ``keep``: a register whose loads are spread over the placement
(a wide register's load, an activation read by every lane, a table's part select) is built as
several equal registers, each placed beside the loads it drives. Yosys' ``opt_merge`` merges equal
registers back into one unless the cell is kept; the generator marks each copy's wire ``keep``
(``KEEP``) and the synth scripts keep the cell driving a kept wire (templates/synth/).
``kept_register`` makes a copy of a value (``engine.replicas``, ``engine.lane_copies``, the output
assembly's codes, ``memmap.SplitRom``'s part select); a copy that computes its own next value (a
read pointer or a run flag per part of a wide register) is declared with ``attrs=KEEP``.
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal

KEEP = {"keep": 1}  # a Signal's attrs: its register is a copy synthesis keeps


def kept_register(m: Module, name: str, value, *, en=None, reset_less: bool = False) -> Signal:
    """``value`` registered (its value one cycle later; with ``en``, only on cycles where ``en``
    holds) in a register named ``name`` that synthesis keeps as a copy of its own."""
    reg = Signal(value.shape(), name=name, reset_less=reset_less, attrs=KEEP)
    if en is None:
        m.d.sync += reg.eq(value)
    else:
        with m.If(en):
            m.d.sync += reg.eq(value)
    return reg
