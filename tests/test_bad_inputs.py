"""Every bad input is one clear line, exit 2, nothing written (issue 18).

Hostile checkpoints, edited manifests, broken arrays, bad arguments, short data files and odd output
locations, each through the real command line (``cli.main``), asserting the exit code, a single
stderr line naming the file and field, and that no output (nor a temporary) was left. Then a seeded
property test corrupts one field of a valid manifest at a time. One small exported network serves the
whole module; nothing is synthesized or simulated.
"""
from __future__ import annotations

import copy
import gc
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from shiftpq.checkpoint import save_checkpoint
from shiftpq.data import RECORD, TEST_FILES
from shiftpq.errors import ShiftPQError
from shiftpq.golden import Golden
from shiftpq.tables import MANIFEST, array_file, load_tables
from shiftpq.testnets import images, random_net
from shiftpq_cli import main

ROOT = Path(__file__).resolve().parents[1]
SEED = 2  # random_net(2): 22 ops, every op type of a ResNet


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A checkpoint of a small random network and its exported tables (one export for the module)."""
    d = tmp_path_factory.mktemp("bad")
    save_checkpoint(d / "m.pt", random_net(SEED), {"epoch": 1})
    assert main(["export", "--checkpoint", str(d / "m.pt"), "--out", str(d / "t")]) == 0
    return d


def run(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


def refused(rc, err, *needles, code=2):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, (rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("shiftpq") and "error" in lines[0] or code != 2, err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def nothing_written(parent: Path, name: str):
    assert not (parent / name).exists()
    assert not list(parent.glob(f".{name}.*")), list(parent.glob(f".{name}.*"))


# -- checkpoints -------------------------------------------------------------------------------------
class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/shiftpq-evil-ran",))


def _blob(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _edit_ckpt(fn):
    def make(src: Path, dst: Path):
        blob = _blob(src)
        fn(blob)
        torch.save(blob, dst)
    return make


def _state(key, fn):
    def edit(blob):
        name = next(k for k in blob["model"] if k.endswith(key))
        blob["model"][name] = fn(blob["model"][name].clone())
    return edit


def _set(t, v):
    t.view(-1)[0] = v
    return t


def _packed(fn):
    """A packed (deployment) checkpoint of the source, edited by ``fn``."""
    edit = _edit_ckpt(fn)

    def make(src: Path, dst: Path):
        from shiftpq.checkpoint import load_model
        model, meta = load_model(src)
        save_checkpoint(dst, model, {k: v for k, v in meta.items() if k not in ("spec", "quantized")}, compact=True)
        edit(dst, dst)
    return make


def _code(layer, fn):
    def edit(blob):
        blob["codes"][layer] = fn(blob["codes"][layer].clone())
    return edit


CHECKPOINTS = {
    "missing": (None, "checkpoint not found"),
    "random bytes": (lambda s, d: d.write_bytes(os.urandom(3000)), "not a"),
    "empty": (lambda s, d: d.write_bytes(b""), "not a readable checkpoint"),
    "truncated zip": (lambda s, d: d.write_bytes(s.read_bytes()[:5000]), "not a readable checkpoint"),
    "pickled code": (lambda s, d: torch.save({"format": "shiftpq-checkpoint", "x": Evil()}, d),
                     "refers to Python code or objects (Trying to load unsupported GLOBAL posix.system"),
    "pickled object": (lambda s, d: torch.save({"format": "shiftpq-checkpoint", "x": ValueError("x")}, d),
                       "refers to Python code or objects"),
    "plain pickle": (lambda s, d: d.write_bytes(pickle.dumps(Evil())), "not a"),
    "npz instead": (lambda s, d: np.savez(open(d, "wb"), a=np.zeros(3)), "not a"),
    "wrong format": (_edit_ckpt(lambda b: b.update(format="other")), "field 'format'"),
    "wrong version": (_edit_ckpt(lambda b: b.update(version=7)), "field 'version'"),
    "meta not json": (_edit_ckpt(lambda b: b.update(meta="{nope")), "field 'meta'"),
    "meta a list": (_edit_ckpt(lambda b: b.update(meta="[1, 2]")), "field 'meta'"),
    "model a list": (_edit_ckpt(lambda b: b.update(model=[1, 2])), "field 'model'"),
    "tensor of wrong shape": (_edit_ckpt(_state("stem.conv.weight", lambda t: t[:, :2])), "field 'model'"),
    "NaN weight": (_edit_ckpt(_state("layer1.0.conv1.conv.weight", lambda t: _set(t, float("nan")))),
                   "layer1.0.conv1.conv.weight' holds nan"),
    "inf clipping threshold": (_edit_ckpt(_state("layer1.0.act1.alpha", lambda t: _set(t, float("inf")))),
                               "layer1.0.act1.alpha' holds inf"),
    "zero clipping threshold": (_edit_ckpt(_state("layer1.0.act1.alpha", lambda t: _set(t, 0.0))),
                                "layer1.0.act1.alpha' is 0.0"),
    "negative variance": (_edit_ckpt(_state("layer1.0.conv2.bn.running_var", lambda t: _set(t, -1.0))),
                          "running_var' holds -1"),
    "NaN variance": (_edit_ckpt(_state("stem.bn.running_var", lambda t: _set(t, float("nan")))),
                     "stem.bn.running_var' holds nan"),
    "mask of 0.5": (_edit_ckpt(_state("layer1.0.conv1.conv.mask", lambda t: _set(t, 0.5))),
                    "conv1.conv.mask' holds 0.5"),
    "every filter pruned": (_edit_ckpt(_state("layer2.0.conv1.conv.mask", lambda t: t * 0)),
                            "prunes every filter of layer2.0.conv1.conv"),
    "full precision": (_edit_ckpt(lambda b: b.update(meta=json.dumps({**json.loads(b["meta"]), "quantized": False}))),
                       "meta.quantized"),
    # packed (shiftpq pack: level indices instead of float weights)
    "packed: 8-bit index -128": (_packed(_code("stem.conv", lambda t: _set(t, 0x80))), "level index 128 outside"),
    "packed: 4-bit index -8": (_packed(_code("layer1.0.conv1.conv", lambda t: _set(t, 0x08))), "level index 8 outside"),
    "packed: a byte short": (_packed(_code("layer1.0.conv1.conv", lambda t: t[:-1])), "'codes' and 'code_std'"),
    "packed: int8 codes": (_packed(_code("fc", lambda t: t.to(torch.int8))), "expected"),
    "packed: a layer missing": (_packed(lambda b: b["codes"].pop("fc")), "field 'codes' names"),
    "packed: negative std": (_packed(lambda b: b["code_std"]["fc"].fill_(-1.0)), "normalization std"),
    "packed: codes a list": (_packed(lambda b: b.update(codes=[1])), "field 'codes'"),
    "packed: float weights too": (_packed(lambda b: b["model"].update({"fc.weight": torch.zeros(1)})), "field 'model'"),
    "packed: sparse codes": (_packed(_code("layer1.0.conv1.conv", lambda t: t.to_sparse())), "dense"),
    "packed: sparse std": (_packed(lambda b: b["code_std"].update({"fc": torch.tensor([0.5]).to_sparse()})), "dense real"),
    "packed: complex std": (_packed(lambda b: b["code_std"].update({"fc": torch.tensor(0.5 + 1j)})), "dense real"),
    "packed: NaN weight alpha": (_packed(lambda b: b["model"]["fc.wq.alpha"].fill_(float("nan"))),
                                 "field 'model.fc.wq.alpha' holds nan"),
    "packed: version 1": (_packed(lambda b: b.update(version=1)), "field 'version' is 1, expected 2"),
    "packed: full precision": (_packed(lambda b: b.update(meta=json.dumps({**json.loads(b["meta"]), "quantized": False}))),
                               "meta.quantized"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_bad_checkpoint_is_refused_by_export_and_gen(case, base, tmp_path, capsys):
    make, needle = CHECKPOINTS[case]
    ckpt = tmp_path / "bad.pt"
    if make:
        make(base / "m.pt", ckpt)
    Path("/tmp/shiftpq-evil-ran").unlink(missing_ok=True)
    line = refused(*run(capsys, "export", "--checkpoint", ckpt, "--out", tmp_path / "o"), ckpt, needle)
    assert "weights_only" not in line
    nothing_written(tmp_path, "o")
    refused(*run(capsys, "gen", "--checkpoint", ckpt, "--out", tmp_path / "g"), ckpt)
    nothing_written(tmp_path, "g")
    assert not Path("/tmp/shiftpq-evil-ran").exists()


# -- tables --------------------------------------------------------------------------------------------
def _op(m, name):
    return next(op for op in m["ops"] if op["name"] == name)


def _man(fn):
    def edit(d: Path):
        m = json.loads((d / MANIFEST).read_text())
        fn(m)
        (d / MANIFEST).write_text(json.dumps(m))
    return edit


def _arr(name, fn):
    def edit(d: Path):
        a = np.load(d / name, allow_pickle=False)
        np.save(d / name, fn(a.copy()), allow_pickle=False)
    return edit


def _raw(name, fn):
    def edit(d: Path):
        (d / name).write_bytes(fn((d / name).read_bytes()))
    return edit


def _huge_header(data: bytes) -> bytes:
    head = np.lib.format.header_data_from_array_1_0(np.zeros(1, dtype=np.int8))
    head["shape"] = (1 << 40, 1 << 20)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, head)
    return buf.getvalue()


def _npz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("arr_0.npy", data)
    return buf.getvalue()


def _apot_ints(m):
    m["levels"]["apot4u"]["ints"] = list(range(16))


W = array_file("layer1.0.conv1", "weight")
TABLES = {
    "manifest not json": (lambda d: (d / MANIFEST).write_text("{"), MANIFEST, "not valid JSON"),
    "manifest a list": (lambda d: (d / MANIFEST).write_text("[]"), MANIFEST, "expected an object"),
    "no manifest": (lambda d: (d / MANIFEST).unlink(), MANIFEST, "missing"),
    "version a string": (_man(lambda m: m.update(version="1")), MANIFEST, "'version'"),
    "ops a dict": (_man(lambda m: m.update(ops={})), MANIFEST, "'ops' is {}, expected a list"),
    "op a list": (_man(lambda m: m["ops"].__setitem__(1, [])), MANIFEST, "'ops[1]'"),
    "kernel 3.0": (_man(lambda m: _op(m, "stem").update(kernel=3.0)), MANIFEST, "'ops[0].kernel' is 3.0"),
    "kernel a string": (_man(lambda m: _op(m, "stem").update(kernel="3")), MANIFEST, "'ops[0].kernel'"),
    "stride 0": (_man(lambda m: _op(m, "stem").update(stride=0)), MANIFEST, "'ops[0].stride'"),
    "padding -1": (_man(lambda m: _op(m, "layer1.0.conv1").update(padding=-1)), MANIFEST, ".padding' is -1"),
    "out_hw off by one": (_man(lambda m: _op(m, "layer1.0.conv1").update(out_hw=33)), MANIFEST, ".out_hw' is 33"),
    "in_hw off by one": (_man(lambda m: _op(m, "layer1.0.conv1").update(in_hw=31)), MANIFEST, ".in_hw' is 31"),
    "partial_bound too small": (_man(lambda m: _op(m, "layer1.0.conv1").update(partial_bound=1)), MANIFEST,
                                ".partial_bound' is 1"),
    "acc_bits off by one": (_man(lambda m: _op(m, "stem").update(acc_bits=18)), MANIFEST, "'ops[0].acc_bits' is 18"),
    "level ints not APoT": (_man(_apot_ints), MANIFEST, "'levels.apot4u.ints'"),
    "level bits 6": (_man(lambda m: m["levels"]["apot4u"].update(bits=6)), MANIFEST, "'levels.apot4u.bits' is 6"),
    "input offset": (_man(lambda m: m["input"].update(offset=0)), MANIFEST, "'input'"),
    "tensor range": (_man(lambda m: m["tensors"]["stem"].update(hi=5)), MANIFEST, "'tensors.stem.hi' is 5"),
    "tensor bits a string": (_man(lambda m: m["tensors"]["stem"].update(bits="19")), MANIFEST, "'tensors.stem.bits'"),
    "conv_index": (_man(lambda m: _op(m, "layer1.0.add").update(conv_index=[-1])), MANIFEST, ".conv_index'"),
    "kept unsorted": (_man(lambda m: _op(m, "layer3.0.conv1").update(kept=_op(m, "layer3.0.conv1")["kept"][::-1])),
                      MANIFEST, ".kept'"),
    "fc shift 17": (_man(lambda m: _op(m, "fc").update(shift=17)), MANIFEST, ".shift' is 17"),
    "op name escapes": (_man(lambda m: _op(m, "stem").update(name="../../x")), MANIFEST, "'ops[0].name'"),
    "model name": (_man(lambda m: m.update(model="../x")), MANIFEST, "'model'"),
    "output tensor": (_man(lambda m: m["output"].update(tensor="pool")), MANIFEST, "'output.tensor'"),
    "spec wbits disagrees": (_man(lambda m: m["spec"].update(wbits=3)), MANIFEST, "'spec' gives layer1.0.conv1 3-bit"),
    "spec abits a float": (_man(lambda m: m["spec"].update(abits=4.0)), MANIFEST, "'spec.abits' is 4.0"),
    "spec layer_bits of no layer": (_man(lambda m: m["spec"].update(layer_bits={"layer9.conv": 3})), MANIFEST,
                                    "layer_bits names unknown layers: ['layer9.conv']"),
    "source path a number": (_man(lambda m: m["source"].update(path=1)), MANIFEST, "'source.path' is 1"),
    "unknown op": (_man(lambda m: _op(m, "stem").update(op="deconv")), MANIFEST, "unsupported layer type"),
    "add mul 2^62": (_arr(array_file("layer1.0.add", "mul"), lambda a: a * 0 + (1 << 62)),
                     array_file("layer1.0.add", "mul"), "field 'mul'"),
    "threshold outside its clamp": (_arr(array_file("layer1.0.act1", "thresholds"), lambda a: a - (1 << 40)),
                                    array_file("layer1.0.act1", "thresholds"), "field 'thresholds'"),
    "sign 0": (_arr(array_file("layer1.0.act1", "sign"), lambda a: a * 0), array_file("layer1.0.act1", "sign"),
               "-1 or +1"),
    "weight dtype": (_arr(W, lambda a: a.astype(np.int16)), W, "dtype int16, expected int8"),
    "weight shape": (_arr(W, lambda a: a[:, :, :2]), W, "shape"),
    "npz renamed npy": (_raw(W, _npz), W, "not a readable .npy"),
    "huge declared shape": (_raw(W, _huge_header), W, "shape (1099511627776, 1048576)"),
    "truncated array": (_raw(W, lambda b: b[:-3]), W, "truncated"),
    "object array": (lambda d: np.save(d / W, np.array([None]), allow_pickle=True), W, "Python objects"),
    "missing array": (lambda d: (d / W).unlink(), W, "missing array file"),
}


@pytest.mark.parametrize("case", sorted(TABLES))
def test_bad_tables_are_refused_by_golden_and_gen(case, base, tmp_path, capsys, cifar_dir):
    edit, file, needle = TABLES[case]
    d = tmp_path / "t"
    shutil.copytree(base / "t", d)
    edit(d)
    refused(*run(capsys, "golden", "--tables", d, "--no-compare", "--limit", 2, "--data-dir", cifar_dir),
            d / file, needle)
    refused(*run(capsys, "gen", "--tables", d, "--par", 2, "--out", tmp_path / "g"), d / file, needle)
    nothing_written(tmp_path, "g")


# -- arguments -----------------------------------------------------------------------------------------
ARGS = {
    "golden --limit 0": (["golden", "--tables", "{t}", "--limit", "0"], "--limit"),
    "golden --limit x": (["golden", "--tables", "{t}", "--limit", "x"], "--limit"),
    "golden --min-agreement 101": (["golden", "--tables", "{t}", "--min-agreement", "101"], "--min-agreement"),
    "golden --min-agreement x": (["golden", "--tables", "{t}", "--min-agreement", "x"], "--min-agreement"),
    "--min-agreement with --no-compare": (["golden", "--tables", "{t}", "--min-agreement", "90", "--no-compare"],
                                          "--no-compare"),
    "golden no tables": (["golden", "--tables", "{tmp}/none"], "manifest.json: missing"),
    "golden tables a file": (["golden", "--tables", "{tmp}/m.pt"], "manifest.json: missing"),
    "golden data dir missing": (["golden", "--tables", "{t}", "--no-compare", "--data-dir", "{tmp}/none"],
                                "does not exist"),
    "gen --par 0": (["gen", "--tables", "{t}", "--par", "0", "--out", "{tmp}/g"], "--par"),
    "gen --par x": (["gen", "--tables", "{t}", "--par", "x", "--out", "{tmp}/g"], "--par"),
    "gen no source": (["gen", "--out", "{tmp}/g"], "give --model, --checkpoint or --tables"),
    "gen --target with hls": (["gen", "--tables", "{t}", "--par", "2", "--backend", "hls", "--target", "generic",
                               "--out", "{tmp}/g"], "--target generic goes with the RTL backend"),
    "gen --target unknown": (["gen", "--tables", "{t}", "--par", "2", "--target", "xilinx", "--out", "{tmp}/g"],
                             "--target"),
    "gen unknown model": (["gen", "--model", "resnet99", "--out", "{tmp}/g"], "resnet99"),
    "gen model mismatch": (["gen", "--tables", "{t}", "--model", "resnet20", "--par", "2", "--out", "{tmp}/g"],
                           "--model resnet20"),
    "gen two sources": (["gen", "--tables", "{t}", "--checkpoint", "{tmp}/m.pt", "--out", "{tmp}/g"], "not allowed"),
    "export no --out": (["export", "--checkpoint", "{tmp}/m.pt"], "--out"),
    "pack onto an existing file": (["pack", "--checkpoint", "{tmp}/m.pt", "--out", "{tmp}/m.pt"], "pass --force"),
    "pack onto a directory": (["pack", "--checkpoint", "{tmp}/m.pt", "--out", "{tmp}", "--force"], "is a directory"),
    "pack no checkpoint": (["pack", "--checkpoint", "{tmp}/none.pt", "--out", "{tmp}/p.pt"], "checkpoint not found"),
    "pack a NaN weight": (["pack", "--checkpoint", "{tmp}/nan.pt", "--out", "{tmp}/p.pt"], "holds nan"),
    # a pause probability of 1 never sends (never takes): the simulation would hang
    "sim --gap 1": (["sim", "--build", "{tmp}/g", "--gap", "1"], "--gap: a probability (at 1 the stream never moves) must be in [0, 1), got 1.0"),
    "sim --stall 2": (["sim", "--build", "{tmp}/g", "--stall", "2"], "--stall: a probability (at 1 the stream never moves) must be in [0, 1), got 2.0"),
    "sim --gap nan": (["sim", "--build", "{tmp}/g", "--gap", "nan"], "--gap: a probability (at 1 the stream never moves) must be in [0, 1), got nan"),
    # the RTL simulation's options are refused by the C simulation, not silently ignored
    "sim hls --gap": (["sim", "--backend", "hls", "--build", "{tmp}/g", "--gap", "0.5"], "--gap: an option of the RTL"),
    "sim hls --waves": (["sim", "--backend", "hls", "--build", "{tmp}/g", "--waves"], "--waves: an option of the RTL"),
    "unknown command": (["frobnicate"], "invalid choice"),
}


@pytest.mark.parametrize("case", sorted(ARGS))
def test_bad_arguments_are_one_line(case, base, tmp_path, capsys):
    args, needle = ARGS[case]
    shutil.copy(base / "m.pt", tmp_path / "m.pt")
    _edit_ckpt(_state("layer1.0.conv1.conv.weight", lambda t: _set(t, float("nan"))))(base / "m.pt", tmp_path / "nan.pt")
    args = [a.format(t=base / "t", tmp=tmp_path) for a in args]
    refused(*run(capsys, *args), needle)
    nothing_written(tmp_path, "g")
    nothing_written(tmp_path, "p.pt")


# -- data files ----------------------------------------------------------------------------------------
def _data_dir(tmp_path, cifar_dir, records=None, data=None):
    d = tmp_path / "cifar"
    d.mkdir()
    raw = Path(cifar_dir, TEST_FILES[0]).read_bytes()
    (d / TEST_FILES[0]).write_bytes(data if data is not None else raw[:records * RECORD])
    return d


def test_short_test_file_is_refused_unless_limit_asks_for_less(base, tmp_path, capsys, cifar_dir):
    d = _data_dir(tmp_path, cifar_dir, records=100)
    refused(*run(capsys, "golden", "--tables", base / "t", "--no-compare", "--data-dir", d),
            d / TEST_FILES[0], "100 records, expected 10000")
    refused(*run(capsys, "golden", "--tables", base / "t", "--no-compare", "--limit", 101, "--data-dir", d),
            "100 records", "--limit 101 needs 101")
    rc, _ = run(capsys, "golden", "--tables", base / "t", "--no-compare", "--limit", 100, "--data-dir", d)
    assert rc == 0


@pytest.mark.parametrize("case", ["not whole records", "label 10", "empty"])
def test_broken_test_file_is_refused(case, base, tmp_path, capsys, cifar_dir):
    raw = bytearray(Path(cifar_dir, TEST_FILES[0]).read_bytes()[:20 * RECORD])
    data = {"not whole records": bytes(raw[:-7]), "label 10": bytes([10]) + bytes(raw[1:]), "empty": b""}[case]
    d = _data_dir(tmp_path, cifar_dir, data=data)
    refused(*run(capsys, "golden", "--tables", base / "t", "--no-compare", "--limit", 5, "--data-dir", d),
            d / TEST_FILES[0])


# -- agreement -----------------------------------------------------------------------------------------
def test_min_agreement(base, capsys, cifar_dir, monkeypatch):
    rc, err = run(capsys, "golden", "--tables", base / "t", "--limit", 40, "--min-agreement", 100,
                  "--data-dir", cifar_dir)
    assert rc == 0, err  # the golden model and its fake-quant model agree on all 40
    import shiftpq.golden as golden
    real = golden.fakequant_predictions
    monkeypatch.setattr(golden, "fakequant_predictions", lambda c, x: (real(c, x) + 1) % 10)  # a broken model
    rc, err = run(capsys, "golden", "--tables", base / "t", "--limit", 40, "--min-agreement", 50,
                  "--data-dir", cifar_dir)
    refused(rc, err, "agreement 0.00% on 40 images is below --min-agreement 50%", code=1)


# -- a generator's output read by `sim` ----------------------------------------------------------------
@pytest.fixture(scope="module")
def gen_out(base):
    """``shiftpq gen`` of the module's tables (PAR 2), once for the module."""
    assert main(["gen", "--tables", str(base / "t"), "--par", "2", "--out", str(base / "g")]) == 0
    return base / "g"


