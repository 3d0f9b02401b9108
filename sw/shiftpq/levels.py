"""Quantization level sets: the one place where APoT and uniform levels are defined.

A level set is a sorted array of non-negative integer magnitudes ``ints`` and a
denominator ``denom == ints.max()``, so the real levels are ``ints / denom`` (top level 1).
Signed sets use these magnitudes with a sign; unsigned sets use them directly.

APoT (Li, Dong, Wang, ICLR 2020): with B magnitude bits, every level is the sum of one term
from each of a few power-of-two sets (each containing 0).  The sets below are exactly those of
the reference implementation (``build_power_value``).  Writing every term as ``2**-e`` and
scaling by ``2**max_e`` makes every level an integer that is a sum of at most ``len(terms)``
powers of two, which is what lets the hardware multiply by shifting and adding.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np

# Power-of-two exponents e (term = 2**-e) of each additive set, per number of magnitude bits B.
# 0 (the empty term) is implicit in every set.
_APOT_TERMS: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((1,),),
    2: ((1, 2, 3),),
    3: ((1, 2, 4), (3,)),
    4: ((1, 3, 5), (2, 4, 6)),
    5: ((1, 3, 6), (2, 4, 7), (5,)),
}

WEIGHT_BITS = (2, 3, 4, 5, 8)  # signed: 1 sign bit + B magnitude bits; 8 bits = uniform
ACT_BITS = (2, 3, 4, 5, 8)  # unsigned: B = bits magnitude bits; 8 bits = uniform
UNIFORM_BITS = 8  # at this width a level set is uniform (first conv, FC and its input)


@dataclass(frozen=True)
class LevelSet:
    kind: str  # "apot" or "uniform"
    bits: int  # total bits of a code, sign bit included for signed sets
    signed: bool
    ints: tuple[int, ...]  # magnitudes, sorted ascending, ints[0] == 0
    terms: tuple[tuple[int, ...], ...]  # per level: left-shift amounts whose sum is the level

    @property
    def denom(self) -> int:
        return self.ints[-1]

    @property
    def values(self) -> np.ndarray:
        """Magnitudes as float64, top level exactly 1."""
        return np.asarray(self.ints, dtype=np.float64) / self.denom

    @property
    def midpoints(self) -> np.ndarray:
        v = self.values
        return (v[1:] + v[:-1]) / 2

    @property
    def max_terms(self) -> int:
        return max(len(t) for t in self.terms)

    def to_json(self) -> dict:
        return {"kind": self.kind, "bits": self.bits, "signed": self.signed,
                "ints": list(self.ints), "denom": self.denom,
                "terms": [list(t) for t in self.terms]}


def _shifts(n: int) -> tuple[int, ...]:
    """Positions of the set bits of n, ascending: n == sum(1 << s for s in _shifts(n))."""
    return tuple(s for s in range(n.bit_length()) if n >> s & 1)


@lru_cache(maxsize=None)
def level_set(bits: int, signed: bool) -> LevelSet:
    """The level set used for a ``bits``-wide code (weights: signed, activations: unsigned)."""
    allowed = WEIGHT_BITS if signed else ACT_BITS
    if bits not in allowed:
        what = "weight" if signed else "activation"
        raise ValueError(f"unsupported {what} bit-width {bits!r}; expected one of {allowed}")
    mag_bits = bits - 1 if signed else bits
    if bits == UNIFORM_BITS or mag_bits not in _APOT_TERMS:
        top = (1 << mag_bits) - 1
        ints = tuple(range(top + 1))
        return LevelSet("uniform", bits, signed, ints, tuple(_shifts(i) for i in ints))
    sets = _APOT_TERMS[mag_bits]
    emax = max(max(s) for s in sets)
    # every level as an integer multiple of 2**-emax: a term 2**-e becomes 1 << (emax - e)
    sums = {sum(choice) for choice in product(*[(0,) + tuple(1 << (emax - e) for e in s) for s in sets])}
    raw = sorted(sums)
    # divide by the common power of two so that the top level is the smallest possible integer
    g = np.gcd.reduce(np.array(raw[1:]))
    ints = tuple(int(v // g) for v in raw)
    if len(ints) != 1 << mag_bits:
        raise AssertionError(f"APoT B={mag_bits} gave {len(ints)} levels")
    return LevelSet("apot", bits, signed, ints, tuple(_shifts(i) for i in ints))
