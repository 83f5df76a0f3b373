"""Site data manifest: what a site has, where it lies, and which split each case belongs to.

A manifest is a YAML (or JSON) file kept *at the site*, next to or above its data::

    schema_version: 1
    site: cbtn                  # free text; the NVFlare client name by convention
    data_root: .                # relative to the manifest file's folder (or absolute)
    modality: T2
    spacing_mm: [2.0, 2.0, 2.0] # optional: declared voxel spacing; `data check` flags cases far from it
    label_values: [0, 1]        # values a reference mask may hold; foreground (whole tumour) = label > 0
    cases:
      - key: cbtn_0001          # unique, pseudonymous case key
        split: train            # train | val | test
        image: imagesTr/cbtn_0001_0000.nii.gz
        masks:                  # one or more references, rater name -> path (relative to data_root)
          ref: labelsTr/cbtn_0001.nii.gz

Paths are relative to ``data_root`` so a manifest can be moved together with its data. A test
case may have no mask (inference only); a training case must have at least one. The first mask
listed is the *primary* reference used for training; all are used for multi-rater evaluation.

:func:`load_manifest` checks the schema and raises :class:`ManifestError` naming the file, the
case and the field; it does not open the images (that is :mod:`plgg_fl.data.validate`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
#: BraTS 2021 labels: 1 necrotic core, 2 oedema, 4 enhancing tumour. Whole tumour = label > 0.
BRATS_LABEL_VALUES = (0, 1, 2, 4)
BINARY_LABEL_VALUES = (0, 1)

_TOP_KEYS = {"schema_version", "site", "data_root", "modality", "spacing_mm", "label_values", "cases", "source"}
_CASE_KEYS = {"key", "split", "image", "masks"}


class ManifestError(ValueError):
    """A manifest that does not follow the schema. The message names the file and the field."""


@dataclass(frozen=True)
class Case:
    """One scan: a T2 image and zero or more reference masks (absolute paths once loaded)."""

    key: str
    split: str
    image: Path
    masks: dict[str, Path] = field(default_factory=dict)

    @property
    def primary_mask(self) -> Path | None:
        """The first reference listed: the one training uses."""
        return next(iter(self.masks.values()), None)

    @property
    def raters(self) -> list[str]:
        return list(self.masks)


@dataclass
class Manifest:
    """A site's cases. ``root`` is absolute; case paths are absolute."""

    site: str
    root: Path
    cases: list[Case]
    modality: str = "T2"
    spacing_mm: tuple[float, float, float] | None = None
    label_values: tuple[int, ...] = BINARY_LABEL_VALUES
    source: str | None = None  # where it was imported from (e.g. "brats2021", "nnunet_raw", "pairs")
    path: Path | None = None  # the file it was read from, if any

    def split(self, name: str) -> list[Case]:
        """Cases of one split (``train``, ``val`` or ``test``), in manifest order."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [c for c in self.cases if c.split == name]

    def counts(self) -> dict[str, int]:
        return {s: sum(c.split == s for c in self.cases) for s in SPLITS}

    def to_dict(self, manifest_dir: Path | None = None) -> dict[str, Any]:
        """Plain data for writing; paths are made relative to ``root`` (and root to ``manifest_dir``)."""
        root = self.root.resolve()
        if manifest_dir is not None:
            try:
                data_root = Path(_relpath(root, Path(manifest_dir).resolve()))
            except ValueError:
                data_root = root
        else:
            data_root = root
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "site": self.site, "data_root": str(data_root)}
        out["modality"] = self.modality
        if self.spacing_mm is not None:
            out["spacing_mm"] = [float(s) for s in self.spacing_mm]
        out["label_values"] = [int(v) for v in self.label_values]
        if self.source:
            out["source"] = self.source
        out["cases"] = [
            {
                "key": c.key,
                "split": c.split,
                "image": _relpath(Path(c.image), root),
                "masks": {r: _relpath(Path(p), root) for r, p in c.masks.items()},
            }
            for c in self.cases
        ]
        return out


def _relpath(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(Path(path).resolve(), start)).as_posix()


def write_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write ``manifest`` as YAML (or JSON if the name ends in .json), atomically. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = manifest.to_dict(manifest_dir=path.parent)
    text = json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    manifest.path = path
    return path


def load_manifest(path: str | Path) -> Manifest:
    """Read and schema-check a manifest file. Raises :class:`ManifestError` with every problem found."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: cannot parse manifest: {exc}") from exc
    return manifest_from_dict(data, base_dir=path.parent, origin=str(path))


