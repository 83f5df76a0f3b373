"""The run log ``<out>/predict.log``: what an operator may need later but the console does not.

It gets the console's messages of ``plgg_fl.predict`` (INFO and up: per-scan errors) plus, through
the file-only logger :data:`FILE_LOG`, each failed scan's traceback and every header message that
nibabel emits while reading or writing a file, prefixed with that file. nibabel prints those
messages straight to stderr through a handler of its own; :func:`nibabel_notes` takes them (and
Python warnings raised meanwhile) away from the console.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator

#: File-only messages: never propagated to the console. NullHandler: no "last resort" printing.
FILE_LOG = logging.getLogger("plgg_fl.predict.file")
FILE_LOG.propagate = False
FILE_LOG.setLevel(logging.DEBUG)
FILE_LOG.addHandler(logging.NullHandler())
LOG_NAME = "predict.log"


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def nibabel_notes(path: str | Path) -> Iterator[None]:
    """Route nibabel's header messages and Python warnings raised inside to :data:`FILE_LOG`, naming ``path``."""
    from nibabel.imageglobals import logger as nib_logger

    keep = _Keep()
    saved, propagate = list(nib_logger.handlers), nib_logger.propagate
    for h in saved:
        nib_logger.removeHandler(h)
    nib_logger.addHandler(keep)
    nib_logger.propagate = False
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        nib_logger.removeHandler(keep)
        for h in saved:
            nib_logger.addHandler(h)
        nib_logger.propagate = propagate
        for msg in keep.messages + [str(w.message) for w in caught]:
            FILE_LOG.warning("%s: nibabel: %s", path, msg)


@contextlib.contextmanager
def run_log(out_dir: Path) -> Iterator[Path]:
    """Append this run's messages to ``out_dir/predict.log`` while the block runs; yields the log's path."""
    path = Path(out_dir) / LOG_NAME
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    loggers = (logging.getLogger("plgg_fl.predict"), FILE_LOG)
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield path
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()
