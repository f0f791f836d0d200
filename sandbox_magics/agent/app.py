"""The agent's aiohttp application: a route table over K slot workspaces.

Routes (all under ``/v1``, all behind the bearer token)::

    GET  /health                          slots, running runs, each slot's run, pid
    POST /slots/{slot}/exec               run argv in the slot, fed the body's rest on
                                          stdin; stream frames (protocol.py)
    GET  /slots/{slot}/runs/{run_id}      the slot's run: state, output size, EXIT payload
    GET  /slots/{slot}/runs/{run_id}/output?offset=N
                                          the run's frames from output offset N (default
                                          0): what is kept, then live until EXIT
    POST /slots/{slot}/runs/{run_id}/stdin?eof=1
                                          more stdin for an interactive run (the body),
                                          then, with ``eof``, its end
    POST /slots/{slot}/signal             deliver one signal to the run's process group
    POST /slots/{slot}/reset              empty the slot's workspace
    GET  /slots/{slot}/files              list files  (?path= is not taken: whole workspace)
    GET  /slots/{slot}/files/{path}       download one file
    PUT  /slots/{slot}/files/{path}       upload one file (parents created)
    POST /shutdown                        stop the agent
    any other path or method              404 or 405, with the reason in JSON

The file routes answer only while the slot runs nothing, and only for regular files inside
the workspace with a single hard link (workspace.py says why); the listing leaves out
every other entry.

An exec's body is one line of JSON (run id, argv, env, detach, timeout), then the bytes the run
reads on stdin. The agent checks the JSON line before it reads on, then streams the rest
to an unlinked temporary file, which the process gets as its stdin once the body has
ended: stdin costs the agent no memory whatever its size, and a body that breaks off
starts nothing.

JSON (an exec's first line, the signal's body) is checked by `bodies` before anything runs
and may be `MAX_JSON_BODY` (16 MiB) long; uploads and an exec's stdin stream to disk and
may be ``--max-upload-mb`` long each. Refusals are JSON ``{"error": "<one sentence>"}``
with a 4xx status (413 past a limit, naming it); a 5xx means the sandbox itself failed (a
slot that cannot be emptied, a full disk).

Every run's output is kept by the slot (output.py) as it comes, whoever reads it: an
exec streams it from there, as does the output route, from any offset, to as many clients
as come. No client holds a run up: one that falls more than ``--max-output-mb`` behind
gets a DROPPED frame for what it missed. A slot keeps its last run (its state and output) until its next exec; a run id
the slot does not keep is a 404.

If the client of an exec goes away mid-stream, the run is killed: nobody could read its
output or its exit code, and a kernel that died must not leave work running. A run
exec'd with ``"detach": true`` goes on instead, for a client to find and follow later;
it ends by itself, by a signal, or when no client has been seen for the heartbeat window
(``__main__`` watches that, and `owner_gone`, `stop_runs` act on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from aiohttp import HttpVersion11, web

from . import bodies, process, protocol, workspace
from .auth import Handler, bearer_auth

SLOTS = web.AppKey("slots", list[process.Slot])
STATE = web.AppKey("state", dict)
STOP = web.AppKey("stop", asyncio.Event)
MAX_UPLOAD_MB = web.AppKey("max_upload_mb", int)
MAX_OUTPUT_MB = web.AppKey("max_output_mb", int)

_DISCONNECT_POLL = 1.0
FILE_READ = 1024 * 1024
MAX_JSON_BODY = 16 * 1024 * 1024
DEFAULT_MAX_UPLOAD_MB = 2048
DEFAULT_MAX_OUTPUT_MB = 1024
OUTPUT_FOLDER = "output"

T = TypeVar("T")


def make_app(token: str, root: Path, slots: int, stop: asyncio.Event,
             base_env: dict[str, str] | None = None,
             max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
             max_output_mb: int = DEFAULT_MAX_OUTPUT_MB) -> web.Application:
    """Build the agent app serving ``slots`` workspaces below ``root``, each run's output
    kept below ``root/output`` (up to ``max_output_mb`` a run).

    ``client_max_size`` bounds the bodies read whole (`MAX_JSON_BODY`, as an exec's JSON
    line is); uploads and an exec's stdin stream to disk past it, up to ``max_upload_mb``.
    """
    if not token:
        raise ValueError("the agent needs a non-empty token")
    app = web.Application(middlewares=[bearer_auth(token), _activity, _answer_refusals],
                          client_max_size=MAX_JSON_BODY)
    app[MAX_UPLOAD_MB] = max_upload_mb
    app[MAX_OUTPUT_MB] = max_output_mb
    app[SLOTS] = []
    for i in range(slots):
        path = root / f"slot-{i}"
        path.mkdir(parents=True, exist_ok=True)
        app[SLOTS].append(process.Slot(index=i, path=path,
                                       output=root / OUTPUT_FOLDER / f"slot-{i}"))
    app[STATE] = {"last_activity": time.monotonic(), "requests": 0,
                  "base_env": dict(os.environ if base_env is None else base_env)}
    app[STATE]["base_env"].pop(protocol.TOKEN_ENV, None)
    app[STOP] = stop
    app.cleanup_ctx.append(_end_runs_on_exit)
    p = protocol.API
    # Every request meets a route of ours, the last one if no other: aiohttp's own Expect
    # handling, which its fallback routes use, answers 500 to a header that is not UTF-8.
    get, post, put, any_method = (functools.partial(define, expect_handler=_expect)
                                  for define in (web.get, web.post, web.put, web.route))
    app.router.add_routes([
        get(f"{p}/health", health),
        post(f"{p}/slots/{{slot}}/exec", exec_run),
        get(f"{p}/slots/{{slot}}/runs/{{run_id}}", run_state),
        get(f"{p}/slots/{{slot}}/runs/{{run_id}}/output", run_output),
        post(f"{p}/slots/{{slot}}/runs/{{run_id}}/stdin", run_stdin),
        post(f"{p}/slots/{{slot}}/signal", signal_run),
        post(f"{p}/slots/{{slot}}/reset", reset),
        get(f"{p}/slots/{{slot}}/files", list_files),
        get(f"{p}/slots/{{slot}}/files/{{path:[\\s\\S]+}}", get_file),
        put(f"{p}/slots/{{slot}}/files/{{path:[\\s\\S]+}}", put_file),
        post(f"{p}/shutdown", shutdown),
        any_method("*", "/{tail:[\\s\\S]*}", no_route),
    ])
    return app


def unseen_seconds(app: web.Application) -> float:
    """Seconds since a client was last seen: 0 while a request is in progress, else since
    the last one ended."""
    state = app[STATE]
    return 0.0 if state["requests"] else time.monotonic() - state["last_activity"]


def idle_seconds(app: web.Application) -> float:
    """`unseen_seconds`, or 0 while any slot is running or keeps a detached run for a
    client to come (`process.Run.kept_for_a_client`)."""
    if any(slot.busy or (slot.run and slot.run.kept_for_a_client) for slot in app[SLOTS]):
        return 0.0
    return unseen_seconds(app)


def owner_gone(app: web.Application) -> bool:
    """The agent's owner went (its parent process died): kill the runs that are not
    detached, as a kernel's blocking cells die with it, and count the owner as seen until
    now. Return whether a detached run is kept for a client to come."""
    for run in _going(app):
        if not run.detach and run.job is not None:
            process.kill(run.job, "owner-gone")
    app[STATE]["last_activity"] = time.monotonic()
    return any(slot.run and slot.run.kept_for_a_client for slot in app[SLOTS])


async def stop_runs(app: web.Application, reason: str) -> None:
    """Stop every running run as a cancel does (`process.stop`); their EXIT frames give
    ``reason``."""
    await asyncio.gather(*(process.stop(run.job, reason) for run in _going(app) if run.job))


def _going(app: web.Application) -> list[process.Run]:
    """The runs going in the app's slots."""
    return [slot.run for slot in app[SLOTS] if slot.run is not None and slot.busy]