def _gen_json(name, fn):
    def edit(d: Path):
        obj = json.loads((d / name).read_text())
        (d / name).write_text(json.dumps(fn(obj)))
    return edit


def _golden_block(d: dict, i: int = 1) -> dict:
    return [b for b in d["blocks"] if b["golden"]][i]


GEN_OUT = {  # hand-edited, truncated or mixed-up cycles.json / probes.json: refused before any simulation
    "probes missing": (lambda d: (d / "probes.json").unlink(), "probes.json", "missing"),
    "probes not JSON": (lambda d: (d / "probes.json").write_text('{"blocks": ['), "probes.json", "not valid JSON"),
    "probes a list": (lambda d: (d / "probes.json").write_text("[]"), "probes.json", "expected an object"),
    "probes no blocks": (_gen_json("probes.json", lambda o: {k: v for k, v in o.items() if k != "blocks"}),
                         "probes.json", "field 'blocks' is missing"),
    "probes block a string": (_gen_json("probes.json", lambda o: {**o, "blocks": ["stem"]}),
                              "probes.json", "field 'blocks[0]' is 'stem', expected an object"),
    "probes golden missing": (_gen_json("probes.json", lambda o: (o["blocks"][0].pop("golden"), o)[1]),
                              "probes.json", "field 'blocks[0].golden' is missing"),
    "probes width a string": (_gen_json("probes.json", lambda o: (_golden_block(o).update(width="4"), o)[1]),
                              "probes.json", ".width' is '4', expected an integer"),
    "probes width off by one": (_gen_json("probes.json", lambda o: (_golden_block(o).update(
        width=_golden_block(o)["width"] + 1), o)[1]), "probes.json", "the bits of"),
    "probes unknown tensor": (_gen_json("probes.json", lambda o: (_golden_block(o).update(tensor="nope"), o)[1]),
                              "probes.json", ".tensor' is 'nope', expected an activation-code tensor"),
    "probes instance no name": (_gen_json("probes.json", lambda o: (_golden_block(o).update(instance="a.b"), o)[1]),
                                "probes.json", ".instance' is 'a.b'"),
    "probes of another model": (_gen_json("probes.json", lambda o: {**o, "model": "resnet20"}),
                                "probes.json", "field 'model' is 'resnet20'"),
    "cycles not JSON": (lambda d: (d / "cycles.json").write_text("{"), "cycles.json", "not valid JSON"),
    "cycles per image true": (_gen_json("cycles.json", lambda o: {**o, "cycles_per_image": True}),
                              "cycles.json", "field 'cycles_per_image' is True, expected an integer"),
    "cycles per image 0": (_gen_json("cycles.json", lambda o: {**o, "cycles_per_image": 0}),
                           "cycles.json", "field 'cycles_per_image' is 0, expected an integer >= 1"),
    "cycles layer without cycles": (_gen_json("cycles.json", lambda o: (o["layers"][1].pop("cycles"), o)[1]),
                                    "cycles.json", "field 'layers[1].cycles' is missing"),
    "cycles no model": (_gen_json("cycles.json", lambda o: {k: v for k, v in o.items() if k != "model"}),
                        "cycles.json", "field 'model' is missing"),
    # made by other generator sources (a build left from before a code change): it would test that code
    "cycles from other sources": (_gen_json("cycles.json", lambda o: {**o, "generator": "0123456789abcdef"}),
                                  "cycles.json", "field 'generator' is '0123456789abcdef', expected"),
    "cycles from an older release": (_gen_json("cycles.json", lambda o: {k: v for k, v in o.items() if k != "generator"}),
                                     "cycles.json", "field 'generator' is missing (an older release)"),
}


