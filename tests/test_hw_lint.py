"""Every hardware component converts to Verilog that passes Verilator's lint (with only the waivers
of shiftpq_hw.verilog) and compiles in Icarus; the multiplier-free ones contain no $mul."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from amaranth.back import rtlil, verilog
from amaranth.hdl import signed, unsigned

from shiftpq import intops, ir
from shiftpq.export import export_model
from shiftpq.levels import level_set
from shiftpq.testnets import random_net
from shiftpq_hw.conv import ConvRequant
from shiftpq_hw.pe import ShiftAddPE
from shiftpq_hw.requant import AffineRequant, ThresholdRequant
from shiftpq_hw.verilog import verilator_lint_args


def _conv(simd=None):
    t = export_model(random_net(1), {"path": "random"})
    conv = next(op for op in t.ops if op.name == "layer2.0.conv1")
    rq = next(op for op in t.ops if isinstance(op, ir.Requant) and op.src == conv.dst)
    return ConvRequant.from_tables(t, conv, rq, lanes=1 if simd else None, simd=simd)


def _blocks():
    from amaranth.lib import data
    from shiftpq_hw.blocks import AvgPoolRequant, CodeLUT, Fork, FullyConnected, MaxPool, ShortcutPath
    from shiftpq_hw.pe import act_code_shape
    u8, a4 = level_set(8, False), level_set(4, False)
    px = data.ArrayLayout(act_code_shape(u8), 3)
    return {"fork": (lambda: Fork(px), False),
            "shortcut": (lambda: ShortcutPath(px, 8, 2), False),
            "codelut": (lambda: CodeLUT(np.arange(256)[:, None].repeat(3, 1) // 16, u8, a4), False),
            "codelut_lanes": (lambda: CodeLUT(np.arange(256)[:, None] * np.arange(1, 6) // 80, u8, a4, 2), False),
            "avgpool": (lambda: AvgPoolRequant(u8, u8, 8, [1 << 20] * 3, [1 << 19] * 3, [26] * 3), True),
            "fc": (lambda: FullyConnected(np.ones((10, 3), dtype=int), level_set(8, True), u8, np.zeros(10), 4), True),
            "fc_folded": (lambda: FullyConnected(np.ones((10, 5), dtype=int), level_set(8, True), u8, np.zeros(10), 4,
                                                 simd=2), True),
            "maxpool": (lambda: MaxPool(a4, 3, 8, 2), False)}


def _components():
    lv = level_set(4, False)
    th, sign = intops.fold_thresholds(np.array([0.01, -0.02]), np.array([0.1, 0.2]), lv.midpoints, 2.0, 4000)
    (m0, m1), bias, shift = intops.fold_affine([np.array([1e-5, 2e-5]), np.array([0.01, 0.01])], np.zeros(2), 255, 3.0)
    return {"pe": (lambda: ShiftAddPE(level_set(4, True), lv), False),
            "threshold": (lambda: ThresholdRequant(th, sign, signed(13)), False),
            "affine": (lambda: AffineRequant([m0, m1], bias, shift, 255, [signed(20), unsigned(8)]), True),
            "conv": (_conv, False), "conv_folded": (lambda: _conv(simd=2), False), **_blocks()}


@pytest.mark.parametrize("name", ["pe", "threshold", "affine", "conv", "conv_folded", "fork", "shortcut", "codelut",
                                  "avgpool", "fc", "fc_folded", "maxpool"])
def test_component_lints_compiles_and_multiplies_only_where_meant(name, tmp_path):
    make, multiplies = _components()[name]
    (tmp_path / "top.v").write_text(verilog.convert(make(), name="top"))
    lint = subprocess.run(["verilator", *verilator_lint_args(), "top.v"], cwd=tmp_path, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stderr
    ivl = subprocess.run(["iverilog", "-o", "top.vvp", "top.v"], cwd=tmp_path, capture_output=True, text=True)
    assert ivl.returncode == 0, ivl.stderr
    assert ("$mul" in rtlil.convert(make(), name="top")) == multiplies
