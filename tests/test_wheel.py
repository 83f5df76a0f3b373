"""A non-editable install works: build the wheel, install it into a fresh virtual environment and, from an
empty folder, run ``plgg-fl simulate --config tiny --methods adult_only`` (a stage-1 training job and an
evaluation job) and ``plgg-fl provision`` (~1 min).

The new environment gets the wheel alone (``--no-deps``); its dependencies (torch, NVFlare, MONAI ...)
are borrowed from the running environment through a ``.pth`` line, so the test does not download
gigabytes. A ``.pth`` line adds a folder to ``sys.path`` without running the ``.pth`` files in it, so
the running environment's editable ``plgg_fl`` stays invisible: the test checks that the package,
its configs and its site templates come from the installed wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "plgg_fl", "simulator_configs", "sites")


def _run(cmd, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    # progress bars are UTF-8 whatever the locale (CI may run under an ASCII one)
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_wheel_installs_and_runs_from_an_empty_folder(tmp_path):
    src = tmp_path / "src"  # a clean copy: the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
            REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir() else {}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist"], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("plgg_fl-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel], tmp_path, env)
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).stdout.strip())
    borrowed = [p for p in dict.fromkeys([sysconfig.get_paths()["purelib"], *site.getsitepackages()]) if Path(p).is_dir()]
    (purelib / "zz_borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n", encoding="utf-8")

    work = tmp_path / "empty"
    work.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run([py, "-c", "import plgg_fl, plgg_fl.bundled as b; print(plgg_fl.__file__); print(b.bundled_dir('sites'))"], work, env)
    pkg, sites = where.stdout.split()
    assert Path(pkg).is_relative_to(purelib) and Path(sites) == purelib / "plgg_fl" / "_bundled" / "sites", where.stdout

    # a training job (stage 1) and an evaluation job, their client script and configs from the wheel
    sim = _run([venv / "bin" / "plgg-fl", "simulate", "--config", "tiny", "--methods", "adult_only"], work, env, timeout=900)
    assert (work / "runs" / "tiny" / "summary.txt").is_file(), sim.stdout[-2000:]
    assert "adult_only" in (work / "runs" / "tiny" / "summary.txt").read_text(encoding="utf-8")
    assert "[cbtn] evaluation: scoring model 'adult_only' on test" in sim.stdout, sim.stdout[-2000:]

    _run([venv / "bin" / "plgg-fl", "provision", "--host", "localhost", "--port", "23457", "-w", work / "kits"], work, env)
    privacy = list((work / "kits").rglob("cbtn/local/privacy.json"))
    assert privacy and "ModelAndScalarsOnly" in privacy[0].read_text(encoding="utf-8")
    assert not list(work.glob("simulator_configs")) and not list(work.glob("sites"))  # nothing copied into the folder
