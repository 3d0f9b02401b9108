"""Training queue: ``shiftpq sweep PLAN.toml --time-limit SECONDS [--concurrent N] [--ray ADDRESS]``.

The unit of work is a *run*: one ``shiftpq train`` command and its run directory. A plan (TOML) lists
runs; the sweep starts up to N at once (one GPU is far from saturated by one ResNet-20 run), each in
its own process, and hands each a ``--time-limit`` that ends before the sweep's, so a run checkpoints
and exits between epochs instead of being killed. It is resumable: a finished run (``summary.json``) is
skipped, an unfinished one continues from its run directory with ``--resume``. Runs chain with
``init = "other run"`` (``--init`` from that run's ``final.pt``), so a long recipe is split into phases
that each fit one short GPU stretch (full-precision baseline; pruning; QAT) and a phase never has to
be carried half-trained from one machine to the next. At the end it writes the state of every run to
``RUNS_DIR/sweep-state.json`` (done / partial with its epochs / failed / not started; accuracies).

The same plan runs on a Ray cluster (``--ray ADDRESS``, ``pip install shiftpq[ray]``): each run
becomes a Ray task that runs the same command on a worker with ``--gpus-per-run`` of a GPU; the run
directories must then be on a file system every worker sees.

Plan format::

    runs_dir = "runs/table2"           # optional; default runs/<plan file stem>, relative to the cwd
    args = ["--recipe", "fast"]        # optional; prepended to every run's arguments

    [[run]]
    name = "resnet20-ppq-prune"        # letters, digits, '.', '_', '-'; the run directory's name
    args = ["--model", "resnet20", "--method", "ppq", "--set", "qat_epochs=0"]
    init = "resnet20-fp"               # optional: --init RUNS_DIR/resnet20-fp/final.pt (a dependency)
    teacher = "resnet56-fp"            # optional: --teacher RUNS_DIR/resnet56-fp/final.pt (a dependency)
    depends_on = ["other"]             # optional: more runs that must finish first

``args`` are ``shiftpq train`` arguments without ``--out``, ``--resume``, ``--time-limit`` and
``--stop-after`` (the sweep sets them) and are checked against ``shiftpq train``'s parser before
anything starts.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import children, cmdline
from .atomic import write_text_atomic
from .cmdline import Parser, Result, add_train_arguments, seconds
from .errors import ShiftPQError

SWEEP_DESCRIPTION = ("Run the trainings of a plan (TOML: [[run]] rows of name, shiftpq train args, optional init, "
                     "teacher and depends_on), up to N at once, each resumable from RUNS_DIR/NAME, all stopping cleanly "
                     "before the time limit; writes RUNS_DIR/sweep-state.json. See sw/shiftpq/sweep.py and "
                     "docs/experiments.md.")
STATE_FILE = "sweep-state.json"
RESERVED = ("--out", "--resume", "--time-limit", "--stop-after")
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# Seconds a child gets less than the time left: its start (imports, data, model), the final evaluation
# and checkpoint after its last epoch; the sweep ends children still running at its own limit.
CHILD_MARGIN_S = 20.0
MIN_CHILD_S = 30.0  # no run is started with less time than this left


@dataclass
class Run:
    name: str
    args: list[str]
    init: str | None = None
    depends_on: list[str] = field(default_factory=list)
    teacher: str | None = None

    @property
    def needs(self) -> list[str]:
        first = [n for n in (self.init, self.teacher) if n]
        return list(dict.fromkeys(first + self.depends_on))


@dataclass
class Plan:
    path: Path
    runs_dir: Path
    args: list[str]
    runs: list[Run]

    def by_name(self) -> dict[str, Run]:
        return {r.name: r for r in self.runs}

    def run_dir(self, run: Run) -> Path:
        return self.runs_dir / run.name

    def command_args(self, run: Run) -> list[str]:
        """The run's ``shiftpq train`` arguments, --out, --init and --teacher included (not the per-call ones)."""
        extra = ["--init", str(self.runs_dir / run.init / "final.pt")] if run.init else []
        extra += ["--teacher", str(self.runs_dir / run.teacher / "final.pt")] if run.teacher else []
        return [*self.args, *run.args, *extra, "--out", str(self.run_dir(run))]


