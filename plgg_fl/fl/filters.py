"""Client-side NVFlare filters of this project.

:class:`SendRecorder` is an audit filter: installed as the *last* task-result filter on a client, it
sees exactly what leaves the site (after any privacy filter) and appends a description of it -
tensor names, shapes and dtypes, metric names and values, meta keys - as one JSON line per result
to ``$PLGG_FL_RECORD_SENDS/<site>.jsonl``. Nothing is recorded when that variable is unset, so the
filter can stay in a production job; the folder is chosen at the site, never in the job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

ENV_RECORD_DIR = "PLGG_FL_RECORD_SENDS"
_KEY_DXO = "DXO"  # where nvflare.apis.dxo keeps the DXO inside a Shareable


def describe_value(value) -> dict:
    """Type, shape and dtype of one payload entry (never its content, except plain scalars/strings)."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return {"type": type(value).__name__, "shape": [int(s) for s in shape], "dtype": str(value.dtype)}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return {"type": type(value).__name__, "value": value}
    if isinstance(value, dict):
        return {"type": "dict", "items": {str(k): describe_value(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"type": type(value).__name__, "items": [describe_value(v) for v in value]}
    return {"type": type(value).__name__, "repr": repr(value)[:200]}


class SendRecorder(Filter):
    """Append a description of every result this client sends to ``$PLGG_FL_RECORD_SENDS/<site>.jsonl``."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        out_dir = os.environ.get(ENV_RECORD_DIR)
        if not out_dir:
            return shareable
        site = fl_ctx.get_identity_name()
        record = {
            "site": site,
            "task": fl_ctx.get_prop(FLContextKey.TASK_NAME),
            "return_code": shareable.get_return_code(),
            "headers": {str(k): describe_value(v) for k, v in shareable.items() if k != _KEY_DXO},
        }
        try:
            dxo = from_shareable(shareable)
            record["data_kind"] = dxo.data_kind
            record["data"] = {str(k): describe_value(v) for k, v in (dxo.data or {}).items()}
            record["meta"] = {str(k): describe_value(v) for k, v in (dxo.meta or {}).items()}
        except Exception as exc:  # a result without a DXO (e.g. an error reply) is recorded as such
            record["no_dxo"] = repr(exc)[:200]
        path = Path(out_dir) / f"{site}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
        return shareable
