#!/usr/bin/env python3
"""One GPU stretch of the Table II/III queue (issue 23): stage CIFAR-10, check the compiled quantizer,
run the plan for a fixed time, return the run states. docs/experiments.md gives the device calls.

    # here, once per checkout: the six .bin files in call-sized folders under .gpu/ (cut where needed)
    python scripts/gpu_round.py prepare [--data-dir $CIFAR10_DIR]
    # there, one device call per folder (carry .gpu/stageK), the last one also runs the round:
    python3 scripts/gpu_round.py stage .gpu/stage1
    python3 scripts/gpu_round.py stage .gpu/stage3 && python3 scripts/gpu_round.py run --time-limit 540
    # here, after the round: finished phases into plans/done/<plan>/ (commit them; a phase's final.pt
    # is dropped once every phase that starts from it is committed), the rest into runs/gpu/
    python scripts/gpu_round.py adopt /work/.device/.../runs.tar.gz
    python scripts/gpu_round.py ship r20-ppq-qat --as resnet20-ppq   # models/NAME.pt + manifest NAME.json
    python scripts/gpu_round.py drop r20-ppq-qat-kd     # a committed result's weights, once not needed
    python scripts/gpu_round.py curves          # docs/results-curves.png from the committed phases

``run`` needs only PyTorch, NumPy and tqdm (a bare GPU machine: it runs shiftpq from ``sw/``):
1. the six .bin files staged in --data (md5 checked; a missing one is named);
2. with CUDA, the compiled-quantizer check: ``--check-steps`` QAT steps of ResNet-20 eager and
   compiled from the same start (bench/train_throughput.py's compiled_vs_eager). If the compiled
   loss does not follow the eager one, every run gets ``--compiled-quantizer ops`` (the custom ops,
   verified in round 7); ``--bench`` also times FP and QAT steps (bench/train_throughput.py, with both
   kinds of quantizer kernels);
   with CUDA and ``--quant-kernels auto`` (the default), the kernels check: ``--kernel-check-steps``
   eager QAT steps with the "inductor" quantizer kernels against the "table" ones (the first loss must
   be equal bit for bit, the rest must fall alike; bench/train_throughput.py's kernels_vs_table).
   Every run gets ``--quant-kernels inductor`` if it passes, ``table`` if not (check-kernels.json);
3. ``shiftpq sweep PLAN`` for what is left of ``--time-limit``, ``--concurrent`` runs at once, with
   the plan's finished phases (committed under plans/done/<plan>/ by ``adopt``) copied in first, so
   they are skipped and their dependants start from them;
4. into --out (default $OUT): state.json (the sweep state), runs.tar.gz (every run directory's
   logs, summary and config, finished runs' final.pt without optimizer state, unfinished runs'
   last.pt; split into
   runs.tar.gz.1, .2, ... when over 15 MiB), check.json, check-kernels.json and bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sw"))

# The official binary files (shared/data/cifar10/README.md)
CIFAR10_FILES_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
CALL_MIB = 64  # what one device call carries: the working tree plus the carried paths
PART_BYTES = 15 << 20  # one file back through $OUT: at most 16 MiB
DEFAULT_DATA = "/tmp/shiftpq-cifar10"  # outside the repository copy, which each call replaces


def fail(msg: str) -> None:
    print(f"gpu_round: error: {msg}", file=sys.stderr)
    sys.exit(2)


def tree_bytes(root: Path) -> int:
    """Bytes of what a device call sends besides the carried paths: tracked and untracked, not ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    return sum((root / p).stat().st_size for p in out.decode().split("\0") if p and (root / p).is_file())


def _part_name(name: str, start: int, end: int, size: int) -> str:
    """A piece of a CIFAR-10 file: its bytes [start, end) of ``size``."""
    return f"{name}.{start}-{end}-{size}.part"


def _part_of(piece: str) -> tuple[str, tuple[int, int, int] | None]:
    """The file and (start, end, size) a ``_part_name`` names (None: not three integers)."""
    name, _, rng = piece.removesuffix(".part").rpartition(".")
    try:
        start, end, size = (int(x) for x in rng.split("-"))
    except ValueError:
        return name, None
    return name, (start, end, size)


