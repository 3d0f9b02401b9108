"""ShiftPQ's command line, the top package: ``shiftpq COMMAND``. Each package imports only those
below it (tests/test_layering.py; docs/architecture.md, "Packages and CLI"):

    shiftpq_cli   cli/   the commands
    shiftpq_sim   sim/   simulation
    shiftpq_hw    hw/    RTL, HLS C++, synthesis
    shiftpq       sw/    compression, layer tables, golden model, report

``app``: the parser, ``main`` (the console script) and ``run`` (a command from Python, its typed
result); the commands by the package they drive: ``software``, ``hardware``, ``simulation``.
"""
from shiftpq.cmdline import Result, show

from .app import build_parser, main, run

__all__ = ["Result", "build_parser", "main", "run", "show"]
