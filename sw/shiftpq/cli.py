"""The ``shiftpq`` command line: ``shiftpq <command> --help`` describes each command."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import ShiftPQError


def _kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def _kv_of(cast, what: str):
    """An argparse type for NAME=VALUE with VALUE parsed by ``cast``."""
    def parse(text: str):
        k, v = _kv(text)
        try:
            return k, cast(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{k}: expected {what}, got {v!r}") from None
    return parse


_kv_float = _kv_of(float, "a number")
_kv_int = _kv_of(int, "an integer")


def _fraction(what: str):
    """An argparse type for a number in [0, 1); ``what`` names it in the error."""
    def parse(text: str) -> float:
        try:
            r = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
        if not 0.0 <= r < 1.0:
            raise argparse.ArgumentTypeError(f"{what} must be in [0, 1), got {r!r}")
        return r
    return parse


_rate = _fraction("pruning rate")
_probability = _fraction("a probability (at 1 the stream never moves)")  # sim --gap / --stall


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _seconds(text: str) -> float:
    """A time limit: a finite number of seconds > 0 (nan, inf and negative values are refused)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not (0.0 < v < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return v


def _images(text: str) -> int | None:
    """``--images``: a positive count, or ``all`` (None: the whole test set)."""
    return None if text == "all" else _positive(text)


def _par(text: str) -> int | str:
    return "max" if text == "max" else _positive(text)


def _percent(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100], got {text!r}") from None
    if not 0.0 <= v <= 100.0:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100], got {text!r}")
    return v


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``shiftpq CMD: error: ... (see shiftpq CMD --help)``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """The arguments of ``shiftpq train`` (also what a sweep plan's runs pass)."""
    from .levels import ACT_BITS, WEIGHT_BITS
    from .models import MODEL_NAMES
    from .quant import COMPILED_QUANTIZERS
    from .train import METHODS, RECIPES, RESIDUAL_PRUNING

    t.add_argument("--model", required=True, choices=MODEL_NAMES)
    t.add_argument("--method", required=True, choices=METHODS,
                   help="fp: full precision; spq: simultaneous pruning + QAT; ppq: prune, then QAT")
    t.add_argument("--recipe", default="fast", choices=list(RECIPES), help="hyperparameter preset (default: fast)")
    t.add_argument("--set", dest="overrides", type=_kv, action="append", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field, e.g. --set epochs=30 --set lr=0.2 (repeatable)")
    t.add_argument("--rate", type=_rate, default=0.3, help="GM pruning rate of every conv (default 0.3)")
    t.add_argument("--layer-rate", type=_kv_float, action="append", default=[], metavar="CONV=RATE",
                   help="pruning rate of one conv, e.g. layer1.0.conv1=0.5 (repeatable)")
    t.add_argument("--residual-pruning", choices=RESIDUAL_PRUNING, default="grouped",
                   help="grouped (default): the convs that write one residual stream prune the same channels, so "
                   "the stream loses them too; layer: every conv picks its own filters (the stream keeps all)")
    t.add_argument("--wbits", type=int, default=4, choices=WEIGHT_BITS, help="weight bits of the inner convs")
    t.add_argument("--abits", type=int, default=4, choices=ACT_BITS, help="activation bits")
    t.add_argument("--stream-bits", type=int, default=8, choices=ACT_BITS,
                   help="bits of the residual stream (ResNets; 8 = uniform, default)")
    t.add_argument("--layer-bits", type=_kv_int, action="append", default=[], metavar="LAYER=BITS",
                   help="bits of one conv's weights or one activation quantizer (repeatable)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-dir", default=None, help="CIFAR-10 binary directory (default: $CIFAR10_DIR)")
    t.add_argument("--train-limit", type=_positive, default=None, help="use only the first N training images")
    t.add_argument("--test-limit", type=_positive, default=None, help="use only the first N test images")
    t.add_argument("--init", default=None, metavar="CKPT", help="start from this checkpoint's weights and masks")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/last.pt")
    t.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the model (the fake quantizer stays an opaque custom op; docs/compression.md)")
    t.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA (default: bf16 autocast)")
    t.add_argument("--stop-after", type=_positive, default=None, metavar="EPOCHS",
                   help="stop (resumably) after this many epochs in this call")
    t.add_argument("--time-limit", type=_seconds, default=None, metavar="SECONDS",
                   help="stop (resumably) before an epoch that would end past this wall time, judged by the "
                   "longest epoch so far in this call")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--teacher", default=None, metavar="CKPT",
                   help="distil from this checkpoint's model (same architecture, e.g. the unpruned FP32 model) in "
                   "every phase, weight: recipe field distill (default: only ppq's QAT, from the pruned FP model)")
    t.add_argument("--compiled-quantizer", choices=COMPILED_QUANTIZERS, default=None,
                   help="with --compile: fused (element-wise ops Inductor fuses; default) or ops (opaque custom "
                   "ops around the eager kernels)")