def cmd_prepare(a) -> int:
    """Fill as few call folders as the per-call budget allows with the six files, cut into byte
    ranges where a whole file does not fit what is left of a call (``stage`` joins them again)."""
    src = Path(a.data_dir or os.environ.get("CIFAR10_DIR") or "")
    missing = [n for n in CIFAR10_FILES_MD5 if not (src / n).is_file()]
    if missing:
        fail(f"--data-dir {str(src)!r}: {missing[0]} is missing (expected the official CIFAR-10 .bin files)")
    tree = tree_bytes(ROOT)
    room = (a.call_mib << 20) - tree - (1 << 20)  # a MiB spare for the plan's own small files
    if room < (1 << 20):
        fail(f"the working tree is {tree / 2**20:.1f} MiB: less than a MiB is left for data in a "
             f"{a.call_mib} MiB call")
    dest = Path(a.dest)
    if dest.exists():
        shutil.rmtree(dest)
    calls: list[list[tuple[str, int, int, int]]] = [[]]  # per call: (file, start, end, size)
    left = room
    for n in CIFAR10_FILES_MD5:
        size, pos = (src / n).stat().st_size, 0
        while pos < size:
            if left == 0:
                calls.append([])
                left = room
            take = min(size - pos, left)
            calls[-1].append((n, pos, pos + take, size))
            pos, left = pos + take, left - take
    for k, group in enumerate(calls, 1):
        d = dest / f"stage{k}"
        d.mkdir(parents=True)
        for n, start, end, size in group:
            if (start, end) == (0, size):
                try:
                    os.link(src / n, d / n)
                except OSError:
                    shutil.copyfile(src / n, d / n)
                continue
            with open(src / n, "rb") as f_in, open(d / _part_name(n, start, end, size), "wb") as f_out:
                f_in.seek(start)
                f_out.write(f_in.read(end - start))
    rel = dest.resolve().relative_to(ROOT) if dest.resolve().is_relative_to(ROOT) else dest
    print(f"working tree {tree / 2**20:.1f} MiB; {len(calls)} staging calls of at most "
          f"{room / 2**20:.1f} MiB of data (files cut where one does not fit):")
    for k in range(1, len(calls) + 1):
        tail = " && python3 scripts/gpu_round.py run --time-limit 540" if k == len(calls) else ""
        print(f"  run(carry=['{rel}/stage{k}'], command='python3 scripts/gpu_round.py stage {rel}/stage{k}{tail}')")
    return 0


def cmd_stage(a) -> int:
    """Copy a carried folder's files into --data: whole files md5-checked at once, pieces kept in
    --data/.parts/ until a file's pieces cover it, then joined and md5-checked."""
    from shiftpq.data import _md5
    src, data = Path(a.folder), Path(a.data)
    files = sorted(p for p in src.iterdir() if p.suffix in (".bin", ".part")) if src.is_dir() else []
    if not files:
        fail(f"{src}: no .bin or .part files to stage (carry the folder made by `gpu_round.py prepare`)")
    data.mkdir(parents=True, exist_ok=True)
    parts = data / ".parts"

    def install(p: Path, name: str) -> None:
        if _md5(p) != CIFAR10_FILES_MD5[name]:
            fail(f"{p}: md5 {_md5(p)}, expected {CIFAR10_FILES_MD5[name]} (file {name})")
        tmp = data / f".{name}.tmp"
        shutil.copyfile(p, tmp)
        os.replace(tmp, data / name)

    for p in files:
        name, rng = _part_of(p.name) if p.suffix == ".part" else (p.name, None)
        if name not in CIFAR10_FILES_MD5:
            fail(f"{p}: not a CIFAR-10 file or a piece of one (expected one of {', '.join(CIFAR10_FILES_MD5)})")
        if p.suffix == ".bin":
            install(p, name)
            continue
        if rng is None:
            fail(f"{p}: a piece's name must be NAME.START-END-SIZE.part")
        start, end, size = rng
        if not 0 <= start < end <= size or p.stat().st_size != end - start:
            fail(f"{p}: {p.stat().st_size} bytes, expected bytes {start}-{end} of a {size}-byte file")
        (parts / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, parts / name / p.name)
        have = sorted((_part_of(q.name)[1], q) for q in (parts / name).iterdir())
        ranges = [r for r, _ in have]
        if ranges[0][0] == 0 and ranges[-1][1] == size and all(x[1] == y[0] for x, y in zip(ranges, ranges[1:])):
            joined = parts / f"{name}.joined"
            with open(joined, "wb") as f_out:
                for _, q in have:
                    f_out.write(q.read_bytes())
            install(joined, name)
            shutil.rmtree(parts / name)
            joined.unlink()
    have = sorted(n for n in CIFAR10_FILES_MD5 if (data / n).is_file())
    print(f"staged {', '.join(p.name for p in files)} in {data}; {len(have)} of {len(CIFAR10_FILES_MD5)} files there")
    return 0


