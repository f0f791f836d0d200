"""The embedded ``local`` backend: each sandbox is an agent subprocess on this machine.

Workspaces live in ``<base>/kernel-<pid>-<client id>/<sandbox name>/slot-<k>``. The agent
is told our pid and exits when we die, and after its idle timeout, so a killed kernel
leaves no agent behind, and there is nothing for a restarted kernel to adopt
(``discover`` finds nothing); the next kernel removes workspace folders of kernels that
are gone, and a client that shuts down removes its own. An agent that keeps a detached
run when we die stays until no client has come for the profile's ``heartbeat_window``,
then stops the run and exits.

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
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .. import identity
from .._paths import client_dir, user_base
from ..agent import protocol
from ..exceptions import SandboxStartError
from ..identity import Identity
from ..profiles import Profile, non_empty_text
from .agent_client import AgentSandbox
from .base import Backend as BaseBackend
from .base import Health

STOP_GRACE = 3.0
EXIT_WAIT = 0.5
RUN_NICENESS = 10
READ_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Keys of ``[profiles.NAME.local]``.

    Args:
        workspace_base: the folder under which workspaces are made (default: the temp folder).
        bind_host: the address agents listen on (default 127.0.0.1).
    """

    workspace_base: str | None = field(default=None, metadata={"check": non_empty_text})
    bind_host: str = field(default="127.0.0.1", metadata={"check": non_empty_text})


class LocalSandbox(AgentSandbox):
    """An agent subprocess and its workspace folder."""

    def __init__(self, sandbox_id: str, slots: int, base_url: str, token: str,
                 session: aiohttp.ClientSession, tags: Mapping[str, str],
                 process: asyncio.subprocess.Process, root: Path) -> None:
        super().__init__(sandbox_id, slots, base_url, token, session, tags)
        self.process = process
        self.root = root

    def describe(self) -> dict[str, object]:
        return {"address": self.base_url, "pid": self.process.pid, "root": str(self.root)}

    async def health(self) -> Health:
        if self.process.returncode is not None:
            return Health(False, _agent_ended(self.process.returncode))
        return await super().health()

    async def explain_loss(self, fallback: str) -> str:
        """If the agent process died, a sentence saying how (a broken connection is often
        seen before the process is reaped, so wait a moment for it); else ``fallback``."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), EXIT_WAIT)
        if self.process.returncode is None:
            return fallback
        return f"Sandbox {self.id}: {_agent_ended(self.process.returncode)}."

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
        await _remove(self.root)


def _agent_ended(code: int) -> str:
    if code >= 0:
        return f"its agent process exited with code {code}"
    try:
        return f"its agent process was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"its agent process was killed by signal {-code}"


class Backend(BaseBackend):
    """Starts agents as child processes of this kernel."""

    name = "local"

    def __init__(self, settings: Settings, me: Identity) -> None:
        self.settings = settings
        self.identity = me
        self._session: aiohttp.ClientSession | None = None
        self._root: Path | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  read_bufsize=READ_BUFFER)
        return self._session

    def _client_dir(self) -> Path:
        if self._root is None:
            base = self.settings.workspace_base
            self._root = client_dir("workspaces", self.identity.client_id,
                                    Path(base) if base else user_base("workspaces"))
        return self._root

    def notices(self, profile: Profile) -> list[str]:
        if profile.gpu:
            return [f"Profile {profile.name!r} asks for GPU {profile.gpu!r}, but the local "
                    "backend reserves no GPU: runs use this machine as it is."]
        return []

    async def create(self, profile: Profile, tags: Mapping[str, str]) -> LocalSandbox:
        sandbox_id = tags[identity.NAME]
        root = self._client_dir() / sandbox_id
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        token = secrets.token_urlsafe(32)
        env = {k: v for k, v in os.environ.items() if k != protocol.TOKEN_ENV}
        argv = [sys.executable, "-m", "sandbox_magics.agent", "--root", str(root),
                "--slots", str(profile.slots_per_sandbox), "--host", self.settings.bind_host,
                "--parent-pid", str(os.getpid()), "--idle-timeout", str(profile.idle_timeout * 2),
                "--heartbeat-window", str(profile.heartbeat_window),
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
        bind = self.settings.bind_host
        host = bind if bind not in ("0.0.0.0", "::") else "127.0.0.1"
        return LocalSandbox(sandbox_id, profile.slots_per_sandbox,
                            f"http://{host}:{ready['port']}", token, self._client(), tags,
                            process, root)

    async def aclose(self) -> None:
        """Close the HTTP session and remove this client's workspace folder."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._root is not None:
            root, self._root = self._root, None
            await _remove(root)


async def _remove(folder: Path) -> None:
    """Remove ``folder`` off the loop; in place when the interpreter is exiting (atexit
    shutdown), whose executors take no more work."""
    try:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.rmtree(folder, ignore_errors=True))
    except RuntimeError:
        shutil.rmtree(folder, ignore_errors=True)
