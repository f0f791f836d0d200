"""`AgentSandbox`: a sandbox reached through the HTTP agent (local and Nomad backends).

Every request carries the bearer token; the token never appears in a repr or a message.
Connection failures mid-run become `SandboxLostError`; refusals become `AgentRequestError`.
An exec sends one line of JSON, then the run's stdin encoded a slice at a time, so a cell
of any size goes out without a second copy of it in memory. It returns an `AgentProcess`:
the agent's frame stream, read as the command runs, and its ``signal`` route for the
core's escalation.

The agent keeps each slot's last run, so a run can be found again by its id, from this
kernel or a later one: `AgentSandbox.run_state` says how it stands (`AgentRunState`), and
`AgentSandbox.output` follows its output from any offset as the same `AgentProcess` an
exec returns (its ``offset`` says how far the output read so far goes, for the next
call to go on from). A run exec'd with ``detach`` goes on when its stream is closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from yarl import URL

from ..agent import protocol
from ..exceptions import (AgentAuthError, AgentRequestError, SandboxError, SandboxLostError,
                          SlotBusyError)
from .base import (ExecEvent, ExecRequest, Exited, FileInfo, Health, KeptRun, Output, Process,
                   Sandbox, Started)

HEALTH_TIMEOUT = 2.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=60.0)
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=None)
STDIN_SLICE = 256 * 1024
_LOST = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError,
         ConnectionError)


@dataclass(frozen=True)
class AgentRunState:
    """How the agent keeps a run of a slot: ``running`` or ``ended`` (then ``exited`` says
    how); whether it was exec'd ``detached``; ``bytes`` of output so far, of which
    ``dropped`` are no longer kept; how many clients follow its output now; whether a
    client has read its end."""

    run_id: str
    slot: int
    state: Literal["running", "ended"]
    detached: bool
    pgid: int | None
    bytes: int
    dropped: int
    followers: int
    read: bool
    exited: Exited | None


class AgentSandbox(Sandbox):
    """A sandbox whose slots are served by an agent at ``base_url``."""

    def __init__(self, sandbox_id: str, slots: int, base_url: str, token: str,
                 session: aiohttp.ClientSession, tags: Mapping[str, str]) -> None:
        self.id = sandbox_id
        self.slots = slots
        self.tags = dict(tags)
        self.base_url = base_url.rstrip("/") + protocol.API
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session = session

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.base_url} slots={self.slots}>"

    def describe(self) -> dict[str, object]:
        return {"address": self.base_url}

    async def explain_loss(self, fallback: str) -> str:
        """Why the agent stopped answering, as the engine tells it (the agent process died,
        the allocation was stopped...); ``fallback`` where it cannot say more."""
        return fallback

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        try:
            async with self._session.request(method, URL(self.base_url + path, encoded=True),
                                             headers=self._headers, **kwargs) as resp:
                await _raise_for_status(resp, self.id)
                return await resp.json()
        except _LOST as exc:
            raise SandboxLostError(await self.explain_loss(
                f"Sandbox {self.id} stopped answering ({_broken(exc)}).")) from None

    async def exec(self, slot: int, request: ExecRequest) -> AgentProcess:
        stdin = request.stdin or ""
        size = _utf8_size(stdin, request.run_id)
        body: dict[str, Any] = {"run_id": request.run_id, "argv": list(request.argv),
                                "env": dict(request.env), "detach": request.detach,
                                "timeout": request.timeout, "files": dict(request.files)}
        if request.interactive:  # its stdin comes later, through the stdin route
            body["interactive"], stdin, size = True, "", 0
        line = json.dumps(body).encode() + b"\n"
        # A known length, not chunks: a chunked body's last chunk is written after the
        # body, and an agent gone by then left aiohttp's writing task failing unretrieved.
        return await self._stream("POST", f"/slots/{slot}/exec", slot, request.run_id,
                                  data=_exec_body(line, stdin),
                                  headers={"Content-Length": str(len(line) + size)})

    async def output(self, slot: int, run_id: str, offset: int = 0) -> AgentProcess:
        """Follow the output of ``run_id``, the run the agent keeps for ``slot``, from
        ``offset`` bytes on: what is kept, then live until it ends, as the `AgentProcess`
        an exec returns (Started only if its process started; output the agent no longer
        keeps stands as one line on stderr).

        Raises:
            AgentRequestError: the slot keeps no such run (status 404), or ``offset`` is
                past its output (400).
            SandboxLostError: the sandbox could not be reached.
        """
        return await self._stream("GET", f"/slots/{slot}/runs/{_segment(run_id)}/output",
                                  slot, run_id, params={"offset": str(offset)})

    async def follow(self, slot: int, run_id: str) -> AgentProcess:
        return await self.output(slot, run_id)

    async def kept_runs(self) -> list[KeptRun]:
        info = await self._request("GET", "/health", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT))
        return [KeptRun(run["run_id"], run["slot"], run["state"] == "running")
                for run in info.get("runs", ())
                if run["detached"] and (run["state"] == "running" or not run["read"])]

    async def run_state(self, slot: int, run_id: str) -> AgentRunState:
        """How the agent keeps ``run_id``, the run of ``slot``.

        Raises:
            AgentRequestError: the slot keeps no such run (status 404).
            SandboxLostError: the sandbox could not be reached.
        """
        info = await self._request("GET", f"/slots/{slot}/runs/{_segment(run_id)}")
        return AgentRunState(
            run_id=info["run_id"], slot=info["slot"], state=info["state"],
            detached=info["detached"], pgid=info["pgid"], bytes=info["bytes"],
            dropped=info["dropped"], followers=info["followers"], read=info["read"],
            exited=_exited(info["exit"]) if info["exit"] is not None else None)

    async def _stream(self, method: str, path: str, slot: int, run_id: str,
                      headers: Mapping[str, str] | None = None, **kwargs: Any) -> AgentProcess:
        """Send a request answered with frames; return the `AgentProcess` reading them."""
        try:
            resp = await self._session.request(method, URL(self.base_url + path, encoded=True),
                                               headers={**self._headers, **(headers or {})},
                                               timeout=STREAM_TIMEOUT, **kwargs)
        except _LOST as exc:
            raise SandboxLostError(await self.explain_loss(
                f"Sandbox {self.id} stopped answering ({_broken(exc)}).")) from None
        try:
            await _raise_for_status(resp, self.id)
        except BaseException:
            resp.release()
            raise
        return AgentProcess(self, slot, run_id, resp)

    async def signal(self, slot: int, run_id: str, sig: int) -> bool:
        """Deliver ``sig`` to the process group of ``run_id`` in ``slot``."""
        result = await self._request("POST", f"/slots/{slot}/signal",
                                     json={"run_id": run_id, "signal": int(sig)},
                                     timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT * 5))
        return bool(result.get("delivered"))

    async def write_stdin(self, slot: int, run_id: str, data: bytes) -> None:
        """Send ``data`` to the stdin of ``run_id``, the interactive run of ``slot``."""
        await self._request("POST", f"/slots/{slot}/runs/{_segment(run_id)}/stdin", data=data)

    async def list_files(self, slot: int) -> list[FileInfo]:
        result = await self._request("GET", f"/slots/{slot}/files")
        return [FileInfo(f["path"], f["size"], f["mtime"]) for f in result["files"]]

    async def upload(self, slot: int, local: Path, remote: str) -> None:
        with open(local, "rb") as fh:
            await self._request("PUT", f"/slots/{slot}/files/{_quote(remote)}", data=fh)

    async def download(self, slot: int, remote: str, local: Path) -> None:
        url = URL(f"{self.base_url}/slots/{slot}/files/{_quote(remote)}", encoded=True)
        try:
            async with self._session.get(url, headers=self._headers,
                                         timeout=REQUEST_TIMEOUT) as resp:
                await _raise_for_status(resp, self.id)
                local.parent.mkdir(parents=True, exist_ok=True)
                with open(local, "wb") as fh:
                    async for chunk in resp.content.iter_chunked(protocol.MAX_CHUNK):
                        fh.write(chunk)
        except _LOST as exc:
            raise SandboxLostError(await self.explain_loss(
                f"Sandbox {self.id} stopped answering ({_broken(exc)}).")) from None

    async def reset(self, slot: int) -> None:
        await self._request("POST", f"/slots/{slot}/reset")

    async def health(self) -> Health:
        try:
            await self._request("GET", "/health", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT))
        except (SandboxError, asyncio.TimeoutError) as exc:
            return Health(False, f"its agent did not answer a health check ({exc or 'timeout'})")
        return Health(True)

    async def shutdown(self) -> None:
        """Ask the agent to stop; it kills its running process groups as it goes."""
        await self._request("POST", "/shutdown", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT))

    async def terminate(self) -> None:
        try:
            await self.shutdown()
        except (SandboxError, asyncio.TimeoutError):
            pass


class AgentProcess(Process):
    """A command the agent runs: its frames, read from the exec (or output) response as
    they come. ``offset`` is the run's output offset the output read so far reaches."""

    def __init__(self, sandbox: AgentSandbox, slot: int, run_id: str,
                 resp: aiohttp.ClientResponse) -> None:
        self._sandbox, self._slot, self._run_id, self._resp = sandbox, slot, run_id, resp
        self.returncode: int | None = None
        self.offset = 0

    async def __aiter__(self) -> AsyncIterator[ExecEvent]:
        content = self._resp.content
        try:
            while True:
                kind, length = protocol.HEADER.unpack(await content.readexactly(protocol.HEADER.size))
                payload = await content.readexactly(length) if length else b""
                if kind in (protocol.STDOUT, protocol.STDERR):
                    self.offset += len(payload)
                    yield Output("stdout" if kind == protocol.STDOUT else "stderr", payload)
                elif kind == protocol.START:
                    info = json.loads(payload)
                    self.offset = info.get("offset", 0)
                    yield Started(info.get("pgid"))
                elif kind == protocol.DROPPED:
                    info = json.loads(payload)
                    self.offset = info["offset"]
                    yield Output("stderr", _dropped_line(info["dropped"]))
                elif kind == protocol.EXIT:
                    exited = _exited(json.loads(payload))
                    self.returncode = exited.exit_code
                    yield exited
                    return
        except _LOST as exc:
            raise SandboxLostError(await self._sandbox.explain_loss(
                f"Sandbox {self._sandbox.id} was lost during the run ({_broken(exc)}).")) from None

    async def signal(self, sig: int) -> bool:
        return await self._sandbox.signal(self._slot, self._run_id, sig)

    async def write(self, data: bytes) -> None:
        await self._sandbox.write_stdin(self._slot, self._run_id, data)

    async def aclose(self) -> None:
        self._resp.release()


