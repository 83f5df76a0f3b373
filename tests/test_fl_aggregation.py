"""Server-side aggregation and evaluation guards, on NVFlare's own objects (no job running):

* the global model does not depend on the order in which sites' results arrive (bit for bit), while
  NVFlare's in-time FedAvg sum does - the measured cause of two identical demo runs differing;
* a round without every pinned site's result fails, naming the missing site;
* an evaluation job with no model, or a model path the server does not have, stops the job.
"""

from __future__ import annotations

import pytest
import torch
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

from plgg_fl.fl.aggregator import IncompleteRound, SiteOrderAggregator
from plgg_fl.fl.controller import ROUND_TIMEOUT_S, PinnedFedAvg
from plgg_fl.fl.locator import CheckpointLocator

SITES = ["cbtn", "dfci_bch", "stjude"]


def _result(site: str, seed: int, steps: int = 30, keys=("enc.w", "dec.w")) -> FLModel:
    g = torch.Generator().manual_seed(seed)
    return FLModel(params={k: torch.randn(4096, generator=g) for k in keys}, params_type=ParamsType.FULL,
                   metrics={"val_dice": 0.5 + seed / 100}, current_round=1,
                   meta={"client_name": site, FLMetaKey.NUM_STEPS_CURRENT_ROUND: steps})


def _aggregate(agg, results) -> FLModel:
    agg.reset_stats()
    for r in results:
        agg.accept_model(r)
    return agg.aggregate_model()


def test_the_controller_aggregates_results_in_site_order_bit_for_bit_whatever_the_arrival_order():
    ctl = PinnedFedAvg(sites=SITES, num_rounds=1, persistor_id="persistor")
    assert isinstance(ctl.aggregator, SiteOrderAggregator) and ctl.round_timeout_s == ROUND_TIMEOUT_S
    results = [_result(s, i, steps=30 + 10 * i) for i, s in enumerate(SITES)]
    forward = _aggregate(ctl.aggregator, results)
    backward = _aggregate(ctl.aggregator, [_result(s, i, steps=30 + 10 * i) for i, s in reversed(list(enumerate(SITES)))])
    assert all(torch.equal(forward.params[k], backward.params[k]) for k in forward.params)
    # it is FedAvg: the step-weighted mean of the sites' weights
    w = torch.tensor([30.0, 40.0, 50.0])
    expect = sum(wi * r.params["enc.w"] for wi, r in zip(w, results)) / w.sum()
    assert torch.allclose(forward.params["enc.w"], expect, atol=1e-6)
    assert forward.metrics["val_dice"] == pytest.approx(sum(wi * (0.5 + i / 100) for i, wi in enumerate(w.tolist())) / 120)
    assert forward.meta["nr_aggregated"] == 3


def test_nvflare_in_time_sum_depends_on_arrival_order_the_cause_of_the_demo_drift():
    a, b = _result("cbtn", 0), _result("dfci_bch", 1)

    def in_time(order):
        h = WeightedAggregationHelper()
        for r in order:
            h.add(r.params, 30.0, r.meta["client_name"], 1)
        return h.get_result()

    x, y = in_time([a, b]), in_time([b, a])
    assert any(not torch.equal(x[k], y[k]) for k in x)  # ulp-level differences from two sites alone


def test_a_round_without_every_pinned_site_fails_naming_the_missing_site():
    agg = SiteOrderAggregator(SITES)
    with pytest.raises(IncompleteRound, match=r"round 1: no result from site\(s\) dfci_bch \(received from: cbtn, stjude\)") as e:
        _aggregate(agg, [_result("cbtn", 0), _result("stjude", 2)])
    assert e.value.missing == ["dfci_bch"]


def test_a_decoder_only_round_averages_only_the_sent_keys():
    out = _aggregate(SiteOrderAggregator(["cbtn", "dfci_bch"]), [_result("cbtn", 0, keys=("dec.w",)), _result("dfci_bch", 1, keys=("dec.w",))])
    assert list(out.params) == ["dec.w"]


class _Ctx:
    """The part of FLContext the locator's failure path touches."""

    def __init__(self):
        self.props = {}

    def set_prop(self, key, value, private=True, sticky=True):
        self.props[key] = value

    def get_prop(self, key, default=None):
        return self.props.get(key, default)


@pytest.mark.parametrize("models, says", [({}, "names no model"), ({"stepwise": "/nowhere/stepwise.pt"}, "stepwise=/nowhere/stepwise.pt")])
def test_an_evaluation_without_a_readable_model_panics_instead_of_completing_empty(models, says, monkeypatch):
    loc = CheckpointLocator(models=models)
    panics = []
    monkeypatch.setattr(loc, "system_panic", lambda reason, fl_ctx: panics.append(reason))
    monkeypatch.setattr(loc, "log_error", lambda fl_ctx, msg: None)
    assert loc.get_model_names(_Ctx()) == []
    assert len(panics) == 1 and says in panics[0]


def test_a_controller_whose_aggregator_names_other_sites_is_refused():
    with pytest.raises(ValueError, match="give both the same sites"):
        PinnedFedAvg(sites=["cbtn", "dfci_bch"], num_rounds=1, persistor_id="persistor", aggregator=SiteOrderAggregator(["cbtn"]))
    ok = PinnedFedAvg(sites=["dfci_bch", "cbtn"], num_rounds=1, persistor_id="persistor",
                      aggregator=SiteOrderAggregator(["cbtn", "dfci_bch"]))  # as an exported job config builds it
    assert ok.aggregator.sites == ["cbtn", "dfci_bch"]


def test_a_round_mixing_full_weights_and_differences_is_refused_naming_the_sites():
    agg = SiteOrderAggregator(["cbtn", "dfci_bch"])
    diff = _result("dfci_bch", 1)
    diff.params_type = ParamsType.DIFF  # e.g. a site whose privacy scope sends differences
    with pytest.raises(ValueError, match=r"cbtn: FULL, dfci_bch: DIFF"):
        _aggregate(agg, [_result("cbtn", 0), diff])
