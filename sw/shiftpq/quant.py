"""APoT / uniform fake quantization for training (PyTorch side of the level sets in levels.py).

Conventions, written once and used by every quantized layer:
- A quantizer maps x to ``alpha * q(x / alpha)`` where q rounds to the nearest level of the
  layer's level set after clipping to [0, 1] (unsigned) or [-1, 1] (signed, by magnitude).
  Ties go to the larger magnitude (``bucketize(..., right=True)`` on the midpoints).
- ``alpha`` is a learnable clipping threshold with the reparameterized clipping gradient of
  APoT: weights ``dL/dalpha = sum g * (sign(x) if |x| > 1 else q(x) - x)`` with a plain
  straight-through weight gradient; activations ``dL/dalpha = sum g * (1 if x > 1 else q(x) - x)``
  and zero input gradient where x > 1 (x = input / alpha).
- Weights are scale-normalized before quantization, ``w_hat = w / std`` with the standard deviation
  of the kept filters' weights (no gradient through it), and the result is scaled back by ``std`` so
  that switching quantization on keeps the layer's output scale; ``std * alpha / denom`` is the
  layer's step. Unlike the APoT reference we do not subtract the mean: that forces every layer's
  effective weights to zero mean, a constraint QAT cannot undo (the normalization removes any mean
  it learns); on a pruned ResNet-20 it capped PPQ at 89.2% whatever the bits, lr or distillation.
- Pruning masks multiply what the forward pass uses: the quantized weights and the BatchNorm
  output, so a pruned channel is exactly 0 and its gradient is 0.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .levels import LevelSet, level_set

ALPHA_W_INIT = 3.0  # clipping of normalized weights, in standard deviations (APoT CIFAR code)
ALPHA_A_INIT = 8.0  # activation clipping before calibration (APoT CIFAR code)


# Three wrappers of the same math (the level nearest x / alpha, then ``_quant_grads``):
# - eager: an autograd.Function over bucketize and a table lookup (the fastest eager path; 3.0x the
#   FP step on an H200 against 4.2x through the custom ops, which add a stride-restoring copy per tensor);
# - under torch.compile, by default (``COMPILED_QUANTIZERS[0]``, "fused"): ``_FusedFakeQuant``, an
#   autograd.Function of plain element-wise ops that Dynamo traces and Inductor fuses into the
#   surrounding kernels: no bucketize, no gather, no table tensor. An APoT level is chosen by a chain of
#   compares against the midpoints (at most 15 for 16 levels), each selecting the next level's exact
#   float32 value (a float sum of the steps would round differently from the level table); the 8-bit
#   uniform set's index is round(x * n) corrected by one compare on each side against the arithmetic
#   midpoints (2k +- 1) / 2n. Equal to the eager path element for element, forward and backward
#   (tests/test_quant.py; the float32 level and midpoint arithmetic is checked exact for every level set);
# - under torch.compile with "ops": a pair of opaque custom ops, so that Inductor calls the eager
#   kernels instead of generating its own. Inductor's CUDA code for the quantizer once trained nothing
#   (ResNet-20 SPQ: 25 % after 30 epochs compiled, 88.4 % eager; docs/experiments.md, rounds 6 and 7),
#   and not because of bucketize alone: a version with the index found by compares and *gathers*
#   failed the same way. On the CPU, Inductor's code matches eager, which is why the CPU tests never
#   saw it. The fused quantizer has no gather; whether CUDA gets it right is checked at the start of
#   every GPU round (scripts/gpu_round.py), which falls back to "ops" if not.
#
# Outside a compiled model (eager training) and inside the custom ops, the quantizer's kernels are
# ``QUANT_KERNELS``: "table" (bucketize and a table lookup, eager PyTorch: about 8 passes over the tensor
# forward and 12 backward, each a kernel of its own) or "inductor": the fused quantizer's forward and
# gradient functions (``_fused_forward``, ``_fused_grads``), each compiled on its own by Inductor into one
# or two kernels; the model around them stays eager (or compiled with "ops"), so the whole-graph miscompile
# above cannot reach them. They equal the table element for element on the CPU (tests/test_quant.py, also
# with Inductor's CUDA lowering of a division by a constant forced on the CPU); on an H200 the 4-bit APoT
# pieces did on random inputs (bench/inductor_quant.py, round 9). Their divisions run in float64 (exact
# under any lowering: ``_fused_scaled``, ``_fused_levels``), and every GPU round compares them with the
# table on every level set of the model, at each midpoint and the floats beside it, before using them
# (``inductor_kernel_mismatches``).

def _strided_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t with like's strides (channels_last stays channels_last), as the fake kernels promise."""
    return t if t.stride() == like.stride() else torch.empty_like(like, dtype=t.dtype).copy_(t)


