"""The synthetic three-site cohort: render cases and write them in each site's real-world layout.

* ``brats``    adult glioma, BraTS 2021 folders (``BraTS2021_00000/BraTS2021_00000_t2.nii.gz`` + ``_seg``),
  labels {0, 1, 2, 4}; splits train / val.
* ``cbtn``     pediatric development cohort, nnU-Net raw (``Dataset501_CBTN/imagesTr``, ``labelsTr``,
  ``imagesTs``, ``labelsTs``, ``dataset.json``); splits train / val (both in imagesTr) / test (imagesTs).
* ``dfci_bch`` pediatric external cohort, plain pairs (``cases/<key>_t2.nii.gz`` + ``_seg.nii.gz``); test
  cases carry three expert masks ``_seg_expert1|2|3.nii.gz`` instead of one reference.

Every case has its own random stream seeded by (seed, site, index), so a case does not depend on
which other cases or sites are generated, nor on their order or the number of worker processes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from plgg_fl.synth import anatomy, scanner, tumours
from plgg_fl.synth.grid import smooth_noise
from plgg_fl.synth.subject import Subject

log = logging.getLogger(__name__)
GENERATOR_VERSION = "1.1"
SITES = ("brats", "cbtn", "dfci_bch")
#: per size: base voxel spacing (mm) and cases per site
SIZES = {
    "tiny": {"spacing_mm": 4.0, "cases": {"brats": 5, "cbtn": 6, "dfci_bch": 5}},
    "demo": {"spacing_mm": 2.0, "cases": {"brats": 40, "cbtn": 36, "dfci_bch": 30}},
}
#: fraction of a site's cases in (val, test); the rest is train
SPLIT_FRACTIONS = {"brats": (0.2, 0.0), "cbtn": (0.15, 0.3), "dfci_bch": (0.15, 0.5)}
RATERS = ("expert1", "expert2", "expert3")


def case_rng(seed: int, site: str, index: int) -> np.random.Generator:
    """Independent random stream of one case."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(site.encode()), int(index)]))


def splits_for(site: str, n: int) -> list[str]:
    """Split of each case index: train first, then val, then test (at least one val, and one test where used)."""
    fv, ft = SPLIT_FRACTIONS[site]
    n_test = max(1, int(round(ft * n))) if ft > 0 and n >= 3 else 0
    n_val = max(1, int(round(fv * n))) if n >= 2 else 0
    return ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test


def render_case(site: str, index: int, seed: int, base_mm: float, split: str) -> dict:
    """Render one case in memory: image, masks (rater -> uint8 array), affine and metadata."""
    rng = case_rng(seed, site, index)
    prof = scanner.PROFILES[site]
    adult = site == "brats"
    subj = Subject.random(rng, (0.92, 1.02) if adult else (0.85, 0.95))
    tum = tumours.sample_adult(rng) if adult else tumours.sample_plgg(rng)
    affine, shape = prof.affine(base_mm), prof.shape(base_mm)
    spacing = np.asarray(prof.spacing(base_mm))
    u = subj.coords(affine, shape)
    v = tum.displace(u)
    tissues = anatomy.load_tissues()
    clean = anatomy.sample(anatomy.t2_template(prof.t2_weights, tuple(spacing)), v)
    brain = clean > anatomy.BRAIN_THRESHOLD
    if tum.hydrocephalus_mm > 0:
        anatomy.widen_ventricles(clean, v, tum.hydrocephalus_mm, prof.t2_weights[0])
    # tumour bounding box in voxels (extent scaled to the subject, plus warp margin)
    c_vox = np.linalg.solve(affine, subj.mni_to_world() @ np.append(tum.centre, 1.0))[:3]
    half = (tum.extent_mm * subj.scale + 10.0) / spacing
    lo = np.clip(np.floor(c_vox - half), 0, shape).astype(int)
    hi = np.clip(np.ceil(c_vox + half) + 1, 0, shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ub, vb = u[(slice(None), *box)], v[(slice(None), *box)]
    wm = anatomy.sample(tissues.wm, vb)
    img_b, lab_b = tumours.render(tum, ub, clean[box], wm, smooth_noise(rng, ub.shape[1:]))
    clean[box] = img_b
    labels = np.zeros(shape, np.uint8)
    labels[box] = lab_b * brain[box]
    image, acq = scanner.acquire(clean, brain, prof, rng)
    masks = {}
    meta = {"split": split, "location": tum.location, "tumour": tum.kind, "parts": sorted(tum.parts),
            "hydrocephalus_mm": round(tum.hydrocephalus_mm, 2),
            "centre_mni_mm": [round(float(x), 2) for x in tum.centre], "subject_scale": round(subj.scale, 4),
            "world_to_mni": np.round(subj.world_to_mni(), 5).tolist(),
            "volume_ml": round(float((labels > 0).sum() * spacing.prod() / 1000.0), 3), **acq}
    if site == "dfci_bch" and split == "test":
        raters = tumours.rater_masks(tum, ub, rng, len(RATERS))
        for name, r in zip(RATERS, raters):
            m = np.zeros(shape, np.uint8)
            m[box] = r & brain[box]
            masks[name] = m
        meta["inter_rater_dice"] = round(mean_pairwise_dice(list(masks.values())), 4)
    else:
        masks["ref"] = labels
    return {"image": image, "masks": masks, "affine": affine, "meta": meta}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * (a & b).sum() / s)


