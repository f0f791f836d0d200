"""The embedded ``local`` backend: each sandbox is an agent subprocess on this machine.

Workspaces live in ``<base>/kernel-<pid>/<sandbox-id>/slot-<k>``. The agent is told our
pid and exits when we die, and after its idle timeout, so a killed kernel leaves no agent
behind; the next kernel removes workspace folders of kernels that are gone.

Agents and their runs have a lower CPU priority (nice 10) than the kernel, so a notebook
stays responsive while its runs keep every core busy.

This isolates workspaces, not users: a run can read anything this user can. It is no
security boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
from pathlib import Path

import aiohttp

from .._paths import kernel_dir, reap_dead_kernels, user_base
from ..agent import protocol
from ..exceptions import SandboxStartError
from ..profiles import Profile
from .agent_client import AgentSandbox
from .base import Backend

STOP_GRACE = 3.0
RUN_NICENESS = 10
READ_BUFFER = 1024 * 1024


class LocalSandbox(AgentSandbox):
    """An agent subprocess and its workspace folder."""

    def __init__(self, sandbox_id: str, slots: int, base_url: str, token: str,
                 session: aiohttp.ClientSession, process: asyncio.subprocess.Process,
                 root: Path) -> None:
        super().__init__(sandbox_id, slots, base_url, token, session)
        self.process = process
        self.root = root

    def describe(self) -> dict[str, object]:
        return {"address": self.base_url, "pid": self.process.pid, "root": str(self.root)}

    async def is_alive(self) -> bool:
        return self.process.returncode is None and await super().is_alive()

    async def terminate(self) -> None:
        if self.process.returncode is None:
            await super().terminate()
            for step in (None, self.process.terminate, self.process.kill):
                if step is not None and self.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        step()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.process.wait(), STOP_GRACE)
                    break
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.rmtree(self.root, ignore_errors=True))


class LocalBackend(Backend):
    """Starts agents as child processes of this kernel."""

    name = "local"

    def __init__(self, idle_timeout: float | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._idle_timeout = idle_timeout
        self._reaped: set[Path] = set()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  read_bufsize=READ_BUFFER)
        return self._session

    def _kernel_dir(self, profile: Profile) -> Path:
        base = Path(profile.workspace_base) if profile.workspace_base else user_base("workspaces")
        if base not in self._reaped:
            self._reaped.add(base)
            reap_dead_kernels(base)
        return kernel_dir(base)

    def notices(self, profile: Profile) -> list[str]:
        if profile.gpu:
            return [f"Profile {profile.name!r} asks for GPU {profile.gpu!r}, but the local "
                    "backend reserves no GPU: runs use this machine as it is."]
        return []

    async def create(self, profile: Profile, sandbox_id: str) -> LocalSandbox:
        root = self._kernel_dir(profile) / sandbox_id
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        token = secrets.token_urlsafe(32)
        env = {k: v for k, v in os.environ.items() if k != protocol.TOKEN_ENV}
        idle = self._idle_timeout if self._idle_timeout is not None else profile.idle_timeout * 2
        argv = [sys.executable, "-m", "sandbox_magics.agent", "--root", str(root),
                "--slots", str(profile.slots_per_sandbox), "--host", profile.bind_host,
                "--parent-pid", str(os.getpid()), "--idle-timeout", str(idle),
                "--nice", str(RUN_NICENESS)]
        log_path = root / "agent.log"
        with open(log_path, "wb") as log:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=log, env=env, start_new_session=True)
        assert process.stdout is not None and process.stdin is not None
        process.stdin.write(f"{token}\n".encode())
        process.stdin.close()
        try:
            line = await asyncio.wait_for(process.stdout.readline(), profile.start_timeout)
            ready = json.loads(line)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())
            if not isinstance(exc, (asyncio.TimeoutError, ValueError)):
                shutil.rmtree(root, ignore_errors=True)
                raise
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            shutil.rmtree(root, ignore_errors=True)
            raise SandboxStartError(
                f"The local agent for profile {profile.name!r} did not start within "
                f"{profile.start_timeout:g} s (exit code {process.returncode}; it said: "
                f"{tail[0]}); check that this Python can import aiohttp."
            ) from None
        host = profile.bind_host if profile.bind_host not in ("0.0.0.0", "::") else "127.0.0.1"
        return LocalSandbox(sandbox_id, profile.slots_per_sandbox,
                            f"http://{host}:{ready['port']}", token, self._client(),
                            process, root)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
