"""`Backend` and `NomadSandbox`: a sandbox is one Nomad batch job whose task runs the agent.

Start: a fresh token is kept in this kernel's `SecretStore` (so a restarted kernel can
adopt), the job goes to Nomad with only the token's SHA-256, and the allocation is
watched (blocking queries) until its agent answers a health check. Whatever ends the
wait early — no node fits (the evaluation's ``FailedTGAllocs``), an image that cannot be
pulled, a task that dies at start, an OOM kill, a Nomad that refuses the token or cannot
be reached — becomes one sentence naming the job or allocation and the cause, and the job
is purged.

Liveness: the agent exits once no request (the pool's health checks are requests) has
come for the profile's ``heartbeat_window`` and no run is active, so a kernel that died
leaves no running allocation behind. A running allocation therefore means an owner that
was alive within the window: ``discover`` reports the tags of a job whose allocation
runs with a heartbeat of now, instead of rewriting job meta (a meta change is a new job
version, which Nomad may roll out by replacing the allocation and its busy slots).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from ... import identity
from ...exceptions import SandboxError, SandboxStartError
from ...identity import Identity, SecretStore
from ...profiles import Profile
from ..agent_client import AgentSandbox
from ..base import Backend as BaseBackend
from ..base import Health
from . import _job
from ._api import NomadAPI, NomadAPIError
from ._settings import Settings

T = TypeVar("T")

READY_POLL = 0.03
ALLOC_WAIT = 0.5
LOSS_WAIT = 3.0
STOP_WAIT = _job.KILL_TIMEOUT + 3.0
HEALTH_LOOKUP = 1.0
LOG_TAIL = 2048
THREADS = 8
READ_BUFFER = 1024 * 1024


class NomadSandbox(AgentSandbox):
    """The agent of one Nomad job, at the address its allocation was given."""

    def __init__(self, backend: Backend, job_id: str, alloc: Mapping[str, Any], slots: int,
                 base_url: str, token: str, tags: Mapping[str, str], memory_mb: int | None) -> None:
        super().__init__(job_id, slots, base_url, token, backend._client(), tags)
        self.backend = backend
        self.job_id = job_id
        self.alloc_id = str(alloc.get("ID", ""))
        self.node = str(alloc.get("NodeName") or alloc.get("NodeID", ""))[:40]
        self.memory_mb = memory_mb
        self.has_token = bool(token)
        self._ended: str | None = None

    def __repr__(self) -> str:
        return f"<NomadSandbox {self.job_id} alloc={_job.short(self.alloc_id)} {self.base_url}>"

    def describe(self) -> dict[str, object]:
        return {"address": self.base_url, "job": self.job_id,
                "allocation": _job.short(self.alloc_id), "node": self.node}

    async def health(self) -> Health:
        if not self.has_token:
            return Health(False, f"this kernel kept no token for job {self.job_id}")
        health = await super().health()
        if health.ok:
            return health
        ended = await self.ended(wait=0.0, budget=HEALTH_LOOKUP)
        if ended:
            return Health(False, f"Nomad allocation {_job.short(self.alloc_id)} of job "
                                 f"{self.job_id} {ended}")
        return health

    async def ended(self, wait: float, budget: float) -> str | None:
        """How the allocation ended, if it has (waiting up to ``wait`` seconds for Nomad to
        learn of it); None if it runs or Nomad does not answer within ``budget`` seconds."""
        if self._ended:
            return self._ended
        deadline = time.monotonic() + wait
        index = 0
        try:
            while True:
                left = deadline - time.monotonic()
                lookup = self.backend._call(self.backend.api.allocation, self.alloc_id, index,
                                            max(0.05, left))
                alloc, index = await asyncio.wait_for(lookup, budget + max(0.0, left))
                self._ended = _job.alloc_ended(alloc, self.memory_mb)
                if self._ended or left <= 0:
                    return self._ended
        except (NomadAPIError, asyncio.TimeoutError):
            return None

    async def explain_loss(self, fallback: str) -> str:
        """A sentence for a sandbox lost mid-run, from what Nomad says of its allocation."""
        ended = await self.ended(wait=LOSS_WAIT, budget=self.backend.settings.api_timeout)
        if not ended:
            return fallback
        tail = await self.backend.log_tail(self.alloc_id)
        return f"Nomad allocation {_job.short(self.alloc_id)} of job {self.job_id} {ended}{tail}."

    async def terminate(self) -> None:
        """Deregister and purge the job, wait (briefly) for its allocation to stop, and
        forget its token; safe to call twice."""
        await self.backend.purge(self.job_id, self.alloc_id)

    async def log(self) -> str:
        """The end of the agent task's stdout (its address) and stderr, as Nomad keeps them
        (also once the allocation is dead)."""
        parts = [await self.backend._call(self.backend.api.log, self.alloc_id, _job.TASK, kind,
                                          LOG_TAIL) for kind in ("stdout", "stderr")]
        return b"".join(parts).decode("utf-8", errors="replace")


class Backend(BaseBackend):
    """Starts sandboxes as Nomad jobs through python-nomad."""

    name = "nomad"

    def __init__(self, settings: Settings, me: Identity) -> None:
        self.settings = settings
        self.identity = me
        self.api = NomadAPI(settings)
        self.secrets = SecretStore(me.kernel_id)
        self._pool = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="nomad")
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<nomad Backend {self.api.address}>"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  read_bufsize=READ_BUFFER)
        return self._session

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def notices(self, profile: Profile) -> list[str]:
        notes = []
        if self.settings.driver == "raw_exec" and profile.image:
            notes.append(f"Profile {profile.name!r} names image {profile.image!r}, but its "
                         "nomad driver is raw_exec: runs use the node's own Python and files.")
        if profile.secrets:
            notes.append(f"Profile {profile.name!r} names secrets "
                         f"({', '.join(profile.secrets)}), which the nomad backend does not "
                         "attach; pass what runs need with the profile's env or --env.")
        return notes

    # ------------------------------------------------------------------ create

    async def create(self, profile: Profile, tags: Mapping[str, str]) -> NomadSandbox:
        sandbox_id = _job.job_id(self.settings, self.identity.client_id,
                                 tags.get(identity.NAME, profile.name))
        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode()).hexdigest()
        spec = _job.job_spec(self.settings, profile, sandbox_id, tags, digest,
                             self.api.namespace, self.api.region)
        self.secrets.put(sandbox_id, token)
        registered = False
        try:
            try:
                eval_id = await self._call(self.api.register, spec)
            except NomadAPIError as exc:
                registered = exc.status is None   # no answer: it may have been registered
                raise SandboxStartError(str(exc)) from None
            registered = True
            return await self._wait_ready(profile, sandbox_id, eval_id, token, tags)
        except BaseException:
            if registered:
                await asyncio.shield(self._forget_quietly(sandbox_id))
            else:
                self.secrets.drop(sandbox_id)
            raise

    async def _forget_quietly(self, sandbox_id: str) -> None:
        with contextlib.suppress(NomadAPIError, asyncio.TimeoutError):
            await asyncio.wait_for(self._call(self.api.deregister, sandbox_id),
                                   self.settings.api_timeout + 1)
        self.secrets.drop(sandbox_id)

    async def _wait_ready(self, profile: Profile, sandbox_id: str, eval_id: str, token: str,
                          tags: Mapping[str, str]) -> NomadSandbox:
        """Watch the job's allocation until its agent answers; fail with a sentence as soon
        as Nomad says it cannot be."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + profile.start_timeout
        index, seen = 0, "its evaluation was not processed yet"
        job = f"Nomad job {sandbox_id}"
        gpu = _job.gpu_wanted(self.settings, profile.gpu) if profile.gpu else None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise SandboxStartError(f"{job} did not start within "
                                        f"{profile.start_timeout:g} s: {seen}.")
            try:
                allocs, index = await self._call(self.api.job_allocations, sandbox_id, index,
                                                 min(ALLOC_WAIT if not seen.startswith("its agent")
                                                     else READY_POLL, left))
                alloc = _job.latest(allocs)
                if alloc is None:
                    evaluation = await self._call(self.api.evaluation, eval_id) if eval_id else {}
                    failure = _job.placement_failure(evaluation, gpu)
                    if failure:
                        raise SandboxStartError(f"{job} cannot be placed: {failure.reasons}.")
                    if evaluation.get("Status") == "complete":
                        seen = "Nomad placed no allocation yet"
                    continue
            except NomadAPIError as exc:
                raise SandboxStartError(f"{job} could not be watched: {exc}") from None
            short = _job.short(alloc["ID"])
            ended = _job.alloc_ended(alloc, profile.memory_mb)
            if ended:
                tail = await self.log_tail(alloc["ID"])
                raise SandboxStartError(f"{job} did not start: its allocation {short} "
                                        f"{ended}{tail}.")
            if alloc.get("ClientStatus") != "running":
                seen = f"its allocation {short} is {alloc.get('ClientStatus', 'pending')}"
                continue
            base_url = _job.address(alloc)
            if base_url is None:
                raise SandboxStartError(f"{job} runs allocation {short}, but Nomad gave it no "
                                        f"'{_job.PORT}' port.")
            sandbox = NomadSandbox(self, sandbox_id, alloc, profile.slots_per_sandbox, base_url,
                                   token, tags, profile.memory_mb)
            health = await AgentSandbox.health(sandbox)
            if health.ok:
                return sandbox
            seen = f"its agent at {base_url} does not answer yet (allocation {short})"

    async def log_tail(self, alloc_id: str) -> str:
        """``"; its log ends with: ..."`` (the task's last stderr line), or "" if none."""
        try:
            data = await asyncio.wait_for(
                self._call(self.api.log, alloc_id, _job.TASK, "stderr", LOG_TAIL),
                self.settings.api_timeout)
        except (NomadAPIError, asyncio.TimeoutError):
            return ""
        lines = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines()
                 if line.strip()]
        return f"; its log ends with: {lines[-1][:300]}" if lines else ""

    # ------------------------------------------------------------------ stop

    async def purge(self, sandbox_id: str, alloc_id: str | None = None) -> None:
        """Deregister and purge ``sandbox_id``; wait up to the kill timeout for its
        allocations (a replacement Nomad placed too) to stop; forget its token."""
        try:
            await self._call(self.api.deregister, sandbox_id)
        except NomadAPIError as exc:
            raise SandboxError(f"Could not stop Nomad job {sandbox_id}: {exc}") from None
        self.secrets.drop(sandbox_id)
        if not alloc_id:
            return
        deadline = time.monotonic() + STOP_WAIT
        index = 0
        with contextlib.suppress(NomadAPIError):
            while (left := deadline - time.monotonic()) > 0:
                allocs, index = await self._call(self.api.job_allocations, sandbox_id, index, left)
                if all(a.get("ClientStatus") in _job.TERMINAL for a in allocs):
                    return

    # ------------------------------------------------------------------ discover

    async def discover(self, profile: Profile) -> list[NomadSandbox]:
        """This profile's jobs (by job-name prefix and meta), whoever made them. A job whose
        allocation runs carries a heartbeat of now (its agent outlives a silent owner by
        at most the heartbeat window); any other job keeps the heartbeat it was made with,
        so stale ones are reaped (purged)."""
        jobs = await self._call(self.api.jobs, self.settings.job_prefix,
                                _job.profile_filter(profile.name))
        found = []
        now = str(int(time.time()))
        for stub in jobs:
            sandbox_id = str(stub.get("ID", ""))
            tags = _job.tags_of(stub.get("Meta"))
            if not sandbox_id or identity.CLIENT not in tags:
                continue
            allocs, _ = await self._call(self.api.job_allocations, sandbox_id)
            alloc = _job.latest(allocs) or {}
            running = alloc.get("ClientStatus") == "running" and not stub.get("Stop")
            if running:
                tags[identity.HEARTBEAT] = now
            slots = (stub.get("Meta") or {}).get(_job.SLOTS_META, "")
            sandbox = NomadSandbox(
                self, sandbox_id, alloc,
                int(slots) if slots.isdigit() else profile.slots_per_sandbox,
                (_job.address(alloc) if running else None) or "http://127.0.0.1:9",
                self.secrets.get(sandbox_id) or "", tags, profile.memory_mb)
            found.append(sandbox)
        return found

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()
