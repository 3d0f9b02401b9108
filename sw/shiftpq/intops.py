"""Integer operations of the deployed network: the one home of the integer semantics.

docs/integer-semantics.md states these rules in prose; this module is their executable form, used by
export (to fold constants) and by the golden model (to run them). Every function takes and returns
NumPy integer arrays; activations are NHWC (channels last).

- Requantization (fused BatchNorm + ReLU + the next quantizer) maps an integer tensor ``x`` whose
  real value is ``gain[c] * x + offset[c]`` to the level index of the next quantizer:
  * APoT (non-uniform) outputs: per-channel integer thresholds,
    ``code = #{j : sign[c] * x >= thresholds[c, j]}``;
  * uniform outputs: fixed-point multiply-add, floor (arithmetic right shift) and clamp,
    ``code = clamp((x * mul[c] + bias[c]) >> shift, 0, top)``.
  Both reproduce the training quantizer's rule (round to nearest level, ties up, clip to [0, alpha])
  for the real value ``gain * x + offset``; thresholds exactly, the multiply-add to ``MUL_BITS``.
- Dot products are exact integer sums. They run through BLAS in floating point only where the
  worst-case bound proves every product and partial sum an exactly representable integer
  (``exact_matmul``), which is integer arithmetic with a faster engine.
"""
from __future__ import annotations

import math

import numpy as np

MUL_BITS = 25  # signed width of every fixed-point requantization multiplier (a DSP48 25x18 A operand)
MUL_MAX = (1 << (MUL_BITS - 1)) - 1
MAX_SHIFT = 40
INT64_SAFE = 1 << 62  # every intermediate of the integer model stays below this magnitude
_F32_EXACT = 1 << 24
_F64_EXACT = 1 << 53


def signed_bits(lo: int, hi: int) -> int:
    """Width of the smallest two's-complement integer holding every value in [lo, hi]."""
    lo, hi = int(lo), int(hi)
    b = 1
    while lo < -(1 << (b - 1)) or hi > (1 << (b - 1)) - 1:
        b += 1
    return b


def unsigned_bits(hi: int) -> int:
    return max(1, int(hi).bit_length())


