"""NVFlare 2.9 recipes for the four stage jobs. One function per job; all return a ``Recipe``.

=================  ==========================================  =======================================
job                server workflow                             client script task
=================  ==========================================  =======================================
brats_pretrain     PinnedFedAvg over ``[brats]``               train whole network (``--stage full``)
plgg_finetune      PinnedFedAvg over the pediatric sites       train whole network (``--stage full``)
plgg_decoder       PinnedFedAvg, partial-update merge          encoder frozen, decoder sent only
plgg_evaluate      GlobalModelEval over the evaluation sites   ``validate``: scalar test metrics
=================  ==========================================  =======================================

Every training job keeps the last global model (``FL_global_model.pt``) and the best one by the
sites' validation Dice of the received global model (``best_FL_global_model.pt``, NVFlare's
``IntimeModelSelector`` with ``key_metric="val_dice"``), both in the server's app folder.

**Initial weights.** A job folder holds no path. The committed ``jobs/`` folders initialise from the
model class (``plgg_fl.fl.model.SeededPlggUNet(preset=..., seed=...)``, a seeded PlggUNet); to start from a previous stage's model,
build the recipe with ``initial_ckpt=<absolute path on the server>`` - the pipeline does this for
each stage at run time, and ``plgg-fl jobs export --init PATH --out DIR`` writes such a
copy for a real federation (``plgg_evaluate`` likewise needs ``--model NAME=PATH``: the models to
score; without one there is nothing to evaluate). NVFlare's persistor reads the file on the server.

Sites need ``plgg-fl`` installed (the jobs name ``plgg_fl`` classes; ``plgg_fl`` is declared an app
package so its code is not copied into the job) and their data configured (:mod:`plgg_fl.fl.site`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nvflare.app_common.workflows.global_model_eval import GlobalModelEval
from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
from nvflare.client.config import ExchangeFormat
from nvflare.job_config.base_fed_job import BaseFedJob
from nvflare.recipe.spec import Recipe
from nvflare.recipe.utils import add_experiment_tracking, set_per_site_config

from plgg_fl.fl.controller import PinnedFedAvg
from plgg_fl.fl.filters import SendRecorder
from plgg_fl.fl.locator import CheckpointLocator
from plgg_fl.fl.options import ROUND_TIMEOUT_S, StageOptions  # StageOptions: also imported from here by callers
from plgg_fl.fl.privacy import PRIVACY_FILTERS, PrivateWeightDifferences, RememberGlobalModel
from plgg_fl.fl.protocol import EVALUATE_JOB, JOB_NAMES, TRAINS, stage  # noqa: F401 - JOB_NAMES: the recipes' names
from plgg_fl.fl.runner import CLIENT_SCRIPT, InstalledClientRunner

#: packages NVFlare does not copy into a job's custom/ (the sites and the server have plgg-fl installed)
APP_PACKAGES = ["plgg_fl"]
#: the name a model shipped inside a training job has in the server app's custom/ folder, where NVFlare's
#: PT persistor resolves a relative checkpoint name
INITIAL_MODEL_NAME = "initial_model.pt"

MODEL_CLASS = "plgg_fl.fl.model.SeededPlggUNet"  # PlggUNet with seeded initial weights
KEY_METRIC = "val_dice"
# One task per filter task-set: NVFlare keeps task sets as Python sets, so a multi-task set is
# exported in hash order, which differs between runs (and would make jobs/ drift).
TASK_GROUPS = (["train"], ["validate"], ["submit_model"])
#: Seconds a site waits after sending a result before asking for its next task (NVFlare's server
#: setting ``task_request_interval``, default 2 s). Every round pays it once per site, so at the
#: default a 3-round stage idles 6 s; a poll every 0.5 s is negligible traffic for a few sites.
TASK_REQUEST_INTERVAL_S = 0.5


def model_config(preset: str, seed: int = 0) -> dict[str, Any]:
    """The model as NVFlare rebuilds it on the server: class path + plain constructor args."""
    return {"class_path": MODEL_CLASS, "args": {"preset": preset, "seed": int(seed)}}


def client_args(stage: str, opts: StageOptions, extra: str = "") -> str:
    """Command line of the client script (plain values only; lists written without spaces)."""
    parts = [f"--stage {stage}", f"--local-steps {opts.local_steps}", f"--send {opts.send}"]
    train = {"preset": opts.preset, **opts.train}
    for key in sorted(train):
        value = train[key]
        text = "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, (list, tuple)) else str(value)
        if " " in text or "=" in key:
            raise ValueError(f"train option {key}={value!r}: no spaces allowed in job arguments")
        parts.append(f"--set {key}={text}")
    if extra:
        parts.append(extra)
    return " ".join(parts)


class PinnedFedAvgRecipe(FedAvgRecipe):
    """NVFlare's PyTorch FedAvgRecipe with :class:`PinnedFedAvg` as the server workflow."""

    def __init__(self, *, sites: list[str], fedprox_mu: float = 0.0, server_opt: dict | None = None,
                 round_timeout_s: int = ROUND_TIMEOUT_S, ship_initial: str | None = None, **kwargs):
        self._sites = list(sites)
        self._ship_initial = ship_initial
        self._fedprox_mu = fedprox_mu or None
        self._server_opt = server_opt
        self._round_timeout_s = int(round_timeout_s)
        super().__init__(min_clients=len(self._sites), **kwargs)
        # the client app goes to the pinned sites only (deploy_map), not to every connected site
        set_per_site_config(self, {site: {} for site in self._sites})

    def _setup_model_and_persistor(self, job) -> str:
        """FedAvgRecipe's hook that builds the server side of ``job``; also declares the app packages
        and, for FedOpt, the model object it steps (its weights come from the persistor)."""
        job.set_app_packages(APP_PACKAGES)
        if self._server_opt:
            from plgg_fl.fl.model import SeededPlggUNet

            job.to_server(SeededPlggUNet(**self.model["args"]), id="server_opt_model")
        if self._ship_initial is None:
            return super()._setup_model_and_persistor(job)
        # the model travels in the job: the file goes to the server app's custom/ and the persistor names it
        # by its bare name (NVFlare's own relative initial_ckpt would need the file in the current folder)
        from nvflare.app_opt.pt.job_config.model import PTModel
        from nvflare.recipe.utils import extract_persistor_id

        job.add_file_to_server(self._ship_initial)
        result = job.to_server(PTModel(model=self.model, initial_ckpt=INITIAL_MODEL_NAME, best_model_filename=self.best_model_filename,
                                       allow_numpy_conversion=self.server_expected_format != ExchangeFormat.PYTORCH), id="persistor")
        job.comp_ids.update(result)
        return extract_persistor_id(result)

    def _create_client_runner(self, site_config: dict) -> InstalledClientRunner:
        """The site client (:mod:`plgg_fl.fl.runner`) instead of NVFlare's ScriptRunner."""
        return InstalledClientRunner(self.train_args)

    def _create_controller(self, persistor_id, model_params, model_aggregator):
        if self._server_opt:
            from nvflare.recipe.utils import ensure_config_type_dict

            from plgg_fl.fl.controller import PinnedFedOpt

            opt = self._server_opt
            return PinnedFedOpt(
                sites=self._sites,
                num_rounds=self.num_rounds,
                persistor_id=persistor_id,
                task_name="train",
                source_model="server_opt_model",
                optimizer_args=ensure_config_type_dict(opt["optimizer"]),
                lr_scheduler_args=ensure_config_type_dict(opt.get("lr_scheduler") or {
                    "path": "torch.optim.lr_scheduler.ConstantLR", "args": {"factor": 1.0, "total_iters": 0}}),
                device="cpu",
                round_timeout_s=self._round_timeout_s,
            )
        return PinnedFedAvg(
            sites=self._sites,
            num_rounds=self.num_rounds,
            persistor_id=persistor_id,
            model=model_params,
            save_filename=self.save_filename,
            aggregator=model_aggregator,
            task_name="train",
            exclude_vars=self.exclude_vars,
            fedprox_mu=self._fedprox_mu,
            round_timeout_s=self._round_timeout_s,
        )


