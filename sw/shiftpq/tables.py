"""Layer tables: the on-disk form of the integer IR (ir.py), the contract between training and
hardware (schema, save, load, validate).

A tables directory holds ``manifest.json`` and one ``.npy`` file per integer array, named
``<op name>.<field>.npy``. Nothing is pickled: JSON for structure, ``np.load(allow_pickle=False)``
for arrays. Loading checks everything a consumer relies on (schema version, the op types, every
array's presence, dtype, shape and range, the graph's wiring) on the raw manifest and names the
file and field of the first problem; only then does ``from_manifest`` build the IR objects.
Saving writes ``to_manifest`` of the IR: load -> save gives the same bytes.
docs/integer-semantics.md describes the meaning of every field.
"""
from __future__ import annotations

import json
import re
from dataclasses import MISSING, fields
from enum import StrEnum
from pathlib import Path

import numpy as np

from . import ir
from .atomic import atomic_dir, prepare_output
from .errors import JSON_TYPE_NAMES, ShiftPQError, read_json
from .ir import IMAGE_LEVELS, Tables, array_file
from .levels import level_set

SCHEMA = "shiftpq-tables"
VERSION = 1
MANIFEST = "manifest.json"

# from the IR's op classes: the array fields of each op type (field -> dtype; the requant's depend on
# its mode) and the keys every manifest op of a type must have (the fields without a default)
OP_ARRAYS: dict[str, dict[str, str]] = {t.OP: t.ARRAYS for t in ir.OP_TYPES}
REQUANT_ARRAYS = {str(mode): arrays for mode, arrays in ir.Requant.MODE_ARRAYS.items()}
OP_KEYS: dict[str, tuple[str, ...]] = {t.OP: tuple(f.name for f in fields(t) if f.default is MISSING
                                                   and f.name not in ("name", "dst")) for t in ir.OP_TYPES}


def expected_arrays(op: dict) -> dict[str, str]:
    """The array fields (-> dtype) of a manifest op."""
    if op["op"] == "requant":
        return REQUANT_ARRAYS.get(op.get("mode"), {})
    return OP_ARRAYS[op["op"]]


# -- the manifest <-> the IR -----------------------------------------------------------------------
# Field names are the manifest's keys; lists become tuples, "kind" and "mode" their enums; a field
# absent from the manifest is None in the IR and absent again when saved.
def _array_fields(cls: type[ir.Op]) -> set[str]:
    return set(cls.ARRAYS).union(*(set(a) for a in getattr(cls, "MODE_ARRAYS", {}).values()))


def _from_json(v):
    return tuple(v) if isinstance(v, list) else v


def _to_json(v):
    if isinstance(v, tuple):
        return [_to_json(x) for x in v]
    return str(v) if isinstance(v, StrEnum) else v


def _op_from_manifest(d: dict, arrays: dict[str, np.ndarray]) -> ir.Op:
    cls = ir.OP_BY_NAME[d["op"]]
    kw = {}
    for f in fields(cls):
        if f.name in _array_fields(cls):
            kw[f.name] = arrays.get(array_file(d["name"], f.name))
        elif f.name in d:
            kw[f.name] = _from_json(d[f.name])
    if cls is ir.Requant:
        kw["mode"] = ir.RequantMode(d["mode"])
    return cls(**kw)


def _op_to_manifest(op: ir.Op) -> dict:
    skip = _array_fields(type(op))
    d = {"op": op.OP}
    for f in fields(op):
        v = getattr(op, f.name)
        if f.name not in skip and v is not None:
            d[f.name] = _to_json(v)
    return d


