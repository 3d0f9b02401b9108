"""The training queue (shiftpq sweep): plan checks, scheduling, resuming, the time limit, Ray."""
import json
from pathlib import Path

import pytest

from shiftpq import sweep as sw
from shiftpq.errors import ShiftPQError



def _plan(tmp_path, text: str, name: str = "plan.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = '''
args = ["--model", "tiny", "--recipe", "paper"]
[[run]]
name = "fp"
args = ["--method", "fp", "--set", "epochs=1"]
[[run]]
name = "ppq"
init = "fp"
args = ["--method", "ppq", "--set", "epochs=1", "--set", "qat_epochs=1"]
'''


@pytest.mark.parametrize("text,msg", [
    ("[[run]]\nname = 'a'\n", "run 'a': field 'args' is missing"),
    ("[[run]]\nname = 'a b'\nargs = []\n", "run[0]: field 'name'"),
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp', '--out', 'x']\n", "--out is set by the sweep"),
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp', '--epochz', '3']\n",
     "run 'a': field 'args': unrecognized arguments: --epochz 3"),
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp']\ninit = 'b'\n", "field 'init': no run named 'b'"),
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp']\ndepends_on = ['b']\n"
     "[[run]]\nname = 'b'\nargs = ['--model', 'tiny', '--method', 'fp']\ndepends_on = ['a']\n", "a cycle a -> b -> a"),
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp']\n[[run]]\nname = 'a'\nargs = []\n",
     "used by an earlier run"),
    ("[[run]]\nname = 'a'\nargs = 'x'\n", "field 'args': expected a list of strings"),
    # argparse takes unique prefixes: an abbreviated reserved option is the sweep's too
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp', '--resu']\n",
     "--resume (or an abbreviation of it) is set by the sweep"),
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp', '--stop', '1']\n",
     "--stop-after (or an abbreviation of it) is set by the sweep"),
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp', '--time', '9']\n",
     "--time-limit (or an abbreviation of it) is set by the sweep"),
    ("[[run]]\nname = 'b'\nargs = ['--model', 'tiny', '--method', 'fp']\n[[run]]\nname = 'a'\ninit = 'b'\n"
     "args = ['--model', 'tiny', '--method', 'fp', '--ini', 'c.pt']\n", "--init (or an abbreviation of it)"),
    # the recipe overrides are checked before anything starts, not in a child on the GPU
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp', '--set', 'epochz=3']\n",
     "field 'args': --set: unknown recipe field 'epochz'"),
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp', '--set', 'epochs=x']\n",
     "field 'args': --set: recipe field 'epochs' needs a int, got 'x'"),
    ("[[run]]\nname = 'a'\nargs = ['--model', 'tiny', '--method', 'fp']\nteacher = 'b'\n", "field 'teacher': no run named 'b'"),
    ("[[run]]\nname = 'b'\nargs = ['--model', 'tiny', '--method', 'fp']\n[[run]]\nname = 'a'\nteacher = 'b'\n"
     "args = ['--model', 'tiny', '--method', 'fp', '--teacher', 'c.pt']\n", "--teacher is set by the sweep"),
    ("runz = 1\n", "unknown top-level field 'runz'"),
    ("[[run\n", "not valid TOML"),
])
def test_bad_plans_are_refused_with_one_line(tmp_path, capsys, text, msg):
    from shiftpq_cli import main
    p = _plan(tmp_path, text)
    with pytest.raises(ShiftPQError, match="plan.toml"):
        sw.load_plan(p)
    assert main(["sweep", str(p), "--time-limit", "10", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # nothing half-written


class FakeBackend:
    """Plays the children: writes what a finished (or time-limited, or failed) run leaves behind."""

    def __init__(self, outcome: dict[str, str]):
        self.outcome, self.started, self.pending, self.max_running = outcome, [], {}, 0

    def start(self, name, cmd, log_path):
        out = Path(cmd[cmd.index("--out") + 1])
        self.started.append((name, cmd))
        kind = self.outcome.get(name, "done")
        if kind not in ("hang", "fail"):
            (out / "config.json").write_text(json.dumps({"method": "fp", "recipe": {"epochs": 2, "qat_epochs": 0}}))
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps({"test_acc": 50.0, "seconds": 1.0}) + "\n")
            if kind == "done":
                (out / "summary.json").write_text(json.dumps({"finished": True, "test_accuracy": 55.0,
                                                              "size_ratio": 1.0, "bops_ratio": 1.0}))
        self.pending[name] = {"done": 0, "partial": 0, "fail": 3}.get(kind)
        self.max_running = max(self.max_running, len(self.pending))

    def poll(self, name):
        rc = self.pending[name]
        if rc is not None:
            del self.pending[name]
        return rc

    def stop_all(self, grace=10.0):
        self.stopped = sorted(self.pending)
        self.pending.clear()

    def close(self):
        pass


def test_scheduler_order_limits_failures_and_resume(tmp_path):
    """Dependencies first, at most N at once, a failed run blocks what needs it, a time-limited run
    is resumable, --init points at the dependency's final.pt, every child's limit ends before ours."""
    text = "".join(f'[[run]]\nname = "{n}"\nargs = ["--model", "tiny", "--method", "fp"]\n{extra}\n'
                   for n, extra in (("a", ""), ("b", 'init = "a"'), ("c", ""), ("bad", ""), ("after-bad", 'depends_on = ["bad"]'),
                                    ("slow", ""), ("after-slow", 'init = "slow"')))
    plan = sw.load_plan(_plan(tmp_path, text), str(tmp_path / "runs"))
    fake = FakeBackend({"bad": "fail", "slow": "partial"})
    state = sw.sweep(plan, 600, concurrent=2, extra_args=["--compile"], backend=fake, progress=False, log=lambda s: None)
    names = [n for n, _ in fake.started]
    assert names == ["a", "c", "b", "bad", "slow"] and fake.max_running <= 2
    cmd = dict(fake.started)["b"]
    assert cmd[cmd.index("--init") + 1] == str(tmp_path / "runs" / "a" / "final.pt") and "--compile" in cmd
    assert all(float(c[c.index("--time-limit") + 1]) <= 600 - sw.CHILD_MARGIN_S for _, c in fake.started)
    st = {n: r["state"] for n, r in state["runs"].items()}
    assert st == {"a": "done", "b": "done", "c": "done", "bad": "failed", "after-bad": "not started",
                  "slow": "partial", "after-slow": "not started"}
    assert state["runs"]["bad"]["exit_code"] == 3 and state["runs"]["a"]["test_accuracy"] == 55.0
    first = (tmp_path / "runs" / sw.STATE_FILE).read_bytes()
    # a second call: finished runs are skipped, the partial one resumes, the failed one is retried
    fake2 = FakeBackend({"bad": "fail"})
    sw.sweep(plan, 600, concurrent=2, backend=fake2, progress=False, log=lambda s: None)
    assert [n for n, _ in fake2.started] == ["bad", "slow", "after-slow"]
    assert "--resume" in dict(fake2.started)["slow"] and "--resume" not in dict(fake2.started)["bad"]
    # a third: nothing left but the failing run; the state file is a function of the run directories
    sw.sweep(plan, 600, concurrent=2, backend=FakeBackend({"bad": "fail"}), progress=False, log=lambda s: None)
    third = (tmp_path / "runs" / sw.STATE_FILE).read_bytes()
    sw.sweep(plan, 600, concurrent=2, backend=FakeBackend({"bad": "fail"}), progress=False, log=lambda s: None)
    assert (tmp_path / "runs" / sw.STATE_FILE).read_bytes() == third != first


def test_teacher_is_a_dependency_and_its_final_pt(tmp_path):
    """teacher = "run": --teacher RUNS_DIR/run/final.pt, started only after that run is done."""
    text = ('[[run]]\nname = "big"\nargs = ["--model", "tiny", "--method", "fp"]\n'
            '[[run]]\nname = "small"\nteacher = "big"\nargs = ["--model", "tiny", "--method", "fp"]\n')
    plan = sw.load_plan(_plan(tmp_path, text), str(tmp_path / "runs"))
    assert plan.by_name()["small"].needs == ["big"]
    fake = FakeBackend({})
    sw.sweep(plan, 600, concurrent=2, backend=fake, progress=False, log=lambda s: None)
    assert [n for n, _ in fake.started] == ["big", "small"]
    cmd = dict(fake.started)["small"]
    assert cmd[cmd.index("--teacher") + 1] == str(tmp_path / "runs" / "big" / "final.pt")


def test_only_runs_the_named_runs(tmp_path):
    """--only: the named runs and nothing else, even when a slot is free; a named run whose
    dependency is neither done nor named is reported and not started."""
    text = "".join(f'[[run]]\nname = "{n}"\nargs = ["--model", "tiny", "--method", "fp"]\n{extra}\n'
                   for n, extra in (("a", ""), ("b", 'init = "a"'), ("c", ""), ("d", 'init = "c"'), ("e", "")))
    plan = sw.load_plan(_plan(tmp_path, text), str(tmp_path / "runs"))
    logs = []
    fake = FakeBackend({})
    state = sw.sweep(plan, 600, concurrent=4, backend=fake, progress=False, log=logs.append, only=["a", "b", "d"])
    assert [n for n, _ in fake.started] == ["a", "b"]
    assert {n: r["state"] for n, r in state["runs"].items()} == {
        "a": "done", "b": "done", "c": "not started", "d": "not started", "e": "not started"}
    assert "d: not started, it needs c" in logs


def test_sweep_ends_runs_at_its_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "CHILD_MARGIN_S", 1.0)
    monkeypatch.setattr(sw, "MIN_CHILD_S", 1.0)
    plan = sw.load_plan(_plan(tmp_path, GOOD), str(tmp_path / "runs"))
    fake = FakeBackend({"fp": "hang"})
    state = sw.sweep(plan, sw.CHILD_MARGIN_S + sw.MIN_CHILD_S + 0.5, backend=fake, progress=False, log=lambda s: None)
    assert fake.stopped == ["fp"] and state["counts"] == {"done": 0, "partial": 0, "failed": 0, "not started": 2}
    # too little time to start anything: nothing starts
    fake = FakeBackend({})
    sw.sweep(plan, sw.CHILD_MARGIN_S + sw.MIN_CHILD_S - 1, backend=fake, progress=False, log=lambda s: None)
    assert fake.started == []


def test_train_time_limit_stops_before_an_epoch_that_would_overrun(tmp_path, cifar_dir, monkeypatch):
    """--time-limit judges the next epoch by the longest so far (here each epoch takes 10 s of a
    fake clock): with 25 s it stops after 2 epochs (20 + 10 > 25), resumably."""
    from shiftpq import train as tr
    from shiftpq.models import ModelSpec
    clock = {"t": 0.0}
    real_epoch = tr.Trainer.train_epoch

    def epoch(self):
        clock["t"] += 10.0
        return real_epoch(self)

    monkeypatch.setattr(tr.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(tr.Trainer, "train_epoch", epoch)
    cfg = tr.TrainConfig("fp", ModelSpec("tiny"), tr.recipe_with("paper", {"epochs": "4", "batch_size": "32"}),
                         "paper", train_limit=32, test_limit=16)
    s = tr.train(cfg, tmp_path / "r", "cpu", cifar_dir, time_limit=25, progress=False, log=lambda s: None)
    assert s == {"finished": False, "epoch": 2}
    s = tr.train(cfg, tmp_path / "r", "cpu", cifar_dir, resume=True, time_limit=100, progress=False, log=lambda s: None)
    assert s["finished"] and s["epoch"] == 4


def test_sweep_on_a_local_ray_instance(tmp_path, cifar_dir):
    """--ray: each run is a Ray task running the same command; two tiny CPU runs at once."""
    pytest.importorskip("ray", reason="the test extra installs ray (pip install -e '.[test]')")
    tiny = ["--model", "tiny", "--recipe", "paper", "--device", "cpu", "--train-limit", "32", "--test-limit", "16",
            "--set", "batch_size=32", "--set", "epochs=1", "--data-dir", cifar_dir]
    plan = sw.load_plan(_plan(tmp_path, f"args = {json.dumps(tiny)}\n" + "".join(
        f'[[run]]\nname = "{m}"\nargs = ["--method", "{m}"]\n' for m in ("fp", "spq"))), str(tmp_path / "runs"))
    state = sw.sweep(plan, 300, concurrent=2, backend=sw.RayBackend("local", 0.0, 1.0), progress=False,
                     log=lambda s: None)
    assert state["counts"]["done"] == 2, [(tmp_path / "runs" / n / "train.log").read_text() for n in ("fp", "spq")]
    assert state["runs"]["spq"]["size_ratio"] > 1


def _exit_code(main, argv) -> int:
    """shiftpq_cli.main's return value, or the code of the SystemExit an argparse error raises."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv,msg", [
    (["--time-limit", "nan"], "argument --time-limit: expected a number of seconds > 0, got 'nan'"),
    (["--time-limit", "-1"], "argument --time-limit: expected a number of seconds > 0, got '-1'"),
    (["--time-limit", "inf"], "argument --time-limit: expected a number of seconds > 0, got 'inf'"),
    (["--time-limit", "10", "--train-arg=--resu"], "--train-arg: --resume (or an abbreviation of it) is set"),
    # a --train-arg comes after the sweep's --out in the child's command: it would move the run directory
    (["--time-limit", "10", "--train-arg=--ou=elsewhere"], "--train-arg: --out (or an abbreviation of it) is set"),
    (["--time-limit", "10", "--train-arg=--set", "--train-arg=lr=x"], "--train-arg: --set: recipe field 'lr'"),
    (["--time-limit", "10", "--only", "fp", "--only", "qat"], "--only qat: not a run of"),
])
def test_bad_sweep_arguments_are_one_line(tmp_path, capsys, argv, msg):
    from shiftpq_cli import main
    p = _plan(tmp_path, GOOD)
    assert _exit_code(main, ["sweep", str(p), "--runs-dir", str(tmp_path / "runs"), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["nan", "0", "-5", "inf"])
def test_train_time_limit_must_be_finite_and_positive(tmp_path, capsys, value):
    from shiftpq_cli import main
    out = tmp_path / "run"
    assert _exit_code(main, ["train", "--model", "tiny", "--method", "fp", "--out", str(out), "--time-limit", value]) == 2
    err = capsys.readouterr().err
    assert "argument --time-limit: expected a number of seconds > 0" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
