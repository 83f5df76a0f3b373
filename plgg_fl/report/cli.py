"""``plgg-fl report RUN_DIR``: the study report of a finished run (report.md + self-contained report.html)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="study report of a run: tables, plots, failure gallery, provenance (MD + HTML)",
        description="Writes report.md and a self-contained report.html for a finished run (plgg-fl simulate / demo). "
        "Refuses a run that is still in progress, failed or was interrupted. Exit status: 0 written, 2 the run "
        "folder cannot be reported on.")
    p.add_argument("run_dir", help="a finished run folder, e.g. runs/tiny")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")
    p.add_argument("--gallery", type=int, default=3, metavar="K",
                   help="worst cases of the best method to re-predict and draw (site-side step; 0 = none; default 3)")
    p.add_argument("--sites", nargs="+", default=None, metavar="SITE",
                   help="only these evaluation sites' results (a site reporting on its own per-case results; default: all)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Errors (:class:`plgg_fl.report.collect.ReportError`) go to ``plgg-fl``'s one-line handler: stderr, exit 2."""
    from plgg_fl.report.build import build_report

    build_report(args.run_dir, args.out, gallery_k=args.gallery, sites=args.sites)
    return 0
