"""The package's layers import only downwards (README "Where things are", docs/CONTRACTS.md), read from
the source with :mod:`ast` - every ``import``, at module level or inside a function - so a shortcut
upwards fails here rather than in review. Also: no private name imported across sub-packages."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "plgg_fl"
#: sub-package -> layer; a module may import its own sub-package and any of a lower layer only
LAYERS = {
    "errors": 0, "cliopts": 0, "bundled": 0,
    "data": 1,
    "synth": 2, "engine": 2,
    "fl": 3,
    "pipeline": 4, "predict": 4,
    "deploy": 5, "report": 5,
    "review": 6,
    "cli": 7,
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("plgg_fl."):
            yield node.lineno, node.module.split(".")[1], [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("plgg_fl."):
                    yield node.lineno, a.name.split(".")[1], []


def _part(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_module_belongs_to_a_layer():
    parts = {_part(p) for p in PKG.rglob("*.py")} - {"__init__"}
    assert parts <= set(LAYERS), f"add {sorted(parts - set(LAYERS))} to LAYERS"


def test_imports_go_downwards_only_and_never_reach_private_names():
    wrong, private = [], []
    for path in sorted(PKG.rglob("*.py")):
        me = _part(path)
        if me == "__init__":
            continue
        for line, target, names in _imports(path):
            where = f"{path.relative_to(PKG.parent)}:{line}"
            if target != me and LAYERS.get(target, 99) >= LAYERS[me]:
                wrong.append(f"{where} ({me}, layer {LAYERS[me]}) imports plgg_fl.{target} (layer {LAYERS.get(target)})")
            if target != me:
                private += [f"{where} imports {n} from plgg_fl.{target}" for n in names if n.startswith("_")]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)
    assert not private, "private names used across sub-packages:\n" + "\n".join(private)


def test_the_engine_never_imports_nvflare():
    hits = [f"{p.relative_to(PKG.parent)}" for p in (PKG / "engine").rglob("*.py")
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "nvflare" in ast.unparse(n)
                   for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))))]
    assert not hits, hits


def test_building_the_command_line_loads_neither_torch_nor_nvflare():
    """``plgg-fl --help`` and every command's start-up build the whole parser; torch, MONAI and NVFlare
    (seconds to import) are loaded by the commands that use them, not before (measured: 6 s -> 0.7 s)."""
    import subprocess
    import sys

    code = ("import sys; from plgg_fl.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'monai', 'nvflare') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
