"""Server-side workflow: NVFlare's FedAvg with pinned sites and partial (decoder-only) updates.

Two changes to :class:`nvflare.app_common.workflows.fedavg.FedAvg`, nothing else:

* **Pinned sites** - plain FedAvg samples ``num_clients`` connected clients at random; here every
  round goes to exactly the named ``sites`` (e.g. ``["cbtn"]`` when ``dfci_bch`` is an external,
  evaluation-only site). A pinned site that is not connected stops the job with its name.
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


class PinnedFedAvg(FedAvg):
    """FedAvg over a fixed list of sites; partial FULL updates are merged into the global model.

    Args:
        sites: client names that train in every round (all of them, every round).
        **kwargs: passed to :class:`FedAvg` (``num_rounds``, ``persistor_id``, ``fedprox_mu`` ...).
            ``num_clients`` is set to ``len(sites)``.
    """

    def __init__(self, *args, sites: list[str], **kwargs):
        # (*args, **kwargs) both present: NVFlare's job export then also records the FedAvg arguments
        if not sites:
            raise ValueError("PinnedFedAvg needs at least one site")
        kwargs["num_clients"] = len(sites)
        super().__init__(*args, **kwargs)
        self.sites = list(sites)

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        connected = {c.name for c in self.engine.get_clients()}
        missing = [s for s in self.sites if s not in connected]
        if missing:
            msg = f"pinned site(s) {missing} not connected (connected: {sorted(connected)})"
            self.system_panic(msg, self.fl_ctx)
            raise RuntimeError(msg)
        self.info(f"Pinned sites this round: {self.sites}")
        return list(self.sites)

    def update_model(self, model: FLModel, aggr_result: FLModel) -> FLModel:
        if aggr_result.params_type in (None, ParamsType.FULL) and aggr_result.params and model.params:
            partial = set(aggr_result.params) < set(model.params)
            if partial:
                merged = dict(model.params)
                merged.update(aggr_result.params)
                aggr_result.params = merged
        return super().update_model(model, aggr_result)


class PinnedFedOpt(FedOpt):
    """NVFlare's FedOpt (server-side optimiser on the averaged weight differences) over fixed sites.

    Clients must send differences (``send: diff``) of the whole network (stage 1/2): FedOpt steps
    the server model's parameters with the averaged difference as gradient.
    """

    def __init__(self, *args, sites: list[str], **kwargs):
        if not sites:
            raise ValueError("PinnedFedOpt needs at least one site")
        kwargs["num_clients"] = len(sites)
        super().__init__(*args, **kwargs)
        self.sites = list(sites)
        self.device = str(self.device)  # FedOpt keeps a torch.device, which NVFlare's job export cannot write

    sample_clients = PinnedFedAvg.sample_clients
