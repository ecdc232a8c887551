"""The one build step pyproject.toml cannot declare: put README.md, config/example.yaml and the
systemd/ files into the wheel as package data (foldermirror/share/PATH), so `foldermirror files`
and `foldermirror install-units` work for a pip or pipx user with no checkout.

Their one copy in git stays at the top of the repository; the list is SOURCES in
daemon/foldermirror/shipped.py (read here with ast: the build must not import the package). An
editable install copies nothing: the package then reads them from the checkout. Everything else
about the package is in pyproject.toml.
"""

from __future__ import annotations

import ast
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED_PY = HERE / "daemon" / "foldermirror" / "shipped.py"


def shipped_sources() -> dict[str, str]:
    for node in ast.parse(SHIPPED_PY.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SOURCES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{SHIPPED_PY}: no SOURCES = {{...}} literal")


class BuildPyWithShare(build_py):
    """build_py, then the shipped files copied into build_lib/foldermirror/share/."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for relpath in shipped_sources().values():
            dest = self._share() / relpath
            self.mkpath(str(dest.parent))
            self.copy_file(str(HERE / relpath), str(dest), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [] if getattr(self, "editable_mode", False) else [str(self._share() / p)
                                                                   for p in shipped_sources().values()]
        return [*super().get_outputs(include_bytecode), *extra]

    def get_source_files(self) -> list[str]:  # what an sdist must carry to build this wheel
        return [*super().get_source_files(), *shipped_sources().values(), "daemon/foldermirror/shipped.py"]

    def _share(self) -> Path:
        return Path(self.build_lib) / "foldermirror" / "share"


setup(cmdclass={"build_py": BuildPyWithShare})
