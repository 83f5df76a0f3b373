"""Start and stop the participants of a provisioned federation as separate local processes.

Used by the integration test and for a one-machine trial of real startup kits. Each participant runs
the same Python command its kit's ``startup/sub_start.sh`` runs (``--once`` mode, no restart loop),
with this interpreter, in its own process group, logging to ``<kit>/console.log``.

NVFlare launches each job in a *new session* (server job / client job processes), so killing a
participant's process group does not reach its job processes: :meth:`Participant.kill` snapshots
all descendants first and kills them too, and :meth:`LocalFederation.stop_all` also kills any
leftover process whose command line names this federation's kit folder.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from plgg_fl.bundled import SOURCE_ROOT

log = logging.getLogger(__name__)
PACKAGE_ROOT = str(SOURCE_ROOT)  # the folder that holds plgg_fl/ (a checkout, or site-packages)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kit_command(kit: str | Path) -> list[str]:
    """The participant's start command from ``<kit>/startup/sub_start.sh``, run with this Python."""
    kit = Path(kit).resolve()
    text = (kit / "startup" / "sub_start.sh").read_text(encoding="utf-8")
    m = re.search(r"exec python3? (-u -m nvflare\.private\.fed\.app\.\S+ .*)$", text, re.M)
    if not m:
        raise RuntimeError(f"no start command found in {kit}/startup/sub_start.sh")
    args = shlex.split(m.group(1).replace('"$WORKSPACE"', shlex.quote(str(kit))))
    return [sys.executable, *args]


class Participant:
    """One server or client process started from its startup kit."""

    def __init__(self, name: str, kit: str | Path, env: dict | None = None):
        self.name, self.kit, self.env = name, Path(kit).resolve(), env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.kit / "console.log"

    def start(self) -> "Participant":
        for flag in ("shutdown.fl", "restart.fl", "pid.fl", "daemon_pid.fl"):
            (self.kit / flag).unlink(missing_ok=True)
        env = {**os.environ, **self.env}
        env.setdefault("MALLOC_ARENA_MAX", "2")
        # Job processes import plgg_fl classes. Put the folder holding *this* plgg_fl first on
        # PYTHONPATH, so a trial federation runs this source tree's code, also where plgg_fl is an
        # editable install (found by a meta-path finder after sys.path, so a job's custom/ folder
        # with a plgg_fl/ sub-folder - as earlier job exports had - would otherwise shadow it).
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                kit_command(self.kit), cwd=self.kit, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        log.info("started %s (pid %d), log %s", self.name, self.proc.pid, self.log_path)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
        """Kill the participant and every process it spawned (job processes included)."""
        if self.proc is None:
            return
        try:
            top = psutil.Process(self.proc.pid)
            victims = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            victims = []
        own_group = os.getpgid(0)
        for p in victims:
            try:
                pgid = os.getpgid(p.pid)
                if pgid != own_group:
                    os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=timeout)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) still alive after kill", self.name, self.proc.pid)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace", encoding="utf-8").splitlines()[-n:])
        except FileNotFoundError:
            return ""


class LocalFederation:
    """The server and site clients of one provisioned project, as local processes."""

    def __init__(self, kits, client_env: dict | None = None):
        """``kits``: a :class:`plgg_fl.deploy.provision.Kits`; ``client_env``: site -> extra env vars."""
        self.kits = kits
        self.client_env = client_env or {}
        # every participant on this one machine: each client's torch gets its share of the cores and the
        # server (which aggregates, never trains) one thread, unless OMP_NUM_THREADS says otherwise; with
        # a full thread pool per process the job processes' OpenMP spin-waits oversubscribe the cores
        from plgg_fl.pipeline.simulate import threads_per_client

        caller = os.environ.get("OMP_NUM_THREADS")
        share = caller or str(threads_per_client(len(kits.clients)))
        self.server = Participant("server", kits.server, {"OMP_NUM_THREADS": caller or "1"})
        self.clients = {s: Participant(s, k, {"OMP_NUM_THREADS": share, **self.client_env.get(s, {})})
                        for s, k in kits.clients.items()}

    def start(self, sites=None) -> "LocalFederation":
        self.server.start()
        for s in sites or self.clients:
            self.clients[s].start()
        return self

    def stop_all(self) -> None:
        """Kill every process this federation started, and anything left that runs from its kits."""
        for p in [*self.clients.values(), self.server]:
            try:
                p.kill()
            except Exception as e:  # keep going: every process must go
                log.warning("stopping %s: %s", p.name, e)
        root = str(self.kits.root)
        me = os.getpid()
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid != me and any(root in a for a in p.info["cmdline"] or []):
                    p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()

    def logs(self, n: int = 40) -> str:
        parts = [f"--- {p.name} ---\n{p.tail(n)}" for p in [self.server, *self.clients.values()]]
        return "\n".join(parts)


def wait_until(predicate, timeout: float, interval: float = 1.0, what: str = "condition"):
    """Poll ``predicate()`` until it returns a truthy value (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the server may not be up yet
            last_err = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_err})" if last_err else ""))
