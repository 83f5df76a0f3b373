"""What a site's job logs say about its files and patients, before they are written (and streamed).

NVFlare streams a job's ``log.txt`` (live) and ``error_log.txt`` from each site to the server when the
site allows log streaming (``allow_log_streaming`` in ``local/resources.json``): the study lead sees
why a job failed. Those lines carried the site's absolute paths (manifest, data, workspace) and,
in data errors and tracebacks, case keys. :class:`RedactSiteDetails` is a :mod:`logging` filter on
every handler of the site's job-process log configuration (``sites/<site>/local/log_config.json``,
copied into the kit by ``plgg-fl provision``): each record's message, traceback and stack have

* absolute paths (``/...``, ``C:\\...``, ``~/...``) replaced by ``<path>``;
* the site's case keys (read from its manifest, found as the client finds it:
  :func:`plgg_fl.fl.site.resolve_site_config`) replaced by ``<case>``.

The site's own files are redacted as well (the streamed files are the site's log files); a site
that wants raw logs - and accepts that they may be streamed - removes the filter from its
``local/log_config.json``. ``plgg-fl data check`` at the site shows every case and path.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

PATH_TOKEN, CASE_TOKEN = "<path>", "<case>"
#: an absolute POSIX path (not the tail of a URL or of ``a/b``), a home-relative path, a Windows path
_PATHS = re.compile(r"(?<![\w.:/~-])(?:~?/(?:[\w.@+=,-]+/)*[\w.@+=,-]+/?|[A-Za-z]:\\(?:[^\s\\'\"<>|:*?]+\\?)+)")
MIN_KEY_LEN = 3  # shorter "keys" would match ordinary words and numbers


def redact_paths(text: str) -> str:
    return _PATHS.sub(PATH_TOKEN, text)


def site_case_keys(workspace: str | Path | None = None) -> list[str]:
    """The case keys of the manifest this job process's site reads (empty when none is configured).
    The site name is not known to a logging filter: the manifest is found from
    ``$PLGG_FL_MANIFEST_<SITE>`` (any), ``$PLGG_FL_SITE_CONFIG`` or ``local/site_config.yaml``."""
    from plgg_fl.data.manifest import load_manifest
    from plgg_fl.fl.site import ENV_MANIFEST_PREFIX, SiteConfigError, resolve_site_config

    manifests = [Path(v) for k, v in os.environ.items() if k.startswith(ENV_MANIFEST_PREFIX) and v]
    if not manifests:
        try:
            manifests = [resolve_site_config("site", workspace).manifest]
        except (SiteConfigError, OSError, ValueError):
            return []
    keys: set[str] = set()
    for m in manifests:
        try:
            keys |= {c.key for c in load_manifest(m).cases}
        except Exception:  # an unreadable manifest: the job itself reports it; paths are still redacted
            continue
    return sorted((k for k in keys if len(k) >= MIN_KEY_LEN), key=len, reverse=True)


class RedactSiteDetails(logging.Filter):
    """Replace absolute paths and the site's case keys in every record (message, traceback, stack).

    Args:
        case_keys: also replace the site's case keys (default True); the keys are read once, on the
            first record, from the manifest the site configured.
    """

    def __init__(self, case_keys: bool = True):
        super().__init__()
        self.case_keys = case_keys
        self._keys_re: re.Pattern | None = None
        self._loaded = False

    def _keys(self) -> re.Pattern | None:
        if self.case_keys and not self._loaded:
            self._loaded = True
            try:
                keys = site_case_keys()
            except Exception:
                keys = []
            if keys:
                self._keys_re = re.compile(r"(?<![\w-])(?:" + "|".join(map(re.escape, keys)) + r")(?![\w-])")
        return self._keys_re

    def redact(self, text: str) -> str:
        keys = self._keys()
        text = keys.sub(CASE_TOKEN, text) if keys is not None else text
        return redact_paths(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg, record.args = self.redact(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.redact(record.exc_text)
            if record.stack_info:
                record.stack_info = self.redact(record.stack_info)
        except Exception:  # a filter must never lose a record
            pass
        return True
