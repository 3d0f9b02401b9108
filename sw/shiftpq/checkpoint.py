"""Checkpoint files: tensors in a torch file read with ``weights_only=True``, metadata as JSON.

Layout: ``{"format": "shiftpq-checkpoint", "version": 1, "meta": <JSON string>,
"model": state_dict, "optimizer": state_dict | absent, "teacher": state_dict | absent}``.
``meta["spec"]`` rebuilds the model, ``meta["quantized"]`` says whether its quantizers are on.
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


def save_checkpoint(path: str | Path, model: Net, meta: dict, optimizer=None, teacher: Net | None = None) -> None:
    """Atomic write: a crash never leaves a truncated checkpoint behind."""
    path = Path(path)
    if teacher is not None:  # the teacher may be another architecture (resume rebuilds it from this)
        meta = {**meta, "teacher_spec": teacher.spec.to_json()}
    blob = {"format": FORMAT, "version": VERSION, "meta": json.dumps({**meta, "spec": model.spec.to_json(),
                                                                       "quantized": model.quantized}, sort_keys=True),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    if teacher is not None:
        blob["teacher"] = {k: v.detach().cpu() for k, v in teacher.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # left by a run killed while saving
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path))
    os.close(fd)
    try:
        torch.save(blob, tmp)
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
    if blob.get("version") != VERSION:
        raise ShiftPQError(f"{path}: field 'version' is {blob.get('version')!r}, expected {VERSION}")
    try:
        meta = json.loads(blob["meta"])
    except (KeyError, TypeError, ValueError) as e:
        raise ShiftPQError(f"{path}: field 'meta' is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("spec", {}), dict):
        raise ShiftPQError(f"{path}: field 'meta' is not a JSON object with an object 'spec'")
    for key in ("model", "optimizer", "teacher"):
        state = blob.get(key, {})
        if not isinstance(state, dict) or (key != "optimizer" and not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
            raise ShiftPQError(f"{path}: field {key!r} is not a state dict (names -> tensors)")
    return blob, meta


def model_from_state(spec: dict, state: dict, quantized: bool, source: str = "checkpoint") -> Net:
    try:
        model = Net(ModelSpec.from_json(spec))
    except KeyError as e:
        raise ShiftPQError(f"{source}: field 'meta.spec' lacks the key {e} (a checkpoint of an older layout?)") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ShiftPQError(f"{source}: field 'meta.spec' is invalid ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ShiftPQError(f"{source}: field 'model' does not fit {spec['name']}: {' '.join(str(e).split())[:300]}") from None
    model.set_quant(quantized)
    return model


def load_model(path: str | Path) -> tuple[Net, dict]:
    """The model stored in a checkpoint (eval mode, quantizers as trained) and its metadata."""
    blob, meta = read_checkpoint(path)
    model = model_from_state(meta.get("spec", {}), blob.get("model", {}), bool(meta.get("quantized")), str(path))
    return model.eval(), meta
