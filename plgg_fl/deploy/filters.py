"""The result filter every site enforces on every job (named in ``sites/<site>/local/privacy.json``),
and the same policy on the experiment-tracking stream (:class:`AnalyticsScalarsOnly`).

:class:`ModelAndScalarsOnly` runs on the client after the job's own filters, as the last thing before
a task result leaves the site, and lets through only

* model tensors (numeric numpy arrays / torch tensors) in a ``WEIGHTS`` / ``WEIGHT_DIFF`` result
  whose name *and shape* are those of a parameter or buffer of the study's model: by default any
  :class:`plgg_fl.engine.PlggUNet` preset, or the model(s) named by ``allowed_keys_from``. A scan, a
  mask or anything else sent as an extra tensor, or under a parameter's name with another shape, is
  dropped;
* finite scalar numbers (or dicts of them, e.g. per-rater metrics) in a ``METRICS`` result;
* in the DXO meta: numbers, dicts of numbers, and NVFlare's own bookkeeping keys.

Everything else (strings such as file paths or case keys, lists, arrays in metrics, any other data
kind) is dropped and named in the site's log. A result of a data kind it cannot vouch for is
replaced by an empty one. The job cannot turn this off: site scopes apply whatever the job asks.
"""

from __future__ import annotations

import math
import numbers
import re
import time

import numpy as np
from nvflare.apis.analytix import TrackConst
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import EventScope, FedEventHeader, FLContextKey, FLMetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from plgg_fl.fl.protocol import make_record, record_line

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


def model_signature(models: list[dict]) -> set[tuple[str, tuple[int, ...]]]:
    """``{(state-dict key, shape)}`` over ``models`` (``{"path": "pkg.Class", "args": {...}}`` each),
    built on PyTorch's meta device (shapes only, no memory for weights)."""
    import importlib

    import torch

    out: set[tuple[str, tuple[int, ...]]] = set()
    with torch.device("meta"):
        for spec in models:
            mod, cls = spec["path"].rsplit(".", 1)
            model = getattr(importlib.import_module(mod), cls)(**spec.get("args", {}))
            out |= {(k, tuple(v.shape)) for k, v in model.state_dict().items()}
    return out


def study_models() -> list[dict]:
    """Every :class:`plgg_fl.engine.PlggUNet` preset: the models the study's jobs may train."""
    from plgg_fl.engine.networks import PRESETS

    return [{"path": "plgg_fl.engine.PlggUNet", "args": {"preset": p}} for p in PRESETS]


class ModelAndScalarsOnly(Filter):
    """Site policy filter: only model tensors and scalar metrics leave the site.

    Args:
        allowed_keys_from: the model(s) whose parameters may leave, ``{"path": "pkg.Class", "args": {...}}``
            or a list of them (default: every PlggUNet preset). A tensor passes only if its name and
            shape are those of one of their ``state_dict()`` entries.
    """

    def __init__(self, allowed_keys_from: dict | list | None = None):
        super().__init__()
        self.allowed_keys_from = allowed_keys_from
        self._allowed = None
        self._announced = False

    def _allowed_keys(self) -> set[tuple[str, tuple[int, ...]]]:
        if self._allowed is None:
            spec = self.allowed_keys_from
            self._allowed = model_signature(study_models() if spec is None else [spec] if isinstance(spec, dict) else list(spec))
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
                if is_tensor(v) and (k, tuple(v.shape)) in allowed:
                    data[k] = v
                else:
                    dropped.append(f"data.{k}" + (f" (shape {tuple(v.shape)})" if is_tensor(v) else ""))
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


class PinnedClientCode(Filter):
    """Site policy filter on incoming tasks: the job's client script must be the study's.

    A job ships its client script in ``custom/client.py``; NVFlare runs whatever is there. This filter
    (a ``task_data_filter`` of the site's privacy scopes) compares it, before the first task of a job
    is handed to it, with the ``plgg_fl/fl/job_custom/client.py`` of the plgg-fl the site installed (the
    thin script that runs the installed ``plgg_fl.fl.client``), or with the SHA-256 hashes the site
    lists; a job shipping anything else is refused at the site (its tasks fail with the reason in the
    site log, so the job fails) while the study's own jobs run.

    Args:
        allow_sha256: hex SHA-256 digests of client scripts the site accepts; empty (default): only
            the installed plgg-fl's own client script.
    """

    SCRIPT = "client.py"

    def __init__(self, allow_sha256: list[str] | None = None):
        super().__init__()
        self.allow_sha256 = [h.lower() for h in (allow_sha256 or [])]
        self._checked: dict[str, str | None] = {}  # job id -> refusal reason (None: accepted)

    @staticmethod
    def sha256(path: str) -> str:
        import hashlib

        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def allowed(self) -> set[str]:
        """The accepted digests: the site's list, else the installed plgg-fl's client script."""
        if self.allow_sha256:
            return set(self.allow_sha256)
        from plgg_fl.fl.runner import CLIENT_SCRIPT_PATH

        return {self.sha256(str(CLIENT_SCRIPT_PATH))}

    def refusal(self, custom_dir: str) -> str | None:
        """Why a job whose app code is in ``custom_dir`` is refused (None: it is the study's code)."""
        import os

        script = os.path.join(custom_dir, self.SCRIPT)
        if not os.path.isfile(script):
            return None  # no client script in the job (e.g. an app that only runs NVFlare components)
        digest = self.sha256(script)
        if digest in self.allowed():
            return None
        return (f"site policy PinnedClientCode: the job's {self.SCRIPT} (sha256 {digest[:12]}...) is not the client code "
                "this site allows (the installed plgg-fl's, or the site's allow_sha256 list); job refused")

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        job_id = fl_ctx.get_job_id()
        if job_id not in self._checked:
            custom = fl_ctx.get_engine().get_workspace().get_app_custom_dir(job_id)
            self._checked[job_id] = self.refusal(custom)
            if self._checked[job_id] is None:
                self.log_info(fl_ctx, "site policy PinnedClientCode: the job's client code is the study's")
        if self._checked[job_id]:
            self.log_error(fl_ctx, self._checked[job_id])
            # the same as the site's failure record, which the lead's tools read from the streamed log
            self.log_error(fl_ctx, record_line(make_record("failed", fl_ctx.get_identity_name(), time.time(),
                                                           error="PermissionError", message=self._checked[job_id])))
            raise PermissionError(self._checked[job_id])
        return shareable