def build_parser() -> argparse.ArgumentParser:
    from .models import MODEL_NAMES
    from .sweep import SWEEP_DESCRIPTION

    p = Parser(prog="shiftpq", description="ShiftPQ: compress CIFAR-10 CNNs with GM filter "
                                "pruning and APoT quantization (SPQ/PPQ), and compile them to shift-add hardware.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model: fp baseline, SPQ or PPQ",
                       description="Train on CIFAR-10. Checkpoints every epoch to OUT/last.pt, writes OUT/final.pt, "
                       "OUT/log.jsonl (one JSON line per epoch) and OUT/summary.json.")
    add_train_arguments(t)
    from .sweep import add_sweep_arguments
    add_sweep_arguments(sub.add_parser("sweep", help="run a plan of trainings: several at once, resumable, within a time limit",
                                       description=SWEEP_DESCRIPTION))

    m = sub.add_parser("metrics", help="model size (eq. 5) and BOPs (eq. 6) per layer and in total",
                       description="Without --checkpoint: the unpruned FP32 model. With it: the compressed model as "
                       "deployed (pruned filters and the input channels they fed removed).")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", choices=MODEL_NAMES)
    src.add_argument("--checkpoint", metavar="CKPT")
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")

    e = sub.add_parser("export", help="write the integer layer tables of a quantized checkpoint",
                       description="Fold a QAT checkpoint (spq or ppq) into layer tables: manifest.json (the integer "
                       "layer graph, shapes, kept filters, bit widths, level sets) and .npy arrays (weight codes, "
                       "requantization constants). Semantics: docs/integer-semantics.md.")
    e.add_argument("--checkpoint", required=True, metavar="CKPT")
    e.add_argument("--out", required=True, metavar="DIR", help="tables directory to create")
    e.add_argument("--force", action="store_true", help="replace DIR if it exists (its contents are lost)")

    g = sub.add_parser("golden", help="run the integer golden model from layer tables on the CIFAR-10 test set",
                       description="Accuracy of the integer-only golden model and its top-1 agreement with the "
                       "PyTorch fake-quant model of the checkpoint the tables came from.")
    g.add_argument("--tables", required=True, metavar="DIR")
    g.add_argument("--limit", type=_positive, default=None, metavar="N", help="only the first N test images")
    g.add_argument("--checkpoint", default=None, metavar="CKPT",
                   help="the source checkpoint (default: the path recorded in the tables; its sha256 is checked)")
    g.add_argument("--no-compare", action="store_true", help="skip the fake-quant comparison")
    g.add_argument("--data-dir", default=None, help="CIFAR-10 binary directory (default: $CIFAR10_DIR)")
    g.add_argument("--min-agreement", type=_percent, default=None, metavar="PERCENT",
                   help="exit 1 when the top-1 agreement with the fake-quant model is below PERCENT")
    g.add_argument("--json", action="store_true", help="print a JSON report")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    gn = sub.add_parser("gen", help="generate the accelerator's Verilog and cycle model",
                        description="Layer tables -> Amaranth -> Verilog: writes OUT/rtl/shiftpq_top.v, OUT/tables/ "
                        "and OUT/cycles.json (PEs, cycles per image, utilization, per layer). Source: --tables, "
                        "--checkpoint, or the model's default (the shipped models/<model>-ppq.pt, else a "
                        "deterministic UNTRAINED model, labelled so in cycles.json).")
    src = gn.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="CKPT", help="a quantized checkpoint (spq or ppq)")
    src.add_argument("--tables", metavar="DIR", help="a layer tables directory (shiftpq export)")
    gn.add_argument("--model", choices=MODEL_NAMES, help="the model whose default source to use")
    gn.add_argument("--par", type=_par, default=None, metavar="N|max",
                    help="PEs of the largest layer; every other layer gets the fewest PEs that keep up with it "
                    "(default 22: ResNet-20 fits an ECP5-85k); max: every layer fully parallel")
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
    sm.add_argument("--build", metavar="GEN_DIR", help="a `shiftpq gen` output directory (e.g. build/resnet20)")
    from shiftpq_sim.runner import SIMULATORS
    sm.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    sm.add_argument("--backend", choices=("rtl", "hls"), default="rtl",
                    help="rtl (default): the RTL; hls: the HLS C++ of `gen --backend hls` in g++ C simulation, "
                    "written to GEN_DIR/sim/results-hls.json")
    sm.add_argument("--bench", choices=("harness", "cocotb"), default=None,
                    help="RTL bench: harness, the compiled C++ Verilator harness (default on Verilator); cocotb: "
                    "the Python bench (Icarus, diagnosis)")
    sm.add_argument("--images", type=_images, default=10, metavar="N|all",
                    help="the first N test images, or all 10,000 (default 10)")
    sm.add_argument("--jobs", type=_positive, default=None, metavar="N",
                    help="processes (harness or HLS C simulation), each on a contiguous shard of the images "
                    "(default: the cores)")
    sm.add_argument("--waves", action="store_true", help="write a waveform (cocotb: FST; harness: VCD per shard)")
    sm.add_argument("--gap", type=_probability, default=0.0,
                    help="probability in [0, 1) that the image source pauses a cycle")
    sm.add_argument("--stall", type=_probability, default=0.0,
                    help="probability in [0, 1) that the score sink refuses a cycle")
    sm.add_argument("--seed", type=int, default=0, help="seed of the random gaps and stalls (harness)")
    sm.add_argument("--data-dir", default=None, help="CIFAR-10 binary directory (default: $CIFAR10_DIR)")
    sm.add_argument("--fuzz", type=_positive, default=None, metavar="N", help="simulate N random networks instead")
    sm.add_argument("--first-seed", type=int, default=0, help="seed of the first random network (default 0)")
    sm.add_argument("--fuzz-dir", default="build/fuzz", help="where the random networks are built")
    sm.add_argument("--json", action="store_true", help="print the results as JSON")

    sy = sub.add_parser("synth", help="Yosys + nextpnr: resources, Fmax and inferences/s of the generated RTL",
                        description="Synthesize a `shiftpq gen` output with YoWASP Yosys and place and route it with "
                        "nextpnr (pinned seed). Writes GEN_DIR/synth/report.json (device, luts, ffs, brams, dsps, "
                        "fmax_mhz, fits, inferences_per_s, latency) parsed from the tools' own reports. Exit code 1 "
                        "when the design does not fit the device.")
    sy.add_argument("--build", required=True, metavar="GEN_DIR", help="a `shiftpq gen` output directory")
    from shiftpq_hw.synth import DEFAULT_DEVICE, DEVICES
    sy.add_argument("--device", choices=list(DEVICES), default=DEFAULT_DEVICE, help=f"(default {DEFAULT_DEVICE})")
    sy.add_argument("--freq", type=float, default=100.0, metavar="MHZ", help="clock constraint (default 100)")
    sy.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")

    rp = sub.add_parser("report", help="the compression and hardware report (Markdown and HTML with plots)",
                        description="Render GEN_DIR/report/report.md and index.html from the layer tables, cycles.json "
                        "and, when present, sim/results.json and synth/report.json of a `shiftpq gen` output.")
    rp.add_argument("--build", required=True, metavar="GEN_DIR", help="a `shiftpq gen` output directory")
    rp.add_argument("--images", type=_positive, default=1000, metavar="N",
                    help="test images for the golden model's accuracy (default 1000; the full set is 10000)")
    rp.add_argument("--data-dir", default=None, help="CIFAR-10 binary directory (default: $CIFAR10_DIR)")

    d = sub.add_parser("data", help="CIFAR-10 data")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("download", help="download the official binary archive, check its md5, unpack")
    dl.add_argument("--out", required=True, help="directory for the .bin files")
    from .data import CIFAR10_MD5, CIFAR10_URL
    dl.add_argument("--url", default=CIFAR10_URL)
    dl.add_argument("--md5", default=CIFAR10_MD5)
    return p


