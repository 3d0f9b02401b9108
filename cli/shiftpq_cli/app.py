"""The ``shiftpq`` command line: every command's options in one parser (the help a user reads), ``main``
(the console script) and ``run`` (a command from Python: its typed result, nothing printed). The
commands and their results: ``software`` (metrics, export, golden, report, data), ``hardware`` (gen,
synth), ``simulation`` (sim); train and sweep come from ``shiftpq.cmdline`` and ``shiftpq.sweep``
(the bare training entry ``python -m shiftpq.sweep`` builds its parser from the same parts)."""
from __future__ import annotations

import argparse

from shiftpq import cmdline
from shiftpq.cmdline import (TRAIN_DESCRIPTION, TRAIN_HELP, Parser, Result, add_train_arguments, fraction,
                             nonnegative, percent, positive)

from . import hardware, simulation, software

probability = fraction("a probability (at 1 the stream never moves)")  # sim --gap / --stall


def seed_list(text: str) -> list[int]:
    """``synth --seed``: one placement seed or several, separated by commas."""
    from shiftpq_hw.synth import parse_seeds
    try:
        return parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def images(text: str) -> int | None:
    """``--images``: a positive count, or ``all`` (None: the whole test set)."""
    return None if text == "all" else positive(text)


def par(text: str) -> int | str:
    return "max" if text == "max" else positive(text)


