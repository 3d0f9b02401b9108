"""atomic_dir: an output is replaced whole or not at all, whatever interrupts the replacement."""
from __future__ import annotations

import os

import pytest

from shiftpq import atomic


def _tree(d):
    return sorted((str(p.relative_to(d)), p.read_text()) for p in d.rglob("*") if p.is_file())


def test_a_replacement_interrupted_between_its_renames_leaves_the_old_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old output moved aside, the new one not yet in place: SIGTERM
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_dir(out) as d:
            (d / "a.txt").write_text("new")
    monkeypatch.setattr(atomic.os, "replace", real)
    assert _tree(out) == [("a.txt", "old")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries left


def test_a_replacement_replaces_and_leaves_nothing_beside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with atomic.atomic_dir(out) as d:
        (d / "b.txt").write_text("new")
    assert _tree(out) == [("b.txt", "new")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_text_atomic_replaces_whole_leaves_no_temporary_and_removes_stale_ones(tmp_path):
    import os
    import subprocess
    from shiftpq.atomic import write_text_atomic
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer exists
    (tmp_path / f".state.json.tmp-{gone.pid}-x").write_text("half")  # left by a killed writer
    out = tmp_path / "state.json"
    write_text_atomic(out, "old\n")
    write_text_atomic(out, "new\n")
    assert out.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private one