class Refusal(Exception):
    """Raised by a handler, before its answer began, to answer ``status`` with
    ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> web.Response:
        return web.json_response({"error": str(self)}, status=self.status)


@web.middleware
async def _answer_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refusal as refusal:
        return refusal.response()


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` as aiohttp does; refuse any other expectation (this
    runs before the middlewares)."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        return Refusal(417, "the agent understands only 'Expect: 100-continue'; "
                            "send no other Expect header").response()
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


async def no_route(request: web.Request) -> web.StreamResponse:
    """Refuse a request no other route takes: 405 if the path takes other methods, else 404."""
    fallback = request.match_info.route.resource
    resources = [r for r in request.app.router.resources() if r is not fallback]
    allowed: set[str] = set()
    for resource in resources:
        allowed |= (await resource.resolve(request))[1]
    path = workspace.shown(request.path)
    if allowed:
        raise Refusal(405, f"{path} does not take {request.method}; "
                           f"use {', '.join(sorted(allowed))}")
    raise Refusal(404, f"the agent has no route {path}; its routes are "
                       f"{', '.join(r.canonical for r in resources)}")


@web.middleware
async def _activity(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the requests in progress, and when the last one ended (`unseen_seconds`)."""
    state = request.app[STATE]
    state["requests"] += 1
    try:
        return await handler(request)
    finally:
        state["requests"] -= 1
        state["last_activity"] = time.monotonic()


