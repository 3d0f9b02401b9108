"""Checkpoint files: tensors in a torch file read with ``weights_only=True``, metadata as JSON.

Layout: ``{"format": "shiftpq-checkpoint", "version": 1, "meta": <JSON string>,
"model": state_dict, "optimizer": state_dict | absent, "teacher": state_dict | absent}``.
``meta["spec"]`` rebuilds the model, ``meta["quantized"]`` says whether its quantizers are on.

A deployment checkpoint (``save_checkpoint(..., compact=True)``, ``shiftpq pack``; quantized models
only) stores each weight layer's quantized weights instead of its float weights: ``"codes"`` maps the
layer's module path (``stem.conv``, ``fc``) to its signed level indices packed as two's complement,
two per byte for layers of at most 4 bits (the low nibble first), one per byte otherwise (uint8, the
weight tensor's elements in order), and ``"code_std"`` to its normalization std (a float32 scalar);
``"model"`` then lacks those layers' ``weight``, and ``"version"`` is 2 (an older reader refuses it
by its version). Loading rebuilds a model that computes what the original computed (the same
quantized weights, the same exported tables), but cannot be trained further. A ResNet-20 takes 0.2 MB
instead of 1.1 MB.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import torch

from .atomic import remove_stale_temporaries, temporary_prefix
from .errors import ShiftPQError
from .models import ModelSpec, Net

FORMAT = "shiftpq-checkpoint"
VERSION = 1
VERSION_PACKED = 2  # a deployment checkpoint (codes): an older reader refuses it by its version


def pack_index(index: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed level indices as bytes (module docstring): a uint8 vector."""
    u = index.detach().cpu().flatten().to(torch.int16)
    if bits <= 4:
        u = (u & 0xF).to(torch.uint8)
        if u.numel() % 2:
            u = torch.cat([u, u.new_zeros(1)])
        return u[0::2] | (u[1::2] << 4)
    return (u & 0xFF).to(torch.uint8)


