"""The HLS C++ backend: ``shiftpq gen --backend hls`` and ``shiftpq sim --backend hls`` (g++ C
simulation against the golden model), on tiny and random networks; a mutated weight is caught; the
generated design stays inside the synthesizable subset and its directives follow the hardware plan."""
from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from shiftpq import ir
from shiftpq.errors import ShiftPQError
from shiftpq.export import export_model
from shiftpq.golden import Golden
from shiftpq.ir import Tables
from shiftpq.tables import load_tables, save_tables
from shiftpq.testnets import images, random_net
from shiftpq_cli import main
from shiftpq_hw.gen import generate
from shiftpq_hw.hls import DESIGN_FILES, HLS_DIR, generate_hls
from shiftpq_hw.hls_csim import simulate_hls
from shiftpq_hw.plan import Kind, make_plan


@pytest.fixture(scope="module")
def tiny_hls(tmp_path_factory) -> Path:
    """The tiny model's default (untrained) network at PAR 2 through `shiftpq gen --backend hls`."""
    out = tmp_path_factory.mktemp("hls") / "tiny"
    assert main(["gen", "--model", "tiny", "--par", "2", "--backend", "hls", "--out", str(out)]) == 0
    return out


def _hls_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((d / HLS_DIR).iterdir())}


def test_gen_hls_is_deterministic_and_keeps_an_rtl_build_of_the_same_plan(tiny_hls, tmp_path):
    assert {"cycles.json", "tables", HLS_DIR} == {p.name for p in tiny_hls.iterdir()}
    tables = load_tables(tiny_hls / "tables")
    again = tmp_path / "again"
    generate_hls(tables, again, 2)
    assert _hls_files(again) == _hls_files(tiny_hls)  # same tables and fold: byte-identical sources
    assert (again / "cycles.json").read_bytes() == (tiny_hls / "cycles.json").read_bytes()
    # an existing hls/ is replaced only with force; an output of the same tables and fold (an RTL
    # build, say) keeps its other files ...
    with pytest.raises(ShiftPQError, match="hls: already exists; pass --force"):
        generate_hls(tables, again, 2)
    (again / "rtl").mkdir()
    (again / "rtl" / "marker").write_text("rtl")
    generate_hls(tables, again, 2, force=True)
    assert (again / "rtl" / "marker").is_file() and _hls_files(again) == _hls_files(tiny_hls)
    # ... another fold replaces the whole directory (no stale RTL beside the new plan), only with force
    with pytest.raises(ShiftPQError, match="already exists and holds cycles.json, hls/, rtl/, tables/; pass --force"):
        generate_hls(tables, again, 4)
    assert (again / "rtl" / "marker").is_file()
    generate_hls(tables, again, 4, force=True)
    assert not (again / "rtl").exists() and json.loads((again / "cycles.json").read_text())["par"] == 4
    assert _hls_files(again)["shiftpq_top.cpp"] != _hls_files(tiny_hls)["shiftpq_top.cpp"]
    # an RTL-only build of the same design gets hls/ added without force
    shutil.rmtree(again / HLS_DIR)
    (again / "rtl").mkdir()
    generate_hls(tables, again, 4)
    assert (again / "rtl").is_dir() and (again / HLS_DIR).is_dir()
    # ... as the RTL generator writes it (its cycles.json names the target): its files are kept
    rtl = tmp_path / "rtl-build"
    generate(tables, rtl, 4)
    before = {p.relative_to(rtl): p.read_bytes() for p in rtl.rglob("*") if p.is_file()}
    generate_hls(tables, rtl, 4)
    assert _hls_files(rtl) == _hls_files(again)
    assert {p.relative_to(rtl): p.read_bytes() for p in rtl.rglob("*") if p.is_file() and HLS_DIR not in p.parts} \
        == before


def test_sim_hls_tiny_is_bit_exact_on_cifar_and_reuses_its_build(tiny_hls, cifar_dir, capsys):
    argv = ["sim", "--backend", "hls", "--build", str(tiny_hls), "--images", "4", "--jobs", "2", "--data-dir", cifar_dir]
    assert main(argv) == 0
    assert "0 mismatches" in capsys.readouterr().out
    r = json.loads((tiny_hls / "sim" / "results-hls.json").read_text())
    assert r["images"] == 4 and r["mismatches"] == 0 and r["passed"] and r["shards"] == 2
    assert {"accuracy", "wall_s", "images_per_s"} <= set(r)
    assert main(argv) == 0
    assert json.loads((tiny_hls / "sim" / "results-hls.json").read_text())["build_cached"] is True


@pytest.mark.parametrize("seed", [1, 2, 4])  # plain with max pools at PAR 1; residual fully parallel; two blocks
def test_random_networks_are_bit_exact_in_c_simulation(seed, tmp_path):
    par = random.Random(seed).choice([None, 1, 2, 4, 8])
    tables = export_model(random_net(seed, random_bits=True, random_arch=True), {"path": None, "fuzz_seed": seed})
    generate_hls(tables, tmp_path / "net", par)
    r = simulate_hls(tmp_path / "net", images(3, seed), jobs=1, progress=False)
    assert r["images"] == 3 and r["mismatches"] == 0, r["wrong"]


