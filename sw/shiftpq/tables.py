"""Layer tables: the on-disk contract between training and hardware (schema, save, load, validate).

A tables directory holds ``manifest.json`` and one ``.npy`` file per integer array, named
``<op name>.<field>.npy``. Nothing is pickled: JSON for structure, ``np.load(allow_pickle=False)``
for arrays. Loading checks everything a consumer relies on (schema version, the op types, every
array's presence, dtype, shape and range, the graph's wiring) and names the file and field of the
first problem. docs/integer-semantics.md describes the meaning of every field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_dir
from .errors import ShiftPQError

SCHEMA = "shiftpq-tables"
VERSION = 1
MANIFEST = "manifest.json"
IMAGE_LEVELS = "image"  # the int8 input: pixel - 128

# array fields of each op type: field -> dtype
OP_ARRAYS: dict[str, dict[str, str]] = {
    "conv": {"weight": "int8"},
    "requant": {},  # by mode, below
    "add": {"mul": "int64", "shortcut_mul": "int64", "bias": "int64", "shift": "int64"},
    "shortcut": {},
    "maxpool": {},
    "avgpool": {},
    "fc": {"weight": "int8", "bias": "int64"},
}
REQUANT_ARRAYS = {"threshold": {"thresholds": "int64", "sign": "int8"},
                  "affine": {"mul": "int64", "bias": "int64", "shift": "int64"}}
OP_KEYS: dict[str, tuple[str, ...]] = {
    "conv": ("src", "kernel", "stride", "padding", "in_hw", "out_hw", "in_channels", "kept", "weight_levels",
             "acc_bits", "partial_bound"),
    "requant": ("src", "levels", "mode"),
    "add": ("srcs", "levels", "conv_index", "shortcut_index", "product_bits"),
    "shortcut": ("src", "stride", "pad_before"),
    "maxpool": ("src", "size"),
    "avgpool": ("src", "hw"),
    "fc": ("src", "weight_levels", "shift", "acc_bits", "bits"),
}
TENSOR_KINDS = ("image", "codes", "acc", "sum", "scores")


@dataclass
class Tables:
    manifest: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # file name -> array

    @property
    def ops(self) -> list[dict]:
        return self.manifest["ops"]

    @property
    def tensors(self) -> dict[str, dict]:
        return self.manifest["tensors"]

    def levels(self, name: str) -> dict:
        return self.manifest["levels"][name]

    def array(self, op: dict, name: str) -> np.ndarray:
        return self.arrays[array_file(op["name"], name)]

    def level_set(self, name: str):
        """The LevelSet object of a level set named in the manifest."""
        from .levels import level_set
        d = self.levels(name)
        return level_set(d["bits"], d["signed"])


def array_file(op_name: str, field_name: str) -> str:
    return f"{op_name}.{field_name}.npy"


def expected_arrays(op: dict) -> dict[str, str]:
    if op["op"] == "requant":
        return REQUANT_ARRAYS.get(op.get("mode"), {})
    return OP_ARRAYS[op["op"]]


# -- save ------------------------------------------------------------------------------------------
def save_tables(tables: Tables, out: str | Path, force: bool = False) -> Path:
    """Write to a temporary sibling directory, then rename: never a half-written tables directory."""
    out = Path(out)
    if out.exists() and not force:
        raise ShiftPQError(f"{out}: already exists; choose another --out or pass --force to replace it")
    with atomic_dir(out) as tmp:
        for name in sorted(tables.arrays):
            with open(tmp / name, "wb") as f:
                np.save(f, np.ascontiguousarray(tables.arrays[name]), allow_pickle=False)
        (tmp / MANIFEST).write_text(json.dumps(tables.manifest, indent=1, sort_keys=True) + "\n")
    return out


# -- load + validate -------------------------------------------------------------------------------
def _fail(path: Path, fld: str, msg: str):
    raise ShiftPQError(f"{path}: field '{fld}' {msg}")


def load_tables(d: str | Path) -> Tables:
    d = Path(d)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ShiftPQError(f"{mpath}: missing (not a tables directory; create one with `shiftpq export`)")
    try:
        m = json.loads(mpath.read_text())
    except ValueError as e:
        raise ShiftPQError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        _fail(mpath, "schema", f"is {m.get('schema') if isinstance(m, dict) else None!r}, expected {SCHEMA!r}")
    if m.get("version") != VERSION:
        _fail(mpath, "version", f"is {m.get('version')!r}, expected {VERSION} (tables of another ShiftPQ release)")
    for key in ("model", "levels", "tensors", "ops", "input", "output"):
        if key not in m:
            _fail(mpath, key, "is missing")
    wanted: dict[str, tuple[dict, str, str]] = {}
    for i, op in enumerate(m["ops"]):
        kind = op.get("op") if isinstance(op, dict) else None
        if kind not in OP_ARRAYS:
            _fail(mpath, f"ops[{i}].op", f"is {kind!r}: unsupported layer type; expected one of {', '.join(OP_ARRAYS)}")
        for key in ("name", "dst") + OP_KEYS[kind]:
            if key not in op:
                _fail(mpath, f"ops[{i}].{key}", f"is missing ({kind} {op.get('name')!r})")
        if kind == "requant" and op["mode"] not in REQUANT_ARRAYS:
            _fail(mpath, f"ops[{i}].mode", f"is {op['mode']!r}, expected one of {', '.join(REQUANT_ARRAYS)}")
        for fld, dtype in expected_arrays(op).items():
            wanted[array_file(op["name"], fld)] = (op, fld, dtype)
    present = {p.name for p in d.iterdir() if p.name != MANIFEST}
    for name in sorted(set(wanted) - present):
        raise ShiftPQError(f"{d / name}: missing array file (op {wanted[name][0]['name']!r}, field {wanted[name][1]!r})")
    for name in sorted(present - set(wanted)):
        raise ShiftPQError(f"{d / name}: unexpected file in the tables directory (no op field refers to it)")
    arrays = {}
    for name, (op, fld, dtype) in sorted(wanted.items()):
        try:
            a = np.load(d / name, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ShiftPQError(f"{d / name}: not a readable .npy array of plain numbers ({e})") from None
        if a.dtype != np.dtype(dtype):
            raise ShiftPQError(f"{d / name}: dtype {a.dtype}, expected {dtype} (op {op['name']!r}, field {fld!r})")
        arrays[name] = a
    t = Tables(m, arrays)
    _validate(t, d)
    return t


def _validate(t: Tables, d: Path) -> None:
    """Wiring, shapes and ranges; the first problem raises naming the file and field."""
    m, mpath = t.manifest, d / MANIFEST
    for name, lv in m["levels"].items():
        if name != IMAGE_LEVELS and (not lv.get("ints") or sorted(lv["ints"]) != lv["ints"] or lv["ints"][0] != 0):
            _fail(mpath, f"levels.{name}.ints", "must be ascending integers starting at 0")
    tensors = m["tensors"]
    known = {m["input"]["tensor"]}
    for name, tinfo in tensors.items():
        if tinfo.get("kind") not in TENSOR_KINDS:
            _fail(mpath, f"tensors.{name}.kind", f"is {tinfo.get('kind')!r}, expected one of {', '.join(TENSOR_KINDS)}")
        if tinfo["kind"] == "codes" and tinfo.get("levels") not in m["levels"]:
            _fail(mpath, f"tensors.{name}.levels", f"is {tinfo.get('levels')!r}, not a level set of the manifest")

    def need(i, op, key, src):
        if src not in known or src not in tensors:
            _fail(mpath, f"ops[{i}].{key}", f"is {src!r}: not a tensor computed before op {op['name']!r}")
        return tensors[src]

    def check(op, fld, shape, lo=None, hi=None):
        a = t.array(op, fld)
        path = d / array_file(op["name"], fld)
        if tuple(a.shape) != tuple(shape):
            raise ShiftPQError(f"{path}: shape {tuple(a.shape)}, expected {tuple(shape)} (op {op['name']!r}, field {fld!r})")
        if a.size and lo is not None and (int(a.min()) < lo or int(a.max()) > hi):
            raise ShiftPQError(f"{path}: values span [{int(a.min())}, {int(a.max())}], expected within [{lo}, {hi}] "
                               f"(op {op['name']!r}, field {fld!r})")
        return a

    for i, op in enumerate(m["ops"]):
        kind, out = op["op"], tensors.get(op["dst"])
        if out is None:
            _fail(mpath, f"ops[{i}].dst", f"is {op['dst']!r}: no such tensor in 'tensors'")
        if kind == "add":
            srcs = [need(i, op, "srcs", s) for s in op["srcs"]]
        else:
            src = need(i, op, "src", op["src"])
        nout = len(out["channels"])
        if kind in ("conv", "fc"):
            wl = m["levels"].get(op["weight_levels"])
            if wl is None:
                _fail(mpath, f"ops[{i}].weight_levels", f"is {op['weight_levels']!r}, not a level set of the manifest")
            top = len(wl["ints"]) - 1
            if kind == "conv":
                if op["in_channels"] != src["channels"] or op["kept"] != out["channels"]:
                    _fail(mpath, f"ops[{i}].in_channels", f"of {op['name']!r} disagree with its tensors' channels")
                check(op, "weight", (nout, len(src["channels"]), op["kernel"], op["kernel"]), -top, top)
            else:
                check(op, "weight", (nout, len(src["channels"])), -top, top)
                check(op, "bias", (nout,))
        elif kind == "requant":
            lv = m["levels"].get(op["levels"])
            if lv is None or out.get("levels") != op["levels"]:
                _fail(mpath, f"ops[{i}].levels", f"is {op['levels']!r}, expected the level set of tensor {op['dst']!r}")
            if op["mode"] == "threshold":
                th = check(op, "thresholds", (nout, len(lv["ints"]) - 1))
                check(op, "sign", (nout,), -1, 1)
                if np.any(t.array(op, "sign") == 0):
                    _fail(d / array_file(op["name"], "sign"), "sign", "holds 0, expected -1 or +1")
                if th.size and np.any(np.diff(th, axis=1) < 0):
                    _fail(d / array_file(op["name"], "thresholds"), "thresholds", "are not ascending in every row")
            else:
                check(op, "mul", (nout,))
                check(op, "bias", (nout,))
                check(op, "shift", (nout,), 0, 62)
        elif kind == "add":
            if out.get("levels") != op["levels"] or op["levels"] not in m["levels"]:
                _fail(mpath, f"ops[{i}].levels", f"is {op['levels']!r}, expected the level set of tensor {op['dst']!r}")
            for fld in ("mul", "shortcut_mul", "bias"):
                check(op, fld, (nout,))
            check(op, "shift", (nout,), 0, 62)
            for key, s in (("conv_index", srcs[0]), ("shortcut_index", srcs[1])):
                idx = op[key]
                if len(idx) != nout or any(not -1 <= j < len(s["channels"]) for j in idx):
                    _fail(mpath, f"ops[{i}].{key}", "must list, per output channel, a source channel or -1")
        known.add(op["dst"])
    if m["output"]["tensor"] not in known:
        _fail(mpath, "output.tensor", f"is {m['output']['tensor']!r}: no op computes it")
