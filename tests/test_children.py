"""A tool the CLI runs never outlives it: Ctrl-C or SIGTERM stops the tool's own children too (make and
the compilers under Verilator's build, nextpnr under `synth --jobs` in worker threads)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A command whose tool starts a grandchild (as Verilator's build starts make and g++), run from the
# main thread, or three times from one worker thread (as `shiftpq synth --seed 1,2,3 --jobs 1` runs
# nextpnr): once stopped, the queued runs must not start.
_SCRIPT = r"""
import argparse, concurrent.futures, sys
from shiftpq import children, cmdline

pidfile, threaded = sys.argv[1], sys.argv[2] == "thread"

def tool(k):
    f = f"{pidfile}{k or ''}"
    return children.run(["sh", "-c", f"sleep 300 & echo $! > {f}.tmp; mv {f}.tmp {f}; wait"])

def command(args):
    if threaded:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        try:
            list(pool.map(tool, [0, 1, 2]))
        finally:
            pool.shutdown(cancel_futures=True)
    else:
        tool(0)
    raise SystemExit("the tool was not stopped")

def parser():
    p = cmdline.Parser(prog="t")
    p.set_defaults(run=command)
    return p

sys.exit(cmdline.main([], parser))
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # killed, not yet reaped by its new parent


@pytest.mark.parametrize("where", ["main", "thread"])
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_tools_children(sig, code, where, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "sw")}
    # a test run started as a background job (`make test &`) ignores SIGINT, and its children would
    # inherit that (the CLI then keeps Ctrl-C ignored, as a background job should): start this one with
    # the default, as from a terminal
    p = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(pidfile), where], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    end = time.monotonic() + 60
    while not pidfile.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < end, "the grandchild did not start"
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    try:
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        assert p.returncode == code, err
        assert err.strip().splitlines()[-1].startswith("shiftpq: "), err
        end = time.monotonic() + 10
        while not _gone(grandchild):
            assert time.monotonic() < end, f"the tool's child {grandchild} outlived the command"
            time.sleep(0.05)
        assert sorted(f.name for f in tmp_path.iterdir()) == [pidfile.name]  # no queued run started
    finally:
        if not _gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_run_returns_the_tools_result():
    from shiftpq import children
    r = children.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert not children._live
