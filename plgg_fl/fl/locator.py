"""Server-side model locator for ``plgg_evaluate``: the named checkpoints to score, read from disk.

``CheckpointLocator(models={"stepwise": "/srv/plgg/stepwise.pt", ...})`` lets one evaluation job
(NVFlare ``GlobalModelEval``) send several models to every site; results come back per model name in
``cross_site_val/cross_val_results.json``. Checkpoints are PyTorch files holding a state dict or
``{"model": state_dict, ...}`` (what NVFlare's PT persistor and ``plgg_fl.engine.save_checkpoint``
write). Paths are absolute paths on the server machine, or bare file names of checkpoints shipped
inside the job's server app (``app_server/custom/<name>.pt``: what ``plgg-fl submit`` does, so the
lead's machine and the server need not share a disk); the committed ``jobs/plgg_evaluate`` names none (the
pipeline, or ``plgg-fl jobs export --model NAME=PATH``, fills them in a generated copy): submitted as
it is, it fails saying so, as does a job naming a checkpoint the server machine does not have.
"""

from __future__ import annotations

import os

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model_locator import ModelLocator
from nvflare.app_opt.pt.decomposers import TensorDecomposer
from nvflare.fuel.utils import fobs

from plgg_fl.engine.checkpoint import read_weights
from plgg_fl.fl.protocol import MODEL_NAME_META


class CheckpointLocator(ModelLocator):
    """Locate models by name in a fixed ``{name: absolute checkpoint path}`` mapping."""

    def __init__(self, models: dict[str, str] | None = None):
        super().__init__()
        self.models = dict(models or {})
        # torch tensors may only cross the wire once their decomposer is registered (NVFlare's PT
        # persistor does this for training jobs; an evaluation job without one must do it itself,
        # otherwise the server cannot serialise the task and clients retry forever)
        fobs.register(TensorDecomposer)

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        """Every named model, or none: an evaluation without a model, or with a checkpoint the server
        cannot read, stops the job (NVFlare ``system_panic``) with what is missing, rather than ending
        COMPLETED with no results."""
        if not self.models:
            return self._fail(fl_ctx, "plgg_evaluate names no model to evaluate. Write a job that names them: "
                                      "`plgg-fl jobs export --stage plgg_evaluate --model NAME=PATH` (PATH on the server "
                                      "machine), or run the stages with `plgg-fl submit --chain`")
        missing = {n: p for n, p in self.models.items() if not os.path.isfile(self._path(n, fl_ctx))}
        if missing:
            return self._fail(fl_ctx, "checkpoint(s) not found on the server machine: "
                              + ", ".join(f"{n}={p}" for n, p in missing.items())
                              + ". Model paths are read by the server; give paths that exist there")
        return list(self.models)

    def _fail(self, fl_ctx: FLContext, msg: str) -> list[str]:
        self.log_error(fl_ctx, msg)
        self.system_panic(msg, fl_ctx)
        return []

    def _path(self, name: str, fl_ctx: FLContext) -> str:
        """The model's file: an absolute path as given, a bare file name inside this job's server app
        (``app_server/custom/``, where ``plgg-fl submit`` ships the models it evaluates)."""
        p = self.models[name]
        if os.path.isabs(p):
            return p
        return os.path.join(fl_ctx.get_engine().get_workspace().get_app_custom_dir(fl_ctx.get_job_id()), p)

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO:
        state = read_weights(self._path(model_name, fl_ctx))[0]
        # the name travels in the DXO meta, so a site can label its per-case results by model
        return DXO(data_kind=DataKind.WEIGHTS, data={k: v.cpu().numpy() for k, v in state.items()},
                   meta={MODEL_NAME_META: model_name})
