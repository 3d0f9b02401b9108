"""Layer tables and the golden model: exactness, determinism, bounds and bad input."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch

from shiftpq import intops, ir
from shiftpq.checkpoint import save_checkpoint
from shiftpq.errors import ShiftPQError
from shiftpq.export import export_checkpoint, export_model
from shiftpq.golden import Golden, GoldenError, predict
from shiftpq.models import ModelSpec, Net, preprocess
from shiftpq.tables import MANIFEST, array_file, load_tables, save_tables
from shiftpq.testnets import images, random_net
from shiftpq_cli import main


# -- an independent, slow integer reference written from docs/integer-semantics.md ---------------
def reference_run(t, image: np.ndarray) -> np.ndarray:
    ints = {k: lv.ints for k, lv in t.levels.items()}

    def val(name, x):
        info = t.tensors[name]
        if info.kind != "codes":
            return x.astype(np.int64)
        return np.vectorize(lambda i: ints[info.levels][i], otypes=[np.int64])(x)

    env = {"input": image.astype(np.int64).transpose(1, 2, 0) - 128}  # HWC
    for op in t.ops:
        kind = op.OP
        if kind == "conv":
            x = val(op.src, env[op.src])
            w = op.weight.astype(np.int64)
            lv = ints[op.weight_levels]
            w = np.vectorize(lambda c: (1 if c >= 0 else -1) * lv[abs(c)], otypes=[np.int64])(w)
            h, s, p, k = x.shape[0], op.stride, op.padding, op.kernel
            ho = (h + 2 * p - k) // s + 1
            out = np.zeros((ho, ho, w.shape[0]), dtype=np.int64)
            for y in range(ho):
                for xx in range(ho):
                    for o in range(w.shape[0]):
                        acc = 0
                        for ky in range(k):
                            for kx in range(k):
                                iy, ix = s * y + ky - p, s * xx + kx - p
                                if 0 <= iy < h and 0 <= ix < h:
                                    acc += int(np.dot(w[o, :, ky, kx], x[iy, ix]))
                        out[y, xx, o] = acc
            env[op.dst] = out
        elif kind == "requant":
            x = val(op.src, env[op.src])
            out = np.zeros(x.shape, dtype=np.int64)
            top = len(ints[op.levels]) - 1
            for idx in np.ndindex(x.shape):
                c = idx[-1]
                if op.mode == "threshold":
                    th, sg = op.thresholds[c], int(op.sign[c])
                    out[idx] = sum(1 for v in th if sg * int(x[idx]) >= int(v))
                else:
                    v = (int(x[idx]) * int(op.mul[c]) + int(op.bias[c])) \
                        >> int(op.shift[c])
                    out[idx] = min(max(v, 0), top)
            env[op.dst] = out
        elif kind == "add":
            acc, sc = env[op.srcs[0]], val(op.srcs[1], env[op.srcs[1]])
            top = len(ints[op.levels]) - 1
            out = np.zeros(acc.shape[:2] + (len(op.conv_index),), dtype=np.int64)
            for y in range(acc.shape[0]):
                for xx in range(acc.shape[1]):
                    for c, (ci, si) in enumerate(zip(op.conv_index, op.shortcut_index)):
                        v = int(op.bias[c])
                        if ci >= 0:
                            v += int(acc[y, xx, ci]) * int(op.mul[c])
                        if si >= 0:
                            v += int(sc[y, xx, si]) * int(op.shortcut_mul[c])
                        out[y, xx, c] = min(max(v >> int(op.shift[c]), 0), top)
            env[op.dst] = out
        elif kind == "shortcut":
            env[op.dst] = env[op.src][::op.stride, ::op.stride]
        elif kind == "maxpool":
            x, k = env[op.src], op.size
            env[op.dst] = np.array([[[x[y * k:y * k + k, xx * k:xx * k + k, c].max() for c in range(x.shape[2])]
                                        for xx in range(x.shape[1] // k)] for y in range(x.shape[0] // k)])
        elif kind == "avgpool":
            env[op.dst] = val(op.src, env[op.src]).sum(axis=(0, 1))
        elif kind == "fc":
            x = val(op.src, env[op.src])
            w = op.weight.astype(np.int64)
            env[op.dst] = np.array([(int(np.dot(w[o], x)) << op.shift) + int(op.bias[o])
                                       for o in range(w.shape[0])])
    return env[t.output]


@pytest.mark.parametrize("seed,arch", [(s, False) for s in range(4)] + [(s, True) for s in range(4)])
def test_golden_equals_slow_reference_on_random_networks(seed, arch):
    """arch: the fuzzer's random architectures (plain tinyvgg or residual tiny, 1-2 blocks per stage)."""
    t = export_model(random_net(seed, random_arch=arch, random_bits=arch), {"path": "random"})
    g = Golden(t)
    x = images(2, seed)
    scores = g.run(x)
    for i in range(len(x)):
        assert np.array_equal(scores[i], reference_run(t, x[i])), f"image {i}"


