"""Provision the study's NVFlare project and lay out the startup kits.

``sites/project.yml`` is a plain NVFlare 2.9 project file (``nvflare provision -p sites/project.yml``
works on it as it is). This module adds what a deployment (or a test) needs around it: set the
server host name and port on a copy of the file, run NVFlare's own provisioner, and copy each site's
``sites/<site>/local/`` policy files (privacy.json, resources.json) into its startup kit.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from plgg_fl.bundled import bundled_dir

#: The ``sites/`` folder (project.yml and the per-site templates): the checkout's, else the wheel's.
SITES_DIR = bundled_dir("sites")
PROJECT_YML = SITES_DIR / "project.yml"


@dataclass
class Kits:
    """Paths of the startup kits produced by one provisioning run."""

    root: Path  # <workspace>/<project>/prod_NN
    project: dict  # the (patched) project definition that was provisioned
    server: Path = None
    clients: dict = field(default_factory=dict)  # site name -> kit dir
    admins: dict = field(default_factory=dict)  # user name -> kit dir
    orgs: dict = field(default_factory=dict)  # participant name -> org
    roles: dict = field(default_factory=dict)  # admin name -> role

    @property
    def host(self) -> str:
        return self.server.name

    def admin_with_role(self, role: str) -> str:
        """The first admin user with ``role`` (``project_admin``, ``lead``, ``member``...)."""
        for name, r in self.roles.items():
            if r == role:
                return name
        raise KeyError(f"no admin with role {role!r} in the project")


def load_project(path: str | Path = PROJECT_YML) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def localize_project(project: dict, host: str | None = None, port: int | None = None) -> dict:
    """A copy of ``project`` whose server is named ``host`` and listens on ``port`` (both optional)."""
    project = copy.deepcopy(project)
    servers = [p for p in project["participants"] if p.get("type") == "server"]
    if len(servers) != 1:
        raise ValueError(f"expected exactly one server participant, found {len(servers)}")
    server = servers[0]
    if host:
        server["name"] = host
    if port:
        server["fed_learn_port"] = int(port)
        server.pop("admin_port", None)  # 2.9: admins share the fed_learn port unless told otherwise
    return project


def provision(
    workspace: str | Path,
    project_yml: str | Path = PROJECT_YML,
    host: str | None = None,
    port: int | None = None,
    sites_dir: str | Path | None = SITES_DIR,
    server_storage: str | Path | None = None,
    heartbeat_timeout: float | None = None,
) -> Kits:
    """Run ``nvflare provision`` on a host/port-patched copy of ``project_yml`` into ``workspace``.

    With ``sites_dir``, each client kit gets the files of ``sites_dir/<site>/local/`` copied into
    its ``local/`` folder (the site's privacy and resources policies), the server kit those of
    ``sites_dir/server/local/`` (the authorization policy). With ``server_storage``, the
    server keeps its job store and snapshots there instead of NVFlare's default ``/tmp/nvflare``
    (shared by every federation on the machine, and lost on reboot). ``heartbeat_timeout``: seconds
    of silence after which the server drops a client (NVFlare's kit default: 600) - the clock that
    ends a job waiting on a site that died. Returns the kit paths.
    """
    workspace = Path(workspace).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    project = localize_project(load_project(project_yml), host, port)
    patched = workspace / "project.yml"
    patched.write_text(yaml.safe_dump(project, sort_keys=False), encoding="utf-8")
    cmd = [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(patched), "-w", str(workspace), "--force"]
    proc = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"nvflare provision failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    prods = sorted((workspace / project["name"]).glob("prod_*"))
    if not prods:
        raise RuntimeError(f"nvflare provision produced no prod_* folder:\n{proc.stdout}\n{proc.stderr}")
    kits = Kits(root=prods[-1], project=project)
    for p in project["participants"]:
        kit = kits.root / p["name"]
        kits.orgs[p["name"]] = p.get("org")
        if p["type"] == "server":
            kits.server = kit
        elif p["type"] == "client":
            kits.clients[p["name"]] = kit
        elif p["type"] == "admin":
            kits.admins[p["name"]] = kit
            kits.roles[p["name"]] = p.get("role")
    set_server_resources(kits.server, server_storage, heartbeat_timeout)
    if sites_dir:
        for site, kit in kits.clients.items():
            install_site_policies(kit, Path(sites_dir) / site)
        install_site_policies(kits.server, Path(sites_dir) / "server")
    return kits


def install_site_policies(kit: str | Path, site_dir: str | Path) -> list[Path]:
    """Copy ``site_dir/local/*`` (privacy.json, resources.json, ...) into the kit's ``local/``."""
    src = Path(site_dir) / "local"
    copied = []
    if src.is_dir():
        for f in sorted(src.iterdir()):
            if f.is_file():
                dst = Path(kit) / "local" / f.name
                shutil.copyfile(f, dst)
                copied.append(dst)
    return copied


#: What the study's server apps build beyond NVFlare's default allow-list: plgg_fl's controller,
#: aggregator, locator and model; NVFlare's PyTorch persistor (not on NVFlare's default list); the
#: torch optimisers a FedOpt stage names (``server_opt``).
SERVER_ALLOW = ["plgg_fl.", "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor", "torch.optim."]


def set_server_resources(
    server_kit: str | Path, storage_root: str | Path | None = None, heartbeat_timeout: float | None = None
) -> Path:
    """Write the server's ``local/resources.json``: ``plgg_fl`` on its component allow-list (next to
    NVFlare's defaults: the server builds ``PinnedFedAvg``, ``SiteOrderAggregator`` and
    ``CheckpointLocator`` from the job config), job store and snapshots under ``storage_root``,
    client heartbeat timeout (seconds), :class:`plgg_fl.deploy.restart.EndOrphanedJobs` (a restarted
    server ends the jobs it interrupted); the rest as in the kit's ``resources.json.default``."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    local = Path(server_kit) / "local"
    res = json.loads((local / "resources.json.default").read_text(encoding="utf-8"))
    res["class_list_enforcement_mode"] = "enforce"
    res["class_allow_list"] = [*SERVER_ALLOW, *DEFAULT_CLASS_ALLOW_LIST]
    if storage_root:
        root = Path(storage_root).resolve()
        res["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] = str(root / "snapshot-storage")
        for comp in res["components"]:
            if comp["id"] == "job_manager":
                comp["args"]["uri_root"] = str(root / "jobs-storage")
    if heartbeat_timeout:
        res["servers"][0]["heart_beat_timeout"] = float(heartbeat_timeout)
    # a restarted server ends the jobs it interrupted (NVFlare 2.9 would leave them RUNNING for ever)
    res["components"] = [c for c in res["components"] if c.get("id") != "end_orphaned_jobs"] + [
        {"id": "end_orphaned_jobs", "path": "plgg_fl.deploy.restart.EndOrphanedJobs", "args": {}}]
    out = local / "resources.json"
    out.write_text(json.dumps(res, indent=2), encoding="utf-8")
    return out