def build_parser() -> argparse.ArgumentParser:
    """Every command, in the order of the pipeline; each subparser sets ``run``, its command function."""
    from shiftpq.models import MODEL_NAMES
    from shiftpq.sweep import SWEEP_DESCRIPTION, add_sweep_arguments

    p = Parser(prog="shiftpq", description="ShiftPQ: compress CIFAR-10 CNNs with GM filter "
                                "pruning and APoT quantization (SPQ/PPQ), and compile them to shift-add hardware.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_arguments(sub.add_parser("train", help=TRAIN_HELP, description=TRAIN_DESCRIPTION))
    add_sweep_arguments(sub.add_parser("sweep", help="run a plan of trainings: several at once, resumable, within a time limit",
                                       description=SWEEP_DESCRIPTION))

    m = sub.add_parser("metrics", help="model size (eq. 5) and BOPs (eq. 6) per layer and in total",
                       description="Without --checkpoint: the unpruned FP32 model. With it: the compressed model as "
                       "deployed (pruned filters and the input channels they fed removed).")
    m.set_defaults(run=software.cmd_metrics)
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", choices=MODEL_NAMES)
    src.add_argument("--checkpoint", metavar="CKPT")
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")

    e = sub.add_parser("export", help="write the integer layer tables of a quantized checkpoint",
                       description="Fold a QAT checkpoint (spq or ppq) into layer tables: manifest.json (the integer "
                       "layer graph, shapes, kept filters, bit widths, level sets) and .npy arrays (weight codes, "
                       "requantization constants). Semantics: docs/integer-semantics.md.")
    e.set_defaults(run=software.cmd_export)
    e.add_argument("--checkpoint", required=True, metavar="CKPT")
    e.add_argument("--out", required=True, metavar="DIR", help="tables directory to create")
    e.add_argument("--force", action="store_true", help="replace DIR if it exists (its contents are lost)")

    pk = sub.add_parser("pack", help="store a quantized checkpoint compactly: level indices instead of float weights",
                        description="Write the deployment form of a quantized checkpoint (spq or ppq): each layer's "
                        "quantized weights as signed level indices, two per byte for 4-bit layers, and its "
                        "normalization std, instead of float32 weights (a ResNet-20: 0.2 MB instead of 1.1 MB). It "
                        "exports the same tables and computes the same logits; it cannot be trained further "
                        "(docs/compression.md).")
    pk.set_defaults(run=software.cmd_pack)
    pk.add_argument("--checkpoint", required=True, metavar="CKPT")
    pk.add_argument("--out", required=True, metavar="FILE", help="the packed checkpoint to write (may be CKPT with --force)")
    pk.add_argument("--force", action="store_true", help="replace FILE if it exists")

    g = sub.add_parser("golden", help="run the integer golden model from layer tables on the CIFAR-10 test set",
                       description="Accuracy of the integer-only golden model and its top-1 agreement with the "
                       "PyTorch fake-quant model of the checkpoint the tables came from.")
    g.set_defaults(run=software.cmd_golden)
    g.add_argument("--tables", required=True, metavar="DIR")
    g.add_argument("--limit", type=positive, default=None, metavar="N", help="only the first N test images")
    g.add_argument("--checkpoint", default=None, metavar="CKPT",
                   help="the source checkpoint (default: the path recorded in the tables; its sha256 is checked)")
    g.add_argument("--no-compare", action="store_true", help="skip the fake-quant comparison")
    g.add_argument("--data-dir", default=None, help="CIFAR-10 binary directory (default: $CIFAR10_DIR)")
    g.add_argument("--min-agreement", type=percent, default=None, metavar="PERCENT",
                   help="exit 1 when the top-1 agreement with the fake-quant model is below PERCENT")
    g.add_argument("--json", action="store_true", help="print a JSON report")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    gn = sub.add_parser("gen", help="generate the accelerator's Verilog and cycle model",
                        description="Layer tables -> Amaranth -> Verilog: writes OUT/rtl/shiftpq_top.v, OUT/tables/ "
                        "and OUT/cycles.json (PEs, cycles per image, utilization, per layer). Source: --tables, "
                        "--checkpoint, or the model's default (the shipped models/<model>-ppq.pt, else a "
                        "deterministic UNTRAINED model, labelled so in cycles.json).")
    gn.set_defaults(run=hardware.cmd_gen)
    src = gn.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="CKPT", help="a quantized checkpoint (spq or ppq)")
    src.add_argument("--tables", metavar="DIR", help="a layer tables directory (shiftpq export)")
    gn.add_argument("--model", choices=MODEL_NAMES, help="the model whose default source to use")
    fold = gn.add_mutually_exclusive_group()  # --device picks the PAR
    fold.add_argument("--par", type=par, default=None, metavar="N|max",
                      help="PEs of the largest layer; every other layer gets the fewest PEs that keep up with it "
                      "(default 29 with up to 78 multiplier pairs, see --dsp-pairs: ResNet-20's fastest routed fold on "
                      "an ECP5-85k; 22 with --backend hls); max: every layer fully parallel")
    from shiftpq_hw.synth import DEVICES
    fold.add_argument("--device", choices=[d for d in DEVICES if DEVICES[d].family == "ecp5"], default=None,
                      help="instead of --par: the fastest fold whose estimated size (logic cells within a placement "
                      "margin, block RAMs, DSPs) fits this FPGA, recorded in cycles.json (exit 2 when none fits)")
    gn.add_argument("--dsp-pairs", type=nonnegative, default=None, metavar="N",
                    help="up to N of the FPGA's 18x18 multipliers (MULT18X18D) compute two of the 4-bit convs' "
                    "products each, in place of shift-add PEs in logic; the cycles do not change (default 78 for the "
                    "default fold, 0 with --par, --device or --target generic; an ECP5-85k has 156, "
                    "ResNet-20 at PAR 29 uses 50 elsewhere). With --device: of the DSPs its fold leaves free, up to "
                    "82%% of the device's DSPs in all (more has not routed on every seed), so a larger fold fits")
    gn.add_argument("--target", choices=("ecp5", "generic"), default=None,
                    help="the FPGA family whose primitives the RTL instantiates: ecp5 (default): each multiplier of "
                    "the convs, the requantization and the FC a MULT18X18D with its own operand and product registers "
                    "(OUT/rtl/primitives_sim.v models it for the simulators); generic: none, the synthesis tool "
                    "infers the multipliers (for other FPGAs, an iCE40). The same cycles either way; "
                    "docs/hw-round5-design.md sections 10-11 have the measurements")
    gn.add_argument("--out", default=None, metavar="DIR", help="output directory (default build/<model>)")
    gn.add_argument("--force", action="store_true",
                    help="replace OUT if it exists (its sim/, synth/ and report/ results are lost)")
    gn.add_argument("--seed", type=int, default=0, help="seed of the untrained default model")
    gn.add_argument("--backend", choices=("rtl", "hls"), default="rtl",
                    help="rtl (default): Amaranth -> OUT/rtl/; hls: C++ for vendor HLS tools (Vitis HLS) -> OUT/hls/, "
                    "with a g++ C simulation testbench and a Vitis run script (docs/hls.md)")

    sm = sub.add_parser("sim", help="simulate the generated accelerator against the golden model",
                        description="Stream CIFAR-10 test images through the generated RTL: every class score must "
                        "equal the golden model's (from the same tables) and the cycles per image must equal "
                        "cycles.json. Network images run on the compiled Verilator harness (built once per design, "
                        "sharded over --jobs processes); --bench cocotb (and every Icarus run) uses the cocotb bench. "
                        "A design whose streams stop moving fails with a message naming the stream. Writes "
                        "GEN_DIR/sim/results.json. With --fuzz N: N seeded random networks instead "
                        "(tables -> RTL -> simulation).")
    sm.set_defaults(run=simulation.cmd_sim)
    sm.add_argument("--build", metavar="GEN_DIR", help="a `shiftpq gen` output directory (e.g. build/resnet20)")
    from shiftpq_sim.runner import SIMULATORS
    sm.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    sm.add_argument("--backend", choices=("rtl", "hls"), default="rtl",
                    help="rtl (default): the RTL; hls: the HLS C++ of `gen --backend hls` in g++ C simulation, "
                    "written to GEN_DIR/sim/results-hls.json")
    sm.add_argument("--bench", choices=("harness", "cocotb"), default=None,
                    help="RTL bench: harness, the compiled C++ Verilator harness (default on Verilator); cocotb: "
                    "the Python bench (Icarus, diagnosis)")
    sm.add_argument("--images", type=images, default=10, metavar="N|all",
                    help="the first N test images, or all 10,000 (default 10)")
    sm.add_argument("--jobs", type=positive, default=None, metavar="N",
                    help="processes (harness or HLS C simulation), each on a contiguous shard of the images "
                    "(default: the cores)")
    sm.add_argument("--waves", action="store_true", help="write a waveform (cocotb: FST; harness: VCD per shard)")
    sm.add_argument("--gap", type=probability, default=0.0,
                    help="probability in [0, 1) that the image source pauses a cycle")
    sm.add_argument("--stall", type=probability, default=0.0,
                    help="probability in [0, 1) that the score sink refuses a cycle")
    sm.add_argument("--seed", type=int, default=0, help="seed of the random gaps and stalls (harness)")
    sm.add_argument("--data-dir", default=None, help="CIFAR-10 binary directory (default: $CIFAR10_DIR)")
    sm.add_argument("--fuzz", type=positive, default=None, metavar="N", help="simulate N random networks instead")
    sm.add_argument("--first-seed", type=int, default=0, help="seed of the first random network (default 0)")
    sm.add_argument("--fuzz-dir", default="build/fuzz", help="where the random networks are built")
    sm.add_argument("--stale-ok", action="store_true",
                    help="simulate a --build that other generator sources made (cycles.json's 'generator' differs "
                    "from these sources'; refused by default: it would test that code, not this one)")
    sm.add_argument("--json", action="store_true", help="print the results as JSON")

    sy = sub.add_parser("synth", help="Yosys + nextpnr: resources, Fmax and inferences/s of the generated RTL",
                        description="Synthesize a `shiftpq gen` output with YoWASP Yosys and place and route it with "
                        "nextpnr (pinned seeds: Yosys once, nextpnr once per seed, in parallel). Writes "
                        "GEN_DIR/synth/report.json (device, luts, ffs, brams, dsps, fmax_mhz, fits, inferences_per_s, "
                        "latency; with several seeds, each seed's figures, their min / median / max, and at the top "
                        "the worst seed's) parsed from the tools' own reports, nextpnr's files in "
                        "GEN_DIR/synth/seed<N>/. Exit code 1 when the design does not fit the device, or when a seed's "
                        "nextpnr was stopped by a signal before it finished (the line printed says which).")
    sy.set_defaults(run=hardware.cmd_synth)
    sy.add_argument("--build", required=True, metavar="GEN_DIR", help="a `shiftpq gen` output directory")
    from shiftpq_hw.synth import DEFAULT_DEVICE
    sy.add_argument("--device", choices=list(DEVICES), default=DEFAULT_DEVICE, help=f"(default {DEFAULT_DEVICE})")
    sy.add_argument("--freq", type=float, default=100.0, metavar="MHZ", help="clock constraint (default 100)")
    sy.add_argument("--seed", type=seed_list, default=[1], metavar="SEED[,SEED...]",
                    help="nextpnr placement seed, or several separated by commas (e.g. 1,2,3; default 1)")
    sy.add_argument("--jobs", type=positive, default=None, metavar="N",
                    help="seeds placed at once (default: all, at most the processor count)")

    rp = sub.add_parser("report", help="the compression and hardware report (Markdown and HTML with plots)",
                        description="Render GEN_DIR/report/report.md and index.html from the layer tables, cycles.json "
                        "and, when present, sim/results.json and synth/report.json of a `shiftpq gen` output.")
    rp.set_defaults(run=software.cmd_report)
    rp.add_argument("--build", required=True, metavar="GEN_DIR", help="a `shiftpq gen` output directory")
    rp.add_argument("--images", type=positive, default=1000, metavar="N",
                    help="test images for the golden model's accuracy (default 1000; the full set is 10000)")
    rp.add_argument("--data-dir", default=None, help="CIFAR-10 binary directory (default: $CIFAR10_DIR)")

    d = sub.add_parser("data", help="CIFAR-10 data")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("download", help="download the official binary archive, check its md5, unpack")
    dl.set_defaults(run=software.cmd_data)
    dl.add_argument("--out", required=True, help="directory for the .bin files")
    from shiftpq.data import CIFAR10_MD5, CIFAR10_URL
    dl.add_argument("--url", default=CIFAR10_URL)
    dl.add_argument("--md5", default=CIFAR10_MD5)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command and print its result. Exit codes: 0 done, 1 a check failed (a mismatch,
    agreement below --min-agreement, a design that does not fit or was not placed), 2 bad input (one
    line naming the file, field or option), 130 Ctrl-C, 141 stdout closed by its reader, 143 SIGTERM."""
    return cmdline.main(argv, build_parser)


def run(argv: list[str]) -> Result:
    """The command ``argv`` names, run from Python: its result (``shiftpq_cli.show`` prints it as
    ``main`` does). Errors raise (ShiftPQError for bad input); a bad option exits as argparse does."""
    args = build_parser().parse_args(argv)
    return args.run(args)
