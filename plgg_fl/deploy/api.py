"""The FLARE API, wrapped for this study: log in with a startup kit, submit a stage, follow it,
download its result, and chain the stages so each starts from the previous stage's global model.

Everything here goes through NVFlare's public APIs: stage jobs are the same recipe objects the
simulator runs (:mod:`plgg_fl.fl.recipes`), submitted with ``Recipe.run(ProdEnv)``; a job folder
(``--job DIR``) through the FLARE API's ``submit_job``; jobs are followed, downloaded and aborted with
the FLARE API (``new_secure_session``, ``get_job_meta``, ``download_job_result``, ``abort_job``).
Authorization is the server's (a ``member`` is refused by the server, not by this module).

Chaining: a stage job starts from a model that travels *inside the job* - the recipe adds the
checkpoint to the server app's ``custom/`` and points the server's PT persistor at it by its bare name
(NVFlare resolves relative checkpoint names against the app's custom folder on the server), so the
lead's machine and the server need not share a disk. The evaluation job ships the model it scores the
same way (its locator reads a bare file name from the server app's folder).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvflare.fuel.flare_api.flare_api import Session, new_secure_session

from plgg_fl.fl.joblogs import failure_lines, nvflare_errors
from plgg_fl.fl.protocol import JOB_NAMES, read_records
from plgg_fl.fl.recipes import INITIAL_MODEL_NAME
from plgg_fl.deploy.restart import END_REASON_KEY

log = logging.getLogger(__name__)

TERMINAL_PREFIX = "FINISHED"
#: job ends after which a site's error log is worth waiting for (not COMPLETED, not ABORTED by a user)
FAILED_STATUSES = ("FINISHED:EXECUTION_EXCEPTION", "FINISHED:ABNORMAL")
#: stage order of the stepwise pipeline; each training stage starts from the one before
STAGES = JOB_NAMES  # the jobs a chain submits, in order (plgg_fl.fl.protocol)
GLOBAL_MODEL_NAMES = ("FL_global_model.pt", "best_FL_global_model.pt")


def kit_username(kit: str | Path) -> str:
    """The user name a provisioned admin kit belongs to (from ``startup/fed_admin.json``)."""
    conf = json.loads((Path(kit) / "startup" / "fed_admin.json").read_text(encoding="utf-8"))
    return conf["admin"]["username"]


def open_session(kit: str | Path, username: str | None = None, timeout: float = 30.0) -> Session:
    """A secure FLARE API session as the owner of admin startup kit ``kit``."""
    kit = Path(kit).resolve()
    return new_secure_session(username or kit_username(kit), str(kit), timeout=timeout)


@dataclass
class JobOutcome:
    job_id: str
    name: str
    status: str
    seconds: float
    result_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED:COMPLETED"


def follow(session: Session, job_id: str, timeout: float = 0.0, poll: float = 2.0, echo=print) -> dict:
    """Poll the job until it finishes; ``echo`` each status change (with elapsed seconds).

    With ``timeout`` > 0, a job still running after that many seconds is aborted and its final
    meta returned (status ``FINISHED:ABORTED``), so a caller never waits forever.
    """
    start, last = time.monotonic(), None
    while True:
        meta = session.get_job_meta(job_id)
        status = meta.get("status", "?")
        if status != last:
            echo(f"[{time.monotonic() - start:6.0f}s] job {job_id} ({meta.get('name', '')}): {status}")
            last = status
        if status.startswith(TERMINAL_PREFIX):
            if meta.get(END_REASON_KEY):  # ended by the server, not by the job (plgg_fl.deploy.restart)
                echo(f"job {job_id}: {meta[END_REASON_KEY]}")
            return meta
        if 0 < timeout < time.monotonic() - start:
            echo(f"job {job_id} still {status} after {timeout:.0f}s: aborting it")
            session.abort_job(job_id)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                meta = session.get_job_meta(job_id)
                if meta.get("status", "").startswith(TERMINAL_PREFIX):
                    break
                time.sleep(poll)
            return meta
        time.sleep(poll)


def download(session: Session, job_id: str, dest: str | Path, wait_site_errors: float = 30.0) -> Path:
    """Download a finished job's result into ``dest/<job_id>/`` and return that folder.

    Besides NVFlare's server-side result (``workspace/``: global models, metrics, server log), the
    logs the sites sent to the server go to ``site_logs/`` (where a site allows it:
    ``allow_log_streaming`` in its ``local/resources.json``): ``<site>.log.txt`` (job logs held by
    the server) and ``<site>.error_log.txt`` (the site's error log, a job component
    ``ERRORLOG_<site>``). A site uploads its error log only after the job ended, so for a failed
    job this waits up to ``wait_site_errors`` seconds for one to arrive.
    """
    result = Path(session.download_job_result(job_id, str(dest)))
    fetch_site_logs(session, job_id, result)
    failed = session.get_job_meta(job_id).get("status") in FAILED_STATUSES
    deadline = time.monotonic() + (wait_site_errors if failed else 0)
    while not fetch_site_error_logs(session, job_id, result) and time.monotonic() < deadline:
        time.sleep(2)
    return result


def fetch_site_logs(session: Session, job_id: str, result_dir: str | Path) -> dict[str, Path]:
    """Write the job logs the server holds (server, and sites that stream them) to ``site_logs/``."""
    try:
        logs = session.get_job_logs(job_id, target="all").get("logs", {})
    except Exception as e:  # not authorized / streaming off: the result is still useful without
        log.warning("no job logs for %s: %s", job_id, e)
        return {}
    return _write_logs(result_dir, {site: text for site, text in logs.items()}, "log.txt")


def fetch_site_error_logs(session: Session, job_id: str, result_dir: str | Path) -> dict[str, Path]:
    """Write the sites' error logs (job components ``ERRORLOG_<site>``) to ``site_logs/``."""
    try:
        comps = [c for c in session.list_job_components(job_id) if c.startswith("ERRORLOG_")]
        if not comps:
            return {}
        location = Path(session.download_job_components(job_id))
    except Exception as e:
        log.warning("no site error logs for %s: %s", job_id, e)
        return {}
    texts = {f.name[len("ERRORLOG_"):]: f.read_text(errors="replace", encoding="utf-8") for f in location.rglob("ERRORLOG_*")}
    shutil.rmtree(location, ignore_errors=True)
    return _write_logs(result_dir, texts, "error_log.txt")


