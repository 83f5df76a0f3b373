"""A run folder's state, ``runs/<name>/status.json``, and choosing the folder a new run writes to.

``status.json``: ``{"state": "running" | "done" | "failed" | "interrupted", "pid", "host", "started",
"finished", "reason"}``, written when a run starts and again when it ends. ``plgg-fl report`` reads it
(:func:`unfinished_reason`) and refuses a run that is not ``done``; a folder without the file (a run
from before it existed) is judged by its ``metrics.json``, written only at a run's end.

A new run never writes into a folder that holds an earlier run: without ``overwrite`` it takes the
first free ``<name>-2``, ``<name>-3``, ... beside it (:func:`run_folder`); with ``overwrite`` the old
folder is deleted first, report included, unless a run is still writing there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import psutil

from plgg_fl.errors import CommandError

STATUS_FILE = "status.json"
STATES = ("running", "done", "failed", "interrupted")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_status(run_dir: Path) -> dict | None:
    """The folder's ``status.json``, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_status(run_dir: Path, state: str, reason: str = "") -> None:
    """Record ``state`` (keeping when and where the run started)."""
    assert state in STATES, state
    run_dir = Path(run_dir)
    old = read_status(run_dir) or {}
    data = {"state": state, "pid": os.getpid(), "host": socket.gethostname(), "started": old.get("started", _now())}
    if state != "running":
        data["finished"] = _now()
    if reason:
        data["reason"] = reason
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(run_dir / STATUS_FILE)


def _still_running(st: dict) -> bool:
    """A run marked running whose process is alive on this host (another host: assume alive)."""
    if st.get("host") != socket.gethostname():
        return True
    pid = int(st.get("pid") or 0)
    return pid > 0 and psutil.pid_exists(pid)


def unfinished_reason(run_dir: Path) -> str | None:
    """Why the run in ``run_dir`` is not a finished one (None when it is)."""
    st = read_status(run_dir)
    if st is None:  # a run from before status.json, or no run at all (the caller looks for metrics.json)
        return None
    state = st.get("state")
    if state == "done":
        return None
    if state == "running":
        if _still_running(st):
            return f"the run is still in progress (pid {st.get('pid')} on {st.get('host')}, started {st.get('started')})"
        return f"the run stopped before finishing (its process {st.get('pid')} is gone; started {st.get('started')})"
    why = f": {st['reason']}" if st.get("reason") else ""
    said = {"failed": "failed", "interrupted": "was interrupted"}.get(str(state), f"is in an unknown state {state!r}")
    return f"the run {said} at {st.get('finished', '?')}{why}"


def _holds_something(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def run_folder(root: Path, name: str, overwrite: bool = False) -> Path:
    """The folder a new run of ``name`` writes to (see the module docstring); nothing is deleted here."""
    target = Path(root) / name
    if not _holds_something(target) or overwrite:
        return target
    k = 2
    while _holds_something(target.with_name(f"{name}-{k}")):
        k += 1
    return target.with_name(f"{name}-{k}")


def clear_for_overwrite(folder: Path) -> None:
    """Delete an earlier run in ``folder`` (refused while a run is writing there, or when the folder
    does not look like a run folder: no status.json, config.yaml or metrics.json)."""
    if not _holds_something(folder):
        return
    if not any((folder / f).is_file() for f in (STATUS_FILE, "config.yaml", "metrics.json")):
        raise CommandError("--overwrite: the folder holds something other than a run; not deleting it", folder)
    st = read_status(folder)
    if st and st.get("state") == "running" and _still_running(st):
        raise CommandError(f"--overwrite: a run is still writing there (pid {st.get('pid')}); stop it first", folder)
    shutil.rmtree(folder)
