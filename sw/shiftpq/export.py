"""Checkpoint -> layer tables: fold a quantized, pruned model into the integer IR (ir.py).

Walks the model's layer graph (graph.py) in execution order and lowers each graph op with the
function ``LOWERINGS`` names for its type, which appends IR ops (an activation quantizer after a
residual add is folded into the add, so it appends none):
conv (weight codes of the kept filters over the input channels that can be non-zero), requant (the
conv's BatchNorm, the ReLU and the next quantizer folded into thresholds or a fixed-point
multiply-add), add (the residual sum on a fixed-point scale), shortcut, maxpool, avgpool and fc.
Every tensor carries the real value of one integer unit (``gain``/``offset`` per channel) while
folding; the tables store only integers. Semantics: docs/integer-semantics.md, intops.py.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import intops, ir
from .errors import ShiftPQError
from .graph import Act, Add, AvgPool, Conv, Linear, MaxPool, ShortcutA
from .ir import Tables
from .levels import LevelSet
from .metrics import nonzero_channels
from .models import Net
from .tables import validate_tables

FC_SCORE_BITS = 32  # class scores are int32
FC_MAX_SHIFT = 16


@dataclass
class _T:
    """A tensor while folding: channels (logical indices), value range and real value per unit."""
    kind: str
    channels: list[int]
    hw: int
    lo: int
    hi: int
    gain: np.ndarray  # per channel: real value = gain * integer + offset
    offset: np.ndarray
    levels: str | None = None  # codes: the level set name; integer value = ints[code]

    def ir(self, name: str) -> ir.Tensor:
        return ir.Tensor(name=name, kind=ir.TensorKind(self.kind), channels=tuple(int(c) for c in self.channels),
                         hw=self.hw, lo=int(self.lo), hi=int(self.hi),
                         bits=intops.signed_bits(self.lo, self.hi) if self.lo < 0 else intops.unsigned_bits(self.hi),
                         levels=self.levels or None,
                         scale=float(self.gain[0]) if self.levels else None)  # informational: one level unit


def levels_name(lv: LevelSet) -> str:
    return f"{lv.kind}{lv.bits}{'s' if lv.signed else 'u'}"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weight_index(layer, keep: list[int], cols: list[int]) -> tuple[np.ndarray, float, LevelSet]:
    """Signed level indices (sign * index into the magnitudes) of the kept filters, the step."""
    values, step = layer.weight_codes()
    lv = layer.wq.levels
    v = values.cpu().numpy().astype(np.int64)[keep][:, cols]
    idx = np.searchsorted(np.asarray(lv.ints), np.abs(v))
    if not np.array_equal(np.asarray(lv.ints)[idx], np.abs(v)):
        raise AssertionError("weight codes outside their level set")
    return (np.sign(v) * idx).astype(np.int8), float(step), lv


def check_parameters(model: Net, where: str) -> None:
    """Refuse parameters no integer table can represent, naming the tensor: NaN or inf anywhere
    (weights, clipping thresholds, BatchNorm statistics), a negative BatchNorm variance, a pruning
    mask outside {0, 1}, a conv with every filter pruned (a clipping threshold <= 0: ``quantizer`` below)."""
    # a packed model's weights are derived (codes x alpha x std): its alpha is the field to name
    derived = {f"{path}.weight" for path, layer in model.weight_layer_paths().items() if layer.frozen}
    for key, v in model.state_dict().items():
        if not torch.is_floating_point(v) or key in derived:
            continue
        fld = f"{where}: field 'model.{key}'"
        if not bool(torch.isfinite(v).all()):
            bad = v[~torch.isfinite(v)].flatten()[0].item()
            raise ShiftPQError(f"{fld} holds {bad} ({int((~torch.isfinite(v)).sum())} of {v.numel()} values), "
                               "expected finite numbers")
        if key.endswith("running_var") and bool((v < 0).any()):
            raise ShiftPQError(f"{fld} holds {v.min().item():g}, expected a non-negative BatchNorm variance")
        if key.endswith(".mask"):
            if not bool(((v == 0) | (v == 1)).all()):
                odd = v[(v != 0) & (v != 1)].flatten()[0].item()
                raise ShiftPQError(f"{fld} holds {odd:g}, expected a pruning mask of 0 and 1 only")
            if v.numel() and not bool(v.any()):
                raise ShiftPQError(f"{fld} prunes every filter of {key[:-len('.mask')]}, expected at least one kept")


class _Lowering:
    """The state of one export: the model, the tensors folded so far (with their real scales), the
    level sets used and the IR ops emitted, in order."""

    def __init__(self, model: Net, source: dict, physical: bool):
        self.model, self.source, self.where = model, source, source.get("path") or "model"
        self.nz = nonzero_channels(model, fp32=not physical)
        self.live = nonzero_channels(model)  # bounds count only channels that can be non-zero, in both modes
        self.consumers: dict[str, list] = {}
        for op in model.ops:
            for s in (op.srcs if isinstance(op, Add) else (op.src,)):
                self.consumers.setdefault(s, []).append(op)
        self.levels: dict[str, LevelSet] = {}
        self.tensors: dict[str, _T] = {"input": _T("image", [0, 1, 2], 32, -128, 127, np.full(3, 1.0 / 128),
                                                   np.zeros(3))}
        self.ops: list[ir.Op] = []
        self.fused: set[str] = set()  # activation quantizers folded into a residual add

    def live_cols(self, src_name: str, src: _T) -> np.ndarray:
        return np.isin(src.channels, self.live[src_name])

    def use_levels(self, lv: LevelSet) -> str:
        self.levels.setdefault(levels_name(lv), lv)
        return levels_name(lv)

    def quantizer(self, op: Act):
        q = self.model.get_submodule(op.name)
        alpha = float(q.alpha)
        if not (np.isfinite(alpha) and alpha > 0):
            raise ShiftPQError(f"{self.source.get('path', 'model')}: field 'model.{op.name}.alpha' is {alpha}, "
                               "expected a positive clipping threshold")
        return q, q.levels, alpha, self.use_levels(q.levels)

    def codes(self, dst: str, channels: list[int], hw: int, lv: LevelSet, alpha: float, name: str):
        n = len(channels)
        self.tensors[dst] = _T("codes", channels, hw, 0, lv.denom, np.full(n, alpha / lv.denom), np.zeros(n), name)


# -- one lowering per graph op: graph.py's op -> IR ops appended to ``cx.ops`` -------------------------
def _lower_conv(cx: _Lowering, op: Conv):
    src, cb = cx.tensors[op.src], cx.model.get_submodule(op.name)
    if src.kind not in ("image", "codes"):
        raise ShiftPQError(f"export: conv {op.name!r} must read the image or quantized codes")
    keep = cx.nz[op.dst]
    w, step, lv = _weight_index(cb.conv, keep, src.channels)
    lo, hi, partial = intops.conv_bounds(intops.decode_weights(w, lv.ints) * cx.live_cols(op.src, src)[None, :, None, None],
                                         src.lo, src.hi)
    bn = cb.bn
    k = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).numpy()
    b = bn.bias.double().numpy() - bn.running_mean.double().numpy() * k
    mask = cb.conv.mask.double().numpy()
    k, b = (k * mask)[keep], (b * mask)[keep]
    # the input's real value per unit is one number for every kept input channel
    gain = k * step * float(src.gain[0])
    t = _T("acc", list(keep), op.out_hw, int(lo.min(initial=0)), int(hi.max(initial=0)), gain, b)
    cx.tensors[op.dst] = t
    cx.ops.append(ir.Conv(name=op.name, src=op.src, dst=op.dst, kernel=op.kernel, stride=op.stride,
                          padding=op.padding, in_hw=op.in_hw, out_hw=op.out_hw, in_channels=tuple(src.channels),
                          kept=tuple(keep), filters=op.cout, weight_levels=cx.use_levels(lv),
                          acc_bits=intops.signed_bits(t.lo, t.hi), partial_bound=int(partial),
                          bn_folded_into=cx.consumers[op.dst][0].name, weight=w))


def _lower_act(cx: _Lowering, op: Act):
    if op.name in cx.fused:
        return  # folded into the residual add before it
    src, (_, lv, alpha, name) = cx.tensors[op.src], cx.quantizer(op)
    bound = max(abs(src.lo), abs(src.hi))
    if lv.kind == "uniform":
        (mul,), bias, shift = intops.fold_affine([src.gain], src.offset, lv.denom, alpha)
        rq = ir.Requant(name=op.name, src=op.src, dst=op.dst, levels=name, mode=ir.RequantMode.AFFINE, alpha=alpha,
                        product_bits=intops.affine_bits([bound], [mul], bias), mul=mul, bias=bias, shift=shift)
    else:
        th, sign = intops.fold_thresholds(src.gain, src.offset, lv.midpoints, alpha, bound)
        rq = ir.Requant(name=op.name, src=op.src, dst=op.dst, levels=name, mode=ir.RequantMode.THRESHOLD,
                        alpha=alpha, thresholds=th, sign=sign)
    cx.ops.append(rq)
    cx.codes(op.dst, src.channels, src.hw, lv, alpha, name)


def _lower_add(cx: _Lowering, op: Add):
    # conv2's BatchNorm + the residual add + ReLU + the stream quantizer, as one fixed-point op
    conv, sc = cx.tensors[op.srcs[0]], cx.tensors[op.srcs[1]]
    if conv.kind != "acc" or sc.kind != "codes":
        raise ShiftPQError(f"export: residual add {op.name!r} must add a conv output and a stream of codes")
    nxt = cx.consumers.get(op.dst, [])
    if len(nxt) != 1 or not isinstance(nxt[0], Act):
        raise ShiftPQError(f"export: residual add {op.name!r} must feed exactly one activation quantizer")
    act = nxt[0]
    q, lv, alpha, name = cx.quantizer(act)
    if lv.kind != "uniform":
        raise ShiftPQError(f"{cx.source.get('path', 'model')}: field 'meta.spec.stream_bits' is {lv.bits}: "
                           "export needs the 8-bit uniform residual stream (the default)")
    cx.fused.add(act.name)
    channels = sorted(set(conv.channels) | set(sc.channels))
    ci = [conv.channels.index(c) if c in conv.channels else -1 for c in channels]
    si = [sc.channels.index(c) if c in sc.channels else -1 for c in channels]
    g = np.array([conv.gain[i] if i >= 0 else 0.0 for i in ci])
    off = np.array([conv.offset[i] if i >= 0 else 0.0 for i in ci])
    s_gain = np.array([sc.gain[0] if i >= 0 else 0.0 for i in si])
    (mul, smul), bias, shift = intops.fold_affine([g, s_gain], off, lv.denom, alpha)
    cx.codes(act.dst, channels, conv.hw, lv, alpha, name)
    cx.ops.append(ir.Add(name=op.name, srcs=tuple(op.srcs), dst=act.dst, levels=name, alpha=alpha, requant=act.name,
                         conv_index=tuple(ci), shortcut_index=tuple(si),
                         product_bits=intops.affine_bits([max(-conv.lo, conv.hi), sc.hi], [mul, smul], bias),
                         mul=mul, shortcut_mul=smul, bias=bias, shift=shift))


def _lower_shortcut(cx: _Lowering, op: ShortcutA):
    src = cx.tensors[op.src]
    if src.kind != "codes":
        raise ShiftPQError(f"export: shortcut {op.name!r} must carry codes")
    cx.tensors[op.dst] = _T("codes", [c + op.pad_before for c in src.channels], -(-src.hw // op.stride),
                            src.lo, src.hi, src.gain, src.offset, src.levels)
    cx.ops.append(ir.Shortcut(name=op.name, src=op.src, dst=op.dst, stride=op.stride, pad_before=op.pad_before,
                              channels_in=op.cin, channels_out=op.cout))


def _lower_maxpool(cx: _Lowering, op: MaxPool):
    src = cx.tensors[op.src]
    cx.tensors[op.dst] = _T(src.kind, src.channels, src.hw // op.size, src.lo, src.hi, src.gain,
                            src.offset, src.levels)
    cx.ops.append(ir.MaxPool(name=op.name, src=op.src, dst=op.dst, size=op.size))


def _lower_avgpool(cx: _Lowering, op: AvgPool):
    src = cx.tensors[op.src]
    area = op.in_hw * op.in_hw
    cx.tensors[op.dst] = _T("sum", src.channels, 1, area * src.lo, area * src.hi, src.gain / area, src.offset, None)
    cx.ops.append(ir.AvgPool(name=op.name, src=op.src, dst=op.dst, hw=op.in_hw))


def _lower_linear(cx: _Lowering, op: Linear):
    src, fc = cx.tensors[op.src], cx.model.fc
    if int(fc.mask.sum()) != fc.mask.numel():
        raise ShiftPQError(f"{cx.source.get('path', 'model')}: field 'model.fc.mask' prunes class outputs")
    w, step, lv = _weight_index(fc, list(range(op.cout)), src.channels)
    lo, hi, partial = intops.conv_bounds(intops.decode_weights(w, lv.ints) * cx.live_cols(op.src, src)[None, :],
                                         src.lo, src.hi)
    unit = step * float(src.gain[0])  # real logit per accumulator unit
    bias_units = fc.bias.double().numpy() / unit
    limit = (1 << (FC_SCORE_BITS - 1)) - 1
    worst = max(-int(lo.min()), int(hi.max())) + float(np.abs(bias_units).max()) + 1
    shift = FC_MAX_SHIFT
    while shift > 0 and worst * 2 ** shift > limit:
        shift -= 1
    bias = np.round(bias_units * 2.0 ** shift).astype(np.int64)
    s_lo, s_hi = int((lo * 2 ** shift + bias).min()), int((hi * 2 ** shift + bias).max())
    if max(-s_lo, s_hi) > limit:
        raise ShiftPQError(f"export: fc scores exceed int{FC_SCORE_BITS} (bias too large)")
    cx.tensors[op.dst] = _T("scores", list(range(op.cout)), 1, s_lo, s_hi, np.full(op.cout, unit * 2.0 ** -shift),
                            np.zeros(op.cout))
    cx.ops.append(ir.FC(name=op.name, src=op.src, dst=op.dst, weight_levels=cx.use_levels(lv), shift=shift,
                        acc_bits=intops.signed_bits(int(lo.min()), int(hi.max())), partial_bound=int(partial),
                        bits=FC_SCORE_BITS, weight=w, bias=bias))


# every op type of graph.py and its lowering; a type missing here is refused by name
LOWERINGS = {Conv: _lower_conv, Act: _lower_act, Add: _lower_add, ShortcutA: _lower_shortcut,
             MaxPool: _lower_maxpool, AvgPool: _lower_avgpool, Linear: _lower_linear}


def export_model(model: Net, source: dict, physical: bool = True) -> Tables:
    """The integer tables of a quantized model. ``physical=False`` keeps pruned filters and channels
    (as zero weights and zero constants): the same function, for testing that removal is exact."""
    if not model.quantized:
        raise ShiftPQError(f"{source.get('path', 'model')}: field 'meta.quantized' is false: a full-precision "
                           "checkpoint has no quantizers; export a QAT checkpoint (train --method spq or ppq)")
    model = model.cpu().eval()
    check_parameters(model, source.get("path") or "model")
    cx = _Lowering(model, source, physical)
    with torch.no_grad():
        for op in model.ops:
            lower = LOWERINGS.get(type(op))
            if lower is None:
                raise ShiftPQError(f"export: unsupported layer type {type(op).__name__} (op {op.name!r})")
            lower(cx, op)
    for t in cx.tensors.values():
        if max(abs(t.lo), abs(t.hi)) >= intops.INT64_SAFE:
            raise ShiftPQError("export: an intermediate exceeds 62 bits")
    tables = Tables(model=model.spec.name, spec=model.spec.to_json(), source=source, physical=physical,
                    levels=cx.levels, tensors={n: t.ir(n) for n, t in cx.tensors.items()}, ops=tuple(cx.ops),
                    input="input", output=model.ops[-1].dst, classes=model.ops[-1].cout)
    if physical:  # what load_tables will accept, checked before anything is written
        validate_tables(tables, f"{source.get('path') or 'model'} (its exported tables)")
    return tables


def export_checkpoint(path: str | Path, physical: bool = True) -> Tables:
    from .checkpoint import load_model
    model, meta = load_model(path)
    # the path relative to the working directory when it lies inside it (a project's own checkpoint:
    # two clones export byte-identical tables), else absolute; sha256 names the content either way
    where = Path(path).resolve()
    if where.is_relative_to(Path.cwd().resolve()):
        where = where.relative_to(Path.cwd().resolve())
    source = {"path": where.as_posix(), "sha256": sha256_file(path), "epoch": meta.get("epoch"),
              "test_accuracy": meta.get("test_accuracy")}
    return export_model(model, source, physical)


UNTRAINED_NOTE = ("UNTRAINED: random weights (seeded), 30% GM pruning per residual-stream group, quantizers "
                  "calibrated on random images; for building and testing hardware, not for classifying")


def untrained_tables(name: str, seed: int = 0, rate: float = 0.3) -> Tables:
    """A deterministic, clearly labelled untrained model's tables: the structure and bit widths of the
    real thing (``name`` at ``rate`` GM pruning, W4/A4, 8-bit first and last layer), random weights.
    The generator's default where no trained checkpoint is shipped."""
    from .models import ModelSpec
    from .pruning import gm_prune, layer_rates, zero_pruned
    from .quant import calibrate_quantizers
    spec = ModelSpec(name)
    spec.validate()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Net(spec)
    gm_prune(model, layer_rates(model, rate), incremental=True, grouped=True)
    zero_pruned(model)
    model.set_quant(True)
    calibrate_quantizers(model, torch.randint(0, 256, (64, 3, 32, 32), generator=gen, dtype=torch.uint8))
    source = {"path": None, "untrained": True, "seed": seed, "rate": rate, "note": UNTRAINED_NOTE}
    return export_model(model.eval(), source)