def _exited(info: dict[str, Any]) -> Exited:
    """The `Exited` an EXIT payload stands for."""
    return Exited(info.get("exit_code"), info.get("signal"), info.get("reason"),
                  info.get("error"), info.get("workspace_empty"))


def _dropped_line(dropped: int) -> bytes:
    """The stderr line that stands for ``dropped`` bytes of output the agent let go."""
    return (f"\n[sandbox] {dropped:,} bytes of output dropped here (the sandbox keeps the "
            "head and the latest of a run's output: its agent's --max-output-mb)\n").encode()


def _utf8_slices(text: str) -> Iterator[bytes]:
    """``text`` as UTF-8, `STDIN_SLICE` characters at a time."""
    return (text[i:i + STDIN_SLICE].encode() for i in range(0, len(text), STDIN_SLICE))


def _utf8_size(text: str, run_id: str) -> int:
    """The length of ``text`` in UTF-8, found before any of it is sent (free for ASCII
    text); raise `SandboxError` if it has no UTF-8 form (it holds a lone surrogate)."""
    if text.isascii():
        return len(text)
    try:
        return sum(len(piece) for piece in _utf8_slices(text))
    except UnicodeEncodeError:
        raise SandboxError(f"Run {run_id}'s code is not valid Unicode text (it holds a lone "
                           "surrogate), so it cannot be sent; remove that character.") from None


