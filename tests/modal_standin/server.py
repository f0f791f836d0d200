"""A stand-in for Modal's API: the control plane and the task command router, on one port.

The installed, unmodified ``modal`` package talks to it when ``MODAL_SERVER_URL`` points
here (``MODAL_TOKEN_ID``/``MODAL_TOKEN_SECRET`` may be any values). It speaks Modal's gRPC
protocol through the servicer bases of the installed ``modal_proto`` and serves what
``modal.Sandbox`` needs: apps, environments, images (never built: answered at once),
secrets by name, volumes, sandboxes in both RPC families (V2, and V1 which ``gpu=`` uses),
tags, listing, lookup by name and id, wait, terminate; and on the router: exec with
stdin, resumable stdio reads by offset, poll and wait. Each sandbox gets a folder of its
own; its commands run as real processes on this machine (no isolation: this is a test
double, not a sandbox). Paths that ``sandbox.filesystem`` names, and the sandbox workdir,
are mapped into that folder.

Every RPC the client calls that is not served here is answered UNIMPLEMENTED and its name
recorded in `StandIn.unserved`, so a canary test can name it.

Failures it can be asked for, as Modal would give them: an image whose build commands
mention ``does-not-exist`` fails to build; a GPU type Modal does not offer is refused;
``max_running`` sandboxes at once is a quota (RESOURCE_EXHAUSTED); `StandIn.terminate`
ends a sandbox underneath its user with a reason; ``timeout`` and ``idle_timeout`` are
honoured.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import google.protobuf.empty_pb2 as empty_pb2
from grpclib import GRPCError, Status
from grpclib.server import Server, Stream
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2
from modal_proto.api_grpc import ModalClientBase
from modal_proto.task_command_router_grpc import TaskCommandRouterBase

FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"
FS_TOOLS_SCRIPT = Path(__file__).with_name("fs_tools.py")
GPU_TYPES = ("T4", "L4", "A10G", "A10", "A100", "A100-40GB", "A100-80GB", "L40S", "H100", "H200", "B200")
BUILD_FAILS = "does-not-exist"
SLOW_BUILD = re.compile(r"slow-build-([0-9.]+)")
"""A package name that makes an image take that many seconds to build (the first time)."""
READ_CHUNK = 64 * 1024
SEND_CHUNK = 1024 * 1024
KEEP_FINISHED = 120.0
_V1_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RESULT = api_pb2.GenericResult


def _token(hours: float = 1.0) -> str:
    """A JWT-shaped token whose payload carries ``exp`` (the client reads it to refresh)."""
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return ".".join([part({"alg": "none"}), part({"exp": int(time.time() + hours * 3600)}), "standin"])


@dataclass(eq=False)
class Exec:
    """One exec'd command: its process and every byte of its output, kept for offset reads."""

    id: str
    process: asyncio.subprocess.Process
    out: dict[int, bytearray] = field(default_factory=lambda: {1: bytearray(), 2: bytearray()})
    eof: dict[int, bool] = field(default_factory=lambda: {1: False, 2: False})
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    stdin_offset: int = 0
    stdin_closed: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(eq=False)
class Box:
    """One sandbox: its identity, definition, folder, environment and state."""

    id: str
    task_id: str
    app_id: str
    name: str
    tags: dict[str, str]
    created_at: float
    definition: api_pb2.Sandbox
    root: Path
    env: dict[str, str]
    result: api_pb2.GenericResult | None = None
    execs: dict[str, Exec] = field(default_factory=dict)
    last_active: float = field(default_factory=time.monotonic)
    vanished: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    watchdog: asyncio.Task[None] | None = None

    def host_path(self, path: str) -> Path:
        """Where the sandbox path ``path`` lives on this machine (inside the box's folder)."""
        pure = PurePosixPath(path)
        return self.root.joinpath(*pure.parts[1:]) if pure.is_absolute() else self.workdir / path

    @property
    def workdir(self) -> Path:
        return self.host_path(self.definition.workdir or "/")

    @property
    def running(self) -> int:
        return sum(not e.done.is_set() for e in self.execs.values())


