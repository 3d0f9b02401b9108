"""The integer-only golden model: runs uint8 images through the layer tables.

This is the bit-exact specification the hardware must match. It uses only integer arithmetic
(intops.py; the dot products go through BLAS only where a bound proves them exact) and checks every
accumulator and sum against the range the manifest declares: an out-of-range value raises.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from . import intops, ir
from .errors import ShiftPQError
from .ir import Tables


class GoldenError(ShiftPQError):
    pass


class Golden:
    """A loaded tables directory, ready to run batches: ``Golden(tables).run(images)``."""

    def __init__(self, tables: Tables):
        self.t = tables
        self._dec = {name: np.asarray(lv.ints, dtype=np.int32) for name, lv in tables.levels.items()}
        self._weights, self._luts, self._bounds = {}, {}, {}
        for op in tables.ops:
            if isinstance(op, ir.Requant) and tables.tensors[op.src].kind == ir.TensorKind.CODES:
                # a requant of codes has few possible inputs: tabulate it once (same function, same result)
                ints = self._dec[tables.tensors[op.src].levels]
                grid = np.repeat(ints[:, None], len(tables.tensors[op.dst].channels), axis=1)
                self._luts[op.name] = self._requant_values(op, grid)
            if isinstance(op, (ir.Conv, ir.FC)):
                self._weights[op.name] = intops.decode_weights(op.weight, self._dec[op.weight_levels]).astype(np.int32)
                # the exactness of the BLAS dot products rests on this bound: recompute it from the
                # weights rather than trust the manifest (which may count only live channels)
                src = tables.tensors[op.src]
                _, _, partial = intops.conv_bounds(self._weights[op.name], src.lo, src.hi)
                self._bounds[op.name] = max(partial, op.partial_bound)

    def code_table(self, op_name: str) -> np.ndarray:
        """[input codes, channels] table of a requant op that reads codes (what hardware stores as a ROM)."""
        return self._luts[op_name]

    def values(self, name: str, x: np.ndarray) -> np.ndarray:
        """The integer values of a tensor: codes are decoded to their level integers."""
        info = self.t.tensors[name]
        if info.kind != ir.TensorKind.CODES:
            return x
        table = self._dec[info.levels]
        return x if np.array_equal(table, np.arange(len(table))) else table[x]

    def _check(self, name: str, x: np.ndarray) -> np.ndarray:
        info = self.t.tensors[name]
        if info.kind in (ir.TensorKind.ACC, ir.TensorKind.SUM, ir.TensorKind.SCORES) and x.size:
            lo, hi = int(x.min()), int(x.max())
            if lo < info.lo or hi > info.hi:
                raise GoldenError(f"tensor {name!r} spans [{lo}, {hi}], outside its declared range "
                                  f"[{info.lo}, {info.hi}] ({info.bits} bits)")
        return x

    def run(self, images: np.ndarray, trace: bool = False):
        """Class scores (N, classes) int64 for uint8 images (N, 3, 32, 32); with ``trace``, also a
        dict of every tensor by name: NHWC (N, C after the pool), codes as level indices, physical
        channels in the order of the tensor's ``channels``."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != ir.INPUT_SHAPE:
            raise ShiftPQError(f"golden model input: expected uint8 images of shape (N, 3, 32, 32), "
                               f"got {images.dtype} {images.shape}")
        env = {self.t.input: images.transpose(0, 2, 3, 1).astype(np.int16) - ir.IMAGE_OFFSET}
        for op in self.t.ops:
            env[op.dst] = self.apply(op, env)
        out = env[self.t.output]
        return (out, env) if trace else out

    def apply(self, op: ir.Op, env: dict) -> np.ndarray:
        """The output of one op of the tables on the tensors of ``env`` (by name, as in the trace),
        range-checked against the manifest: how the unit benches get the expected output of a block
        on inputs of their own."""
        method = self.APPLY.get(type(op))
        if method is None:
            raise GoldenError(f"op {op.name!r}: the golden model has no semantics for {type(op).__name__}")
        return self._check(op.dst, method(self, op, env))

    # -- one method per op type ----------------------------------------------------------------
    def _conv(self, op: ir.Conv, env):
        x = self.values(op.src, env[op.src])
        return intops.conv2d(x, self._weights[op.name], op.stride, op.padding, self._bounds[op.name])

    def _requant(self, op: ir.Requant, env):
        x = env[op.src]
        lut = self._luts.get(op.name)
        if lut is not None:
            return lut[x, np.arange(lut.shape[1])]
        return self._requant_values(op, x)

    def _requant_values(self, op: ir.Requant, x):
        if op.mode == ir.RequantMode.THRESHOLD:
            return intops.requant_threshold(x, op.thresholds, op.sign)
        top = len(self.t.level_set(op.levels).ints) - 1
        return intops.requant_affine([(x, op.mul)], op.bias, op.shift, top)

    def _add(self, op: ir.Add, env):
        acc = env[op.conv_src].astype(np.int64)
        sc = self.values(op.shortcut_src, env[op.shortcut_src]).astype(np.int64)
        acc, sc = _gather(acc, op.conv_index), _gather(sc, op.shortcut_index)
        top = len(self.t.level_set(op.levels).ints) - 1
        return intops.requant_affine([(acc, op.mul), (sc, op.shortcut_mul)], op.bias, op.shift, top)

    def _shortcut(self, op: ir.Shortcut, env):
        s = op.stride
        return env[op.src][:, ::s, ::s]

    def _maxpool(self, op: ir.MaxPool, env):
        x = env[op.src]
        n, h, w, c = x.shape
        k = op.size
        return x[:, :h // k * k, :w // k * k].reshape(n, h // k, k, w // k, k, c).max(axis=(2, 4))

    def _avgpool(self, op: ir.AvgPool, env):
        return self.values(op.src, env[op.src]).astype(np.int64).sum(axis=(1, 2))

    def _fc(self, op: ir.FC, env):
        x = self.values(op.src, env[op.src])
        acc = intops.exact_matmul(x, self._weights[op.name].T, self._bounds[op.name])
        return (acc << op.shift) + op.bias

    # the semantics of every IR op type (an op type missing here is refused by name)
    APPLY = {ir.Conv: _conv, ir.Requant: _requant, ir.Add: _add, ir.Shortcut: _shortcut, ir.MaxPool: _maxpool,
             ir.AvgPool: _avgpool, ir.FC: _fc}


def _gather(x: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """Channels ``index`` of x (channels last); -1 gives a zero channel."""
    if tuple(index) == tuple(range(x.shape[-1])):
        return x
    x = np.concatenate([x, np.zeros(x.shape[:-1] + (1,), dtype=x.dtype)], axis=-1)
    return x[..., index]


def predict(scores: np.ndarray) -> np.ndarray:
    """The class decision: the highest score, ties to the lowest class index."""
    return np.argmax(scores, axis=1)


def run_batched(golden: Golden, images: np.ndarray, batch: int = 250, progress: bool = True,
                workers: int | None = None) -> np.ndarray:
    """Scores of many images, in batches run by ``workers`` threads (NumPy releases the GIL in its
    array loops). The result does not depend on the batching: images are independent."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm
    workers = workers or min(8, 2 * (os.cpu_count() or 1))  # 4 threads beat 2 by 1.2x on 2 cores
    chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
    if not chunks:
        return np.zeros((0, golden.t.classes), dtype=np.int64)
    outs = []
    with tqdm(total=len(images), desc="golden model", unit="img", disable=not progress, leave=False) as bar, \
            ThreadPoolExecutor(workers) as pool:
        for out in pool.map(golden.run, chunks):
            outs.append(out)
            bar.update(len(out))
    return np.concatenate(outs)


def fakequant_predictions(checkpoint: str, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """Top-1 classes of the PyTorch fake-quant model of a checkpoint (fp32, CPU)."""
    import torch

    from .checkpoint import load_model
    from .models import preprocess
    model, _ = load_model(checkpoint)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(model(preprocess(torch.from_numpy(images[i:i + batch]))).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def source_checkpoint(tables: Tables, override: str | None) -> str:
    """The checkpoint the tables came from (``override`` or the recorded path), its sha256 verified."""
    from .export import sha256_file
    src = tables.source or {}
    path = override or src.get("path")
    if not path or not Path(path).is_file():
        raise ShiftPQError(f"source checkpoint {path!r} of the tables not found: pass --checkpoint CKPT "
                           "(the file the tables were exported from) or --no-compare")
    digest = sha256_file(path)
    if src.get("sha256") and digest != src["sha256"]:
        raise ShiftPQError(f"{path}: sha256 {digest[:16]}... differs from the tables' field 'source.sha256' "
                           f"{src['sha256'][:16]}...: not the checkpoint these tables were exported from")
    return str(path)


def evaluate_tables(tables: Tables, images: np.ndarray, labels: np.ndarray, checkpoint: str | None = None,
                    compare: bool = True, progress: bool = True) -> dict:
    """Accuracy of the golden model and, with ``compare``, its agreement with the fake-quant model."""
    t0 = time.perf_counter()
    pred = predict(run_batched(Golden(tables), images, progress=progress))
    seconds = time.perf_counter() - t0
    report = {"model": tables.model, "images": int(len(labels)),
              "accuracy": round(100.0 * float((pred == labels).mean()), 4) if len(labels) else None,
              "golden_seconds": round(seconds, 2), "fakequant_accuracy": None, "agreement": None,
              "accuracy_difference": None}
    if compare:
        fq = fakequant_predictions(source_checkpoint(tables, checkpoint), images)
        report["fakequant_accuracy"] = round(100.0 * float((fq == labels).mean()), 4)
        report["agreement"] = round(100.0 * float((fq == pred).mean()), 4)
        report["accuracy_difference"] = round(report["accuracy"] - report["fakequant_accuracy"], 4)
    return report
