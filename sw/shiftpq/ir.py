"""The integer IR: the deployed network as typed, immutable objects (one class per op and per tensor).

This module is the whole integer program a checkpoint becomes. Export (export.py) lowers the
PyTorch layer graph to it, tables.py loads and saves it (``manifest.json`` + one ``.npy`` per
array), the golden model (golden.py) runs it and the hardware generators map it to blocks. The
meaning of every field is in docs/integer-semantics.md; the field names are the manifest's keys.

    Tables                      the root: model, spec, source, level sets, tensors, ops in order
      levels: name -> LevelSet  quantization level sets (levels.py), e.g. apot4u, uniform8u
      tensors: name -> Tensor   kind (TensorKind), logical channels, height, value range, width
      ops: (Op, ...)            in execution order, each reading ``inputs`` and writing ``dst``:
        Conv      acc = sum of weight values x input values (the kept filters, zero padding)
        Requant   codes = requantized x (RequantMode.THRESHOLD: a threshold count; AFFINE: a
                  fixed-point multiply-add, shift, clamp)
        Add       codes = affine requant of a conv's acc plus a shortcut's values (residual)
        Shortcut  option-A shortcut: every ``stride``-th pixel, channels renamed by ``pad_before``
        MaxPool   maximum of level indices over size x size windows
        AvgPool   sum over the whole map (the 1/hw^2 is folded into the Requant after it)
        FC        scores = (weights . values << shift) + bias

Arrays (weights, thresholds, multipliers, ...) are fields of their op; they take no part in
equality or hashing (compare them with ``np.array_equal``). Provenance fields that no consumer
reads (``alpha``, ``filters``, ``bn_folded_into``, ``channels_in``/``channels_out``, an add's
``requant``, a tensor's ``scale``) are kept so that saving gives the same files. Fields that may be
absent from a manifest are ``None`` here and absent again when saved.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

import numpy as np

from .levels import LevelSet

IMAGE_LEVELS = "image"  # the name of the input image's "level set": int8 pixel - 128, no codes
IMAGE_OFFSET = 128  # the hardware reads pixel - 128 (the model's input is (pixel - 128) / 128)
INPUT_SHAPE = (3, 32, 32)  # a uint8 CIFAR-10 image


class TensorKind(StrEnum):
    IMAGE = "image"  # the input: pixel - 128
    CODES = "codes"  # level indices of a level set (``Tensor.levels``)
    ACC = "acc"  # a conv's accumulators
    SUM = "sum"  # the average pool's sums
    SCORES = "scores"  # the class scores


class RequantMode(StrEnum):
    THRESHOLD = "threshold"  # APoT outputs: code = #{j : sign * x >= thresholds[j]}
    AFFINE = "affine"  # uniform outputs: code = clamp((x * mul + bias) >> shift, 0, top)


def _array():
    """An array field of an op: not compared, not hashed, not shown."""
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Tensor:
    name: str
    kind: TensorKind
    channels: tuple[int, ...]  # logical channel indices (of the unpruned model) that exist physically
    hw: int  # height = width
    lo: int  # worst-case value range
    hi: int
    bits: int  # the width that holds [lo, hi] (signed when lo < 0)
    levels: str | None = None  # codes: the name of their level set
    scale: float | None = None  # codes: the real value of one level unit (informational)


@dataclass(frozen=True)
class Op:
    """One integer op: reads the tensors ``inputs``, writes the tensor ``dst``."""
    OP: ClassVar[str]  # the manifest's "op" value
    ARRAYS: ClassVar[dict[str, str]] = {}  # array fields -> dtype
    name: str
    dst: str

    @property
    def inputs(self) -> tuple[str, ...]:
        """The tensors it reads: its ``src`` (an ``Add`` reads two)."""
        return (self.src,)

    def arrays(self) -> dict[str, np.ndarray]:
        """The op's arrays by field name (those its type or mode declares)."""
        return {f: getattr(self, f) for f in self.array_fields()}

    def array_fields(self) -> dict[str, str]:
        return self.ARRAYS


@dataclass(frozen=True)
class Conv(Op):
    OP: ClassVar[str] = "conv"
    ARRAYS: ClassVar[dict[str, str]] = {"weight": "int8"}
    src: str
    kernel: int
    stride: int
    padding: int
    in_hw: int
    out_hw: int
    in_channels: tuple[int, ...]  # = the input tensor's channels
    kept: tuple[int, ...]  # the filters kept by pruning, ascending
    weight_levels: str  # level set of the weight codes
    acc_bits: int
    partial_bound: int  # no partial sum of a filter exceeds it in magnitude
    weight: np.ndarray = _array()  # int8 signed level indices [kept, in_channels, kernel, kernel]
    filters: int | None = None  # provenance: filters of the unpruned layer
    bn_folded_into: str | None = None  # provenance: the op its BatchNorm is folded into


