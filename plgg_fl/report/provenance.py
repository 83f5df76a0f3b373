"""Where a report's numbers come from: the run's config and seeds, package versions, git commit, machine."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("plgg-fl", "torch", "monai", "nvflare", "numpy", "scipy", "nibabel", "matplotlib")


def versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def git_commit(path: Path | None = None) -> str:
    """``<sha>`` (``+dirty`` when tracked files changed) of the repository holding ``path`` (default:
    this package's source), or ``unknown`` outside a git checkout."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return "unknown"
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "memory": mem}


def seeds(config: dict) -> dict[str, Any]:
    """Cohort seed and each stage's training seed (TrainConfig default 0 when the config sets none)."""
    out: dict[str, Any] = {"cohort": (config.get("cohort") or {}).get("seed")}
    for name, st in (config.get("stages") or {}).items():
        out[f"{name} train"] = ((st or {}).get("train") or {}).get("seed", 0)
    return out


def collect(run) -> dict[str, Any]:
    """Provenance of ``run`` (a :class:`plgg_fl.report.collect.Run`). The run records no commit or
    versions of its own (unless ``metrics.json`` has ``provenance``): these are the report's, and say so."""
    recorded = run.metrics.get("provenance")
    return {
        "run": str(run.root),
        "run_wall_s": run.metrics.get("wall_s"),
        "seeds": seeds(run.config),
        "recorded_by_run": recorded,
        "git_commit": git_commit(),
        "versions": versions(),
        "machine": machine(),
        "config_yaml": (run.root / "config.yaml").read_text(encoding="utf-8"),
        "note": "" if recorded else "git commit, versions and machine are those of the report step (the run records none)",
    }