def _slot(request: web.Request) -> process.Slot:
    slots = request.app[SLOTS]
    try:
        index = int(request.match_info["slot"])
        if index < 0:
            raise IndexError(index)
        return slots[index]
    except (ValueError, IndexError):
        raise Refusal(404, f"no slot {workspace.shown(request.match_info['slot'])}; "
                           f"slots are 0..{len(slots) - 1}") from None


def _idle(slot: process.Slot) -> process.Slot:
    """The slot, if no run is using it: files move only between runs, never during one."""
    if slot.busy:
        assert slot.run is not None
        raise Refusal(409, f"slot {slot.index} is busy with run {slot.run.run_id}; "
                           "wait for it to end or cancel it")
    return slot


def _run(request: web.Request) -> tuple[process.Slot, process.Run]:
    """The slot and the run that the request's ``{slot}`` and ``{run_id}`` name; a
    `Refusal` (404) if the slot does not keep that run."""
    slot = _slot(request)
    run_id = request.match_info["run_id"]
    run = slot.run
    if run is None or run.run_id != run_id:
        kept = f"its last run is {workspace.shown(run.run_id)}" if run else \
            "it has run nothing since the agent started"
        raise Refusal(404, f"slot {slot.index} keeps no run {workspace.shown(run_id)}: "
                           f"a slot keeps only its last run, and {kept}")
    return slot, run


_FILE_ERRORS = {
    errno.ENOENT: (404, "there is no file {path} in the workspace; list it to see its files"),
    errno.ENOTDIR: (409, "a folder on the way to {path} is a file; pick another path"),
    errno.EEXIST: (409, "a folder on the way to {path} is a file; pick another path"),
    errno.EISDIR: (409, "{path} is a folder; name a file instead"),
    errno.ENXIO: (409, "{path} is a FIFO; name a regular file instead"),
    errno.ELOOP: (403, "{path} is a symlink, which the file API does not follow; name its target"),
    errno.EACCES: (403, "{path} is not accessible to the agent; reset the slot to clear it"),
    errno.EPERM: (403, "{path} is not accessible to the agent; reset the slot to clear it"),
    errno.ENAMETOOLONG: (400, "{path} is too long for the file system; use a shorter path"),
    errno.ENOSPC: (507, "{path} did not fit on the sandbox's disk; free space or upload less"),
    errno.EDQUOT: (507, "{path} went over the sandbox's disk quota; free space or upload less"),
}


@contextlib.contextmanager
def _file_refusals(request: web.Request, rel: str | None = None) -> Iterator[None]:
    """Turn what the workspace refuses about the request's ``{path}`` (or ``rel``) into a
    `Refusal`."""
    path = workspace.shown(request.match_info["path"] if rel is None else rel)
    try:
        yield
    except workspace.PathEscapeError as exc:
        raise Refusal(403, str(exc)) from None
    except workspace.NotAFileError as exc:
        raise Refusal(409, str(exc)) from None
    except OSError as exc:
        if exc.errno not in _FILE_ERRORS:
            raise
        status, message = _FILE_ERRORS[exc.errno]
        raise Refusal(status, message.format(path=path)) from None


@contextlib.contextmanager
def _body_refusals(request: web.Request) -> Iterator[None]:
    """Refuse a body that aiohttp could not decode (a bad ``Content-Encoding``) or that
    broke off (the client went away: nobody reads the answer, but nothing is logged as a
    failure of the agent)."""
    try:
        yield
    except web.RequestPayloadError:
        encoding = workspace.shown(request.headers.get("Content-Encoding", ""))
        raise Refusal(400, f"the request body could not be decoded as Content-Encoding "
                           f"{encoding}; send it uncompressed") from None
    except ConnectionResetError:
        raise Refusal(400, "the request body broke off before its end; send it whole") from None


