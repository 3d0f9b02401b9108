import json
from pathlib import Path

import pytest
import torch

from shiftpq.checkpoint import load_model, read_checkpoint
from shiftpq.errors import ShiftPQError
from shiftpq.models import ModelSpec
from shiftpq.train import TrainConfig, recipe_with, train

TINY = {"epochs": "3", "qat_epochs": "2", "batch_size": "64", "prune_stages": "2"}


def _cfg(method, **kw):
    return TrainConfig(method=method, spec=ModelSpec("resnet20"), recipe=recipe_with("paper", {**TINY, **kw}),
                       recipe_name="paper", train_limit=256, test_limit=128, seed=1)


def _run(cfg, out, cifar_dir, **kw):
    return train(cfg, out, device="cpu", data_dir=cifar_dir, progress=False, log=lambda s: None, **kw)


def test_ppq_end_to_end(tmp_path, cifar_dir):
    s = _run(_cfg("ppq"), tmp_path / "ppq", cifar_dir)
    assert s["finished"] and s["quantized"] and s["epoch"] == 5
    log = [json.loads(l) for l in (tmp_path / "ppq" / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["prune"] * 3 + ["qat"] * 2
    # pruning stages at the start of epochs 1 and 2 (3 epochs, 2 stages): 15% then 30%
    assert log[0]["kept"]["layer3.0.conv1"] == 64
    assert log[1]["kept"]["layer3.0.conv1"] == 64 - int(64 * 0.15)
    assert log[2]["kept"]["layer3.0.conv1"] == 64 - int(64 * 0.3)
    assert log[4]["alphas"] and "lr" in log[4]
    model, meta = load_model(tmp_path / "ppq" / "final.pt")
    assert model.quantized and meta["finished"]
    for cb in model.prunable().values():
        dead = cb.conv.mask == 0
        assert int(dead.sum()) == int(len(dead) * 0.3)
        assert (cb.conv.weight[dead] == 0).all() and (cb.bn.weight[dead] == 0).all()
    assert s["size_ratio"] > 15 and s["bops_ratio"] > 110


def test_spq_end_to_end(tmp_path, cifar_dir):
    s = _run(_cfg("spq"), tmp_path / "spq", cifar_dir)
    assert s["finished"] and s["quantized"] and s["epoch"] == 3
    log = [json.loads(l) for l in (tmp_path / "spq" / "log.jsonl").read_text().splitlines()]
    assert all(r["phase"] == "spq" and r["kept"]["stem"] == 12 and r["returned_filters"] >= 0 for r in log)
    model, _ = load_model(tmp_path / "spq" / "final.pt")
    for cb in model.prunable().values():  # hard-pruned at the end
        dead = cb.conv.mask == 0
        assert (cb.conv.weight[dead] == 0).all() and (cb.bn.bias[dead] == 0).all()


@pytest.mark.parametrize("method,split", [("ppq", 2), ("ppq", 3), ("spq", 1)])
def test_resume_equals_uninterrupted(tmp_path, cifar_dir, method, split):
    """Split inside the pruning phase, at the phase boundary, and inside SPQ."""
    cfg = _cfg(method, epochs="2", qat_epochs="2", prune_stages="1")
    cfg.spec = ModelSpec("tiny")
    _run(cfg, tmp_path / "a", cifar_dir)
    part = _run(cfg, tmp_path / "b", cifar_dir, stop_after=split)
    assert not part["finished"]
    _run(cfg, tmp_path / "b", cifar_dir, resume=True)
    a, _ = read_checkpoint(tmp_path / "a" / "final.pt")
    b, _ = read_checkpoint(tmp_path / "b" / "final.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resume_with_other_settings_is_refused(tmp_path, cifar_dir):
    _run(_cfg("fp", epochs="2"), tmp_path / "r", cifar_dir, stop_after=1)
    with pytest.raises(ShiftPQError, match="different settings"):
        _run(_cfg("fp", epochs="3"), tmp_path / "r", cifar_dir, resume=True)
    with pytest.raises(ShiftPQError, match="already holds a run"):
        _run(_cfg("fp", epochs="2"), tmp_path / "r", cifar_dir)


def test_recipe_overrides_are_typed():
    r = recipe_with("fast", {"lr": "0.05", "nesterov": "false", "epochs": "7"})
    assert (r.lr, r.nesterov, r.epochs) == (0.05, False, 7)
    with pytest.raises(ShiftPQError, match="unknown recipe field"):
        recipe_with("fast", {"lrr": "1"})
    with pytest.raises(ShiftPQError, match="needs a int"):
        recipe_with("fast", {"epochs": "x"})
    for bad in ("nan", "inf", "-inf"):  # a NaN learning rate trained on silently
        with pytest.raises(ShiftPQError, match=f"recipe field 'lr' needs a finite float, got '{bad}'"):
            recipe_with("fast", {"lr": bad})


def test_shipped_fp32_resnet20_classifies_and_checkpoints_are_readable(tmp_path, cifar_dir):
    """models/resnet20-fp.pt (the FP32 baseline, 92.9 % on the whole test set) scores on the first
    1,000 test images, and a checkpoint we write is readable by others (not mkstemp's 0600)."""
    import os
    import stat
    from pathlib import Path

    from shiftpq.checkpoint import save_checkpoint
    from shiftpq.data import load_split
    from shiftpq.train import evaluate
    model, meta = load_model(Path(__file__).resolve().parents[1] / "models" / "resnet20-fp.pt")
    assert not model.quantized and meta["config"]["method"] == "fp"
    x, y = load_split(cifar_dir, "test", 1000)
    assert evaluate(model, x[:1000], y[:1000]) >= 90.0
    save_checkpoint(tmp_path / "c.pt", model, {"epoch": 0})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o666 & ~umask


def test_spq_revive_lets_selected_filters_train_and_return(tmp_path, cifar_dir):
    """SPQ's paper variant (spq_revive): the filters GM selects at an epoch's end are zeroed (weights
    only) and train again in the next epoch, so a later selection can differ (returned_filters > 0).
    In the default masked variant a selected filter gets no gradient, which is why it never returned."""
    from shiftpq.train import Trainer
    cfg = _cfg("spq", epochs="3", batch_size="32", spq_revive="true")
    cfg.spec, cfg.train_limit, cfg.test_limit = ModelSpec("tiny"), 128, 32
    tr = Trainer(cfg, tmp_path, "cpu", cifar_dir, progress=False)
    tr.fresh()
    recs = [tr.train_epoch()]
    sel = {n: cb.conv.mask == 0 for n, cb in tr.model.prunable().items()}
    assert any(s.any() for s in sel.values())
    for n, cb in tr.model.prunable().items():  # soft pruning: weights zeroed, BatchNorm kept
        assert (cb.conv.weight[sel[n]] == 0).all() and (cb.bn.weight[sel[n]] != 0).all()
    recs += [tr.train_epoch(), tr.train_epoch()]
    assert sum(r["returned_filters"] for r in recs) > 0
    assert any((cb.conv.weight[sel[n]] != 0).any() for n, cb in tr.model.prunable().items())  # they trained
    for cb in tr.model.prunable().values():  # the last selection is a hard prune
        dead = cb.conv.mask == 0
        assert (cb.conv.weight[dead] == 0).all() and (cb.bn.weight[dead] == 0).all()


def test_spq_revive_epochs_revive_first_then_mask(tmp_path, cifar_dir):
    """spq_revive_epochs=1: the first epoch trains every filter (the selection at its end zeroes the
    selected weights, soft), from the second on the selected filters are masked: they get no gradient,
    so their zeroed weights stay zero while they stay selected, and the run ends in a hard prune."""
    from shiftpq.train import Trainer
    cfg = _cfg("spq", epochs="3", batch_size="32", spq_revive="true", spq_revive_epochs="1")
    cfg.spec, cfg.train_limit, cfg.test_limit = ModelSpec("tiny"), 128, 32
    tr = Trainer(cfg, tmp_path, "cpu", cifar_dir, progress=False)
    tr.fresh()
    tr.train_epoch()
    sel = {n: (cb.conv.mask == 0).clone() for n, cb in tr.model.prunable().items()}
    assert any(s.any() for s in sel.values())
    tr.train_epoch()  # masked: the mask stays on during the epoch
    for n, cb in tr.model.prunable().items():
        still = sel[n] & (cb.conv.mask == 0)
        assert (cb.conv.weight[still] == 0).all(), n  # a masked, zeroed filter did not regrow
    for bad in ({"spq_revive_epochs": "-1", "spq_revive": "true"}, {"spq_revive_epochs": "3"}):
        with pytest.raises(Exception, match="spq_revive_epochs"):
            recipe_with("paper", bad)


def test_masked_spq_filters_get_no_gradient():
    """Why the masked SPQ variant never brings a filter back: the mask multiplies the quantized
    weights and the BatchNorm output, so a selected filter's gradient is exactly zero."""
    from shiftpq.models import Net
    torch.manual_seed(0)
    model = Net(ModelSpec("tiny"))
    model.set_quant(True)
    cb = model.prunable()["stem"]
    cb.conv.mask[[0, 2]] = 0
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert (cb.conv.weight.grad[[0, 2]] == 0).all() and (cb.conv.weight.grad[[1, 3]] != 0).any()


def test_teacher_distils_in_every_phase_and_resumes(tmp_path, cifar_dir):
    """--teacher: a fixed model's logits enter the loss of an fp (or any) phase; a run resumed from
    its checkpoint keeps the same teacher (bit-equal to the uninterrupted run)."""
    def cfg(teacher=None, epochs="2"):
        c = _cfg("fp", epochs=epochs, batch_size="32", distill="0.5")
        c.spec, c.train_limit, c.test_limit, c.teacher = ModelSpec("tiny"), 64, 32, teacher
        return c
    _run(cfg(epochs="1"), tmp_path / "t", cifar_dir)
    teacher = str(tmp_path / "t" / "final.pt")
    _run(cfg(teacher), tmp_path / "a", cifar_dir)
    _run(cfg(teacher), tmp_path / "b", cifar_dir, stop_after=1)
    _run(cfg(teacher), tmp_path / "b", cifar_dir, resume=True)
    _run(cfg(), tmp_path / "c", cifar_dir)
    a, b, c = (read_checkpoint(tmp_path / n / "final.pt")[0]["model"] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # a teacher of another architecture (a deeper ResNet for a ResNet-20): a tinyvgg student of the
    # tiny teacher, stopped and resumed, equals its uninterrupted run (the resume rebuilt the teacher)
    other = cfg(teacher)
    other.spec = ModelSpec("tinyvgg")
    _run(other, tmp_path / "d", cifar_dir)
    _run(other, tmp_path / "e", cifar_dir, stop_after=1)
    _run(other, tmp_path / "e", cifar_dir, resume=True)
    d, e = (read_checkpoint(tmp_path / n / "final.pt")[0]["model"] for n in "de")
    assert all(torch.equal(d[k], e[k]) for k in d)
    assert read_checkpoint(tmp_path / "e" / "final.pt")[1]["teacher_spec"]["name"] == "tiny"
    # a quantized teacher (e.g. a packed shipped model) is refused: checkpoints keep a teacher as float weights
    with pytest.raises(ShiftPQError, match="meta.quantized"):
        _run(cfg(str(Path(__file__).resolve().parents[1] / "models" / "resnet20-ppq.pt")), tmp_path / "f", cifar_dir)


def test_a_run_killed_between_its_log_line_and_its_checkpoint_resumes_with_each_epoch_logged_once(
        tmp_path, cifar_dir):
    """SIGTERM (the sweep's stop) can land anywhere: after epoch 2's log line, before its checkpoint,
    with a torn line after it. --resume reruns epoch 2, the log holds epochs 1..3 once, the model is
    the uninterrupted run's; the sweep reads such a log without failing."""
    from shiftpq.sweep import run_state
    cfg = _cfg("fp", epochs="3")
    cfg.spec = ModelSpec("tiny")
    _run(cfg, tmp_path / "a", cifar_dir)
    b = tmp_path / "b"
    _run(cfg, b, cifar_dir, stop_after=1)
    lines = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    with open(b / "log.jsonl", "a") as f:  # epoch 2 logged, its checkpoint never written, then torn
        f.write(lines[1] + "\n" + lines[2][:17])
    assert run_state(b)["epochs"] == 2
    _run(cfg, b, cifar_dir, resume=True)
    log = [json.loads(l) for l in (b / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    x, _ = read_checkpoint(tmp_path / "a" / "final.pt")
    y, _ = read_checkpoint(b / "final.pt")
    for k in x["model"]:
        assert torch.equal(x["model"][k], y["model"][k]), k


def test_resume_without_a_checkpoint_starts_over_with_an_empty_log(tmp_path, cifar_dir):
    """Killed after its first log line, before its first checkpoint: --resume starts from scratch."""
    cfg = _cfg("fp", epochs="1")
    cfg.spec = ModelSpec("tiny")
    b = tmp_path / "b"
    b.mkdir()
    (b / "log.jsonl").write_text('{"epoch": 1, "test_acc": 1.0}\n')
    _run(cfg, b, cifar_dir, resume=True)
    assert [json.loads(l)["epoch"] for l in (b / "log.jsonl").read_text().splitlines()] == [1]


def test_recalibrate_bn_gives_the_statistics_of_the_network_as_it_is():
    """SPQ's revive variant trains every filter for an epoch, then zeroes the selected ones: the
    BatchNorm statistics of the layers after them are stale. recalibrate_bn re-estimates them in train
    mode: on the images it saw, eval mode then gives the train-mode (batch statistics) output."""
    from shiftpq.models import Net
    from shiftpq.train import recalibrate_bn
    torch.manual_seed(0)
    model = Net(ModelSpec("tiny"))
    model.set_quant(True)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    from shiftpq.models import model_input
    model.train()
    for _ in range(3):  # running statistics of the unpruned network
        model(model_input(images))
    cb = model.prunable()["stem"]
    cb.conv.mask[[0, 2]] = 0  # the selection: the layers after it now see other statistics
    with torch.no_grad():
        batch_stats = model(model_input(images))
        model.eval()
        stale = model(model_input(images))
        recalibrate_bn(model, images, 64, 64)
        assert not model.training
        fresh = model(model_input(images))
    assert (stale - batch_stats).abs().max() > 10 * (fresh - batch_stats).abs().max(), \
        ((stale - batch_stats).abs().max(), (fresh - batch_stats).abs().max())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.1 for m in bns)  # restored
