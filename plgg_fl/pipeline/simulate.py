"""Run one NVFlare job in the simulator and check what it produced (the simulator's return code is not
enough: it is 0 even when a client failed).

Layout of a job's simulator workspace (NVFlare 2.9, ``SimEnv(workspace_root=W)``)::

    W/<job>/server/simulate_job/app_server/FL_global_model.pt        last global model
    W/<job>/server/simulate_job/app_server/best_FL_global_model.pt   best by val_dice
    W/<job>/server/simulate_job/metrics/round_metrics.jsonl          per-round, per-site metrics
    W/<job>/server/simulate_job/cross_site_val/cross_val_results.json   evaluation results
    W/<job>/<site>/log.txt, log.json                                 a site's log (NVFlare's text and JSON logs)
    W/<job>/<site>/plgg_results/simulate_job/records.jsonl           the site client's records (plgg_fl.fl.protocol)
    W/<job>/<site>/plgg_results/...                                  per-case rows, kept at the site
    W/<job>/server/log.json                                          the server's JSON log

Progress is printed from the sites' records as they are written; a failure is reported with the
site's ``failed`` record and NVFlare's logged errors (:mod:`plgg_fl.fl.joblogs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from nvflare.recipe import SimEnv

from plgg_fl.fl.filters import ENV_RECORD_DIR
from plgg_fl.fl.joblogs import folder_problems
from plgg_fl.fl.protocol import RECORDS_FILE, describe_record, read_records
from plgg_fl.fl.site import manifest_env_var
from plgg_fl.pipeline.processes import ENV_MARK, ignoring_interrupts, new_mark, stop_marked

class StageFailed(RuntimeError):
    """A simulator job whose outputs are missing; the message names the site and its log lines."""


@dataclass
class JobResult:
    name: str
    workspace: Path  # W/<job>
    wall_s: float
    sites: list[str]
    round_metrics: list[dict] = field(default_factory=list)
    eval_results: dict = field(default_factory=dict)

    @property
    def server_app(self) -> Path:
        return self.workspace / "server" / "simulate_job" / "app_server"

    @property
    def last_model(self) -> Path:
        return self.server_app / "FL_global_model.pt"

    @property
    def best_model(self) -> Path:
        return self.server_app / "best_FL_global_model.pt"

    def site_log(self, site: str) -> Path:
        return self.workspace / site / "log.txt"


def _fail(job: str, site: str, why: str, result: JobResult) -> StageFailed:
    folder = result.workspace / site
    body = "\n    ".join(folder_problems(folder, 12)) or "(no failure record and no logged error)"
    return StageFailed(f"{job}: site {site!r} {why}. Log {folder / 'log.txt'}:\n    {body}")


def check_training(result: JobResult, num_rounds: int) -> None:
    """Every pinned site reported in every round, and the server saved a global model."""
    seen: dict[int, set[str]] = {}
    for rec in result.round_metrics:
        seen[int(rec["round"])] = {s["name"] for s in rec.get("sites", [])}
    for rnd in range(num_rounds):
        for site in result.sites:
            if site not in seen.get(rnd, set()):
                raise _fail(result.name, site, f"sent no training result in round {rnd}", result)
    if not result.last_model.is_file():
        raise _fail(result.name, "server", "saved no global model", result)


def check_evaluation(result: JobResult, model_names: list[str]) -> None:
    """Every evaluation site returned non-empty metrics for every model."""
    for site in result.sites:
        got = result.eval_results.get(site, {})
        for name in model_names:
            if not got.get(name):
                raise _fail(result.name, site, f"returned no evaluation metrics for model {name!r}", result)


class _RecordFollower(threading.Thread):
    """Print the sites' records (``[site] round ...``, :func:`plgg_fl.fl.protocol.describe_record`) as
    their clients write them to ``<site>/plgg_results/<job>/records.jsonl``."""

    def __init__(self, site_dirs: list[Path], printer):
        super().__init__(daemon=True)
        self.site_dirs, self.printer, self.seen = site_dirs, printer, {}
        self.stop = threading.Event()

    def poll(self) -> None:
        for folder in self.site_dirs:
            for f in sorted(folder.glob(f"plgg_results/*/{RECORDS_FILE}")):
                records = read_records(f)
                for rec in records[self.seen.get(f, 0):]:
                    self.printer("    " + describe_record(rec))
                self.seen[f] = len(records)

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.poll()
        self.poll()


def quiet_console_log_config(folder: Path) -> str:
    """Path of a log config file: NVFlare's concise config with the console at ERROR (site and
    server log files keep INFO and every warning, e.g. the routine "ask to stop job: END_RUN" of each
    job's shutdown; the pipeline prints progress itself and a failing site's error lines). A file,
    because inline JSON does not survive the simulator's command line."""
    import copy

    from nvflare.fuel.utils.log_utils import concise_log_dict

    cfg = copy.deepcopy(concise_log_dict)
    cfg["handlers"]["consoleHandler"]["level"] = "ERROR"
    path = Path(folder) / "log_config_quiet_console.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return str(path)


