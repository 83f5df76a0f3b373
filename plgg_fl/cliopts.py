"""Option spellings shared by the sub-commands (no dependencies).

The rule (docs/CONTRACTS.md, "Command-line names"): ``--model`` is a model a command *uses*
(evaluate, predict, export, review-packet, jobs export's ``plgg_evaluate``); ``--init`` is the model
a *training* run starts from (train, jobs export, submit). Older spellings stay accepted as hidden
aliases: they parse into the same field but are not listed in ``--help``.
"""

from __future__ import annotations

import argparse


def add_aliased(parser, names, aliases, *, required: bool = False, **kw):
    """Add option ``names`` (str or tuple) with ``aliases`` hidden from ``--help``; returns its dest.

    With ``required``, canonical and aliases form one required mutually exclusive group, so any one
    spelling satisfies it (and giving two is an error).
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    dest = kw.pop("dest", None) or names[0].lstrip("-").replace("-", "_")
    target = parser.add_mutually_exclusive_group(required=True) if required else parser
    target.add_argument(*names, dest=dest, **kw)
    for alias in aliases:
        add_hidden_alias(target, alias, dest, **kw)
    return dest


def add_hidden_alias(container, alias: str, dest: str, **kw) -> None:
    """``alias`` parses into ``dest`` like the canonical option but is not shown in ``--help``."""
    kw = {k: v for k, v in kw.items() if k not in ("help", "default", "metavar")}
    container.add_argument(alias, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)
