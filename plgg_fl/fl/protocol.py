"""What the federation's parts agree on, written once: the stage table, the metric-key schema and the
sites' records.

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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


def finite_number(value) -> bool:
    """:func:`plgg_fl.engine.metrics.finite_number`, imported on first use: this module is read at every
    command's start-up (stage names), which should not load torch and MONAI."""
    from plgg_fl.engine.metrics import finite_number as finite

    return finite(value)


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


# --- Site records ---------------------------------------------------------------------------------
#: Every site client reports what it does as records: one JSON object per line, with ``event``,
#: ``site``, ``time`` (seconds since the epoch) and the event's fields (:data:`RECORD_FIELDS`; numbers
#: that are not finite are left out). They are kept at the site in ``plgg_results/<job id>/records.jsonl``
#: (:data:`RECORDS_FILE`) and written to the site's job log as ``plgg-record {...}``
#: (:data:`RECORD_TAG`), the line NVFlare streams to the server where a site allows log streaming.
#: Readers use :func:`parse_record_line` / :func:`read_records`, never a pattern over free text.
RECORD_TAG = "plgg-record"
RECORDS_FILE = "records.jsonl"
RECORD_FIELDS: dict[str, tuple[str, ...]] = {
    "started": ("stage", "data_source", "sent_tensors", "total_tensors"),  # the site found its data, built its network
    "round": ("round", "train_loss", "steps"),  # one training round; also val_dice (the received model), fedprox_mu
    "scoring": ("model", "splits"),  # a model received for evaluation, being scored
    "evaluation": ("model", "splits", "n_metrics"),  # one model scored
    "failed": ("error", "message"),  # the client stopped; also traceback (its last lines)
}


def make_record(event: str, site: str, time_s: float, **fields) -> dict:
    """A record of ``event`` at ``site``; ValueError for an unknown event or a missing field."""
    if event not in RECORD_FIELDS:
        raise ValueError(f"unknown record event {event!r}; events are {', '.join(RECORD_FIELDS)}")
    missing = [f for f in RECORD_FIELDS[event] if f not in fields]
    if missing:
        raise ValueError(f"record {event!r} lacks {missing}")
    kept = {k: v for k, v in fields.items() if not (isinstance(v, float) and not finite_number(v))}
    return {"event": event, "site": site, "time": round(float(time_s), 3), **kept}


def record_json(record: dict) -> str:
    """A record as one line of strict JSON (keys sorted): a line of ``records.jsonl``."""
    return json.dumps(record, sort_keys=True, allow_nan=False)


def record_line(record: dict) -> str:
    """The log line of a record: ``plgg-record {json}``."""
    return f"{RECORD_TAG} {record_json(record)}"


def parse_record(text: str) -> dict:
    """The record one JSON line holds; text that is not a valid record comes back as an ``unreadable``
    record holding it, so a damaged failure report is still seen."""
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        rec = None
    if not isinstance(rec, dict) or rec.get("event") not in RECORD_FIELDS or not isinstance(rec.get("site"), str):
        return {"event": "unreadable", "site": "", "line": text.strip()[:500]}
    return rec


def parse_record_line(line: str) -> dict | None:
    """The record a log line carries (whatever the logger put before :data:`RECORD_TAG`; see
    :func:`parse_record`), or None for any other line."""
    at = line.find(RECORD_TAG + " {")
    return None if at < 0 else parse_record(line[at + len(RECORD_TAG) + 1:])


def read_records(path) -> list[dict]:
    """The records of a ``records.jsonl`` file or of a log holding ``plgg-record`` lines ([] if absent)."""
    p = Path(path)
    if not p.is_file():
        return []
    lines = p.read_text(errors="replace", encoding="utf-8").splitlines()
    if p.name.endswith(".jsonl"):
        return [parse_record(ln) for ln in lines if ln.strip()]
    return [r for r in map(parse_record_line, lines) if r is not None]


def describe_record(rec: dict) -> str:
    """One line for people: ``[cbtn] round 3: val_dice(global)=0.4100 train_loss=0.3120 steps=10``."""
    ev, site = rec.get("event"), rec.get("site", "?")
    if ev == "started":
        return (f"[{site}] data from {rec['data_source']}; stage={rec['stage']}; "
                f"{rec['sent_tensors']}/{rec['total_tensors']} tensors sent")
    if ev == "round":
        mu = f" fedprox_mu={rec['fedprox_mu']:g}" if rec.get("fedprox_mu") else ""
        return (f"[{site}] round {rec['round']}: val_dice(global)={rec.get('val_dice', float('nan')):.4f} "
                f"train_loss={rec['train_loss']:.4f} steps={rec['steps']}{mu}")
    if ev == "scoring":
        return f"[{site}] evaluation: scoring model '{rec['model']}' on {rec['splits']}"
    if ev == "evaluation":
        return f"[{site}] evaluation of model '{rec['model']}' on {rec['splits']}: {rec['n_metrics']} scalar metrics; per-case rows kept at the site"
    if ev == "failed":
        return f"[{site}] FAILED: {rec['error']}: {rec['message']}"
    return f"[{site}] unreadable record: {rec.get('line', '')}"