@dataclass(frozen=True)
class Requant(Op):
    OP: ClassVar[str] = "requant"
    MODE_ARRAYS: ClassVar[dict[RequantMode, dict[str, str]]] = {
        RequantMode.THRESHOLD: {"thresholds": "int64", "sign": "int8"},
        RequantMode.AFFINE: {"mul": "int64", "bias": "int64", "shift": "int64"}}
    src: str
    levels: str  # the output's level set
    mode: RequantMode
    alpha: float  # provenance: the quantizer's clipping threshold
    product_bits: int | None = None  # affine: the width of x * mul + bias
    thresholds: np.ndarray = _array()  # threshold: [channels, levels - 1], ascending rows
    sign: np.ndarray = _array()  # threshold: [channels] of -1 / +1
    mul: np.ndarray = _array()  # affine: [channels] each
    bias: np.ndarray = _array()
    shift: np.ndarray = _array()

    def array_fields(self) -> dict[str, str]:
        return self.MODE_ARRAYS[self.mode]


@dataclass(frozen=True)
class Add(Op):
    OP: ClassVar[str] = "add"
    ARRAYS: ClassVar[dict[str, str]] = {"mul": "int64", "shortcut_mul": "int64", "bias": "int64",
                                        "shift": "int64"}
    srcs: tuple[str, str]  # (the conv's acc, the shortcut's codes)
    levels: str  # the output's level set (the uniform residual stream)
    conv_index: tuple[int, ...]  # per output channel: its index in the conv's channels, or -1
    shortcut_index: tuple[int, ...]  # per output channel: its index in the shortcut's channels, or -1
    product_bits: int
    alpha: float  # provenance: the stream quantizer's clipping threshold
    requant: str  # provenance: the name of that quantizer
    mul: np.ndarray = _array()  # [channels] each
    shortcut_mul: np.ndarray = _array()
    bias: np.ndarray = _array()
    shift: np.ndarray = _array()

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.srcs

    @property
    def conv_src(self) -> str:
        return self.srcs[0]

    @property
    def shortcut_src(self) -> str:
        return self.srcs[1]


@dataclass(frozen=True)
class Shortcut(Op):
    OP: ClassVar[str] = "shortcut"
    src: str
    stride: int
    pad_before: int  # output channel = input channel + pad_before
    channels_in: int  # provenance: the unpruned channel counts
    channels_out: int


@dataclass(frozen=True)
class MaxPool(Op):
    OP: ClassVar[str] = "maxpool"
    src: str
    size: int


@dataclass(frozen=True)
class AvgPool(Op):
    OP: ClassVar[str] = "avgpool"
    src: str
    hw: int  # the input's height: the sum runs over hw x hw pixels


@dataclass(frozen=True)
class FC(Op):
    OP: ClassVar[str] = "fc"
    ARRAYS: ClassVar[dict[str, str]] = {"weight": "int8", "bias": "int64"}
    src: str
    weight_levels: str
    shift: int
    acc_bits: int
    partial_bound: int
    bits: int  # the scores' width (32)
    weight: np.ndarray = _array()  # int8 signed level indices [classes, in channels]
    bias: np.ndarray = _array()  # int64 [classes]


OP_TYPES: tuple[type[Op], ...] = (Conv, Requant, Add, Shortcut, MaxPool, AvgPool, FC)
OP_BY_NAME: dict[str, type[Op]] = {t.OP: t for t in OP_TYPES}


def array_file(op_name: str, field_name: str) -> str:
    """The file of one array of an op in a tables directory."""
    return f"{op_name}.{field_name}.npy"


@dataclass(frozen=True, eq=True)
class Tables:
    """The integer program of one network: what a tables directory holds."""
    model: str  # the architecture's name (models.py)
    spec: dict = field(hash=False)  # ModelSpec.to_json() of the trained model
    source: dict | None = field(hash=False)  # provenance: the checkpoint (path, sha256, ...) or the untrained seed
    levels: dict[str, LevelSet] = field(hash=False)  # the level sets by name (the image has none)
    tensors: dict[str, Tensor] = field(hash=False)  # by name, in the order they are computed
    ops: tuple[Op, ...]  # in execution order
    input: str  # the image tensor
    output: str  # the scores tensor (the last op's dst)
    classes: int
    physical: bool | None = None  # False: pruned filters kept as zeros (a test mode of export)

    def tensor(self, name: str) -> Tensor:
        return self.tensors[name]

    def level_set(self, name: str) -> LevelSet:
        return self.levels[name]

    def op(self, name: str) -> Op:
        """The op named ``name``."""
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(f"no op named {name!r}")

    def readers(self, tensor: str) -> list[Op]:
        """The ops that read ``tensor``, in execution order."""
        return [op for op in self.ops if tensor in op.inputs]

    def producer(self, tensor: str) -> Op | None:
        """The op that writes ``tensor`` (None for the input)."""
        return next((op for op in self.ops if op.dst == tensor), None)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of every op, by file name (``<op>.<field>.npy``)."""
        return {array_file(op.name, f): a for op in self.ops for f, a in op.arrays().items()}
