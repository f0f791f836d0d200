"""The agent as one zip file, for images that have Python but not sandbox_magics.

`bundle` zips the agent's modules with the pure-Python sources of aiohttp and every
package it needs, as installed here (their C accelerators are left out: each of them
falls back to Python when its ``*_NO_EXTENSIONS`` variable is set, which `boot` does).
`boot` is the program an image's ``python3 -c`` runs: it decodes the bundle that the
engine placed as base64 text, puts it on ``sys.path`` and starts the agent with the
arguments that follow. Python's ``zipimport`` reads it: nothing is installed. The bundle
runs on the Pythons its sources support (`oldest_python`, from their ``Requires-Python``);
on an older one `boot` says so in one line.
"""

from __future__ import annotations

import base64
import functools
import importlib.metadata
import io
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

PACKAGE = Path(__file__).resolve().parents[1]
ROOTS = ("aiohttp",)
PURE = ("AIOHTTP", "MULTIDICT", "YARL", "FROZENLIST", "PROPCACHE")
BUNDLE_FILE = "agent.pyz.b64"
TOO_OLD = 3
"""The exit code of `boot` on a Python older than the bundle needs."""
MINORS = range(6, 30)


@functools.lru_cache(maxsize=1)
def boot() -> str:
    """``python3 -c BOOT DIR ARGS...``: run the agent from ``DIR/BUNDLE_FILE`` with ``ARGS``;
    on a Python older than the bundle's sources need, one line on stderr and exit `TOO_OLD`."""
    major, minor = oldest_python()
    return f"""
import base64, os, sys
if sys.version_info < ({major}, {minor}):
    sys.stderr.write("agent: the agent the job brings needs Python {major}.{minor} or later, and "
                     "this image's is " + sys.version.split()[0] + ": use an image with a newer "
                     "python3\\n")
    sys.exit({TOO_OLD})
text = os.path.join(sys.argv[1], {BUNDLE_FILE!r})
path = os.path.join(sys.argv[1], "agent.pyz")
with open(text, "rb") as source, open(path, "wb") as target:
    target.write(base64.b64decode(source.read()))
for name in {PURE!r}:
    os.environ[name + "_NO_EXTENSIONS"] = "1"
sys.path.insert(0, path)
from sandbox_magics.agent.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@functools.lru_cache(maxsize=1)
def oldest_python() -> tuple[int, int]:
    """The oldest Python 3 every bundled distribution (and this package) says it supports
    (their ``Requires-Python``), as (3, minor)."""
    specs = [SpecifierSet(dist.metadata.get("Requires-Python") or "")
             for dist in [*_distributions(), importlib.metadata.distribution("sandbox_magics")]]
    return next(((3, m) for m in MINORS if all(f"3.{m}" in spec for spec in specs)), (3, 0))


def _distributions() -> list[importlib.metadata.Distribution]:
    """aiohttp and what it requires here (markers evaluated, extras left out), each once."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        dist = importlib.metadata.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


@functools.lru_cache(maxsize=1)
def bundle() -> bytes:
    """The zip: ``sandbox_magics/__init__.py``, its exceptions and the agent package, and
    the ``.py`` files of aiohttp and its requirements."""
    files: dict[str, Path] = {}
    for name in ("__init__.py", "exceptions.py"):
        files[f"sandbox_magics/{name}"] = PACKAGE / name
    for path in sorted((PACKAGE / "agent").glob("*.py")):
        files[f"sandbox_magics/agent/{path.name}"] = path
    for dist in _distributions():
        for entry in dist.files or ():
            if entry.suffix == ".py" and ".." not in entry.parts:
                files.setdefault(entry.as_posix(), Path(str(entry.locate())))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, path in sorted(files.items()):
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), path.read_bytes(),
                             zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def bundle_text() -> str:
    """`bundle` as base64 text (a Nomad template holds text)."""
    return base64.b64encode(bundle()).decode()