async def _exec_body(line: bytes, stdin: str) -> AsyncIterator[bytes]:
    """An exec's body: its JSON ``line``, then ``stdin`` as it is sent, a slice at a time."""
    yield line
    for chunk in _utf8_slices(stdin):
        yield chunk


def _broken(exc: BaseException) -> str:
    """What went wrong with a connection to the agent, as a clause (aiohttp's own message
    can be the repr of a half-read HTTP answer)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed before the answer was complete"
    if isinstance(exc, (aiohttp.ClientPayloadError, asyncio.IncompleteReadError)):
        return "the answer broke off before its end"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset"
    text = str(exc)
    return text if text and not text.startswith("<") else type(exc).__name__


def _quote(path: str) -> str:
    """``path`` for a URL sent as it is (``encoded=True``): each segment percent-encoded,
    dots included, so that ``..`` reaches the agent as written (which refuses it) instead
    of being resolved away into another route's URL."""
    return "/".join(_segment(part) for part in path.split("/"))


def _segment(text: str) -> str:
    """``text`` as one segment of a URL sent as it is: every character but letters,
    digits, ``_``, ``-`` and ``~`` percent-encoded (a slash and dots too)."""
    return quote(text, safe="").replace(".", "%2E")


async def _raise_for_status(resp: aiohttp.ClientResponse, sandbox_id: str) -> None:
    if resp.status < 400:
        return
    try:
        message = (await resp.json()).get("error", resp.reason)
    except (aiohttp.ContentTypeError, json.JSONDecodeError, ValueError):
        message = resp.reason
    if resp.status == 401:
        raise AgentAuthError(
            f"The agent of sandbox {sandbox_id} refused the token; the sandbox was started "
            "by another kernel or its token was lost: shut it down and start a new one."
        )
    error = SlotBusyError if resp.status == 409 else AgentRequestError
    raise error(f"Sandbox {sandbox_id} refused the request: {message}.", resp.status)