def _check_compiled(model: str, batch: int, steps: int, out: Path, device: str = "cuda") -> dict:
    """Does the compiled fused quantizer train like eager? (bench/train_throughput.py's check)"""
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from train_throughput import compiled_vs_eager
    t = time.monotonic()
    chk = compiled_vs_eager(model, torch.device(device), batch, steps)
    first = chk["eager_loss"][0]
    # a compiled quantizer that trains drifts from eager by float reassociation only; the miscompile of
    # rounds 6-7 left the loss near its start (2.28 vs eager 0.58 after 40 steps)
    ok = chk["compiled_last4"] - chk["eager_last4"] < 0.25 * max(1e-6, first - chk["eager_last4"])
    res = {"quantizer": "fused", "ok": bool(ok), "seconds": round(time.monotonic() - t, 1), **chk}
    (out / "check.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"gpu_round: compiled fused quantizer {'trains' if ok else 'DOES NOT train'}: QAT loss after "
          f"{chk['steps']} steps eager {chk['eager_last4']:.3f}, compiled {chk['compiled_last4']:.3f} "
          f"({res['seconds']} s)", flush=True)
    return res


def _check_kernels(model: str, batch: int, steps: int, out: Path, device: str = "cuda") -> dict:
    """Do the "inductor" quantizer kernels train like the "table" ones? (bench/train_throughput.py)"""
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from train_throughput import kernels_vs_table
    t = time.monotonic()
    res = {"kernels": "inductor", **kernels_vs_table(model, torch.device(device), batch, steps)}
    res["seconds"] = round(time.monotonic() - t, 1)
    (out / "check-kernels.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"gpu_round: inductor quantizer kernels {'train' if res['ok'] else 'DO NOT train'} like the table: "
          f"{sum(res['mismatches'].values())} elements differ on the level probes, "
          f"first loss {'equal' if res['first_equal'] else 'DIFFERENT'}, last {res['inductor_loss'][-1]:.3f} vs "
          f"{res['table_loss'][-1]:.3f} ({res['seconds']} s)", flush=True)
    return res


def _guarded(what: str, record: Path, fields: dict, check) -> dict:
    """A check before the sweep; a crash (e.g. the compiler's) must not cost the stretch: it is recorded
    as a failed check (``ok`` false, the error) and the round goes on with the safe choice."""
    try:
        return check()
    except Exception as e:
        res = {**fields, "ok": False, "error": f"{type(e).__name__}: {e}"}
        record.write_text(json.dumps(res, indent=1) + "\n")
        print(f"gpu_round: the {what} check failed ({res['error'][:300]})", flush=True)
        return res


