"""The predict loop: every input read, checked, segmented by the engine and written on its own grid.

One bad input never stops the others: its error (file + problem) is recorded, the rest go on, and
the run's exit code is 1 if anything failed. Per input the outputs are ``<key>_mask.nii.gz`` (uint8,
1 = whole tumour) and optionally ``<key>_prob.nii.gz`` (float32 foreground probability), both with
exactly the input's shape, affine and orientation (checked after writing), and for a DICOM series
``<key>_seg.dcm``, a DICOM SEG over the source slices (:mod:`plgg_fl.predict.dicom_seg`); keys are
unique within a run (:mod:`plgg_fl.predict.naming`). The run writes ``volumes.csv`` (tumour volume in
ml per scan, with its input file), ``summary.json`` and appends to ``predict.log`` (:mod:`plgg_fl.predict.runlog`).

Before any scan is read, the run checks what would make it fail as a whole and raises
:class:`SetupError` (the CLI's exit code 2): the output folder is not writable, two inputs would
write one file, a brain-mask file does not fit the inputs, the model is not a plgg-fl model,
``--dicom-seg`` is given with an input that is not a DICOM series.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from plgg_fl.predict.dicom_seg import seg_source, write_dicom_seg
from plgg_fl.predict.io import InputError, ScanInput, SetupError, atomic_write, discover_inputs, read_brain_mask, read_scan, write_like
from plgg_fl.predict.naming import attach_brain_masks, check_outputs, drop_repeats, make_keys_unique, output_files
from plgg_fl.engine.infer import crop_affine
from plgg_fl.predict.prep import apply_brain_mask, brain_box, brain_region, check_scan, lattice_box, n4_correct
from plgg_fl.predict.runlog import FILE_LOG, run_log

log = logging.getLogger(__name__)
CSV_FIELDS = ("key", "status", "volume_ml", "voxels", "input", "brain_mask", "mask", "prob", "dicom_seg", "seconds", "error")


@dataclass
class PredictOptions:
    """``tta`` / ``keep_largest`` / ``n4`` / ``sw_batch_size``: None = the model's default.

    ``device``: auto | cpu | cuda. ``precision``: auto (bf16 autocast on CPUs with native bf16, fp32
    on other CPUs; CUDA uses the model's fp16 AMP setting) | fp32 | bf16. ``crop``: cut the brain's
    bounding box (+ ``margin_mm``) out of the input before the engine's chain and paste the result
    back; None = iff the model crops to the brain anyway (``crop_to_brain``), so it only saves work.
    ``hot_box``: resample the probability back to the input grid only around the coarse voxels above
    0.5 (the mask is the full inversion's up to float rounding; off whenever ``prob`` is asked for).
    ``dicom_seg``: also write ``<key>_seg.dcm``; None = for DICOM series inputs, True = required for
    every input (a run with any other input does not start).
    """

    tta: bool | None = None
    keep_largest: bool | None = None
    n4: bool | None = None
    prob: bool = False
    overwrite: bool = False
    device: str = "auto"
    split: str | None = None
    brain_masks: str | None = None
    progress: bool = True
    precision: str = "auto"
    sw_batch_size: int | None = None
    crop: bool | None = None
    margin_mm: float = 8.0
    hot_box: bool = True
    dicom_seg: bool | None = None


@dataclass
class CaseResult:
    """One row of ``volumes.csv``: ``input`` is the scan file (DICOM: its folder), ``volume_ml`` in ml."""

    key: str
    input: str
    status: str = "failed"  # "ok" | "failed"
    volume_ml: float | None = None
    voxels: int | None = None
    brain_mask: str | None = None
    mask: str | None = None
    prob: str | None = None
    dicom_seg: str | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Summary:
    results: list[CaseResult] = field(default_factory=list)
    out_dir: str = ""
    model: str = ""

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if r.status != "ok"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or not self.results else 0

    def text(self) -> str:
        """The printed summary: one line per input, naming its key, result and input file."""
        ok = len(self.results) - len(self.failures)
        lines = [f"{ok} of {len(self.results)} scan(s) segmented -> {self.out_dir}"]
        lines += [f"  {r.key}: {r.volume_ml:.2f} ml  ({r.input})" for r in self.results if r.status == "ok"]
        if self.failures:
            lines.append(f"{len(self.failures)} FAILED:")
            lines += [f"  {r.key}: {_problem(r)}  ({r.input})" for r in self.failures]
        return "\n".join(lines)


def _problem(r: CaseResult) -> str:
    """``r.error`` without the leading ``"<input>: "`` (the summary names the input anyway)."""
    err = r.error or "failed"
    return err[len(r.input) + 2 :] if err.startswith(f"{r.input}: ") else err


def segment_scan(model: Any, cfg: Any, item: ScanInput, out_dir: Path, opts: PredictOptions, model_name: str = "") -> CaseResult:
    """Segment one input and write its outputs. Raises on any problem (the caller isolates it).

    ``model_name`` is recorded in a DICOM SEG's algorithm identification.
    """
    from plgg_fl.engine.infer import predict as engine_predict

    res = CaseResult(key=item.key, input=str(item.path), brain_mask=str(item.brain_mask) if item.brain_mask else None)
    files = output_files(item, out_dir, opts.prob, opts.dicom_seg)
    for p in files.values():
        if p.exists() and not opts.overwrite:  # fail before spending compute
            raise FileExistsError(f"{p}: already exists; pass --overwrite to replace it")
    if item.error:
        raise InputError(item.path, item.error)
    if item.brain_mask_error:
        raise InputError(item.path, item.brain_mask_error)
    scan, brain, image = _checked_input(item, cfg, opts)
    if "dicom_seg" in files:
        seg_source(scan)  # no SEG possible: fail before spending compute
    crop = cfg.crop_to_brain if opts.crop is None else opts.crop
    box = tuple(slice(0, n) for n in scan.shape)
    if crop:
        box = lattice_box(brain_box(brain, scan.affine, opts.margin_mm), scan.shape, scan.affine, cfg.spacing_mm, cfg.orientation)
    sub = nib.Nifti1Image(np.ascontiguousarray(image[box]), crop_affine(scan.affine, box))
    pred = engine_predict(model, sub, cfg, tta=opts.tta, keep_largest=opts.keep_largest, return_prob=opts.prob,
                          hot_box=opts.hot_box)
    mask = _paste(pred.mask, box, brain, np.uint8)
    prob = _paste(pred.prob, box, brain, np.float32) if opts.prob else None
    written = _write_outputs(scan, mask, prob, files, opts.overwrite, model_name)
    res.voxels = int(mask.sum())
    res.volume_ml = round(res.voxels * scan.voxel_ml, 4)
    res.mask, res.prob, res.dicom_seg = (str(written[k]) if k in written else None for k in ("mask", "prob", "dicom_seg"))
    res.status = "ok"
    return res


def _checked_input(item: ScanInput, cfg: Any, opts: PredictOptions) -> tuple[Any, np.ndarray, np.ndarray]:
    """(scan, boolean brain region, image to segment: zero outside a given brain mask, N4 if asked)."""
    scan = read_scan(item)
    check_scan(scan)
    given = read_brain_mask(item.brain_mask, scan) if item.brain_mask is not None else None
    brain = brain_region(scan, given)
    image = apply_brain_mask(scan, brain) if given is not None else scan.array
    n4 = opts.n4 if opts.n4 is not None else bool(cfg.extra.get("n4", False))
    if n4:
        image = n4_correct(image, brain, scan.spacing_mm)
    return scan, brain, image


def _paste(values: np.ndarray, box: tuple[slice, ...], brain: np.ndarray, dtype: Any) -> np.ndarray:
    """``values`` (the box's prediction) in a full-grid array, 0 outside ``box`` and outside the brain."""
    full = np.zeros(brain.shape, dtype)
    full[box] = values
    full[~brain] = 0  # tumour lies inside the brain (also where the inverse resampling smears)
    return full


def _write_outputs(scan: Any, mask: np.ndarray, prob: np.ndarray | None, files: dict[str, Path], overwrite: bool,
                   model_name: str = "") -> dict[str, Path]:
    """Write ``files`` (:func:`output_files`): the mask and probability map on ``scan``'s grid, then the
    DICOM SEG of the mask; on any failure none of them is left. Returns the written paths by kind."""
    written: dict[str, Path] = {}
    try:
        written["mask"] = write_like(mask, scan, files["mask"], overwrite=overwrite)
        if "prob" in files:
            written["prob"] = write_like(prob, scan, files["prob"], overwrite=overwrite)
        if "dicom_seg" in files:
            written["dicom_seg"] = write_dicom_seg(mask, scan, files["dicom_seg"], model_name, overwrite=overwrite)
    except BaseException:
        for p in written.values():  # leave no partial set of outputs behind
            p.unlink(missing_ok=True)
        raise
    return written


def inference_config(cfg: Any, opts: PredictOptions) -> Any:
    """The model's TrainConfig with this run's speed settings (precision, windows per forward)."""
    changes: dict[str, Any] = {}
    if opts.sw_batch_size:
        changes["sw_batch_size"] = int(opts.sw_batch_size)
    if opts.precision == "fp32":
        changes.update(cpu_bf16=False, amp=False)
    elif opts.precision == "bf16":
        changes["cpu_bf16"] = True
    elif opts.precision == "auto":
        changes["cpu_bf16"] = "auto"  # the engine's rule: on iff the CPU has native bf16
    else:
        raise ValueError(f"precision must be auto, fp32 or bf16, got {opts.precision!r}")
    return cfg.replace(**changes)


def _error_text(item: ScanInput, exc: BaseException) -> str:
    if isinstance(exc, (InputError, FileExistsError)):
        return str(exc)
    return f"{item.path}: {type(exc).__name__}: {exc}"


def collect_inputs(sources: Sequence[str | Path], out_dir: Path, opts: PredictOptions) -> tuple[list[ScanInput], list[CaseResult]]:
    """(scans to segment with unique keys and their brain masks, failed rows for sources holding none).

    Raises :class:`SetupError` if two inputs would write one file, an output would replace an input, ``out_dir`` is an input folder,
    ``opts.brain_masks`` does not fit the inputs, or ``opts.dicom_seg`` is True for an input that is
    not a DICOM series (:mod:`plgg_fl.predict.naming`).
    """
    items: list[ScanInput] = []
    failed: list[CaseResult] = []
    for src in sources:
        if Path(src).is_dir() and Path(src).resolve() == Path(out_dir).resolve():
            raise SetupError("--out is an input folder: the masks written there would be read as scans (or as a "
                             "second DICOM series) by the next run; choose another --out", src)
        try:
            items += discover_inputs(src, split=opts.split)
        except InputError as exc:
            failed.append(CaseResult(key=Path(src).name, input=str(src), error=str(exc)))
    items = drop_repeats(items)
    make_keys_unique(items)
    if opts.brain_masks is not None and items:
        attach_brain_masks(items, opts.brain_masks)
    check_outputs(items, Path(out_dir), opts.prob, opts.dicom_seg)
    return items, failed


def prepare_output(out: Path, overwrite: bool) -> tuple[Path, Path]:
    """Create ``out`` and prove it writable; return the report paths (``volumes.csv``, ``summary.json``).

    Raises :class:`SetupError` if the folder cannot be written, ``FileExistsError`` if the reports
    exist and ``overwrite`` is False.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".plgg-fl-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SetupError(f"output folder not writable: {exc.strerror or exc}; choose another --out", out) from None
    reports = out / "volumes.csv", out / "summary.json"
    for p in reports:
        if p.exists() and not overwrite:
            raise FileExistsError(f"already exists; pass --overwrite or choose another --out ({p})")
    return reports


def _run_one(model: Any, cfg: Any, item: ScanInput, out: Path, opts: PredictOptions, model_name: str = "") -> CaseResult:
    """:func:`segment_scan` with its failure turned into a failed row (message on the console, traceback in the log)."""
    t0 = time.perf_counter()
    try:
        res = segment_scan(model, cfg, item, out, opts, model_name)
        FILE_LOG.info("%s: ok, %s ml -> %s", item.path, res.volume_ml, res.mask)
    except Exception as exc:  # noqa: BLE001 - isolate every input
        expected = isinstance(exc, (InputError, FileExistsError))
        FILE_LOG.debug("%s: failed", item.path, exc_info=not expected)
        res = CaseResult(key=item.key, input=str(item.path), error=_error_text(item, exc))
        res.brain_mask = str(item.brain_mask) if item.brain_mask else None
        log.error("%s", res.error)
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


def predict_inputs(sources: Sequence[str | Path], model_path: str | Path, out_dir: str | Path, opts: PredictOptions | None = None) -> Summary:
    """Segment every scan found in ``sources`` with the model at ``model_path`` (checkpoint or export).

    Everything that would stop the whole run is checked first, before any scan is read: raises
    :class:`SetupError`, ``FileExistsError`` (reports present, no ``overwrite``) or ``FileNotFoundError``
    (no model).
    """
    from plgg_fl.predict.export import load_model

    opts = opts or PredictOptions()
    out = Path(out_dir)
    items, failed = collect_inputs(sources, out, opts)
    csv_path, json_path = prepare_output(out, opts.overwrite)
    model, cfg, _card = load_model(model_path, device=opts.device)
    cfg = inference_config(cfg, opts)
    summary = Summary(results=failed, out_dir=str(out), model=str(model_path))
    model_name = f"{Path(model_path).name} ({cfg.preset})"
    with run_log(out):
        FILE_LOG.info("plgg-fl predict: %d scan(s), model %s", len(items), model_path)
        bar = tqdm(items, desc="predict", unit="scan", disable=not opts.progress)
        for item in bar:
            bar.set_postfix_str(item.key)
            summary.results.append(_run_one(model, cfg, item, out, opts, model_name))
        write_reports(summary, csv_path, json_path, overwrite=opts.overwrite)
    return summary


def write_reports(summary: Summary, csv_path: Path, json_path: Path, overwrite: bool = False) -> None:
    """``volumes.csv`` (one row per input, volume in ml) and ``summary.json``, both atomic."""
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in summary.results:
        w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    atomic_write(csv_path, lambda p: p.write_text(buf.getvalue(), encoding="utf-8"), overwrite=overwrite)
    doc = {
        "model": summary.model,
        "n_inputs": len(summary.results),
        "n_ok": len(summary.results) - len(summary.failures),
        "n_failed": len(summary.failures),
        "failures": [{"key": r.key, "input": r.input, "error": r.error} for r in summary.failures],
        "results": [asdict(r) for r in summary.results],
    }
    atomic_write(json_path, lambda p: p.write_text(json.dumps(doc, indent=2), encoding="utf-8"), overwrite=overwrite)