def test_random_networks_cover_the_cases_the_hardware_must_handle():
    kinds = set()
    for seed in range(4):
        t = export_model(random_net(seed), {"path": "random"})
        for op in t.ops:
            if isinstance(op, ir.Conv):
                kinds.add(("stride", op.stride))
                kinds.add(("kept1", len(op.kept) == 1))
            if isinstance(op, ir.Requant):
                kinds.add(("mode", op.mode))
                if op.mode == "threshold":
                    kinds.add(("negative gain", bool((op.sign < 0).any())))
            if isinstance(op, ir.Add):
                kinds.add(("mode", "affine"))
                kinds.add(("subsample", op.srcs[1].endswith("shortcut")))
                kinds.add(("conv-pruned channel with live shortcut",
                           any(c < 0 <= s for c, s in zip(op.conv_index, op.shortcut_index))))
    for want in [("stride", 1), ("stride", 2), ("kept1", True), ("mode", "threshold"), ("mode", "affine"),
                 ("negative gain", True), ("subsample", True), ("subsample", False),
                 ("conv-pruned channel with live shortcut", True)]:
        assert want in kinds, want


@pytest.mark.parametrize("seed", range(3))
def test_golden_matches_fake_quant_model(seed):
    """Every quantized tensor of the golden model equals the PyTorch fake-quant tensor (decoded and
    scaled), but for the rare values float32 rounding puts on the other side of a decision level."""
    net = random_net(seed)
    t = export_model(net, {"path": "random"})
    x = images(8, seed)
    _, env = Golden(t).run(x, trace=True)
    seen = {}
    hooks = [q.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o)) for n, q in net.act_quantizers().items()]
    with torch.no_grad():
        net(preprocess(torch.from_numpy(x)))
    for h in hooks:
        h.remove()
    g = Golden(t)
    for name, ref in seen.items():
        info = t.tensors[name]
        val = g.values(name, env[name]) * info.scale
        full = np.zeros(ref.shape)
        full[:, info.channels] = np.moveaxis(val, -1, 1) if val.ndim == 4 else val
        diff = np.abs(full - ref.numpy()) / info.scale  # in units of the tensor's level step
        # a flip at one layer moves later values by about one step; anything more is a semantic error
        assert (diff > 1e-3).mean() < 0.03, (name, (diff > 1e-3).mean())
        assert (diff > 1.5 * max(np.diff(t.level_set(info.levels).ints))).mean() < 1e-3, name


def test_physical_pruning_computes_what_the_masked_model_computes():
    for seed in range(3):
        net = random_net(seed)
        phys = export_model(net, {"path": "r"}, physical=True)
        full = export_model(net, {"path": "r"}, physical=False)
        assert sum(op.weight.size for op in phys.ops if isinstance(op, ir.Conv)) < \
            sum(op.weight.size for op in full.ops if isinstance(op, ir.Conv))
        x = images(3, seed)
        sp, ep = Golden(phys).run(x, trace=True)
        sf, ef = Golden(full).run(x, trace=True)
        assert np.array_equal(sp, sf)
        for name, info in phys.tensors.items():
            a, b = ep[name], ef[name]
            full_ch = full.tensors[name].channels
            ch = [full_ch.index(c) for c in info.channels]
            assert np.array_equal(a, b[..., ch]), name
            rest = np.delete(b, ch, axis=-1)
            if full.tensors[name].kind != "image":
                assert not rest.any(), f"{name}: a removed channel is not zero in the masked model"


