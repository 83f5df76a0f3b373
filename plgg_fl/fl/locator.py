"""Server-side model locator for ``plgg_evaluate``: the named checkpoints to score, read from disk.

``CheckpointLocator(models={"stepwise": "/srv/plgg/stepwise.pt", ...})`` lets one evaluation job
(NVFlare ``GlobalModelEval``) send several models to every site; results come back per model name in
``cross_site_val/cross_val_results.json``. Checkpoints are PyTorch files holding a state dict or
``{"model": state_dict, ...}`` (what NVFlare's PT persistor and ``plgg_fl.engine.save_checkpoint``
write). Paths are server-side and absolute; the committed ``jobs/plgg_evaluate`` names none (the
pipeline, or ``plgg-fl jobs export --model NAME=PATH``, fills them in a generated copy).
"""

from __future__ import annotations

import os

import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model_locator import ModelLocator
from nvflare.app_opt.pt.decomposers import TensorDecomposer
from nvflare.fuel.utils import fobs


MODEL_NAME_META = "plgg_model_name"


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint file (plain, NVFlare ``{"model": ...}`` or engine format)."""
    data = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path}: no state dict of tensors found")
    return data


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
        missing = {n: p for n, p in self.models.items() if not os.path.isfile(p)}
        if missing:
            self.log_error(fl_ctx, f"checkpoints not found on the server: {missing}")
        return [n for n in self.models if n not in missing]

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO:
        state = read_state_dict(self.models[model_name])
        # the name travels in the DXO meta, so a site can label its per-case results by model
        return DXO(data_kind=DataKind.WEIGHTS, data={k: v.cpu().numpy() for k, v in state.items()},
                   meta={MODEL_NAME_META: model_name})
