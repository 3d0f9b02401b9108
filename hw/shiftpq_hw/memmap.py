"""How Yosys maps a memory onto an ECP5 (block RAM, LUT RAM or logic), as a model the generator and the
size estimate share: ``bram_cells``. ``rom_port`` builds the generator's constant tables (weights,
requant constants) with it: a table Yosys would build of LUTs becomes two or four smaller
tables (``SplitRom``); estimate.py counts block RAMs and LUT RAMs with it."""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module, Shape, Signal, Value
from amaranth.lib.memory import Memory

from .kept import kept_register
from .queues import select


# The attribute of a memory whose read port never uses a word read the cycle that word is written (a
# line buffer reads only complete rows, writes only free slots and registers its write; a FIFO reads
# only what its level says is written). Amaranth's read ports return the old word on such a collision, which a block
# RAM's two ports do not promise: without the attribute Yosys delays the writes a cycle and makes the
# read transparent to them in logic (a register of the written word, an address compare and a mux
# over the read word: about a LUT and two FFs per bit, and a LUT between the block RAM's output and
# the register after it). The synth scripts (templates/synth/) mark such a memory's read port as
# undefined on a collision (Yosys' RD_COLLISION_X_MASK); the generated Verilog keeps the old word.
NO_COLLISION = {"shiftpq_no_collision": 1}


@dataclass(frozen=True)
class Mem:
    """A memory a block declares: ``width`` its bits that vary between rows (Yosys drops the columns
    that hold one value in every row of a constant table), ``rom`` constant (no write port),
    ``sync`` read through a register (an asynchronous read cannot go to block RAM)."""
    block: str
    name: str
    width: int
    depth: int
    rom: bool
    sync: bool = True
    declared: int = 0  # the width the generator declares (a multiplier's operand is that wide)
    no_collision: bool = False  # marked NO_COLLISION: block RAM with no read-first emulation


def varying_bits(width: int, init, depth: int) -> int:
    """Columns of a constant table of ``width``-bit words (``init``, padded with zero rows to
    ``depth``) that do not hold the same bit in every row: Yosys keeps only those (``opt_mem``)."""
    mask = (1 << width) - 1
    words = [int(w) & mask for w in init] + [0] * (depth - len(init))
    diff = 0
    for w in words:
        diff |= w ^ words[0]
    return bin(diff).count("1")


# Yosys' memory_libmap (passes/memory/memory_libmap.cc) with the ECP5 libraries (share/lattice/
# brams_16kd.txt, lutrams_trellis.txt), as it treats the memories the generator makes (one write port
# with one enable or none, one read port, no transparency): a memory stays in logic at
# int(bits x LOGIC_COST) (1/16 a bit for a constant table, 1 for a RAM) unless a RAM cell's cost is
# lower. A cell's cost: its library cost (EBR_COST; LUTRAM_COST; LUT RAM takes no constant tables:
# prune_rom) times the cells, plus 0.5 a bit for the read multiplexer and 0.5 per write enable for the
# decoder when the depth spans several cells, plus 2 (one read port of its own), plus 12 for a RAM in
# block RAM (its read port reads the old word in the cycle of a write, which the ECP5 libraries do not
# declare: memory_libmap emulates it, 3 points for the write port and 3 for the read port, x 2) unless
# the RAM is marked NO_COLLISION (the synth scripts make its collisions undefined: nothing to emulate).
# Block RAM shapes: (bits a word, words) of one DP16KD, 36 x 512 only as a simple dual-port RAM
# (PDPW16KD). Checked memory by memory against Yosys' log for eight designs (bench/fold_cost.py).
EBR_SHAPES = ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512))
LUTRAM_SHAPE = (4, 16)  # TRELLIS_DPR16X4
EBR_COST, LUTRAM_COST, LOGIC_COST_ROM, LOGIC_COST_RAM, READ_PORT_COST, READ_FIRST_COST = 128, 4, 1 / 16, 1, 2, 12


