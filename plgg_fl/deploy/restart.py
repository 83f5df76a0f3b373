"""A server restart ends the jobs it interrupted, instead of leaving them RUNNING for ever.

NVFlare 2.9 does not resume a job after its server restarts (``JobRunner.restore_running_job`` is
never called): the restarted server keeps the job's status ``RUNNING`` in its job store, the sites'
job processes end, and nothing ever finishes the job - ``plgg-fl submit`` or ``nvflare job follow``
then wait until their own timeout, and ``list_jobs`` shows a job that is not running as running.

:class:`EndOrphanedJobs` (a component of the server's ``local/resources.json``, added by
``plgg-fl provision``) runs when the server starts: every job the store lists as running or
dispatched that no job process of this server runs is set to ``FINISHED:ABNORMAL``, with the reason
in the job's meta (``plgg_fl_end_reason``) and in the server log. Resubmit the stage (from the last
stage's model): nothing of the interrupted job is reused.
"""

from __future__ import annotations

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import SystemComponents
from nvflare.apis.fl_context import FLContext
from nvflare.apis.job_def import RunStatus

END_REASON_KEY = "plgg_fl_end_reason"
REASON = ("the server stopped while this job ran and NVFlare does not resume a job after a server restart; "
          "the job is ended, nothing of it is kept: resubmit the stage")


class EndOrphanedJobs(FLComponent):
    """On server start: jobs left ``RUNNING``/``DISPATCHED`` by a previous server process become
    ``FINISHED:ABNORMAL`` with :data:`REASON` (job meta key :data:`END_REASON_KEY`)."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.SYSTEM_START:
            return
        engine = fl_ctx.get_engine()
        manager = engine.get_component(SystemComponents.JOB_MANAGER)
        runner = engine.get_component(SystemComponents.JOB_RUNNER)
        if manager is None:
            self.log_warning(fl_ctx, "no job manager: cannot check for jobs interrupted by a restart")
            return
        live = set(getattr(runner, "running_jobs", None) or {})
        for job in manager.get_jobs_by_status([RunStatus.RUNNING, RunStatus.DISPATCHED], fl_ctx):
            if job.job_id in live:
                continue
            manager.update_meta(job.job_id, {END_REASON_KEY: REASON}, fl_ctx)
            manager.set_status(job.job_id, RunStatus.FINISHED_ABNORMAL, fl_ctx)
            self.log_error(fl_ctx, f"job {job.job_id} ({job.meta.get('name', '?')}): {REASON}; status set to "
                                   f"{RunStatus.FINISHED_ABNORMAL.value}")
