"""Build hook only (all metadata is in pyproject.toml): the wheel carries the top-level folders the
commands read (``simulator_configs/``, ``sites/``) inside the package as ``plgg_fl/_bundled/``, so a
non-editable install has them (see plgg_fl/bundled.py). The repository keeps one copy of each."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = ("simulator_configs", "sites")  # = plgg_fl.bundled.BUNDLED


class BuildPyWithBundledFolders(build_py):
    def run(self):
        super().run()
        root = Path(__file__).resolve().parent
        for name in BUNDLED:
            dest = Path(self.build_lib) / "plgg_fl" / "_bundled" / name
            shutil.copytree(root / name, dest, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithBundledFolders})
