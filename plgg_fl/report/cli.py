"""``plgg-fl report RUN_DIR``: the report of a finished run (report.md + self-contained report.html), or of a
study folder; ``plgg-fl study --config study``: a study's runs (:mod:`plgg_fl.pipeline.study`) then its
report (:mod:`plgg_fl.report.study`). The study command lives here, in the layer that may use both."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="study report of a run: tables, plots, failure gallery, provenance (MD + HTML)",
        description="Writes report.md and a self-contained report.html for a finished run (plgg-fl simulate / demo). "
        "Refuses a run that is still in progress, failed or was interrupted. Exit status: 0 written, 2 the run "
        "folder cannot be reported on.")
    p.add_argument("run_dir", help="a finished run folder, e.g. runs/tiny, or a study folder (runs/study: the study report)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")
    p.add_argument("--gallery", type=int, default=3, metavar="K",
                   help="worst cases of the best method to re-predict and draw (site-side step; 0 = none; default 3)")
    p.add_argument("--sites", nargs="+", default=None, metavar="SITE",
                   help="only these evaluation sites' results (a site reporting on its own per-case results; default: all)")
    p.set_defaults(func=run_report)

    s = subparsers.add_parser(
        "study", help="the methods over several training seeds plus a data-limited curve, then the study report",
        description="Runs every pipeline run a study config plans (one per training seed, one per curve point and seed) "
        "into OUT/<name>/, keeping runs an earlier, interrupted invocation finished, then writes OUT/<name>/report/"
        "study_report.html: Dice pooled over seeds, seed-to-seed spread, paired Wilcoxon tests, the paper's ratios and "
        "the learning curve. Exit status: 0 done, 1 a run failed, 2 a usage or config error, 130 interrupted.")
    s.add_argument("--config", default="study", metavar="NAME|PATH", help="study config name or file (default: study)")
    s.add_argument("--out", default="runs", help="output root (default: runs)")
    s.add_argument("--dry-run", action="store_true", help="check the config and print the planned runs; run nothing")
    s.set_defaults(func=run_study)


def run_report(args: argparse.Namespace) -> int:
    """Errors (:class:`plgg_fl.report.collect.ReportError`) go to ``plgg-fl``'s one-line handler: stderr, exit 2."""
    import sys
    from pathlib import Path

    from plgg_fl.pipeline.study import STUDY_FILE

    if (Path(args.run_dir) / STUDY_FILE).is_file():
        from plgg_fl.report.study import build_study_report

        if args.sites or args.gallery != 3:
            print("plgg-fl report: a study folder: --sites and --gallery apply to single runs and are ignored "
                  "(report a run folder inside it for those)", file=sys.stderr)
        build_study_report(args.run_dir, args.out)
        return 0
    from plgg_fl.report.build import build_report

    build_report(args.run_dir, args.out, gallery_k=args.gallery, sites=args.sites)
    return 0


def run_study(args: argparse.Namespace) -> int:
    """Runs, then the report; a failed run ends the command (exit 1) with its stage's error."""
    import sys

    from plgg_fl.errors import error_line
    from plgg_fl.pipeline.cli import find_config
    from plgg_fl.pipeline.processes import stop_children
    from plgg_fl.pipeline.simulate import StageFailed
    from plgg_fl.pipeline.study import Study, load_study
    from plgg_fl.report.study import build_study_report, summary_text

    study = Study(load_study(find_config(args.config), find_config), out_root=args.out, printer=lambda x: print(x, flush=True))
    if args.dry_run:
        for r in study.runs:
            cfg = study.run_config(r)
            stages = ", ".join(f"{n} {s.sites} {s.total_steps} steps" for n, s in cfg.stages.items())
            print(f"{r.name}: seed {r.seed}, methods {', '.join(r.methods)}, cohort {cfg.cohort_dir}"
                  f"{', stage 1 from ' + str(cfg.pretrained) if cfg.pretrained else ''}; {stages}")
        print(f"{len(study.runs)} runs into {study.out}")
        return 0
    try:
        study.run()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (plgg_fl.errors.Terminated)
        from plgg_fl.errors import interrupt_exit_code

        stop_children()
        print(f"plgg-fl study: interrupted; every process stopped; finished runs are kept in {study.out} "
              "(rerun to continue)", file=sys.stderr)
        return interrupt_exit_code(exc)
    except StageFailed as exc:
        first, _, rest = str(exc).partition("\n")
        print("\n" + error_line("study", f"{first} ({study.out})") + ("\n" + rest if rest else ""), file=sys.stderr)
        return 1
    print(summary_text(build_study_report(study.out)))
    return 0