def _stop_job(t: threading.Thread, mark: str, tries: int = 10) -> None:
    """Kill the job's processes until the thread that runs it is done (it may be about to start one)."""
    with ignoring_interrupts():
        for _ in range(tries):
            stop_marked(mark)
            t.join(2.0)
            if not t.is_alive():
                return


def _run_with_timeout(recipe, env, timeout_s: float, mark: str) -> None:
    """``recipe.run(env)`` in a thread; past ``timeout_s``, or when this thread is interrupted (Ctrl-C),
    every process of the job (those carrying ``mark``) is killed (an NVFlare job can wait forever, e.g.
    on a task the server cannot serialise)."""
    box: dict = {}

    def target():
        try:
            recipe.run(env)
        except BaseException as exc:  # re-raised in the caller
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        t.join(timeout_s)
    except BaseException:  # KeyboardInterrupt, SystemExit: nothing of the job may outlive the run
        _stop_job(t, mark)
        raise
    if t.is_alive():
        _stop_job(t, mark)
        raise TimeoutError(f"no result after {timeout_s:.0f} s; simulator stopped")
    if "exc" in box:
        raise box["exc"]


@contextlib.contextmanager
def environ_set(values: dict[str, str]):
    """Set environment variables for a block and put back exactly those afterwards (their old values,
    or absent): nothing else of the process's environment is touched."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def usable_cores() -> int:
    """The CPU cores this process may use: its CPU affinity (which a container's cpuset sets) on Linux,
    the machine's count elsewhere."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_client(n_clients: int) -> int:
    """Compute threads for each of ``n_clients`` clients on one machine: the usable cores shared out."""
    return max(1, usable_cores() // max(1, n_clients))


def run_in_simulator(
    recipe,
    sites: list[str],
    workspace_root: Path,
    manifests: dict[str, Path],
    record_dir: Path | None = None,
    printer=print,
    timeout_s: float = 1800.0,
    gpu: str | None = None,
) -> JobResult:
    """Run ``recipe`` with one simulated client per site; the sites find their data through
    ``PLGG_FL_MANIFEST_<SITE>`` (set here, as a site operator would). Returns the outputs found.
    Raises :class:`StageFailed` when the simulator fails or runs past ``timeout_s`` seconds."""
    workspace_root = Path(workspace_root).resolve()
    job_ws = workspace_root / recipe.name
    if job_ws.exists():
        shutil.rmtree(job_ws)
    env_vars = {manifest_env_var(site): str(Path(manifests[site]).resolve()) for site in sites}
    env_vars[ENV_MARK] = mark = new_mark()  # inherited by every process of the job
    if record_dir is not None:
        env_vars[ENV_RECORD_DIR] = str(Path(record_dir).resolve() / recipe.name)
    # the cores shared out between the simulated clients unless the caller says otherwise: on a
    # small CPU box, torch/MONAI thread pools oversubscribe the cores (measured: 0.74 s/step with
    # 1 thread each, 2.7-3.9 s with 2 threads each for two clients on the 2-core build VM), while a
    # single-site job (stage 1) would leave cores idle with one thread
    env_vars["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS") or str(threads_per_client(len(sites)))
    follower = _RecordFollower([job_ws / s for s in sites], printer)
    t0 = time.perf_counter()
    env = SimEnv(clients=list(sites), workspace_root=str(workspace_root), gpu_config=gpu,
                 log_config=quiet_console_log_config(workspace_root))
    with environ_set(env_vars):  # the simulator's processes inherit them; the caller's values come back after
        follower.start()
        try:
            _run_with_timeout(recipe, env, timeout_s, mark)
        except (RuntimeError, TimeoutError) as exc:  # non-zero simulator rc, or hung
            logs = {s: folder_problems(job_ws / s, 5) for s in [*sites, "server"]}
            detail = "".join(f"\n  {s}:\n    " + "\n    ".join(v) for s, v in logs.items() if v)
            raise StageFailed(f"{recipe.name}: simulator failed: {exc}{detail}") from exc
        finally:
            follower.stop.set()
            follower.join()
    result = JobResult(name=recipe.name, workspace=job_ws, wall_s=time.perf_counter() - t0, sites=list(sites))
    rm = job_ws / "server" / "simulate_job" / "metrics" / "round_metrics.jsonl"
    if rm.is_file():
        result.round_metrics = [json.loads(x) for x in rm.read_text(encoding="utf-8").splitlines() if x.strip()]
    cv = job_ws / "server" / "simulate_job" / "cross_site_val" / "cross_val_results.json"
    if cv.is_file():
        # NVFlare's cross-site evaluation names server-side models "SRV_<name>"
        raw = json.loads(cv.read_text(encoding="utf-8"))
        result.eval_results = {site: {m.removeprefix("SRV_"): v for m, v in per.items()} for site, per in raw.items()}
    return result