def test_export_is_byte_identical_and_round_trips(tmp_path, monkeypatch):
    """The same checkpoint gives the same bytes, also from two copies of a project (its path is
    recorded relative to the working directory), and the tables load back to what was exported."""
    net = random_net(1)
    for clone in ("one", "two"):
        (tmp_path / clone / "models").mkdir(parents=True)
        save_checkpoint(tmp_path / clone / "models" / "m.pt", net, {"epoch": 1})
        monkeypatch.chdir(tmp_path / clone)
        save_tables(export_checkpoint("models/m.pt"), tmp_path / clone / "tables")
        assert load_tables(tmp_path / clone / "tables").source["path"] == "models/m.pt"
    ckpt = tmp_path / "one" / "models" / "m.pt"
    monkeypatch.chdir(tmp_path / "two")
    assert export_checkpoint(ckpt).source["path"] == ckpt.resolve().as_posix()  # outside: absolute
    a, b = tmp_path / "one" / "tables", tmp_path / "two" / "tables"
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and MANIFEST in names
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    monkeypatch.chdir(tmp_path / "one")
    t0, t1 = export_checkpoint(ckpt), load_tables(a)
    assert t0 == t1
    a0, a1 = t0.arrays(), t1.arrays()
    assert a0.keys() == a1.keys()
    for k in a0:
        assert a0[k].dtype == a1[k].dtype and np.array_equal(a0[k], a1[k])
    x = images(4)
    assert np.array_equal(Golden(t0).run(x), Golden(t1).run(x))


@pytest.mark.parametrize("seed", [1, 2])
def test_packed_checkpoint_exports_the_same_tables(seed, tmp_path, cifar_dir):
    """shiftpq pack: level indices instead of float weights, a fraction of the bytes, and the same
    model: equal logits, equal weight codes, equal exported arrays (the manifest differs in the source
    it names only), equal bytes when packed twice or packed again; it cannot start a training run."""
    from shiftpq.checkpoint import load_model
    from shiftpq.train import TrainConfig, Trainer, recipe_with
    save_checkpoint(tmp_path / "m.pt", random_net(seed), {"epoch": 1})
    for out in ("p.pt", "q.pt"):
        assert main(["pack", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / out)]) == 0
    assert main(["pack", "--checkpoint", str(tmp_path / "p.pt"), "--out", str(tmp_path / "q.pt"), "--force"]) == 0
    assert (tmp_path / "p.pt").read_bytes() == (tmp_path / "q.pt").read_bytes()
    (full, meta), (packed, pmeta) = load_model(tmp_path / "m.pt"), load_model(tmp_path / "p.pt")
    assert packed.frozen and not full.frozen and pmeta["epoch"] == meta["epoch"] and len(pmeta["packed_from"]) == 64
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(full(x), packed(x))
    for (n, a), (_, b) in zip(full.weight_layers().items(), packed.weight_layers().items()):
        assert all(torch.equal(u, v) for u, v in zip(a.weight_codes(), b.weight_codes())), n
    t_full, t_packed = export_checkpoint(tmp_path / "m.pt"), export_checkpoint(tmp_path / "p.pt")
    assert dataclasses.replace(t_full, source={}) == dataclasses.replace(t_packed, source={})
    a_full, a_packed = t_full.arrays(), t_packed.arrays()
    assert a_full.keys() == a_packed.keys() and all(np.array_equal(a_full[k], a_packed[k]) for k in a_full)
    cfg = TrainConfig(method="ppq", spec=full.spec, recipe=recipe_with("paper", {}), init=str(tmp_path / "p.pt"),
                      train_limit=32, test_limit=32)
    with pytest.raises(ShiftPQError, match="deployment checkpoint"):
        Trainer(cfg, tmp_path / "run", "cpu", cifar_dir, progress=False).fresh()