def decode_weights(codes: np.ndarray, ints) -> np.ndarray:
    """Weight codes (``sign * index``) -> their integer values ``sign * ints[index]`` (int64)."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.sign(codes) * np.asarray(ints, dtype=np.int64)[np.abs(codes)]


# -- constants (export) ------------------------------------------------------------------------
def fold_thresholds(gain: np.ndarray, offset: np.ndarray, mids: np.ndarray, alpha: float,
                    bound: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer thresholds of ``relu(gain * x + offset)`` against the quantizer's decision levels.

    ``mids``: the level set's decision points in [0, 1] (midpoints of adjacent levels). Level j+1 is
    reached when ``gain * x + offset >= alpha * mids[j]``: for gain > 0 that is
    ``x >= ceil((alpha * mids[j] - offset) / gain)``; for gain < 0, ``-x >= ceil(... / -gain)``; for
    gain == 0 the comparison is constant. Thresholds are clamped to [-(bound + 1), bound + 1], which
    keeps every comparison for |x| <= bound. Returns (thresholds int64 [C, L-1], sign int8 [C])."""
    gain = np.asarray(gain, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    t = alpha * np.asarray(mids, dtype=np.float64)[None, :]  # [1, L-1]
    sign = np.where(gain < 0, -1, 1).astype(np.int8)
    mag = np.abs(gain)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.ceil((t - offset[:, None]) / np.where(mag > 0, mag, 1.0))
    const = np.where(offset[:, None] >= t, -(bound + 1), bound + 1)  # gain == 0: always / never
    th = np.where(mag > 0, np.clip(raw, -(bound + 1), bound + 1), const)
    return th.astype(np.int64), sign


def fold_affine(gains: list[np.ndarray], offset: np.ndarray, top: int, alpha: float
                ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Fixed-point constants of ``clamp(floor(relu(sum_k gains[k] * x_k + offset) / alpha * top + 1/2), 0, top)``.

    Per channel c: ``mul_k = round(gains[k] * top / alpha * 2**shift)``,
    ``bias = round((offset * top / alpha + 1/2) * 2**shift)``, with the largest ``shift[c]`` (at most
    MAX_SHIFT) that keeps every ``|mul_k[c]| <= MUL_MAX``: every channel gets the full multiplier width."""
    g = [np.asarray(gk, dtype=np.float64) * top / alpha for gk in gains]
    offset = np.asarray(offset, dtype=np.float64)
    biggest = np.max(np.abs(np.stack(g)), axis=0)
    shift = np.array([fixed_point_shift(v) for v in biggest], dtype=np.int64)
    scale = 2.0 ** shift
    muls = [np.round(gk * scale).astype(np.int64) for gk in g]
    bias = np.round((offset * top / alpha + 0.5) * scale).astype(np.int64)
    return muls, bias, shift


def fixed_point_shift(big: float) -> int:
    """The largest shift (at most MAX_SHIFT) with ``round(|big| * 2**shift) <= MUL_MAX``."""
    big = abs(float(big))
    if big == 0:
        return MAX_SHIFT
    shift = max(0, min(MAX_SHIFT, math.floor(math.log2(MUL_MAX / big))))
    while shift > 0 and round(big * 2.0 ** shift) > MUL_MAX:
        shift -= 1
    return shift


# -- runtime (golden model): tensors are NHWC (channels last), as the hardware streams them -----------
def requant_threshold(x: np.ndarray, thresholds: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """``code[..., c] = #{j : sign[c] * x[..., c] >= thresholds[c, j]}`` (uint8)."""
    big = max(int(np.abs(thresholds).max(initial=0)), int(np.abs(x).max(initial=0)))
    dtype = np.int32 if big < 1 << 31 else np.int64  # the same comparisons, half the memory traffic
    sx = x.astype(dtype) * sign.astype(dtype)
    th = thresholds.astype(dtype)
    code = np.zeros(x.shape, dtype=np.uint8)
    for j in range(th.shape[1]):
        code += (sx >= th[:, j]).view(np.uint8)
    return code


def requant_affine(terms: list[tuple[np.ndarray, np.ndarray]], bias: np.ndarray, shift: np.ndarray,
                   top: int) -> np.ndarray:
    """``clamp((sum_k x_k * mul_k[c] + bias[c]) >> shift[c], 0, top)``; ``>>`` is a floor (arithmetic shift)."""
    y = bias.astype(np.int64)
    for x, mul in terms:
        y = y + x.astype(np.int64) * mul
    return np.clip(y >> shift, 0, top).astype(np.uint8 if top < 256 else np.uint16)


def affine_bits(bounds: list[int], muls: list[np.ndarray], bias: np.ndarray) -> int:
    """Signed width of ``sum_k x_k * mul_k + bias`` for |x_k| <= bounds[k]."""
    worst = np.abs(bias).astype(object)
    for b, m in zip(bounds, muls):
        worst = worst + np.abs(m).astype(object) * int(b)
    top = int(max(worst, default=0))
    return signed_bits(-top, top)


def exact_matmul(a: np.ndarray, b: np.ndarray, abs_bound: int) -> np.ndarray:
    """a @ b for integer matrices, exactly, given ``abs_bound >= sum_k |a[i, k]| * |b[k, j]|``.

    Below 2**24 (float32) or 2**53 (float64) every product and every partial sum, in any order, is
    an integer the float format holds exactly, so BLAS returns the exact integer result."""
    if abs_bound < _F32_EXACT:
        return (a.astype(np.float32, copy=False) @ b.astype(np.float32)).astype(np.int64)
    if abs_bound < _F64_EXACT:
        return (a.astype(np.float64, copy=False) @ b.astype(np.float64)).astype(np.int64)
    return a.astype(np.int64) @ b.astype(np.int64)


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, padding: int, abs_bound: int) -> np.ndarray:
    """Integer 2-D convolution, NHWC values and OIHW weights, zero padding -> int64 NHWC accumulators."""
    n, h, wd, c = x.shape
    o, _, k, _ = w.shape
    engine = np.float32 if abs_bound < _F32_EXACT else np.float64 if abs_bound < _F64_EXACT else np.int64
    xp = np.zeros((n, h + 2 * padding, wd + 2 * padding, c), dtype=engine)
    xp[:, padding:padding + h, padding:padding + wd] = x
    ho, wo = (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1
    sn, sh, sw, sc = xp.strides
    win = np.lib.stride_tricks.as_strided(xp, (n, ho, wo, k, k, c), (sn, sh * stride, sw * stride, sh, sw, sc),
                                          writeable=False)
    cols = win.reshape(n * ho * wo, k * k * c)  # one copy; rows: (ky, kx, channel)
    acc = exact_matmul(cols, w.transpose(0, 2, 3, 1).reshape(o, k * k * c).T, abs_bound)
    return acc.reshape(n, ho, wo, o)


def conv_bounds(w: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per output channel, the least and greatest accumulator over all inputs in [lo, hi] (0 in it,
    so zero padding is covered), and the bound on |any partial sum| used by ``exact_matmul``."""
    w = w.reshape(w.shape[0], -1).astype(np.int64)
    acc_hi = np.maximum(w * hi, w * lo).sum(axis=1)
    acc_lo = np.minimum(w * hi, w * lo).sum(axis=1)
    partial = int((np.abs(w).sum(axis=1) * max(abs(lo), abs(hi))).max()) if w.size else 0
    return acc_lo, acc_hi, partial
