"""Deployment pieces without a running federation: project file, provisioning (real ``nvflare
provision``), site policies as NVFlare parses them, the site result filter, job preparation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_context import FLContext

from plgg_fl.deploy import api
from plgg_fl.deploy.filters import ModelAndScalarsOnly
from plgg_fl.deploy.provision import PROJECT_YML, SITES_DIR, load_project, localize_project, provision

SITES = ("brats", "cbtn", "dfci_bch")
TINY = Path(__file__).resolve().parents[1] / "simulator_configs" / "tiny.yaml"


def test_project_has_the_study_sites_and_roles():
    project = load_project()
    by_type = {}
    for p in project["participants"]:
        by_type.setdefault(p["type"], []).append(p)
    assert len(by_type["server"]) == 1
    assert sorted(c["name"] for c in by_type["client"]) == sorted(SITES)
    assert all(c.get("org") for c in by_type["client"])
    assert sorted(a["role"] for a in by_type["admin"]) == ["lead", "member", "project_admin"]


def test_localize_sets_host_and_port_on_a_copy():
    project = load_project()
    local = localize_project(project, "localhost", 12345)
    server = next(p for p in local["participants"] if p["type"] == "server")
    assert server["name"] == "localhost" and server["fed_learn_port"] == 12345
    assert next(p for p in project["participants"] if p["type"] == "server")["name"] != "localhost"


def test_provision_writes_kits_with_site_policies(tmp_path):
    kits = provision(tmp_path / "ws", PROJECT_YML, host="localhost", port=23456,
                     server_storage=tmp_path / "store", heartbeat_timeout=30)
    assert set(kits.clients) == set(SITES)
    for site, kit in kits.clients.items():
        fed_client = json.loads((kit / "startup" / "fed_client.json").read_text(encoding="utf-8"))
        assert fed_client["servers"][0]["service"]["target"] == "localhost:23456"
        for name in ("privacy.json", "resources.json"):
            assert (kit / "local" / name).read_bytes() == (SITES_DIR / site / "local" / name).read_bytes()
    server_authz = kits.server / "local" / "authorization.json"
    assert server_authz.read_bytes() == (SITES_DIR / "server" / "local" / "authorization.json").read_bytes()
    lead = kits.admin_with_role("lead")
    assert api.kit_username(kits.admins[lead]) == lead
    admin_conf = json.loads((kits.admins[lead] / "startup" / "fed_admin.json").read_text(encoding="utf-8"))["admin"]
    assert (admin_conf["host"], admin_conf["port"]) == ("localhost", 23456)
    res = json.loads((kits.server / "local" / "resources.json").read_text(encoding="utf-8"))
    assert res["servers"][0]["heart_beat_timeout"] == 30
    assert str(tmp_path / "store") in json.dumps(res) and "/tmp/nvflare" not in json.dumps(res)


@pytest.mark.parametrize("site", SITES)
def test_site_privacy_policy_builds_in_nvflare(tmp_path, site):
    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    (tmp_path / "local").mkdir()
    (tmp_path / "startup").mkdir()
    (tmp_path / "local" / "privacy.json").write_text((SITES_DIR / site / "local" / "privacy.json").read_text(encoding="utf-8"), encoding="utf-8")
    mgr = create_privacy_manager(Workspace(str(tmp_path), site), names_only=False)
    default = mgr.get_scope(None)
    assert default.name == "model_and_scalars"
    out_filters = default.task_result_filters["out"]
    assert [type(f).__name__ for f in out_filters] == ["ModelAndScalarsOnly"]
    dp = mgr.get_scope("model_and_scalars_dp").task_result_filters["out"]
    assert type(dp[-1]).__name__ == "ModelAndScalarsOnly"  # the site filter runs last
    assert type(dp[0]).__name__ == "PrivateWeightDifferences"  # DP on the difference from the received model
    # incoming tasks: only the study's client code; the DP scope also keeps the global model to subtract
    assert [type(f).__name__ for f in default.task_data_filters["in"]] == ["PinnedClientCode"]
    assert [type(f).__name__ for f in mgr.get_scope("model_and_scalars_dp").task_data_filters["in"]] == [
        "PinnedClientCode", "RememberGlobalModel"]


def test_server_policy_lets_the_lead_read_its_job_logs_and_the_member_only_look():
    from nvflare.security.security import FLAuthorizer

    policy = json.loads((SITES_DIR / "server" / "local" / "authorization.json").read_text(encoding="utf-8"))
    FLAuthorizer("plgg_study", policy)  # NVFlare accepts it
    perms = policy["permissions"]
    assert perms["lead"]["submit_job"] == "any" and perms["lead"]["get_job_log"] == "n:submitter"
    assert perms["member"] == {"view": "any"}


def _filtered(dxo: DXO, **kw) -> DXO:
    return from_shareable(ModelAndScalarsOnly(**kw).process(dxo.to_shareable(), FLContext()))


def _tiny_params(n: int = 2) -> dict:
    from plgg_fl.engine import PlggUNet

    return {k: v.numpy() for k, v in list(PlggUNet(preset="tiny").state_dict().items())[:n]}


def test_filter_lets_model_tensors_and_scalar_metrics_through_only():
    params = _tiny_params()
    dxo = DXO(DataKind.WEIGHTS,
              data={**params, "case_key": "CBTN-0001", "l": [1, 2]},
              meta={"initial_metrics": {"val_dice": 0.5, "where": "/data/x.nii.gz"},
                    "NUM_STEPS_CURRENT_ROUND": 2, "manifest": "/data/manifest.yaml", "current_round": 1})
    out = _filtered(dxo)
    assert set(out.data) == set(params)
    assert out.meta == {"initial_metrics": {"val_dice": 0.5}, "NUM_STEPS_CURRENT_ROUND": 2, "current_round": 1}

    metrics = DXO(DataKind.METRICS, data={"dice": 0.8, "per_rater": {"r1": 0.7, "case": "X"}, "nan": float("nan"),
                                          "mask": np.zeros((4, 4, 4)), "n": 3})
    assert _filtered(metrics).data == {"dice": 0.8, "per_rater": {"r1": 0.7}, "n": 3}

    other = _filtered(DXO(DataKind.COLLECTION, data={"x": np.zeros(3)}))
    assert other.data_kind == DataKind.METRICS and other.data == {}


def test_a_scan_sent_as_an_extra_tensor_or_under_a_parameter_name_does_not_leave():
    params = _tiny_params(3)
    name, first = next(iter(params.items()))
    scan = np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)  # a subsampled image
    out = _filtered(DXO(DataKind.WEIGHT_DIFF, data={**params, "extra": scan}))
    assert set(out.data) == set(params)  # the extra tensor is dropped, the model's own pass
    smuggled = {**params, name: scan.ravel()[: first.size + 7]}  # a parameter's name, another shape
    out = _filtered(DXO(DataKind.WEIGHTS, data=smuggled))
    assert name not in out.data and set(out.data) == set(params) - {name}


def test_filter_can_restrict_tensors_to_the_model_keys():
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"fc.weight": np.ones((1, 4), np.float32), "image": np.ones((8, 8, 8))})
    out = _filtered(dxo, allowed_keys_from={"path": "torch.nn.Linear", "args": {"in_features": 4, "out_features": 1}})
    assert out.data == {}  # a Linear's keys are weight/bias: neither name is one
    out = _filtered(DXO(DataKind.WEIGHTS, data={"weight": np.ones((1, 4), np.float32), "image": np.ones(8)}),
                    allowed_keys_from={"path": "torch.nn.Linear", "args": {"in_features": 4, "out_features": 1}})
    assert set(out.data) == {"weight"}


def test_stage_job_embeds_the_initial_model_and_deploys_to_its_sites(tmp_path):
    ckpt = tmp_path / "stage1.pt"
    torch.save({"model": {"w": torch.ones(2)}}, ckpt)
    job = api.prepare_stage_job("plgg_finetune", TINY, tmp_path / "out", ckpt)
    server_cfg = json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text(encoding="utf-8"))
    persistor = next(c for c in server_cfg["components"] if c["path"].endswith("PTFileModelPersistor"))
    assert persistor["args"]["source_ckpt_file_full_name"] == api.INITIAL_MODEL_NAME  # relative: no server path
    assert (job / "app_server" / "custom" / api.INITIAL_MODEL_NAME).read_bytes() == ckpt.read_bytes()
    meta = json.loads((job / "meta.json").read_text(encoding="utf-8"))
    tiny = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    sites = tiny["stages"]["finetune"]["sites"]
    assert meta["deploy_map"] == {"app_server": ["server"], **{f"app_{s}": [s] for s in sites}}
    # the evaluation job ships the model it scores the same way: a bare name read from the server app
    ev = api.prepare_stage_job("plgg_evaluate", TINY, tmp_path / "ev", ckpt)
    ev_cfg = json.loads((ev / "app_server" / "config" / "config_fed_server.json").read_text(encoding="utf-8"))
    locator = next(c for c in ev_cfg["components"] if c["path"].endswith("CheckpointLocator"))
    assert locator["args"]["models"] == {"stepwise": "stepwise.pt"}
    assert (ev / "app_server" / "custom" / "stepwise.pt").read_bytes() == ckpt.read_bytes()


def test_an_engine_checkpoint_is_shipped_as_the_state_dict_nvflare_reads(tmp_path):
    from plgg_fl.engine import PlggUNet, TrainConfig, save_checkpoint

    model = PlggUNet("tiny")  # e.g. `plgg-fl import-nnunet` or `plgg-fl train` output: weights plus train config, meta
    ckpt = save_checkpoint(tmp_path / "stage1.pt", model, TrainConfig.for_preset("tiny"), meta={"source": "test"})
    job = api.prepare_stage_job("plgg_finetune", TINY, tmp_path / "out", ckpt)
    shipped = torch.load(job / "app_server" / "custom" / api.INITIAL_MODEL_NAME, weights_only=True)
    assert set(shipped) == {"model"}  # NVFlare's PT persistor takes {"model": state dict}, not the engine format
    assert all(torch.equal(shipped["model"][k], v) for k, v in model.state_dict().items())
    assert shipped["model"].keys() == model.state_dict().keys()


def test_status_says_an_idle_server_is_up_not_stopped():
    from nvflare.fuel.flare_api.api_spec import JobInfo, ServerInfo, SystemInfo

    from plgg_fl.deploy.cli import server_line

    idle = server_line(SystemInfo(ServerInfo("stopped", 1.7e9), [], []))  # NVFlare's words for "no job running"
    assert idle.startswith("server: up, idle (no job running), up since ") and "stopped" not in idle
    busy = server_line(SystemInfo(ServerInfo("started", None), [], [JobInfo("j-1", "app")]))
    assert busy == "server: up, running job(s) j-1"


def test_pinned_client_code_accepts_the_installed_script_and_refuses_a_changed_one(tmp_path):
    import importlib.util
    import shutil

    from plgg_fl.deploy.filters import PinnedClientCode

    from plgg_fl.fl.runner import CLIENT_SCRIPT_PATH

    installed = CLIENT_SCRIPT_PATH  # what every study job ships
    same, changed, whole = tmp_path / "same", tmp_path / "changed", tmp_path / "whole"
    for d in (same, changed, whole):
        d.mkdir()
        shutil.copyfile(installed, d / "client.py")
    # a job carrying the client's code itself (not the thin entry) would run code that travelled with it
    shutil.copyfile(importlib.util.find_spec("plgg_fl.fl.client").origin, whole / "client.py")
    with open(changed / "client.py", "a", encoding="utf-8") as f:
        f.write("\nimport shutil  # copy the data somewhere\n")
    pin = PinnedClientCode()
    assert pin.refusal(str(same)) is None
    assert "is not the client code this site allows" in pin.refusal(str(changed))
    assert "is not the client code this site allows" in pin.refusal(str(whole))
    assert pin.refusal(str(tmp_path / "no_script")) is None  # nothing to run, nothing to refuse
    listed = PinnedClientCode(allow_sha256=[PinnedClientCode.sha256(str(changed / "client.py")).upper()])
    assert listed.refusal(str(changed)) is None and listed.refusal(str(same)) is not None  # the site's list, only


def _analytics_event(tag, value, data_type="SCALAR", **extra):
    from nvflare.apis.analytix import AnalyticsData, AnalyticsDataType
    from nvflare.apis.fl_constant import EventScope, FLContextKey

    data = AnalyticsData(key=tag, value=value, data_type=AnalyticsDataType(data_type), step=1).to_dxo()
    data.data.update(extra)
    shareable = data.to_shareable()
    ctx = FLContext()
    ctx.set_prop(FLContextKey.EVENT_DATA, shareable, private=True, sticky=False)
    ctx.set_prop(FLContextKey.EVENT_SCOPE, EventScope.FEDERATION, private=True, sticky=False)
    return shareable, ctx


def test_the_tracking_stream_lets_only_named_scalars_leave(tmp_path, monkeypatch):
    """NVFlare's own analytics objects through the site component, as the job process fires them: a
    tag naming a case, a text, an image or a path is stopped before NVFlare's sender sees it."""
    from nvflare.apis.fl_constant import FedEventHeader

    from plgg_fl.deploy.filters import AnalyticsScalarsOnly
    from plgg_fl.synth import generate_cohort

    manifests = generate_cohort(tmp_path / "cohort", size="tiny", sites=["cbtn"], progress=False)
    monkeypatch.setenv("PLGG_FL_MANIFEST_CBTN", str(manifests["cbtn"]))
    from plgg_fl.data.manifest import load_manifest

    key = load_manifest(manifests["cbtn"]).cases[0].key
    comp = AnalyticsScalarsOnly()
    cases = [
        (("val_dice", 0.81), True), (("train/excluded/unreadable", 2.0), True),
        (("train_loss", {"cbtn": 0.3, "mean": 0.2}, "SCALARS"), True),
        ((f"dice/{key}", 0.7), False), ((key, 0.7), False), (("val_dice", float("nan")), False),
        (("note", "tumour of " + key, "TEXT"), False), (("val_dice", 0.5, "SCALAR"), False, {"path": "/data/x.nii.gz"}),
        (("per_case", {key: 0.7}, "SCALARS"), False),
    ]
    for args, leaves, *extra in cases:
        shareable, ctx = _analytics_event(*args, **(extra[0] if extra else {}))
        comp.handle_event("fed.analytix_log_stats", ctx)
        assert (shareable.get_header(FedEventHeader.DIRECTION, "out") == "out") is leaves, args
    assert comp.stopped == 6


