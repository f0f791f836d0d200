"""The embedded ``local`` backend: each sandbox is an agent subprocess on this machine.

Workspaces live in ``<base>/kernel-<pid>-<client id>/<sandbox name>/slot-<k>``. The agent
is told our pid and exits when we die, and after its idle timeout, so a killed kernel
leaves no agent behind, unless the agent keeps a detached run: then it stays until no
client has come for the profile's ``heartbeat_window``, then stops the run and exits.
Each agent's address, pid and token are kept in this kernel's `SecretStore`, so a
restarted kernel's ``discover`` finds the agents still alive and adopts them (its
requests are their heartbeats). The next kernel removes workspace folders of kernels that
are gone and whose agents are gone (`_paths.reap_dead_kernels`); a client that shuts down
removes its own, but not the folder of an agent it leaves running.

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
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp

from .. import identity
from .._paths import AGENT_PID, agent_alive, agents_alive, client_dir, user_base
from ..agent import protocol
from ..exceptions import SandboxStartError
from ..identity import Identity, SecretStore
from ..profiles import Profile, non_empty_text
from .agent_client import AgentSandbox
from .base import Backend as BaseBackend
from .base import Health

STOP_GRACE = 3.0
EXIT_WAIT = 0.5
RUN_NICENESS = 10
READ_BUFFER = 1024 * 1024
EXIT_POLL = 0.05


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
    """An agent process and its workspace folder: our child ``process``, or the agent
    ``pid`` an earlier kernel started (adopted; not our child, so watched by pid)."""

    def __init__(self, sandbox_id: str, slots: int, base_url: str, token: str,
                 session: aiohttp.ClientSession, tags: Mapping[str, str],
                 process: subprocess.Popen[bytes] | None, root: Path,
                 secrets: SecretStore, pid: int | None = None) -> None:
        super().__init__(sandbox_id, slots, base_url, token, session, tags)
        self.process = process
        self.pid = process.pid if process is not None else pid
        self.root = root
        self._secrets = secrets

    def describe(self) -> dict[str, object]:
        return {"address": self.base_url, "pid": self.pid, "root": str(self.root)}

    def _ended(self) -> str | None:
        """How the agent process ended, or None while it lives."""
        if self.process is not None:
            code = self.process.poll()
            return None if code is None else _agent_ended(code)
        return None if agent_alive(self.pid) else f"its agent process (pid {self.pid}) is gone"

    async def _wait_end(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the agent process to end."""
        deadline = time.monotonic() + timeout
        while self._ended() is None and time.monotonic() < deadline:
            await asyncio.sleep(EXIT_POLL)

    async def health(self) -> Health:
        if (ended := self._ended()) is not None:
            return Health(False, ended)
        return await super().health()

    async def explain_loss(self, fallback: str) -> str:
        """If the agent process died, a sentence saying how (a broken connection is often
        seen before the process is reaped, so wait a moment for it); else ``fallback``."""
        await self._wait_end(EXIT_WAIT)
        ended = self._ended()
        return fallback if ended is None else f"Sandbox {self.id}: {ended}."

    async def terminate(self) -> None:
        if self._ended() is None:
            await super().terminate()
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and self._ended() is None and self.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, sig)
                await self._wait_end(STOP_GRACE)
                if self._ended() is not None:
                    break
        self._secrets.drop(_secret_key(self.root))
        await _remove(self.root)
        if self.process is None:  # adopted: the folder of the kernel that started it goes too
            with contextlib.suppress(OSError):
                self.root.parent.rmdir()


async def _first_line(pipe: IO[bytes]) -> bytes:
    """The first line read from ``pipe``, which is closed after (read on the loop, not in a
    thread: a thread blocked on an agent that never answers would hold up the exit)."""
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        return await reader.readline()
    finally:
        transport.close()


async def _reaped(process: subprocess.Popen[bytes]) -> None:
    """Wait (briefly) for a killed ``process`` to be reaped."""
    for _ in range(int(STOP_GRACE / EXIT_POLL)):
        if process.poll() is not None:
            return
        await asyncio.sleep(EXIT_POLL)


def _secret_key(root: Path) -> str:
    return f"local:{root}"


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
        self.secrets = SecretStore(me.kernel_id)

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

    async def price_per_hour(self, profile: Profile) -> float | None:
        """This machine costs nothing more while a sandbox runs, unless a profile says so."""
        return 0.0 if profile.price_per_hour is None else profile.price_per_hour

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
            # a Popen, not an asyncio process: a transport let go kills its child, and an
            # agent left running for a later kernel must outlive this one's objects
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=log, env=env, start_new_session=True)
        assert process.stdout is not None and process.stdin is not None
        with process.stdin:
            process.stdin.write(f"{token}\n".encode())
        try:
            line = await asyncio.wait_for(_first_line(process.stdout), profile.start_timeout)
            ready = json.loads(line)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(_reaped(process))
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
        url = f"http://{host}:{ready['port']}"
        (root / AGENT_PID).write_text(str(process.pid))
        self.secrets.put(_secret_key(root), json.dumps({
            "id": sandbox_id, "url": url, "token": token, "pid": process.pid,
            "root": str(root), "slots": profile.slots_per_sandbox, "tags": dict(tags)}))
        return LocalSandbox(sandbox_id, profile.slots_per_sandbox, url, token, self._client(),
                            tags, process, root, self.secrets)

    async def discover(self, profile: Profile) -> list[LocalSandbox]:
        """The agents of ``profile`` that this kernel id's earlier processes started and
        that still live (they keep a detached run); the dead ones are forgotten."""
        found = []
        for key, text in self.secrets.items():
            if not key.startswith("local:"):
                continue
            try:
                agent = json.loads(text)
                tags, pid = agent["tags"], agent["pid"]
            except (ValueError, KeyError, TypeError):
                continue
            if tags.get(identity.PROFILE) != profile.name:
                continue
            if not agent_alive(pid):
                self.secrets.drop(key)
                continue
            found.append(LocalSandbox(agent["id"], agent["slots"], agent["url"], agent["token"],
                                      self._client(), tags, None, Path(agent["root"]),
                                      self.secrets, pid))
        return found

    async def aclose(self) -> None:
        """Close the HTTP session and remove this client's workspace folder, unless it holds
        an agent left running (it keeps a detached run for a later kernel)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._root is not None:
            root, self._root = self._root, None
            if not agents_alive(root):
                await _remove(root)


async def _remove(folder: Path) -> None:
    """Remove ``folder`` off the loop; in place when the interpreter is exiting (atexit
    shutdown), whose executors take no more work."""
    try:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.rmtree(folder, ignore_errors=True))
    except RuntimeError:
        shutil.rmtree(folder, ignore_errors=True)
