"""`Backend` and `NomadSandbox`: a sandbox is one Nomad batch job whose task runs the agent.

Start: a fresh token is kept in this kernel's `SecretStore` (so a restarted kernel can
adopt), the job goes to Nomad with only the token's SHA-256, the job's allocations are
watched (blocking queries) until one runs, then its agent is asked for its health at the
allocation's address until it answers. While the nodes that fit are only full (the
evaluation's ``FailedTGAllocs`` count exhausted nodes), the start waits on the blocked
evaluation Nomad made, within the profile's ``start_timeout``, its stage ("waiting for
capacity: memory exhausted on 1 node(s)") logged. Whatever ends the wait early — no node
fits (filtered, or asked more than any node has), an image that cannot be pulled, a task
that dies at start, an OOM kill, an agent that listens where this kernel cannot reach it,
a Nomad that refuses the token or cannot be reached — becomes one sentence naming the job
or allocation and the cause, and the job is purged.

Liveness: the agent exits once no request (the pool's health checks are requests) has
come for the profile's ``heartbeat_window``, stopping a detached run that is still going
(a blocking run dies sooner, with its exec stream), so a kernel that died leaves no
running allocation behind. A running allocation therefore means an owner that
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
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from ... import identity
from ...agent import protocol
from ...exceptions import SandboxError, SandboxStartError
from ...identity import Identity, SecretStore
from ...profiles import Profile
from ..agent_client import AgentSandbox
from ..base import Backend as BaseBackend
from ..base import Health, report_stage
from . import _job
from ._api import NomadAPI, NomadAPIError, connection_reason
from ._settings import Settings

T = TypeVar("T")
logger = logging.getLogger(__name__)

READY_POLL = 0.02            # seconds between health probes of a starting agent
ALLOC_WAIT = 0.5             # the longest blocking query on a starting job's allocations
ALLOC_CHECK = 0.5            # seconds between looks at a starting allocation and its log
UNREACHABLE_AFTER = 1.0      # an agent that listens but cannot be reached this long is cut off
PROBE_TIMEOUT = 2.0
LOSS_WAIT = 3.0
STOP_WAIT = _job.KILL_TIMEOUT + 3.0
HEALTH_LOOKUP = 1.0
LOG_TAIL = 2048
THREADS = 8
READ_BUFFER = 1024 * 1024


@dataclass
class _Start:
    """One sandbox's start: its job, evaluation, profile and deadline (loop time), and its
    stage, what it waits for now (logged as it changes: no view shows a starting sandbox's
    stage yet)."""

    job_id: str
    eval_id: str
    profile: Profile
    deadline: float
    stage: str = "its evaluation was not processed yet"
    pulling_since: float | None = None

    @property
    def job(self) -> str:
        return f"Nomad job {self.job_id}"

    def left(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    def pull(self, stage: str | None) -> None:
        """While the driver pulls the image (``stage`` says so), the time goes on the
        deadline: a pull is bounded by the driver's ``image_pull_timeout``, not by
        ``start_timeout``."""
        now = asyncio.get_running_loop().time()
        if stage is not None and self.pulling_since is not None:
            self.deadline += now - self.pulling_since
        self.pulling_since = now if stage is not None else None
        if stage is not None:
            self.at(stage)

    def at(self, stage: str) -> None:
        if stage != self.stage:
            self.stage = stage
            logger.info("%s: %s", self.job, stage)
            report_stage(stage)

    def expired(self) -> SandboxStartError:
        return SandboxStartError(f"{self.job} did not start within "
                                 f"{self.profile.start_timeout:g} s: {self.stage}.")


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

    def preparation_timeout(self, profile: Profile) -> float:
        return self.settings.image_pull_timeout if self.settings.driver == "docker" else 0.0

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
        """Watch the job until its allocation runs, then ask its agent until it answers;
        fail with a sentence as soon as Nomad says it cannot be."""
        start = _Start(sandbox_id, eval_id, profile,
                       asyncio.get_running_loop().time() + profile.start_timeout)
        alloc = await self._placed(start)
        base_url = _job.address(alloc)
        if base_url is None:
            raise SandboxStartError(f"{start.job} runs allocation {_job.short(alloc['ID'])}, "
                                    f"but Nomad gave it no '{_job.PORT}' port.")
        await self._answering(start, alloc, base_url, token)
        return NomadSandbox(self, sandbox_id, alloc, profile.slots_per_sandbox, base_url, token,
                            tags, profile.memory_mb)

    async def _placed(self, start: _Start) -> dict[str, Any]:
        """The job's allocation once it runs (blocking queries on the job's allocations)."""
        index = 0
        while True:
            left = start.left()
            if left <= 0:
                raise start.expired()
            try:
                allocs, index = await self._call(self.api.job_allocations, start.job_id, index,
                                                 min(ALLOC_WAIT, left))
                alloc = _job.latest(allocs)
                if alloc is None:
                    await self._unplaced(start)
                    continue
            except NomadAPIError as exc:
                raise SandboxStartError(f"{start.job} could not be watched: {exc}") from None
            await self._fail_if_ended(start, alloc)
            if alloc.get("ClientStatus") == "running":
                return alloc
            pull = _job.pulling(alloc)
            start.pull(pull)
            if pull is None:
                start.at(f"its allocation {_job.short(alloc['ID'])} is "
                         f"{alloc.get('ClientStatus', 'pending')}")

    async def _unplaced(self, start: _Start) -> None:
        """Fail if the job's evaluation cannot place it; while nodes that fit are only
        full, wait on the blocked evaluation Nomad made (capacity often frees up soon)."""
        evaluation = await self._call(self.api.evaluation, start.eval_id) if start.eval_id else {}
        gpu = _job.gpu_wanted(self.settings, start.profile.gpu) if start.profile.gpu else None
        failure = _job.placement_failure(evaluation, gpu)
        if failure is None:
            if evaluation.get("Status") == "complete":
                start.at("Nomad placed no allocation yet")
            return
        if not failure.busy:
            raise SandboxStartError(f"{start.job} cannot be placed: {failure.reasons}.")
        if start.stage != (stage := f"waiting for capacity: {failure.reasons}"):
            room = await self._room_problem(start)
            if room:
                raise SandboxStartError(f"{start.job} cannot be placed: {failure.reasons}; "
                                        f"{room}.")
            start.at(stage)

    async def _room_problem(self, start: _Start) -> str | None:
        """Whether the job asks more than any node has when idle; None when the nodes
        cannot be read (a token without ``node:read``): then the wait decides."""
        job = _job.job_spec(self.settings, start.profile, start.job_id, {}, "", None, None)
        try:
            nodes = await self._call(self.api.nodes)
        except NomadAPIError:
            return None
        return _job.room_problem(nodes, job)

    async def _fail_if_ended(self, start: _Start, alloc: Mapping[str, Any]) -> None:
        ended = _job.alloc_ended(alloc, start.profile.memory_mb)
        if ended:
            tail = await self.log_tail(alloc["ID"])
            raise SandboxStartError(f"{start.job} did not start: its allocation "
                                    f"{_job.short(alloc['ID'])} {ended}{tail}.")

    async def _answering(self, start: _Start, alloc: Mapping[str, Any], base_url: str,
                         token: str) -> None:
        """Ask the agent at ``base_url`` for its health until it answers. Every
        ``ALLOC_CHECK`` seconds, ask Nomad whether the allocation ended, and the agent's
        log whether it listens: one that listens yet cannot be reached for
        ``UNREACHABLE_AFTER`` seconds is behind a network this kernel cannot cross."""
        loop = asyncio.get_running_loop()
        short = _job.short(alloc["ID"])
        start.at(f"its agent at {base_url} does not answer yet (allocation {short})")
        next_check, port, listening_since = loop.time() + ALLOC_CHECK, None, 0.0
        while True:
            healthy, unreached = await self._probe(base_url, token)
            if healthy:
                return
            now = loop.time()
            if now >= start.deadline:
                raise start.expired()
            if now >= next_check:
                next_check = now + ALLOC_CHECK
                try:
                    current, _ = await self._call(self.api.allocation, alloc["ID"])
                except NomadAPIError as exc:
                    raise SandboxStartError(f"{start.job} could not be watched: {exc}") from None
                await self._fail_if_ended(start, current)
                if port is None and (port := await self._listening_port(alloc["ID"])):
                    listening_since = now
                if unreached and port and now - listening_since >= UNREACHABLE_AFTER:
                    raise SandboxStartError(
                        f"{start.job} runs allocation {short}, whose agent listens on port "
                        f"{port}, but this kernel cannot reach it at {base_url} ({unreached}); "
                        "the machine running the kernel must reach the Nomad clients' "
                        "addresses on their dynamic ports (20000-32000 unless the clients "
                        "set min_dynamic_port and max_dynamic_port).")
            await asyncio.sleep(READY_POLL)

    async def _listening_port(self, alloc_id: str) -> int | None:
        """The port the agent says (on its stdout) it listens on; None if it has not said
        so yet or the log cannot be read (a token without ``read-logs``)."""
        try:
            stdout = await self._call(self.api.log, alloc_id, _job.TASK, "stdout", LOG_TAIL)
        except NomadAPIError:
            return None
        return _job.agent_port(stdout.decode("utf-8", errors="replace"))

    async def _probe(self, base_url: str, token: str) -> tuple[bool, str | None]:
        """Whether the agent at ``base_url`` answers its health check (``GET /v1/health``
        with its token), and if it could not be connected to, why."""
        try:
            async with self._client().get(f"{base_url}{protocol.API}/health",
                                          headers={"Authorization": f"Bearer {token}"},
                                          timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
                                          ) as resp:
                return resp.status == 200, None
        except asyncio.TimeoutError:
            return False, f"no answer within {PROBE_TIMEOUT:g} s"
        except aiohttp.ClientError as exc:
            return False, connection_reason(exc)

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