def _write_logs(result_dir, texts: dict, suffix: str) -> dict[str, Path]:
    out_dir = Path(result_dir) / "site_logs"
    written = {}
    for site, text in texts.items():
        if isinstance(text, str) and text:
            out_dir.mkdir(parents=True, exist_ok=True)
            written[site] = out_dir / f"{site}.{suffix}"
            written[site].write_text(text, encoding="utf-8")
    return written


def server_errors(result_dir: str | Path, max_lines: int = 5) -> list[str]:
    """The server's error messages for the job, from NVFlare's JSON log (``log.json``) in the downloaded
    ``workspace/``: why the server stopped it, e.g. ``round 1: no result from site(s) dfci_bch ...`` or
    an evaluation job with no model (a traceback is reduced to its exception line)."""
    out: list[str] = []
    for f in sorted(Path(result_dir).glob("workspace/**/log.json")):
        out += [m for m in nvflare_errors(f, limit=1000) if m not in out]
    return out[-max_lines:]


def site_errors(result_dir: str | Path, max_lines: int = 5) -> dict[str, list[str]]:
    """Per site, its ``failed`` records (:mod:`plgg_fl.fl.protocol`) in the logs it streamed to the
    server (``site_logs/``): the client's failure, or a site policy refusing the job. Who failed and why."""
    out: dict[str, list[str]] = {}
    for f in sorted((Path(result_dir) / "site_logs").glob("*.txt")):
        site = f.name.split(".", 1)[0]
        if site == "server":
            continue
        lines = failure_lines(read_records(f))
        if lines:
            out[site] = list(dict.fromkeys(out.get(site, []) + lines))[-max_lines:]
    return out


def global_model(result_dir: str | Path, which: str = "last") -> Path:
    """The global model file in a downloaded training-job result (``last`` or ``best``)."""
    name = GLOBAL_MODEL_NAMES[0] if which == "last" else GLOBAL_MODEL_NAMES[1]
    hits = sorted(Path(result_dir).rglob(name))
    if not hits:
        raise FileNotFoundError(f"no {name} in {result_dir} (did the job finish?)")
    return hits[0]


def _write_initial_model(src: Path, dest: Path) -> None:
    """``src`` at ``dest`` in a form NVFlare's PT persistor reads (``{"model": state dict}`` or a bare state
    dict): an engine checkpoint (``plgg-fl train``, ``plgg-fl import-nnunet``) as its state dict in that
    form; any other file as it is (the job says what NVFlare makes of it)."""
    import torch

    from plgg_fl.engine.checkpoint import nvflare_form

    try:
        converted = nvflare_form(src)
    except ValueError:  # no state dict plgg-fl reads
        converted = None
    if converted is not None:
        torch.save(converted, dest)
    else:
        shutil.copyfile(src, dest)