def _mutated(tables: Tables, op_name: str, index: tuple, value: int) -> Tables:
    op = tables.op(op_name)
    w = op.weight.copy()
    w[index] = value
    return dataclasses.replace(tables, ops=tuple(dataclasses.replace(o, weight=w) if o is op else o
                                                 for o in tables.ops))


def test_a_mutated_weight_in_the_generated_cpp_is_caught(tiny_hls, tmp_path, cifar_dir):
    """The C++ is generated from tables with one APoT weight changed while GEN_DIR/tables keeps the
    original (the generated design disagrees with its specification): every image whose golden scores
    the change affects must be reported, and no other."""
    from shiftpq.data import load_split
    tables = load_tables(tiny_hls / "tables")
    imgs = load_split(cifar_dir, "test", 4)[0].numpy()
    want = Golden(tables).run(imgs)
    conv = next(op for op in tables.ops if isinstance(op, ir.Conv) and op.weight_levels.startswith("apot"))
    w = conv.weight
    top = len(tables.level_set(conv.weight_levels).ints) - 1
    for index in np.ndindex(*w.shape):  # the first weight whose change shows in the scores
        bad = _mutated(tables, conv.name, index, -top if w[index] >= 0 else top)
        differ = int((Golden(bad).run(imgs) != want).any(axis=1).sum())
        if differ:
            break
    assert differ, "no single-weight change of this network shows in its scores"
    out = tmp_path / "mutant"
    generate_hls(bad, out, 2)
    shutil.rmtree(out / "tables")
    save_tables(tables, out / "tables")
    r = simulate_hls(out, imgs, jobs=1, progress=False)
    assert r["mismatches"] == differ and not r["passed"]
    # the first wrong image, traced, names the mutated engine: every stream before it matched
    f = r["first_wrong"]
    assert f["block"] == conv.name and f["image"] == r["wrong"][0]["image"] and f["got"] != f["want"], f
    assert main(["sim", "--backend", "hls", "--build", str(out), "--images", "4", "--data-dir", cifar_dir]) == 1


