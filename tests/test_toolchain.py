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


def _fake_venv(tmp_path, stamp: str):
    """A venv whose python only logs its arguments, with an install stamp older than pyproject.toml."""
    import os
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\n")
    py.chmod(0o755)
    (venv / ".installed").write_text(stamp)
    os.utime(venv / ".installed", (0, 0))
    return venv


def test_setup_refuses_a_venv_installed_from_another_tree(tmp_path):
    """A venv shared with another checkout (a worktree's .venv linked to main's) is refused in one
    line before pip runs: reinstalling would re-point the other tree's editable install here."""
    from conftest import ROOT
    venv = _fake_venv(tmp_path, "/elsewhere/shiftpq\n")
    r = subprocess.run(["make", "-s", f"VENV={venv}", f"{venv}/.installed"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (f"make: {venv}/.installed: the venv is installed from /elsewhere/shiftpq, "
                                        f"not {ROOT}; give this tree its own (VENV=path) or remove {venv}")
    assert not (tmp_path / "calls").exists()
    # a venv stamped by this tree, or by the code before stamps named their tree, is (re)installed
    for stamp in (f"{ROOT}\n", ""):
        venv = _fake_venv(tmp_path / f"s{len(stamp)}", stamp)
        r = subprocess.run(["make", "-s", f"VENV={venv}", f"{venv}/.installed"], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        assert "pip install" in (tmp_path / f"s{len(stamp)}" / "calls").read_text()
        assert (venv / ".installed").read_text() == f"{ROOT}\n"
