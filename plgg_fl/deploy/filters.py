"""The result filter every site enforces on every job (named in ``sites/<site>/local/privacy.json``).

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
    is handed to it, with the ``plgg_fl/fl/client.py`` of the plgg-fl the site installed, or with the
    SHA-256 hashes the site lists; a job shipping anything else is refused at the site (its tasks
    fail with the reason in the site log, so the job fails) while the study's own jobs run.

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
        import importlib.util

        return {self.sha256(importlib.util.find_spec("plgg_fl.fl.client").origin)}

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
            raise PermissionError(self._checked[job_id])
        return shareable
