"""Output directories: checked before the work, never half-written, never replaced by accident.

``prepare_output`` runs before a command starts its work: the location must be creatable and
writable, and an existing output is replaced only with ``force`` (the message lists what would be
lost). ``atomic_dir`` builds the output in a temporary sibling ``.NAME.tmp-PID-XXXX`` and renames it
into place; on any error, Ctrl-C or SIGTERM (the CLI turns it into an exception) the temporary is
deleted. A run killed outright (SIGKILL, power loss) cannot clean up: the next ``atomic_dir`` beside
the same output removes the temporaries whose process no longer exists.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ShiftPQError

_KINDS = ("tmp", "old")  # a directory being built, an old output being removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def stale_temporaries(out: str | Path) -> list[Path]:
    """Temporary siblings of ``out`` left by runs whose process is gone."""
    out = Path(out)
    stale = []
    if not out.parent.is_dir():
        return stale
    for p in out.parent.glob(f".{out.name}.*-*-*"):
        kind, _, rest = p.name[len(out.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in _KINDS and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            stale.append(p)
    return sorted(stale)


def _describe(out: Path, limit: int = 8) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    if not entries:
        return "nothing"
    shown = ", ".join(entries[:limit]) + (f" and {len(entries) - limit} more" if len(entries) > limit else "")
    return shown


def prepare_output(out: str | Path, force: bool = False, what: str = "--out") -> Path:
    """Check, before any work, that ``out`` can be written: not a file, not under a file, in a writable
    directory; an existing ``out`` only with ``force`` (else the error lists what it holds). Writes nothing."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ShiftPQError(f"{out}: exists and is not a directory; choose another {what}")
        if not force:
            raise ShiftPQError(f"{out}: already exists and holds {_describe(out)}; pass --force to replace it "
                               f"(all of that is lost), or choose another {what}")
    anc = out.absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ShiftPQError(f"{out}: cannot be created: {anc} is a file, not a directory; choose another {what}")
    try:  # a real probe: permissions, read-only file systems, quotas and root alike
        probe = tempfile.mkdtemp(dir=anc, prefix=".shiftpq-write-test-")
        os.rmdir(probe)
    except OSError as e:
        raise ShiftPQError(f"{out}: cannot be created: {anc} is not writable ({e.strerror}); "
                           f"choose another {what}") from None
    return out


def remove_stale_temporaries(out: str | Path) -> None:
    """Remove the temporaries (directories or files) a killed run left beside ``out``."""
    for p in stale_temporaries(out):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def temporary_prefix(out: str | Path) -> str:
    """The name prefix of this process's temporaries beside ``out`` (``stale_temporaries`` reads it)."""
    return f".{Path(out).name}.tmp-{os.getpid()}-"


def write_text_atomic(path: str | Path, text: str) -> None:
    """``path`` holds the old text or the new, never half of it: written to a temporary sibling named
    by this process (``temporary_prefix``: two writers never share one, a killed one's is found stale)
    and renamed into place."""
    path = Path(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path))
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(out: str | Path):
    """Yields an empty temporary directory beside ``out``; on success it replaces ``out`` (the old
    one, if any, is removed after the rename), on any error it is deleted and ``out`` is untouched.
    The caller decides beforehand whether replacing ``out`` is allowed (``prepare_output``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=temporary_prefix(out)))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary directory
    old = None
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{os.getpid()}-"))
            os.replace(out, old / "x")
        os.replace(tmp, out)
    except BaseException:
        # SIGTERM or Ctrl-C may land between the two renames: the old output goes back in place
        if old is not None and (old / "x").exists() and not out.exists():
            os.replace(old / "x", out)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