class StandIn:
    """The stand-in's state and server. ``await start()``, ``await stop()``; or `serve_in_thread`."""

    def __init__(self, root: Path, max_running: int | None = None,
                 secrets_: dict[str, dict[str, str]] | None = None) -> None:
        self.root = root
        self.max_running = max_running
        self.port = 0
        self.unserved: list[str] = []
        self.calls: collections.Counter[str] = collections.Counter()
        self.apps: dict[tuple[str, str], str] = {}
        self.images: dict[bytes, str] = {}
        self.building: dict[str, tuple[float, str]] = {}
        """Images being built: id → (monotonic time the build ends, builder version)."""
        self.named_secrets: dict[str, str] = {}
        self.secret_values: dict[str, dict[str, str]] = {}
        self.volumes: dict[tuple[str, str], str] = {}
        self.boxes: dict[str, Box] = {}
        self._ids = itertools.count(1)
        self._server: Server | None = None
        for name, values in (secrets_ or {}).items():
            self.add_secret(name, values)

    # -- control, for tests ------------------------------------------------------------

    def add_secret(self, name: str, values: dict[str, str]) -> None:
        secret_id = f"st-{next(self._ids)}"
        self.named_secrets[name] = secret_id
        self.secret_values[secret_id] = dict(values)

    def running(self) -> list[Box]:
        return [b for b in self.boxes.values() if b.result is None]

    async def terminate(self, sandbox_id: str, reason: str,
                        status: int = _RESULT.GENERIC_STATUS_TERMINATED) -> None:
        """End a sandbox underneath its user, as Modal does (OOM, preemption...)."""
        await self._finish(self.boxes[sandbox_id], status, reason)

    async def vanish(self, sandbox_id: str, reason: str) -> None:
        """The worker goes away without a word: the sandbox reads as terminated with
        ``reason`` (poll, wait) and its processes are gone, but the exec streams a client
        has open never end (no EOF, no exit code, no error)."""
        box = self.boxes[sandbox_id]
        box.vanished = True
        await self._finish(box, _RESULT.GENERIC_STATUS_TERMINATED, reason)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._server = Server([_serving(ControlPlane(self), ModalClientBase),
                               _serving(Router(self), TaskCommandRouterBase)])
        await self._server.start("127.0.0.1", port)
        sockets = self._server._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for box in list(self.boxes.values()):
            if box.result is None:
                await self._finish(box, _RESULT.GENERIC_STATUS_TERMINATED, "the stand-in stopped")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # -- sandboxes -----------------------------------------------------------------------

    def box(self, sandbox_id: str) -> Box:
        box = self.boxes.get(sandbox_id)
        if box is None:
            raise GRPCError(Status.NOT_FOUND, f"Sandbox {sandbox_id} not found")
        return box

    def task(self, task_id: str) -> Box:
        for box in self.boxes.values():
            if box.task_id == task_id:
                if box.result is not None:
                    raise GRPCError(Status.NOT_FOUND, f"Task {task_id} has finished")
                return box
        raise GRPCError(Status.NOT_FOUND, f"Task {task_id} not found")

    def _env_of(self, sources: Any, secret_ids: Any = ()) -> dict[str, str]:
        env: dict[str, str] = {}
        for secret_id in secret_ids:
            env.update(self.secret_values.get(secret_id, {}))
        for source in sources:
            if source.secret_id:
                env.update(self.secret_values.get(source.secret_id, {}))
            else:
                env.update(dict(source.env.contents))
        return env

    async def create(self, app_id: str, definition: api_pb2.Sandbox, tags: Any, sources: Any,
                     v1: bool) -> Box:
        resources = definition.resources
        gpu = resources.gpu_config.gpu_type if resources.HasField("gpu_config") else ""
        if gpu and gpu.upper() not in GPU_TYPES:
            raise GRPCError(Status.INVALID_ARGUMENT,
                            f"GPU type '{gpu}' is not available. Supported GPU types: "
                            f"{', '.join(GPU_TYPES)}.")
        if self.max_running is not None and len(self.running()) >= self.max_running:
            raise GRPCError(Status.RESOURCE_EXHAUSTED,
                            f"Sandbox quota exceeded: this workspace may run at most "
                            f"{self.max_running} sandboxes at once.")
        name = definition.name
        if name and any(b.name == name and b.app_id == app_id for b in self.running()):
            raise GRPCError(Status.ALREADY_EXISTS, f"A sandbox named '{name}' is already running in this app.")
        if v1:
            box_id = "sb-" + "".join(secrets.choice(_V1_ALPHABET) for _ in range(22))
            task_id = f"ta-{uuid.uuid4().hex[:20]}"
        else:
            box_id = f"sb-{uuid.uuid4().hex[:24]}"
            task_id = f"ta-{uuid.uuid4().hex[:20]}V"
        created = max([time.time()] + [b.created_at + 1e-3 for b in self.boxes.values()])
        box = Box(box_id, task_id, app_id, name, {t.tag_name: t.tag_value for t in tags}, created,
                  definition, self.root / box_id, self._env_of(sources, definition.secret_ids))
        box.workdir.mkdir(parents=True, exist_ok=True)
        self.boxes[box_id] = box
        box.watchdog = asyncio.ensure_future(self._watch(box))
        if definition.entrypoint_args:
            await self.spawn(box, "entrypoint", list(definition.entrypoint_args), {}, None)
        return box

    async def _watch(self, box: Box) -> None:
        """End the box at its timeout, after its idle timeout, or when its entrypoint exits."""
        definition = box.definition
        started = time.monotonic()
        while box.result is None:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for key in [k for k, e in box.execs.items()
                        if e.ended_at is not None and now - e.ended_at > KEEP_FINISHED and k != "entrypoint"]:
                del box.execs[key]          # its output was read long ago; free the memory
            entry = box.execs.get("entrypoint")
            if entry is not None and entry.done.is_set():
                code = entry.process.returncode or 0
                status = _RESULT.GENERIC_STATUS_SUCCESS if code == 0 else _RESULT.GENERIC_STATUS_FAILURE
                await self._finish(box, status, "", exitcode=code)
            elif definition.timeout_secs and now - started > definition.timeout_secs:
                await self._finish(box, _RESULT.GENERIC_STATUS_TIMEOUT,
                                   f"Sandbox reached its timeout of {definition.timeout_secs} s.")
            elif (definition.idle_timeout_secs and not box.running
                  and now - box.last_active > definition.idle_timeout_secs):
                await self._finish(box, _RESULT.GENERIC_STATUS_TERMINATED,
                                   f"Sandbox was idle for {definition.idle_timeout_secs} s.")

    async def _finish(self, box: Box, status: int, reason: str, exitcode: int = 0) -> None:
        if box.result is not None:
            return
        box.result = api_pb2.GenericResult(status=status, exception=reason, exitcode=exitcode)
        for ex in box.execs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(ex.process.pid, signal.SIGKILL)
            ex.notify()
        _kill_tagged(box.task_id)
        box.finished.set()
        if box.watchdog is not None and box.watchdog is not asyncio.current_task():
            box.watchdog.cancel()

    async def spawn(self, box: Box, exec_id: str, argv: list[str], env: dict[str, str],
                    workdir: str | None) -> Exec:
        if argv[:1] == [FS_TOOLS]:
            argv = [sys.executable, str(FS_TOOLS_SCRIPT), "--root", str(box.root), *argv[1:]]
        # An exec without a workdir starts where the image's WORKDIR says (for the stock
        # images: /), not in the sandbox's workdir, which is the entrypoint's.
        cwd = box.host_path(workdir or "/")
        cwd.mkdir(parents=True, exist_ok=True)
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                    "HOME": str(box.root), "MODAL_TASK_ID": box.task_id,
                    "MODAL_SANDBOX_ID": box.id, **box.env, **env}
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=full_env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)
        except OSError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"Failed to start {argv[0]!r}: {exc.strerror}") from None
        ex = Exec(exec_id, process)
        box.execs[exec_id] = ex
        box.last_active = time.monotonic()
        asyncio.ensure_future(self._pump(box, ex))
        return ex

    async def _pump(self, box: Box, ex: Exec) -> None:
        process = ex.process
        assert process.stdout is not None and process.stderr is not None

        async def read(fd: int, pipe: asyncio.StreamReader) -> None:
            while chunk := await pipe.read(READ_CHUNK):
                ex.out[fd] += chunk
                ex.notify()
            ex.eof[fd] = True
            ex.notify()
        await asyncio.gather(read(1, process.stdout), read(2, process.stderr))
        await process.wait()
        box.last_active = ex.ended_at = time.monotonic()
        ex.done.set()
        ex.notify()


