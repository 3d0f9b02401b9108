"""`make test` sets up the HDL simulators: both must accept a small Verilog module."""
import shutil
import subprocess

import pytest

COUNTER = """
module counter(input wire clk, input wire rst, output reg [3:0] q);
  always @(posedge clk) q <= rst ? 4'd0 : q + 4'd1;
endmodule
"""


@pytest.mark.parametrize("tool,args", [("iverilog", ["-o", "counter.vvp", "counter.v"]),
                                       ("verilator", ["--lint-only", "-Wall", "counter.v"])])
def test_simulator_accepts_verilog(tmp_path, tool, args):
    assert shutil.which(tool), f"{tool} is not on PATH: run `make setup`"
    (tmp_path / "counter.v").write_text(COUNTER)
    r = subprocess.run([tool, *args], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_verilator_wrapper_reports_a_version_cocotb_accepts():
    out = subprocess.run(["verilator", "--version"], capture_output=True, text=True).stdout
    assert out.startswith("Verilator 5.")