def _finish(recipe: Recipe, opts: StageOptions) -> Recipe:
    """Settings every job shares: the server task interval and the output filters."""
    recipe.add_server_config({"server": {"task_request_interval": TASK_REQUEST_INTERVAL_S}})
    return _add_filters(recipe, opts)


def _add_filters(recipe: Recipe, opts: StageOptions) -> Recipe:
    if opts.privacy:
        spec = dict(opts.privacy)
        kind = spec.pop("kind", None)
        if kind not in PRIVACY_FILTERS:
            raise ValueError(f"privacy kind must be one of {sorted(PRIVACY_FILTERS)}, got {kind!r}")
        # on the difference from the global model the task brought, whatever `send` is (plgg_fl.fl.privacy)
        recipe.add_client_input_filter(RememberGlobalModel(), tasks=["train"])
        recipe.add_client_output_filter(PrivateWeightDifferences(kind, spec), tasks=["train"])
    if opts.quantize:
        quantizer, dequantizer = _quantization_filters(opts.quantize)
        recipe.add_client_output_filter(quantizer, tasks=["train"])  # after the privacy filter: it sees weights
        recipe.add_server_input_filter(dequantizer, tasks=["train"])  # the aggregator sees float32 again
    if opts.record_sends:
        # after any privacy filter, so it sees what actually leaves the site. NVFlare task sets of
        # filters may not overlap, hence one set per task group rather than "all tasks".
        for tasks in TASK_GROUPS:
            recipe.add_client_output_filter(SendRecorder(), tasks=tasks)
    return recipe