def test_vgg16_exports_and_matches_fake_quant():
    net = random_net(0, "vgg16", layer_masks=True)
    t = export_model(net, {"path": "r"})
    assert {type(op) for op in t.ops} >= {ir.Conv, ir.Requant, ir.MaxPool, ir.AvgPool, ir.FC}
    x = images(2)
    with torch.no_grad():
        ref = net(preprocess(torch.from_numpy(x)))
    scores = Golden(t).run(x)
    unit = t.tensors[t.output]
    # the scores are the float logits on an integer scale: compare their ranking
    assert list(predict(scores)) == list(ref.argmax(1).numpy())
    assert unit.kind == "scores"


def test_accumulators_stay_within_declared_bounds_for_adversarial_inputs():
    for seed in range(3):
        t = export_model(random_net(seed), {"path": "r"})
        g = Golden(t)
        for op in t.ops:
            if not isinstance(op, ir.Conv):
                continue
            src = t.tensors[op.src]
            w = g._weights[op.name]
            lo, hi = src.lo, src.hi
            k, h, c = op.kernel, op.in_hw, len(src.channels)
            for o in range(w.shape[0]):
                # the worst case for filter o at an interior output pixel: max where w > 0, min where w < 0
                x = np.zeros((1, h, h, c), dtype=np.int64)
                patch = np.where(w[o] > 0, hi, lo).transpose(1, 2, 0)
                x[0, :k, :k] = patch
                acc = intops.conv2d(x, w, 1, 0, op.partial_bound)
                assert acc[0, 0, 0, o] == int(np.maximum(w[o] * hi, w[o] * lo).sum())
                assert acc[0, 0, 0, o] <= t.tensors[op.dst].hi < 2 ** (op.acc_bits - 1)
            allmax = np.full((2, h, h, c), hi, dtype=np.int64)
            acc = intops.conv2d(allmax, w, op.stride, op.padding, op.partial_bound)
            assert t.tensors[op.dst].lo <= acc.min() and acc.max() <= t.tensors[op.dst].hi
        # whole networks on extreme images never leave the declared ranges (the golden model checks)
        for fill in (0, 255):
            g.run(np.full((2, 3, 32, 32), fill, dtype=np.uint8))
        g.run(images(2))


def test_golden_raises_when_a_value_leaves_its_declared_range():
    t = export_model(random_net(0), {"path": "r"})
    name = next(op.dst for op in t.ops if isinstance(op, ir.Conv))
    t.tensors[name] = dataclasses.replace(t.tensors[name], hi=0, lo=0)
    with pytest.raises(GoldenError, match=name):
        Golden(t).run(images(2))


def test_exact_matmul_is_exact_at_the_float32_limit():
    a = np.array([[2 ** 23 - 1, 1]], dtype=np.int64)
    b = np.array([[1], [1]], dtype=np.int64)
    assert intops.exact_matmul(a, b, 2 ** 24 - 1 + 1)[0, 0] == 2 ** 23  # float64 path above 2**24 - 1
    big = np.array([[2 ** 40, 3]], dtype=np.int64)
    assert intops.exact_matmul(big, b, 2 ** 40 + 3)[0, 0] == 2 ** 40 + 3
    assert intops.exact_matmul(np.array([[2 ** 60, 1]]), b, 2 ** 60 + 1)[0, 0] == 2 ** 60 + 1


