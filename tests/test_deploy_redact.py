"""Site job logs (streamed to the server when a site allows log streaming) have absolute paths and the
site's case keys replaced before they are written: plgg_fl.deploy.redact, through the site's
log_config.json as NVFlare applies it (logging.config.dictConfig)."""

from __future__ import annotations

import copy
import json
import logging
import logging.config
from pathlib import Path

import pytest

from plgg_fl.deploy.redact import RedactSiteDetails, redact_paths

SITES_DIR = Path(__file__).resolve().parents[1] / "sites"


@pytest.mark.parametrize("text, expect", [
    ("invalid manifest /data/plgg/cbtn/manifest.yaml: no cases", "invalid manifest <path>: no cases"),
    ("File \"/home/me/ws/cbtn/app/custom/client.py\", line 3", "File \"<path>\", line 3"),
    ("reading C:\\hospital\\data\\t2.nii.gz failed", "reading <path> failed"),
    ("~/plgg/site_config.yaml", "<path>"),
    ("train/excluded/unreadable=2 val_dice(global)=0.81 5/10 steps", "train/excluded/unreadable=2 val_dice(global)=0.81 5/10 steps"),
    ("see https://nvflare.readthedocs.io/en/main/x.html", "see https://nvflare.readthedocs.io/en/main/x.html"),
])
def test_paths_are_replaced_and_metric_names_and_urls_are_not(text, expect):
    assert redact_paths(text) == expect


def test_the_sites_log_config_redacts_paths_keys_and_tracebacks_in_every_file(tmp_path, monkeypatch):
    from plgg_fl.synth import generate_cohort

    manifests = generate_cohort(tmp_path / "cohort", size="tiny", sites=["cbtn"], progress=False)
    monkeypatch.setenv("PLGG_FL_MANIFEST_CBTN", str(manifests["cbtn"]))
    from plgg_fl.data.manifest import load_manifest

    key = load_manifest(manifests["cbtn"]).cases[0].key
    config = json.loads((SITES_DIR / "cbtn" / "local" / "log_config.json").read_text(encoding="utf-8"))
    cfg = copy.deepcopy(config)
    for h in cfg["handlers"].values():
        if "filename" in h:
            h["filename"] = str(tmp_path / h["filename"])
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logging.config.dictConfig(cfg)
        log = logging.getLogger("custom.client")
        log.error("case %s unreadable: %s", key, manifests["cbtn"])
        try:
            raise FileNotFoundError(f"{tmp_path}/images/{key}_t2.nii.gz")
        except FileNotFoundError:
            log.exception("site failed")
        for h in root.handlers:
            h.flush()
    finally:
        for h in root.handlers[:]:
            h.close()
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    written = {f.name: f.read_text(encoding="utf-8") for f in tmp_path.glob("*.txt")} | {
        f.name: f.read_text(encoding="utf-8") for f in tmp_path.glob("*.json")}
    assert {"log.txt", "error_log.txt", "log.json"} <= set(written)
    for name, text in written.items():
        assert key not in text and str(tmp_path) not in text, (name, text[:500])
    assert "case <case> unreadable: <path>" in written["error_log.txt"]
    assert "FileNotFoundError: <path>" in written["error_log.txt"]  # the traceback, redacted too


def test_a_filter_never_drops_a_record():
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "value %d", ("not a number",), None)
    assert RedactSiteDetails(case_keys=False).filter(rec) is True