def _pack(runs_dir: Path, out: Path) -> list[Path]:
    """runs.tar.gz (split into 15 MiB parts when larger): every run directory's small files, finished
    runs' final.pt, unfinished runs' last.pt; deterministic (sorted names, no times or owners)."""
    import tempfile
    import torch
    members = []  # (path, name in the archive)
    slim = Path(tempfile.mkdtemp())
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        keep = ["config.json", "log.jsonl", "summary.json", "train.log"]
        members += [(d / n, d / n) for n in keep if (d / n).is_file()]
        if (d / "summary.json").is_file() and (d / "final.pt").is_file():  # a finished phase: weights only
            blob = torch.load(d / "final.pt", map_location="cpu", weights_only=True)
            blob.pop("optimizer", None)
            blob.pop("teacher", None)
            torch.save(blob, slim / f"{d.name}.pt")
            members.append((slim / f"{d.name}.pt", d / "final.pt"))
        elif (d / "last.pt").is_file():  # unfinished: all it needs to resume
            members.append((d / "last.pt", d / "last.pt"))
    members.append((runs_dir / "sweep-state.json", runs_dir / "sweep-state.json"))
    tmp = out / "runs.tar.gz"

    def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
        return ti

    import gzip
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for path, name in members:
            tar.add(path, arcname=str(name.relative_to(runs_dir.parent)), filter=clean)
    shutil.rmtree(slim)
    size = tmp.stat().st_size
    if size <= PART_BYTES:
        return [tmp]
    parts = []
    with open(tmp, "rb") as f:
        for k in range(1, -(-size // PART_BYTES) + 1):
            part = out / f"runs.tar.gz.{k}"
            part.write_bytes(f.read(PART_BYTES))
            parts.append(part)
    tmp.unlink()
    return parts


def done_dir(plan_path: str | Path, override: str | None = None) -> Path:
    """Where a plan's finished phases are committed (they travel with the tree to the next stretch)."""
    return Path(override) if override else ROOT / "plans" / "done" / Path(plan_path).stem


def cmd_adopt(a) -> int:
    """Here, after a round: unpack runs.tar.gz (or its parts); finished runs go to plans/done/<plan>/
    (final.pt without optimizer state, to commit), unfinished ones to --runs-dir (ignored, local)."""
    import tempfile
    parts = [Path(p) for p in a.archive]
    for p in parts:
        if not p.is_file():
            fail(f"{p}: no such file (the runs.tar.gz, or all its .1 .2 ... parts in order)")
    with tempfile.TemporaryDirectory() as tmp:
        joined = Path(tmp) / "runs.tar.gz"
        with open(joined, "wb") as f:
            for p in parts:
                f.write(p.read_bytes())
        with tarfile.open(joined) as tar:
            tar.extractall(tmp, filter="data")
        state = json.loads(next(Path(tmp).glob("*/sweep-state.json")).read_text())
        src_root = next(Path(tmp).glob("*/sweep-state.json")).parent
        done, other = done_dir(a.plan, a.done_dir), Path(a.runs_dir)
        for name, r in sorted(state["runs"].items()):
            src = src_root / name
            if not src.is_dir():
                continue
            if r["state"] == "done":
                dst = done / name
                dst.mkdir(parents=True, exist_ok=True)
                for n in ("config.json", "log.jsonl", "summary.json"):
                    shutil.copyfile(src / n, dst / n)
                shutil.copyfile(src / "final.pt", dst / "final.pt")  # weights only (_pack)
                print(f"{name}: done, {r['test_accuracy']:.2f}% -> {dst}")
            else:
                dst = other / name
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(src, dst)
                print(f"{name}: {r['state']} ({r['epochs']} epochs) -> {dst}")
    for name in drop_spent(a.plan, done):
        print(f"{name}: final.pt dropped from {done / name} (every phase that starts from it is done; "
              f"config, log and summary stay)")
    return 0


def _committed(plan, done: Path) -> set[str]:
    """The plan's phases committed as finished under ``done``."""
    from shiftpq.sweep import run_state
    return {r.name for r in plan.runs if run_state(done / r.name)["state"] == "done"}


def drop_spent(plan_path: str | Path, done: Path) -> list[str]:
    """Delete the final.pt of committed phases that other phases start from once all of those are
    committed too: nothing will read it again, and every byte under plans/done/ travels with each
    device call. A phase nothing starts from (a result, e.g. a QAT phase) keeps its weights."""
    from shiftpq.sweep import load_plan
    plan = load_plan(plan_path)
    finished = _committed(plan, done)
    spent = []
    for r in plan.runs:
        users = [u.name for u in plan.runs if r.name in u.needs]
        if r.name in finished and users and all(u in finished for u in users) and (done / r.name / "final.pt").is_file():
            (done / r.name / "final.pt").unlink()
            spent.append(r.name)
    return spent


def cmd_drop(a) -> int:
    """Here: delete the committed final.pt of finished phases whose weights nobody needs: a result that
    lost, or one already shipped under models/ (packed there, so the float32 weights then live in git
    history only). Which phases those are is the caller's judgement; config, log and summary stay.
    Refused, with nothing deleted, for a phase that is not committed or has no weights, and for one
    that a phase of the plan not yet committed starts from (``init``) or distils from (``teacher``)."""
    from shiftpq.sweep import load_plan
    plan = load_plan(a.plan)
    done = done_dir(a.plan, a.done_dir)
    by_name = {r.name: r for r in plan.runs}
    finished = _committed(plan, done)
    for name in a.runs:
        if name not in by_name:
            fail(f"{a.plan}: no run named {name!r}")
        if name not in finished or not (done / name / "final.pt").is_file():
            fail(f"{done / name / 'final.pt'}: not there (drop takes committed phases that still hold their weights)")
        waiting = [u.name for u in plan.runs if name in u.needs and u.name not in finished]
        if waiting:
            fail(f"{name}: {', '.join(waiting)} of {a.plan} still start(s) from its weights; keep them")
    for name in dict.fromkeys(a.runs):
        size = (done / name / "final.pt").stat().st_size
        (done / name / "final.pt").unlink()
        print(f"{name}: final.pt dropped ({size / 2**20:.1f} MiB); config, log and summary stay")
    return 0


def cmd_curves(a) -> int:
    """Here: the training curves of the plan's committed phases, one panel per model, each phase
    drawn after the phase it starts from (``init``), as one PNG (docs/results.md)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from shiftpq.report import _png
    from shiftpq.sweep import load_plan
    plan, src = load_plan(a.plan), done_dir(a.plan, a.done_dir)
    logs = {r.name: [json.loads(l) for l in (src / r.name / "log.jsonl").read_text().splitlines() if l.strip()]
            for r in plan.runs if (src / r.name / "log.jsonl").is_file()}
    if not logs:
        fail(f"{src}: no finished phase of {a.plan} (field 'log.jsonl' of a run directory) to plot")
    runs = plan.by_name()
    model = {n: json.loads((src / n / "config.json").read_text())["spec"]["name"] for n in logs}

    def offset(n: str) -> int:
        i = runs[n].init
        return offset(i) + len(logs[i]) if i in logs else 0

    models = list(dict.fromkeys(model[r.name] for r in plan.runs if r.name in model))  # the plan's order
    fig, axes = plt.subplots(len(models), 1, figsize=(7, 2.8 * len(models)), squeeze=False)
    for ax, m in zip(axes[:, 0], models):
        for n in (r.name for r in plan.runs if model.get(r.name) == m):
            ax.plot([offset(n) + k + 1 for k in range(len(logs[n]))], [r["test_acc"] for r in logs[n]], lw=1, label=n)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("epoch (each phase after the one it starts from)", fontsize=8)
        ax.set_ylabel("test top-1 (%)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_png(fig))
    print(f"wrote {out}: {len(logs)} phases of {', '.join(models)}")
    return 0


def _chain(plan, name: str) -> list[str]:
    """A phase and the phases it starts from (``init``), first phase first."""
    runs = plan.by_name()
    return (_chain(plan, runs[name].init) if runs[name].init else []) + [name]


def _sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _golden(ckpt: Path) -> dict:
    """Here (the full package): export the checkpoint's tables, run the golden model on all 10,000
    test images against the fake-quant model; ``shiftpq golden --json``'s report."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        _shiftpq(["export", "--checkpoint", str(ckpt), "--out", f"{tmp}/tables"])
        return json.loads(_shiftpq(["golden", "--tables", f"{tmp}/tables", "--json", "--no-progress"]))


def _shiftpq(args: list[str]) -> str:
    """``shiftpq ARGS``'s standard output; its error line (exit 2 and the like) ends this script."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("cli", "hw", "sw", "sim"))}
    r = subprocess.run([sys.executable, "-m", "shiftpq_cli", *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
        fail(f"shiftpq {args[0]}: {last}")
    return r.stdout


def cmd_ship(a) -> int:
    """Here: a committed phase becomes models/NAME.pt (its weights; a quantized model packed) with models/NAME.json,
    its manifest: the phases it came from with every hyperparameter and seed (their config.json),
    epochs, GPU seconds of epochs, the accuracy on the GPU and, for a quantized model, of the integer
    golden model on all 10,000 test images (measured here), size and BOPs ratios, sha256."""
    import re
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", a.name):
        fail(f"--as {a.name!r}: expected a file name of letters, digits, '.', '_' or '-' (models/NAME.pt)")
    if a.checkpoint:
        return _ship_checkpoint(a)
    if not a.run:
        fail("ship: name a committed phase (RUN) or give --checkpoint")
    from shiftpq.sweep import load_plan, run_state
    plan, src = load_plan(a.plan), done_dir(a.plan, a.done_dir)
    if a.run not in plan.by_name():
        fail(f"{a.run}: not a run of {a.plan}")
    chain = _chain(plan, a.run)
    phases = []
    for n in chain:
        st = run_state(src / n)
        if st["state"] != "done":
            fail(f"{src / n}: phase {n} is {st['state']}, expected done (adopt its round first)")
        cfg = json.loads((src / n / "config.json").read_text())
        summary = json.loads((src / n / "summary.json").read_text())
        phases.append({"run": n, "args": plan.command_args(plan.by_name()[n]), "config": cfg,
                       "epochs": st["epochs"], "gpu_seconds": st["epoch_seconds"], "device": summary.get("device"),
                       "test_accuracy": summary["test_accuracy"]})
    ckpt = src / a.run / "final.pt"
    if not ckpt.is_file():
        fail(f"{ckpt}: missing (a phase's final.pt is dropped once the phases after it are done)")
    summary = json.loads((src / a.run / "summary.json").read_text())
    dest = Path(a.models) / f"{a.name}.pt"
    man = {"name": a.name, "model": summary["model"], "method": summary["method"], "file": dest.name,
           "plan": str(Path(a.plan).resolve().relative_to(ROOT)) if Path(a.plan).resolve().is_relative_to(ROOT)
           else str(a.plan),
           "phases": phases, "epochs": sum(p["epochs"] for p in phases),
           "gpu_seconds": round(sum(p["gpu_seconds"] for p in phases), 1), "gpu": a.gpu,
           "test_accuracy_gpu": summary["test_accuracy"], "quantized": summary["quantized"],
           "size_ratio": round(summary["size_ratio"], 4), "bops_ratio": round(summary["bops_ratio"], 4)}
    _write_shipped(a, ckpt, dest, man, f"{' -> '.join(chain)}; {man['gpu_seconds']:.0f} s of GPU epochs")
    return 0


def _write_shipped(a, ckpt: Path, dest: Path, man: dict, what: str) -> None:
    """The weights (a quantized model in its deployment form, ``shiftpq pack``: level indices, about a
    fifth of the float32 file), the golden model's accuracy measured on exactly that file, and the
    manifest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_pt, tmp_json = dest.with_suffix(".pt.tmp"), dest.with_suffix(".json.tmp")
    try:
        if man["quantized"]:
            _shiftpq(["pack", "--checkpoint", str(ckpt), "--out", str(tmp_pt), "--force"])
            man["storage"] = "level indices (shiftpq pack)"
            g = _golden(tmp_pt)
            man["golden"] = {k: g[k] for k in ("accuracy", "fakequant_accuracy", "agreement", "images")}
            if a.min_golden is not None and g["accuracy"] < a.min_golden:
                fail(f"{ckpt}: golden accuracy {g['accuracy']:.2f}% is below --min-golden {a.min_golden}; nothing shipped")
        else:
            shutil.copyfile(ckpt, tmp_pt)
            man["storage"] = "float32"
        man["sha256"], man["bytes"] = _sha256(tmp_pt), tmp_pt.stat().st_size
        tmp_json.write_text(json.dumps(man, indent=1, sort_keys=True) + "\n")
        os.replace(tmp_pt, dest)
        os.replace(tmp_json, dest.with_suffix(".json"))
    finally:
        for t in (tmp_pt, tmp_json):
            t.unlink(missing_ok=True)
    acc = f"golden {man['golden']['accuracy']:.2f}%" if "golden" in man else f"{man['test_accuracy_gpu']:.2f}%"
    print(f"shipped {dest} ({acc}; {what}) and {dest.with_suffix('.json')}")


def _ship_checkpoint(a) -> int:
    """A model trained before the plan existed: its manifest from the checkpoint's own record (config,
    epochs, provenance), its ratios from ``shiftpq metrics``, its GPU time as given."""
    from shiftpq.checkpoint import read_checkpoint
    ckpt = Path(a.checkpoint)
    if not ckpt.is_file():
        fail(f"--checkpoint {ckpt}: no such file")
    if a.gpu_seconds is None:
        fail("--checkpoint needs --gpu-seconds (the seconds of its training epochs, from docs/experiments.md)")
    _, meta = read_checkpoint(ckpt)
    for key in ("config", "epoch", "test_accuracy"):
        if key not in meta:
            fail(f"--checkpoint {ckpt}: field 'meta.{key}' is missing (a checkpoint written by shiftpq train)")
    m = json.loads(_shiftpq(["metrics", "--checkpoint", str(ckpt), "--json"]))
    dest = Path(a.models) / f"{a.name}.pt"
    cfg = meta["config"]
    man = {"name": a.name, "model": meta["spec"]["name"], "method": cfg["method"], "file": dest.name,
           "phases": [{"config": cfg, "epochs": meta["epoch"], "gpu_seconds": a.gpu_seconds,
                       "provenance": meta.get("provenance", ""), "test_accuracy": meta["test_accuracy"]}],
           "epochs": meta["epoch"], "gpu_seconds": a.gpu_seconds, "gpu": a.gpu,
           "test_accuracy_gpu": meta["test_accuracy"], "quantized": meta["quantized"],
           "size_ratio": round(m["ratios"]["size"], 4) if meta["quantized"] else 1.0,
           "bops_ratio": round(m["ratios"]["bops"], 4) if meta["quantized"] else 1.0}
    _write_shipped(a, ckpt, dest, man, f"{meta['epoch']} epochs, {a.gpu_seconds:.0f} s of GPU epochs")
    return 0


def _seed_runs(src: Path, runs_dir: Path) -> list[str]:
    """Copy the plan's committed finished phases into the run directories, where the sweep skips them
    and their dependants find their final.pt."""
    seeded = []
    for d in sorted(src.iterdir()) if src.is_dir() else []:
        if d.is_dir() and not (runs_dir / d.name / "summary.json").is_file():
            if (runs_dir / d.name).exists():
                shutil.rmtree(runs_dir / d.name)
            shutil.copytree(d, runs_dir / d.name)
            seeded.append(d.name)
    return seeded


def cmd_run(a) -> int:
    t0 = time.monotonic()
    data = Path(a.data)
    missing = [n for n in CIFAR10_FILES_MD5 if not (data / n).is_file()]
    if missing:
        fail(f"{data}: {missing[0]} is not staged (run `gpu_round.py stage` with each .gpu/stageK first)")
    out = Path(a.out or os.environ.get("OUT") or "build/gpu-round")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["CIFAR10_DIR"] = str(data.resolve())
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import torch
    from shiftpq.sweep import check_only, load_plan, sweep
    plan = load_plan(a.plan, a.runs_dir)
    check_only(plan, a.only)
    seeded = _seed_runs(done_dir(a.plan, a.done_dir), plan.runs_dir)
    if seeded:
        print(f"gpu_round: finished phases from {done_dir(a.plan, a.done_dir)}: {', '.join(seeded)}", flush=True)
    extra = list(a.train_arg)
    cuda = torch.cuda.is_available()
    print(f"gpu_round: torch {torch.__version__}, {torch.cuda.get_device_name() if cuda else 'no CUDA'}; "
          f"plan {a.plan}: {len(plan.runs)} runs", flush=True)
    if cuda and a.check_steps:
        chk = _guarded("compiled", out / "check.json", {"quantizer": "fused"},
                       lambda: _check_compiled(a.check_model, a.check_batch, a.check_steps, out))
        if not chk["ok"]:
            extra.append("--compiled-quantizer=ops")
    kernels = a.quant_kernels
    if kernels == "auto":
        kernels = "table"
        if cuda and a.kernel_check_steps:
            kchk = _guarded("kernels", out / "check-kernels.json", {"kernels": "inductor"},
                            lambda: _check_kernels(a.check_model, a.check_batch, a.kernel_check_steps, out))
            kernels = "inductor" if kchk["ok"] else "table"
    extra.insert(0, f"--quant-kernels={kernels}")  # a --train-arg of the same name comes later and wins
    if cuda and a.bench:
        compiled = "ops" if "--compiled-quantizer=ops" in extra else "fused"  # the one that trains, if known
        subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--device", "cuda", "--compile",
                        "--quantizer", compiled, "--kernels", "table,inductor", "--out", str(out / "bench.json")],
                       check=False)
    left = a.time_limit - (time.monotonic() - t0) - a.pack_reserve
    print(f"gpu_round: sweep for {left:.0f} s, {a.concurrent} runs at once", flush=True)
    state = sweep(plan, left, a.concurrent, extra, progress=False,
                  log=lambda s: print(f"gpu_round: {s}", flush=True), only=a.only)
    (out / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    parts = _pack(plan.runs_dir, out)
    print(f"gpu_round: wrote {out / 'state.json'} and {', '.join(p.name for p in parts)} "
          f"({sum(p.stat().st_size for p in parts) / 2**20:.1f} MiB); {time.monotonic() - t0:.0f} s in all")
    for name, r in state["runs"].items():
        acc = f"{r['test_accuracy']:.2f}%" if "test_accuracy" in r else (
            f"last {r['last_test_acc']:.2f}%" if "last_test_acc" in r else "")
        print(f"  {name:<34} {r['state']:<12} {r['epochs']:>4}/{r.get('total_epochs', '?')} epochs  {acc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: split CIFAR-10 into call-sized folders under .gpu/")
    p.add_argument("--data-dir", default=None, help="the official .bin files (default $CIFAR10_DIR)")
    p.add_argument("--dest", default=str(ROOT / ".gpu"), help="where the stageK folders go (default .gpu/)")
    p.add_argument("--call-mib", type=int, default=CALL_MIB, help="MiB one device call carries (default 64)")
    s = sub.add_parser("stage", help="there: copy a carried stageK folder's files into --data (md5 checked)")
    s.add_argument("folder")
    s.add_argument("--data", default=DEFAULT_DATA, help=f"CIFAR-10 directory there (default {DEFAULT_DATA})")
    r = sub.add_parser("run", help="there: the compiled-quantizer check, the sweep, the results into $OUT")
    r.add_argument("--plan", default=str(ROOT / "plans" / "table2.toml"))
    r.add_argument("--time-limit", type=float, default=540, help="wall seconds of the whole round (default 540)")
    r.add_argument("--concurrent", type=int, default=4, help="runs at once (default 4)")
    r.add_argument("--data", default=DEFAULT_DATA)
    r.add_argument("--runs-dir", default="runs/gpu", help="run directories (default runs/gpu)")
    r.add_argument("--out", default=None, help="results (default $OUT)")
    r.add_argument("--train-arg", action="append", default=[], metavar="ARG", help="passed to every run")
    r.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="run only these runs of the plan (repeatable): the phases sized for this stretch")
    r.add_argument("--check-steps", type=int, default=30, help="QAT steps of the compiled check (0: skip)")
    r.add_argument("--check-model", default="resnet20")
    r.add_argument("--check-batch", type=int, default=256)
    r.add_argument("--quant-kernels", choices=("auto", "table", "inductor"), default="auto",
                   help="the runs' quantizer kernels (shiftpq train --quant-kernels); auto (default): inductor "
                   "if the kernels check passes on CUDA, else table")
    r.add_argument("--kernel-check-steps", type=int, default=20, help="QAT steps of the kernels check (0: skip)")
    r.add_argument("--bench", action="store_true", help="also time FP and QAT steps (about 4 minutes)")
    r.add_argument("--done-dir", default=None, help="the plan's committed phases (default plans/done/<plan stem>)")
    r.add_argument("--pack-reserve", type=float, default=15.0, help="seconds kept for packing the results")
    d = sub.add_parser("adopt", help="here: unpack a round's runs.tar.gz; finished phases into plans/done/<plan>/")
    d.add_argument("archive", nargs="+", help="runs.tar.gz, or runs.tar.gz.1 runs.tar.gz.2 ... in order")
    d.add_argument("--plan", default=str(ROOT / "plans" / "table2.toml"))
    d.add_argument("--runs-dir", default="runs/gpu", help="where unfinished runs go (default runs/gpu)")
    d.add_argument("--done-dir", default=None, help="where finished phases go (default plans/done/<plan stem>)")
    h = sub.add_parser("ship", help="here: a committed phase -> models/NAME.pt and its manifest models/NAME.json")
    h.add_argument("run", nargs="?", help="the phase (a run of the plan, committed under plans/done/<plan>/)")
    h.add_argument("--checkpoint", default=None, metavar="CKPT",
                   help="instead of RUN: a model trained before the plan (its manifest from its own record)")
    h.add_argument("--gpu-seconds", type=float, default=None, help="with --checkpoint: seconds of its GPU epochs")
    h.add_argument("--as", dest="name", required=True, metavar="NAME", help="models/NAME.pt, e.g. resnet20-ppq")
    h.add_argument("--plan", default=str(ROOT / "plans" / "table2.toml"))
    h.add_argument("--done-dir", default=None, help="the plan's committed phases (default plans/done/<plan stem>)")
    h.add_argument("--models", default=str(ROOT / "models"), help="where it goes (default models/)")
    h.add_argument("--gpu", default="NVIDIA H200", help="the GPU the phases ran on (for the manifest)")
    h.add_argument("--min-golden", type=float, default=None, metavar="PERCENT",
                   help="ship only if the golden accuracy is at least PERCENT (e.g. the shipped model's)")
    x = sub.add_parser("drop", help="here: delete committed phases' weights that no phase and no result needs")
    x.add_argument("runs", nargs="+", metavar="RUN", help="committed phases of the plan")
    x.add_argument("--plan", default=str(ROOT / "plans" / "table2.toml"))
    x.add_argument("--done-dir", default=None, help="the plan's committed phases (default plans/done/<plan stem>)")
    c = sub.add_parser("curves", help="here: a PNG of the committed phases' training curves")
    c.add_argument("--plan", default=str(ROOT / "plans" / "table2.toml"))
    c.add_argument("--done-dir", default=None, help="the plan's committed phases (default plans/done/<plan stem>)")
    c.add_argument("--out", default=str(ROOT / "docs" / "results-curves.png"))
    a = ap.parse_args(argv)
    try:
        return {"prepare": cmd_prepare, "stage": cmd_stage, "run": cmd_run, "adopt": cmd_adopt,
                "ship": cmd_ship, "drop": cmd_drop, "curves": cmd_curves}[a.cmd](a)
    except Exception as e:  # ShiftPQError and friends: one line, exit 2
        from shiftpq.errors import ShiftPQError
        if isinstance(e, (ShiftPQError, ValueError)):
            fail(str(e))
        raise


if __name__ == "__main__":
    sys.exit(main())