def test_the_sites_privacy_policy_adds_the_tracking_filter_to_every_job(tmp_path):
    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    (tmp_path / "local").mkdir()
    (tmp_path / "startup").mkdir()
    (tmp_path / "local" / "privacy.json").write_text((SITES_DIR / "cbtn" / "local" / "privacy.json").read_text(encoding="utf-8"))
    mgr = create_privacy_manager(Workspace(str(tmp_path), "cbtn"), names_only=False)
    assert [type(c).__name__ for c in mgr.components.values()] == ["AnalyticsScalarsOnly"]


def test_a_local_federation_shares_the_cores_between_its_clients(tmp_path, monkeypatch):
    """Server, sites and their job processes on one machine: each client's torch gets its share of the
    cores and the server one thread (a full pool per process oversubscribes the cores); a site's own
    setting and the caller's OMP_NUM_THREADS win."""
    from types import SimpleNamespace

    from plgg_fl.deploy.federation import LocalFederation
    from plgg_fl.pipeline.simulate import threads_per_client

    kits = SimpleNamespace(server=tmp_path / "server", clients={s: tmp_path / s for s in ("brats", "cbtn", "dfci_bch")})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    fed = LocalFederation(kits, client_env={"cbtn": {"OMP_NUM_THREADS": "7"}})
    assert fed.server.env["OMP_NUM_THREADS"] == "1"
    assert fed.clients["brats"].env["OMP_NUM_THREADS"] == str(threads_per_client(3))
    assert fed.clients["cbtn"].env["OMP_NUM_THREADS"] == "7"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    fed = LocalFederation(kits)
    assert {p.env["OMP_NUM_THREADS"] for p in [fed.server, *fed.clients.values()]} == {"3"}
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert threads_per_client(3) == 2 and threads_per_client(16) == 1
