"""Server-side aggregation: FedAvg's weighted average over a complete round, summed in site-name order.

NVFlare's FedAvg adds each site's result into a running sum as it arrives
(``WeightedAggregationHelper.add``: the first result is multiplied by its weight, later ones are added
with ``add_(v, alpha=w)``, a fused multiply-add). Floating-point addition is not associative and the
fused and unfused products round differently, so the same two results give a global model that
differs in the last bits depending on which site answered first - and from the first such round on,
two runs of the same config drift apart. :class:`SiteOrderAggregator` keeps a round's results until
the round ends and sums them in sorted site order, so the global model depends only on the results.

It also refuses an incomplete round: every pinned site must have sent a result. FedAvg would
otherwise average whoever answered (a site that died mid-round, or timed out, silently drops out and
the job still ends COMPLETED). :class:`IncompleteRound` names the missing sites; raised from the
workflow, NVFlare logs it and fails the job.

Memory: one round's results are held at once (sites x model size; 2 x 31 M parameters x 4 B = 250 MB
for the ``nnunet`` preset).
"""

from __future__ import annotations

import math

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.app_common.aggregators.weighted_aggregation_helper import (
    WeightedAggregationHelper,
    filter_aggregatable_metrics,
)
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.workflows.base_fedavg import make_fedavg_metrics_aggregation_info
from nvflare.apis.fl_constant import FLMetaKey

WEIGHT_KEY = "effective_fedavg_metric_weight"


class IncompleteRound(RuntimeError):
    """A round ended without a result from every pinned site (``missing``)."""

    def __init__(self, round_num: int | None, missing: list[str], received: list[str]):
        self.missing, self.received = missing, received
        super().__init__(
            f"round {round_num}: no result from site(s) {', '.join(missing)} (received from: {', '.join(received) or 'none'}); "
            "the site stopped, restarted or failed during the round, or exceeded the round timeout. "
            "The job fails rather than average fewer sites than the study pins.")


def _client(model: FLModel) -> str:
    name = (model.meta or {}).get("client_name")
    return name if isinstance(name, str) and name else "?"


def _steps_weight(model: FLModel) -> float:
    """The number of local steps a site reports for the round (NVFlare's FedAvg weight), else 1."""
    v = (model.meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
    try:
        w = float(v)
    except (TypeError, ValueError):
        return 1.0
    return w if math.isfinite(w) and w > 0 and not isinstance(v, bool) else 1.0


class SiteOrderAggregator(ModelAggregator):
    """Weighted average (weight = aggregation weight x local steps, as NVFlare's FedAvg) of the round's
    results, added in sorted site order; :class:`IncompleteRound` unless every one of ``sites`` sent one.

    Args:
        sites: the pinned sites, each of which must contribute every round.
        aggregation_weights: optional ``{site: weight}`` (default 1.0 each).
        exclude_vars: optional regex of state-dict keys left out of the average (as FedAvg's).
    """

    def __init__(self, sites: list[str], aggregation_weights: dict[str, float] | None = None, exclude_vars: str | None = None):
        super().__init__()
        self.sites = sorted(sites)
        self.exclude_vars = exclude_vars
        self.aggregation_weights = dict(aggregation_weights or {})
        self.results: dict[str, FLModel] = {}
        self.round_num: int | None = None

    def reset_stats(self) -> None:
        self.results = {}

    def accept_model(self, model: FLModel) -> None:
        name = _client(model)
        if name in self.results:  # a resent result: keep the first (what FedAvg's per-task callback sees once)
            return
        self.results[name] = model
        self.round_num = model.current_round if model.current_round is not None else self.round_num

    def aggregate_model(self) -> FLModel:
        received = sorted(self.results)
        missing = [s for s in self.sites if s not in self.results]
        if missing:
            raise IncompleteRound(self.round_num, missing, received)
        kinds = {name: str(getattr(self.results[name].params_type, "value", self.results[name].params_type))
                 for name in received}
        if len(set(kinds.values())) > 1:  # averaging full weights with differences gives neither
            listed = ", ".join(f"{n}: {k}" for n, k in kinds.items())
            raise ValueError(f"round {self.round_num}: sites sent different kinds of update ({listed}); every site of a "
                             "stage must send full weights or every site differences (a site whose privacy scope "
                             "adds differential privacy sends differences: use `send: diff` or that scope at every site)")
        params, metrics = WeightedAggregationHelper(exclude_vars=self.exclude_vars), WeightedAggregationHelper()
        all_metrics, site_weights = True, []
        for name in received:  # the fixed order is the point of this class
            r = self.results[name]
            w = self.aggregation_weights.get(name, 1.0) * _steps_weight(r)
            params.add(data=r.params, weight=w, contributor_name=name, contribution_round=r.current_round)
            site_weights.append({"name": name, "weight": w, "weight_key": WEIGHT_KEY})
            if r.metrics is None:
                all_metrics = False
            elif all_metrics:
                kept = filter_aggregatable_metrics(r.metrics)
                if kept:
                    metrics.add(data=kept, weight=w, contributor_name=name, contribution_round=r.current_round)
        info = make_fedavg_metrics_aggregation_info(weight_key=WEIGHT_KEY, weight_formula="aggregation_weight * NUM_STEPS_CURRENT_ROUND",
                                                    site_weights=site_weights)
        info["use_contribution_sites"] = True  # the per-site metrics of the round's results (metrics artifact)
        first = self.results[received[0]]
        out = FLModel(params=params.get_result(), params_type=first.params_type,
                      metrics=(metrics.get_result() or None) if all_metrics else None, current_round=self.round_num,
                      meta={"nr_aggregated": len(received), AppConstants.METRICS_AGGREGATION_INFO: info})
        self.reset_stats()
        return out