def _quantization_filters(kind: str) -> tuple[Any, Any]:
    """NVFlare's (ModelQuantizer(kind), ModelDequantizer()); a clear error where bitsandbytes, which their
    module imports, is missing."""
    try:
        from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer
        from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer
    except ImportError as exc:
        raise ValueError(f"quantize: {kind} needs NVFlare's quantization filters, which import bitsandbytes ({exc}); "
                         "install it on the server and every site: pip install 'plgg-fl[quantize]'") from None
    return ModelQuantizer(quantization_type=kind), ModelDequantizer()


def training_recipe(
    name: str, sites: list[str], stage: str, opts: StageOptions, initial_ckpt: str | None = None,
    ship_initial: str | Path | None = None,
) -> Recipe:
    """A FedAvg training job over exactly ``sites``; ``stage`` is ``full`` or ``decoder``. It starts from the
    model class, from ``initial_ckpt`` (an absolute path on the server), or from ``ship_initial`` (a local
    file named :data:`INITIAL_MODEL_NAME` in the form NVFlare's persistor reads, shipped inside the job)."""
    if stage not in TRAINS:
        raise ValueError(f"stage must be 'full' or 'decoder', got {stage!r}")
    if opts.send not in ("full", "diff"):
        raise ValueError(f"send must be 'full' or 'diff', got {opts.send!r}")
    if opts.server_opt and (stage != "full" or opts.send != "diff"):
        raise ValueError("server_opt (FedOpt) needs a whole-network stage with send: diff")
    if initial_ckpt is not None and not Path(initial_ckpt).is_absolute():
        raise ValueError(f"initial_ckpt must be an absolute path on the server, got {initial_ckpt!r}")
    if ship_initial is not None:
        if initial_ckpt is not None:
            raise ValueError("give initial_ckpt (a server path) or ship_initial (a file shipped in the job), not both")
        if Path(ship_initial).name != INITIAL_MODEL_NAME or not Path(ship_initial).is_file():
            raise ValueError(f"ship_initial must be an existing file named {INITIAL_MODEL_NAME}, got {ship_initial!r}")
    recipe = PinnedFedAvgRecipe(
        name=name,
        sites=sites,
        fedprox_mu=opts.fedprox_mu,
        server_opt=opts.server_opt,
        round_timeout_s=opts.round_timeout_s,
        ship_initial=None if ship_initial is None else str(Path(ship_initial).resolve()),
        model=model_config(opts.preset, opts.train.get("seed", 0)),
        initial_ckpt=initial_ckpt,
        num_rounds=opts.num_rounds,
        train_script=CLIENT_SCRIPT,
        train_args=client_args(stage, opts),
        key_metric=KEY_METRIC,
        key_metric_mode="max",
        server_expected_format=ExchangeFormat.PYTORCH,
    )
    # Each site's per-round train loss and val Dice are streamed to the server (NVFlare analytics
    # events), which writes TensorBoard logs under its job workspace (tb_events/<site>/).
    add_experiment_tracking(recipe, "tensorboard")
    return _finish(recipe, opts)


