"""The files the commands ship with: ``simulator_configs/`` (the demo, tiny, paper and study configs) and
``sites/`` (the NVFlare project file and each site's policy templates).

In a source checkout (``pip install -e .``) they are the repository's top-level folders, the
documented copies you edit. A wheel carries the same folders inside the package
(``plgg_fl/_bundled/<name>/``, copied there by ``setup.py`` at build time), read through
:mod:`importlib.resources`; installs that keep packages zipped are not supported.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: folders shipped in the wheel under ``plgg_fl/_bundled/``
BUNDLED = ("simulator_configs", "sites")
#: the repository root when running from a source checkout (the folder holding ``pyproject.toml``)
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def source_checkout() -> bool:
    """True when ``plgg_fl`` is imported from a source tree (the top-level folders are next to it)."""
    return (SOURCE_ROOT / "pyproject.toml").is_file() and (SOURCE_ROOT / "plgg_fl").is_dir()


def bundled_dir(name: str) -> Path:
    """The folder ``name`` (one of :data:`BUNDLED`): the checkout's top-level copy, else the wheel's.
    Raises FileNotFoundError naming both places when neither exists (a broken install)."""
    if name not in BUNDLED:
        raise ValueError(f"not a bundled folder: {name!r}; bundled: {', '.join(BUNDLED)}")
    checkout = SOURCE_ROOT / name
    if source_checkout() and checkout.is_dir():
        return checkout
    packaged = Path(str(resources.files("plgg_fl") / "_bundled" / name))
    if packaged.is_dir():
        return packaged
    raise FileNotFoundError(f"plgg-fl's {name}/ is missing: neither {checkout} (source checkout) nor {packaged} "
                            "(installed wheel) exists; reinstall plgg-fl")
