"""ruff (pyflakes + pycodestyle, line length 150: pyproject.toml [tool.ruff]) is clean on the package,
tests, benchmarks and build hook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "plgg_fl", "tests", "benchmarks", "setup.py"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
