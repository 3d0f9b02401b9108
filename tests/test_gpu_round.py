"""scripts/gpu_round.py end to end on the CPU with tiny settings: the same script a GPU stretch runs
(prepare -> stage -> run -> adopt -> the next stretch skips the adopted phases)."""
import hashlib
import importlib.util
import json
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gr():
    spec = importlib.util.spec_from_file_location("gpu_round", ROOT / "scripts" / "gpu_round.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_shipped_plan_is_valid():
    from shiftpq.sweep import load_plan
    plan = load_plan(ROOT / "plans" / "table2.toml")
    names = [r.name for r in plan.runs]
    assert names[0].startswith("r20-") and any(n.startswith("r56-ppq-qat") for n in names)
    for r in plan.runs:  # shipped inits exist; run inits precede their dependants
        for a, b in zip(r.args, r.args[1:]):
            if a == "--init":
                assert (ROOT / b).is_file(), b
        assert all(names.index(d) < names.index(r.name) for d in r.needs)


def test_prepare_and_stage(gr, tmp_path, capsys, monkeypatch):
    """prepare fills each call with what the tree leaves of it, cutting files into byte ranges where
    one does not fit whole; stage joins a file's pieces once all are there and checks its md5, and
    names the file that is wrong."""
    import random
    src = tmp_path / "src"
    src.mkdir()
    md5, blobs = {}, {}
    for i, name in enumerate(gr.CIFAR10_FILES_MD5):
        blobs[name] = data = random.Random(i).randbytes(1 << 20)
        (src / name).write_bytes(data)
        md5[name] = hashlib.md5(data).hexdigest()
    budget = int(gr.tree_bytes(ROOT) / 2**20) + 4  # 2-3 MiB of data a call after the tree and a spare MiB
    room = (budget << 20) - gr.tree_bytes(ROOT) - (1 << 20)
    calls = -(-(6 << 20) // room)
    assert gr.main(["prepare", "--data-dir", str(src), "--dest", str(tmp_path / "g"), "--call-mib", str(budget)]) == 0
    out = capsys.readouterr().out
    stages = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert stages == [f"stage{k}" for k in range(1, calls + 1)] and f"{calls} staging calls" in out
    assert out.count("run(carry=") == calls and "gpu_round.py run" in out.splitlines()[-1]
    sizes = [sum(p.stat().st_size for p in (tmp_path / "g" / st).iterdir()) for st in stages]
    assert all(n == room for n in sizes[:-1]) and sum(sizes) == 6 << 20  # every call but the last full
    parts = sorted(p.name for p in (tmp_path / "g").rglob("*.part"))
    assert parts and all(p.split(".bin.")[0] + ".bin" in md5 for p in parts)
    with pytest.raises(SystemExit) as e:  # the real md5s: our fake files are refused
        for k in range(1, calls + 1):
            gr.main(["stage", str(tmp_path / "g" / f"stage{k}"), "--data", str(tmp_path / "x")])
    assert e.value.code == 2 and "md5" in capsys.readouterr().err
    monkeypatch.setattr(gr, "CIFAR10_FILES_MD5", md5)
    for k in reversed(range(1, calls + 1)):  # any order: a file is joined when its last piece arrives
        assert gr.main(["stage", str(tmp_path / "g" / f"stage{k}"), "--data", str(tmp_path / "d")]) == 0
    assert "6 of 6 files there" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "d").iterdir() if p.is_file()) == sorted(md5)
    assert all((tmp_path / "d" / n).read_bytes() == blobs[n] for n in md5)
    assert not any((tmp_path / "d" / ".parts").iterdir())  # the pieces are gone once joined
    # a piece whose bytes are not what its name says is refused, naming it
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "test_batch.bin.0-100-1048576.part").write_bytes(b"x" * 99)
    with pytest.raises(SystemExit) as e:
        gr.main(["stage", str(bad), "--data", str(tmp_path / "d2")])
    assert e.value.code == 2 and "99 bytes, expected bytes 0-100 of a 1048576-byte file" in capsys.readouterr().err


