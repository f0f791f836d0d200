"""Case 8: the pool's per-run overhead on Modal, vs calling the modal SDK directly.

Both sides run `true` in an already started sandbox of the same local stand-in of Modal's
API (``tests/modal_standin``), through the same installed ``modal`` package: the baseline
is one ``Sandbox.exec`` with its stdout and stderr read and its exit awaited; ours is
``Client.run`` on a ``backend = "modal"`` profile (queue, slot, the process-group wrapper,
the body on stdin, log, release).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from sandbox_magics import Client
from tests.modal_standin.fixtures import Running, modal_environment, reset_modal_client

from ._harness import Row, repeat

TARGET = 3.0
PROFILES = """
[profiles.bench]
backend = "modal"
slots_per_sandbox = 4
min_sandboxes = 1
max_sandboxes = 1
idle_timeout = 600

[profiles.bench.modal]
app_name = "bench"
"""


def run(quick: bool) -> list[Row]:
    n = 10 if quick else 200
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-modal-") as tmp:
        root = Path(tmp)
        standin = Running(root / "standin")
        saved = dict(os.environ)
        os.environ.update(modal_environment(standin.url, root / "modal.toml"))
        reset_modal_client()
        loop = asyncio.new_event_loop()
        try:
            direct = _direct(loop, n)
            (root / "profiles.toml").write_text(PROFILES)
            c = Client(root / "profiles.toml")
            try:
                for _ in range(4):
                    c.run("true", profile="bench")
                pooled = repeat(lambda: c.run("true", profile="bench"), n)
            finally:
                c.shutdown()
        finally:
            loop.close()
            reset_modal_client()
            os.environ.clear()
            os.environ.update(saved)
            standin.stop()
    ratio = pooled.median / direct.median
    return [Row("8 modal per-run overhead", f"{n}× `true` on the Modal stand-in, Client.run vs "
                "Sandbox.exec", pooled.fmt("ms", 1e3), direct.fmt("ms", 1e3), ratio,
                f"≤ {TARGET}×", ratio <= TARGET)]


def _direct(loop: asyncio.AbstractEventLoop, n: int):  # type: ignore[no-untyped-def]
    import modal

    async def start() -> object:
        app = await modal.App.lookup.aio("bench-direct", create_if_missing=True)
        return await modal.Sandbox.create.aio(app=app, timeout=600, idle_timeout=600)

    async def once(sb: object) -> None:
        process = await sb.exec.aio("bash", "-c", "true", text=False)  # type: ignore[attr-defined]
        await asyncio.gather(process.stdout.read.aio(), process.stderr.read.aio())
        assert await process.wait.aio() == 0

    sb = loop.run_until_complete(start())
    try:
        return repeat(lambda: loop.run_until_complete(once(sb)), n)
    finally:
        loop.run_until_complete(sb.terminate.aio())  # type: ignore[attr-defined]