def unpack_index(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``pack_index`` undone: int8 indices of ``shape``; ValueError if the bytes do not fit it."""
    n = 1
    for d in shape:
        n *= d
    nib = bits <= 4
    want = (n + 1) // 2 if nib else n
    if packed.layout != torch.strided or packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != want:
        raise ValueError(f"expected {want} bytes (uint8, dense, one dimension) for {n} {bits}-bit indices, got "
                         f"{packed.dtype} ({packed.layout}) of shape {tuple(packed.shape)}")
    u = packed.to(torch.int16)
    if nib:
        u = torch.stack([u & 0xF, u >> 4], 1).flatten()
        if u.numel() > n and int(u[n]) != 0:
            raise ValueError("the padding nibble after the last index is not 0")
        u = torch.where(u >= 8, u - 16, u)[:n]
    else:
        u = torch.where(u >= 128, u - 256, u)
    return u.to(torch.int8).reshape(shape)


def save_checkpoint(path: str | Path, model: Net, meta: dict, optimizer=None, teacher: Net | None = None,
                    compact: bool = False) -> None:
    """Atomic write: a crash never leaves a truncated checkpoint behind. ``compact``: the deployment
    form (module docstring), always used for a model that is already in it."""
    path = Path(path)
    if teacher is not None:  # the teacher may be another architecture (resume rebuilds it from this)
        meta = {**meta, "teacher_spec": teacher.spec.to_json()}
    blob = {"format": FORMAT, "version": VERSION, "meta": json.dumps({**meta, "spec": model.spec.to_json(),
                                                                       "quantized": model.quantized}, sort_keys=True),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if compact or model.frozen:
        if not model.quantized or optimizer is not None or teacher is not None:
            raise ValueError("a deployment checkpoint holds a quantized model alone (no optimizer, no teacher)")
        blob["version"] = VERSION_PACKED
        blob["codes"], blob["code_std"] = {}, {}
        for name, layer in model.weight_layer_paths().items():
            index, std = layer.weight_index()
            blob["codes"][name] = pack_index(index, layer.wq.levels.bits)
            blob["code_std"][name] = std.detach().cpu().float().reshape(())
            for key in ("weight", "frozen_index", "frozen_std"):
                blob["model"].pop(f"{name}.{key}", None)
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    if teacher is not None:
        blob["teacher"] = {k: v.detach().cpu() for k, v in teacher.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # left by a run killed while saving
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path))
    os.close(fd)
    try:
        with open(tmp, "wb") as f:  # through a file object, the archive's records are not named after the
            torch.save(blob, f)     # (random) temporary file: equal contents, equal bytes
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make every checkpoint private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(raw blob, meta) of a checkpoint; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ShiftPQError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # PyTorch warns about pickle protocols on stderr: the error says it all
            warnings.simplefilter("ignore")
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # PyTorch's message suggests weights_only=False, i.e. running the file's code: never repeat that
        inner = " ".join(str(e.__context__ or "").split())[:160]
        what = ("it refers to Python code or objects" if "GLOBAL" in inner else
                "it is not a file of tensors and plain data")
        raise ShiftPQError(f"{path}: not a ShiftPQ checkpoint: {what} ({inner or 'unreadable'}); objects and code "
                           "in a checkpoint are refused, never run") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ShiftPQError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ShiftPQError(f"{path}: field 'format' is not {FORMAT!r} (not a ShiftPQ checkpoint)")
    packed = "codes" in blob or "code_std" in blob
    want = VERSION_PACKED if packed else VERSION
    if blob.get("version") != want:
        raise ShiftPQError(f"{path}: field 'version' is {blob.get('version')!r}, expected {want}"
                           + (" (a packed checkpoint: field 'codes')" if packed else ""))
    try:
        meta = json.loads(blob["meta"])
    except (KeyError, TypeError, ValueError) as e:
        raise ShiftPQError(f"{path}: field 'meta' is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("spec", {}), dict):
        raise ShiftPQError(f"{path}: field 'meta' is not a JSON object with an object 'spec'")
    for key in ("model", "optimizer", "teacher", "codes", "code_std"):
        state = blob.get(key, {})
        if not isinstance(state, dict) or (key != "optimizer" and not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
            raise ShiftPQError(f"{path}: field {key!r} is not a state dict (names -> tensors)")
    return blob, meta


def model_from_state(spec: dict, state: dict, quantized: bool, source: str = "checkpoint",
                     codes: dict | None = None, code_std: dict | None = None) -> Net:
    """The model of a checkpoint's fields; with ``codes`` and ``code_std``, in deployment form."""
    try:
        model = Net(ModelSpec.from_json(spec))
    except KeyError as e:
        raise ShiftPQError(f"{source}: field 'meta.spec' lacks the key {e} (a checkpoint of an older layout?)") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ShiftPQError(f"{source}: field 'meta.spec' is invalid ({e})") from None
    if codes is None and code_std is None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ShiftPQError(f"{source}: field 'model' does not fit {spec['name']}: {' '.join(str(e).split())[:300]}") from None
        model.set_quant(quantized)
        return model
    layers = model.weight_layer_paths()
    if not quantized:
        raise ShiftPQError(f"{source}: field 'codes' in a checkpoint whose 'meta.quantized' is false")
    for key, got in (("codes", codes), ("code_std", code_std)):
        if set(got or {}) != set(layers):
            raise ShiftPQError(f"{source}: field {key!r} names {sorted(got or {})}, expected the weight layers "
                               f"{sorted(layers)}")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ShiftPQError(f"{source}: field 'model' does not fit {spec['name']}: {' '.join(str(e).split())[:300]}") from None
    if set(missing) != {f"{n}.weight" for n in layers} or unexpected:
        raise ShiftPQError(f"{source}: field 'model' of a deployment checkpoint must hold everything but the weight "
                           f"layers' weights; missing {sorted(set(missing) - {f'{n}.weight' for n in layers})}, "
                           f"unexpected {sorted(unexpected)}")
    model.set_quant(True)
    for name, layer in layers.items():
        std = code_std[name]
        try:
            if std.layout != torch.strided or not std.dtype.is_floating_point or std.numel() != 1:
                raise ValueError(f"code_std must be one dense real number, got {std.dtype} ({std.layout}) of shape "
                                 f"{tuple(std.shape)}")
            layer.freeze(unpack_index(codes[name], layer.wq.levels.bits, tuple(layer.weight.shape)), std)
        except (ValueError, RuntimeError, NotImplementedError) as e:
            raise ShiftPQError(f"{source}: weight layer {name!r} (fields 'codes' and 'code_std'): {e}") from None
    return model


def load_model(path: str | Path) -> tuple[Net, dict]:
    """The model stored in a checkpoint (eval mode, quantizers as trained) and its metadata."""
    blob, meta = read_checkpoint(path)
    model = model_from_state(meta.get("spec", {}), blob.get("model", {}), bool(meta.get("quantized")), str(path),
                             blob.get("codes"), blob.get("code_std"))
    return model.eval(), meta
