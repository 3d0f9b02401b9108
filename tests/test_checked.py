"""Refused components (checked.py): a component whose arguments are refused raises ValueError before
it exists, so Amaranth never reports it as created but unused; an accepted one that is never
elaborated still is."""
from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
from amaranth.hdl import Fragment, UnusedElaboratable, signed, unsigned

from shiftpq.levels import level_set
from shiftpq_hw.blocks import AvgPoolRequant, CodeLUT, FullyConnected, MaxPool
from shiftpq_hw.conv import ConvRequant
from shiftpq_hw.pe import MacArray, ShiftAddPE
from shiftpq_hw.requant import AffineRequant, ThresholdRequant

A4, W4 = level_set(4, False), level_set(4, True)
REFUSED = [
    (lambda: ShiftAddPE(A4, A4), "signed weight levels"),
    (lambda: MacArray("nonesuch", W4, A4, 1, 1), "MacArray needs a variant"),
    (lambda: ThresholdRequant(np.zeros((3, 15)), np.ones(2), signed(8)), "thresholds must be"),
    (lambda: AffineRequant([np.zeros(3)], np.zeros(3), np.zeros(3), 255, [signed(8), unsigned(8)]),
     "one multiplier array per input"),
    (lambda: CodeLUT(np.zeros((3, 2)), A4, A4), "one row per input code"),
    (lambda: CodeLUT(np.zeros((16, 2)), A4, A4, lanes=3), "lanes must be in 1..2"),
    (lambda: MaxPool(A4, 2, 6, 4), "multiple of the pool size"),
    (lambda: AvgPoolRequant(A4, A4, 8, np.ones(4), np.zeros(4), np.zeros(4), lanes=5), "lanes must be in"),
    (lambda: FullyConnected(np.zeros((10, 4)), W4, A4, np.zeros(10), 0, simd=5), "simd must be in"),
    (lambda: ConvRequant(np.zeros((2, 2, 3, 3)), W4, A4, A4, 1, 1, 6, {"mode": "affine"}, 10), "power of two"),
]


def _unused_warnings(make) -> list:
    Fragment.get(ShiftAddPE(W4, A4), None)  # Amaranth reports unused elaboratables once one is elaborated
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", UnusedElaboratable)
        make()
        gc.collect()
    return [w for w in seen if issubclass(w.category, UnusedElaboratable)]


@pytest.mark.parametrize("make,match", REFUSED)
def test_a_refused_component_is_never_created(make, match):
    def refused():
        with pytest.raises(ValueError, match=match):
            make()
    assert _unused_warnings(refused) == []


def test_an_accepted_component_never_elaborated_is_still_reported():
    assert len(_unused_warnings(lambda: ShiftAddPE(W4, A4))) == 1