def manifest_from_dict(data: Any, base_dir: Path, origin: str = "<manifest>") -> Manifest:
    """Build a :class:`Manifest` from parsed YAML/JSON, collecting all schema errors before raising."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ManifestError(f"{origin}: top level must be a mapping, got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        errors.append(f"unknown top-level field(s): {', '.join(sorted(unknown))}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        errors.append(f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    site = data.get("site")
    if not isinstance(site, str) or not site:
        errors.append("'site' must be a non-empty string")
    root_raw = data.get("data_root", ".")
    if not isinstance(root_raw, str):
        errors.append("'data_root' must be a path string")
        root_raw = "."
    root = (Path(base_dir) / Path(root_raw).expanduser()).resolve()
    spacing = data.get("spacing_mm")
    if spacing is not None:
        if (
            not isinstance(spacing, (list, tuple))
            or len(spacing) != 3
            or not all(isinstance(s, (int, float)) and s > 0 for s in spacing)
        ):
            errors.append(f"'spacing_mm' must be three positive numbers (mm), got {spacing!r}")
            spacing = None
        else:
            spacing = tuple(float(s) for s in spacing)
    labels = data.get("label_values", list(BINARY_LABEL_VALUES))
    if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(v, int) for v in labels):
        errors.append(f"'label_values' must be a list of integers, got {labels!r}")
        labels = list(BINARY_LABEL_VALUES)
    if 0 not in labels:
        errors.append("'label_values' must contain 0 (background)")
    modality = data.get("modality", "T2")
    cases_raw = data.get("cases")
    cases: list[Case] = []
    if not isinstance(cases_raw, list):
        errors.append("'cases' must be a list")
        cases_raw = []
    for i, item in enumerate(cases_raw):
        where = f"cases[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{where}: must be a mapping")
            continue
        key = item.get("key")
        if isinstance(key, str) and key:
            where = f"cases[{i}] (key {key})"
        else:
            errors.append(f"{where}: 'key' must be a non-empty string")
            continue
        unknown = set(item) - _CASE_KEYS
        if unknown:
            errors.append(f"{where}: unknown field(s): {', '.join(sorted(unknown))}")
        split = item.get("split")
        if split not in SPLITS:
            errors.append(f"{where}: 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
        image = item.get("image")
        if not isinstance(image, str) or not image:
            errors.append(f"{where}: 'image' must be a path string")
            continue
        masks_raw = item.get("masks", {}) or {}
        if isinstance(masks_raw, str):  # a single mask path is accepted as rater "ref"
            masks_raw = {"ref": masks_raw}
        if not isinstance(masks_raw, dict) or not all(
            isinstance(r, str) and isinstance(p, str) and p for r, p in masks_raw.items()
        ):
            errors.append(f"{where}: 'masks' must map rater name -> path string")
            continue
        if split in ("train", "val") and not masks_raw:
            errors.append(f"{where}: a {split} case needs at least one reference mask")
        cases.append(
            Case(
                key=key,
                split=split if split in SPLITS else "test",
                image=(root / image),
                masks={r: (root / p) for r, p in masks_raw.items()},
            )
        )
    if errors:
        raise ManifestError(f"{origin}: invalid manifest:\n  - " + "\n  - ".join(errors))
    return Manifest(
        site=site,
        root=root,
        cases=cases,
        modality=str(modality),
        spacing_mm=spacing,
        label_values=tuple(int(v) for v in labels),
        source=data.get("source"),
    )


def data_provenance(manifest_path: str | Path) -> str:
    """One line saying what a site's data is, for model cards: ``synthetic (...)`` when the manifest
    sits next to the ``cohort.json`` that :mod:`plgg_fl.synth` writes, else the site's own data. Names
    no path or case (it travels with the model)."""
    marker = Path(manifest_path).parent / "cohort.json"
    try:
        info = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    except (OSError, ValueError):
        info = {}
    if isinstance(info, dict) and info.get("generator") == "plgg_fl.synth":
        return (f"synthetic: plgg_fl.synth {info.get('generator_version', '?')} '{info.get('size', '?')}' cohort, "
                f"seed {info.get('seed', '?')} (not patient data)")
    return "the site's own scans (read from its manifest; not synthetic)"