def mean_pairwise_dice(masks: list[np.ndarray]) -> float:
    pairs = [(i, j) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    return float(np.mean([dice(masks[i], masks[j]) for i, j in pairs]))


def save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI with the affine as both qform and sform (code 1, scanner), units mm."""
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def case_key(site: str, index: int) -> str:
    return {"brats": f"BraTS2021_{index:05d}", "cbtn": f"cbtn_{index + 1:04d}", "dfci_bch": f"dfci_bch_{index + 1:04d}"}[site]


def case_paths(site: str, key: str, split: str, raters: list[str]) -> tuple[str, dict[str, str]]:
    """Image and mask paths (relative to the site folder) in the site's real-world layout."""
    if site == "brats":
        return f"{key}/{key}_t2.nii.gz", {"ref": f"{key}/{key}_seg.nii.gz"}
    if site == "cbtn":
        d, s = "Dataset501_CBTN", "Ts" if split == "test" else "Tr"
        return f"{d}/images{s}/{key}_0000.nii.gz", {"ref": f"{d}/labels{s}/{key}.nii.gz"}
    if raters == ["ref"]:
        return f"cases/{key}_t2.nii.gz", {"ref": f"cases/{key}_seg.nii.gz"}
    return f"cases/{key}_t2.nii.gz", {r: f"cases/{key}_seg_{r}.nii.gz" for r in raters}


def _job(args) -> dict:
    site, index, seed, base_mm, split, site_dir = args
    case = render_case(site, index, seed, base_mm, split)
    key = case_key(site, index)
    image, masks = case_paths(site, key, split, list(case["masks"]))
    save_nifti(case["image"], case["affine"], site_dir / image)
    for rater, rel in masks.items():
        save_nifti(case["masks"][rater], case["affine"], site_dir / rel)
    return {"key": key, "image": image, "masks": masks, **case["meta"]}


def _warm(sites, base_mm) -> None:
    """Load the template (and per-site T2 contrasts) before forking so workers share them."""
    for s in sites:
        p = scanner.PROFILES[s]
        anatomy.t2_template(p.t2_weights, tuple(np.asarray(p.spacing(base_mm))))


def _write_site_files(site: str, site_dir: Path, rows: list[dict], seed: int, size: str, base_mm: float) -> Path:
    from plgg_fl.data.manifest import BINARY_LABEL_VALUES, BRATS_LABEL_VALUES, Case, Manifest, write_manifest

    prof = scanner.PROFILES[site]
    cases = [Case(r["key"], r["split"], site_dir / r["image"], {k: site_dir / v for k, v in r["masks"].items()}) for r in rows]
    source = {"brats": "brats2021", "cbtn": "nnunet_raw", "dfci_bch": "pairs"}[site]
    labels = BRATS_LABEL_VALUES if site == "brats" else BINARY_LABEL_VALUES
    man = Manifest(site=site, root=site_dir, cases=cases, spacing_mm=prof.spacing(base_mm), label_values=labels, source=source)
    if site == "cbtn":
        n_tr = sum(r["split"] != "test" for r in rows)
        ds = {"name": "CBTN", "description": "plgg-fl synthetic pediatric low-grade glioma (T2)",
              "channel_names": {"0": "T2"}, "labels": {"background": 0, "tumor": 1},
              "numTraining": n_tr, "file_ending": ".nii.gz"}
        (site_dir / "Dataset501_CBTN" / "dataset.json").write_text(json.dumps(ds, indent=2) + "\n", encoding="utf-8")
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    info = {"generator": "plgg_fl.synth", "generator_version": GENERATOR_VERSION, "seed": seed, "size": size,
            "site": site, "spacing_mm": list(prof.spacing(base_mm)), "shape": list(prof.shape(base_mm)),
            "image_dtype": prof.dtype, "counts": counts,
            "note": "synthetic data; location centres and world_to_mni are MNI152 2009a mm",
            "cases": rows}
    (site_dir / "cohort.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return write_manifest(man, site_dir / "manifest.yaml")


def _prepare_site_dir(site_dir: Path) -> None:
    """Clear a previous synthetic site (recognised by its cohort.json) so no stale case survives;
    refuse to write into a non-empty folder that this generator did not make."""
    if not site_dir.exists():
        return
    marker = site_dir / "cohort.json"
    ours = False
    if marker.is_file():
        try:
            ours = json.loads(marker.read_text(encoding="utf-8")).get("generator") == "plgg_fl.synth"
        except (OSError, ValueError):
            ours = False
    if ours:
        shutil.rmtree(site_dir)
    elif any(site_dir.iterdir()):
        raise FileExistsError(f"{site_dir} exists and was not made by plgg-fl synth; choose another OUT_DIR")



def _claim_site_dir(site_dir: Path) -> None:
    """Mark the folder as this generator's before any case is written: an interrupted run leaves a
    folder the next run recognises and replaces (the final cohort.json replaces the mark)."""
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "cohort.json").write_text(json.dumps({"generator": "plgg_fl.synth", "complete": False}) + "\n",
                                          encoding="utf-8")


def _render_all(jobs: list[tuple], workers: int, bar) -> list:
    """Render every job (in ``workers`` forked processes when > 1), advancing ``bar``."""
    if workers > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        # workers ignore Ctrl-C (a terminal sends it to them too): the parent stops them, without a
        # traceback from each
        results = []
        with multiprocessing.get_context("fork").Pool(workers, signal.signal, (signal.SIGINT, signal.SIG_IGN)) as pool:
            for r in pool.imap(_job, jobs):
                results.append(r)
                bar.update()
        return results
    results = []
    for j in jobs:
        results.append(_job(j))
        bar.update()
    return results


def generate_cohort(out_dir, seed: int = 0, size: str = "demo", spacing_mm: float | None = None,
                    sites=None, n_cases: int | None = None, progress: bool = True, workers: int | None = None) -> dict[str, Path]:
    """Generate the synthetic cohort under ``out_dir``; return {site: path of its manifest.yaml}.

    ``size``: "tiny" (about 5 cases per site at 4 mm, seconds; for tests) or "demo" (a few dozen per
    site at 2 mm). ``spacing_mm`` overrides the base voxel spacing (mm; sites scale it, see
    :mod:`plgg_fl.synth.scanner`); ``n_cases`` the number of cases per site; ``workers`` the number
    of processes (default: up to 4 CPU cores for demo-sized runs, 1 for tiny ones).
    Same arguments give byte-identical files. A site folder left by an earlier run is replaced;
    a non-empty site folder not made by this generator raises :class:`FileExistsError`.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    sites = [sites] if isinstance(sites, str) else list(sites or SITES)
    bad = [s for s in sites if s not in SITES]
    if bad:
        raise ValueError(f"unknown site(s) {bad}; expected some of {', '.join(SITES)}")
    if n_cases is not None and int(n_cases) < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    if spacing_mm is not None and not 0.5 <= float(spacing_mm) <= 8.0:
        raise ValueError(f"spacing_mm must be between 0.5 and 8 mm, got {spacing_mm}")
    base_mm = float(spacing_mm or SIZES[size]["spacing_mm"])
    out_dir = Path(out_dir)
    jobs = []
    for site in sites:
        n = int(n_cases if n_cases is not None else SIZES[size]["cases"][site])
        for i, split in enumerate(splits_for(site, n)):
            jobs.append((site, i, int(seed), base_mm, split, out_dir / site))
    if workers is None:
        workers = 1 if size == "tiny" and spacing_mm is None else min(4, os.cpu_count() or 1)
    for site in sites:
        _prepare_site_dir(out_dir / site)
        _claim_site_dir(out_dir / site)
    _warm(sites, base_mm)
    from tqdm.auto import tqdm

    with tqdm(total=len(jobs), desc="synth", unit="case", disable=not progress) as bar:  # closed on Ctrl-C too
        results = _render_all(jobs, workers, bar)
    manifests = {}
    for site in sites:
        rows = [r for j, r in zip(jobs, results) if j[0] == site]
        manifests[site] = _write_site_files(site, out_dir / site, rows, int(seed), size, base_mm)
    return manifests
