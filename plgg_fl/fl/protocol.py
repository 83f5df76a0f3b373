"""What the federation's parts agree on, written once: the stage table and the metric-key schema.

**Stages.** Each training stage has three names that used to be spelled out wherever they were
needed: its key in a pipeline config (``pretrain``), its NVFlare job (``brats_pretrain``) and what its
sites train and send (the client's ``--stage``: ``full`` or ``decoder``). :data:`STAGES` holds them
together, with the paper's stage number; :data:`JOB_NAMES` adds the evaluation job.

**Metric keys.** A site sends scalars only, named by path: a nested evaluation summary
(``plgg_fl.engine.evaluate.summarise``) flattened with ``/`` (:func:`scalar_metrics`), under its split:
``<split>/groups/<comparison>/<metric>/<statistic>``, e.g. ``test/groups/model_vs_raters/dice/median``
(:func:`summary_key` builds one, :func:`parse_summary_key` reads one). Training rounds send
``val_dice``, ``train_loss`` and ``<split>/listed`` / ``<split>/excluded/<code>`` counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from plgg_fl.engine.metrics import finite_number


@dataclass(frozen=True)
class Stage:
    """One training stage. ``key``: its pipeline-config key; ``job``: the NVFlare job name; ``trains``:
    ``full`` (every tensor trained and sent) or ``decoder`` (encoder frozen, decoder tensors sent);
    ``number``: the paper's stage (1 adult pretraining, 2 full fine-tuning, 3 decoder fine-tuning)."""

    key: str
    job: str
    trains: str
    number: int


STAGES: tuple[Stage, ...] = (
    Stage("pretrain", "brats_pretrain", "full", 1),
    Stage("finetune", "plgg_finetune", "full", 2),
    Stage("decoder", "plgg_decoder", "decoder", 3),
)
STAGE_KEYS = tuple(s.key for s in STAGES)
EVALUATE_JOB = "plgg_evaluate"
JOB_NAMES = tuple(s.job for s in STAGES) + (EVALUATE_JOB,)
TRAINS = ("full", "decoder")


def stage(name: str) -> Stage:
    """The stage whose config key or job name is ``name``; ValueError listing both kinds otherwise."""
    for s in STAGES:
        if name in (s.key, s.job):
            return s
    raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_KEYS)} (jobs {', '.join(s.job for s in STAGES)})")


#: task meta key naming the model an evaluation task carries (the server's ``--model NAME=PATH`` name);
#: the site files its per-case results under it (``plgg_results/<job>/<name>/``) and the report matches by it
MODEL_NAME_META = "plgg_model_name"


def results_folder(name: str | None, order: int) -> str:
    """The folder a site keeps a scored model's per-case results in: the model's name where it is a safe
    file name (letters, digits, ``_``, ``-``, ``.``; not starting with ``.``), else ``model_<order>``."""
    if name and len(name) <= 100 and name[0] != "." and all(c.isalnum() or c in "_-." for c in name):
        return name
    return f"model_{order}"


#: the counts a summary too small to publish is reduced to
COUNTS = ("n", "n_undefined")


def scalar_metrics(summary: dict, prefix: str = "", min_cases: int = 1) -> dict[str, float]:
    """Flatten a nested summary to ``{"a/b": float}``, keeping finite numbers only (nothing else leaves).

    With ``min_cases`` (a site's minimum for publishing statistics), a statistic computed over fewer
    than ``min_cases`` cases (a dict whose ``n`` is below it) is reduced to its counts (``n``,
    ``n_undefined``); over fewer than ``2 * min_cases``, to its counts and median. ``min_cases=0`` keeps
    every statistic (how a site's own ``summary.json`` reads back).
    """
    out: dict[str, float] = {}
    n = summary.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n < 2 * min_cases:
        keep = COUNTS if n < min_cases else (*COUNTS, "median")
        summary = {k: v for k, v in summary.items() if k in keep}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalar_metrics(value, prefix=f"{name}/", min_cases=min_cases))
        elif finite_number(value):
            out[name] = float(value)
    return out


class SummaryKey(NamedTuple):
    """The parts of ``<split>/groups/<comparison>/<metric>/<statistic>``."""

    split: str
    comparison: str
    metric: str
    statistic: str


def summary_key(split: str, comparison: str, metric: str, statistic: str) -> str:
    """``test``, ``model_vs_raters``, ``dice``, ``median`` -> ``test/groups/model_vs_raters/dice/median``."""
    parts = (split, comparison, metric, statistic)
    if not all(parts) or any("/" in p for p in parts):
        raise ValueError(f"summary key parts must be non-empty and hold no '/': {parts}")
    return f"{split}/groups/{comparison}/{metric}/{statistic}"


def parse_summary_key(key: str) -> SummaryKey | None:
    """The parts of a summary key, or None for any other metric name (``val_dice``, ``test/listed`` ...)."""
    parts = key.split("/")
    if len(parts) != 5 or parts[1] != "groups" or not all(parts):
        return None
    return SummaryKey(parts[0], parts[2], parts[3], parts[4])
