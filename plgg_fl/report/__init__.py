"""plgg_fl.report: the study report of a run (tables, plots, failure gallery, provenance) as Markdown and
self-contained HTML. Entry point: :func:`plgg_fl.report.build.build_report`; command ``plgg-fl report``."""
