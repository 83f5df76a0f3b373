"""``plgg-fl synth OUT_DIR``: write the synthetic three-site cohort (and optionally a preview PNG)."""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate the synthetic multi-site pLGG cohort (brats, cbtn, dfci_bch) with manifests",
        description="Generate a seeded synthetic cohort: adult glioma in BraTS 2021 layout, a pediatric "
        "development cohort in nnU-Net raw layout and a pediatric external cohort with three expert masks "
        "per test case. Each site gets OUT_DIR/<site>/manifest.yaml and cohort.json.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (one sub-folder per site)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> byte-identical files)")
    p.add_argument("--size", choices=("tiny", "demo"), default="demo",
                   help="tiny: ~5 cases/site at 4 mm (seconds); demo: a few dozen cases/site at 2 mm")
    p.add_argument("--spacing", type=float, default=None, metavar="MM",
                   help="base voxel spacing in mm (default 4 for tiny, 2 for demo; 1 gives BraTS-like volumes)")
    p.add_argument("--cases-per-site", type=int, default=None, metavar="N", help="override the number of cases per site")
    p.add_argument("--sites", nargs="+", default=None, choices=("brats", "cbtn", "dfci_bch"), help="subset of sites")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: auto)")
    p.add_argument("--preview", default=None, metavar="PNG", help="also draw one axial slice per site into PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from plgg_fl.synth import generate_cohort

    t0 = time.perf_counter()
    try:
        manifests = generate_cohort(args.out_dir, seed=args.seed, size=args.size, spacing_mm=args.spacing,
                                    sites=args.sites, n_cases=args.cases_per_site, progress=not args.no_progress,
                                    workers=args.workers)
    except (ValueError, FileExistsError) as exc:
        print(f"plgg-fl synth: error: {exc}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    for site, path in manifests.items():
        print(f"{site}: {path}")
    print(f"generated in {dt:.1f} s")
    if args.preview:
        from plgg_fl.synth.preview import save_preview

        print(f"preview: {save_preview(manifests, args.preview)}")
    return 0
