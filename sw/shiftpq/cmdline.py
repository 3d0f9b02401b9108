"""The command line's parts that live in ``shiftpq`` (below the ``shiftpq`` CLI, ``cli/shiftpq_cli``):
the argument types, the parser with one-line errors, the result printer, the error handling of
``main``, and the ``train`` command. They live here, not in the CLI package, because the training
queue needs them without the hardware packages: a sweep checks its runs' arguments with ``train``'s
parser and runs each as ``python -m shiftpq.sweep train ARGS`` on a bare GPU machine (PyTorch,
NumPy, tqdm; no Amaranth, no cocotb).

A command is a function ``cmd(args) -> Result``: it does the work and returns a small typed object;
``show`` is the one function that prints any result (its text, or its JSON with ``--json``; its
problems on stderr) and returns its exit code. From Python: ``shiftpq_cli.run(argv)`` returns the
result without printing anything.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

from . import children
from .errors import ShiftPQError

# -- argument types: each refuses a bad value with one line naming what it expected ---------------


def kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def kv_of(cast, what: str):
    """An argparse type for NAME=VALUE with VALUE parsed by ``cast``."""
    def parse(text: str):
        k, v = kv(text)
        try:
            return k, cast(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{k}: expected {what}, got {v!r}") from None
    return parse


kv_float = kv_of(float, "a number")
kv_int = kv_of(int, "an integer")


def fraction(what: str):
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


rate = fraction("pruning rate")


def _at_least(least: int, what: str):
    """An argparse type for an integer of at least ``least``: ``expected WHAT, got TEXT`` otherwise."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < least:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v
    return parse


positive = _at_least(1, "a positive integer")
nonnegative = _at_least(0, "a non-negative integer")


def _number(expected: str, ok):
    """An argparse type for a number that ``ok`` accepts, else ``expected EXPECTED, got TEXT``."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return v
    return parse


# a time limit: nan, inf and negative values are refused
seconds = _number("a number of seconds > 0", lambda v: 0.0 < v < float("inf"))
percent = _number("a percentage in [0, 100]", lambda v: 0.0 <= v <= 100.0)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``shiftpq CMD: error: ... (see shiftpq CMD --help)``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def progress(command: str):
    """A log function for progress lines on stderr, prefixed with the command."""
    return lambda text: print(f"shiftpq {command}: {text}", file=sys.stderr, flush=True)


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What a command returns. Subclasses add their typed fields and say how they read: ``lines``
    (stdout, for humans), ``json_text`` (stdout with ``--json``), ``problems`` (stderr: why a
    check failed) and ``passed`` (the exit code ``code``: 0 done, 1 a check failed)."""

    def lines(self) -> list[str]:
        return []

    def json_text(self) -> str:
        raise ShiftPQError(f"{type(self).__name__} has no JSON form")

    def problems(self) -> list[str]:
        return []

    @property
    def passed(self) -> bool:
        """False when the command's check failed (a mismatch, a design that does not fit)."""
        return True

    @property
    def code(self) -> int:
        return 0 if self.passed else 1


def show(result: Result, as_json: bool = False) -> int:
    """Print a command's result (its JSON with ``as_json``) and its problems; its exit code."""
    out = [result.json_text()] if as_json else result.lines()
    if out:
        print("\n".join(out))
    for p in result.problems():
        print(p, file=sys.stderr)
    return result.code


# -- main: one line per error, fixed exit codes -------------------------------------------------


class Terminated(BaseException):
    """SIGTERM as an exception, so that every ``finally`` and cleanup handler runs (atomic.atomic_dir)."""


def _terminate(signum, frame):
    children.on_signal(Terminated())


def _interrupt(signum, frame):
    children.on_signal(KeyboardInterrupt())  # in sessions of their own, children miss the terminal's Ctrl-C


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> int:
    """Print the one line of a failed run; from here on no warnings: half-built objects collected at
    exit (Amaranth's UnusedElaboratable) must not bury that line under a page of noise."""
    import warnings
    warnings.simplefilter("ignore")
    print(message, file=sys.stderr)
    return code


def main(argv: list[str] | None, build_parser: Callable[[], argparse.ArgumentParser]) -> int:
    """Parse ``argv`` with the parser ``build_parser`` makes (each command's subparser sets ``run``, its
    command function), run the command and print its result. Exit codes: 0 done, 1 a check failed (a
    mismatch, agreement below --min-agreement, a design that does not fit), 2 bad input (one line
    naming the file, field or option), 130 Ctrl-C, 141 stdout closed by its reader, 143 SIGTERM."""
    import signal
    children.allow()
    previous = {}
    try:
        for sig, handler in ((signal.SIGTERM, _terminate), (signal.SIGINT, _interrupt)):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # a job started with `&` ignores Ctrl-C: keep it so
                previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        args = build_parser().parse_args(argv)
        return show(args.run(args), getattr(args, "json", False))
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- shiftpq train ------------------------------------------------------------------------------