def _device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ShiftPQError(f"--device {name}: CUDA is not available on this machine")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ShiftPQError(f"--device must be cpu, cuda or auto, got {name!r}")
    return name


def _progress(command: str):
    """A log function for progress lines on stderr, prefixed with the command."""
    return lambda text: print(f"shiftpq {command}: {text}", file=sys.stderr, flush=True)


def cmd_train(a) -> int:
    from .data import resolve_data_dir
    from .models import ModelSpec
    from .train import TrainConfig, recipe_with, train
    spec = ModelSpec(a.model, a.wbits, a.abits, a.stream_bits, dict(a.layer_bits))
    cfg = TrainConfig(method=a.method, spec=spec, recipe=recipe_with(a.recipe, dict(a.overrides)),
                      recipe_name=a.recipe, rate=a.rate, layer_rates=dict(a.layer_rate), residual_pruning=a.residual_pruning, seed=a.seed,
                      train_limit=a.train_limit, test_limit=a.test_limit, init=a.init, teacher=a.teacher)
    resolve_data_dir(a.data_dir)
    if a.compiled_quantizer:
        from .quant import set_compiled_quantizer
        set_compiled_quantizer(a.compiled_quantizer)
    train(cfg, a.out, device=_device(a.device), data_dir=a.data_dir, resume=a.resume, stop_after=a.stop_after,
          time_limit=a.time_limit, progress=not a.no_progress and sys.stderr.isatty(), compile_model=a.compile, amp=not a.no_amp,
          log=lambda s: print(s, file=sys.stderr, flush=True))
    return 0


