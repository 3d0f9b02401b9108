import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shiftpq(*args, env_extra=None):
    import os
    env = {**os.environ, "PYTHONPATH": str(ROOT / "sw"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "shiftpq", *args], capture_output=True, text=True, env=env)


def test_help_lists_commands():
    r = shiftpq("--help")
    assert r.returncode == 0
    for c in ("train", "metrics", "export", "golden", "data"):
        assert c in r.stdout
    for c in ("train", "export", "golden"):
        h = shiftpq(c, "--help")
        assert h.returncode == 0 and "usage: shiftpq " + c in h.stdout


def test_metrics_fp32_resnet20_json():
    r = shiftpq("metrics", "--model", "resnet20", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["fp32"]["params"] == 268_336 and m["total"]["macs"] == 40_551_040
    assert len(m["layers"]) == 20


def test_metrics_table():
    r = shiftpq("metrics", "--model", "resnet56")
    assert r.returncode == 0 and "FP32 reference" in r.stdout and "layer3.8.conv2" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--model", "resnet99", "--method", "ppq"], "invalid choice: 'resnet99'"),
    (["--model", "resnet20", "--method", "ppq", "--rate", "1.0"], "pruning rate must be in [0, 1)"),
    (["--model", "resnet20", "--method", "ppq", "--rate", "-0.1"], "pruning rate must be in [0, 1)"),
    (["--model", "resnet20", "--method", "ppq", "--wbits", "7"], "invalid choice: 7"),
    (["--model", "resnet20", "--method", "ppq", "--abits", "6"], "invalid choice: 6"),
    (["--model", "resnet20", "--method", "ppq", "--layer-bits", "layer1.0.conv1=6"], "unsupported weight bit-width 6"),
    (["--model", "resnet20", "--method", "ppq", "--layer-rate", "nope=0.2"], "unknown layers"),
    (["--model", "resnet20", "--method", "ppq", "--set", "epochs=abc"], "recipe field 'epochs' needs a int"),
    (["--model", "resnet20", "--method", "zip"], "invalid choice: 'zip'"),
])
def test_bad_train_input_exits_2(tmp_path, cifar_dir, args, needle):
    r = shiftpq("train", *args, "--out", str(tmp_path / "o"), "--data-dir", cifar_dir)
    assert r.returncode == 2
    assert needle in r.stderr
    assert not (tmp_path / "o").exists()


def test_missing_data_dir_exits_2(tmp_path):
    r = shiftpq("train", "--model", "resnet20", "--method", "fp", "--out", str(tmp_path / "o"),
                "--data-dir", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "nowhere" in r.stderr
    r = shiftpq("train", "--model", "resnet20", "--method", "fp", "--out", str(tmp_path / "o"),
                env_extra={"CIFAR10_DIR": ""})
    assert r.returncode == 2 and "CIFAR10_DIR" in r.stderr


def test_metrics_of_bad_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    r = shiftpq("metrics", "--checkpoint", str(bad))
    assert r.returncode == 2 and str(bad) in r.stderr