def test_round_on_the_cpu_then_adopt_then_the_next_round_skips(gr, tmp_path, cifar_dir, capsys, monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", cifar_dir)
    monkeypatch.chdir(tmp_path)
    plan = tmp_path / "tiny.toml"
    tiny = ["--model", "tiny", "--recipe", "paper", "--device", "cpu", "--train-limit", "64", "--test-limit", "32",
            "--set", "batch_size=32"]
    plan.write_text(f"args = {json.dumps(tiny)}\n" + '''
[[run]]
name = "fp"
args = ["--method", "fp", "--set", "epochs=1"]
[[run]]
name = "qat"
init = "fp"
args = ["--method", "ppq", "--set", "epochs=1", "--set", "prune_stages=1", "--set", "qat_epochs=1"]
''')
    common = ["--plan", str(plan), "--data", cifar_dir, "--done-dir", str(tmp_path / "done"), "--concurrent", "2",
              "--time-limit", "400"]
    assert gr.main(["run", *common, "--runs-dir", "runs/a", "--out", str(tmp_path / "out")]) == 0
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    assert state["counts"] == {"done": 2, "failed": 0, "not started": 0, "partial": 0}
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as tar:
        names = tar.getnames()
        assert {"a/fp/final.pt", "a/qat/final.pt", "a/qat/log.jsonl", "a/sweep-state.json"} <= set(names)
        assert all(m.mtime == 0 for m in tar.getmembers())
    assert gr.main(["adopt", str(tmp_path / "out" / "runs.tar.gz"), "--plan", str(plan),
                    "--done-dir", str(tmp_path / "done"), "--runs-dir", str(tmp_path / "partial")]) == 0
    blob = torch.load(tmp_path / "done" / "qat" / "final.pt", weights_only=True)
    assert "optimizer" not in blob and "model" in blob
    # fp's weights were only the start of qat, which is committed: dropped; its log and summary stay
    assert not (tmp_path / "done" / "fp" / "final.pt").exists() and (tmp_path / "done" / "fp" / "summary.json").is_file()
    assert "fp: final.pt dropped" in capsys.readouterr().out
    # ship: the committed QAT phase -> models/NAME.pt + manifest (golden accuracy measured here)
    models = tmp_path / "models"
    ship = ["ship", "qat", "--plan", str(plan), "--done-dir", str(tmp_path / "done"), "--models", str(models)]
    assert gr.main([*ship, "--as", "tiny-ppq"]) == 0
    man = json.loads((models / "tiny-ppq.json").read_text())
    assert [p["run"] for p in man["phases"]] == ["fp", "qat"] and man["method"] == "ppq"
    assert man["golden"]["images"] == 10000 and 0 < man["golden"]["accuracy"] < 100
    assert man["sha256"] == hashlib.sha256((models / "tiny-ppq.pt").read_bytes()).hexdigest()
    # shipped packed (level indices): the same weight codes as the committed float weights, a smaller file
    from shiftpq.checkpoint import load_model
    shipped, committed = load_model(models / "tiny-ppq.pt")[0], load_model(tmp_path / "done" / "qat" / "final.pt")[0]
    assert shipped.frozen and man["storage"].startswith("level indices") and man["bytes"] == (models / "tiny-ppq.pt").stat().st_size
    for (n, a), (_, b) in zip(shipped.weight_layers().items(), committed.weight_layers().items()):
        assert all(torch.equal(x, y) for x, y in zip(a.weight_codes(), b.weight_codes())), n
    assert not list(models.glob("*.tmp"))
    # drop: the shipped result's committed copy goes; a name not in the plan, or weights gone, are refused
    drop = ["--plan", str(plan), "--done-dir", str(tmp_path / "done")]
    for bad, why in ((["nope"], "no run named"), (["fp"], "not there")):
        with pytest.raises(SystemExit) as e:
            gr.main(["drop", *bad, *drop])
        assert e.value.code == 2 and why in capsys.readouterr().err
    plan2 = tmp_path / "tiny2.toml"  # the same plan and one more phase that starts from qat
    plan2.write_text(plan.read_text() + '[[run]]\nname = "more"\ninit = "qat"\nargs = ["--method", "ppq"]\n')
    with pytest.raises(SystemExit) as e:
        gr.main(["drop", "qat", "--plan", str(plan2), "--done-dir", str(tmp_path / "done")])
    assert e.value.code == 2 and "more of" in capsys.readouterr().err
    assert (tmp_path / "done" / "qat" / "final.pt").is_file()
    assert gr.main(["drop", "qat", *drop]) == 0
    assert not (tmp_path / "done" / "qat" / "final.pt").exists() and (tmp_path / "done" / "qat" / "summary.json").is_file()
    curves = [tmp_path / f"c{k}.png" for k in (1, 2)]
    for c in curves:
        assert gr.main(["curves", "--plan", str(plan), "--done-dir", str(tmp_path / "done"), "--out", str(c)]) == 0
    assert curves[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curves[0].read_bytes() == curves[1].read_bytes()
    # the next stretch, on a fresh machine: the adopted phases are copied in and skipped
    capsys.readouterr()
    assert gr.main(["run", *common, "--runs-dir", "runs/b", "--out", str(tmp_path / "out2")]) == 0
    out = capsys.readouterr().out
    assert "finished phases from" in out and "2 of 2 runs already done" in out
    again = json.loads((tmp_path / "out2" / "state.json").read_text())
    assert again["counts"]["done"] == 2
    assert again["runs"]["qat"]["test_accuracy"] == state["runs"]["qat"]["test_accuracy"]