def from_manifest(m: dict, arrays: dict[str, np.ndarray]) -> ir.Tables:
    """The IR of a checked manifest and its arrays (by file name)."""
    tensors = {name: ir.Tensor(name=name, kind=ir.TensorKind(t["kind"]), channels=tuple(t["channels"]), hw=t["hw"],
                               lo=t["lo"], hi=t["hi"], bits=t["bits"], levels=t.get("levels"), scale=t.get("scale"))
               for name, t in m["tensors"].items()}
    levels = {name: level_set(lv["bits"], lv["signed"]) for name, lv in m["levels"].items() if name != IMAGE_LEVELS}
    return ir.Tables(model=m["model"], spec=m["spec"], source=m.get("source"), levels=levels, tensors=tensors,
                     ops=tuple(_op_from_manifest(op, arrays) for op in m["ops"]), input=m["input"]["tensor"],
                     output=m["output"]["tensor"], classes=m["output"]["classes"], physical=m.get("physical"))


def to_manifest(t: ir.Tables) -> dict:
    """The manifest.json of an IR (its arrays: ``t.arrays()``)."""
    tensors = {}
    for name, x in t.tensors.items():
        d = {"kind": str(x.kind), "channels": list(x.channels), "hw": x.hw, "lo": x.lo, "hi": x.hi, "bits": x.bits}
        d.update({k: v for k, v in (("levels", x.levels), ("scale", x.scale)) if v is not None})
        tensors[name] = d
    m = {"schema": SCHEMA, "version": VERSION, "model": t.model, "spec": t.spec,
         "levels": {IMAGE_LEVELS: dict(IMAGE_LEVEL_SET), **{n: ls.to_json() for n, ls in t.levels.items()}},
         "input": {**INPUT, "tensor": t.input}, "output": {"tensor": t.output, "classes": t.classes},
         "tensors": tensors, "ops": [_op_to_manifest(op) for op in t.ops]}
    if t.source is not None:
        m["source"] = t.source
    if t.physical is not None:
        m["physical"] = t.physical
    return m