def stage_recipe(stage: str, config: str | Path, ship_dir: str | Path, checkpoint: str | Path | None = None,
                 model_name: str = "stepwise"):
    """The NVFlare recipe of stage job ``stage`` from pipeline config ``config``.

    Training stages start from ``checkpoint`` and ``plgg_evaluate`` scores it under ``model_name``;
    either way the file travels inside the job (the server app's ``custom/``, named by bare name), so the
    lead's machine and the server need not share a disk. The file to ship is written to ``ship_dir``,
    which must outlive the recipe's export or submission.
    """
    from plgg_fl.pipeline.jobs import build_recipes  # job recipes are built from a pipeline config

    ship_dir = Path(ship_dir)
    ship_dir.mkdir(parents=True, exist_ok=True)
    if stage == "plgg_evaluate":
        if checkpoint is None:
            raise ValueError("plgg_evaluate needs a model to score")
        shipped = ship_dir / f"{model_name}.pt"  # the server's locator reads it from the app folder
        shutil.copyfile(checkpoint, shipped)
        return build_recipes(Path(config), models={model_name: shipped.name}, ship=[str(shipped)])[stage]()
    ship_initial = None
    if checkpoint is not None:
        ship_initial = ship_dir / INITIAL_MODEL_NAME
        _write_initial_model(Path(checkpoint), ship_initial)
    return build_recipes(Path(config), ship_initial=ship_initial)[stage]()


def prepare_stage_job(stage: str, config: str | Path, out: str | Path, checkpoint: str | Path | None = None,
                      model_name: str = "stepwise") -> Path:
    """Export stage job ``stage`` (:func:`stage_recipe`) into ``out/<stage>``: a job folder to submit, or
    to read before submitting."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="plgg_ship_") as tmp:
        recipe = stage_recipe(stage, config, tmp, checkpoint, model_name)
        recipe.export(str(out))
    return out / recipe.name


def prod_env(kit: str | Path, username: str | None = None, login_timeout: float = 30.0):
    """NVFlare's ``ProdEnv`` for the owner of admin startup kit ``kit``: where recipes are submitted."""
    from nvflare.recipe import ProdEnv

    kit = Path(kit).resolve()
    return ProdEnv(startup_kit_location=str(kit), username=username or kit_username(kit), login_timeout=login_timeout)


def submit_recipe(env, recipe) -> str:
    """Submit ``recipe`` through NVFlare's public recipe API (``Recipe.run(ProdEnv)``); the job id."""
    run = recipe.run(env)
    return run.get_job_id()


def submit_and_follow(session: Session, job: str | Path | Any, download_to: str | Path | None = None,
                      timeout: float = 0.0, echo=print, env=None, wait_site_errors: float = 30.0) -> JobOutcome:
    """Submit a job - a job folder (through ``session``) or a recipe (through ``env``, :func:`prod_env`) -
    follow it to the end, and download its result (if ``download_to``; a failed job's site error logs
    are waited for up to ``wait_site_errors`` seconds, :func:`download`)."""
    t0 = time.monotonic()
    if isinstance(job, (str, Path)):
        name, job_id = Path(job).name, session.submit_job(str(job))
    else:
        if env is None:
            raise ValueError("a recipe is submitted through env=prod_env(kit)")
        name, job_id = job.name, submit_recipe(env, job)
    echo(f"submitted {name} as job {job_id}")
    meta = follow(session, job_id, timeout=timeout, echo=echo)
    out = JobOutcome(job_id, meta.get("name", name), meta.get("status", "?"), time.monotonic() - t0)
    if download_to is not None:
        out.result_dir = download(session, job_id, download_to, wait_site_errors)
        echo(f"result of {job_id}: {out.result_dir}")
        if not out.ok:
            for line in server_errors(out.result_dir):
                echo(f"  server: {line}")
            for site, lines in site_errors(out.result_dir).items():
                echo(f"  site {site} failed: " + " | ".join(lines))
    return out


def run_chain(session: Session, env, config: str | Path, download_to: str | Path, stages=STAGES,
              checkpoint: str | Path | None = None, timeout: float = 0.0, which: str = "last",
              echo=print) -> list[JobOutcome]:
    """Run ``stages`` in order, each submitted as a recipe through ``env`` (:func:`prod_env`) and followed
    through ``session``; each starts from the previous one's global model (``which``).

    ``checkpoint``: the model the first stage starts from (None: from the model class). Stops at
    the first stage that does not finish ``FINISHED:COMPLETED``.
    """
    outcomes = []
    download_to = Path(download_to)
    with tempfile.TemporaryDirectory(prefix="plgg_jobs_") as tmp:
        for stage in stages:
            recipe = stage_recipe(stage, config, Path(tmp) / stage, checkpoint)
            out = submit_and_follow(session, recipe, download_to, timeout=timeout, echo=echo, env=env)
            outcomes.append(out)
            if not out.ok:
                echo(f"stage {stage} ended {out.status}; stopping the chain (logs: {out.result_dir})")
                break
            if stage != "plgg_evaluate":
                checkpoint = global_model(out.result_dir, which)
                echo(f"stage {stage} global model: {checkpoint}")
    return outcomes