def _json_too_large(what: str) -> Refusal:
    return Refusal(413, f"{what} is larger than the agent takes ({MAX_JSON_BODY // 2**20} MiB); "
                        "send large data as an exec's stdin or as a file upload")


def _over_upload_limit(what: str, limit_mb: int) -> Refusal:
    return Refusal(413, f"{what} is larger than the agent takes ({limit_mb} MiB, its "
                        "--max-upload-mb); send less or raise the limit")


def _checked(read: Callable[[bytes], T], raw: bytes) -> T:
    """``raw`` read by one of `bodies`' functions; a `Refusal` (400) if it is not what the
    route takes."""
    try:
        return read(raw)
    except bodies.BadBody as exc:
        raise Refusal(400, str(exc)) from None


async def _body(request: web.Request, read: Callable[[bytes], T]) -> T:
    """The request's JSON body, read by one of `bodies`' functions; a `Refusal` (400 or 413)
    if it is too large or not what the route takes."""
    too_large = _json_too_large("the request body")
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise too_large
    try:
        with _body_refusals(request):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    return _checked(read, raw)


async def _exec_line(request: web.Request) -> tuple[bodies.ExecBody, bytes]:
    """The exec's first line, checked by `bodies.exec_body`, and the bytes after it that
    came in the same read (the start of stdin); a `Refusal` (400 or 413) if the line is too
    long or not what exec takes."""
    parts: list[bytes] = []
    size = 0
    rest = b""
    with _body_refusals(request):
        while chunk := await request.content.readany():
            line, newline, rest = chunk.partition(b"\n")
            parts.append(line)
            size += len(line)
            if size > MAX_JSON_BODY:
                raise _json_too_large("the exec's JSON line")
            if newline:
                break
    return _checked(bodies.exec_body, b"".join(parts)), rest


async def _rest_of_body(request: web.Request, head: bytes) -> AsyncIterator[bytes]:
    """``head``, then the request's body as it comes, in chunks of bounded size."""
    if head:
        yield head
    async for chunk in request.content.iter_chunked(protocol.MAX_CHUNK):
        yield chunk


async def _write_body(request: web.Request, fh: IO[bytes], what: str, head: bytes = b"") -> int:
    """Write ``head`` and the rest of the request's body to ``fh`` as it comes; return its
    size. A `Refusal` (413) naming ``what`` past ``--max-upload-mb``."""
    limit_mb = request.app[MAX_UPLOAD_MB]
    size = 0
    with _body_refusals(request):
        async for chunk in _rest_of_body(request, head):
            size += len(chunk)
            if size > limit_mb * 2**20:
                raise _over_upload_limit(what, limit_mb)
            fh.write(chunk)
    return size


async def _receive_stdin(request: web.Request, stdin: IO[bytes], head: bytes) -> None:
    """Fill ``stdin`` (an empty file) with the rest of the exec's body, ``head`` first, and
    rewind it; a `Refusal` (507) if the sandbox's disk cannot hold it."""
    try:
        await _write_body(request, stdin, "stdin", head)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise Refusal(507, "stdin did not fit on the sandbox's disk; free space or send less"
                      ) from None
    stdin.seek(0)


async def health(request: web.Request) -> web.Response:
    slots = request.app[SLOTS]
    return web.json_response({
        "ok": True, "pid": os.getpid(), "slots": len(slots),
        "running": [s.index for s in slots if s.busy],
        "runs": [_state(s.index, s.run) for s in slots if s.run is not None],
    })


def _state(index: int, run: process.Run) -> dict[str, Any]:
    """What the run-state route says of ``run``, the run of slot ``index``."""
    return {
        "run_id": run.run_id, "slot": index, "state": "ended" if run.log.ended else "running",
        "detached": run.detach, "pgid": run.job.pgid if run.job else None,
        "bytes": run.log.size, "dropped": run.log.dropped, "followers": run.followers,
        "read": run.read, "exit": run.log.exit,
    }


