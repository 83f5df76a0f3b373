"""Server-side workflow: NVFlare's FedAvg with pinned sites and partial (decoder-only) updates.

Two changes to :class:`nvflare.app_common.workflows.fedavg.FedAvg`, nothing else:

* **Pinned sites** - plain FedAvg samples ``num_clients`` connected clients at random; here every
  round goes to exactly the named ``sites`` (e.g. ``["cbtn"]`` when ``dfci_bch`` is an external,
  evaluation-only site). A pinned site that is not connected stops the job with its name.
* **Complete rounds, fixed order** - the round's results are averaged by
  :class:`plgg_fl.fl.aggregator.SiteOrderAggregator`: in sorted site order (bit-identical global models
  whatever order the results arrive in) and only when every pinned site sent one. A site that dies or
  restarts mid-round, or sends nothing within ``round_timeout_s``, fails the job with its name
  (:class:`plgg_fl.fl.aggregator.IncompleteRound`) instead of FedAvg averaging whoever answered.
* **Partial updates merge** - a client may send a subset of the state dict (stage 3 sends the
  decoder only). FedAvg would make that subset the new global model (``params = update``); here it
  is merged into the current global model, so keys nobody sent (the encoder) stay bit-identical.
  The PT persistor already merges partial updates into the saved checkpoint; this keeps the
  in-memory global model (what the next round sends) complete as well.
"""

from __future__ import annotations

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.fedavg import FedAvg
from nvflare.app_opt.pt.fedopt_ctl import FedOpt

from plgg_fl.fl.aggregator import SiteOrderAggregator
from plgg_fl.fl.options import ROUND_TIMEOUT_S



class _PinnedRounds:
    """What both pinned workflows share: every round goes to exactly ``self.sites``, is bounded by
    ``self.round_timeout_s`` and is averaged by :class:`SiteOrderAggregator` (see the module doc)."""

    def _pin(self, sites: list[str], round_timeout_s: int, kwargs: dict) -> None:
        self.sites = list(sites)
        self.round_timeout_s = int(round_timeout_s)
        # the job config written by NVFlare's export names the aggregator (with its own copy of the
        # sites); a hand-edited config whose two site lists disagree is refused rather than half-checked
        if self.aggregator is None:
            self.aggregator = SiteOrderAggregator(self.sites, kwargs.get("aggregation_weights"), kwargs.get("exclude_vars"))
        elif isinstance(self.aggregator, SiteOrderAggregator) and self.aggregator.sites != sorted(self.sites):
            raise ValueError(f"the controller pins sites {sorted(self.sites)} but its SiteOrderAggregator expects "
                             f"{self.aggregator.sites}; give both the same sites")

    def send_model(self, task_name="train", data=None, targets=None, min_responses=None, timeout=0, callback=None):
        """FedAvg's send, bounded by ``round_timeout_s`` (FedAvg itself never times a round out)."""
        if isinstance(self.aggregator, SiteOrderAggregator):
            self.aggregator.round_num = self.current_round  # named in its error when nobody answers
        return super().send_model(task_name=task_name, data=data, targets=targets, min_responses=min_responses,
                                  timeout=timeout or self.round_timeout_s, callback=callback)

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        connected = {c.name for c in self.engine.get_clients()}
        missing = [s for s in self.sites if s not in connected]
        if missing:
            msg = f"pinned site(s) {missing} not connected (connected: {sorted(connected)})"
            self.system_panic(msg, self.fl_ctx)
            raise RuntimeError(msg)
        self.info(f"Pinned sites this round: {self.sites}")
        return list(self.sites)


class PinnedFedAvg(_PinnedRounds, FedAvg):
    """FedAvg over a fixed list of sites; partial FULL updates are merged into the global model.

    Args:
        sites: client names that train in every round (all of them, every round).
        round_timeout_s: seconds each round may take before the sites that have not answered fail the
            job (default :data:`ROUND_TIMEOUT_S`).
        **kwargs: passed to :class:`FedAvg` (``num_rounds``, ``persistor_id``, ``fedprox_mu`` ...).
            ``num_clients`` is set to ``len(sites)``; a given ``aggregator`` is used instead of the site-order one.
    """

    def __init__(self, *args, sites: list[str], round_timeout_s: int = ROUND_TIMEOUT_S, **kwargs):
        # (*args, **kwargs) both present: NVFlare's job export then also records the FedAvg arguments
        if not sites:
            raise ValueError("PinnedFedAvg needs at least one site")
        kwargs["num_clients"] = len(sites)
        super().__init__(*args, **kwargs)
        self._pin(sites, round_timeout_s, kwargs)

    def update_model(self, model: FLModel, aggr_result: FLModel) -> FLModel:
        if aggr_result.params_type in (None, ParamsType.FULL) and aggr_result.params and model.params:
            partial = set(aggr_result.params) < set(model.params)
            if partial:
                merged = dict(model.params)
                merged.update(aggr_result.params)
                aggr_result.params = merged
        return super().update_model(model, aggr_result)


class PinnedFedOpt(_PinnedRounds, FedOpt):
    """NVFlare's FedOpt (server-side optimiser on the averaged weight differences) over fixed sites.

    Clients must send differences (``send: diff``) of the whole network (stage 1/2): FedOpt steps
    the server model's parameters with the averaged difference as gradient.
    """

    def __init__(self, *args, sites: list[str], round_timeout_s: int = ROUND_TIMEOUT_S, **kwargs):
        if not sites:
            raise ValueError("PinnedFedOpt needs at least one site")
        kwargs["num_clients"] = len(sites)
        super().__init__(*args, **kwargs)
        self._pin(sites, round_timeout_s, kwargs)
        self.device = str(self.device)  # FedOpt keeps a torch.device, which NVFlare's job export cannot write