def test_sim_hls_without_a_generated_design_is_one_line_exit_2(tmp_path, capsys):
    assert main(["sim", "--backend", "hls", "--build", str(tmp_path / "none"), "--images", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gen --backend hls" in err


def test_sim_hls_with_a_hand_edited_cycles_json_is_one_line_exit_2(tiny_hls, tmp_path, capsys, cifar_dir):
    """A wrong type in cycles.json is refused by name, not reported under the wrong model name."""
    g = tmp_path / "g"
    shutil.copytree(tiny_hls, g, ignore=shutil.ignore_patterns("sim"))
    (g / "cycles.json").write_text(json.dumps({**json.loads((g / "cycles.json").read_text()), "model": 3}))
    assert main(["sim", "--backend", "hls", "--build", str(g), "--images", "1", "--data-dir", cifar_dir]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{g / 'cycles.json'}: field 'model' is 3, expected a string" in err, err


# -- the synthesizable subset and the directives -----------------------------------------------------
_STATIC_FOR = re.compile(r"for \(int (\w+) = 0; \1 < (\d+); \1\+\+\)")
_FORBIDDEN = [(re.compile(p), why) for p, why in [
    (r"\bnew\b|\bdelete\b|\bmalloc\b|\bcalloc\b|\brealloc\b|\bfree\s*\(", "dynamic allocation"),
    (r"\bfloat\b|\bdouble\b|\d\.\d|\d[eE][+-]?\d", "floating point"),
    (r"\bstd::", "the standard library"),
    (r"\bwhile\b|\bgoto\b", "a loop without a static bound"),
    (r"#include\s*<(?!ap_int\.h|ap_axi_sdata\.h|hls_stream\.h|cstdint)", "a standard-library header"),
]]


def _code(text: str) -> str:
    """The text without comments and string literals."""
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"[^"\n]*"', '""', text)


def _functions(code: str) -> dict[str, str]:
    """Function name -> body, for the functions defined at any level of the file."""
    out = {}
    for m in re.finditer(r"\b(\w+)\s*\([^;{)]*\)\s*\{", code):
        name, depth, i = m.group(1), 1, m.end()
        if name in ("for", "if", "while", "switch"):
            continue
        while depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        out[name] = code[m.end():i - 1]
    return out


@pytest.fixture(scope="module")
def designs(tiny_hls, tmp_path_factory) -> list[Path]:
    """The tiny model and a plain network with max pools, unfolded and folded."""
    plain = tmp_path_factory.mktemp("hls-plain") / "net"
    generate_hls(export_model(random_net(1, random_bits=True, random_arch=True), {"path": None}), plain, None)
    return [tiny_hls, plain]


def test_generated_design_is_in_the_synthesizable_subset(designs):
    for d in designs:
        for name in DESIGN_FILES:
            code = _code((d / HLS_DIR / name).read_text())
            for pat, why in _FORBIDDEN:
                m = pat.search(code)
                if name == "shiftpq_types.h" and why == "the standard library":
                    continue  # none (checked below): its g++ branch includes the g++-only header
                assert not m, f"{d / HLS_DIR / name}: {why}: {code[max(0, m.start() - 60):m.end() + 60]!r}"
            loops = re.findall(r"\bfor\s*\([^)]*\)", code)
            assert all(_STATIC_FOR.fullmatch(f) for f in loops), [f for f in loops if not _STATIC_FOR.fullmatch(f)]
        # the g++-only header (the one file with a standard container) only on the g++ branch
        types = (d / HLS_DIR / "shiftpq_types.h").read_text()
        vendor, gxx = types.split("#else", 1)
        assert "shiftpq_gxx.h" not in vendor and '#include "shiftpq_gxx.h"' in gxx.split("#endif")[0]
        assert "std::" not in _code(types)
        # no recursion: the call graph of the design's functions has no cycle
        fns = _functions(_code((d / HLS_DIR / "shiftpq_top.cpp").read_text()))
        calls = {f: {g for g in fns if re.search(rf"\b{g}\s*\(", body)} for f, body in fns.items()}

        def visit(f, path=()):
            assert f not in path, f"recursion: {' -> '.join(path + (f,))}"
            for g in calls[f]:
                visit(g, path + (f,))
        for f in calls:
            visit(f)
        assert "shiftpq_top" in calls and len(calls["shiftpq_top"]) >= 5


def test_directives_follow_the_hardware_plan(tiny_hls):
    tables = load_tables(tiny_hls / "tables")
    plan = make_plan(tables, 2)
    top = (tiny_hls / HLS_DIR / "shiftpq_top.cpp").read_text()
    body = _functions(_code(top))["shiftpq_top"]
    assert "#pragma HLS DATAFLOW" in body
    assert "#pragma HLS INTERFACE mode=axis port=s_axis" in body and "#pragma HLS INTERFACE mode=axis port=m_axis" in body
    fns = _functions(_code(top))
    for blk in plan.blocks:
        name = blk.name
        fn = "conv_" + re.sub(r"\W", "_", name)
        if fn not in fns:
            continue
        src = fns[fn]
        assert f"acc[{blk.lanes}]" in src and f"cyclic factor={blk.simd} dim=3" in src, name
        assert src.count("#pragma HLS PIPELINE II=1") == 2, name  # the line buffer's load and the MAC loop
        assert re.search(rf"for \(int g = 0; g < {blk.groups}; g\+\+\)", src), name
        assert re.search(rf"for \(int ch = 0; ch < {blk.chunks}; ch\+\+\)", src), name
    depths = {int(d) for d in re.findall(r"#pragma HLS STREAM variable=\w+ depth=(\d+)", body)}
    fifo = {blk.depth for blk in plan.blocks if blk.kind == Kind.SHORTCUT}
    assert fifo and fifo <= depths


def test_widths_are_those_of_the_integer_semantics(tiny_hls):
    """Under a vendor tool each conv accumulator is ap_int<acc_bits>, each code ap_uint<index bits>
    (docs/integer-semantics.md), the FC's accumulator ap_int<acc_bits>; scores leave as int32."""
    tables = load_tables(tiny_hls / "tables")
    types = (tiny_hls / HLS_DIR / "shiftpq_types.h").read_text().split("#else")[0]
    width = {name: int(bits) for bits, name in re.findall(r"typedef ap_u?int<(\d+)> (\w+);", types)}
    ops = [op for op in tables.ops if isinstance(op, (ir.Conv, ir.FC))]
    assert ops and all(width[re.sub(r"\W", "_", op.name) + "_acc_t"] == op.acc_bits for op in ops)
    for name, info in tables.tensors.items():
        key = re.sub(r"\W", "_", name) + "_code_t"
        if info.kind == "codes" and key in width:
            assert width[key] == (len(tables.level_set(info.levels).ints) - 1).bit_length(), name
    assert "typedef ap_axis<32, 0, 0, 0> out_beat_t;" in types


@pytest.mark.parametrize("held,msg", [
    ({"hls/a.cpp": "", "cycles.json": "{}"}, "hls: already exists; pass --force to replace it"),
    ({"notes.txt": "mine"}, "already exists and holds notes.txt; pass --force"),
])
def test_gen_hls_refuses_an_output_before_the_work(tmp_path, capsys, monkeypatch, held, msg):
    """What can be refused without the design is refused before the source is even resolved."""
    import shiftpq_hw.gen

    def no_work(*a, **k):
        raise AssertionError("the source was resolved before --out was checked")

    monkeypatch.setattr(shiftpq_hw.gen, "resolve_source", no_work)
    out = tmp_path / "out"
    for name, text in held.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert main(["gen", "--model", "tiny", "--backend", "hls", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