class AnalyticsScalarsOnly(FLComponent):
    """Site policy on the experiment-tracking stream: only named scalar metrics leave the site.

    A job's ``SummaryWriter`` / ``flare.log`` calls become NVFlare analytics events that the job's
    ``ConvertToFedEvent`` turns into federation events, sent to the server outside the task-result
    filters. This component (a ``components`` entry of the site's ``privacy.json``: NVFlare adds it to
    every job process, ahead of the sender) inspects every outgoing analytics event and stops it at
    the site unless it is a SCALAR/METRIC number (or SCALARS/METRICS dict of numbers) whose tag (and
    dict keys) is a plain metric name - letters, digits, ``_ . / -``, at most 100 characters - naming
    none of the site's case keys, with no file path and no extra payload. A stopped event is counted
    in the site log (never its content, which may be what must not leave).
    """

    NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,99}$")
    SCALAR_TYPES = {"SCALAR", "METRIC"}
    DICT_TYPES = {"SCALARS", "METRICS"}

    def __init__(self):
        super().__init__()
        self._keys: set[str] | None = None
        self.stopped = 0
        self._announced = False

    def _case_keys(self) -> set[str]:
        if self._keys is None:
            from plgg_fl.deploy.redact import site_case_keys

            try:
                self._keys = set(site_case_keys())
            except Exception:
                self._keys = set()
        return self._keys

    def _safe_name(self, name) -> bool:
        return isinstance(name, str) and bool(self.NAME.match(name)) and not any(k in name for k in self._case_keys())

    def why_stopped(self, dxo) -> str | None:
        """None when the analytics DXO may leave; else a reason without its content."""
        data, kind = dxo.data or {}, str(getattr(dxo.get_meta_prop(TrackConst.DATA_TYPE_KEY), "value",
                                                 dxo.get_meta_prop(TrackConst.DATA_TYPE_KEY)))
        extra = set(data) - {TrackConst.TRACK_KEY, TrackConst.TRACK_VALUE, TrackConst.GLOBAL_STEP_KEY, TrackConst.KWARGS_KEY}
        if extra or data.get(TrackConst.PATH_KEY):
            return "extra payload"
        if data.get(TrackConst.KWARGS_KEY) and not (isinstance(data[TrackConst.KWARGS_KEY], dict)
                                                     and all(is_scalar(v) for v in data[TrackConst.KWARGS_KEY].values())):
            return "non-numeric arguments"
        if not self._safe_name(data.get(TrackConst.TRACK_KEY)):
            return "tag is not a plain metric name or names a case"
        value = data.get(TrackConst.TRACK_VALUE)
        if kind in self.SCALAR_TYPES:
            return None if is_scalar(value) else "value is not a finite number"
        if kind in self.DICT_TYPES:
            ok = isinstance(value, dict) and all(self._safe_name(k) and is_scalar(v) for k, v in value.items())
            return None if ok else "values are not named finite numbers"
        return f"data type {kind} (only scalars leave)"

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if fl_ctx.get_prop(FLContextKey.EVENT_SCOPE, EventScope.LOCAL) != EventScope.FEDERATION:
            return
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA, None)
        if not isinstance(data, Shareable) or data.get_header(FedEventHeader.DIRECTION, "out") != "out":
            return
        try:
            dxo = from_shareable(data)
        except Exception:
            return
        if dxo.data_kind != DataKind.ANALYTIC:
            return
        if not self._announced:  # once per job process: the site log shows the policy is in force
            self.log_info(fl_ctx, "site policy AnalyticsScalarsOnly: only named scalar metrics leave on the tracking stream")
            self._announced = True
        why = self.why_stopped(dxo)
        if why:
            # the sender (NVFlare's FedEventRunner, after this component) sends outgoing events only
            data.set_header(FedEventHeader.DIRECTION, "stopped_by_site_policy")
            self.stopped += 1
            self.log_warning(fl_ctx, f"site policy AnalyticsScalarsOnly: stopped an analytics event ({why}); "
                                     f"{self.stopped} stopped in this job")
