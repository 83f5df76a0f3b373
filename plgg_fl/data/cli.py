"""``plgg-fl data check`` and ``plgg-fl data import brats|nnunet|pairs``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plgg_fl.errors import CommandError

__all__ = ["register"]


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="site data: import into a manifest, check a manifest")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    check = sub.add_parser(
        "check",
        help="check every case of a manifest; exit 1 if any case is unusable",
        description="Reads every image and mask once and prints one line per problem, then a summary. "
        "Exit status: 0 all cases usable (warnings allowed), 1 some case unusable, 2 the manifest itself is invalid "
        "or its data root does not exist.",
    )
    check.add_argument("manifest", type=Path, help="manifest file (YAML or JSON)")
    check.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON")
    check.add_argument("--split", choices=("train", "val", "test"), action="append",
                       help="only read the files of this split (repeatable; default all)")
    check.add_argument("--spacing-tolerance", type=float, default=0.10, metavar="F",
                       help="allowed relative voxel-spacing difference from the manifest's spacing_mm (default 0.10)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=_check)

    imp = sub.add_parser("import", help="write a manifest from a BraTS, nnU-Net raw or plain-pairs folder")
    fmts = imp.add_subparsers(dest="data_format", metavar="FORMAT")
    imp.set_defaults(func=lambda args: (imp.print_help(), 2)[1])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("src", type=Path, help="source folder (only read, never modified)")
    common.add_argument("--out", type=Path, required=True, metavar="MANIFEST", help="manifest to write (.yaml or .json)")
    common.add_argument("--site", help="site name (default: brats / the source folder name)")
    common.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    common.add_argument("--val-frac", type=float, default=0.2, metavar="F", help="fraction of labelled cases for val (default 0.2)")
    common.add_argument("--test-frac", type=float, default=0.0, metavar="F", help="fraction of labelled cases for test (default 0)")
    common.add_argument("--splits", type=Path, metavar="FILE",
                        help="explicit split list, YAML/JSON {train: [keys], val: [...], test: [...]}; overrides seed/fractions")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub_b = fmts.add_parser("brats", parents=[common], help="BraTS 2021 folder (CASE/CASE_t2.nii.gz + CASE_seg.nii.gz)")
    sub_b.set_defaults(func=_import, importer="brats")
    sub_n = fmts.add_parser("nnunet", parents=[common], help="nnU-Net raw dataset (imagesTr, labelsTr, dataset.json, imagesTs)")
    sub_n.add_argument("--channel", help="channel index or name to use (default: the T2 channel in dataset.json)")
    sub_n.set_defaults(func=_import, importer="nnunet")
    sub_p = fmts.add_parser("pairs", parents=[common], help="plain folder of image/mask pairs matched by name patterns")
    sub_p.add_argument("--image-glob", default="*_t2.nii.gz",
                       help="images, relative to SRC; the first '*' of the file name (or {key}) is the case key (default *_t2.nii.gz)")
    sub_p.add_argument("--mask-pattern", action="append", metavar="PATTERN",
                       help="masks relative to SRC with {key} and optional {rater}, e.g. {key}_seg_{rater}.nii.gz; "
                       "repeatable, tried in order (default {key}_seg.nii.gz)")
    sub_p.add_argument("--raters", help="comma-separated raters to use, primary first (default: all found, sorted)")
    sub_p.add_argument("--labels", default="0,1", help="comma-separated allowed mask values (default 0,1)")
    sub_p.set_defaults(func=_import, importer="pairs")


def _check(args) -> int:
    from plgg_fl.data.manifest import ManifestError, load_manifest
    from plgg_fl.data.validate import check_manifest

    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as exc:
        raise CommandError(exc) from exc
    if not manifest.root.is_dir():  # one line, not one per file
        raise CommandError(f"data root does not exist: {manifest.root}", f"data_root of {args.manifest}")
    report = check_manifest(
        manifest, spacing_tolerance=args.spacing_tolerance, splits=args.split, progress=not args.no_progress
    )
    for p in report.problems:
        print(p.line())
    print(report.summary())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return 1 if report.unusable_keys() else 0


def _import(args) -> int:
    from plgg_fl.data import importers

    common = dict(seed=args.seed, val_frac=args.val_frac, test_frac=args.test_frac, splits=args.splits,
                  progress=not args.no_progress)
    try:
        if args.importer == "brats":
            m = importers.import_brats(args.src, args.out, site=args.site or "brats", **common)
        elif args.importer == "nnunet":
            m = importers.import_nnunet(args.src, args.out, site=args.site, channel=args.channel, **common)
        else:
            m = importers.import_pairs(
                args.src, args.out, site=args.site, image_glob=args.image_glob, mask_pattern=args.mask_pattern or "{key}_seg.nii.gz",
                raters=args.raters.split(",") if args.raters else None,
                label_values=tuple(int(v) for v in args.labels.split(",")), **common,
            )
    except (importers.DataImportError, ValueError, OSError) as exc:
        raise CommandError(exc) from exc
    counts = ", ".join(f"{n} {s}" for s, n in m.counts().items())
    print(f"wrote {args.out}: site {m.site}, {len(m.cases)} cases ({counts}), spacing_mm {m.spacing_mm}")
    return 0
