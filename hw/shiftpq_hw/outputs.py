"""The generator's JSON outputs read back: ``cycles.json`` and ``probes.json`` (written by ``gen.py``
from ``plan.cycle_model`` and ``plan.probe_map``), as the simulations read them.

A generator output may be hand-edited, truncated or from another release: every field a reader uses
is checked first, and the first problem raises one ``ShiftPQError`` naming the file and the field
(docs/errors.md), never a KeyError or TypeError later, after a simulation ran."""
from __future__ import annotations

from pathlib import Path

from shiftpq.errors import ShiftPQError, read_json
from shiftpq.ir import Tables, TensorKind

_TYPES = {int: "an integer", str: "a string", list: "a list", dict: "an object", bool: "true or false"}


def _json(path: Path) -> dict:
    if not path.is_file():
        raise ShiftPQError(f"{path}: missing; run `shiftpq gen` (make gen) first")
    d = read_json(path)
    if not isinstance(d, dict):
        raise ShiftPQError(f"{path}: a JSON {type(d).__name__}, expected an object; run `shiftpq gen` again")
    return d


def _field(path: Path, d: dict, key: str, fld: str, typ, lo: int | None = None):
    """``d[key]`` of JSON type ``typ`` (an integer is no ``true`` nor ``3.0``), at least ``lo``."""
    if not isinstance(d, dict) or key not in d:
        raise ShiftPQError(f"{path}: field '{fld}' is missing")
    v = d[key]
    if type(v) is not typ:
        raise ShiftPQError(f"{path}: field '{fld}' is {v!r}, expected {_TYPES[typ]}")
    if lo is not None and v < lo:
        raise ShiftPQError(f"{path}: field '{fld}' is {v}, expected an integer >= {lo}")
    return v


def read_cycles(gen_dir: str | Path) -> dict:
    """``GEN_DIR/cycles.json`` with the fields the simulations read checked: ``model``,
    ``cycles_per_image`` (>= 1) and each of ``layers`` an object with its ``cycles`` (>= 0)."""
    path = Path(gen_dir) / "cycles.json"
    d = _json(path)
    _field(path, d, "model", "model", str)
    _field(path, d, "cycles_per_image", "cycles_per_image", int, 1)
    for i, row in enumerate(_field(path, d, "layers", "layers", list)):
        _field(path, {"row": row}, "row", f"layers[{i}]", dict)
        _field(path, row, "cycles", f"layers[{i}].cycles", int, 0)
    return d


def read_probes(gen_dir: str | Path, tables: Tables) -> list[dict]:
    """The golden-model probe points of ``GEN_DIR/probes.json`` (``instance``, ``block``, ``tensor``,
    ``width``), in execution order, each checked against ``tables``: its tensor is one of the tables'
    activation-code tensors and ``width`` the bits of that tensor's codes."""
    from amaranth.hdl import Shape

    from .pe import act_code_shape
    path = Path(gen_dir) / "probes.json"
    d = _json(path)
    model = _field(path, d, "model", "model", str)
    if model != tables.model:
        raise ShiftPQError(f"{path}: field 'model' is {model!r}, expected {tables.model!r} (the tables' model)")
    points = []
    for i, b in enumerate(_field(path, d, "blocks", "blocks", list)):
        f = f"blocks[{i}]"
        _field(path, {"b": b}, "b", f, dict)
        if not _field(path, b, "golden", f"{f}.golden", bool):
            continue
        p = {k: _field(path, b, k, f"{f}.{k}", str) for k in ("instance", "block", "tensor")}
        if not p["instance"].isidentifier():
            raise ShiftPQError(f"{path}: field '{f}.instance' is {p['instance']!r}, expected an RTL instance name")
        info = tables.tensors.get(p["tensor"])
        if info is None or info.kind != TensorKind.CODES:
            raise ShiftPQError(f"{path}: field '{f}.tensor' is {p['tensor']!r}, expected an activation-code "
                               "tensor of the tables")
        want = Shape.cast(act_code_shape(tables.level_set(info.levels))).width
        p["width"] = _field(path, b, "width", f"{f}.width", int)
        if p["width"] != want:
            raise ShiftPQError(f"{path}: field '{f}.width' is {p['width']}, expected {want} (the bits of "
                               f"{p['tensor']!r}'s codes)")
        points.append(p)
    return points