def _level_index(mag: torch.Tensor, mids: torch.Tensor) -> torch.Tensor:
    """Index of the level nearest each magnitude (clipped to [0, 1]); ties go to the larger level."""
    return torch.bucketize(mag.clamp(0.0, 1.0), mids, right=True)


def _levels_of(xs: torch.Tensor, vals: torch.Tensor, mids: torch.Tensor, signed: bool) -> torch.Tensor:
    """The level (in [0, 1], signed for weights) nearest each element of ``xs = x / alpha``, in xs's
    memory layout. bucketize and the table lookup compute in a contiguous layout: a channels_last
    tensor goes through as its NHWC view (already contiguous), so it costs no copy in and the
    result needs no copy back (nor the next conv a conversion)."""
    if xs.dim() == 4 and not xs.is_contiguous() and xs.is_contiguous(memory_format=torch.channels_last):
        return _levels_of(xs.permute(0, 2, 3, 1), vals, mids, signed).permute(0, 3, 1, 2)
    q = vals[_level_index(xs.abs() if signed else xs, mids)]
    return q.copysign(xs) if signed else q


def _fake_quant_forward(x, alpha, vals, mids, signed: bool) -> torch.Tensor:
    """alpha * q(x / alpha) in x's dtype (the "table" kernels)."""
    return (_levels_of(x.float() / alpha, vals, mids, signed) * alpha).to(x.dtype)


def _fake_quant_grads(g, x, alpha, vals, mids, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dx, dL/dalpha), recomputed from x (which the preceding ReLU or the weight already keeps
    alive) instead of saving two more activation-sized tensors. Weights: straight-through, dL/dx = g."""
    xs = x.float() / alpha
    return _quant_grads(g, xs, _levels_of(xs, vals, mids, signed), alpha, signed)


def _kernel_forward(x, alpha, vals, mids, signed: bool, consts: "FusedConsts") -> torch.Tensor:
    """``_fake_quant_forward`` by the selected ``QUANT_KERNELS``."""
    if _kernels["kind"] == "inductor":
        return _inductor_kernels()[0](x, alpha, consts, signed)
    return _fake_quant_forward(x, alpha, vals, mids, signed)


def _kernel_grads(g, x, alpha, vals, mids, signed: bool, consts: "FusedConsts") -> tuple[torch.Tensor, torch.Tensor]:
    """``_fake_quant_grads`` by the selected ``QUANT_KERNELS``."""
    if _kernels["kind"] == "inductor":
        gx, galpha = _inductor_kernels()[1](g, x, alpha, consts, signed)
        return (g if gx is None else gx), galpha
    return _fake_quant_grads(g, x, alpha, vals, mids, signed)


def _quant_grads(g, xs, q, alpha, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dx, dL/dalpha) from xs = x / alpha and its level q (module docstring)."""
    if signed:
        dalpha = torch.where(xs.abs() > 1, xs.sign(), q - xs)
        gx = g
    else:
        over = xs > 1
        dalpha = torch.where(over, torch.ones_like(xs), q - xs)
        gx = g * (~over).to(g.dtype)
    return gx, (g.float() * dalpha).sum().reshape(alpha.shape).to(alpha.dtype)


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, vals, mids, signed: bool, consts):
        ctx.save_for_backward(x, alpha, vals, mids)
        ctx.signed, ctx.consts = signed, consts
        return _kernel_forward(x, alpha, vals, mids, signed, consts)

    @staticmethod
    def backward(ctx, g):
        x, alpha, vals, mids = ctx.saved_tensors
        return *_kernel_grads(g, x, alpha, vals, mids, ctx.signed, ctx.consts), None, None, None, None


