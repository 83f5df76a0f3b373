"""The result filter every site enforces on every job (named in ``sites/<site>/local/privacy.json``).

:class:`ModelAndScalarsOnly` runs on the client after the job's own filters, as the last thing before
a task result leaves the site, and lets through only

* model tensors (numeric numpy arrays / torch tensors) in a ``WEIGHTS`` / ``WEIGHT_DIFF`` result,
  optionally only those whose name is a key of the site's model (``allowed_keys_from``);
* finite scalar numbers (or dicts of them, e.g. per-rater metrics) in a ``METRICS`` result;
* in the DXO meta: numbers, dicts of numbers, and NVFlare's own bookkeeping keys.

Everything else (strings such as file paths or case keys, lists, arrays in metrics, any other data
kind) is dropped and named in the site's log. A result of a data kind it cannot vouch for is
replaced by an empty one. The job cannot turn this off: site scopes apply whatever the job asks.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

MODEL_KINDS = (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF)
#: NVFlare's own DXO meta keys (round numbers, step counts, filter history, job/site ids ...)
NVFLARE_META_KEYS = {v for k, v in vars(FLMetaKey).items() if not k.startswith("_")}


def is_tensor(value) -> bool:
    """A numeric array (numpy) or tensor (torch), without importing torch where it is absent."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biuf"
    mod = type(value).__module__
    return mod.startswith("torch") and hasattr(value, "dtype") and hasattr(value, "shape") and not getattr(
        value, "is_complex", lambda: False)()


def is_scalar(value) -> bool:
    """A finite real number (bool/int/float, numpy scalar or 0-d array/tensor)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, numbers.Real):
        return math.isfinite(float(value))
    if (isinstance(value, np.ndarray) or is_tensor(value)) and tuple(value.shape) == ():
        return math.isfinite(float(value))
    return False


def scalars_only(d: dict, dropped: list, prefix: str = "") -> dict:
    """The entries of ``d`` that are scalars or (recursively) dicts of scalars."""
    out = {}
    for k, v in d.items():
        if is_scalar(v):
            out[k] = v
        elif isinstance(v, dict):
            out[k] = scalars_only(v, dropped, f"{prefix}{k}.")
        else:
            dropped.append(f"{prefix}{k}")
    return out


class ModelAndScalarsOnly(Filter):
    """Site policy filter: only model tensors and scalar metrics leave the site.

    Args:
        allowed_keys_from: optional ``{"path": "pkg.Class", "args": {...}}`` of the model; when given,
            only tensors named like its ``state_dict()`` keys may leave (others are dropped).
    """

    def __init__(self, allowed_keys_from: dict | None = None):
        super().__init__()
        self.allowed_keys_from = allowed_keys_from
        self._allowed = None
        self._announced = False

    def _allowed_keys(self):
        if self.allowed_keys_from and self._allowed is None:
            import importlib

            mod, cls = self.allowed_keys_from["path"].rsplit(".", 1)
            model = getattr(importlib.import_module(mod), cls)(**self.allowed_keys_from.get("args", {}))
            self._allowed = set(model.state_dict())
        return self._allowed

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if not self._announced:  # once per job process: the site log shows the policy is in force
            self.log_info(fl_ctx, "site policy ModelAndScalarsOnly: only model tensors and scalar metrics leave")
            self._announced = True
        try:
            dxo = from_shareable(shareable)
        except Exception:
            return shareable  # no payload (an error reply): nothing to filter
        dropped: list[str] = []
        if dxo.data_kind in MODEL_KINDS:
            allowed = self._allowed_keys()
            data = {}
            for k, v in (dxo.data or {}).items():
                if is_tensor(v) and (allowed is None or k in allowed):
                    data[k] = v
                else:
                    dropped.append(f"data.{k}")
            dxo.data = data
        elif dxo.data_kind == DataKind.METRICS:
            dxo.data = scalars_only(dxo.data or {}, dropped, "data.")
        else:
            dropped.append(f"whole result of kind {dxo.data_kind}")
            dxo.data_kind, dxo.data = DataKind.METRICS, {}
        meta = {}
        for k, v in (dxo.meta or {}).items():
            if k in NVFLARE_META_KEYS and (k != FLMetaKey.INITIAL_METRICS or isinstance(v, dict)):
                meta[k] = scalars_only(v, dropped, f"meta.{k}.") if isinstance(v, dict) and k == FLMetaKey.INITIAL_METRICS else v
            elif is_scalar(v):
                meta[k] = v
            elif isinstance(v, dict):
                meta[k] = scalars_only(v, dropped, f"meta.{k}.")
            else:
                dropped.append(f"meta.{k}")
        dxo.meta = meta
        if dropped:
            self.log_warning(fl_ctx, f"site policy: dropped from the result before it left the site: {dropped}")
        return dxo.update_shareable(shareable)
