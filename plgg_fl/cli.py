"""The ``plgg-fl`` command line.

Each sub-package that offers commands has a ``cli`` module with ``register(subparsers)``; this file
only collects them, so a command lives next to the code it runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from plgg_fl import __version__

#: Modules whose ``register(subparsers)`` adds sub-commands, in help order.
COMMAND_MODULES = (
    "plgg_fl.synth.cli",
    "plgg_fl.data.cli",
    "plgg_fl.engine.cli",
    "plgg_fl.pipeline.cli",
    "plgg_fl.fl.cli",
    "plgg_fl.predict.cli",
    "plgg_fl.report.cli",
    "plgg_fl.review.cli",
    "plgg_fl.deploy.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plgg-fl",
        description="Federated pediatric low-grade glioma segmentation (stepwise transfer learning on NVIDIA FLARE).",
    )
    parser.add_argument("--version", action="version", version=f"plgg-fl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:  # sub-package without commands (yet)
            continue
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # NVFlare's INFO chatter while jobs are built is not for the user
        logging.getLogger("nvflare").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
