"""Differential privacy on what a site sends: NVFlare's privacy filters, always on weight *differences*.

NVFlare's ``SVTPrivacy`` and ``PercentilePrivacy`` treat every tensor they get as a weight
difference (``delta_w``): they clip it to ``gamma`` per local step, keep a fraction, add noise. Given
full weights instead - what a job sending ``send: full`` produces, the committed ``jobs/`` included -
they clip and zero the weights themselves (91 % of the global model became zeros) and the job still
completes. The two filters here make the difference explicit, whatever the job sends:

* :class:`RememberGlobalModel` (a task-*data* filter) keeps the global model a task brings to the site
  (the job's process holds one copy; nothing leaves);
* :class:`PrivateWeightDifferences` (a task-*result* filter) turns a full-weights result into its
  difference from that global model, runs the NVFlare filter named by ``kind`` on the difference and
  sends ``WEIGHT_DIFF``. A difference already sent is filtered as it is. Full weights with no global
  model to subtract are refused (the task fails) - never filtered as if they were a difference.

Both are named by a site's privacy scope (``sites/<site>/local/privacy.json``, scope
``model_and_scalars_dp``) or added by a job (stage option ``privacy``, :mod:`plgg_fl.fl.recipes`).
The server adds the averaged difference to its global model (FedAvg ``ParamsType.DIFF``).
Tensors are float32 numpy arrays inside the NVFlare filter; what leaves has the type that came in
(torch tensors stay torch tensors).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy
from nvflare.app_common.filters.svt_privacy import SVTPrivacy

#: ``kind`` -> NVFlare filter class (its own constructor arguments are passed through)
PRIVACY_FILTERS = {"percentile": PercentilePrivacy, "svt": SVTPrivacy}

# job id -> {tensor name: array (float32 for floating tensors)}: the global model of the task this site is working on.
# Task-data and task-result filters are separate objects in the same job process, hence a module store.
_GLOBAL: dict[str, dict[str, np.ndarray]] = {}
_LOCK = threading.Lock()


def as_array(value) -> np.ndarray:
    """A numpy array of a numpy array or (CPU or GPU) torch tensor, without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def like(array: np.ndarray, original):
    """``array`` as the type of ``original`` (a torch tensor for a torch tensor), same dtype."""
    if hasattr(original, "detach"):
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype=original.dtype)
    return array.astype(np.asarray(original).dtype, copy=False)


class RememberGlobalModel(Filter):
    """Task-data filter: keeps the full global model a task brings (for :class:`PrivateWeightDifferences`).

    The task passes unchanged. A task without full weights (an evaluation request, a difference)
    leaves the kept model as it is.
    """

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            dxo = from_shareable(shareable)
        except Exception:
            return shareable
        if dxo.data_kind == DataKind.WEIGHTS and dxo.data:
            arrays = {k: as_array(v) for k, v in dxo.data.items()}
            with _LOCK:
                _GLOBAL[fl_ctx.get_job_id()] = {k: a.astype(np.float32 if a.dtype.kind == "f" else a.dtype, copy=True)
                                                for k, a in arrays.items()}
        return shareable


class PrivateWeightDifferences(Filter):
    """Task-result filter: differential privacy (NVFlare ``SVTPrivacy`` / ``PercentilePrivacy``) on the
    difference between what the site trained and the global model it received.

    Args:
        kind: ``"svt"`` (sparse vector technique: a noisy, clipped ``fraction`` of the difference) or
            ``"percentile"`` (only differences above the ``percentile``-th largest, clipped to ``gamma``).
        filter_args: the NVFlare filter's own arguments (``epsilon``, ``noise_var``, ``gamma``,
            ``fraction``, ``tau``; ``percentile``, ``gamma``). ``gamma`` is per local step: the filters
            divide the difference by the result's ``NUM_STEPS_CURRENT_ROUND`` first.

    Floating tensors only are filtered; integer buffers are sent as their (exact) difference.
    """

    def __init__(self, kind: str = "svt", filter_args: dict[str, Any] | None = None):
        super().__init__()
        if kind not in PRIVACY_FILTERS:
            raise ValueError(f"privacy kind must be one of {sorted(PRIVACY_FILTERS)}, got {kind!r}")
        self.kind = kind
        self.filter_args = dict(filter_args or {})
        self.dp = PRIVACY_FILTERS[kind](**self.filter_args)

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        self.dp.handle_event(event_type, fl_ctx)  # SVT resets its privacy accountant per run

    def difference(self, dxo, job_id: str) -> dict[str, np.ndarray]:
        """The result's tensors as float32 differences (``WEIGHTS`` minus the kept global model)."""
        data = {k: as_array(v) for k, v in (dxo.data or {}).items()}
        if dxo.data_kind == DataKind.WEIGHT_DIFF:
            return data
        with _LOCK:
            base = _GLOBAL.get(job_id)
        missing = sorted(k for k in data if base is None or k not in base or base[k].shape != data[k].shape)
        if missing:
            raise ValueError(
                f"privacy filter {self.kind}: the result holds full weights but this site kept no global model "
                f"(or none with the same tensors: {missing[:5]}{' ...' if len(missing) > 5 else ''}) to subtract; "
                "add plgg_fl.fl.privacy.RememberGlobalModel to the scope's task_data_filters. Nothing was sent.")
        return {k: (v.astype(np.float64) - base[k]).astype(np.float32) if v.dtype.kind == "f" else v - base[k].astype(v.dtype)
                for k, v in data.items()}

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            dxo = from_shareable(shareable)
        except Exception:
            return shareable  # no payload (an error reply)
        if dxo.data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF) or not dxo.data:
            return shareable
        originals = dict(dxo.data)
        diff = self.difference(dxo, fl_ctx.get_job_id())
        floats = {k: v for k, v in diff.items() if v.dtype.kind == "f"}
        dxo.data, dxo.data_kind = floats, DataKind.WEIGHT_DIFF
        filtered = self.dp.process_dxo(dxo, shareable, fl_ctx) if floats else None
        out = dict(diff)
        out.update((filtered or dxo).data)
        dxo.data = {k: like(np.asarray(v), originals[k]) for k, v in out.items()}
        self.log_info(fl_ctx, f"privacy filter {self.kind}: sent the differentially private weight difference "
                              f"of {len(floats)} tensors")
        return dxo.update_shareable(shareable)
