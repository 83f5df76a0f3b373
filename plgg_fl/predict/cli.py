"""``plgg-fl predict`` and ``plgg-fl export`` (see docs/inference.md)."""

from __future__ import annotations

import argparse

from plgg_fl.errors import CommandError, os_error


def _setup_error(exc: Exception) -> CommandError:
    """The exception that stopped the run before any scan as a :class:`CommandError` (exit 2)."""
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, OSError) and exc.filename:
        return os_error(exc)
    return CommandError(exc)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment T2 scans (NIfTI file/folder, manifest, DICOM series) with a checkpoint or export",
        description=(
            "Segment whole tumour on skull-stripped T2 scans. Writes <key>_mask.nii.gz on each input's exact "
            "grid (DICOM series: also <key>_seg.dcm, a DICOM SEG over the source slices), volumes.csv (ml, with "
            "each row's input file), summary.json and predict.log. <key> is the file "
            "name without extension and nnU-Net's _0000; inputs sharing a name get their folder names folded in "
            "(patientA__t2). Scans must be skull-stripped (zero outside the brain) or come with a brain mask; no "
            "skull-stripping network is bundled. Exit code 1 if any input failed, 2 if the run could not start."
        ),
    )
    p.add_argument("inputs", nargs="+", help="NIfTI/MHA/NRRD file, folder of them, manifest (.yaml/.json), or DICOM folder")
    p.add_argument("--model", "-m", required=True, help="engine checkpoint (.pt) or `plgg-fl export` folder")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--brain-mask", dest="brain_masks",
                   help="brain mask file (one input) or folder of masks named exactly <key>.nii.gz or <key>_brainmask.nii.gz")
    p.add_argument("--split", choices=("train", "val", "test"), help="with a manifest: only this split")
    p.add_argument("--prob", action="store_true", help="also write <key>_prob.nii.gz (foreground probability)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="mirror test-time augmentation (default: the model's)")
    p.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None, help="keep the largest component (default: the model's)")
    p.add_argument("--n4", action=argparse.BooleanOptionalAction, default=None, help="N4 bias-field correction first (default: the model's)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast on CPUs with native bf16 (AVX512_BF16/AMX), else fp32; CUDA: the model's fp16 AMP")
    p.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default: the model's)")
    p.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                   help="cut the brain box out before preprocessing (default: iff the model crops to the brain)")
    p.add_argument("--dicom-seg", action=argparse.BooleanOptionalAction, default=None,
                   help="also write <key>_seg.dcm, a DICOM SEG over the source series (default: for DICOM series inputs; "
                        "--dicom-seg with any other input stops the run)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_predict)

    e = sub.add_parser("export", help="export a checkpoint for inference: torch.export + model card, or a MONAI bundle",
                       description=(
                           "--format plgg-fl (default): OUT/model.pt2 (torch.export program) and OUT/model_card.json for "
                           "`plgg-fl predict`. --format monai-bundle: a MONAI bundle (configs/inference.json, "
                           "configs/metadata.json, models/model.pt, docs/README.md) that `python -m monai.bundle run` "
                           "executes with MONAI alone."))
    e.add_argument("--model", "-m", metavar="CKPT", help="engine checkpoint (.pt) to export")
    e.add_argument("--out", "-o", metavar="DIR", help="output folder (or give it as the one positional argument)")
    e.add_argument("--format", "-f", dest="fmt", choices=("plgg-fl", "monai-bundle"), default="plgg-fl",
                   help="plgg-fl: torch.export + model card (default); monai-bundle: a MONAI bundle")
    e.add_argument("legacy", nargs="*", help=argparse.SUPPRESS)  # DIR with --model, or the old form CKPT OUT
    e.add_argument("--overwrite", action="store_true", help="replace an existing export (default: refuse)")
    e.set_defaults(func=_export)


def _predict(args: argparse.Namespace) -> int:
    from plgg_fl.predict.run import PredictOptions, predict_inputs

    opts = PredictOptions(
        tta=args.tta,
        keep_largest=args.keep_largest,
        n4=args.n4,
        prob=args.prob,
        overwrite=args.overwrite,
        device=args.device,
        split=args.split,
        brain_masks=args.brain_masks,
        progress=not args.no_progress,
        precision=args.precision,
        sw_batch_size=args.sw_batch_size,
        crop=args.crop,
        dicom_seg=args.dicom_seg,
    )
    try:
        summary = predict_inputs(args.inputs, args.model, args.out, opts)
    except (OSError, ValueError) as exc:  # SetupError, reports present, no model, output unwritable
        raise _setup_error(exc) from None
    print(summary.text())
    return summary.exit_code


def _export(args: argparse.Namespace) -> int:
    from plgg_fl.predict.bundle import export_bundle
    from plgg_fl.predict.export import export_model

    model, out_dir = _export_paths(args)
    write = export_bundle if args.fmt == "monai-bundle" else export_model
    try:
        out = write(model, out_dir, overwrite=args.overwrite)
    except (OSError, ValueError) as exc:
        raise _setup_error(exc) from None
    print(f"exported {model} -> {out}" + (f"\nrun it: python -m monai.bundle run --config_file {out}/configs/inference.json "
                                          f"--bundle_root {out} --dataset_dir SCANS --output_dir OUT" if args.fmt == "monai-bundle" else ""))
    return 0


def _export_paths(args: argparse.Namespace) -> tuple[str, str]:
    """``--model CKPT`` with ``--out DIR`` or one positional ``DIR``, or the old form ``CKPT OUT``; nothing missing."""
    if args.model and not args.out and len(args.legacy) == 1:
        return args.model, args.legacy[0]
    if args.legacy and (len(args.legacy) != 2 or args.model or args.out):
        raise CommandError("give --model CKPT --out DIR")
    model, out = args.legacy if args.legacy else (args.model, args.out)
    if not model or not out:
        raise CommandError("give --model CKPT --out DIR")
    return model, out
