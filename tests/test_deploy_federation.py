"""A real NVFlare federation on localhost, built from the project's own ``sites/project.yml``.

Provision (host localhost, a free port), start the server and the three site clients as separate
processes from their startup kits (each site finds the tiny synthetic cohort through its own
``local/site_config.yaml``), then, through the FLARE API:

* the member may look but is refused when submitting;
* the lead runs the stepwise chain (stage 1 -> 2 -> 3 -> evaluation), each stage starting from the
  previous global model, and the results hold the global models and per-site evaluation metrics;
* a site with broken data fails the job, and the result names the site and the reason - without the
  site's paths (the site's log configuration redacts them before logs are streamed);
* a site killed during a round fails the job naming the site (no hang past the dead-site timeout,
  no COMPLETED with fewer sites), and after the site restarts the federation runs the next job;
* a site client restarted mid-round (as its start script does after a crash) fails the job, naming
  the site, within the stage's round timeout;
* the committed ``jobs/plgg_evaluate`` (no model named) fails, saying so, instead of completing empty;
* a job shipping a changed client script is refused by the sites (``PinnedClientCode``);
* a server restarted mid-job ends that job (``FINISHED:ABNORMAL``, with the reason) instead of leaving it
  RUNNING for ever.

Every process started here is stopped by the fixture's finalizer, also when a test fails.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from plgg_fl.deploy import api
from plgg_fl.deploy.federation import LocalFederation, free_port, wait_until
from plgg_fl.deploy.provision import PROJECT_YML, provision
from plgg_fl.fl.protocol import read_records

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "simulator_configs" / "tiny.yaml"
HEARTBEAT_TIMEOUT = 15.0  # server drops a silent site after this (kit default: 600)
DEAD_GRACE = 5.0  # the job then waits this long before giving up on it
JOB_TIMEOUT = 240.0  # no tiny job takes this long on 2 cores; the follow() aborts past it


def _write_site_config(kit: Path, manifest: Path) -> Path:
    path = kit / "local" / "site_config.yaml"
    path.write_text(yaml.safe_dump({"manifest": str(manifest), "device": "cpu"}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    from plgg_fl.synth import generate_cohort

    tmp = tmp_path_factory.mktemp("federation")
    manifests = generate_cohort(tmp / "cohort", size="tiny", progress=False)
    kits = provision(tmp / "ws", PROJECT_YML, host="localhost", port=free_port(),
                     server_storage=tmp / "server_store", heartbeat_timeout=HEARTBEAT_TIMEOUT)
    for site, kit in kits.clients.items():
        _write_site_config(kit, manifests[site])
    federation = LocalFederation(kits)
    federation.server.env["NVFLARE_DEAD_CLIENT_GRACE_PERIOD"] = str(DEAD_GRACE)
    federation.tmp, federation.manifests = tmp, manifests
    federation.lead = None
    try:
        t0 = time.monotonic()
        federation.start()
        federation.lead = lead = api.open_session(kits.admins[kits.admin_with_role("lead")], timeout=60)
        wait_until(lambda: len(lead.get_system_info().client_info) == len(kits.clients), 120, 1, "all sites connected")
        print(f"federation up in {time.monotonic() - t0:.1f}s")
        yield federation
    except BaseException:
        print(federation.logs(60))
        raise
    finally:
        if federation.lead is not None:
            federation.lead.close()  # an open session keeps reconnecting (and the interpreter alive)
        federation.stop_all()


def _connected(fed) -> set[str]:
    return {c.name for c in fed.lead.get_system_info().client_info}


def _derived_config(fed, name: str, **stage_overrides) -> Path:
    """tiny.yaml with some stage settings changed (e.g. longer rounds), written next to the cohort."""
    cfg = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    cfg["cohort"]["dir"] = str(fed.tmp / "cohort")
    for stage, over in stage_overrides.items():
        cfg["stages"][stage].update(over)
    path = fed.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_member_may_look_but_not_submit(fed, tmp_path, capsys):
    kits = fed.kits
    member_kit = kits.admins[kits.admin_with_role("member")]
    from plgg_fl.cli import main

    assert main(["status", "--kit", str(member_kit)]) == 0  # plgg-fl status: viewing is allowed
    assert "sites connected: brats, cbtn, dfci_bch" in capsys.readouterr().out
    member = api.open_session(member_kit, timeout=30)
    try:
        job = api.prepare_stage_job("brats_pretrain", TINY, tmp_path / "j")
        with pytest.raises(Exception, match="not authorized"):
            member.submit_job(str(job))
    finally:
        member.close()


def test_lead_runs_the_stepwise_chain(fed):
    t0 = time.monotonic()
    logs = []
    lead_env = api.prod_env(fed.kits.admins[fed.kits.admin_with_role("lead")])  # recipes submitted with Recipe.run(ProdEnv)
    outs = api.run_chain(fed.lead, lead_env, TINY, fed.tmp / "results", timeout=JOB_TIMEOUT, echo=logs.append)
    print("\n".join(logs), f"\nchain: {time.monotonic() - t0:.0f}s")
    assert [o.name for o in outs] == list(api.STAGES), logs
    assert all(o.ok for o in outs), [(o.name, o.status) for o in outs]

    import torch

    models = {o.name: api.global_model(o.result_dir) for o in outs[:3]}
    sds = {n: torch.load(p, map_location="cpu", weights_only=False)["model"] for n, p in models.items()}
    # each stage started from the one before: stage 2 and 3 changed the stage-1/2 weights they got
    assert set(sds["plgg_finetune"]) == set(sds["brats_pretrain"])
    assert any(not torch.equal(sds["plgg_finetune"][k], sds["brats_pretrain"][k]) for k in sds["brats_pretrain"])

    from plgg_fl.engine import PlggUNet, encoder_decoder_keys

    enc, dec = encoder_decoder_keys(PlggUNet(preset=yaml.safe_load(TINY.read_text(encoding="utf-8"))["preset"]))
    # stage 3 trained the decoder only, from stage 2's model: encoder bit-identical, decoder moved
    assert all(torch.equal(sds["plgg_decoder"][k], sds["plgg_finetune"][k]) for k in enc)
    assert any(not torch.equal(sds["plgg_decoder"][k], sds["plgg_finetune"][k]) for k in dec)

    # every site enforced its own privacy scope (sites/<site>/local/privacy.json) on what it sent
    for site in ("cbtn", "dfci_bch"):
        site_log = (fed.kits.clients[site] / outs[1].job_id / "log.txt").read_text(errors="replace", encoding="utf-8")
        assert "site policy ModelAndScalarsOnly" in site_log, site
        assert "site policy AnalyticsScalarsOnly: only named scalar" in site_log, site  # in force at the site
        assert "site policy AnalyticsScalarsOnly: stopped" not in site_log, site  # the study's own scalars pass
    # ... and its tracking stream, filtered at the site (AnalyticsScalarsOnly), still reached the server
    tb_sites = {f.parent.name for f in outs[1].result_dir.rglob("events.out.tfevents*") if f.stat().st_size > 0}
    assert {"cbtn", "dfci_bch"} <= tb_sites, sorted(str(f) for f in outs[1].result_dir.rglob("*tfevents*"))

    results = json.loads(next(outs[3].result_dir.rglob("cross_val_results.json")).read_text(encoding="utf-8"))
    assert {"cbtn", "dfci_bch"} <= set(results), results
    for site in ("cbtn", "dfci_bch"):
        metrics = next(iter(results[site].values()))
        assert metrics and all(isinstance(v, (int, float)) for v in metrics.values()), (site, metrics)
        # 2-case test sets, below a site's default minimum for a summary (5): counts only, no statistic
        # that would give a case's value away
        assert not [k for k in metrics if k.rsplit("/", 1)[-1] in ("median", "q1", "q3", "mean", "sd", "p_value")], metrics
        assert any(k.endswith("/dice/n") and v == 2 for k, v in metrics.items()), metrics


def test_bad_site_data_fails_the_job_naming_the_site(fed):
    kit = fed.kits.clients["brats"]
    good = (kit / "local" / "site_config.yaml").read_text(encoding="utf-8")
    broken = fed.tmp / "broken_manifest.yaml"
    broken.write_text("this: is not a manifest\n", encoding="utf-8")
    _write_site_config(kit, broken)
    try:
        out = api.submit_and_follow(fed.lead, api.prepare_stage_job("brats_pretrain", TINY, fed.tmp / "bad"),
                                    fed.tmp / "results_bad", timeout=JOB_TIMEOUT, echo=print)
    finally:
        (kit / "local" / "site_config.yaml").write_text(good, encoding="utf-8")
    assert not out.ok, out
    errors = api.site_errors(out.result_dir)  # from the site logs streamed to the server
    assert list(errors) == ["brats"], errors
    assert "manifest" in " ".join(errors["brats"]).lower(), errors
    # what the site streamed names no file of the site (paths redacted at the site: sites/<site>/local/log_config.json)
    streamed = {f.name: f.read_text(errors="replace", encoding="utf-8") for f in (out.result_dir / "site_logs").glob("*")
                if f.name.split(".")[0] in fed.kits.clients}  # (server.log.txt is the server's own)
    assert streamed and all(str(fed.tmp) not in t for t in streamed.values()), [n for n, t in streamed.items() if str(fed.tmp) in t]
    assert any("<path>" in t for t in streamed.values())


def test_site_killed_mid_round_ends_job_and_federation_recovers(fed):
    # rounds long enough to kill a site while it trains
    cfg = _derived_config(fed, "slow_finetune", finetune={"local_steps": 200, "num_rounds": 2})
    job = api.prepare_stage_job("plgg_finetune", cfg, fed.tmp / "slow")
    job_id = fed.lead.submit_job(str(job))
    site_log = fed.kits.clients["dfci_bch"] / job_id / "log.txt"
    wait_until(lambda: site_log.is_file() and "got task assignment: name=train" in site_log.read_text(errors="replace", encoding="utf-8"),
               180, 1, "dfci_bch to start training")
    t_kill = time.monotonic()
    fed.clients["dfci_bch"].kill()
    meta = api.follow(fed.lead, job_id, timeout=HEARTBEAT_TIMEOUT + DEAD_GRACE + 120, echo=print)
    ended_after = time.monotonic() - t_kill
    print(f"job ended {meta['status']} {ended_after:.0f}s after the kill")
    assert meta["status"].startswith("FINISHED") and meta["status"] != "FINISHED:COMPLETED", meta["status"]
    assert meta["status"] != "FINISHED:ABORTED", "the job hung until follow() aborted it"
    assert ended_after < HEARTBEAT_TIMEOUT + DEAD_GRACE + 90, "the job hung until follow() aborted it"
    result = api.download(fed.lead, job_id, fed.tmp / "results_killed")
    server_log = "\n".join(p.read_text(errors="replace", encoding="utf-8") for p in result.rglob("log.txt"))
    assert "dfci_bch" in server_log
    errors = " ".join(api.server_errors(result))
    # the lead is told who is missing: NVFlare's "Client dfci_bch is deemed disconnected" (fewer alive
    # clients than the job's min_clients, = its pinned sites) or the round's "no result from site(s) dfci_bch"
    assert re.search(r"Client dfci_bch is deemed disconnected|no result from site\(s\) dfci_bch", errors), errors

    fed.clients["dfci_bch"].start()
    wait_until(lambda: "dfci_bch" in _connected(fed), 120, 1, "dfci_bch to reconnect")
    # the next job, at the restarted site (alone: one job process less on 2 cores)
    cfg = _derived_config(fed, "restarted_site", finetune={"sites": ["dfci_bch"]})
    out = api.submit_and_follow(fed.lead, api.prepare_stage_job("plgg_finetune", cfg, fed.tmp / "again"),
                                fed.tmp / "results_again", timeout=JOB_TIMEOUT, echo=print)
    assert out.ok, out


def _wait_training(fed, job_id: str, site: str) -> None:
    site_log = fed.kits.clients[site] / job_id / "log.txt"
    wait_until(lambda: site_log.is_file() and "got task assignment: name=train" in site_log.read_text(errors="replace", encoding="utf-8"),
               180, 1, f"{site} to start training")


def test_a_site_restarted_mid_round_fails_the_job_by_name_within_the_round_timeout(fed):
    # cbtn's 20 steps per round take well under the round timeout (~5 s on 2 quiet cores); dfci_bch is
    # restarted while it trains (or, if it was quicker, before round 1: the new client never gets that job)
    round_timeout = 60
    cfg = _derived_config(fed, "restart_mid_round", finetune={"local_steps": 20, "num_rounds": 2, "round_timeout_s": round_timeout})
    job_id = fed.lead.submit_job(str(api.prepare_stage_job("plgg_finetune", cfg, fed.tmp / "restart")))
    _wait_training(fed, job_id, "dfci_bch")
    t_kill = time.monotonic()
    fed.clients["dfci_bch"].kill()
    fed.clients["dfci_bch"].start()  # back within seconds, as start.sh's loop would: re-registers, never answers
    meta = api.follow(fed.lead, job_id, timeout=round_timeout + 150, echo=print)
    ended_after = time.monotonic() - t_kill
    print(f"job ended {meta['status']} {ended_after:.0f}s after the restart")
    assert meta["status"].startswith("FINISHED") and meta["status"] != "FINISHED:COMPLETED", meta["status"]
    assert ended_after < round_timeout + 90, f"ended {ended_after:.0f}s after the restart; round timeout {round_timeout}s"
    errors = " ".join(api.server_errors(api.download(fed.lead, job_id, fed.tmp / "results_restart")))
    assert re.search(r"round [01]: no result from site\(s\) dfci_bch \(received from: cbtn\)", errors), errors
    wait_until(lambda: "dfci_bch" in _connected(fed), 120, 1, "dfci_bch to be connected again")


def test_the_committed_evaluation_job_without_a_model_fails_saying_so(fed):
    import shutil

    job = shutil.copytree(ROOT / "jobs" / "plgg_evaluate", fed.tmp / "committed" / "plgg_evaluate")  # submitting signs the folder
    # the server fails the job before any site gets a task: its verdict is all this checks, so the
    # download does not wait the default 30 s for site error logs
    out = api.submit_and_follow(fed.lead, job, fed.tmp / "results_no_model", timeout=JOB_TIMEOUT, echo=print,
                                wait_site_errors=0)
    assert not out.ok and out.status != "FINISHED:COMPLETED", out
    errors = " ".join(api.server_errors(out.result_dir))
    assert "names no model" in errors and "plgg-fl jobs export --stage plgg_evaluate --model" in errors, errors


def test_a_job_with_a_changed_client_script_is_refused_at_the_site(fed):
    job = api.prepare_stage_job("brats_pretrain", TINY, fed.tmp / "changed_code")
    script = next(job.glob("app_brats/custom/client.py"))
    script.write_text(script.read_text(encoding="utf-8") + "\n# a changed client script\n", encoding="utf-8")
    out = api.submit_and_follow(fed.lead, job, fed.tmp / "results_changed_code", timeout=JOB_TIMEOUT, echo=print)
    assert not out.ok, out
    site_log_path = fed.kits.clients["brats"] / out.job_id / "log.txt"
    site_log = site_log_path.read_text(errors="replace", encoding="utf-8")
    assert "site policy PinnedClientCode" in site_log and "job refused" in site_log
    records = read_records(site_log_path)
    assert not [r for r in records if r["event"] == "round"], records  # nothing was trained
    errors = api.site_errors(out.result_dir)  # the refusal reaches the lead as the site's failure record
    assert list(errors) == ["brats"] and "PinnedClientCode" in " ".join(errors["brats"]), errors


def test_a_server_restarted_mid_job_ends_the_job_saying_why(fed):
    """NVFlare 2.9 does not resume a job after a server restart and left it RUNNING for ever (measured:
    still RUNNING 5 min after the restart); the server's EndOrphanedJobs ends it on start-up."""
    from plgg_fl.deploy.restart import END_REASON_KEY

    cfg = _derived_config(fed, "server_restart", finetune={"local_steps": 20, "num_rounds": 3, "round_timeout_s": 900})
    job_id = fed.lead.submit_job(str(api.prepare_stage_job("plgg_finetune", cfg, fed.tmp / "server_restart")))
    _wait_training(fed, job_id, "cbtn")
    fed.lead.close()
    fed.lead = None
    fed.server.kill()
    t_restart = time.monotonic()
    fed.server.start()
    fed.lead = api.open_session(fed.kits.admins[fed.kits.admin_with_role("lead")], timeout=120)
    meta = api.follow(fed.lead, job_id, timeout=180, echo=print)
    ended_after = time.monotonic() - t_restart
    assert meta["status"] == "FINISHED:ABNORMAL", meta["status"]
    assert "does not resume a job after a server restart" in meta.get(END_REASON_KEY, ""), meta
    assert ended_after < 150, f"ended {ended_after:.0f}s after the restart"
    wait_until(lambda: len(_connected(fed)) == len(fed.kits.clients), 120, 1, "every site to reconnect")
