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
    "plgg_fl.pipeline.jobs",
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


def command_name(args: argparse.Namespace) -> str:
    """The sub-command as typed, e.g. ``simulate`` or ``data check``."""
    nested = [v for k, v in vars(args).items() if k.endswith("_command") and isinstance(v, str)]
    return " ".join([args.command or "", *nested]).strip()


def _run(args: argparse.Namespace) -> int:
    """Run the command; errors and Ctrl-C become one line on stderr and an exit code."""
    from plgg_fl.errors import CommandError, error_line

    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(error_line(command_name(args), exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from plgg_fl.errors import interrupt_exit_code

        print(f"plgg-fl {command_name(args)}: interrupted", file=sys.stderr)
        return interrupt_exit_code(exc)


_MAIN_PID: int | None = None  # the process that installed _on_sigterm


def _on_sigterm(signum, frame) -> None:
    """In the command's own process: raise :class:`plgg_fl.errors.Terminated` (clean-up as on Ctrl-C).
    In a process forked from it (multiprocessing workers, which inherit Python's handlers, and which
    their pools stop with SIGTERM): die of SIGTERM as if no handler had been installed."""
    import os
    import signal

    if os.getpid() != _MAIN_PID:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    from plgg_fl.errors import Terminated

    raise Terminated()


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
    import os
    import signal

    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)  # clean up as on Ctrl-C (long runs stop their processes)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