def _str_list(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ShiftPQError(f"{where}: expected a list of strings, got {value!r}")
    return list(value)


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _ArgError(message)


def train_parser(prog: str = "shiftpq train") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Train on CIFAR-10 (shiftpq train).")
    add_train_arguments(p)
    return p


def check_train_args(parser: argparse.ArgumentParser, args: list[str], where: str, init: bool = False,
                     required: tuple[str, ...] = (), teacher: bool = False) -> None:
    """``args`` as ``shiftpq train`` will parse them: valid, setting none of the sweep's options (an
    abbreviation such as ``--resu`` included: argparse accepts unique prefixes), with a valid recipe."""
    from .train import recipe_with
    try:
        ns = parser.parse_args(["--out", "\0", *required, *args])  # any --out (or --ou ...) in args overrides it
    except _ArgError as e:
        raise ShiftPQError(f"{where}: {e}") from None
    set_by_sweep = {"--out": ns.out != "\0", "--resume": ns.resume, "--time-limit": ns.time_limit is not None,
                    "--stop-after": ns.stop_after is not None, "--init": init and ns.init is not None,
                    "--teacher": teacher and ns.teacher is not None}
    for opt, given in set_by_sweep.items():
        if given:
            raise ShiftPQError(f"{where}: {opt} (or an abbreviation of it) is set by the sweep, leave it out")
    try:
        recipe_with(ns.recipe, dict(ns.overrides))
    except ShiftPQError as e:
        raise ShiftPQError(f"{where}: --set: {e}") from None


def load_plan(path: str | Path, runs_dir: str | None = None) -> Plan:
    """Read and check a plan: every problem is one ShiftPQError naming the file and the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ShiftPQError(f"{path}: no such plan file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ShiftPQError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(data) - {"runs_dir", "args", "run"})
    if unknown:
        raise ShiftPQError(f"{path}: unknown top-level field {unknown[0]!r}; expected runs_dir, args, [[run]]")
    if "runs_dir" in data and not isinstance(data["runs_dir"], str):
        raise ShiftPQError(f"{path}: field 'runs_dir': expected a string, got {data['runs_dir']!r}")
    common = _str_list(data.get("args", []), f"{path}: field 'args'")
    rows = data.get("run")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ShiftPQError(f"{path}: field 'run': expected at least one [[run]] table")
    runs: list[Run] = []
    for i, row in enumerate(rows):
        where = f"{path}: run[{i}]"
        bad = sorted(set(row) - {"name", "args", "init", "teacher", "depends_on"})
        if bad:
            raise ShiftPQError(f"{where}: unknown field {bad[0]!r}; expected name, args, init, teacher, depends_on")
        name = row.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ShiftPQError(f"{where}: field 'name': expected letters, digits, '.', '_' or '-', got {name!r}")
        where = f"{path}: run {name!r}"
        if name in {r.name for r in runs}:
            raise ShiftPQError(f"{where}: field 'name': {name!r} is used by an earlier run")
        if "args" not in row:
            raise ShiftPQError(f"{where}: field 'args' is missing (the shiftpq train arguments)")
        args = _str_list(row["args"], f"{where}: field 'args'")
        init, teacher = row.get("init"), row.get("teacher")
        for key, value in (("init", init), ("teacher", teacher)):
            if value is not None and not isinstance(value, str):
                raise ShiftPQError(f"{where}: field '{key}': expected a run name, got {value!r}")
        runs.append(Run(name, args, init, _str_list(row.get("depends_on", []), f"{where}: field 'depends_on'"),
                        teacher))
    names = {r.name for r in runs}
    parser = train_parser()
    for r in runs:
        where = f"{path}: run {r.name!r}"
        for dep in r.needs:
            if dep not in names:
                key = "init" if dep == r.init else "teacher" if dep == r.teacher else "depends_on"
                raise ShiftPQError(f"{where}: field '{key}': no run named {dep!r}")
        for a in [*common, *r.args]:
            opt = a.split("=", 1)[0]
            if opt in RESERVED or (r.init and opt == "--init") or (r.teacher and opt == "--teacher"):
                raise ShiftPQError(f"{where}: field 'args': {opt} is set by the sweep, leave it out")
        check_train_args(parser, [*common, *r.args], f"{where}: field 'args'", init=bool(r.init),
                         teacher=bool(r.teacher))
    _check_acyclic(path, runs)
    return Plan(path, Path(runs_dir or data.get("runs_dir") or Path("runs") / path.stem), common, runs)


def _check_acyclic(path: Path, runs: list[Run]) -> None:
    deps = {r.name: r.needs for r in runs}
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = trail[trail.index(n):] + [n]
            raise ShiftPQError(f"{path}: run {n!r}: field 'depends_on': a cycle {' -> '.join(cycle)}")
        state[n] = 1
        for d in deps[n]:
            visit(d, trail + [n])
        state[n] = 2

    for r in runs:
        visit(r.name, [])


# -- run states, read from the run directories -------------------------------------------------

def run_state(run_dir: Path) -> dict:
    """What a run directory holds: done (summary.json), partial (epochs logged), or not started."""
    summary = run_dir / "summary.json"
    log = run_dir / "log.jsonl"
    from .train import read_log
    recs = read_log(log)  # a torn last line (a killed run) is not an epoch
    st: dict = {"epochs": len(recs), "epoch_seconds": round(sum(r.get("seconds", 0.0) for r in recs), 1)}
    if recs:
        st["last_test_acc"] = recs[-1]["test_acc"]
        st["best_test_acc"] = max(r["test_acc"] for r in recs)
    cfg = run_dir / "config.json"
    if cfg.is_file():
        from .train import total_epochs
        c = json.loads(cfg.read_text())
        st["total_epochs"] = total_epochs(c["method"], c["recipe"]["epochs"], c["recipe"]["qat_epochs"])
    if summary.is_file() and json.loads(summary.read_text()).get("finished"):
        s = json.loads(summary.read_text())
        st.update(state="done", test_accuracy=s["test_accuracy"], size_ratio=s["size_ratio"],
                  bops_ratio=s["bops_ratio"])
    else:
        st["state"] = "partial" if recs else "not started"
    return st


def write_state(plan: Plan, failed: dict[str, int]) -> tuple[Path, dict]:
    """RUNS_DIR/sweep-state.json from the run directories (deterministic: nothing of this call's clock)."""
    runs = {}
    for r in plan.runs:
        st = run_state(plan.run_dir(r))
        if r.name in failed and st["state"] != "done":
            st.update(state="failed", exit_code=failed[r.name])
        runs[r.name] = {"dir": str(plan.run_dir(r)), "needs": r.needs, **st}
    counts = {k: sum(1 for v in runs.values() if v["state"] == k) for k in ("done", "partial", "failed", "not started")}
    state = {"plan": str(plan.path), "counts": counts, "runs": runs}
    plan.runs_dir.mkdir(parents=True, exist_ok=True)
    out = plan.runs_dir / STATE_FILE
    write_text_atomic(out, json.dumps(state, indent=2, sort_keys=True) + "\n")
    return out, state


# -- executing runs: local processes or Ray tasks ----------------------------------------------

def _child_env() -> dict[str, str]:
    """The children import this very shiftpq (an editable install, or PYTHONPATH=sw on a bare machine)."""
    here = str(Path(__file__).resolve().parents[1])
    pp = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": here + (os.pathsep + pp if pp else ""), "PYTHONUNBUFFERED": "1"}


def child_command(args: list[str]) -> list[str]:
    """``python -m shiftpq.sweep train ARGS``: shiftpq train without the hardware packages' imports,
    so that a bare GPU machine (PyTorch, NumPy, tqdm) runs it from the source tree."""
    return [sys.executable, "-m", "shiftpq.sweep", "train", *args]


class LocalBackend:
    def __init__(self):
        self.procs: dict[str, tuple[subprocess.Popen, object]] = {}

    def start(self, name: str, cmd: list[str], log_path: Path) -> None:
        f = open(log_path, "ab")
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        p = children.popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_child_env())
        self.procs[name] = (p, f)

    def poll(self, name: str) -> int | None:
        p, f = self.procs[name]
        rc = p.poll()
        if rc is not None:
            children.forget(p)
            f.close()
            del self.procs[name]
        return rc

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM every child still running (its last epoch's checkpoint stays: writes are atomic),
        SIGKILL after ``grace`` seconds."""
        children.stop([p for p, _ in self.procs.values()], grace)
        for _, f in self.procs.values():
            f.close()
        self.procs.clear()

    def close(self) -> None:
        pass


def _ray_run(cmd: list[str], cwd: str, env: dict, log_path: str) -> int:
    """A Ray task: one run, as a process on the worker (the same command as locally)."""
    with open(log_path, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        return subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


class RayBackend:
    """Runs as Ray tasks. ADDRESS "local" starts a Ray instance on this machine; anything else is
    handed to ray.init (e.g. "auto", "ray://head:10001")."""

    def __init__(self, address: str, gpus_per_run: float, cpus_per_run: float):
        try:
            import ray
        except ImportError:
            raise ShiftPQError("--ray needs Ray: pip install 'shiftpq[ray]'") from None
        self.ray = ray
        if address == "local":
            ray.init(num_cpus=max(1, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        self.task = ray.remote(num_gpus=gpus_per_run, num_cpus=cpus_per_run, max_retries=0)(_ray_run)
        self.refs: dict[str, object] = {}

    def start(self, name: str, cmd: list[str], log_path: Path) -> None:
        self.refs[name] = self.task.remote(cmd, os.getcwd(), _child_env(), str(log_path.resolve()))

    def poll(self, name: str) -> int | None:
        ready, _ = self.ray.wait([self.refs[name]], timeout=0)
        if not ready:
            return None
        try:
            rc = self.ray.get(self.refs.pop(name))
        except Exception:  # the task itself failed (worker died): a failed run
            rc = -1
        return rc

    def stop_all(self, grace: float = 10.0) -> None:
        for ref in self.refs.values():
            self.ray.cancel(ref, force=True)
        self.refs.clear()

    def close(self) -> None:
        self.ray.shutdown()


def sweep(plan: Plan, time_limit: float, concurrent: int = 1, extra_args: list[str] | None = None,
          backend=None, progress: bool = True, log=print, only: list[str] | None = None) -> dict:
    """Run the plan's unfinished runs, at most ``concurrent`` at once, until all are done or blocked
    or ``time_limit`` seconds have passed; returns the state written to RUNS_DIR/sweep-state.json.
    ``only``: run just these (a named run whose dependency is neither done nor named is blocked)."""
    t0 = time.monotonic()
    deadline = t0 + time_limit
    backend = backend or LocalBackend()
    extra = list(extra_args or [])
    runs = plan.by_name()
    done = {n for n in runs if run_state(plan.run_dir(runs[n]))["state"] == "done"}
    failed: dict[str, int] = {}
    running: list[str] = []
    plan.runs_dir.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm
    bar = tqdm(total=len(runs), initial=len(done), desc="sweep", unit="run", disable=not progress, dynamic_ncols=True)
    todo = [n for n in runs if n not in done and (only is None or n in only)]
    if done:
        log(f"{len(done)} of {len(runs)} runs already done: {', '.join(sorted(done))}")
    try:
        while True:
            for n in list(running):
                rc = backend.poll(n)
                if rc is None:
                    continue
                running.remove(n)
                todo.remove(n)
                st = run_state(plan.run_dir(runs[n]))
                if rc == 0 and st["state"] == "done":
                    done.add(n)
                    bar.update(1)
                    log(f"{n}: done, {st['test_accuracy']:.2f}% ({st['epochs']} epochs)")
                elif rc == 0:
                    log(f"{n}: stopped at the time limit after epoch {st['epochs']}/{st.get('total_epochs', '?')} "
                        f"(resumable)")
                else:
                    failed[n] = rc
                    log(f"{n}: FAILED with exit code {rc}; see {plan.run_dir(runs[n]) / 'train.log'}")
            blocked = [n for n in todo if n not in running and any(d in failed or (d not in done and d not in todo)
                                                                   for d in runs[n].needs)]
            for n in blocked:
                todo.remove(n)
                log(f"{n}: not started, it needs {', '.join(d for d in runs[n].needs if d not in done)}")
            left = deadline - time.monotonic()
            ready = [n for n in todo if n not in running and all(d in done for d in runs[n].needs)]
            while ready and len(running) < concurrent and left - CHILD_MARGIN_S >= MIN_CHILD_S:
                n = ready.pop(0)
                rd = plan.run_dir(runs[n])
                rd.mkdir(parents=True, exist_ok=True)
                resume = ["--resume"] if (rd / "log.jsonl").is_file() else []
                args = [*plan.command_args(runs[n]), *extra, *resume, "--no-progress",
                        "--time-limit", f"{left - CHILD_MARGIN_S:.0f}"]
                backend.start(n, child_command(args), rd / "train.log")
                running.append(n)
                log(f"{n}: {'resumed' if resume else 'started'} ({len(running)} running, {left:.0f} s left)")
            bar.set_postfix_str(", ".join(running), refresh=True)
            if not running:
                if todo and left - CHILD_MARGIN_S < MIN_CHILD_S:
                    log(f"{len(todo)} runs left for a later call: too little time to start one")
                break
            if time.monotonic() >= deadline:
                log(f"time limit: ending {', '.join(running)} (each resumes from its last finished epoch)")
                backend.stop_all()
                running.clear()
                break
            time.sleep(0.2)
    finally:
        if running:
            backend.stop_all()
        backend.close()
        bar.close()
    out, state = write_state(plan, failed)
    c = state["counts"]
    log(f"wrote {out}: {c['done']} done, {c['partial']} partial, {c['failed']} failed, {c['not started']} not started "
        f"({time.monotonic() - t0:.0f} s)")
    return state


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``shiftpq sweep``; ``run``: cmd_sweep."""
    p.set_defaults(run=cmd_sweep)
    p.add_argument("plan", metavar="PLAN.toml")
    p.add_argument("--time-limit", type=seconds, required=True, metavar="SECONDS",
                   help="wall time of the whole sweep; every run stops (resumably) before it")
    p.add_argument("--concurrent", type=int, default=1, metavar="N", help="runs at once (default 1)")
    p.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="where the run directories live (default: the plan's runs_dir, else runs/<plan stem>)")
    p.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                   help="append ARG to every run's shiftpq train arguments, e.g. --train-arg=--compile (repeatable)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run on Ray (pip install 'shiftpq[ray]'): 'local' starts one here, else ray.init(ADDRESS)")
    p.add_argument("--gpus-per-run", type=float, default=None, metavar="F",
                   help="with --ray: GPUs per run (default 1/N with CUDA, else 0)")
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="run only this run of the plan (repeatable); e.g. the phases that fit one GPU stretch")
    p.add_argument("--dry-run", action="store_true", help="print each run's state and command, run nothing")