def test_stale_ok_simulates_a_build_from_other_sources(gen_out, tmp_path):
    """--stale-ok takes what the check refuses: the build as it is (simulation.cmd_sim's first step)."""
    from types import SimpleNamespace

    from shiftpq.errors import ShiftPQError
    from shiftpq_cli.simulation import _require_current
    g = tmp_path / "g"
    shutil.copytree(gen_out, g)
    _gen_json("cycles.json", lambda o: {**o, "generator": "0123456789abcdef"})(g)
    with pytest.raises(ShiftPQError, match="--stale-ok"):
        _require_current(SimpleNamespace(build=str(g), fuzz=None, stale_ok=False))
    _require_current(SimpleNamespace(build=str(g), fuzz=None, stale_ok=True))
    _require_current(SimpleNamespace(build=str(gen_out), fuzz=None, stale_ok=False))  # a current build passes


@pytest.mark.parametrize("case", sorted(GEN_OUT))
def test_bad_generator_output_is_refused_by_sim(case, base, gen_out, tmp_path, capsys, cifar_dir):
    edit, file, needle = GEN_OUT[case]
    g = tmp_path / "g"
    shutil.copytree(gen_out, g)
    edit(g)
    for bench in (["--bench", "harness"], ["--bench", "cocotb", "--simulator", "icarus"]):
        refused(*run(capsys, "sim", "--build", g, *bench, "--images", 1, "--data-dir", cifar_dir), g / file, needle)
    assert not (g / "sim").exists()  # refused before anything was built or run


