import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shiftpq(*args, env_extra=None):
    import os
    path = os.pathsep.join(str(ROOT / p) for p in ("sw", "hw", "sim", "cli"))
    env = {**os.environ, "PYTHONPATH": path, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "shiftpq_cli", *args], capture_output=True, text=True, env=env)


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


def test_commands_return_typed_results_that_one_function_prints(capsys):
    """From Python a command returns its result and prints nothing; ``show`` prints what ``main`` does."""
    from shiftpq_cli import run, show
    from shiftpq_cli.software import Metrics
    r = run(["metrics", "--model", "resnet20"])
    assert isinstance(r, Metrics) and r.metrics["total"]["macs"] == 40_551_040 and r.code == 0
    assert capsys.readouterr() == ("", "")
    assert show(r, as_json=True) == 0
    assert json.loads(capsys.readouterr().out) == r.metrics


def test_a_failed_check_is_exit_1_with_its_reason_on_stderr(capsys):
    from shiftpq_cli import show
    from shiftpq_cli.hardware import Synthesized
    from shiftpq_cli.software import GoldenRun
    golden = {"model": "tiny", "images": 100, "accuracy": 50.0, "golden_seconds": 1.0, "fakequant_accuracy": 51.0,
              "agreement": 98.0, "accuracy_difference": -1.0}
    assert show(GoldenRun(golden, min_agreement=98.0)) == 0 and capsys.readouterr().err == ""
    assert show(GoldenRun(golden, min_agreement=99.0)) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["golden model (tiny): 50.00% on 100 test images (1.0 s)",
                                "fake-quant model: 51.00%; top-1 agreement 98.00%, accuracy difference -1.00 points"]
    assert err == "shiftpq golden: FAILED: top-1 agreement 98.00% on 100 images is below --min-agreement 99%\n"
    r = Synthesized({"model": "tiny", "device": "ice40-up5k", "fits": False, "reason": "5,400 LUTs of 5,280"}, "s.json")
    assert show(r) == 1
    assert capsys.readouterr() == ("", "tiny does not fit ice40-up5k: 5,400 LUTs of 5,280 (report: s.json)\n")


def test_synth_with_several_seeds_prints_the_worst_and_the_spread(capsys):
    from shiftpq_cli import show
    from shiftpq_cli.hardware import Synthesized
    seeds = [{"seed": 1, "fits": True, "fmax_mhz": 93.0}, {"seed": 2, "fits": True, "fmax_mhz": 91.0},
             {"seed": 3, "fits": False, "fmax_mhz": None}]
    worst = {"model": "resnet20", "device": "ecp5-85k", "seed": 3, "fits": False, "reason": "over capacity: X 2/1",
             "seeds": seeds}
    assert show(Synthesized(worst, "r.json")) == 1
    assert capsys.readouterr().err == "resnet20 does not fit ecp5-85k (seed 3): over capacity: X 2/1 (report: r.json)\n"
    ok = {**worst, "seed": 2, "fits": True, "reason": None, "luts": 5, "ffs": 6, "brams": 1, "dsps": 0, "fmax_mhz": 91.0,
          "freq_target_mhz": 100.0, "inferences_per_s": 1645.7, "latency_us": None, "seeds": seeds[:2],
          "over_seeds": {"fmax_mhz": {"min": 91.0, "median": 92.0, "max": 93.0},
                         "inferences_per_s": {"min": 1645.7, "median": 1663.8, "max": 1681.9}}}
    assert show(Synthesized(ok, "r.json")) == 0
    assert capsys.readouterr().out.splitlines() == [
        "resnet20 on ecp5-85k, seed 2: 5 LUTs, 6 FFs, 1 BRAMs, 0 DSPs; Fmax 91.0 MHz (target 100); 1646 inferences/s "
        "(latency: run make sim first)",
        "over seeds 1, 2: Fmax min / median / max 91.0 / 92.0 / 93.0 MHz, 1646 / 1664 / 1682 inferences/s "
        "(the worst seed above)",
        "wrote r.json"]