def _kill_tagged(task_id: str) -> None:
    """SIGKILL every process whose environment names ``task_id`` (what a container's end does)."""
    marker = f"MODAL_TASK_ID={task_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _serving(servicer: Any, base: type) -> Any:
    """``servicer`` with every RPC of ``base`` it does not define answered UNIMPLEMENTED (and
    recorded in ``standin.unserved``), so the abstract base can be instantiated."""
    standin: StandIn = servicer.standin
    missing = {name: _unserved(standin, name) for name in base.__abstractmethods__
               if not hasattr(type(servicer), name)}
    cls = type(type(servicer).__name__, (type(servicer), base), missing)
    instance = cls.__new__(cls)
    instance.__dict__.update(servicer.__dict__)
    return instance


def _unserved(standin: StandIn, name: str) -> Any:
    async def handler(self: Any, stream: Stream[Any, Any]) -> None:
        standin.unserved.append(name)
        raise GRPCError(Status.UNIMPLEMENTED, f"The Modal stand-in does not serve the RPC {name}.")
    return handler


class _Servicer:
    def __init__(self, standin: StandIn) -> None:
        self.standin = standin

    async def _req(self, stream: Stream[Any, Any], name: str) -> Any:
        self.standin.calls[name] += 1
        return await stream.recv_message()


