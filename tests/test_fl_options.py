"""Stage-3 options in the real simulator (~40 s): NVFlare's SVT privacy filter on a job that sends full
weights + FedProx + float16 quantization. The encoder must still stay bit-identical, only decoder
*differences* leave (the filter subtracts the global model the site received), in float16 (the
quantizer runs after the privacy filter), and the global model is float32 and not zeroed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plgg_fl.engine import PlggUNet, encoder_decoder_keys
from plgg_fl.fl.protocol import read_records
from plgg_fl.fl.recipes import StageOptions, decoder_recipe
from plgg_fl.pipeline.simulate import check_training, run_in_simulator

pytestmark = pytest.mark.slow


def test_decoder_diff_privacy_fedprox(tmp_path):
    from plgg_fl.synth import generate_cohort

    manifests = generate_cohort(tmp_path / "cohort", size="tiny", sites=["cbtn", "dfci_bch"], progress=False)
    model = PlggUNet(preset="tiny")
    init = tmp_path / "init.pt"
    torch.save({"model": model.state_dict()}, init)
    opts = StageOptions(preset="tiny", num_rounds=2, local_steps=1, send="full", fedprox_mu=0.01,
                        privacy={"kind": "svt", "fraction": 0.5, "epsilon": 1.0, "noise_var": 10.0, "gamma": 1e-3},
                        quantize="float16",
                        train={"patch_size": [32, 32, 32], "batch_size": 1, "spacing_mm": [4.0, 4.0, 4.0], "device": "cpu"})
    sites = ["cbtn", "dfci_bch"]
    res = run_in_simulator(decoder_recipe(opts, sites=sites, initial_ckpt=str(init)), sites, tmp_path / "ws",
                           manifests, record_dir=tmp_path / "sends", printer=lambda s: None, timeout_s=300)
    check_training(res, 2)
    before, after = model.state_dict(), torch.load(res.last_model, weights_only=False)["model"]
    enc, dec = encoder_decoder_keys(model)
    assert all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in dec)
    # a difference of at most 2 rounds x (clip 1e-3 + Laplace noise of scale 2e-4) per weight, never the
    # weights themselves clipped and zeroed (what the filter did to full weights before)
    floats = [k for k in dec if after[k].is_floating_point()]
    assert max(float((after[k] - before[k]).abs().max()) for k in floats) < 0.05
    assert sum(int((after[k] == 0).sum()) for k in floats) <= sum(int((before[k] == 0).sum()) for k in floats)
    recs = [json.loads(x) for f in (tmp_path / "sends" / "plgg_decoder").glob("*.jsonl") for x in f.read_text(encoding="utf-8").splitlines()]
    assert len(recs) == 4 and all(r["data_kind"] == "WEIGHT_DIFF" and set(r["data"]) == set(dec) for r in recs)
    assert all(r["data"][k]["dtype"] == "torch.float16" for r in recs for k in floats)  # what left the site
    assert all(after[k].dtype == before[k].dtype for k in dec)  # dequantized before aggregation
    server_log = Path(res.workspace / "server" / "log.txt").read_text(encoding="utf-8")
    assert "fedprox" in Path(res.workspace / "server" / "simulate_job" / "app_server" / "config"
                             / "config_fed_server.json").read_text(encoding="utf-8")
    assert "Aggregated 2/2 results" in server_log
    rounds = [r for r in read_records(res.site_log("cbtn")) if r["event"] == "round"]  # the site's records, from its log
    assert [r["round"] for r in rounds] == [0, 1] and all(r["fedprox_mu"] == 0.01 for r in rounds)  # the server's mu reached the site


def test_fedopt_server_optimiser_on_pinned_sites(tmp_path):
    from plgg_fl.synth import generate_cohort

    manifests = generate_cohort(tmp_path / "cohort", size="tiny", sites=["cbtn", "dfci_bch"], progress=False)
    opts = StageOptions(preset="tiny", num_rounds=2, local_steps=1, send="diff",
                        server_opt={"optimizer": {"path": "torch.optim.SGD", "args": {"lr": 1.0, "momentum": 0.6}}},
                        train={"patch_size": [32, 32, 32], "batch_size": 1, "spacing_mm": [4.0, 4.0, 4.0], "device": "cpu"})
    with pytest.raises(ValueError, match="send: diff"):
        decoder_recipe(StageOptions(preset="tiny", send="diff", server_opt=opts.server_opt))
    from plgg_fl.fl.recipes import finetune_recipe

    recipe = finetune_recipe(opts, sites=["cbtn"])
    recipe.export(str(tmp_path / "jobs"))  # dfci_bch (not pinned: evaluation-only) gets no app at all
    meta = json.loads((tmp_path / "jobs" / "plgg_finetune" / "meta.json").read_text())
    assert sorted(t for ts in meta["deploy_map"].values() for t in ts) == ["cbtn", "server"]
    res = run_in_simulator(recipe, ["cbtn"], tmp_path / "ws", manifests, printer=lambda s: None, timeout_s=300)
    check_training(res, 2)
    assert "FedOpt" in (res.workspace / "server" / "log.txt").read_text()
