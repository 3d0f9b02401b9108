"""ShiftPQ's command line, the top package: ``shiftpq COMMAND``. It imports the stages' packages;
none of them imports it (tests/test_layering.py):

    shiftpq_cli   the commands                        cli/shiftpq_cli/
        |    \\
        |     shiftpq_hw, shiftpq_sim   RTL / HLS, simulation   hw/, sim/
        |    /
    shiftpq       compression, tables, golden model   sw/

Modules: ``app`` (the parser, ``main``, ``run``), ``software`` (metrics, export, golden, report,
data), ``hardware`` (gen, synth), ``simulation`` (sim); ``train`` and ``sweep`` come from
``shiftpq.cmdline`` and ``shiftpq.sweep``. docs/architecture.md, "Packages and CLI".
"""
from shiftpq.cmdline import Result, show

from .app import build_parser, main, run

__all__ = ["Result", "build_parser", "main", "run", "show"]