class ControlPlane(_Servicer):
    """The RPCs of ``modal.client.ModalClient`` that sandboxes use."""

    async def ClientHello(self, stream: Stream[Any, Any]) -> None:
        await self._req(stream, "ClientHello")
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def AuthTokenGet(self, stream: Stream[Any, Any]) -> None:
        await self._req(stream, "AuthTokenGet")
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=_token()))

    async def EnvironmentGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "EnvironmentGetOrCreate")
        name = req.deployment_name or "main"
        settings = api_pb2.EnvironmentSettings(image_builder_version="2025.06")
        await stream.send_message(api_pb2.EnvironmentGetOrCreateResponse(
            environment_id=f"en-{name}", metadata=api_pb2.EnvironmentMetadata(name=name, settings=settings)))

    async def AppGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "AppGetOrCreate")
        key = (req.environment_name or "main", req.app_name)
        if key not in self.standin.apps:
            if req.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"App '{req.app_name}' not found")
            self.standin.apps[key] = f"ap-{next(self.standin._ids)}"
        await stream.send_message(api_pb2.AppGetOrCreateResponse(app_id=self.standin.apps[key]))

    async def ImageGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "ImageGetOrCreate")
        key = req.image.SerializeToString()
        new = key not in self.standin.images
        image_id = self.standin.images.setdefault(key, f"im-{next(self.standin._ids)}")
        bad = [c for c in req.image.dockerfile_commands if BUILD_FAILS in c]
        slow = [m for c in req.image.dockerfile_commands if (m := SLOW_BUILD.search(c))]
        if bad:
            result = api_pb2.GenericResult(
                status=_RESULT.GENERIC_STATUS_FAILURE,
                exception=f"Build step failed: {bad[0].strip()}: manifest unknown or package "
                          "not found (exit code 1)")
        elif slow and (new or image_id in self.standin.building):
            # not built yet: no result, the client joins the build (ImageJoinStreaming)
            self.standin.building.setdefault(
                image_id, (time.monotonic() + float(slow[0].group(1)), req.builder_version))
            result = api_pb2.GenericResult()
        else:
            result = api_pb2.GenericResult(status=_RESULT.GENERIC_STATUS_SUCCESS)
        await stream.send_message(api_pb2.ImageGetOrCreateResponse(
            image_id=image_id, result=result,
            metadata=api_pb2.ImageMetadata(image_builder_version=req.builder_version)))

    async def ImageJoinStreaming(self, stream: Stream[Any, Any]) -> None:
        """A build's end: held up to the request's ``timeout`` (the client asks again),
        then its log's last line and its result, as Modal streams them."""
        req = await self._req(stream, "ImageJoinStreaming")
        ends, version = self.standin.building.get(req.image_id, (0.0, ""))
        left = ends - time.monotonic()
        if left > req.timeout:
            await asyncio.sleep(req.timeout)
            await stream.send_message(api_pb2.ImageJoinStreamingResponse())
            return
        await asyncio.sleep(max(left, 0.0))
        self.standin.building.pop(req.image_id, None)
        await stream.send_message(api_pb2.ImageJoinStreamingResponse(
            task_logs=[api_pb2.TaskLogs(data="Built image.\n",
                                        file_descriptor=api_pb2.FILE_DESCRIPTOR_STDOUT)],
            result=api_pb2.GenericResult(status=_RESULT.GENERIC_STATUS_SUCCESS),
            entry_id="1", eof=True, metadata=api_pb2.ImageMetadata(image_builder_version=version)))

    async def SecretGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "SecretGetOrCreate")
        if req.env_dict or not req.deployment_name:
            secret_id = f"st-{next(self.standin._ids)}"
            self.standin.secret_values[secret_id] = dict(req.env_dict)
        elif req.deployment_name in self.standin.named_secrets:
            secret_id = self.standin.named_secrets[req.deployment_name]
        else:
            raise GRPCError(Status.NOT_FOUND, f"Secret '{req.deployment_name}' not found in environment "
                                              f"'{req.environment_name or 'main'}'")
        await stream.send_message(api_pb2.SecretGetOrCreateResponse(secret_id=secret_id))

    async def VolumeGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "VolumeGetOrCreate")
        key = (req.environment_name or "main", req.deployment_name)
        volume_id = self.standin.volumes.setdefault(key, f"vo-{next(self.standin._ids)}")
        await stream.send_message(api_pb2.VolumeGetOrCreateResponse(
            volume_id=volume_id, version=api_pb2.VOLUME_FS_VERSION_V2))

    async def _create(self, stream: Stream[Any, Any], name: str, v1: bool) -> None:
        req = await self._req(stream, name)
        box = await self.standin.create(req.app_id, req.definition, req.tags,
                                        [] if v1 else req.secret_sources, v1)
        metadata = api_pb2.SandboxHandleMetadata(app_id=box.app_id)
        if v1:
            await stream.send_message(api_pb2.SandboxCreateResponse(sandbox_id=box.id, metadata=metadata))
        else:
            await stream.send_message(api_pb2.SandboxCreateV2Response(
                sandbox_id=box.id, task_id=box.task_id, metadata=metadata))

    async def SandboxCreateV2(self, stream: Stream[Any, Any]) -> None:
        await self._create(stream, "SandboxCreateV2", v1=False)

    async def SandboxCreate(self, stream: Stream[Any, Any]) -> None:
        await self._create(stream, "SandboxCreate", v1=True)

    async def _task_id(self, stream: Stream[Any, Any], name: str) -> None:
        box = self.standin.box((await self._req(stream, name)).sandbox_id)
        if box.result is not None:
            await stream.send_message(api_pb2.SandboxGetTaskIdResponse(task_result=box.result))
        else:
            await stream.send_message(api_pb2.SandboxGetTaskIdResponse(task_id=box.task_id))

    async def SandboxGetTaskIdV2(self, stream: Stream[Any, Any]) -> None:
        await self._task_id(stream, "SandboxGetTaskIdV2")

    async def SandboxGetTaskId(self, stream: Stream[Any, Any]) -> None:
        await self._task_id(stream, "SandboxGetTaskId")

    async def _access(self, stream: Stream[Any, Any], name: str, response: type) -> None:
        await self._req(stream, name)
        await stream.send_message(response(url=self.standin.url, jwt=_token()))

    async def SandboxGetCommandRouterAccess(self, stream: Stream[Any, Any]) -> None:
        await self._access(stream, "SandboxGetCommandRouterAccess",
                           api_pb2.SandboxGetCommandRouterAccessResponse)

    async def TaskGetCommandRouterAccess(self, stream: Stream[Any, Any]) -> None:
        await self._access(stream, "TaskGetCommandRouterAccess",
                           api_pb2.TaskGetCommandRouterAccessResponse)

    async def _wait(self, stream: Stream[Any, Any], name: str) -> None:
        req = await self._req(stream, name)
        box = self.standin.box(req.sandbox_id)
        if box.result is None and req.timeout > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(box.finished.wait(), req.timeout)
        result = box.result or api_pb2.GenericResult()
        await stream.send_message(api_pb2.SandboxWaitResponse(
            result=result, metadata=api_pb2.SandboxHandleMetadata(app_id=box.app_id)))

    async def SandboxWaitV2(self, stream: Stream[Any, Any]) -> None:
        await self._wait(stream, "SandboxWaitV2")

    async def SandboxWait(self, stream: Stream[Any, Any]) -> None:
        await self._wait(stream, "SandboxWait")

    async def _terminate(self, stream: Stream[Any, Any], name: str, response: Any) -> None:
        box = self.standin.box((await self._req(stream, name)).sandbox_id)
        await self.standin._finish(box, _RESULT.GENERIC_STATUS_TERMINATED,
                                   "Sandbox was terminated by a SandboxTerminate request.")
        await stream.send_message(response)

    async def SandboxTerminateV2(self, stream: Stream[Any, Any]) -> None:
        await self._terminate(stream, "SandboxTerminateV2", api_pb2.SandboxTerminateResponse())

    async def SandboxTerminate(self, stream: Stream[Any, Any]) -> None:
        await self._terminate(stream, "SandboxTerminate", api_pb2.SandboxTerminateResponse())

    async def _list(self, stream: Stream[Any, Any], name: str) -> None:
        req = await self._req(stream, name)
        wanted = {t.tag_name: t.tag_value for t in req.tags}
        found = [b for b in self.standin.boxes.values()
                 if (not req.app_id or b.app_id == req.app_id)
                 and (req.include_finished or b.result is None)
                 and (not req.before_timestamp or b.created_at < req.before_timestamp)
                 and all(b.tags.get(k) == v for k, v in wanted.items())]
        found.sort(key=lambda b: b.created_at, reverse=True)
        await stream.send_message(api_pb2.SandboxListResponse(sandboxes=[
            api_pb2.SandboxInfo(
                id=b.id, created_at=b.created_at, app_id=b.app_id, name=b.name,
                tags=[api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in b.tags.items()],
                task_info=api_pb2.TaskInfo(id=b.task_id, result=b.result),
                metadata=api_pb2.SandboxHandleMetadata(app_id=b.app_id))
            for b in found[:25]]))

    async def SandboxListV2(self, stream: Stream[Any, Any]) -> None:
        await self._list(stream, "SandboxListV2")

    async def SandboxList(self, stream: Stream[Any, Any]) -> None:
        await self._list(stream, "SandboxList")

    async def _from_name(self, stream: Stream[Any, Any], name: str) -> None:
        req = await self._req(stream, name)
        app_id = self.standin.apps.get((req.environment_name or "main", req.app_name))
        for box in sorted(self.standin.boxes.values(), key=lambda b: -b.created_at):
            if box.app_id == app_id and box.name == req.sandbox_name and (
                    box.result is None or req.include_terminated):
                await stream.send_message(api_pb2.SandboxGetFromNameResponse(
                    sandbox_id=box.id, metadata=api_pb2.SandboxHandleMetadata(app_id=box.app_id)))
                return
        raise GRPCError(Status.NOT_FOUND, f"Sandbox '{req.sandbox_name}' not found in app '{req.app_name}'")

    async def SandboxGetFromNameV2(self, stream: Stream[Any, Any]) -> None:
        await self._from_name(stream, "SandboxGetFromNameV2")

    async def SandboxGetFromName(self, stream: Stream[Any, Any]) -> None:
        await self._from_name(stream, "SandboxGetFromName")

    async def _tags_set(self, stream: Stream[Any, Any], name: str) -> None:
        req = await self._req(stream, name)
        box = self.standin.box(req.sandbox_id)
        box.tags = {t.tag_name: t.tag_value for t in req.tags}
        await stream.send_message(empty_pb2.Empty())

    async def SandboxTagsSetV2(self, stream: Stream[Any, Any]) -> None:
        await self._tags_set(stream, "SandboxTagsSetV2")

    async def SandboxTagsSet(self, stream: Stream[Any, Any]) -> None:
        await self._tags_set(stream, "SandboxTagsSet")

    async def _tags_get(self, stream: Stream[Any, Any], name: str) -> None:
        box = self.standin.box((await self._req(stream, name)).sandbox_id)
        await stream.send_message(api_pb2.SandboxTagsGetResponse(
            tags=[api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in box.tags.items()]))

    async def SandboxTagsGetV2(self, stream: Stream[Any, Any]) -> None:
        await self._tags_get(stream, "SandboxTagsGetV2")

    async def SandboxTagsGet(self, stream: Stream[Any, Any]) -> None:
        await self._tags_get(stream, "SandboxTagsGet")