def test_fold_thresholds_matches_the_quantizer_rule():
    """Brute force: for every integer input, the threshold code equals the real-valued rule."""
    from shiftpq.levels import level_set
    lv = level_set(4, False)
    gain = np.array([0.013, -0.021, 0.0, 0.0])
    offset = np.array([0.05, 0.9, 0.5, -0.1])
    alpha, bound = 1.7, 200
    th, sign = intops.fold_thresholds(gain, offset, lv.midpoints, alpha, bound)
    x = np.arange(-bound, bound + 1)[:, None].repeat(4, axis=1)
    got = intops.requant_threshold(x, th, sign)
    real = np.maximum(gain * x + offset, 0) / alpha
    want = np.searchsorted(lv.midpoints, np.clip(real, 0, 1), side="right")
    assert np.array_equal(got, want)


def test_fold_affine_rounds_half_up_and_clamps():
    offset = np.array([0.0])
    (mul,), bias, shift = intops.fold_affine([np.array([1.0])], offset, 255, 255.0)  # one unit = one level
    x = np.array([[-3], [0], [1], [254], [255], [300]])
    assert list(intops.requant_affine([(x, mul)], bias, shift, 255)[:, 0]) == [0, 0, 1, 254, 255, 255]
    (mul,), bias, shift = intops.fold_affine([np.array([0.5])], offset, 255, 255.0)  # x = 1 is half a level
    assert list(intops.requant_affine([(np.array([[1], [2], [3]]), mul)], bias, shift, 255)[:, 0]) == [1, 1, 2]
    assert (intops.MUL_MAX + 1) // 2 <= abs(mul[0]) <= intops.MUL_MAX  # the full multiplier width


def test_fold_affine_gives_every_channel_full_precision():
    gains = [np.array([3e-5, 0.7, 0.0]), np.array([1e-6, 0.1, 0.0])]
    muls, bias, shift = intops.fold_affine(gains, np.zeros(3), 255, 2.0)
    for c in range(2):
        assert (intops.MUL_MAX + 1) // 2 <= max(abs(muls[0][c]), abs(muls[1][c])) <= intops.MUL_MAX
        assert abs(muls[0][c] / 2.0 ** shift[c] - gains[0][c] * 255 / 2.0) <= 2.0 ** -shift[c]
    assert shift[2] == intops.MAX_SHIFT and muls[0][2] == 0


# -- bad input --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tables_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables") / "t"
    save_tables(export_model(random_net(2), {"path": "r"}), d)
    return d


def _corrupt(tables_dir, tmp_path, edit):
    d = tmp_path / "bad"
    shutil.copytree(tables_dir, d)
    edit(d)
    return d


def _edit_manifest(fn):
    def edit(d):
        m = json.loads((d / MANIFEST).read_text())
        fn(m)
        (d / MANIFEST).write_text(json.dumps(m))
    return edit


def _first(m, kind):
    return next(op for op in m["ops"] if op["op"] == kind)


def _resave(name, fn):
    def edit(d):
        a = np.load(d / name, allow_pickle=False)
        np.save(d / name, fn(a), allow_pickle=False)
    return edit


