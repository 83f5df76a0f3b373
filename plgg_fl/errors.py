"""One style for command errors (no dependencies; every layer may raise these).

A command that cannot do what it was asked raises :class:`CommandError`; ``plgg-fl`` prints it as one
line on stderr, ``plgg-fl <command>: error: <what> (<file>)``, and exits 2 for usage or setup errors
(a missing file, a bad option, a config that cannot run); a command whose work failed prints the same
way and returns 1 (a subclass may set ``exit_code = 1``).
"""

from __future__ import annotations


class CommandError(Exception):
    """A usage or setup error: exit 2. ``file`` (optional) is the file or folder it is about."""

    exit_code = 2

    def __init__(self, what: str, file: object = None):
        self.what, self.file = str(what), None if file is None else str(file)
        super().__init__(self.what)

    def __str__(self) -> str:
        return self.what + (f" ({self.file})" if self.file else "")


def error_line(command: str, what: object) -> str:
    """``plgg-fl <command>: error: <what>`` (``what`` an exception or a message)."""
    return f"plgg-fl {command}: error: {what}"


def os_error(exc: OSError, what: str | None = None) -> CommandError:
    """``exc`` (an ``OSError`` naming a file) as a :class:`CommandError`: ``<what> (<file>)``."""
    if exc.filename is None:
        return CommandError(what or exc)
    return CommandError(what or (exc.strerror or str(exc)).lower(), exc.filename)


class WorkError(CommandError):
    """The command started but its work failed: exit 1."""

    exit_code = 1


def about_file(exc: object, file: object, error: type = CommandError) -> CommandError:
    """``exc``'s message as ``<what> (<file>)``: a leading ``<file>: `` is moved to the end."""
    what, prefix = str(exc), f"{file}: "
    return error(what[len(prefix):] if what.startswith(prefix) else what, file)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a scheduler or service manager stopping the command), raised in the main
    thread like Ctrl-C so the same clean-up runs; the command exits 143 (128 + 15) instead of 130."""

    signal_name = "SIGTERM"
    exit_code = 143


def interrupt_exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C (SIGINT), 143 for :class:`Terminated`."""
    return getattr(exc, "exit_code", 130)


def interrupt_name(exc: BaseException) -> str:
    return getattr(exc, "signal_name", "Ctrl-C (SIGINT)")