SYNTH_IN = {  # what `shiftpq synth` derives inferences/s and latency from: refused before Yosys runs
    "cycles per image 0": (_gen_json("cycles.json", lambda o: {**o, "cycles_per_image": 0}),
                           "cycles.json", "field 'cycles_per_image' is 0, expected an integer >= 1"),
    "pes missing": (_gen_json("cycles.json", lambda o: {k: v for k, v in o.items() if k != "pes"}),
                    "cycles.json", "field 'pes' is missing"),
    "par a string": (_gen_json("cycles.json", lambda o: {**o, "par": "22"}),
                     "cycles.json", "field 'par' is '22', expected an integer"),
    "latency negative": (lambda d: ((d / "sim").mkdir(), (d / "sim" / "results.json").write_text(
        '{"latency_cycles": -5}')), "results.json", "field 'latency_cycles' is -5, expected an integer >= 1"),
    "target unknown": (_gen_json("cycles.json", lambda o: {**o, "target": "xilinx"}),
                       "cycles.json", "field 'target' is 'xilinx', expected one of 'generic', 'ecp5'"),
    # RTL that instantiates ECP5 multipliers (gen --target ecp5), synthesized for an iCE40
    "ecp5 primitives for an ice40": (_gen_json("cycles.json", lambda o: {**o, "target": "ecp5"}), "cycles.json",
                                     "field 'target' is 'ecp5': the RTL instantiates ecp5 primitives, which ice40-up5k lacks"),
}


