"""What a job's folders say went wrong, read as records, never by matching free text.

Two sources, both one JSON object per line:

* the site client's records (:data:`plgg_fl.fl.protocol.RECORD_FIELDS`): its ``failed`` record names the
  exception and its message; found in ``plgg_results/<job id>/records.jsonl`` at the site, or as
  ``plgg-record`` lines in a site log streamed to the server;
* NVFlare's own JSON log, ``log.json`` (every NVFlare 2.9 process writes one beside ``log.txt``:
  ``levelname``, ``name``, ``message``): its ERROR and CRITICAL entries, for what fails outside the
  client script (a site policy refusing the job, a round without a site's result, a server that stops).
"""

from __future__ import annotations

import json
from pathlib import Path

from plgg_fl.fl.protocol import RECORDS_FILE, describe_record, read_records

ERROR_LEVELS = ("ERROR", "CRITICAL")


def site_records(folder: str | Path) -> list[dict]:
    """Every record of the site whose job folder is ``folder`` (its ``plgg_results/*/records.jsonl``)."""
    return [r for f in sorted(Path(folder).glob(f"plgg_results/*/{RECORDS_FILE}")) for r in read_records(f)]


def failure_lines(records: list[dict]) -> list[str]:
    """One line per ``failed`` (or unreadable) record: ``[site] FAILED: <error>: <message>``."""
    return [describe_record(r) for r in records if r.get("event") in ("failed", "unreadable")]


def nvflare_errors(log_json: str | Path, limit: int = 5) -> list[str]:
    """The first ``limit`` distinct ERROR/CRITICAL messages of an NVFlare ``log.json`` ([] if absent); a
    message holding a traceback is reduced to its last line, the exception."""
    path = Path(log_json)
    if not path.is_file():
        return []
    out: list[str] = []
    for line in path.read_text(errors="replace", encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or entry.get("levelname") not in ERROR_LEVELS:
            continue
        message = str(entry.get("message", "")).strip()
        if message.startswith("Traceback"):
            message = message.splitlines()[-1].strip()
        if message and message not in out:
            out.append(message)
    return out[:limit]


def folder_problems(folder: str | Path, limit: int = 5) -> list[str]:
    """What went wrong in one job folder of a site or of the server: the client's failure records first,
    then NVFlare's errors from the folder's ``log.json``."""
    folder = Path(folder)
    return (failure_lines(site_records(folder)) + nvflare_errors(folder / "log.json", limit))[:limit]