# -- save ------------------------------------------------------------------------------------------
def save_tables(tables: Tables, out: str | Path, force: bool = False) -> Path:
    """Write to a temporary sibling directory, then rename: never a half-written tables directory."""
    out = prepare_output(out, force)
    arrays = tables.arrays()
    with atomic_dir(out) as tmp:
        for name in sorted(arrays):
            with open(tmp / name, "wb") as f:
                np.save(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
        (tmp / MANIFEST).write_text(json.dumps(to_manifest(tables), indent=1, sort_keys=True) + "\n")
    return out


# -- load + validate -------------------------------------------------------------------------------
# Every field a consumer (golden model, generator, simulator, report) reads is checked here: its type
# (an int is a JSON integer, never 3.0, "3" or true), its range, and every derived quantity (tensor
# shapes, channels, value ranges and widths, accumulator bounds, channel indices of the add, level
# sets) is recomputed from the weights, the constants and the shapes and must equal the declared one.
# What is not checked is read by no consumer (alpha, scale, filters, bn_folded_into, source, ...).
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")  # op names name files and RTL instances, tensors RTL signals
IMAGE_LEVEL_SET = {"kind": "image", "bits": 8, "signed": True, "offset": ir.IMAGE_OFFSET, "ints": None, "denom": 128}
INPUT = {"tensor": "input", "shape": list(ir.INPUT_SHAPE), "dtype": "uint8", "offset": ir.IMAGE_OFFSET}
IMAGE_TENSOR = {"kind": "image", "channels": [0, 1, 2], "hw": 32, "lo": -128, "hi": 127, "bits": 8}
MAX_KERNEL = 15
MAX_HW = 1024


def _same(a, b) -> bool:
    """Equal values of equal JSON types (``3.0``, ``True`` and ``"3"`` are not the integer 3)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


class _Checker:
    """Type, range and consistency checks of a manifest; each failure names the file and the field."""

    def __init__(self, d: Path, mpath: Path | str | None = None):
        self.d, self.mpath = d, mpath or d / MANIFEST

    def fail(self, fld: str, msg: str, path: Path | None = None):
        raise ShiftPQError(f"{path or self.mpath}: field '{fld}' {msg}")

    def typed(self, v, fld: str, typ):
        if type(v) is not typ:
            self.fail(fld, f"is {v!r}, expected {JSON_TYPE_NAMES[typ]}")
        return v

    def key(self, d: dict, k: str, fld: str, typ=None):
        if k not in d:
            self.fail(f"{fld}.{k}" if fld else k, "is missing")
        return d[k] if typ is None else self.typed(d[k], f"{fld}.{k}" if fld else k, typ)

    def int_in(self, d: dict, k: str, fld: str, lo: int, hi: int) -> int:
        v = self.key(d, k, fld, int)
        if not lo <= v <= hi:
            self.fail(f"{fld}.{k}", f"is {v}, expected an integer in [{lo}, {hi}]")
        return v

    def number(self, d: dict, k: str, fld: str) -> float:
        v = self.key(d, k, fld)
        if type(v) not in (int, float) or not np.isfinite(v) or v <= 0:
            self.fail(f"{fld}.{k}", f"is {v!r}, expected a positive finite number")
        return v

    def int_list(self, d: dict, k: str, fld: str, lo: int, hi: int) -> list[int]:
        v = self.key(d, k, fld, list)
        for j, x in enumerate(v):
            if type(x) is not int or not lo <= x <= hi:
                self.fail(f"{fld}.{k}[{j}]", f"is {x!r}, expected an integer in [{lo}, {hi}]")
        return v

    def equal(self, v, want, fld: str, why: str):
        if not _same(v, want):
            self.fail(fld, f"is {v!r}, expected {want!r} ({why})")


def _read_npy(path: Path, dtype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A plain .npy array whose header must declare ``dtype`` and ``shape`` (checked before any data is read)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, got_dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            if got_dtype.hasobject:
                raise ShiftPQError(f"{path}: not a readable .npy array of plain numbers: it holds Python objects, "
                                  f"refused unread ({what})")
            if got_dtype != np.dtype(dtype):
                raise ShiftPQError(f"{path}: dtype {got_dtype}, expected {dtype} ({what})")
            if tuple(got_shape) != tuple(shape):
                raise ShiftPQError(f"{path}: shape {tuple(got_shape)}, expected {tuple(shape)} ({what})")
            nbytes = int(np.prod(shape, dtype=np.int64)) * got_dtype.itemsize
            raw = f.read(nbytes + 1)
    except ShiftPQError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ShiftPQError(f"{path}: not a readable .npy array of plain numbers ({msg}; {what})") from None
    if len(raw) != nbytes:
        raise ShiftPQError(f"{path}: {len(raw)} bytes of data after the header, expected {nbytes} "
                           f"({'truncated' if len(raw) < nbytes else 'trailing bytes'}; {what})")
    a = np.frombuffer(raw, dtype=got_dtype).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(a).astype(dtype, copy=True)


def load_tables(d: str | Path) -> Tables:
    """Read and validate a tables directory: the first problem raises naming its file and field."""
    d = Path(d)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ShiftPQError(f"{mpath}: missing (not a tables directory; create one with `shiftpq export`)")
    m = read_json(mpath)
    c = _Checker(d)
    if not isinstance(m, dict):
        c.fail("schema", f"cannot be read: the manifest is a JSON {type(m).__name__}, expected an object")
    if m.get("schema") != SCHEMA:
        c.fail("schema", f"is {m.get('schema')!r}, expected {SCHEMA!r}")
    if not _same(m.get("version"), VERSION):
        c.fail("version", f"is {m.get('version')!r}, expected {VERSION} (tables of another ShiftPQ release)")
    ops = c.key(m, "ops", "", list)
    wanted: dict[str, tuple[dict, str, str]] = {}
    names = set()
    for i, op in enumerate(ops):
        c.typed(op, f"ops[{i}]", dict)
        kind = op.get("op")
        if not isinstance(kind, str) or kind not in OP_ARRAYS:
            c.fail(f"ops[{i}].op", f"is {kind!r}: unsupported layer type; expected one of {', '.join(OP_ARRAYS)}")
        for key in ("name", "dst") + OP_KEYS[kind]:
            if key not in op:
                c.fail(f"ops[{i}].{key}", f"is missing ({kind} {op.get('name')!r})")
        name = c.typed(op["name"], f"ops[{i}].name", str)
        if not NAME_RE.match(name) or ".." in name:
            c.fail(f"ops[{i}].name", f"is {name!r}, expected a letter or '_', then letters, digits, '_' or '.' "
                   "(it names files and RTL instances)")
        if name.replace(".", "_") in names:
            c.fail(f"ops[{i}].name", f"is {name!r}, which an earlier op already uses (with '.' read as '_')")
        names.add(name.replace(".", "_"))
        if kind == "requant" and (not isinstance(op["mode"], str) or op["mode"] not in REQUANT_ARRAYS):
            c.fail(f"ops[{i}].mode", f"is {op['mode']!r}, expected one of {', '.join(REQUANT_ARRAYS)}")
        for fld, dtype in expected_arrays(op).items():
            wanted[array_file(name, fld)] = (op, fld, dtype)
    present = {p.name for p in d.iterdir() if p.name != MANIFEST}
    for name in sorted(set(wanted) - present):
        raise ShiftPQError(f"{d / name}: missing array file (op {wanted[name][0]['name']!r}, field {wanted[name][1]!r})")
    for name in sorted(present - set(wanted)):
        raise ShiftPQError(f"{d / name}: unexpected file in the tables directory (no op field refers to it)")
    arrays: dict[str, np.ndarray] = {}

    def read(op: dict, fld: str, shape: tuple[int, ...]) -> np.ndarray:
        name = array_file(op["name"], fld)
        arrays[name] = _read_npy(d / name, wanted[name][2], shape, f"op {op['name']!r}, field {fld!r}")
        return arrays[name]

    _validate(m, c, read)
    return from_manifest(m, arrays)


def validate_tables(t: Tables, where: str) -> None:
    """The checks of load_tables on tables in memory (export runs them before writing anything)."""
    m, arrays = to_manifest(t), {n: a for n, a in t.arrays().items() if a is not None}
    wanted = {array_file(op["name"], f): dt for op in m["ops"] for f, dt in expected_arrays(op).items()}
    for name in sorted(set(arrays) ^ set(wanted)):
        raise ShiftPQError(f"{where}: array {name} {'is missing' if name in wanted else 'belongs to no op'}")

    def read(op: dict, fld: str, shape: tuple[int, ...]) -> np.ndarray:
        name = array_file(op["name"], fld)
        a = arrays[name]
        if a.dtype != np.dtype(wanted[name]) or tuple(a.shape) != tuple(shape):
            raise ShiftPQError(f"{where}: array {name} is {a.dtype} {tuple(a.shape)}, expected {wanted[name]} "
                               f"{tuple(shape)}")
        return a
    _validate(m, _Checker(Path(where), where), read)


def _check_spec(m: dict, c: _Checker, model: str):
    """The model spec (the report prints its bit widths): JSON types, then ModelSpec's own checks."""
    from .models import ModelSpec
    spec = c.key(m, "spec", "", dict)
    c.equal(spec.get("name"), model, "spec.name", "the field 'model'")
    for k in ("wbits", "abits", "stream_bits"):
        c.key(spec, k, "spec", int)
    for k, v in c.key(spec, "layer_bits", "spec", dict).items():
        c.typed(v, f"spec.layer_bits.{k}", int)
    if spec.get("widths") is not None:
        c.int_list(spec, "widths", "spec", 1, 1 << 16)
    if spec.get("blocks") is not None:
        c.int_in(spec, "blocks", "spec", 1, 1 << 10)
    try:
        ms = ModelSpec.from_json(spec)
        ms.validate()
        if ms.layer_bits:  # names of convs and quantizers of this model (the network refuses others)
            from .models import Net
            Net(ms)
    except ValueError as e:
        c.fail("spec", f"is not a valid model spec: {e}")
    return ms


def _validate(m: dict, c: _Checker, read) -> None:
    """Walk the ops in order, recompute every tensor's description and every derived field from the
    arrays (``read(op, field, shape)`` loads one, its shape checked from the header) and compare."""
    from . import intops
    from .export import FC_MAX_SHIFT, FC_SCORE_BITS, levels_name
    from .models import MODEL_NAMES
    d = c.d
    model = c.key(m, "model", "", str)
    if model not in MODEL_NAMES:
        c.fail("model", f"is {model!r}, expected one of {', '.join(MODEL_NAMES)}")
    spec = _check_spec(m, c, model)
    source = c.typed(m.get("source", {}), "source", dict)  # provenance: golden finds the checkpoint by it
    if source.get("path") is not None:
        c.typed(source["path"], "source.path", str)
    if source.get("sha256") is not None and not re.fullmatch(r"[0-9a-f]{64}", str(source["sha256"])):
        c.fail("source.sha256", f"is {source['sha256']!r}, expected 64 hexadecimal digits")
    c.equal(c.key(m, "input", "", dict), INPUT, "input", "the uint8 CIFAR-10 image the hardware reads, "
            "pixel - 128")
    levels = c.key(m, "levels", "", dict)
    c.equal(c.key(levels, IMAGE_LEVELS, "levels", dict), IMAGE_LEVEL_SET, f"levels.{IMAGE_LEVELS}", "the input image")
    sets = {}
    for name, lv in levels.items():
        if name == IMAGE_LEVELS:
            continue
        fld = f"levels.{name}"
        c.typed(lv, fld, dict)
        bits, signed = c.key(lv, "bits", fld, int), c.key(lv, "signed", fld, bool)
        try:
            ls = level_set(bits, signed)
        except ValueError as e:
            c.fail(f"{fld}.bits", f"is {bits}: {e}")
        want = ls.to_json()
        for k in want:
            c.equal(lv.get(k), want[k], f"{fld}.{k}", f"the {ls.kind} level set of {bits} bits, "
                    f"{'signed' if signed else 'unsigned'}")
        c.equal(name, levels_name(ls), f"levels.{name}", "a level set's name is its kind, bits and sign")
        sets[name] = ls

    def level_ref(v, fld: str, signed: bool):
        if type(v) is not str or v not in sets or sets[v].signed != signed:
            c.fail(fld, f"is {v!r}, expected the name of a{' signed' if signed else 'n unsigned'} level set of "
                   f"'levels' ({', '.join(n for n, s in sets.items() if s.signed == signed)})")
        return sets[v]

    output = c.key(m, "output", "", dict)
    last = m["ops"][-1] if m["ops"] else None
    if last is None or last["op"] != "fc":
        c.fail("ops", "do not end with an fc op (the class scores)")
    c.equal(output.get("tensor"), last["dst"], "output.tensor", "the last op's output")
    declared = c.key(m, "tensors", "", dict)
    c.equal(c.key(declared, "input", "tensors", dict), IMAGE_TENSOR, "tensors.input", "the input image")
    known = {"input": dict(IMAGE_TENSOR)}
    readers: dict[str, list[dict]] = {}
    for op in m["ops"]:
        for s in (op["srcs"] if op["op"] == "add" and isinstance(op["srcs"], list) else [op.get("src")]):
            if isinstance(s, str):
                readers.setdefault(s, []).append(op)

    def src_of(i, op, key, s, kinds):
        if type(s) is not str or s not in known:
            c.fail(f"ops[{i}].{key}", f"is {s!r}: not a tensor computed before op {op['name']!r}")
        t = known[s]
        if t["kind"] not in kinds:
            c.fail(f"ops[{i}].{key}", f"is {s!r}, a {t['kind']} tensor; a {op['op']} reads {' or '.join(kinds)}")
        return t

    def tensor(kind, channels, hw, lo, hi, lv=None):
        t = {"kind": kind, "channels": list(channels), "hw": hw, "lo": int(lo), "hi": int(hi),
             "bits": intops.signed_bits(lo, hi) if lo < 0 else intops.unsigned_bits(hi)}
        if lv is not None:
            t["levels"] = lv
        return t

    def weights(i, op, shape, lv):
        w = read(op, "weight", shape)
        top = len(lv.ints) - 1
        if w.size and (int(w.min()) < -top or int(w.max()) > top):
            raise ShiftPQError(f"{d / array_file(op['name'], 'weight')}: values span [{int(w.min())}, {int(w.max())}], "
                               f"expected within [{-top}, {top}] (op {op['name']!r}, field 'weight': codes of "
                               f"{op['weight_levels']})")
        return intops.decode_weights(w, lv.ints)

    def values(op, fld, shape, lo, hi, why):
        a = read(op, fld, shape)
        if a.size and (int(a.min()) < lo or int(a.max()) > hi):
            raise ShiftPQError(f"{d / array_file(op['name'], fld)}: values span [{int(a.min())}, {int(a.max())}], "
                               f"expected within [{lo}, {hi}] (op {op['name']!r}, field {fld!r}: {why})")
        return a

    def affine(i, op, fld_bits, bounds, mul_fields, n):
        muls = [values(op, f, (n,), -intops.MUL_MAX, intops.MUL_MAX, f"{intops.MUL_BITS}-bit signed multipliers")
                for f in mul_fields]
        bias = values(op, "bias", (n,), -(intops.INT64_SAFE - 1), intops.INT64_SAFE - 1, "below 2^62")
        values(op, "shift", (n,), 0, intops.MAX_SHIFT, "right shifts")
        bits = intops.affine_bits(bounds, muls, bias)
        if bits > 63:
            c.fail(f"ops[{i}].{fld_bits}", f"would be {bits}: x * mul + bias exceeds 62 bits (constants too large)")
        c.equal(c.key(op, fld_bits, f"ops[{i}]"), bits, f"ops[{i}].{fld_bits}", "the width of x * mul + bias, recomputed")

    n_ops = len(m["ops"])
    first_conv = next((op["name"] for op in m["ops"] if op["op"] == "conv"), None)
    for i, op in enumerate(m["ops"]):
        kind, name, f = op["op"], op["name"], f"ops[{i}]"
        dst = c.typed(op["dst"], f"{f}.dst", str)
        if not NAME_RE.match(dst):
            c.fail(f"{f}.dst", f"is {dst!r}, expected a letter or '_', then letters, digits, '_' or '.'")
        if dst in known or dst not in declared:
            c.fail(f"{f}.dst", f"is {dst!r}: expected a new tensor of 'tensors' (each computed once)")
        if dst != m.get("output", {}).get("tensor") and not readers.get(dst):
            c.fail(f"{f}.dst", f"is {dst!r}, which no later op reads (a stream without a consumer)")
        if kind == "conv":
            src = src_of(i, op, "src", op["src"], ("image", "codes"))
            k = c.int_in(op, "kernel", f, 1, MAX_KERNEL)
            s = c.int_in(op, "stride", f, 1, k)
            p = c.int_in(op, "padding", f, 0, k - 1)
            c.equal(op["in_hw"], src["hw"], f"{f}.in_hw", f"the height of its input {op['src']!r}")
            c.equal(op["out_hw"], (src["hw"] + 2 * p - k) // s + 1, f"{f}.out_hw",
                    "(in_hw + 2 * padding - kernel) // stride + 1")
            if op["out_hw"] < 1:
                c.fail(f"{f}.out_hw", f"is {op['out_hw']}: the kernel does not fit the padded input")
            c.equal(op["in_channels"], src["channels"], f"{f}.in_channels", f"the channels of its input {op['src']!r}")
            kept = c.int_list(op, "kept", f, 0, 1 << 20)
            if not kept:
                c.fail(f"{f}.kept", "is empty: a conv keeps at least one filter")
            if kept != sorted(set(kept)):
                c.fail(f"{f}.kept", f"is {kept!r}, expected ascending distinct filter indices")
            lv = level_ref(op["weight_levels"], f"{f}.weight_levels", True)
            if name != first_conv and lv.bits != spec.layer_bits.get(name, spec.wbits):
                c.fail(f"{f}.weight_levels", f"is {op['weight_levels']!r}, but 'spec' gives {name} "
                       f"{spec.layer_bits.get(name, spec.wbits)}-bit weights")
            w = weights(i, op, (len(kept), len(src["channels"]), k, k), lv)
            lo, hi, partial = intops.conv_bounds(w, src["lo"], src["hi"])
            lo, hi = int(lo.min(initial=0)), int(hi.max(initial=0))
            c.equal(op["acc_bits"], intops.signed_bits(lo, hi), f"{f}.acc_bits", "recomputed from the weights")
            c.equal(op["partial_bound"], partial, f"{f}.partial_bound", "recomputed from the weights")
            rd = readers.get(dst, [])
            if len(rd) != 1 or not (rd[0]["op"] == "requant" or (rd[0]["op"] == "add" and rd[0]["srcs"][0] == dst)):
                c.fail(f"{f}.dst", f"is {dst!r}: a conv's accumulators go to exactly one requant or add")
            out = tensor("acc", kept, op["out_hw"], lo, hi)
        elif kind == "requant":
            src = src_of(i, op, "src", op["src"], ("acc", "sum", "codes"))
            lv = level_ref(op["levels"], f"{f}.levels", False)
            c.equal(op["mode"], "affine" if lv.kind == "uniform" else "threshold", f"{f}.mode",
                    f"the mode of {lv.kind} output levels")
            c.number(op, "alpha", f)
            n, bound = len(src["channels"]), max(abs(src["lo"]), abs(src["hi"]))
            if op["mode"] == "threshold":
                th = values(op, "thresholds", (n, len(lv.ints) - 1), -(bound + 1), bound + 1,
                            "thresholds clamped to the input's range")
                sign = values(op, "sign", (n,), -1, 1, "-1 or +1")
                if np.any(sign == 0):
                    c.fail("sign", "holds 0, expected -1 or +1", d / array_file(name, "sign"))
                if th.size and np.any(np.diff(th, axis=1) < 0):
                    c.fail("thresholds", "are not ascending in every row", d / array_file(name, "thresholds"))
            else:
                affine(i, op, "product_bits", [bound], ["mul"], n)
            if src["kind"] == "sum" and op["mode"] != "affine":
                c.fail(f"{f}.mode", "is 'threshold': the average pool's sum is requantized by the affine unit")
            out = tensor("codes", src["channels"], src["hw"], 0, lv.denom, op["levels"])
        elif kind == "add":
            srcs = c.typed(op["srcs"], f"{f}.srcs", list)
            if len(srcs) != 2:
                c.fail(f"{f}.srcs", f"has {len(srcs)} entries, expected 2 (a conv output and a stream of codes)")
            acc = src_of(i, op, "srcs[0]", srcs[0], ("acc",))
            sc = src_of(i, op, "srcs[1]", srcs[1], ("codes",))
            if sets[sc["levels"]].kind != "uniform":
                c.fail(f"{f}.srcs[1]", f"is {srcs[1]!r} of levels {sc['levels']!r}, expected an 8-bit uniform stream")
            c.equal(acc["hw"], sc["hw"], f"tensors.{srcs[1]}.hw", f"the height of {srcs[0]!r}, which it is added to")
            lv = level_ref(op["levels"], f"{f}.levels", False)
            if lv.kind != "uniform" or lv.bits != spec.stream_bits:
                c.fail(f"{f}.levels", f"is {op['levels']!r}, expected the {spec.stream_bits}-bit uniform stream of "
                       "'spec.stream_bits' (export needs an 8-bit one)")
            c.number(op, "alpha", f)
            c.typed(op["requant"], f"{f}.requant", str)
            channels = sorted(set(acc["channels"]) | set(sc["channels"]))
            for key, s in (("conv_index", acc), ("shortcut_index", sc)):
                c.equal(op[key], [s["channels"].index(ch) if ch in s["channels"] else -1 for ch in channels],
                        f"{f}.{key}", "recomputed from the channels of the two inputs")
            affine(i, op, "product_bits", [max(-acc["lo"], acc["hi"]), sc["hi"]], ["mul", "shortcut_mul"],
                   len(channels))
            out = tensor("codes", channels, acc["hw"], 0, lv.denom, op["levels"])
        elif kind == "shortcut":
            src = src_of(i, op, "src", op["src"], ("codes",))
            s = c.int_in(op, "stride", f, 1, MAX_HW)
            pad = c.int_in(op, "pad_before", f, 0, 1 << 20)
            c.int_in(op, "channels_in", f, 0, 1 << 20)
            c.int_in(op, "channels_out", f, 0, 1 << 20)
            out = tensor("codes", [ch + pad for ch in src["channels"]], -(-src["hw"] // s), src["lo"], src["hi"],
                         src["levels"])
        elif kind == "maxpool":
            src = src_of(i, op, "src", op["src"], ("codes",))
            k = c.int_in(op, "size", f, 1, src["hw"])
            out = tensor("codes", src["channels"], src["hw"] // k, src["lo"], src["hi"], src["levels"])
        elif kind == "avgpool":
            src = src_of(i, op, "src", op["src"], ("codes",))
            c.equal(op["hw"], src["hw"], f"{f}.hw", f"the height of its input {op['src']!r}")
            area = src["hw"] ** 2
            rd = readers.get(dst, [])
            if len(rd) != 1 or rd[0]["op"] != "requant":
                c.fail(f"{f}.dst", f"is {dst!r}: the average pool's sum goes to exactly one requant")
            out = tensor("sum", src["channels"], 1, area * src["lo"], area * src["hi"])
        else:  # fc
            src = src_of(i, op, "src", op["src"], ("codes",))
            if src["hw"] != 1:
                c.fail(f"{f}.src", f"is {op['src']!r} of height {src['hw']}, expected a pooled (1 x 1) tensor")
            if i != n_ops - 1:
                c.fail(f"{f}.op", "is 'fc' before the last op: the fc gives the class scores, last")
            classes = c.key(m, "output", "", dict).get("classes")
            if type(classes) is not int or not 1 <= classes <= 1 << 16:
                c.fail("output.classes", f"is {classes!r}, expected a positive integer")
            lv = level_ref(op["weight_levels"], f"{f}.weight_levels", True)
            w = weights(i, op, (classes, len(src["channels"])), lv)
            shift = c.int_in(op, "shift", f, 0, FC_MAX_SHIFT)
            c.equal(op["bits"], FC_SCORE_BITS, f"{f}.bits", f"class scores are int{FC_SCORE_BITS}")
            bias = read(op, "bias", (classes,))
            lo, hi, partial = intops.conv_bounds(w, src["lo"], src["hi"])
            c.equal(op["acc_bits"], intops.signed_bits(int(lo.min()), int(hi.max())), f"{f}.acc_bits",
                    "recomputed from the weights")
            c.equal(op["partial_bound"], partial, f"{f}.partial_bound", "recomputed from the weights")
            limit = (1 << (FC_SCORE_BITS - 1)) - 1
            if np.abs(bias).max(initial=0) > limit:
                c.fail("bias", f"exceeds int{FC_SCORE_BITS}", d / array_file(name, "bias"))
            s_lo = int((lo.astype(object) * 2 ** shift + bias.astype(object)).min())
            s_hi = int((hi.astype(object) * 2 ** shift + bias.astype(object)).max())
            if max(-s_lo, s_hi) > limit:
                c.fail(f"{f}.shift", f"is {shift}: (acc << shift) + bias spans [{s_lo}, {s_hi}], beyond "
                       f"int{FC_SCORE_BITS}")
            out = tensor("scores", range(classes), 1, s_lo, s_hi)
        got = c.typed(declared[dst], f"tensors.{dst}", dict)
        for key, want in out.items():
            c.equal(got.get(key), want, f"tensors.{dst}.{key}", f"recomputed from op {name!r} and its inputs")
        if "levels" in out:
            c.number(got, "scale", f"tensors.{dst}")
        if max(abs(out["lo"]), abs(out["hi"])) >= intops.INT64_SAFE:
            c.fail(f"tensors.{dst}.hi", "exceeds 62 bits")
        known[dst] = out
    for name in declared:
        if name not in known:
            c.fail(f"tensors.{name}", "is computed by no op")
