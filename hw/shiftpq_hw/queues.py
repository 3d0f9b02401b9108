"""Ring buffers, one home for their pieces: the pointer that wraps around (``wrap_increment``), a
count that steps up and down (``up_down``), the read of the entry a pointer names (``select``: a
complete case statement, which Verilator's CASEINCOMPLETE asks for and the Verilog backend keeps
whole), and the credit queue (``CreditQueue``) of the conv engines' output assembly and the FC's
score queue, whose writer never waits.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal


def wrap_increment(p, depth: int):
    """``p + 1`` over ``range(depth)``: 0 after ``depth - 1``."""
    return Mux(p == depth - 1, 0, p + 1)


def up_down(m: Module, count: Signal, up, down, *values) -> list[Signal]:
    """``count += up - down`` at the clock, as a pick among its neighbours ``count + 1`` and ``count -
    1`` (both computed from the register alone): the late ``up``/``down`` (a sink's ``ready``, a
    source's ``valid``) reach a select, not the start of a carry chain (a FIFO's and a credit queue's
    counts were routed critical paths). Returns, for each of ``values``, a register that holds
    ``count != value`` (kept with the count: its next value is the same pick among the neighbours'
    compares), so the full and empty flags a queue's ``ready``/``valid`` are made of are registers,
    not a compare after the count (a FIFO's ``ready`` was a routed critical path that way)."""
    inc, dec = Signal.like(count, name=f"{count.name}_inc"), Signal.like(count, name=f"{count.name}_dec")
    m.d.comb += [inc.eq(count + 1), dec.eq(count - 1)]
    flags = [Signal(name=f"{count.name}_ne{v}", init=int(count.init != v)) for v in values]
    with m.If(up & ~down):
        m.d.sync += [count.eq(inc), *(f.eq(inc != v) for f, v in zip(flags, values))]
    with m.Elif(down & ~up):
        m.d.sync += [count.eq(dec), *(f.eq(dec != v) for f, v in zip(flags, values))]
    return flags


def select(m: Module, target, entries: list, index):
    """``target = entries[index]`` (combinational), the last entry on every index past the others."""
    with m.Switch(index):
        for j, entry in enumerate(entries):
            with (m.Case(j) if j < len(entries) - 1 else m.Default()):
                m.d.comb += target.eq(entry)


class CreditQueue:
    """A queue of ``depth`` entries in a ring, the output stream ``o`` its oldest held entry, for a
    writer that never waits: a place is reserved by taking a credit (``take``, while ``credit``),
    the writer fills entry ``wptr`` (``at(e)``: entry ``e`` is the one being filled) in as many
    cycles as it needs, and ``push`` ends it. A credit comes back when the sink takes an entry, so
    the sink's ``o.ready`` reaches only the read pointer, the count and the credits. Timing: an
    entry is ``o.valid`` the cycle after its push; its credit can be taken the cycle after the sink
    takes it."""

    def __init__(self, shape, depth: int, name: str):
        if depth < 2:
            raise ValueError(f"CreditQueue needs a depth >= 2, got {depth!r}")
        self.shape, self.depth, self.name = shape, depth, name

    def build(self, m: Module, o, push, take) -> "CreditQueue":
        depth, name = self.depth, self.name
        self.push = push
        self.entries = [Signal(self.shape, name=f"{name}{e}", reset_less=True) for e in range(depth)]  # data
        self.wptr = Signal(range(depth), name=f"{name}_wptr")
        rptr = Signal(range(depth), name=f"{name}_rptr")
        count = Signal(range(depth + 1), name=f"{name}_count")  # entries pushed, not yet taken
        credits = Signal(range(depth + 1), init=depth, name=f"{name}_credits")
        self.credit = Signal(name=f"{name}_credit")
        pop = Signal(name=f"{name}_pop")
        m.d.comb += pop.eq(o.valid & o.ready)
        with m.If(push):
            m.d.sync += self.wptr.eq(wrap_increment(self.wptr, depth))
        with m.If(pop):
            m.d.sync += rptr.eq(wrap_increment(rptr, depth))
        count_ne0, = up_down(m, count, push, pop, 0)
        credits_ne0, = up_down(m, credits, pop, take, 0)
        m.d.comb += [o.valid.eq(count_ne0), self.credit.eq(credits_ne0)]
        select(m, o.payload, self.entries, rptr)
        return self

    def at(self, e: int):
        """Entry ``e`` is the one being filled."""
        return self.wptr == e

    def at_next(self, e: int):
        """Entry ``e`` is the one being filled in the next cycle (``at(e)`` a cycle early, for a
        register of its own)."""
        return Mux(self.push, wrap_increment(self.wptr, self.depth), self.wptr) == e