CORRUPTIONS = {
    "schema version": (_edit_manifest(lambda m: m.update(version=99)), "field 'version'"),
    "unsupported layer type": (_edit_manifest(lambda m: _first(m, "conv").update(op="deconv")),
                               "unsupported layer type"),
    "missing array": (lambda d: (d / array_file("stem", "weight")).unlink(), "stem.weight.npy: missing"),
    "extra array": (lambda d: np.save(d / "stray.npy", np.zeros(3)), "stray.npy: unexpected"),
    "wrong dtype": (_resave(array_file("stem", "weight"), lambda a: a.astype(np.int32)), "dtype int32, expected int8"),
    "wrong shape": (_resave(array_file("stem", "weight"), lambda a: a[:, :, :2]), "stem.weight.npy: shape"),
    "codes outside level set": (_resave(array_file("layer1.0.conv1", "weight"), lambda a: a * 0 + 9),
                                "expected within [-7, 7]"),
    "pickled array": (lambda d: np.save(d / array_file("stem", "weight"), np.array([object()]), allow_pickle=True),
                      "stem.weight.npy: not a readable"),
    "negative shift": (_resave(array_file("layer1.0.add", "shift"), lambda a: a * 0 - 1), "expected within [0, 40]"),
    "thresholds not ascending": (_resave(array_file("layer1.0.act1", "thresholds"), lambda a: a[:, ::-1].copy()),
                                 "not ascending"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_tables_are_rejected_with_file_and_field(case, tables_dir, tmp_path, capsys):
    edit, message = CORRUPTIONS[case]
    d = _corrupt(tables_dir, tmp_path, edit)
    with pytest.raises(ShiftPQError, match=re.escape(message)):
        load_tables(d)
    assert main(["golden", "--tables", str(d), "--no-compare", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert str(d) in err and "error" in err


def test_export_of_a_full_precision_checkpoint_fails_without_output(tmp_path, capsys):
    net = Net(ModelSpec("tiny"))
    save_checkpoint(tmp_path / "fp.pt", net, {"epoch": 1})
    out = tmp_path / "out" / "tables"
    assert main(["export", "--checkpoint", str(tmp_path / "fp.pt"), "--out", str(out)]) == 2
    assert "meta.quantized" in capsys.readouterr().err
    assert not out.exists() and not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_export_refuses_to_overwrite_and_replaces_atomically_with_force(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, random_net(3), {"epoch": 1})
    out = tmp_path / "t"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--force"]) == 0
    assert load_tables(out).model == "tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "t"]  # no temporary directories left


def test_golden_cli_reports_accuracy_and_agreement(tmp_path, cifar_dir, capsys):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, random_net(0), {"epoch": 1})
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert main(["golden", "--tables", str(tmp_path / "t"), "--limit", "64", "--json", "--data-dir", cifar_dir]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 64 and 0 <= r["accuracy"] <= 100 and 0 <= r["fakequant_accuracy"] <= 100
    assert r["agreement"] >= 95.0
    # a different checkpoint is refused
    save_checkpoint(tmp_path / "other.pt", random_net(1), {"epoch": 1})
    assert main(["golden", "--tables", str(tmp_path / "t"), "--limit", "4", "--checkpoint",
                 str(tmp_path / "other.pt"), "--data-dir", cifar_dir]) == 2
    assert "source.sha256" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["ppq", "spq"])
def test_shipped_resnet20_golden_model_agrees_with_its_fake_quant_model(tmp_path, cifar_dir, capsys, method):
    """The trained ResNet-20s in models/: exported, the integer model classifies like the float one."""
    from pathlib import Path
    from shiftpq.checkpoint import load_model
    ckpt = Path(__file__).resolve().parents[1] / "models" / f"resnet20-{method}.pt"
    assert load_model(ckpt)[0].frozen  # shipped packed (shiftpq pack)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert main(["golden", "--tables", str(tmp_path / "t"), "--limit", "1000", "--json", "--data-dir", cifar_dir]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["accuracy"] >= 85.0, r
    assert r["agreement"] >= 99.5 and abs(r["accuracy_difference"]) <= 0.3, r
    t = load_tables(tmp_path / "t")
    convs = [op for op in t.ops if isinstance(op, ir.Conv)]
    assert len(convs) == 19 and sum(len(op.kept) for op in convs) < sum(op.filters for op in convs)


def test_golden_does_not_trust_a_too_small_partial_bound():
    """The float engine choice rests on partial_bound; a manifest understating it changes nothing."""
    t = export_model(random_net(2), {"path": "r"})
    x = images(2)
    want = Golden(t).run(x)
    t = dataclasses.replace(t, ops=tuple(dataclasses.replace(op, partial_bound=0) if isinstance(op, (ir.Conv, ir.FC))
                                         else op for op in t.ops))
    g = Golden(t)
    for op in t.ops:
        if isinstance(op, (ir.Conv, ir.FC)):
            src = t.tensors[op.src]
            true_bound = intops.conv_bounds(g._weights[op.name], src.lo, src.hi)[2]
            assert true_bound > 0 and g._bounds[op.name] == true_bound
    assert np.array_equal(g.run(x), want)