class Router(_Servicer):
    """The task command router: exec, stdin, stdio, poll and wait."""

    def _exec(self, task_id: str, exec_id: str) -> tuple[Box, Exec]:
        box = self.standin.task(task_id)
        ex = box.execs.get(exec_id)
        if ex is None:
            raise GRPCError(Status.NOT_FOUND, f"Exec {exec_id} not found")
        return box, ex

    async def TaskExecStart(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "TaskExecStart")
        box = self.standin.task(req.task_id)
        if req.exec_id not in box.execs:
            env = {**self.standin._env_of(req.secret_sources, req.secret_ids), **dict(req.env)}
            await self.standin.spawn(box, req.exec_id, list(req.command_args), env,
                                     req.workdir or None)
        await stream.send_message(sr_pb2.TaskExecStartResponse())

    async def TaskExecStdinWrite(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "TaskExecStdinWrite")
        box, ex = self._exec(req.task_id, req.exec_id)
        await self._write(box, ex, req.offset, req.data, req.eof)
        await stream.send_message(sr_pb2.TaskExecStdinWriteResponse())

    async def _write(self, box: Box, ex: Exec, offset: int, data: bytes, eof: bool) -> None:
        stdin = ex.process.stdin
        assert stdin is not None
        if ex.stdin_closed:
            if data:
                raise GRPCError(Status.FAILED_PRECONDITION, "stdin is closed")
            return
        skip = ex.stdin_offset - offset
        if skip < 0:
            raise GRPCError(Status.FAILED_PRECONDITION, f"stdin offset {offset} is past {ex.stdin_offset}")
        data = data[skip:]
        box.last_active = time.monotonic()
        with contextlib.suppress(ConnectionError):
            if data:
                stdin.write(data)
                await stdin.drain()
        ex.stdin_offset += len(data)
        if eof:
            ex.stdin_closed = True
            stdin.close()

    async def TaskExecStdinWriteStream(self, stream: Stream[Any, Any]) -> None:
        first = await self._req(stream, "TaskExecStdinWriteStream")
        if first.WhichOneof("payload") != "start":
            raise GRPCError(Status.INVALID_ARGUMENT, "the first message must be start")
        box, ex = self._exec(first.start.task_id, first.start.exec_id)
        offset = first.start.offset
        async for message in stream:
            kind = message.WhichOneof("payload")
            if kind == "data":
                await self._write(box, ex, offset, message.data, False)
                offset += len(message.data)
            elif kind == "end":
                await self._write(box, ex, offset, b"", True)
                break
        await stream.send_message(sr_pb2.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdinStatus(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "TaskExecStdinStatus")
        _, ex = self._exec(req.task_id, req.exec_id)
        await stream.send_message(sr_pb2.TaskExecStdinStatusResponse(
            num_bytes_written=ex.stdin_offset, closed=ex.stdin_closed))

    async def TaskExecStdioRead(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "TaskExecStdioRead")
        box, ex = self._exec(req.task_id, req.exec_id)
        fd = 1 if req.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT else 2
        offset = req.offset
        while True:
            changed = ex.changed
            if box.vanished:  # its worker is gone: nothing more comes, not even an end
                await asyncio.Event().wait()
            if box.result is not None:
                raise GRPCError(Status.NOT_FOUND, f"Task {box.task_id} has finished")
            buffer = ex.out[fd]
            while offset < len(buffer):
                chunk = bytes(buffer[offset:offset + SEND_CHUNK])
                await stream.send_message(sr_pb2.TaskExecStdioReadResponse(data=chunk))
                offset += len(chunk)
            if ex.eof[fd]:
                return
            await changed.wait()

    async def TaskExecPoll(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "TaskExecPoll")
        _, ex = self._exec(req.task_id, req.exec_id)
        await stream.send_message(_exit(sr_pb2.TaskExecPollResponse, ex))

    async def TaskExecWait(self, stream: Stream[Any, Any]) -> None:
        req = await self._req(stream, "TaskExecWait")
        box, ex = self._exec(req.task_id, req.exec_id)
        finished = asyncio.ensure_future(box.finished.wait())
        try:
            await asyncio.wait({finished, asyncio.ensure_future(ex.done.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()
        if box.vanished:
            await asyncio.Event().wait()
        if not ex.done.is_set():
            raise GRPCError(Status.NOT_FOUND, f"Task {box.task_id} has finished")
        await stream.send_message(_exit(sr_pb2.TaskExecWaitResponse, ex))


def _exit(response: Any, ex: Exec) -> Any:
    code = ex.process.returncode
    if not ex.done.is_set() or code is None:
        return response()
    return response(signal=-code) if code < 0 else response(code=code)


def serve_in_thread(root: Path, **options: Any) -> tuple[StandIn, asyncio.AbstractEventLoop, Any]:
    """Start a stand-in on its own loop thread; return it, its loop and a ``stop()``."""
    import threading
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    standin = StandIn(root, **options)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(standin.start())
        ready.set()
        loop.run_forever()
    thread = threading.Thread(target=run, name="modal-standin", daemon=True)
    thread.start()
    ready.wait(30)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(standin.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    return standin, loop, stop