@dataclass(frozen=True)
class PlannedRun:
    """One run of ``shiftpq sweep --dry-run``: its state and the train command it would get."""
    name: str
    state: str
    epochs: int
    needs: tuple[str, ...]
    args: tuple[str, ...]


@dataclass(frozen=True)
class DryRun(Result):
    """``shiftpq sweep --dry-run``: every run's state and command; nothing ran."""
    runs: tuple[PlannedRun, ...]

    def lines(self) -> list[str]:
        return [f"{r.name}: {r.state} ({r.epochs} epochs)  needs: {', '.join(r.needs) or '-'}\n  "
                f"shiftpq train {' '.join(r.args)}" for r in self.runs]


@dataclass(frozen=True)
class Swept(Result):
    """``shiftpq sweep``: the state of every run (``sweep``'s, also in RUNS_DIR/sweep-state.json);
    exit 1 when a run failed."""
    state: dict

    @property
    def counts(self) -> dict[str, int]:
        return self.state["counts"]

    def lines(self) -> list[str]:
        return [json.dumps(self.counts, sort_keys=True)]

    @property
    def passed(self) -> bool:
        return not self.counts["failed"]


def cmd_sweep(a) -> DryRun | Swept:
    if a.concurrent < 1:
        raise ShiftPQError(f"--concurrent must be >= 1, got {a.concurrent}")
    if a.time_limit <= 0:
        raise ShiftPQError(f"--time-limit must be > 0, got {a.time_limit}")
    plan = load_plan(a.plan, a.runs_dir)
    check_only(plan, a.only)
    for x in a.train_arg:
        if x.split("=", 1)[0] in RESERVED:
            raise ShiftPQError(f"--train-arg {x}: {x.split('=', 1)[0]} is set by the sweep")
    check_train_args(train_parser(), a.train_arg, "--train-arg", required=("--model", "tiny", "--method", "fp"))
    log = lambda s: print(f"shiftpq sweep: {s}", file=sys.stderr, flush=True)
    if a.dry_run:
        runs = []
        for r in plan.runs:
            if a.only is not None and r.name not in a.only:
                continue
            st = run_state(plan.run_dir(r))
            runs.append(PlannedRun(r.name, st["state"], st["epochs"], tuple(r.needs),
                                   tuple(plan.command_args(r) + a.train_arg)))
        return DryRun(tuple(runs))
    backend = None
    if a.ray:
        import torch
        gpus = a.gpus_per_run if a.gpus_per_run is not None else (1.0 / a.concurrent if torch.cuda.is_available() else 0.0)
        backend = RayBackend(a.ray, gpus, 1.0)
    return Swept(sweep(plan, a.time_limit, a.concurrent, a.train_arg, backend, progress=sys.stderr.isatty(), log=log,
                       only=a.only))


def check_only(plan: Plan, only: list[str] | None) -> None:
    """``--only`` names runs of the plan."""
    unknown = [n for n in only or [] if n not in plan.by_name()]
    if unknown:
        raise ShiftPQError(f"--only {unknown[0]}: not a run of {plan.path}; runs are "
                           f"{', '.join(r.name for r in plan.runs)}")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m shiftpq.sweep``: ``shiftpq`` with only train and sweep."""
    p = Parser(prog="shiftpq", description="shiftpq train and sweep, without the hardware packages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_arguments(sub.add_parser("train", help="train a model (shiftpq train --help)"))
    add_sweep_arguments(sub.add_parser("sweep", help="run a plan (shiftpq sweep --help)", description=SWEEP_DESCRIPTION))
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m shiftpq.sweep train ...`` / ``python -m shiftpq.sweep sweep PLAN ...``: shiftpq with
    only these two commands, so that it runs without the hardware packages (Amaranth, cocotb) on a
    bare GPU machine; the sweep's children run this way. Errors as in ``shiftpq``: one line, exit 2."""
    return cmdline.main(argv, build_parser)


if __name__ == "__main__":
    sys.exit(main())
