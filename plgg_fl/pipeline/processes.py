"""Stopping every process a simulator job started.

NVFlare 2.9 starts its simulator in a session of its own (``setsid``) and each simulated client in a
further session of its own, so neither a terminal's Ctrl-C nor a kill of one process group reaches
them, and once the simulator process is gone its clients are no longer its children: an interrupted
run kept training under PID 1. Each job is therefore started with a mark in its environment
(:data:`ENV_MARK`), which every process it starts inherits; :func:`stop_marked` finds the processes by
that mark (``psutil``), freezes them so that none can start another, then kills them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid

import psutil

#: environment variable carrying a job's mark into every process of the job
ENV_MARK = "PLGG_FL_JOB_MARK"
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)


def new_mark() -> str:
    """A mark no other job (of this or another run) carries."""
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def marked(mark: str) -> list[psutil.Process]:
    """Running processes (this one excepted) whose environment carries ``mark``."""
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get(ENV_MARK) == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (*_GONE, psutil.AccessDenied):  # another user's process cannot be ours
            continue
    return found


def _freeze_all(mark: str, rounds: int = 5) -> dict[int, psutil.Process]:
    """Suspend every marked process, again until no new one appears (one may start while we look)."""
    frozen: dict[int, psutil.Process] = {}
    for _ in range(rounds):
        new = [p for p in marked(mark) if p.pid not in frozen]
        if not new:
            break
        for p in new:
            frozen[p.pid] = p
            with contextlib.suppress(*_GONE):
                p.suspend()
    return frozen


@contextlib.contextmanager
def ignoring_interrupts():
    """A second Ctrl-C must not cut the clean-up short (signals can only be set in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def stop_marked(mark: str, timeout_s: float = 15.0) -> int:
    """Kill every process carrying ``mark`` and wait up to ``timeout_s`` for them to go.
    Returns how many there were."""
    with ignoring_interrupts():
        victims = list(_freeze_all(mark).values())
        for p in victims:
            with contextlib.suppress(*_GONE):
                p.kill()
        psutil.wait_procs(victims, timeout=timeout_s)
    return len(victims)


def stop_children(timeout_s: float = 15.0) -> int:
    """Kill this process's remaining child processes (e.g. data-loader or synthesis workers)."""
    with ignoring_interrupts():
        try:
            victims = psutil.Process().children(recursive=True)
        except _GONE:
            return 0
        for p in victims:
            with contextlib.suppress(*_GONE):
                p.kill()
        psutil.wait_procs(victims, timeout=timeout_s)
    return len(victims)