async def exec_run(request: web.Request) -> web.StreamResponse:
    slot = _slot(request)
    body, stdin_head = await _exec_line(request)
    _idle(slot)
    env = {**request.app[STATE]["base_env"], **body.env}
    run = slot.begin(body.run_id, body.detach, request.app[MAX_OUTPUT_MB] * 2**20)
    try:
        slot.path.mkdir(parents=True, exist_ok=True)
        _write_files(request, slot.path, body.files)
        if body.interactive:
            if stdin_head or not request.content.at_eof() and await request.content.read(1):
                raise Refusal(400, "an interactive exec's body is its JSON line only; send "
                                   "its stdin to the run's stdin route")
            read, run.stdin = process.stdin_pipe()
            try:
                job = process.start(body.argv, slot.path, env, read)
            except OSError as exc:
                run.close_stdin()
                _not_started(run, body.argv, exc)
                return await _follow(request, run, 0)
            finally:
                os.close(read)
        else:
            with tempfile.TemporaryFile() as stdin:
                await _receive_stdin(request, stdin, stdin_head)
                try:
                    job = process.start(body.argv, slot.path, env, stdin)
                except OSError as exc:
                    _not_started(run, body.argv, exc)
                    return await _follow(request, run, 0)
    except BaseException:
        run.close_stdin()
        slot.abandon(run)
        raise
    run.start(job, slot.path, body.timeout, tuple(body.files))
    return await _follow(request, run, 0, owner=True)


def _write_files(request: web.Request, root: Path, files: dict[str, str]) -> None:
    """Write an exec's ``files`` into the workspace ``root``, as the file route writes."""
    for name, text in files.items():
        with _file_refusals(request, name):
            fd, _ = workspace.open_file(workspace.confine(root, name), name, write=True)
            with os.fdopen(fd, "wb") as fh:
                fh.write(text.encode())


def _not_started(run: process.Run, argv: list[str], exc: OSError) -> None:
    """End ``run``, whose program did not start: a `Refusal` if the request was too large
    or the sandbox is out of processes, else a lone EXIT frame saying why."""
    if exc.errno == errno.E2BIG:
        raise Refusal(400, "argv and env are too large to start a process (E2BIG); "
                           "pass large data through stdin or a file")
    if exc.errno in (errno.EAGAIN, errno.ENOMEM):
        raise Refusal(503, f"the sandbox cannot start another process now ({exc.strerror}); "
                           "retry once runs have ended")
    program = workspace.shown(str(exc.filename or argv[0]))
    run.log.end({
        "exit_code": protocol.EXIT_NOT_FOUND, "signal": None, "reason": "not-found",
        "error": f"{program} cannot be run in the sandbox ({exc.strerror}); "
                 "install it in the image or pick another interpreter",
    })


async def run_state(request: web.Request) -> web.Response:
    slot, run = _run(request)
    return web.json_response(_state(slot.index, run))


async def run_output(request: web.Request) -> web.StreamResponse:
    _, run = _run(request)
    raw = request.query.get("offset", "0")
    if not re.fullmatch(r"[0-9]+", raw) or int(raw) > run.log.size:
        raise Refusal(400, f"offset must be a whole number of bytes from 0 to "
                           f"{run.log.size} (the run's output so far), got: {workspace.shown(raw)}")
    return await _follow(request, run, int(raw))


async def _follow(request: web.Request, run: process.Run, offset: int,
                  owner: bool = False) -> web.StreamResponse:
    """Answer with the run's frames from output ``offset``: START (if its process
    started), its output as kept and then as it comes, EXIT.

    If the client goes away first, and this is the exec (``owner``) of a run that is not
    detached, the run is killed; a client that goes away while the run prints nothing is
    noticed within `_DISCONNECT_POLL` seconds.
    """
    response = web.StreamResponse(headers={"Content-Type": protocol.FRAME_CONTENT_TYPE})
    sent = False
    run.followers += 1
    try:
        await response.prepare(request)
        if run.job is not None:
            await response.write(protocol.json_frame(protocol.START, {
                "pid": run.job.pgid, "pgid": run.job.pgid, "offset": offset}))
        async for data in run.log.follow(offset, _DISCONNECT_POLL):
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("the client went away")
            if data:
                await response.write(data)
        await response.write_eof()
        sent = run.log.ended and not run.log.removed
        run.read = run.read or sent
    except ConnectionResetError:
        pass
    finally:
        run.followers -= 1
        if owner and not sent and not run.detach and run.job is not None:
            process.kill(run.job, "client-gone")
    return response


