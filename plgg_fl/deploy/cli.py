"""Commands for a real (provisioned) federation: ``plgg-fl provision | submit | status | download``.

The admin commands log in with an admin startup kit (``--kit``, or ``$PLGG_FL_ADMIN_KIT``) as the
user the kit was provisioned for; the server decides what that user may do (a ``member`` may look,
not submit). Examples::

    plgg-fl provision --host fl.example.org --port 8002 -w workspace
    plgg-fl submit --kit workspace/plgg_fl/prod_00/lead@plgg-fl.org --chain --download results/
    plgg-fl submit --kit $KIT --stage plgg_finetune --from-job 1f2e... --download results/
    plgg-fl submit --kit $KIT --job jobs/plgg_evaluate --no-follow
    plgg-fl status --kit $KIT [JOB_ID]
    plgg-fl download --kit $KIT JOB_ID --out results/
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from plgg_fl.bundled import bundled_dir
from plgg_fl.cliopts import add_hidden_alias
from plgg_fl.errors import CommandError
from plgg_fl.fl.protocol import JOB_NAMES

DEFAULT_CONFIG = bundled_dir("simulator_configs") / "paper.yaml"


def _kit(args) -> str:
    kit = args.kit or os.environ.get("PLGG_FL_ADMIN_KIT")
    if not kit:
        raise CommandError("give --kit ADMIN_KIT_DIR (or set $PLGG_FL_ADMIN_KIT)")
    return kit


def _admin_args(p):
    p.add_argument("--kit", help="admin startup kit folder (holds startup/fed_admin.json); default $PLGG_FL_ADMIN_KIT")
    p.add_argument("--user", default=None, help="user name (default: the kit's own)")


def register(subparsers) -> None:
    p = subparsers.add_parser("provision", help="provision sites/project.yml (host, port) and copy site policies into the kits")
    p.add_argument("--project", default=None, help="project file (default: sites/project.yml)")
    p.add_argument("--host", required=True, help="server host name clients and admins connect to")
    p.add_argument("--port", type=int, default=None, help="server port (default: the project file's)")
    p.add_argument("-w", "--workspace", default="workspace", help="output folder")
    p.add_argument("--server-storage", default=None, help="server job store + snapshots folder (default /tmp/nvflare)")
    p.add_argument("--heartbeat-timeout", type=float, default=None, help="seconds before the server drops a silent site")
    p.set_defaults(func=run_provision)

    p = subparsers.add_parser("submit", help="submit a stage job (or the whole chain) to a real federation and follow it")
    _admin_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--job", help="a ready job folder (e.g. jobs/plgg_finetune)")
    what.add_argument("--stage", choices=JOB_NAMES)
    what.add_argument("--chain", action="store_true", help="all stages in order, each from the previous global model")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline settings the stage jobs are built from")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-job", help="start from this finished job's global model (downloaded first)")
    src.add_argument("--init", dest="initial_ckpt", metavar="CKPT", help="start from this checkpoint file (shipped inside the job)")
    add_hidden_alias(src, "--initial-ckpt", "initial_ckpt")
    p.add_argument("--which", choices=("last", "best"), default="last", help="which global model to hand on")
    p.add_argument("--download", default="results", help="where results are downloaded (default ./results)")
    p.add_argument("--timeout", type=float, default=0.0, help="abort a job still running after this many seconds")
    p.add_argument("--no-follow", action="store_true", help="submit and return the job id")
    p.set_defaults(func=run_submit)

    p = subparsers.add_parser("status", help="connected sites and jobs of a real federation (or one job)")
    _admin_args(p)
    p.add_argument("job_id", nargs="?")
    p.set_defaults(func=run_status)

    p = subparsers.add_parser("download", help="download a job's result (global models, metrics, logs)")
    _admin_args(p)
    p.add_argument("job_id")
    p.add_argument("--out", default="results")
    p.set_defaults(func=run_download)


def run_provision(args) -> int:
    from plgg_fl.deploy.provision import PROJECT_YML, provision

    kits = provision(args.workspace, args.project or PROJECT_YML, host=args.host, port=args.port,
                     server_storage=args.server_storage, heartbeat_timeout=args.heartbeat_timeout)
    print(f"startup kits in {kits.root}")
    print(f"  server:  {kits.server}")
    for s, k in kits.clients.items():
        print(f"  site {s}: {k}")
    for u, k in kits.admins.items():
        print(f"  {kits.roles[u]} {u}: {k}")
    return 0


def run_submit(args) -> int:
    from plgg_fl.deploy import api

    session = api.open_session(_kit(args), args.user)
    env = api.prod_env(_kit(args), args.user)  # stage jobs go in as recipes (Recipe.run(ProdEnv))
    try:
        if args.no_follow and (args.chain or args.from_job):
            raise CommandError("--no-follow works with --job or --stage only")
        ckpt = args.initial_ckpt
        if args.from_job:
            ckpt = api.global_model(api.download(session, args.from_job, args.download), args.which)
            print(f"starting from {ckpt}")
        if args.chain:
            outs = api.run_chain(session, env, args.config, args.download, checkpoint=ckpt, timeout=args.timeout,
                                 which=args.which)
            for o in outs:
                print(f"{o.name:16s} {o.job_id}  {o.status:24s} {o.seconds:6.0f}s  {o.result_dir}")
            return 0 if outs and all(o.ok for o in outs) and len(outs) == len(api.STAGES) else 1
        if args.job and ckpt:
            raise CommandError("give --stage (not --job) to start from another model")
        with tempfile.TemporaryDirectory(prefix="plgg_job_") as tmp:
            job = args.job or api.stage_recipe(args.stage, args.config, Path(tmp), ckpt)
            if args.no_follow:
                print(session.submit_job(str(job)) if args.job else api.submit_recipe(env, job))
                return 0
            out = api.submit_and_follow(session, job, args.download, timeout=args.timeout, env=env)
        print(f"{out.name} {out.job_id} {out.status} in {out.seconds:.0f}s; result {out.result_dir}")
        return 0 if out.ok else 1
    finally:
        session.close()


def run_status(args) -> int:
    from plgg_fl.deploy import api

    session = api.open_session(_kit(args), args.user)
    try:
        if args.job_id:
            meta = session.get_job_meta(args.job_id)
            for k in ("name", "status", "submitter_name", "submit_time_iso", "start_time", "duration", "job_deploy_detail"):
                if k in meta:
                    print(f"{k}: {meta[k]}")
            return 0
        info = session.get_system_info()
        print(server_line(info))
        print("sites connected: " + (", ".join(sorted(c.name for c in info.client_info)) or "none"))
        for j in session.list_jobs():
            print(f"{j['job_id']}  {j['job_name']:16s} {j['status']:24s} {j.get('submit_time', '')}")
        return 0
    finally:
        session.close()


def server_line(info) -> str:
    """The server's state in words. NVFlare's own "status: stopped" means "no job running" (the
    server answered, so it is up); it is shown as ``idle`` and a running job's ids are named."""
    import time as _time

    si = info.server_info
    since = "" if si.start_time is None else f", up since {_time.strftime('%Y-%m-%d %H:%M:%S', _time.localtime(si.start_time))}"
    jobs = [j.job_id for j in info.job_info]
    state = f"running job(s) {', '.join(jobs)}" if jobs else "idle (no job running)"
    return f"server: up, {state}{since}"


def run_download(args) -> int:
    from plgg_fl.deploy import api

    session = api.open_session(_kit(args), args.user)
    try:
        result = api.download(session, args.job_id, args.out)
        print(result)
        for line in api.server_errors(result):
            print(f"server: {line}")
        for site, lines in api.site_errors(result).items():
            print(f"site {site} failed: " + " | ".join(lines))
        return 0
    finally:
        session.close()


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="plgg-fl")
    register(parser.add_subparsers(dest="command"))
    a = parser.parse_args()
    sys.exit(a.func(a))