def _stage_recipe(key: str, sites, opts: StageOptions, initial_ckpt: str | None, ship_initial=None) -> Recipe:
    """The training job of the stage with config key ``key`` (:data:`plgg_fl.fl.protocol.STAGES`)."""
    st = stage(key)
    return training_recipe(st.job, list(sites), st.trains, opts, initial_ckpt, ship_initial)


def pretrain_recipe(opts: StageOptions, sites=("brats",), initial_ckpt: str | None = None, ship_initial=None) -> Recipe:
    """Stage 1: central (one-site) pretraining on adult BraTS, from scratch or a given model."""
    return _stage_recipe("pretrain", sites, opts, initial_ckpt, ship_initial)


def finetune_recipe(opts: StageOptions, sites=("cbtn", "dfci_bch"), initial_ckpt: str | None = None, ship_initial=None) -> Recipe:
    """Stage 2: FedAvg of the whole network across the pediatric training sites."""
    return _stage_recipe("finetune", sites, opts, initial_ckpt, ship_initial)


def decoder_recipe(opts: StageOptions, sites=("cbtn", "dfci_bch"), initial_ckpt: str | None = None, ship_initial=None) -> Recipe:
    """Stage 3: encoder frozen at every site; only decoder tensors are trained, sent and merged."""
    return _stage_recipe("decoder", sites, opts, initial_ckpt, ship_initial)


class EvaluateRecipe(Recipe):
    """``plgg_evaluate``: NVFlare's GlobalModelEval sends each named model to ``sites`` ('validate').

    Results (scalar metrics per site and model) land in the server's
    ``cross_site_val/cross_val_results.json`` as ``{site: {model name: {metric: value}}}``.
    """

    def __init__(
        self,
        *,
        sites: list[str],
        preset: str,
        models: dict[str, str] | None = None,
        train: dict[str, Any] | None = None,
        eval_splits: str = "test",
        name: str = EVALUATE_JOB,
        timeout_s: int = 6000,
        ship: list[str] | None = None,
    ):
        bad = {n: p for n, p in (models or {}).items() if not Path(p).is_absolute() and Path(p).name != p}
        if bad:
            raise ValueError(f"model checkpoints must be absolute paths on the server or bare file names shipped "
                             f"in the job's server app, got {bad}")
        job = BaseFedJob(name=name, min_clients=len(sites))
        job.set_app_packages(APP_PACKAGES)
        for path in ship or []:  # model files travelling in the job: the server app's custom/, named by bare name
            job.add_file_to_server(str(Path(path).resolve()))
        locator_id = job.to_server(CheckpointLocator(models=dict(models or {})), id="locator")
        job.to_server(
            GlobalModelEval(model_locator_id=locator_id, participating_clients=list(sites), validation_timeout=timeout_s)
        )
        runner_args = client_args("full", StageOptions(preset=preset, train=dict(train or {}), local_steps=0),
                                  extra=f"--eval-splits {eval_splits}")
        for site in sites:  # deployed to the evaluation sites only
            job.to(InstalledClientRunner(runner_args, server_expected_format=None), site)
        Recipe.__init__(self, job)


def evaluate_recipe(
    preset: str,
    sites=("cbtn", "dfci_bch"),
    models: dict[str, str] | None = None,
    train: dict[str, Any] | None = None,
    eval_splits: str = "test",
    record_sends: bool = True,
    ship: list[str] | None = None,
) -> Recipe:
    """Evaluation job: each model in ``models`` (name -> absolute server path, or the bare name of a file in
    ``ship``, local files shipped inside the job) scored at every site on ``eval_splits``."""
    recipe = EvaluateRecipe(sites=list(sites), preset=preset, models=models, train=train, eval_splits=eval_splits, ship=ship)
    return _finish(recipe, StageOptions(record_sends=record_sends))
