"""Ctrl-C or SIGTERM during a real tiny ``plgg-fl simulate`` run (real NVFlare simulator, about a minute on 2 cores).

A terminal's Ctrl-C sends SIGINT to the foreground process group; the test starts the CLI in a session
of its own and signals that group the same way once a site has started training. Every process of the
run must stop (NVFlare's simulator and its clients run in sessions of their own, out of reach of the
terminal's signal), the CLI prints one line and exits 130.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
_SITE_LINE = re.compile(r"\[(brats|cbtn|dfci_bch)\] ")


def _reader(stream, lines: queue.Queue) -> threading.Thread:
    def pump():
        for line in iter(stream.readline, ""):
            lines.put(line)
        lines.put(None)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def _drain(q: queue.Queue) -> list[str]:
    out = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return out
        if item is not None:
            out.append(item)


def _wait_for(proc, lines: queue.Queue, seen: list[str], pattern: re.Pattern, timeout_s: float) -> bool:
    """Read ``lines`` until one matches ``pattern`` (True), the process ends or time runs out (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            return False
        seen.append(line)
        if pattern.search(line):
            return True
    return False


def _points_into(p: psutil.Process, folder: str) -> bool:
    """Whether ``p``'s command line, current folder or environment names ``folder``."""
    try:
        if folder in " ".join(p.cmdline()) or p.cwd().startswith(folder):
            return True
        return any(folder in v for v in p.environ().values())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _survivors(folder: str, exclude: set[int]) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        if p.pid in exclude:
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if _points_into(p, folder):
            out.append(p)
    return out


def _as_from_a_terminal() -> None:
    """In the child: SIGINT as a foreground terminal program has it. A shell that starts pytest in the
    background (``cmd &``, as a CI script may) ignores SIGINT, and ignored signals are inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _long_tiny_config(tmp_path: Path) -> Path:
    """The tiny config with a stage 1 long enough to be still training when the signal comes."""
    cfg = yaml.safe_load((REPO / "simulator_configs" / "tiny.yaml").read_text(encoding="utf-8"))
    cfg["name"] = "interrupted"
    cfg["stages"]["pretrain"]["local_steps"] = 2000
    path = tmp_path / "interrupted.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_every_process_of_the_run_prints_one_line(tmp_path, sig, code):
    """SIGINT goes to the whole process group (a terminal's Ctrl-C); SIGTERM to the command's process
    alone (``kill PID``, a scheduler): either way nothing of the run is left, exit 130 / 143."""
    folder = str(tmp_path.resolve())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    config = _long_tiny_config(tmp_path)  # cohort: runs/cohorts/tiny under the current folder, tmp_path
    proc = subprocess.Popen(
        [sys.executable, "-m", "plgg_fl.cli", "simulate", "--config", str(config), "--out", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_as_from_a_terminal, start_new_session=True,  # its own process group, signalled as a terminal's Ctrl-C would be
    )
    lines: queue.Queue = queue.Queue()
    errs: queue.Queue = queue.Queue()
    _reader(proc.stdout, lines)
    err_reader = _reader(proc.stderr, errs)
    seen: list[str] = []
    survivors: list[psutil.Process] = []
    try:
        assert _wait_for(proc, lines, seen, _SITE_LINE, timeout_s=400), "no site started training:\n" + "".join(seen)
        time.sleep(1.0)  # what was printed before the signal (cohort synthesis progress) is not counted
        _drain(errs)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=90)
        err_reader.join(10)
        stderr = "".join(_drain(errs))  # printed after the signal
        deadline = time.monotonic() + 10  # a generous bound for the last kills to land
        while True:
            survivors = _survivors(folder, exclude={os.getpid()})
            if not survivors or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        described = [f"{p.pid} {' '.join(p.cmdline())[:160]}" for p in survivors if p.is_running()]
        assert not described, "processes of the interrupted run still running:\n" + "\n".join(described)
        assert rc == code, f"exit code {rc}; stderr:\n{stderr}"
        status = json.loads((tmp_path / "runs" / "interrupted" / "status.json").read_text(encoding="utf-8"))
        assert status["state"] == "interrupted" and ("SIGTERM" if sig == signal.SIGTERM else "SIGINT") in status["reason"]
        err_lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert "Traceback" not in stderr, stderr
        assert len(err_lines) == 1 and "interrupted" in err_lines[0], stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for p in _survivors(folder, exclude={os.getpid()}):  # never leave a run training behind
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_ctrl_c_during_cohort_synthesis_prints_one_line_and_leaves_no_worker(tmp_path):
    """The demo cohort is synthesized by a pool of worker processes; they get the terminal's SIGINT too."""
    folder = str(tmp_path.resolve())
    proc = subprocess.Popen(
        [sys.executable, "-m", "plgg_fl.cli", "synth", str(tmp_path / "cohort"), "--size", "tiny", "--workers", "2",
         "--sites", "brats", "--cases-per-site", "400"],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_as_from_a_terminal, start_new_session=True,
    )
    errs: queue.Queue = queue.Queue()
    err_reader = _reader(proc.stderr, errs)
    _reader(proc.stdout, queue.Queue())
    try:
        seen: list[str] = []
        assert _wait_for(proc, errs, seen, re.compile(r"synth:.* [1-9]\d*/400"), timeout_s=120), "".join(seen)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=60)
        err_reader.join(10)
        after = [ln for ln in "".join(_drain(errs)).splitlines() if ln.strip() and not ln.startswith("synth:")]
        assert rc == 130 and after == ["plgg-fl synth: interrupted"], (rc, after)
        assert not _survivors(folder, exclude={os.getpid()})
        from plgg_fl.synth import generate_cohort  # the next run replaces the interrupted one's cases

        manifests = generate_cohort(tmp_path / "cohort", size="tiny", sites=["brats"], n_cases=2, progress=False)
        assert manifests["brats"].is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for p in _survivors(folder, exclude={os.getpid()}):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
