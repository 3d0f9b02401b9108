"""Child processes that do not outlive the command that started them.

A tool the CLI runs (Verilator's build, g++ through make, Yosys, nextpnr, a simulation shard) may
start processes of its own: Verilator's ``--build`` runs make, which runs a compiler per file.
Killing the tool alone leaves those running, in a directory ``atomic.atomic_dir`` has just removed.
So every child is started here, in a process group (a session) of its own, and registered while it
runs. The CLI's SIGTERM and SIGINT handlers (``cmdline.main``) call ``on_signal``: it signals every
registered group (SIGTERM, then SIGKILL after a grace period), refuses to start any more children
(``shiftpq synth --seed 1,2,3 --jobs 1``: the queued seeds) and raises the signal's exception. So the
children of worker threads are stopped too; a signal that lands while the main thread is starting a
child is raised once that child is registered; and ``run`` stops its child's group when the call is
left by any exception. A child in its own session no longer gets the terminal's Ctrl-C; the handler
passes it on.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

_live: set[subprocess.Popen] = set()
_lock = threading.RLock()  # reentrant: a signal handler may run while its own thread holds it
_stopping = False  # set by stop_all: the command is being stopped, no child starts any more
_starting = False  # the main thread is starting a child: a signal's stop waits until it is registered
_pending: BaseException | None = None  # that signal's exception


class Stopping(Exception):
    """A child was about to start after ``stop_all`` (a worker thread's next job)."""


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(cmd, **kwargs)`` in a new process group, registered until ``forget``."""
    global _starting, _pending
    main = threading.current_thread() is threading.main_thread()
    with _lock:  # held while it starts: stop_all (from the main thread) sees it or has refused it
        if _stopping:
            raise Stopping(f"not starting {cmd[0]}: the command is being stopped")
        _starting = main  # signal handlers run in the main thread: one landing here is deferred
        try:
            p = subprocess.Popen(cmd, start_new_session=True, **kwargs)
            _live.add(p)
        finally:
            _starting = False
            exc, _pending = _pending, None
            if exc is not None:  # a signal came while the child started: it is registered now
                stop_all()
                raise exc
    return p


def forget(p: subprocess.Popen) -> None:
    """``p`` has been waited for: ``stop_all`` leaves its group alone from now on."""
    with _lock:
        _live.discard(p)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the group outlives its leader while any member lives
    except (ProcessLookupError, PermissionError):
        pass


def _exited(p: subprocess.Popen) -> bool:
    """Whether ``p`` has exited, without reaping it: an unreaped leader keeps its process id, and so
    its group's, from being reused, so signalling the group stays safe until ``wait``."""
    if p.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def stop(procs, grace: float = 10.0) -> None:
    """SIGTERM the process group of each of ``procs``; after ``grace`` seconds (or once every leader
    has exited) SIGKILL the groups, so that no member outlives its leader; wait for the leaders and
    forget them."""
    for p in [p for p in procs if p.returncode is not None]:
        forget(p)
    procs = [p for p in procs if p.returncode is None]
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and not all(_exited(p) for p in procs):
        time.sleep(0.05)
    for p in procs:
        _signal_group(p, signal.SIGKILL)
        p.wait()
        forget(p)


def stop_all(grace: float = 10.0) -> None:
    """Stop every registered child's process group and refuse to start any more (the CLI's signal
    handlers call this: the command is ending)."""
    global _stopping
    with _lock:
        _stopping = True
        procs = list(_live)
    stop(procs, grace)


def on_signal(exc: BaseException) -> None:
    """For the CLI's signal handlers: stop every child, then raise ``exc`` (KeyboardInterrupt, SIGTERM's
    exception). A signal landing while the main thread starts a child is raised by ``popen`` once the
    child is registered, so it is stopped too."""
    global _pending
    if _starting:
        _pending = exc
        return
    stop_all()
    raise exc


def allow() -> None:
    """Children may start again (a new command in the same process: ``cmdline.main``)."""
    global _stopping
    with _lock:
        _stopping = False


def run(cmd: list[str], *, capture: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=capture, text=True, **kwargs)`` whose child runs in its
    own process group; leaving the call by an exception (Ctrl-C, SIGTERM) stops the group."""
    if capture:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    p = popen(cmd, text=True, **kwargs)
    try:
        out, err = p.communicate()
    except BaseException:
        stop([p])
        raise
    forget(p)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)