def cmd_metrics(a) -> int:
    from .metrics import format_table, model_metrics
    if a.checkpoint:
        from .checkpoint import load_model
        model, _ = load_model(a.checkpoint)
        m = model_metrics(model, quantized=model.quantized)
    else:
        from .models import build_model
        m = model_metrics(build_model(a.model), quantized=False)
    print(json.dumps(m, indent=2) if a.json else format_table(m))
    return 0


def cmd_export(a) -> int:
    from .atomic import prepare_output
    from .export import export_checkpoint
    from .tables import save_tables
    prepare_output(a.out, a.force)  # before the work
    tables = export_checkpoint(a.checkpoint)
    out = save_tables(tables, a.out, force=a.force)
    n_ops = len(tables.ops)
    print(f"wrote {out}: {tables.model}, {n_ops} integer ops, {len(tables.arrays())} arrays")
    return 0


def cmd_golden(a) -> int:
    from .data import load_split
    from .golden import evaluate_tables
    from .tables import load_tables
    if a.min_agreement is not None and a.no_compare:
        raise ShiftPQError("--min-agreement needs the fake-quant comparison: drop --no-compare")
    tables = load_tables(a.tables)
    images, labels = load_split(a.data_dir, "test", a.limit)
    r = evaluate_tables(tables, images.numpy(), labels.numpy(), a.checkpoint, compare=not a.no_compare,
                        progress=not a.no_progress and sys.stderr.isatty())
    if a.json:
        print(json.dumps(r, indent=2, sort_keys=True))
    else:
        print(f"golden model ({r['model']}): {r['accuracy']:.2f}% on {r['images']} test images "
              f"({r['golden_seconds']:.1f} s)")
        if r["agreement"] is not None:
            print(f"fake-quant model: {r['fakequant_accuracy']:.2f}%; top-1 agreement {r['agreement']:.2f}%, "
                  f"accuracy difference {r['accuracy_difference']:+.2f} points")
    if a.min_agreement is not None and r["agreement"] < a.min_agreement:
        print(f"shiftpq golden: FAILED: top-1 agreement {r['agreement']:.2f}% on {r['images']} images is below "
              f"--min-agreement {a.min_agreement:g}%", file=sys.stderr)
        return 1
    return 0


