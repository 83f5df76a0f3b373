"""How a job runs the site client: NVFlare's in-process ``ClientAPIExecutor`` on ``custom/client.py``.

The script a job ships is :data:`CLIENT_SCRIPT_PATH` (``plgg_fl/fl/job_custom/client.py``), a few lines
that run the *installed* :mod:`plgg_fl.fl.client`; its folder holds nothing else and is added to each
client app as a folder resource, which NVFlare copies into ``custom/`` as it is. So the job config names
the script by its bare name (``task_script_path: client.py``, no path of the exporting machine) and no
part of plgg_fl travels as ``custom/plgg_fl/`` (a namespace package that would shadow the site's
install). NVFlare's ``ScriptRunner`` would need the script under its bare name in the current folder,
i.e. a process-wide ``os.chdir`` while a recipe is built, exported or run; this runner needs none.
"""

from __future__ import annotations

from pathlib import Path

from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor, ExecutionMode
from nvflare.client.config import ExchangeFormat

#: what every job's client app holds in ``custom/``: the thin client script only
JOB_CUSTOM_DIR = Path(__file__).resolve().parent / "job_custom"
CLIENT_SCRIPT = "client.py"
CLIENT_SCRIPT_PATH = JOB_CUSTOM_DIR / CLIENT_SCRIPT


class InstalledClientRunner:
    """A job component (``job.to(runner, site)``) that adds NVFlare's in-process Client API executor
    running ``custom/client.py`` with ``script_args`` for every task, and the script itself.

    ``server_expected_format``: what the server's workflow expects of results (``pytorch`` for the
    PyTorch FedAvg recipe; None leaves NVFlare's default, as the evaluation job does)."""

    def __init__(self, script_args: str, server_expected_format: ExchangeFormat | None = ExchangeFormat.PYTORCH):
        self.script_args = script_args
        self.server_expected_format = server_expected_format

    def add_to_fed_job(self, job, ctx, **kwargs) -> dict:
        fmt = {} if self.server_expected_format is None else {"server_expected_format": self.server_expected_format}
        executor = ClientAPIExecutor(execution_mode=ExecutionMode.IN_PROCESS, task_script_path=CLIENT_SCRIPT, task_script_args=self.script_args,
                                     params_exchange_format=ExchangeFormat.PYTORCH, **fmt)
        job.add_executor(executor, tasks=kwargs.get("tasks", ["*"]), ctx=ctx)
        job.add_resources(resources=[str(JOB_CUSTOM_DIR)], ctx=ctx)  # a folder: its files go to custom/
        return {}
