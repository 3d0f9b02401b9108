"""The typed integer IR: tables round-trip through it byte for byte, and every op type has an
exporter, golden-model semantics and a hardware mapping (a missing one is refused by name)."""
from __future__ import annotations

import dataclasses
import json
import typing

import numpy as np
import pytest

from shiftpq import export, graph, ir
from shiftpq.errors import ShiftPQError
from shiftpq.export import export_model
from shiftpq.golden import Golden, GoldenError
from shiftpq.tables import MANIFEST, load_tables, save_tables
from shiftpq_hw.plan import make_plan
from shiftpq.testnets import images, random_net


@pytest.fixture(scope="module")
def nets():
    """A residual network (conv, requant, add, shortcut, avgpool, fc) and a plain one (maxpool)."""
    return {"tiny": random_net(2), "tinyvgg": random_net(0, "tinyvgg")}


@pytest.fixture(scope="module")
def exported(nets):
    return {name: export_model(net, {"path": "r"}) for name, net in nets.items()}


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _same_arrays(a: ir.Tables, b: ir.Tables):
    x, y = a.arrays(), b.arrays()
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k


@pytest.mark.parametrize("name", ["tiny", "tinyvgg"])
def test_load_save_load_round_trips_to_identical_files_and_equal_ir(name, exported, tmp_path):
    t0 = exported[name]
    save_tables(t0, tmp_path / "a")
    t1 = load_tables(tmp_path / "a")
    save_tables(t1, tmp_path / "b")
    t2 = load_tables(tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert t0 == t1 == t2 and t0.ops == t2.ops and t0.tensors == t2.tensors
    _same_arrays(t0, t2)
    assert all(isinstance(op, ir.OP_TYPES) for op in t2.ops)
    assert all(isinstance(x.kind, ir.TensorKind) for x in t2.tensors.values())
    assert {op.mode for op in t2.ops if isinstance(op, ir.Requant)} <= set(ir.RequantMode)


def test_fields_absent_from_a_manifest_stay_absent_when_saved(exported, tmp_path):
    """Provenance a manifest may lack (a conv's 'filters' and 'bn_folded_into', 'physical') loads as
    None and is saved as absent: the files round-trip whatever optional fields they hold."""
    save_tables(exported["tiny"], tmp_path / "a")
    m = json.loads((tmp_path / "a" / MANIFEST).read_text())
    del m["physical"]
    for op in m["ops"]:
        op.pop("filters", None)
        op.pop("bn_folded_into", None)
    (tmp_path / "a" / MANIFEST).write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
    t = load_tables(tmp_path / "a")
    assert t.physical is None and all(op.filters is None for op in t.ops if isinstance(op, ir.Conv))
    save_tables(t, tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_every_op_type_has_an_exporter_golden_semantics_and_a_hardware_mapping(exported):
    assert set(export.LOWERINGS) == set(typing.get_args(graph.Op))
    assert set(Golden.APPLY) == set(ir.OP_TYPES)
    produced = set()
    for t in exported.values():
        produced |= {type(op) for op in t.ops}
        plan = make_plan(t, None)
        mapped = {type(t.op(name)) for b in plan.blocks for name in b.ops}
        assert mapped == {type(op) for op in t.ops}
    assert produced == set(ir.OP_TYPES)  # the two networks exercise every op type


@dataclasses.dataclass(frozen=True)
class Mystery(ir.Op):
    OP: typing.ClassVar[str] = "mystery"
    src: str


def test_an_op_type_without_semantics_or_hardware_is_refused_by_name(exported, nets, monkeypatch):
    t = exported["tiny"]
    odd = Mystery(name="odd", dst="odd_out", src=t.input)
    with pytest.raises(GoldenError, match="no semantics for Mystery"):
        Golden(t).apply(odd, {t.input: images(1).transpose(0, 2, 3, 1)})
    with pytest.raises(ValueError, match=r"'odd' \(Mystery\) has no hardware block"):
        make_plan(dataclasses.replace(t, ops=(odd,) + t.ops), None)
    monkeypatch.delitem(export.LOWERINGS, graph.MaxPool)
    with pytest.raises(ShiftPQError, match="unsupported layer type MaxPool"):
        export_model(nets["tinyvgg"], {"path": "r"})