def cmd_gen(a) -> int:
    import time
    from shiftpq_hw.gen import DEFAULT_PAR, generate, resolve_source
    if a.backend == "hls":
        from shiftpq_hw.hls import generate_hls as generate
    if not (a.model or a.checkpoint or a.tables):
        raise ShiftPQError("give --model, --checkpoint or --tables")
    from .atomic import prepare_output
    if a.out or a.model:  # the output is known: check it before the work
        if a.backend == "hls":  # it may add hls/ to an RTL build of the same design: generate_hls decides
            from shiftpq_hw.hls import check_hls_output
            check_hls_output(a.out or os.path.join("build", a.model), a.force)
        else:
            prepare_output(a.out or os.path.join("build", a.model), a.force)
    t0 = time.perf_counter()
    log = _progress("gen")
    tables = resolve_source(a.model, a.checkpoint, a.tables, a.seed)
    name = tables.model
    if a.model and name != a.model:
        raise ShiftPQError(f"--model {a.model}, but the {'tables' if a.tables else 'checkpoint'} hold a {name}")
    src = tables.source or {}
    log(f"{name} from {src.get('path') or src.get('note')} ({time.perf_counter() - t0:.1f} s)")
    par = None if a.par == "max" else (a.par or DEFAULT_PAR)
    out = a.out or os.path.join("build", name)
    model = generate(tables, out, par, force=a.force, log=log)
    print(f"wrote {out}: {model['pes']} PEs, {model['cycles_per_image']} cycles per image, utilization "
          f"{model['utilization']:.1%}, {model['inferences_per_s']['100MHz']:.0f} inferences/s at 100 MHz "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_sim_hls(a) -> int:
    from shiftpq_hw.hls_csim import require_hls_build, simulate_hls

    from .data import load_split
    if a.fuzz or not a.build:
        raise ShiftPQError("--backend hls: give --build GEN_DIR (a `shiftpq gen --backend hls` output); no --fuzz")
    rtl_only = [opt for opt, given in (("--waves", a.waves), ("--gap", a.gap), ("--stall", a.stall)) if given]
    if rtl_only:  # silently ignored, they would claim a test that never ran
        raise ShiftPQError(f"{rtl_only[0]}: an option of the RTL simulation; --backend hls (g++ C simulation) "
                           "has no waveform and no stream pauses")
    require_hls_build(a.build)
    images, labels = load_split(a.data_dir, "test", a.images)
    r = simulate_hls(a.build, images.numpy(), labels.numpy(), a.jobs, progress=sys.stderr.isatty(), log=_progress("sim"))
    print(json.dumps(r, indent=1, sort_keys=True) if a.json else
          f"{r['model']} HLS C++ in g++ C simulation ({r['shards']} shards): {r['images']} images, {r['mismatches']} "
          f"mismatches with the golden model, {'PASSED' if r['passed'] else 'FAILED'}; {r['wall_s']} s, "
          f"{r['images_per_s']} images/s" + (f"; accuracy {r['accuracy']} %" if "accuracy" in r else ""))
    f = r.get("first_wrong")
    if f and not a.json:
        print(f"first difference from the golden trace (image {f['image']}): block {f['block']}" +
              (f" (tensor {f['tensor']}), pixel (y, x) = {tuple(f['pixel'])}, channel {f['channel']}: got {f['got']}, "
               f"want {f['want']}" if "pixel" in f else f": {f.get('note')}"))
    return 0 if r["passed"] else 1


def _sim_bench(a) -> str:
    if a.bench == "harness" and a.simulator != "verilator":
        raise ShiftPQError(f"--bench harness runs on Verilator only, not --simulator {a.simulator}")
    if a.bench is None:
        return "harness" if a.simulator == "verilator" else "cocotb"
    return a.bench


def cmd_sim(a) -> int:
    if a.backend == "hls":
        return cmd_sim_hls(a)
    from shiftpq_sim.runner import fuzz, simulate
    log = _progress("sim")
    bench = _sim_bench(a)
    if a.fuzz:
        runs = fuzz(list(range(a.first_seed, a.first_seed + a.fuzz)), a.simulator, a.fuzz_dir, log=log, bench=bench)
        bad = [r["seed"] for r in runs if not r["passed"] or not r["cycles_match_model"]]
        summary = {"simulator": a.simulator, "bench": bench, "networks": len(runs), "failed_seeds": bad,
                   "passed": not bad}
        print(json.dumps(summary, indent=1) if a.json else
              f"fuzz: {len(runs) - len(bad)}/{len(runs)} random networks bit-exact at the modelled cycles "
              f"({a.simulator}, {bench}){'; failed seeds: ' + str(bad) if bad else ''}")
        return 0 if not bad else 1
    if not a.build:
        raise ShiftPQError("give --build GEN_DIR (a `shiftpq gen` output) or --fuzz N")
    from .data import load_split
    images, labels = load_split(a.data_dir, "test", a.images)
    if bench == "harness":
        from shiftpq_sim.harness import run
        r = run(a.build, images.numpy(), labels.numpy(), jobs=a.jobs, gap=a.gap, stall=a.stall, seed=a.seed,
                waves=a.waves, log=log)
    else:
        r = simulate(a.build, a.simulator, images.numpy(), labels.numpy(), waves=a.waves, gap=a.gap, stall=a.stall)
    ok = r["passed"] and r["cycles_match_model"] is not False
    if a.json:
        print(json.dumps(r, indent=1, sort_keys=True))
    elif r.get("stopped"):
        print(f"{r['model']} on {r['simulator']} ({bench}): FAILED, the design stopped: " + "; ".join(r["stopped"]))
    else:
        shards = f", {r['jobs']} shards" if bench == "harness" else ""
        print(f"{r['model']} on {r['simulator']} ({bench}{shards}): {r['images']} images, {r['mismatches']} mismatches "
              f"with the golden model, {r['cycles_per_image']} cycles per image (model {r['model_cycles_per_image']}), "
              f"{'PASSED' if ok else 'FAILED'}; build {r['build_s']} s, {r['sim_cycles_per_s']:.0f} simulated "
              f"cycles/s, {r['sim_wall_s'] if bench == 'harness' else r['wall_s_per_image']} s "
              f"{'in all' if bench == 'harness' else 'per image'}"
              + (f"; accuracy {r['accuracy']} %" if "accuracy" in r else ""))
        f = r.get("first_wrong")
        if f and f.get("block"):
            print(f"first difference from the golden trace (image {f['image']}): block {f['block']} (tensor "
                  f"{f['tensor']}), pixel (y, x) = {tuple(f['pixel'])}, channel {f['channel']}: got {f['got']}, "
                  f"want {f['want']}")
        elif f:
            print(f"first wrong image {f['image']}: {f['note']}")
    return 0 if ok else 1


def cmd_synth(a) -> int:
    from shiftpq_hw.synth import synthesize
    log = _progress("synth")
    r = synthesize(a.build, a.device, a.freq, a.seed, log=log)
    out = os.path.join(a.build, "synth", "report.json")
    if not r["fits"]:
        print(f"{r['model']} does not fit {r['device']}: {r['reason']} (report: {out})", file=sys.stderr)
        return 1
    lat = f", latency {r['latency_us']} us" if r["latency_us"] else " (latency: run make sim first)"
    print(f"{r['model']} on {r['device']}: {r['luts']} LUTs, {r['ffs']} FFs, {r['brams']} BRAMs, {r['dsps']} DSPs; "
          f"Fmax {r['fmax_mhz']} MHz (target {r['freq_target_mhz']:g}); {r['inferences_per_s']:.0f} inferences/s{lat}; "
          f"wrote {out}")
    return 0


def cmd_report(a) -> int:
    from .report import build_report
    log = _progress("report")
    out = build_report(a.build, a.images, a.data_dir, log=log)
    print(f"wrote {out / 'index.html'} and {out / 'report.md'}")
    return 0


def cmd_data(a) -> int:
    from .data import download
    out = download(a.out, a.url, a.md5, progress=sys.stderr.isatty())
    print(f"CIFAR-10 ready in {out}")
    return 0


class Terminated(BaseException):
    """SIGTERM as an exception, so that every ``finally`` and cleanup handler runs (atomic.atomic_dir)."""


def _terminate(signum, frame):
    raise Terminated()


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> int:
    """Print the one line of a failed run; from here on no warnings: half-built objects collected at
    exit (Amaranth's UnusedElaboratable) must not bury that line under a page of noise."""
    import warnings
    warnings.simplefilter("ignore")
    print(message, file=sys.stderr)
    return code


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Exit codes: 0 done, 1 a check failed (a mismatch, agreement below --min-agreement, a design
    that does not fit), 2 bad input (one line naming the file, field or option), 130 Ctrl-C, 141 stdout
    closed by its reader, 143 SIGTERM.
    ``parser``: another command set (``python -m shiftpq.sweep``: train and sweep only)."""
    import signal
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        args = (parser or build_parser()).parse_args(argv)
        from .sweep import cmd_sweep
        handler = {"train": cmd_train, "sweep": cmd_sweep, "metrics": cmd_metrics, "export": cmd_export,
                   "golden": cmd_golden, "gen": cmd_gen, "sim": cmd_sim, "synth": cmd_synth, "report": cmd_report,
                   "data": cmd_data}[args.command]
        return handler(args)
    except (ShiftPQError, ValueError) as e:
        return _fail(f"shiftpq: error: {_one_line(e)}", 2)
    except BrokenPipeError:  # the reader of stdout is gone (`shiftpq metrics ... | head`): not bad input
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, as a shell tool killed by it
    except OSError as e:  # the file system refused (a file where a directory should be, no permission, full)
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"shiftpq: error: {where}{_one_line(e.strerror or e)}", 2)
    except KeyboardInterrupt:
        return _fail("shiftpq: interrupted (nothing half-written is left)", 130)
    except Terminated:
        return _fail("shiftpq: terminated by SIGTERM (nothing half-written is left)", 143)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
