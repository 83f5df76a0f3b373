"""Differential privacy acts on weight differences, whatever a job sends (plgg_fl.fl.privacy), on
NVFlare's own DXO/Shareable objects and its SVT/percentile filters (no job running)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext

from plgg_fl.fl.privacy import PrivateWeightDifferences, RememberGlobalModel


def _ctx(job: str) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.RUN_NUM, job, private=False, sticky=False)
    return ctx


def _weights(seed: int, kind=DataKind.WEIGHTS, steps: int = 10) -> DXO:
    g = torch.Generator().manual_seed(seed)
    data = {"enc.weight": torch.randn(64, 32, generator=g), "dec.weight": torch.randn(1000, generator=g),
            "norm.num_batches_tracked": torch.tensor(5)}
    return DXO(data_kind=kind, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps})


def _send(flt, dxo: DXO, job: str) -> DXO:
    return from_shareable(flt.process(dxo.to_shareable(), _ctx(job)))


def test_full_weights_leave_as_their_difference_from_the_global_model_they_started_from():
    glob = _weights(0)
    RememberGlobalModel().process(glob.to_shareable(), _ctx("job-a"))
    trained = _weights(0)
    trained.data = {k: v + 0.001 * (i + 1) if v.is_floating_point() else v + 2 for i, (k, v) in enumerate(trained.data.items())}
    # percentile 0 and a wide clip: the filter keeps every difference, so the difference itself is visible
    out = _send(PrivateWeightDifferences("percentile", {"percentile": 0, "gamma": 1.0}), trained, "job-a")
    assert out.data_kind == DataKind.WEIGHT_DIFF
    assert all(isinstance(v, torch.Tensor) and v.dtype == glob.data[k].dtype for k, v in out.data.items())
    assert torch.allclose(out.data["enc.weight"], torch.full((64, 32), 0.001), atol=1e-6)
    assert torch.allclose(out.data["dec.weight"], torch.full((1000,), 0.002), atol=1e-6)
    assert int(out.data["norm.num_batches_tracked"]) == 2  # integer buffers: their exact difference


def test_svt_on_the_difference_sends_a_noisy_fraction_of_it_not_zeroed_weights():
    RememberGlobalModel().process(_weights(1).to_shareable(), _ctx("job-b"))
    np.random.seed(0)
    out = _send(PrivateWeightDifferences("svt", {"fraction": 0.1, "epsilon": 0.1, "noise_var": 0.1, "gamma": 1e-5}),
                _weights(1), "job-b")  # trained == global: the true difference is zero everywhere
    sent = torch.cat([out.data[k].flatten() for k in ("enc.weight", "dec.weight")])
    assert out.data_kind == DataKind.WEIGHT_DIFF
    assert 0 < int((sent != 0).sum()) <= int(np.ceil(0.1 * sent.numel()))  # at most the fraction, noised
    # the noise is on the scale of gamma per step (2 * gamma / noise_var * steps), not of the weights (~1)
    assert float(sent.abs().max()) < 0.05


def test_a_difference_already_sent_is_filtered_as_it_is():
    diff = _weights(2, kind=DataKind.WEIGHT_DIFF)
    out = _send(PrivateWeightDifferences("percentile", {"percentile": 0, "gamma": 10.0}), diff, "job-none")
    assert out.data_kind == DataKind.WEIGHT_DIFF
    assert torch.allclose(out.data["dec.weight"], _weights(2).data["dec.weight"])


def test_full_weights_without_a_kept_global_model_are_refused_not_filtered_as_differences():
    with pytest.raises(ValueError, match="kept no global model"):
        _send(PrivateWeightDifferences("svt"), _weights(3), "job-never-seen")
    with pytest.raises(ValueError, match="privacy kind"):
        PrivateWeightDifferences("gaussian")