FusedConsts = tuple  # (bits, n, mids, vals): the level set's width, n = top integer level of a uniform
#                       set (0 for APoT), mids and vals the float32 midpoints and levels as Python floats


@lru_cache(maxsize=None)
def fused_consts(levels: LevelSet) -> FusedConsts:
    """The constants the fused quantizer bakes into its kernel for one level set. The uniform
    path's arithmetic (``(2k +- 1) / 2n`` and ``k / n`` in float64, rounded once to float32) must
    reproduce the level table bit for bit; that is checked here, once per level set."""
    vals = np.asarray(levels.values, dtype=np.float32)
    mids = np.asarray(levels.midpoints, dtype=np.float32)
    n = levels.denom if levels.kind == "uniform" else 0
    if n:
        k = np.arange(n + 1, dtype=np.float64)
        if not (np.array_equal((k / n).astype(np.float32), vals)
                and np.array_equal(((2 * k[:-1] + 1) / (2 * n)).astype(np.float32), mids)):
            raise AssertionError(f"uniform level set {levels.bits} bits: float64 arithmetic differs from the table")
    return levels.bits, n, tuple(float(m) for m in mids), tuple(float(v) for v in vals)


def _fused_levels(xs: torch.Tensor, consts: FusedConsts, signed: bool) -> torch.Tensor:
    """``_levels_of`` as element-wise ops only (no bucketize, no gather): the same values, ties to
    the larger magnitude, in xs's layout. The uniform path divides in float64 and rounds once to
    float32, which gives the table's float32 values however a compiler lowers the division (Inductor
    turns a division by a constant into a multiplication by its reciprocal on CUDA, which float32
    does not compute exactly, e.g. 8 of the 128 levels of the 8-bit set)."""
    _, n, mids, vals = consts
    mag = (xs.abs() if signed else xs).clamp(0.0, 1.0)
    if n:  # uniform: k = round(mag * n), off by at most one, corrected against the exact midpoints
        k = torch.floor(mag * n + 0.5).clamp(0, n)
        kd = k.double()
        k = (k - (mag < ((2 * kd - 1) / (2 * n)).float()).to(k.dtype)
             + (mag >= ((2 * kd + 1) / (2 * n)).float()).to(k.dtype))
        q = (k.double() / n).float()
    else:  # APoT: the last midpoint passed selects its level (count of midpoints <= mag)
        q = torch.zeros_like(mag)
        for m, v in zip(mids, vals[1:]):
            q = torch.where(mag >= m, v, q)
    return q.copysign(xs) if signed else q


def _fused_scaled(x, alpha) -> torch.Tensor:
    """x / alpha as the table path's float32 division computes it, in float64 rounded once to float32
    (exact, since a quotient of two float32 values never lies within 2^-49 of a float32 tie without
    being on it), so that a compiler's approximate float32 division (Triton's default) cannot move a
    value across a midpoint."""
    return (x.double() / alpha.double()).float()


def _fused_forward(x, alpha, consts: FusedConsts, signed: bool) -> torch.Tensor:
    """alpha * q(x / alpha) in x's dtype, element-wise ops only."""
    return (_fused_levels(_fused_scaled(x, alpha), consts, signed) * alpha).to(x.dtype)


def _fused_grads(g, x, alpha, consts: FusedConsts, signed: bool):
    """(dL/dx, dL/dalpha) as ``_quant_grads``, element-wise ops and one sum; dL/dx is None for weights
    (straight-through: it is g itself, which a compiled function should not hand back as an output)."""
    xs = _fused_scaled(x, alpha)
    gx, galpha = _quant_grads(g, xs, _fused_levels(xs, consts, signed), alpha, signed)
    return (None if signed else gx), galpha


@lru_cache(maxsize=None)
def _inductor_kernels():
    """The fused forward and gradients, each compiled on its own (the "inductor" kernels). One entry per
    level set, dtype, layout and sign is cached, each shape-generic after its first recompile: more
    than Dynamo's default of 8 entries per function, so the limit is raised."""
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, 64)
    return torch.compile(_fused_forward, fullgraph=True), torch.compile(_fused_grads, fullgraph=True)