def _ram_cost(mem: Mem, unit: int, words: int, cost: int, byte: int) -> tuple[float, int]:
    """(memory_libmap's cost, cells) of ``mem`` in cells of ``unit`` bits x ``words``: the word padded
    to whole write bytes (none for a constant table), the depth in whole cells."""
    byte = 1 if mem.rom else min(byte, unit)
    mult_a = -(-mem.depth // words)
    cells = -(-mult_a * (-(-mem.width // byte) * byte) // unit)
    mux = 0.5 * (mult_a - 1) * mem.width + (0.5 * mult_a if mult_a > 1 and not mem.rom else 0)
    read_first = READ_FIRST_COST if cost == EBR_COST and not mem.rom and not mem.no_collision else 0
    return cells * cost + mux + READ_PORT_COST + read_first, cells


def bram_cells(mem: Mem) -> tuple[str, int]:
    """Where Yosys puts a memory on an ECP5 and how many cells it takes: ("bram", DP16KDs),
    ("lutram", 16 x 4 LUT RAMs) or ("logic", 0), by memory_libmap's costs; logic on a tie."""
    if mem.width == 0:
        return "logic", 0  # a table of one value: a constant
    best, kind, cells = int(mem.width * mem.depth * (LOGIC_COST_ROM if mem.rom else LOGIC_COST_RAM)), "logic", 0
    options = [("bram", *_ram_cost(mem, w, d, EBR_COST, 9)) for w, d in EBR_SHAPES if mem.sync]
    if not mem.rom:
        options.append(("lutram", *_ram_cost(mem, *LUTRAM_SHAPE, LUTRAM_COST, 4)))
    for name, cost, n in options:
        if cost < best:
            best, kind, cells = cost, name, n
    return kind, cells


# bits of a SplitRom's word whose pick one copy of the registered part select drives: a weight word
# of a ResNet-20 engine is up to 160 bits (five copies), and its one select register, routed across
# the engine, was the critical path of PAR 29 with pairs on seed 2 (docs/hw-round5-design.md
# section 22)
SELECT_SPAN = 32


class SplitRom:
    """A constant table that Yosys would build of LUTs (too small for a block RAM), read like a
    memory's synchronous read port (``addr``, ``en``; ``data`` the word one cycle after its
    address), built as ``parts`` (2 or 4) tables: word ``w`` is word ``w // parts`` of part ``w %
    parts`` (submodule ``<name><part>``); every part is read at ``addr // parts`` and ``data`` picks
    one by the address's low bits, registered beside them, in a copy per ``SELECT_SPAN`` bits of the
    word (``<name>_low<copy>``). The pick (a LUT or two) lands before the reader's next register,
    and a part of at most 16 words (every part of a table up to 64 words) is
    a function of four address bits: a whole table of a layer-1 engine (54 words of 96 bits) was six
    levels of LUTs behind an address register with a fanout of 95 (the engine's deepest path), and
    so were its halves (27 words: Yosys' mapping does not make a 5-input function two levels deep).
    Its four parts map to two LUT levels alone, but in the whole network ``abc -lut 4`` shares the
    address decode across parts and bits and left them five deep (hw/README.md)."""

    def __init__(self, shape, init: list[int], parts: int):
        init = [int(w) for w in init]
        if parts not in (2, 4) or len(init) < parts:
            raise ValueError(f"SplitRom needs 2 or 4 parts and a word for each, got {parts!r} parts of "
                             f"{len(init)!r} words")
        self.shape, self.init, self.parts = shape, init, parts

    @staticmethod
    def parts_for(words: int) -> int:
        """4 parts when halves would have more than 16 words, else 2."""
        return 2 if words <= 32 else 4

    def reference(self, addr: int) -> int:
        """The word at ``addr``."""
        return self.init[addr]

    def build(self, m: Module, name: str) -> "SplitRom":
        k = self.parts.bit_length() - 1
        ports = []
        for j in range(self.parts):
            words = self.init[j::self.parts]
            m.submodules[f"{name}{j}"] = mem = Memory(shape=self.shape, depth=max(len(words), 2), init=words)
            ports.append(mem.read_port())
        self.addr = Signal(range(len(self.init)), name=f"{name}__addr")
        self.en = Signal(init=1, name=f"{name}__en")
        for p in ports:
            m.d.comb += [p.addr.eq(self.addr >> k), p.en.eq(self.en)]
        self.data = Signal(self.shape, name=f"{name}__data")
        width = Shape.cast(self.shape).width
        # the address's low bits, registered once per SELECT_SPAN bits of the word (``kept``), each
        # copy picking its span only
        for c, lo in enumerate(range(0, width, SELECT_SPAN)):
            hi = min(lo + SELECT_SPAN, width)
            low = kept_register(m, f"{name}_low{c}", self.addr[:k], en=self.en)
            select(m, Value.cast(self.data)[lo:hi], [Value.cast(p.data)[lo:hi] for p in ports], low)
        return self


def rom_port(m: Module, name: str, shape, init: list[int], depth: int):
    """A constant table's synchronous read port (``addr``, ``en``; ``data`` the word one cycle after
    its address, held while ``en`` is low): a ``Memory`` (submodule ``name``; padded with zero words
    to ``depth``) or, where Yosys would build it of LUTs (``bram_cells``) and it has at least four
    words, a ``SplitRom`` (submodules ``name0``, ``name1``, ...)."""
    init = [int(w) for w in init]
    width = Shape.cast(shape).width
    if len(init) >= 4 and bram_cells(Mem("", name, varying_bits(width, init, depth), depth, rom=True))[0] == "logic":
        return SplitRom(shape, init, SplitRom.parts_for(len(init))).build(m, name)
    m.submodules[name] = mem = Memory(shape=shape, depth=depth, init=init)
    return mem.read_port()
