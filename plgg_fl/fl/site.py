"""Where a site keeps its data: looked up *at the site*, keyed by the NVFlare client name.

A job folder never holds a data path. The client script asks :func:`resolve_site_config` with the
site name NVFlare gave it, and the site answers from (first hit wins):

1. ``PLGG_FL_MANIFEST_<SITE>`` - env var holding the manifest path (``<SITE>`` = site name in
   upper case, every non-alphanumeric character replaced by ``_``; e.g. ``PLGG_FL_MANIFEST_DFCI_BCH``);
2. ``PLGG_FL_SITE_CONFIG`` - env var holding the path of a site config YAML (below);
3. ``local/site_config.yaml`` then ``site_config.yaml`` in the client's workspace (the folder the
   NVFlare client runs in; ``local/`` is where NVFlare keeps a site's own settings).

Site config YAML (template in ``sites/<site>/site_config.yaml``)::

    manifest: /data/plgg/manifest.yaml   # relative paths: relative to this file
    device: cpu                          # optional: cpu | cuda | cuda:0 ...; default auto

Per-case results never leave a site (there is no switch for it; an old ``send_per_case: false`` is
accepted and ignored, ``true`` is refused).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ENV_MANIFEST_PREFIX = "PLGG_FL_MANIFEST_"
ENV_SITE_CONFIG = "PLGG_FL_SITE_CONFIG"
SITE_CONFIG_NAMES = ("local/site_config.yaml", "site_config.yaml")
_KEYS = {"manifest", "device", "send_per_case"}  # send_per_case: accepted only as false (see above)


class SiteConfigError(RuntimeError):
    """No usable site configuration; the message lists every place that was looked at."""


@dataclass(frozen=True)
class SiteConfig:
    site: str
    manifest: Path
    device: str | None = None
    source: str = ""  # where the config came from (env var name or file), for logs


def manifest_env_var(site: str) -> str:
    """``PLGG_FL_MANIFEST_<SITE>`` for a site name (``dfci_bch`` -> ``PLGG_FL_MANIFEST_DFCI_BCH``)."""
    return ENV_MANIFEST_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", site).upper()


def _from_yaml(site: str, path: Path) -> SiteConfig:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or "manifest" not in data:
        raise SiteConfigError(f"{path}: site config must be a mapping with a 'manifest' entry")
    unknown = set(data) - _KEYS
    if unknown:
        raise SiteConfigError(f"{path}: unknown field(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    manifest = Path(os.path.expanduser(str(data["manifest"])))
    if not manifest.is_absolute():
        manifest = (path.parent / manifest).resolve()
    if data.get("send_per_case"):
        raise SiteConfigError(f"{path}: send_per_case: per-case results never leave a site (the switch was never "
                              "read and is gone); remove the line")
    return SiteConfig(site=site, manifest=manifest, device=data.get("device"), source=str(path))


def resolve_site_config(site: str, workspace: str | Path | None = None) -> SiteConfig:
    """Find ``site``'s manifest (and device) from the site's environment or workspace files.

    ``workspace`` defaults to the current folder (NVFlare runs a client script in the site's
    workspace). Raises :class:`SiteConfigError` naming every place looked at.
    """
    tried: list[str] = []
    var = manifest_env_var(site)
    if os.environ.get(var):
        return SiteConfig(site=site, manifest=Path(os.environ[var]).expanduser(), source=f"${var}")
    tried.append(f"${var}")
    cfg = os.environ.get(ENV_SITE_CONFIG)
    if cfg:
        return _from_yaml(site, Path(cfg).expanduser())
    tried.append(f"${ENV_SITE_CONFIG}")
    base = Path(workspace) if workspace is not None else Path.cwd()
    for name in SITE_CONFIG_NAMES:
        path = base / name
        if path.is_file():
            return _from_yaml(site, path)
        tried.append(str(path))
    raise SiteConfigError(
        f"site {site!r}: no data configured; looked at {', '.join(tried)}. "
        f"See sites/README.md: set {var}=<manifest.yaml> or put a site_config.yaml in the site's local/ folder."
    )