@pytest.mark.parametrize("case", sorted(SYNTH_IN))
def test_bad_generator_output_is_refused_by_synth(case, gen_out, tmp_path, capsys):
    edit, file, needle = SYNTH_IN[case]
    g = tmp_path / "g"
    shutil.copytree(gen_out, g)
    edit(g)
    refused(*run(capsys, "synth", "--build", g, "--device", "ice40-up5k"), file, needle)
    assert not (g / "synth").exists()


REPORT_IN = {  # what `shiftpq report` shows: refused before the golden model runs, nothing written
    "pes missing": (_gen_json("cycles.json", lambda o: {k: v for k, v in o.items() if k != "pes"}),
                    "cycles.json", "field 'pes' is missing"),
    "utilization a string": (_gen_json("cycles.json", lambda o: {**o, "utilization": "95 %"}),
                             "cycles.json", "field 'utilization' is '95 %', expected a number"),
    "layer name a number": (_gen_json("cycles.json", lambda o: (o["layers"][2].update(name=3), o)[1]),
                            "cycles.json", "field 'layers[2].name' is 3, expected a string"),
    "a rate null": (_gen_json("cycles.json", lambda o: {**o, "inferences_per_s": {"100MHz": None}}),
                    "cycles.json", "field 'inferences_per_s.100MHz' is None, expected a number"),
    "sim mismatches missing": (lambda d: ((d / "sim").mkdir(), (d / "sim" / "results.json").write_text("{}")),
                               "results.json", "field 'simulator' is missing"),
    "synth fits a string": (lambda d: ((d / "synth").mkdir(), (d / "synth" / "report.json").write_text(
        '{"device": "ecp5-85k", "fits": "yes"}')), "report.json", "field 'fits' is 'yes', expected true or false"),
}


