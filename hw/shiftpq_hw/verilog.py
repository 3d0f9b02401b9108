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
