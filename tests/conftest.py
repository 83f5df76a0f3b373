"""Shared pytest fixtures. Fixture names are prefixed by the sub-package that owns them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _machine_lines() -> list[str]:
    """What the suite's wall time depends on: CPU, the cores this process may use, the load on them."""
    import os

    from plgg_fl.pipeline.simulate import usable_cores

    model = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if ln.startswith("model name")), "?")
    usable = usable_cores()
    quota = _read("/sys/fs/cgroup/cpu.max").strip() or "none found"
    load = " ".join(_read("/proc/loadavg").split()[:3]) or "?"
    import torch

    from plgg_fl.engine.config import cpu_has_native_bf16

    return [f"machine: {model}; {os.cpu_count()} CPUs, {usable} usable, cgroup cpu.max {quota}; load average {load}",
            f"torch {torch.__version__}: {torch.get_num_threads()} threads, native bf16 {cpu_has_native_bf16()}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"]


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def pytest_terminal_summary(terminalreporter):
    """The machine under the durations (shown with -q too, and when the run is cut short)."""
    terminalreporter.section("machine")
    for line in _machine_lines():
        terminalreporter.write_line(line)


def _write_nifti(path, data, zooms=(1.0, 1.0, 1.0), affine=None, dtype=None):
    """Save ``data`` as NIfTI at ``path`` (parents made); ``zooms`` in mm unless ``affine`` is given."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data, dtype=dtype) if dtype is not None else np.asarray(data)
    if affine is None:
        affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def data_write_nifti():
    """``write(path, data, zooms=(1,1,1), affine=None, dtype=None) -> Path``: a small NIfTI file for tests."""
    return _write_nifti


def _case_arrays(seed=0, shape=(12, 12, 12), radius=3):
    """A 12^3 float32 T2-like image and a uint8 sphere mask (label 1) of ``radius`` voxels."""
    rng = np.random.default_rng(seed)
    img = (rng.random(shape, dtype=np.float32) * 100 + 10).astype(np.float32)
    zz, yy, xx = np.indices(shape)
    c = np.array(shape) / 2
    mask = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius**2).astype(np.uint8)
    return img, mask


@pytest.fixture
def data_case_arrays():
    """``arrays(seed=0, shape=(12,12,12), radius=3) -> (image float32, mask uint8)``."""
    return _case_arrays


@pytest.fixture(scope="module")
def predict_one_thread():
    """One torch thread for a module: on a shared, oversubscribed CPU two threads were >10x slower
    (spin-waits)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def predict_ckpt(tmp_path_factory, predict_one_thread):
    """A ``tiny`` engine checkpoint that finds bright blobs (50 steps on 24^3 patches, ~10 s on CPU)."""
    from plgg_fl.engine.toydata import train_blob_model

    return train_blob_model(tmp_path_factory.mktemp("model") / "tiny.pt", preset="tiny", steps=50, patch_size=(24, 24, 24))


#: the methods of the one tiny pipeline run the session shares (:func:`pipeline_tiny_run`)
TINY_RUN_METHODS = ["adult_only", "scratch", "stepwise"]


@pytest.fixture(scope="session")
def pipeline_tiny_run(tmp_path_factory):
    """The whole pipeline on ``simulator_configs/tiny.yaml`` in the real NVFlare simulator, once per test
    session (test_pipeline_tiny.py and test_report.py read it; ~2 min on 2 cores): stage 1, stepwise
    stages 2 -> 3, scratch stages 2 -> 3 and the evaluation of adult_only, scratch and stepwise, with what
    each site sent recorded. The sites send the summary statistics of their 2-case test sets
    (``PLGG_FL_MIN_SUMMARY_CASES=1``, as a site may set it), so the report's numbers can be checked
    against them; the default minimum (counts only) is checked in the real federation
    (tests/test_deploy_federation.py).

    Returns ``{"out": run folder, "metrics": metrics.json content, "cfg": PipelineConfig, "lines": printed}``.
    """
    from plgg_fl.pipeline.config import load_config
    from plgg_fl.pipeline.run import Pipeline
    from plgg_fl.pipeline.simulate import environ_set

    tmp = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config(Path(__file__).resolve().parents[1] / "simulator_configs" / "tiny.yaml")
    cfg.cohort_dir = (tmp / "cohort").resolve()
    cfg.methods = list(TINY_RUN_METHODS)
    lines: list[str] = []
    with environ_set({"PLGG_FL_MIN_SUMMARY_CASES": "1"}):
        metrics = Pipeline(cfg, out_root=tmp / "runs", record_sends=True, printer=lines.append).run()
    return {"out": tmp / "runs" / "tiny", "metrics": metrics, "cfg": cfg, "lines": lines}