async def run_stdin(request: web.Request) -> web.Response:
    """Write the body to the stdin of the slot's interactive run, as it comes; with
    ``?eof=1`` close that stdin afterwards. Answers ``{"written": n}``."""
    _, run = _run(request)
    if run.log.ended or run.job is None:
        raise Refusal(409, f"run {workspace.shown(run.run_id)} has ended; its stdin is gone")
    if run.stdin is None:
        raise Refusal(409, f"run {workspace.shown(run.run_id)} takes no more stdin: it was not "
                           "exec'd interactive, or its stdin was closed")
    written = 0
    with _body_refusals(request):
        async for chunk in request.content.iter_chunked(FILE_READ):
            try:
                await run.write_stdin(chunk)
            except BrokenPipeError:
                raise Refusal(409, f"run {workspace.shown(run.run_id)} no longer reads its "
                                   "stdin") from None
            written += len(chunk)
    if request.query.get("eof") == "1":
        run.close_stdin()
    return web.json_response({"written": written})


async def signal_run(request: web.Request) -> web.Response:
    """Deliver one signal to the run named in the body, if the slot is running it.

    Answers ``{"delivered": bool, "running": bool}``. A signal that stops runs by default
    (`bodies.STOPPING`) marks the run cancelled: its EXIT frame then says so, however the
    run ends.
    """
    slot = _slot(request)
    body = await _body(request, bodies.signal_body)
    run = slot.run
    job = run.job if run is not None and run.run_id == body.run_id else None
    if job is None or job.finished.is_set():
        return web.json_response({"delivered": False, "running": False})
    delivered = process.killpg(job.pgid, body.signal)
    if delivered and body.signal in bodies.STOPPING:
        job.stop_reason = job.stop_reason or "cancelled"
    return web.json_response({"delivered": delivered, "running": True})


async def reset(request: web.Request) -> web.Response:
    slot = _idle(_slot(request))
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, workspace.reset, slot.path)
    except OSError as exc:
        raise Refusal(500, f"slot {slot.index} could not be emptied ({exc}); "
                           "retire this sandbox instead of reusing the slot") from None
    return web.json_response({"ok": True})


async def list_files(request: web.Request) -> web.Response:
    slot = _idle(_slot(request))
    files = await asyncio.get_running_loop().run_in_executor(None, workspace.list_files, slot.path)
    return web.json_response({"files": files})


async def get_file(request: web.Request) -> web.StreamResponse:
    slot = _idle(_slot(request))
    rel = request.match_info["path"]
    with _file_refusals(request):
        fd, size = workspace.open_file(workspace.confine(slot.path, rel), rel, write=False)
    loop = asyncio.get_running_loop()
    with os.fdopen(fd, "rb") as fh:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        left = 0 if request.method == "HEAD" else size
        while left > 0 and (chunk := await loop.run_in_executor(None, fh.read,
                                                                min(left, FILE_READ))):
            await response.write(chunk)
            left -= len(chunk)
        await response.write_eof()
    return response


async def put_file(request: web.Request) -> web.Response:
    """Stream the body to the file; a body over the upload limit, or one that breaks off,
    leaves no partial file behind."""
    slot = _idle(_slot(request))
    limit_mb = request.app[MAX_UPLOAD_MB]
    if request.content_length is not None and request.content_length > limit_mb * 2**20:
        raise _over_upload_limit("the upload", limit_mb)
    rel = request.match_info["path"]
    with _file_refusals(request):
        path = workspace.confine(slot.path, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        workspace.confine(slot.path, rel)
        fd, _ = workspace.open_file(path, rel, write=True)
        try:
            with os.fdopen(fd, "wb") as fh:
                size = await _write_body(request, fh, "the upload")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
    return web.json_response({"path": rel, "size": size})


async def shutdown(request: web.Request) -> web.Response:
    request.app[STOP].set()
    return web.json_response({"ok": True})


async def _end_runs_on_exit(app: web.Application) -> AsyncIterator[None]:
    """On the way out, kill the runs still going and remove what their slots kept."""
    yield
    for run in _going(app):
        if run.job is not None:
            process.kill(run.job, "agent-exit")
    slots = app[SLOTS]
    for slot in slots:
        if slot.run is not None:
            slot.run.log.remove()
    for folder in [*(slot.output for slot in slots), slots[0].output.parent]:
        with contextlib.suppress(OSError):
            folder.rmdir()