def level_probes(bits: int, signed: bool, alpha: float, shape=(4, 4, 9, 9),
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Inputs where a quantizer goes wrong first: every midpoint x alpha (a tie), the float32 values
    just below and above it, every level, values past the clip; then random values over and past the
    clipping range (a few negatives for unsigned sets, as before a ReLU); both signs for signed sets.
    With alpha a power of two, x / alpha lands on the midpoints exactly; with any other alpha, within
    an ulp of them, which tests the division."""
    lv = level_set(bits, signed)
    n = 1
    for d in shape:
        n *= d
    mids = torch.tensor(lv.midpoints, dtype=torch.float32)
    edges = torch.cat([mids, mids.nextafter(torch.zeros(())), mids.nextafter(torch.ones(())),
                       torch.tensor(lv.values, dtype=torch.float32), torch.tensor([1.0, 1.5, 1e-9])]) * alpha
    if signed:
        edges = torch.cat([edges, -edges])
    x = torch.randn(n, generator=generator) * alpha * 0.6
    if not signed:
        x = x.abs() * torch.where(torch.rand(n, generator=generator) < 0.05, -1.0, 1.0)
    x[:min(n, len(edges))] = edges[:n]
    return x.reshape(shape)


def inductor_kernel_mismatches(device, sets, dtypes=(torch.float32, torch.bfloat16),
                               alphas=(0.5, 0.8)) -> dict[str, int]:
    """Elements where the "inductor" kernels differ from the "table" ones on ``level_probes`` (forward
    and input gradient; channels_last), per level set (bits, signed) and dtype: the check a GPU round
    runs before training with them (a compiler's division or constant folding shows here first)."""
    before = _kernels["kind"]
    out = {}
    gen = torch.Generator().manual_seed(0)
    try:
        for bits, signed in sets:
            lv = level_set(bits, signed)
            vals = torch.tensor(lv.values, dtype=torch.float32, device=device)
            mids = torch.tensor(lv.midpoints, dtype=torch.float32, device=device)
            consts = fused_consts(lv)
            for dtype in dtypes:
                bad = 0
                for a in alphas:
                    x = level_probes(bits, signed, a, (4, 4, 9, 9), gen).to(device=device, dtype=dtype)
                    x = x.contiguous(memory_format=torch.channels_last)
                    g = torch.randn(x.shape, generator=gen).to(device=device, dtype=dtype)
                    alpha = torch.tensor(a, device=device)
                    res = []
                    for kind in QUANT_KERNELS:
                        set_quant_kernels(kind)
                        res.append((_kernel_forward(x, alpha, vals, mids, signed, consts),
                                    _kernel_grads(g, x, alpha, vals, mids, signed, consts)[0]))
                    (f0, g0), (f1, g1) = res
                    bad += int((f0 != f1).sum()) + int((g0 != g1).sum())
                out[f"{lv.kind}{bits}{'s' if signed else 'u'}-{str(dtype).removeprefix('torch.')}"] = bad
    finally:
        set_quant_kernels(before)
    return out


class _FusedFakeQuant(torch.autograd.Function):
    """alpha * q(x / alpha) with the APoT gradients, traceable by Dynamo (what torch.compile runs)."""

    @staticmethod
    def forward(ctx, x, alpha, consts: FusedConsts, signed: bool):
        ctx.save_for_backward(x, alpha)
        ctx.consts, ctx.signed = consts, signed
        return _fused_forward(x, alpha, consts, signed)

    @staticmethod
    def backward(ctx, g):
        x, alpha = ctx.saved_tensors
        gx, galpha = _fused_grads(g, x, alpha, ctx.consts, ctx.signed)
        return (g if gx is None else gx), galpha, None, None


COMPILED_QUANTIZERS = ("fused", "ops")
_compiled = {"kind": COMPILED_QUANTIZERS[0]}


QUANT_KERNELS = ("table", "inductor")
_kernels = {"kind": QUANT_KERNELS[0]}


def set_quant_kernels(kind: str) -> None:
    """The quantizer's kernels outside a compiled model and inside the custom ops: "table" (eager
    bucketize and lookup) or "inductor" (the fused pieces, each compiled). Default: $SHIFTPQ_QUANT_KERNELS
    or table."""
    if kind not in QUANT_KERNELS:
        raise ValueError(f"quantizer kernels must be one of {QUANT_KERNELS}, got {kind!r}")
    _kernels["kind"] = kind


def _from_env(name: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"environment variable {name} must be one of {choices}, got {value!r}")
    return value


set_quant_kernels(_from_env("SHIFTPQ_QUANT_KERNELS", QUANT_KERNELS))


def set_compiled_quantizer(kind: str) -> None:
    """Which quantizer torch.compile traces: "fused" (element-wise ops, fused by Inductor) or "ops"
    (the opaque custom ops around the eager kernels). Default: $SHIFTPQ_COMPILED_QUANTIZER or fused."""
    if kind not in COMPILED_QUANTIZERS:
        raise ValueError(f"compiled quantizer must be one of {COMPILED_QUANTIZERS}, got {kind!r}")
    _compiled["kind"] = kind


set_compiled_quantizer(_from_env("SHIFTPQ_COMPILED_QUANTIZER", COMPILED_QUANTIZERS))


def _op_consts(bits: int, signed: bool) -> FusedConsts:
    return fused_consts(level_set(bits, signed))


@torch.library.custom_op("shiftpq::fake_quant", mutates_args=())
def fake_quant_op(x: torch.Tensor, alpha: torch.Tensor, vals: torch.Tensor, mids: torch.Tensor,
                  signed: bool, bits: int) -> torch.Tensor:
    return _strided_like(_kernel_forward(x, alpha, vals, mids, signed, _op_consts(bits, signed)), x)


@fake_quant_op.register_fake
def _(x, alpha, vals, mids, signed, bits):
    return torch.empty_like(x)


@torch.library.custom_op("shiftpq::fake_quant_backward", mutates_args=())
def fake_quant_backward_op(g: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, vals: torch.Tensor,
                           mids: torch.Tensor, signed: bool, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    gx, galpha = _kernel_grads(g, x, alpha, vals, mids, signed, _op_consts(bits, signed))
    return _strided_like(gx.clone() if gx is g else gx, g), galpha  # a custom op may not return its input


@fake_quant_backward_op.register_fake
def _(g, x, alpha, vals, mids, signed, bits):
    return torch.empty_like(g), torch.empty_like(alpha)


def _fake_quant_setup(ctx, inputs, output):
    x, alpha, vals, mids, signed, bits = inputs
    ctx.save_for_backward(x, alpha, vals, mids)
    ctx.signed, ctx.bits = signed, bits


def _fake_quant_op_grad(ctx, g):
    x, alpha, vals, mids = ctx.saved_tensors
    gx, galpha = fake_quant_backward_op(g, x, alpha, vals, mids, ctx.signed, ctx.bits)
    return gx, galpha, None, None, None, None


fake_quant_op.register_autograd(_fake_quant_op_grad, setup_context=_fake_quant_setup)


def fake_quant(x: torch.Tensor, alpha: torch.Tensor, vals: torch.Tensor, mids: torch.Tensor,
               signed: bool, consts: FusedConsts) -> torch.Tensor:
    """alpha * q(x / alpha): x clipped and rounded to the nearest of the levels ``vals`` (in [0, 1],
    midpoints ``mids``) and scaled back, with the APoT gradients (module docstring). ``consts`` is
    ``fused_consts`` of the same level set (the fused quantizer's constants)."""
    if torch.compiler.is_compiling():
        if _compiled["kind"] == "fused":
            return _FusedFakeQuant.apply(x, alpha, consts, signed)
        return fake_quant_op(x, alpha, vals, mids, signed, consts[0])
    return _FakeQuant.apply(x, alpha, vals, mids, signed, consts)


class Quantizer(nn.Module):
    """A learnable-alpha quantizer over one level set (activations: unsigned, weights: signed)."""

    def __init__(self, bits: int, signed: bool, alpha: float):
        super().__init__()
        self.levels = level_set(bits, signed)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.register_buffer("vals", torch.tensor(self.levels.values, dtype=torch.float32), persistent=False)
        self.register_buffer("mids", torch.tensor(self.levels.midpoints, dtype=torch.float32), persistent=False)
        self.consts = fused_consts(self.levels)
        self.enabled = False

    @property
    def bits(self) -> int:
        return self.levels.bits

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant(x, self.alpha, self.vals, self.mids, self.levels.signed, self.consts)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """Level index of each element of x (signed for weights: sign x index into the magnitudes)."""
        xs = x.float() / self.alpha.detach()
        idx = _level_index(xs.abs(), self.mids)
        return idx * xs.sign().long() if self.levels.signed else idx

    def ints_of(self, index: torch.Tensor) -> torch.Tensor:
        """Integer levels (signed for weights) of level indices, as used by the hardware."""
        ints = torch.tensor(self.levels.ints, device=index.device)[index.abs()]
        return ints * index.sign() if self.levels.signed else ints

    def extra_repr(self) -> str:
        return f"{self.levels.kind}{self.bits}, signed={self.levels.signed}, enabled={self.enabled}"


class ActQuant(Quantizer):
    """Quantizes a post-ReLU tensor; identity while disabled (full-precision training)."""

    def __init__(self, bits: int):
        super().__init__(bits, signed=False, alpha=ALPHA_A_INIT)

    def forward(self, x):
        return self.quantize(x) if self.enabled else x

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, grid: int = 64) -> float:
        """Set alpha to the MSE-optimal clipping threshold for the sample x (deterministic grid
        search over a strided subsample of at most 2**18 values)."""
        x = x.detach().float().flatten()
        x = x[::max(1, x.numel() >> 18)]
        top = float(x.max())
        if top <= 0:
            return float(self.alpha)
        best, best_err = top, float("inf")
        for k in range(1, grid + 1):
            a = torch.tensor(top * k / grid, device=x.device)
            err = float(((fake_quant(x, a, self.vals, self.mids, False, self.consts) - x) ** 2).mean())
            if err < best_err:
                best, best_err = top * k / grid, err
        self.alpha.fill_(best)
        return best


def _masked(t: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """t * mask along ``dim``."""
    shape = [1] * t.dim()
    shape[dim] = -1
    return t * mask.view(shape).to(t.dtype)


class _QWeight:
    """Mix-in state for a layer whose weight is fake-quantized and whose filters can be pruned."""

    def _init_qweight(self, bits: int, out_features: int):
        self.wq = Quantizer(bits, signed=True, alpha=ALPHA_W_INIT)
        self.register_buffer("mask", torch.ones(out_features))

    def _filter_mask(self) -> torch.Tensor:
        """The filter mask shaped to broadcast over the weight tensor."""
        return self.mask.view(-1, *[1] * (self.weight.dim() - 1))

    @property
    def frozen(self) -> bool:
        """Deployment form (``freeze``): fixed level indices instead of trainable float weights."""
        return hasattr(self, "frozen_index")

    def _norm_std(self) -> torch.Tensor:
        """Standard deviation of the kept filters' weights (no gradient flows through it)."""
        if self.frozen:
            return self.frozen_std
        with torch.no_grad():
            w, m = self.weight, self._filter_mask()
            n = m.sum() * w[0].numel()
            mean = (w * m).sum() / n
            return (((w - mean) ** 2) * m).sum().div(n - 1).sqrt().clamp_min(1e-8)

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        if self.frozen:  # the float operations of the quantizer below, from the stored levels
            idx = self.frozen_index.long()
            q = self.wq.vals[idx.abs()]
            w = (torch.where(idx < 0, -q, q) * self.wq.alpha) * self.frozen_std
        elif self.wq.enabled:
            std = self._norm_std()
            w = self.wq.quantize(w / std) * std
        return _masked(w, self.mask, 0)

    @torch.no_grad()
    def init_alpha(self) -> float:
        """APoT layers clip at ALPHA_W_INIT standard deviations; uniform (8-bit) layers have levels
        to spare and start at the largest normalized kept weight, so nothing is clipped."""
        alpha = ALPHA_W_INIT
        if self.wq.levels.kind == "uniform":
            kept = self._filter_mask() != 0
            alpha = float((self.weight / self._norm_std()).abs().masked_select(kept).max())
        self.wq.alpha.fill_(alpha)
        return alpha

    def _level_indices(self) -> torch.Tensor:
        """Signed level index of every weight, before the mask: stored (frozen) or quantized now."""
        return self.frozen_index.long() if self.frozen else self.wq.index(self.weight / self._norm_std())

    @torch.no_grad()
    def weight_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Signed integer level of every weight (pruned filters: 0) and the step, w_q = codes * step."""
        codes = self.wq.ints_of(self._level_indices())
        return _masked(codes, self.mask, 0), self._norm_std() * self.wq.alpha.detach() / self.wq.levels.denom

    @torch.no_grad()
    def weight_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The deployment form of the quantized weights: signed level indices (sign x index into the
        level set's magnitudes, int8; pruned filters 0) and the normalization std (``freeze``)."""
        return _masked(self._level_indices(), self.mask, 0).to(torch.int8), self._norm_std().clone()

    @torch.no_grad()
    def freeze(self, index: torch.Tensor, std: torch.Tensor) -> None:
        """Replace the trainable weights by the deployment form (``weight_index``): the layer then
        computes, from the indices, the same quantized weights in the same float operations, and the
        same ``weight_codes`` (what export reads). Load alpha and the mask first. ``weight`` holds the
        quantized weights afterwards and is no longer trained. ValueError names what does not fit."""
        top = len(self.wq.levels.ints) - 1
        if index.shape != self.weight.shape:
            raise ValueError(f"{tuple(index.shape)} indices for a weight of shape {tuple(self.weight.shape)}")
        worst = int(index.to(torch.int16).abs().max()) if index.numel() else 0  # int8 -128 has no int8 abs
        if worst > top:
            raise ValueError(f"level index {worst} outside the {self.wq.levels.kind}"
                             f"{self.wq.levels.bits} set (at most {top})")
        std = torch.as_tensor(std, dtype=torch.float32)
        if std.numel() != 1 or not bool(torch.isfinite(std).all()) or float(std) <= 0:
            raise ValueError(f"normalization std must be one finite positive number, got {std.tolist()}")
        dev = self.weight.device
        self.register_buffer("frozen_index", index.to(device=dev, dtype=torch.int8))
        self.register_buffer("frozen_std", std.reshape(()).to(dev))
        self.weight.requires_grad_(False)
        self.weight.copy_(self.effective_weight())


class QConv2d(nn.Conv2d, _QWeight):
    def __init__(self, cin, cout, k=3, stride=1, padding=1, bits=4):
        super().__init__(cin, cout, k, stride=stride, padding=padding, bias=False)
        self._init_qweight(bits, cout)

    def forward(self, x):
        return self._conv_forward(x, self.effective_weight(), None)


class QLinear(nn.Linear, _QWeight):
    def __init__(self, cin, cout, bits=8):
        super().__init__(cin, cout, bias=True)
        self._init_qweight(bits, cout)

    def forward(self, x):
        return F.linear(x, self.effective_weight(), self.bias)


class ConvBN(nn.Module):
    """Conv + BatchNorm whose pruned output channels are exactly zero.

    The mask multiplies both the quantized filter and the BatchNorm output, so a pruned channel
    carries 0 (not the BatchNorm shift) and the next conv's input channel can be removed physically.
    """

    def __init__(self, cin, cout, stride=1, bits=4):
        super().__init__()
        self.conv = QConv2d(cin, cout, 3, stride, 1, bits)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return _masked(y, self.conv.mask, 1)


@torch.no_grad()
def calibrate_quantizers(model, images: torch.Tensor) -> dict[str, float]:
    """Initialize the clipping thresholds when quantization is switched on: weight alphas by
    ``init_alpha``, activation alphas to the MSE-optimal clip for a fixed (un-augmented) batch.
    ``model``: a ``models.Net``; ``images``: uint8 [N, 3, 32, 32]."""
    from .models import model_input  # models builds its layers from this module's quantizers
    for layer in model.weight_layers().values():
        layer.init_alpha()
    seen: dict[str, torch.Tensor] = {}
    hooks = [q.register_forward_hook(lambda m, inp, out, n=n: seen.__setitem__(n, inp[0]))
             for n, q in model.act_quantizers().items()]
    was_training = model.training
    model.eval()
    quant = model.quantized
    model.set_quant(False)
    try:
        model(model_input(images))
    finally:
        for h in hooks:
            h.remove()
        model.set_quant(quant)
        model.train(was_training)
    return {n: q.calibrate(seen[n]) for n, q in model.act_quantizers().items()}