TRAIN_HELP = "train a model: fp baseline, SPQ or PPQ"
TRAIN_DESCRIPTION = ("Train on CIFAR-10. Checkpoints every epoch to OUT/last.pt, writes OUT/final.pt, "
                     "OUT/log.jsonl (one JSON line per epoch) and OUT/summary.json.")


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """The arguments of ``shiftpq train`` (also what a sweep plan's runs pass); ``run``: cmd_train."""
    from .levels import ACT_BITS, WEIGHT_BITS
    from .models import MODEL_NAMES
    from .quant import COMPILED_QUANTIZERS, QUANT_KERNELS
    from .train import METHODS, RECIPES, RESIDUAL_PRUNING

    t.set_defaults(run=cmd_train)
    t.add_argument("--model", required=True, choices=MODEL_NAMES)
    t.add_argument("--method", required=True, choices=METHODS,
                   help="fp: full precision; spq: simultaneous pruning + QAT; ppq: prune, then QAT")
    t.add_argument("--recipe", default="fast", choices=list(RECIPES), help="hyperparameter preset (default: fast)")
    t.add_argument("--set", dest="overrides", type=kv, action="append", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field, e.g. --set epochs=30 --set lr=0.2 (repeatable)")
    t.add_argument("--rate", type=rate, default=0.3, help="GM pruning rate of every conv (default 0.3)")
    t.add_argument("--layer-rate", type=kv_float, action="append", default=[], metavar="CONV=RATE",
                   help="pruning rate of one conv, e.g. layer1.0.conv1=0.5 (repeatable)")
    t.add_argument("--residual-pruning", choices=RESIDUAL_PRUNING, default="grouped",
                   help="grouped (default): the convs that write one residual stream prune the same channels, so "
                   "the stream loses them too; layer: every conv picks its own filters (the stream keeps all)")
    t.add_argument("--wbits", type=int, default=4, choices=WEIGHT_BITS, help="weight bits of the inner convs")
    t.add_argument("--abits", type=int, default=4, choices=ACT_BITS, help="activation bits")
    t.add_argument("--stream-bits", type=int, default=8, choices=ACT_BITS,
                   help="bits of the residual stream (ResNets; 8 = uniform, default)")
    t.add_argument("--layer-bits", type=kv_int, action="append", default=[], metavar="LAYER=BITS",
                   help="bits of one conv's weights or one activation quantizer (repeatable)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-dir", default=None, help="CIFAR-10 binary directory (default: $CIFAR10_DIR)")
    t.add_argument("--train-limit", type=positive, default=None, help="use only the first N training images")
    t.add_argument("--test-limit", type=positive, default=None, help="use only the first N test images")
    t.add_argument("--init", default=None, metavar="CKPT", help="start from this checkpoint's weights and masks")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/last.pt")
    t.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the model (the fake quantizer: --compiled-quantizer; docs/compression.md)")
    t.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA (default: bf16 autocast)")
    t.add_argument("--stop-after", type=positive, default=None, metavar="EPOCHS",
                   help="stop (resumably) after this many epochs in this call")
    t.add_argument("--time-limit", type=seconds, default=None, metavar="SECONDS",
                   help="stop (resumably) before an epoch that would end past this wall time, judged by the "
                   "longest epoch so far in this call")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--teacher", default=None, metavar="CKPT",
                   help="distil from this checkpoint's model (e.g. the unpruned FP32 model, or a deeper ResNet) in "
                   "every phase, weight: recipe field distill (default: only ppq's QAT, from the pruned FP model)")
    t.add_argument("--compiled-quantizer", choices=COMPILED_QUANTIZERS, default=None,
                   help="with --compile: fused (element-wise ops Inductor fuses; default) or ops (opaque custom "
                   "ops around the --quant-kernels)")
    t.add_argument("--quant-kernels", choices=QUANT_KERNELS, default=None,
                   help="the fake quantizer's kernels in an eager model and inside the ops: table (bucketize and "
                   "a lookup; default, or $SHIFTPQ_QUANT_KERNELS) or inductor (its element-wise forward and "
                   "gradient, each compiled by Inductor: a kernel or two instead of about twenty)")


@dataclass(frozen=True)
class Trained(Result):
    """``shiftpq train``: the run directory (its files say the rest: summary.json, log.jsonl); prints
    nothing (the epochs' lines went to stderr as they ran)."""
    out: str


def _device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ShiftPQError(f"--device {name}: CUDA is not available on this machine")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ShiftPQError(f"--device must be cpu, cuda or auto, got {name!r}")
    return name


def cmd_train(a) -> Trained:
    from .data import resolve_data_dir
    from .models import ModelSpec
    from .train import TrainConfig, recipe_with, train
    spec = ModelSpec(a.model, a.wbits, a.abits, a.stream_bits, dict(a.layer_bits))
    cfg = TrainConfig(method=a.method, spec=spec, recipe=recipe_with(a.recipe, dict(a.overrides)),
                      recipe_name=a.recipe, rate=a.rate, layer_rates=dict(a.layer_rate), residual_pruning=a.residual_pruning, seed=a.seed,
                      train_limit=a.train_limit, test_limit=a.test_limit, init=a.init, teacher=a.teacher)
    resolve_data_dir(a.data_dir)
    from .quant import set_compiled_quantizer, set_quant_kernels
    if a.compiled_quantizer:
        set_compiled_quantizer(a.compiled_quantizer)
    if a.quant_kernels:
        set_quant_kernels(a.quant_kernels)
    train(cfg, a.out, device=_device(a.device), data_dir=a.data_dir, resume=a.resume, stop_after=a.stop_after,
          time_limit=a.time_limit, progress=not a.no_progress and sys.stderr.isatty(), compile_model=a.compile, amp=not a.no_amp,
          log=lambda s: print(s, file=sys.stderr, flush=True))
    return Trained(a.out)