@pytest.mark.parametrize("case", sorted(REPORT_IN))
def test_bad_generator_output_is_refused_by_report(case, gen_out, tmp_path, capsys, cifar_dir):
    edit, file, needle = REPORT_IN[case]
    g = tmp_path / "g"
    shutil.copytree(gen_out, g)
    edit(g)
    refused(*run(capsys, "report", "--build", g, "--images", 5, "--data-dir", cifar_dir), file, needle)
    assert not (g / "report").exists()


# -- the file system -----------------------------------------------------------------------------------
def test_out_is_a_file_or_under_one_or_not_writable(base, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    for cmd in (["export", "--checkpoint", base / "m.pt"], ["gen", "--tables", base / "t", "--par", 2]):
        refused(*run(capsys, *cmd, "--out", tmp_path / "f"), tmp_path / "f", "not a directory")
        refused(*run(capsys, *cmd, "--out", tmp_path / "f" / "sub"), "is a file, not a directory")
        refused(*run(capsys, *cmd, "--out", "/proc/shiftpq-out"), "/proc/shiftpq-out", "not writable")
    assert (tmp_path / "f").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_existing_output_is_kept_without_force(base, tmp_path, capsys):
    out = tmp_path / "t"
    shutil.copytree(base / "t", out)
    refused(*run(capsys, "export", "--checkpoint", base / "m.pt", "--out", out), out, "--force")
    g = tmp_path / "g"
    (g / "synth").mkdir(parents=True)
    (g / "synth" / "report.json").write_text("{}")
    (g / "sim").mkdir()
    refused(*run(capsys, "gen", "--tables", out, "--par", 2, "--out", g), g, "sim/", "synth/", "--force")
    refused(*run(capsys, "gen", "--model", "tiny", "--par", 2, "--out", g), g, "synth/")
    assert (g / "synth" / "report.json").read_text() == "{}"
    assert main(["export", "--checkpoint", str(base / "m.pt"), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "t"]


_SLOW_EXPORT = """
import signal, sys, time
import numpy as np
# Ctrl-C as in a terminal: a shell running the tests in the background (CI, nohup) starts every child
# with SIGINT ignored, and Python then installs no KeyboardInterrupt handler
signal.signal(signal.SIGINT, signal.default_int_handler)
import shiftpq.tables as tables
from shiftpq_cli import main
real = np.save
def slow(*a, **k):
    real(*a, **k)
    print("writing", flush=True)
    time.sleep(60)
tables.np.save = slow
sys.exit(main(["export", "--checkpoint", sys.argv[1], "--out", sys.argv[2]]))
"""


def _killed_in_write_phase(base, out: Path, sig) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("sw", "hw", "sim", "cli"))}
    p = subprocess.Popen([sys.executable, "-c", _SLOW_EXPORT, str(base / "m.pt"), str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing", p.stderr.read()
    assert list(out.parent.glob(f".{out.name}.tmp-{p.pid}-*"))  # the temporary exists now
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_in_the_write_phase_leaves_nothing(sig, code, base, tmp_path):
    r = _killed_in_write_phase(base, tmp_path / "o", sig)
    refused(r.returncode, r.stderr, "shiftpq:", code=code)
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_a_killed_run_are_removed_by_the_next(base, tmp_path, capsys):
    r = _killed_in_write_phase(base, tmp_path / "o", signal.SIGKILL)
    assert r.returncode == -signal.SIGKILL
    left = list(tmp_path.glob(".o.tmp-*"))
    assert len(left) == 1  # SIGKILL cannot be cleaned up after...
    live = tmp_path / f".o.tmp-{os.getpid()}-x"  # ...a live process's temporary is never touched
    live.mkdir()
    assert main(["export", "--checkpoint", str(base / "m.pt"), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "o"]  # ...but the next run removes it


def test_checkpoint_temporary_of_a_killed_run_is_removed_by_the_next_save(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer exists
    stale = tmp_path / f".c.pt.tmp-{gone.pid}-x"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "c.pt", random_net(SEED), {"epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


# -- property: one corrupted manifest field at a time --------------------------------------------------
def _leaves(x, path=()):
    """Every (path, value) of a JSON document, containers included."""
    yield path, x
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, path + (i,))


def _corruptions(value, rng: random.Random):
    """Ways to break one value: its type, its sign, off by one, None, a swap with a sibling (below)."""
    out = []
    if type(value) is int:
        out += [value + 1, value - 1, -value - 1, float(value), str(value), True, [value]]
    elif type(value) is float:
        out += [-value, value * 2, float("nan"), str(value), 0]
    elif type(value) is str:
        out += [value + "x", "", 1, [value]]
    elif type(value) is bool:
        out += [not value, int(value)]
    elif isinstance(value, list):
        out += [value[::-1], value[:-1], value + value[-1:], {}, dict(enumerate(value))] if value else [{}, [0]]
    elif isinstance(value, dict):
        out += [[], list(value)]
    out.append(None)
    return out


def _fingerprint(t, x):
    """What the golden model computes on a few images, and everything the generator derives from the
    tables before it converts: the plan (block per op, inputs, outputs), every block's ports and their
    widths (the payload layouts embody every width and count the hardware takes from the tables),
    and the cycle model. Blocks are identified by position: an op's name is a free identifier (a rename
    renames its RTL instance and array files, nothing else). The components are built to read their
    ports, never elaborated (hence the warnings filter)."""
    from amaranth.hdl import UnusedElaboratable

    from shiftpq_hw.network import components
    from shiftpq_hw.plan import cycle_model, make_plan
    plan = make_plan(t, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        comps = components(plan)
        blocks = [(str(b.kind), repr(comps[b.name].signature.members), b.inputs, b.output, b.lanes, b.simd, b.depth)
                  for b in plan.blocks]
        del comps
        gc.collect()  # the unused components go while the filter holds
    cycles = cycle_model(plan)
    cycles["layers"] = [{k: v for k, v in r.items() if k != "name"} for r in cycles["layers"]]
    cycles["bottleneck"] = len(cycles["bottleneck"])
    del cycles["source"]  # the tables' provenance, copied as it is (informational)
    return Golden(t).run(x).tolist(), blocks, cycles


def test_one_corrupted_manifest_field_is_refused_or_changes_nothing(base, tmp_path):
    """150 seeded corruptions of one manifest field each (type, sign, off by one, None, a swap of two
    siblings): load_tables (the first step of golden and gen) refuses, or the golden model's scores
    and the generator's plan, port widths and cycle model are exactly the original's. Accepted
    corruptions can only touch fields no consumer reads (alpha, scale, filters, source, ...): the
    validator compares every field a consumer reads with its recomputation, so the fingerprint
    covers the rest; for the first few accepted ones the RTLIL is compared too."""
    from amaranth.back import rtlil

    from shiftpq_hw.network import Network
    from shiftpq_hw.plan import make_plan
    x = images(3, 1)
    original = load_tables(base / "t")
    want = _fingerprint(original, x)

    def il(t):
        return rtlil.convert(Network(make_plan(t, 2)), name="top", emit_src=False)
    want_il = il(original)
    rng = random.Random(18)
    manifest = json.loads((base / "t" / MANIFEST).read_text())
    leaves = [p for p, _ in _leaves(manifest) if p]
    refusals, accepted, compared_il, problems = 0, [], 0, []
    d = tmp_path / "t"
    shutil.copytree(base / "t", d)
    for trial in range(150):
        m = copy.deepcopy(manifest)
        path = rng.choice(leaves)
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        old = parent[path[-1]]
        siblings = [k for k in (parent if isinstance(parent, dict) else range(len(parent))) if k != path[-1]]
        if siblings and rng.random() < 0.2:
            other = rng.choice(siblings)
            parent[path[-1]], parent[other] = parent[other], old
            what = f"swap {path} with {other!r}"
        else:
            new = rng.choice(_corruptions(old, rng))
            parent[path[-1]] = new
            what = f"{path}: {old!r:.40} -> {new!r:.40}"
        if m == manifest and json.dumps(m) == json.dumps(manifest):
            continue
        (d / MANIFEST).write_text(json.dumps(m))
        try:
            t = load_tables(d)
        except ShiftPQError as e:
            if "\n" in str(e) or str(d) not in str(e):
                problems.append(f"{what}: unclear message {str(e)!r}")
            refusals += 1
            continue
        except Exception as e:  # noqa: BLE001 - a traceback in the CLI
            problems.append(f"{what}: {type(e).__name__}: {e}")
            continue
        if _fingerprint(t, x) != want:
            problems.append(f"accepted and changed the result: {what}")
        elif compared_il < 4 and path[-1] != "name":
            if il(t) != want_il:
                problems.append(f"accepted and changed the RTL: {what}")
            compared_il += 1
        accepted.append(what)
    assert not problems, "\n".join(problems)
    assert refusals >= 100, (refusals, accepted)  # the corruptions do hit checked fields


def test_a_closed_stdout_is_no_error(tmp_path):
    """`shiftpq metrics ... | head -1`: the reader going away is exit 141 without a word, not 'error'."""
    import subprocess
    import sys
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "shiftpq_cli", "metrics", "--model", "resnet110", "--json"],
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (141, "")
