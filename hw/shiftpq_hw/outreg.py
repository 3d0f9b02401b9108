"""Block RAM output registers, after Yosys: a netlist pass between Yosys and nextpnr (ECP5).

An ECP5 block RAM (DP16KD) reads through its own array register, about 5.6 ns from the clock to its
output pins in nextpnr's model, so a register after it in logic catches the word late and wherever
the placer put it: the routed ResNet-20's stage-P registers (the line buffer's and the weight
memory's words) and requant tables' registers were the largest group of slow endpoints. The block
RAM has a second register behind its outputs (``REGMODE_x = "OUTREG"``, about 1 ns clock to output,
enabled by ``OCEx``), which Yosys never uses. ``absorb_output_registers`` moves into it every
register that is the only reader of a read port's outputs: same clock, an enable (or none) common to
the port's bits, no reset, an initial value of zero. Both hold the array register's word of the
previous edge where their enable was high, so the design's behaviour, cycle for cycle, is unchanged
(tests/test_outreg.py simulates both netlists against each other).

In the 36-bit pseudo-dual-port mode (``DATA_WIDTH_A == 36``: Yosys' ``$__PDPW16KD_``) port B reads
all 36 bits (``DOA`` the low half); nextpnr gives such a RAM's single ``REGMODE`` to both halves and
its ``OCER`` to ``OCEB``: the pass sets both ``REGMODE_x`` and both ``OCEx``.
"""
from __future__ import annotations

import collections
import json
from pathlib import Path

_DO = 18  # data outputs per port


def _int(value) -> int:
    """A Yosys JSON parameter: a binary string of an integer, or an integer."""
    return value if isinstance(value, int) else int(str(value).strip() or "0", 2)


def _top(netlist: dict) -> dict:
    tops = [m for m in netlist["modules"].values() if _int(m.get("attributes", {}).get("top", 0))]
    if len(tops) != 1:
        raise ValueError(f"the netlist must have exactly one top module, found {len(tops)}")
    return tops[0]


def absorb_output_registers(netlist: dict) -> list[str]:
    """Move the registers after block RAM read ports into the RAMs' output registers (in place);
    returns ``"<ram cell> <port>"`` of each port that took them, in cell-name order."""
    mod = _top(netlist)
    cells = mod["cells"]
    loads = collections.defaultdict(list)  # net bit -> (cell, input port)
    for name, cell in cells.items():
        for port, bits in cell["connections"].items():
            if cell["port_directions"].get(port) == "input":
                for b in bits:
                    if isinstance(b, int):
                        loads[b].append((name, port))
    module_outputs = {b for p in mod["ports"].values() if p["direction"] != "input" for b in p["bits"]}
    done = []
    for name in sorted(n for n, c in cells.items() if c["type"] == "DP16KD"):
        ram = cells[name]
        conn, par = ram["connections"], ram["parameters"]
        pdp = _int(par.get("DATA_WIDTH_A", 18)) == 36
        groups = [("B", "AB")] if pdp else [("A", "A"), ("B", "B")]  # (read port, its output halves)
        for port, halves in groups:
            regs = _output_registers(cells, loads, module_outputs, ram, port, halves)
            if regs is None:
                continue
            ce = regs[0][2]
            for x in halves:
                par[f"REGMODE_{x}"] = "OUTREG"
                conn[f"OCE{x}"] = ce
            for pin, ff, _ in regs:
                conn[pin] = cells[ff]["connections"]["Q"]
                del cells[ff]
            done.append(f"{name} {port}")
    return done


def absorb_in_file(path) -> tuple[int, int]:
    """``absorb_output_registers`` on the Yosys JSON netlist at ``path``, rewritten in place;
    returns (read ports, registers absorbed)."""
    path = Path(path)
    netlist = json.loads(path.read_text())
    before = len(_top(netlist)["cells"])
    done = absorb_output_registers(netlist)
    path.write_text(json.dumps(netlist))
    return len(done), before - len(_top(netlist)["cells"])


def _output_registers(cells, loads, module_outputs, ram, port, halves):
    """``[(output pin, register cell, enable bits)]`` for the read port ``port`` of ``ram`` when every
    used output of ``halves`` feeds one register alone and those registers fit its output register;
    else None."""
    conn, par = ram["connections"], ram["parameters"]
    clk = conn.get(f"CLK{port}", ["0"])
    if any(par.get(f"REGMODE_{x}", "NOREG") != "NOREG" for x in halves) or not isinstance(clk[0], int) \
            or par.get(f"CLK{port}MUX", f"CLK{port}") != f"CLK{port}" \
            or any(conn.get(f"RST{x}", ["0"]) != ["0"] for x in halves):
        return None
    regs = []
    for x in halves:
        for i in range(_DO):
            pin = f"DO{x}{i}"
            bits = conn.get(pin, ["x"])
            if not isinstance(bits[0], int) or (not loads[bits[0]] and bits[0] not in module_outputs):
                continue  # unused output
            if bits[0] in module_outputs or len(loads[bits[0]]) != 1:
                return None
            ff_name, ff_port = loads[bits[0]][0]
            if ff_name not in cells:  # a register another port took (its enable read here)
                return None
            ff = cells[ff_name]
            p, c = ff["parameters"], ff["connections"]
            if ff["type"] != "TRELLIS_FF" or ff_port != "DI" or c.get("CLK") != clk \
                    or str(p.get("CLKMUX", "CLK")).strip() != "CLK" or c.get("LSR", ["0"]) != ["0"] \
                    or str(p.get("LSRMUX", "LSR")).strip() != "LSR" \
                    or str(p.get("REGSET", "RESET")).strip() != "RESET" \
                    or _int(ff.get("attributes", {}).get("keep", 0)):
                return None
            cemux = str(p.get("CEMUX", "1")).strip()
            if cemux == "1":
                ce = ["1"]
            elif cemux == "CE":
                ce = c.get("CE", ["1"])
            else:
                return None
            regs.append((pin, ff_name, ce))
    if not regs or len({tuple(ce) for _, _, ce in regs}) != 1 or len({ff for _, ff, _ in regs}) != len(regs):
        return None  # no register, several enables, or one net on two outputs
    return regs
