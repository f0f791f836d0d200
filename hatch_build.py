"""Build hook run before hatch-jupyter-builder: one clear sentence when the JupyterLab
extension must be built (no prebuilt copy in sandbox_magics/labextension, or sources newer
than it) and this machine has no npm to build it with."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

BUILT = Path("sandbox_magics/labextension/package.json")
SOURCES = [Path("labextension/src"), Path("labextension/style"), Path("labextension/package.json")]


def newest(paths: list[Path]) -> float:
    times = [f.stat().st_mtime for p in paths if p.exists()
             for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return max(times, default=0.0)


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        built = root / BUILT
        if built.exists() and (version == "standard" or
                               built.stat().st_mtime >= newest([root / p for p in SOURCES])):
            return
        if shutil.which("npm") is None or shutil.which("node") is None:
            raise RuntimeError(
                "Building sandbox_magics needs Node.js (20 or newer) and npm on PATH to build "
                "its JupyterLab extension from labextension/ (install Debian's nodejs and npm, "
                "or install a wheel, which has the extension prebuilt).")
