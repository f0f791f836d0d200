"""The ``modal`` backend: one `modal.Sandbox` per sandbox, driven through the SDK's ``.aio`` API.

No agent runs in a Modal sandbox. A sandbox's slots are folders ``slot-<k>`` under the
profile's ``workdir``. A run is one ``Sandbox.exec`` of a small POSIX ``sh`` wrapper
(`WRAPPER`): it makes the slot folder, starts the command with ``setsid`` in a process
group of its own (the group id goes to ``.runs/slot-<k>.pgid`` and, as a marker line, to
stderr), feeds it the cell body from stdin (exec arguments are capped at 64 KiB; stdin is
not), and when it ends kills what is left of the group and says whether the slot is
empty. Marker lines start with ``\\x1e`` and never reach the run's output. An exec's small
``files`` are written through ``sandbox.filesystem`` first, and the wrapper removes them
(named in ``$SANDBOX_MAGICS_FILES``) when the command ends. Modal has no
per-exec kill, so `ModalProcess.signal` is a second exec that signals the recorded group.
Files move through ``sandbox.filesystem``.

Every sandbox has ``timeout`` and ``idle_timeout`` set, a name made of the pool's name
and the client id, and the core's tags, so ``discover`` finds it with
``Sandbox.list(app_id=..., tags=...)``. Secrets are attached by name: their values stay
with Modal and reach the command's environment there, never this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal as signals
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ... import identity
from ...exceptions import SandboxError, SandboxLostError, SandboxStartError
from ...identity import Identity
from ...profiles import Profile
from ..base import Backend as BaseBackend
from ..base import (ExecEvent, ExecRequest, Exited, FileInfo, Health, KeptRun, Output, Process,
                    Sandbox, Started, report_stage)
from .settings import MAX_TIMEOUT, Settings

"""The one ``modal`` release this backend and its stand-in are written against."""

MARK = b"\x1esandbox-magics:"
STDIN_CHUNK = 1024 * 1024
HEALTH_TIMEOUT = 2.5
HEALTH_INTERVAL = 5.0
"""Seconds a good health answer is reused: the pool asks every tick, and a run whose sandbox
ends learns it at once from its own exec, so Modal is polled at most this often."""
RUNS = ".runs"
MIN_IDLE = 120
"""Twice the pool's heartbeat interval: a warm sandbox is never idle that long for Modal."""
FILES_ENV = "SANDBOX_MAGICS_FILES"
FILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")

WRAPPER = r"""
slot=$1; pgfile="$PWD/$2"; shift 2
[ -d "$slot" ] && [ -d "${pgfile%/*}" ] || mkdir -p "$slot" "${pgfile%/*}" || exit 125
cd "$slot" || exit 125
if ! command -v "$1" >/dev/null 2>&1; then
  printf '\036sandbox-magics:not-found\n' >&2; exit 127
fi
: > "$pgfile"
start='echo $$ > "$0"; printf "\036sandbox-magics:pgid=%s\n" "$$" >&2; exec "$@"'
if command -v setsid >/dev/null 2>&1; then
  setsid sh -c "$start" "$pgfile" "$@"
else
  sh -c "$start" "$pgfile" "$@"
fi
status=$?
read -r pg < "$pgfile" && kill -s KILL -- "-$pg" 2>/dev/null
set -f; for f in $SANDBOX_MAGICS_FILES; do rm -f -- "$f"; done; set +f
empty=1
for f in .[!.]* ..?* *; do
  if [ -e "$f" ] || [ -L "$f" ]; then empty=0; break; fi
done
printf '\036sandbox-magics:end status=%s empty=%s\n' "$status" "$empty" >&2
exit "$status"
"""

DETACHED = r"""
mode=$1; slot=$2; id=$3; base="$PWD/.runs/$2"; shift 3
if [ "$mode" = start ]; then
  window=$1; limit=$2; shift 2
  [ -d "$slot" ] && [ -d "${base%/*}" ] || mkdir -p "$slot" "${base%/*}" || exit 125
  if ! command -v "$1" >/dev/null 2>&1; then
    printf '\036sandbox-magics:not-found\n' >&2; exit 127
  fi
  rm -f "$base.exit" "$base.read" "$base.pgid" "$base.why"
  cat > "$base.in" || exit 125
  printf '%s\n' "$id" > "$base.run"; : > "$base.out"; : > "$base.err"
  touch "${base%/*}/heartbeat"
  cat > "$base.sh" <<'SUPERVISE'
base=$1; window=$2; limit=$3; shift 3
new=; command -v setsid >/dev/null 2>&1 && new=setsid
$new sh -c 'echo $$ > "$0.pgid"; exec "$@"' "$base" "$@" < "$base.in" > "$base.out" 2> "$base.err" &
cmd=$!
started=$(date +%s)
(
  while sleep 1; do
    now=$(date +%s); beat=$(stat -c %Y "${base%/*}/heartbeat" 2>/dev/null || echo "$now")
    why=
    if [ $((now - beat)) -gt "$window" ]; then why=owner-gone
    elif [ "$limit" -gt 0 ] && [ $((now - started)) -gt "$limit" ]; then why=timeout
    fi
    if [ -n "$why" ]; then
      echo "$why" > "$base.why"
      for sig in INT TERM KILL; do kill -s "$sig" -- "-$cmd" 2>/dev/null || kill -s "$sig" "$cmd"; sleep 2; done
      exit
    fi
  done
) &
dog=$!
wait "$cmd"; status=$?
kill "$dog" 2>/dev/null
kill -s KILL -- "-$cmd" 2>/dev/null
set -f; for f in $SANDBOX_MAGICS_FILES; do rm -f -- "$f"; done; set +f
empty=1
for f in .[!.]* ..?* *; do
  if [ -e "$f" ] || [ -L "$f" ]; then empty=0; break; fi
done
why=$(cat "$base.why" 2>/dev/null)
printf 'status=%s empty=%s why=%s\n' "$status" "$empty" "$why" > "$base.exit.tmp"
mv "$base.exit.tmp" "$base.exit"
SUPERVISE
  new=; command -v setsid >/dev/null 2>&1 && new=setsid
  (cd "$slot" && $new sh "$base.sh" "$base" "$window" "$limit" "$@" </dev/null >/dev/null 2>&1 &)
elif [ "$(cat "$base.run" 2>/dev/null)" != "$id" ]; then
  exit 3
fi
o=0; e=0; pg=
while :; do
  fin=0; [ -e "$base.exit" ] && fin=1
  if [ -z "$pg" ] && [ -s "$base.pgid" ]; then
    read -r pg < "$base.pgid"; printf '\036sandbox-magics:pgid=%s\n' "$pg" >&2
  fi
  n=$(wc -c < "$base.out")
  if [ "$n" -gt "$o" ]; then tail -c +$((o + 1)) "$base.out" | head -c $((n - o)); o=$n; fi
  n=$(wc -c < "$base.err")
  if [ "$n" -gt "$e" ]; then tail -c +$((e + 1)) "$base.err" | head -c $((n - e)) >&2; e=$n; fi
  [ "$fin" = 1 ] && break
  sleep 0.1
done
read -r end < "$base.exit"
: > "$base.read"
printf '\036sandbox-magics:end %s\n' "$end" >&2
"""
"""A detached run: ``start`` copies the cell (stdin) to ``.runs/slot-K.in`` and starts a
supervisor (``.runs/slot-K.sh``) in a session of its own, outside the exec, that runs the
command in a session of its own too, with its stdout and stderr in ``.runs/slot-K.out``
and ``.err``, stops it (SIGINT, SIGTERM, SIGKILL) once the sandbox's heartbeat file is
older than the window or the run is past its limit, and writes how it ended to
``.runs/slot-K.exit``; then, as ``follow`` does for a later client, it streams both files
from their first byte until the end is recorded (exit 3: the slot keeps no such run)."""

KEPT = r"""
for run in .runs/slot-*.run; do
  [ -e "$run" ] || continue
  base=${run%.run}
  [ -e "$base.exit" ] && [ -e "$base.read" ] && continue
  state=running; [ -e "$base.exit" ] && state=ended
  printf '%s %s %s\n' "${base##*/slot-}" "$state" "$(cat "$run")"
done
"""

SIGNAL = r"""
pg=$2; [ -n "$pg" ] || read -r pg < "$3" 2>/dev/null || exit 3
[ -n "$pg" ] || exit 3
kill -s "$1" -- "-$pg" 2>/dev/null || kill -s "$1" "$pg" 2>/dev/null
"""


def _modal() -> Any:
    try:
        import modal
    except ImportError:
        raise SandboxStartError(
            "The modal backend needs the modal package, which is not installed: "
            "pip install 'sandbox_magics[modal]'.") from None
    return modal


def _one_line(text: object) -> str:
    return " ".join(str(text).split()).rstrip(".")


def sandbox_name(tags: Mapping[str, str]) -> str:
    """A Modal sandbox name unique to this client: the pool's name and the client id."""
    raw = f"{tags.get(identity.NAME, 'sandbox')}-{tags.get(identity.CLIENT, '')}".strip("-")
    name = re.sub(r"[^A-Za-z0-9._-]", "-", raw)
    return name[:63] if not name.startswith("ap-") else f"sm-{name}"[:63]


class _Markers:
    """Separates the wrapper's marker lines from a run's stderr, chunk by chunk."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> tuple[bytes, list[str]]:
        """Return the output in ``data`` and the markers found (a marker split across
        chunks is held back until its end arrives)."""
        data = self.pending + data
        self.pending = b""
        out, found = bytearray(), []
        while True:
            at = data.find(MARK)
            if at < 0:
                keep = _prefix_tail(data)
                out += data[:len(data) - keep]
                self.pending = data[len(data) - keep:]
                return bytes(out), found
            out += data[:at]
            end = data.find(b"\n", at)
            if end < 0:
                self.pending = data[at:]
                return bytes(out), found
            found.append(data[at + len(MARK):end].decode(errors="replace"))
            data = data[end + 1:]

    def flush(self) -> bytes:
        data, self.pending = self.pending, b""
        return data


def _prefix_tail(data: bytes) -> int:
    """How many trailing bytes of ``data`` could begin a marker."""
    for size in range(min(len(MARK) - 1, len(data)), 0, -1):
        if data.endswith(MARK[:size]):
            return size
    return 0


class ModalSandbox(Sandbox):
    """One `modal.Sandbox`, its slots being folders under ``workdir``."""

    def __init__(self, sb: Any, slots: int, tags: Mapping[str, str], workdir: str,
                 window: float = 900.0) -> None:
        self.sb = sb
        self.window = window
        self.id = tags.get(identity.NAME) or sb.object_id
        self.slots = slots
        self.tags = dict(tags)
        self.workdir = PurePosixPath(workdir)
        self.terminated = False
        self._healthy_at = -HEALTH_INTERVAL

    def __repr__(self) -> str:
        return f"<ModalSandbox {self.id} {self.sb.object_id} slots={self.slots}>"

    def describe(self) -> dict[str, object]:
        return {"modal_id": self.sb.object_id}

    def slot_dir(self, slot: int) -> PurePosixPath:
        return self.workdir / f"slot-{slot}"

    async def gone(self) -> str | None:
        """Why the sandbox has ended (Modal's reason), or None while it runs."""
        if self.terminated:
            return "this client terminated it"
        code = await self.sb.poll.aio()
        if code is None:
            return None
        reason = _result_text(self.sb)
        if code == 124:
            what = "it reached its Modal timeout"
        elif code == 137:
            what = "Modal terminated it"
        else:
            what = f"it exited with code {code}"
        return f"{what} ({reason})" if reason else what

    async def lost(self, exc: BaseException, doing: str) -> SandboxError:
        """The error for ``exc`` raised while ``doing``: `SandboxLostError` with Modal's
        reason if the sandbox has ended, else a `SandboxError` naming what failed."""
        try:
            reason = await asyncio.wait_for(self.gone(), HEALTH_TIMEOUT * 4)
        except Exception:  # noqa: BLE001 - unreachable is reported as lost below
            reason = f"Modal did not answer ({_one_line(exc) or type(exc).__name__})"
        if reason:
            return SandboxLostError(f"Modal sandbox {self.id} ended while {doing}: {reason}.")
        return SandboxError(f"Modal sandbox {self.id} failed while {doing}: "
                            f"{type(exc).__name__}: {_one_line(exc)}.")

    async def exec(self, slot: int, request: ExecRequest) -> ModalProcess:
        pgfile = f"{RUNS}/slot-{slot}.pgid"
        env = dict(request.env)
        for name, text in request.files.items():  # removed by the wrapper when the run ends
            if not FILE_NAME.fullmatch(name):
                raise SandboxError(f"Run {request.run_id}: {name!r} is no plain file name.")
            await self._fs(f"writing {name}", self.sb.filesystem.write_text, text,
                           str(self.slot_dir(slot) / name))
        if request.files:
            env[FILES_ENV] = " ".join(request.files)
        if request.detach:
            return await self._detached(slot, request, env)
        try:
            cp = await self.sb.exec.aio("sh", "-c", WRAPPER, "sandbox-magics", f"slot-{slot}", pgfile,
                                        *request.argv, env=env or None, text=False,
                                        workdir=str(self.workdir))
            if not request.interactive:  # an interactive run's stdin stays open for `write`
                await _feed(cp, (request.stdin or "").encode(), eof=True)
        except _modal().exception.Error as exc:
            raise await self.lost(exc, f"starting run {request.run_id}") from None
        return ModalProcess(self, cp, request, pgfile)

    async def _detached(self, slot: int, request: ExecRequest, env: dict[str, str]) -> ModalProcess:
        """Start ``request`` to go on without this exec (`DETACHED`), and follow it."""
        limit = str(int(request.timeout)) if request.timeout else "0"
        try:
            cp = await self.sb.exec.aio(
                "sh", "-c", DETACHED, "sandbox-magics", "start", f"slot-{slot}", request.run_id,
                str(int(self.window)), limit, *request.argv, env=env or None, text=False,
                workdir=str(self.workdir))
            cp.stdin.write((request.stdin or "").encode())
            cp.stdin.write_eof()
            await cp.stdin.drain.aio()
        except _modal().exception.Error as exc:
            raise await self.lost(exc, f"starting run {request.run_id}") from None
        return ModalProcess(self, cp, request, f"{RUNS}/slot-{slot}.pgid")

    async def kept_runs(self) -> list[KeptRun]:
        lines = await self._script(KEPT, "listing the runs it keeps")
        kept = []
        for line in lines.splitlines():
            slot, state, run_id = line.split(" ", 2)
            kept.append(KeptRun(run_id, int(slot), state == "running"))
        return kept

    async def follow(self, slot: int, run_id: str) -> ModalProcess:
        if not any(k.slot == slot and k.run_id == run_id for k in await self.kept_runs()):
            raise SandboxError(f"Modal sandbox {self.id} keeps no run {run_id} in slot {slot}.")
        try:
            cp = await self.sb.exec.aio("sh", "-c", DETACHED, "sandbox-magics", "follow",
                                        f"slot-{slot}", run_id, text=False,
                                        workdir=str(self.workdir))
        except _modal().exception.Error as exc:
            raise await self.lost(exc, f"following run {run_id}") from None
        return ModalProcess(self, cp, ExecRequest(run_id, ("",)), f"{RUNS}/slot-{slot}.pgid")

    async def _script(self, script: str, doing: str) -> str:
        """The stdout of ``script`` run by ``sh`` in the workdir."""
        try:
            cp = await self.sb.exec.aio("sh", "-c", script, text=True, workdir=str(self.workdir))
            out = await cp.stdout.read.aio()
            await cp.wait.aio()
        except _modal().exception.Error as exc:
            raise await self.lost(exc, doing) from None
        return out

    async def _fs(self, doing: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        modal = _modal()
        try:
            return await call.aio(*args, **kwargs)
        except modal.exception.SandboxFilesystemNotFoundError:
            raise SandboxError(f"{doing}: no such file in the workspace.") from None
        except modal.exception.SandboxFilesystemError as exc:
            raise SandboxError(f"{doing}: {_one_line(exc)}.") from None
        except modal.exception.Error as exc:
            raise await self.lost(exc, doing) from None

    async def list_files(self, slot: int) -> list[FileInfo]:
        root = self.slot_dir(slot)
        files: list[FileInfo] = []
        folders = [root]
        while folders:
            listings = await asyncio.gather(*(
                self._fs(f"listing slot {slot}", self.sb.filesystem.list_files, str(f)) for f in folders))
            folders = []
            for entries in listings:
                for e in entries:
                    if e.type.value == "directory":
                        folders.append(PurePosixPath(e.path))
                    elif e.type.value == "file":
                        files.append(FileInfo(PurePosixPath(e.path).relative_to(root).as_posix(),
                                              e.size, float(e.modified_time)))
        return files

    async def upload(self, slot: int, local: Path, remote: str) -> None:
        await self._fs(f"uploading {remote}", self.sb.filesystem.copy_from_local, str(local),
                       str(self.slot_dir(slot) / remote))

    async def download(self, slot: int, remote: str, local: Path) -> None:
        await self._fs(f"downloading {remote}", self.sb.filesystem.copy_to_local,
                       str(self.slot_dir(slot) / remote), str(local))

    async def reset(self, slot: int) -> None:
        folder = str(self.slot_dir(slot))
        await self._script(f"rm -f {RUNS}/slot-{int(slot)}.*", f"emptying slot {slot}")
        with contextlib.suppress(SandboxError):
            await self._fs(f"emptying slot {slot}", self.sb.filesystem.remove, folder,
                           recursive=True)
        await self._fs(f"emptying slot {slot}", self.sb.filesystem.make_directory, folder)

    async def health(self) -> Health:
        now = time.monotonic()
        if now - self._healthy_at < HEALTH_INTERVAL:
            return Health(True)
        try:
            reason = await asyncio.wait_for(self.gone(), HEALTH_TIMEOUT)
        except asyncio.TimeoutError:
            return Health(False, f"Modal did not answer a health check within {HEALTH_TIMEOUT:g} s")
        except Exception as exc:  # noqa: BLE001 - health never raises
            return Health(False, f"Modal did not answer a health check ({_one_line(exc)})")
        if reason:
            return Health(False, reason)
        self._healthy_at = now
        return Health(True)

    async def heartbeat(self, tags: Mapping[str, str]) -> None:
        """Record ``tags`` on the sandbox, and touch the heartbeat file the watchdog of a
        detached run reads (it stops the run once the file is older than the window)."""
        new = {**self.tags, **tags}
        await self.sb.set_tags.aio(new)
        self.tags = new
        await self._fs("writing the heartbeat", self.sb.filesystem.write_text,
                       str(int(time.time())), str(self.workdir / RUNS / "heartbeat"))

    async def terminate(self) -> None:
        self.terminated = True
        with contextlib.suppress(Exception):
            await self.sb.terminate.aio()
        with contextlib.suppress(Exception):
            await self.sb.detach.aio()


class ModalProcess(Process):
    """A run: the wrapper's exec, its stdout and stderr read concurrently, chunk by chunk."""

    def __init__(self, sandbox: ModalSandbox, cp: Any, request: ExecRequest, pgfile: str) -> None:
        self._sandbox, self._cp, self._request, self._pgfile = sandbox, cp, request, pgfile
        self.pgid: int | None = None
        self.returncode: int | None = None
        self._signalled = False
        self._ended = False
        self._readers: list[asyncio.Task[None]] = []

    async def __aiter__(self) -> AsyncIterator[ExecEvent]:
        modal = _modal()
        queue: asyncio.Queue[tuple[str, bytes | BaseException | None]] = asyncio.Queue()

        async def read(name: str, stream: Any) -> None:
            try:
                async for chunk in stream:
                    await queue.put((name, chunk))
            except BaseException as exc:  # noqa: BLE001 - handed to the iterator
                await queue.put((name, exc))
                return
            await queue.put((name, None))
        self._readers = [asyncio.ensure_future(read("stdout", self._cp.stdout)),
                         asyncio.ensure_future(read("stderr", self._cp.stderr))]
        markers, held, end, not_found = _Markers(), [], None, False
        running = 2
        doing = f"run {self._request.run_id} ran"
        try:
            while running:
                name, item = await queue.get()
                if isinstance(item, BaseException):
                    if isinstance(item, asyncio.CancelledError):
                        raise item
                    raise await self._sandbox.lost(item, doing)
                if item is None:
                    running -= 1
                    if name == "stderr" and (rest := markers.flush()):
                        yield Output("stderr", rest)
                    continue
                if name == "stdout":
                    if self.pgid is None and not not_found:
                        held.append(item)
                    else:
                        yield Output("stdout", item)
                    continue
                data, found = markers.feed(item)
                for marker in found:
                    if marker.startswith("pgid="):
                        self.pgid = int(marker[5:])
                        yield Started(self.pgid)
                        for chunk in held:
                            yield Output("stdout", chunk)
                        held = []
                    elif marker == "not-found":
                        not_found = True
                    elif marker.startswith("end "):
                        self._ended = True
                        end = dict(part.split("=", 1) for part in marker[4:].split())
                if data:
                    yield Output("stderr", data)
            for chunk in held:
                yield Output("stdout", chunk)
            code = await self._cp.wait.aio()
        except modal.exception.Error as exc:
            raise await self._sandbox.lost(exc, doing) from None
        if end is None and not not_found:
            reason = await self._sandbox.gone()
            if reason:
                raise SandboxLostError(f"Modal sandbox {self._sandbox.id} ended while {doing}: {reason}.")
        self.returncode, self._ended = code, True
        yield self._exited(code, end, not_found)

    def _exited(self, code: int, end: dict[str, str] | None, not_found: bool) -> Exited:
        if not_found:
            return Exited(127, reason="not-found",
                          error=f"{self._request.argv[0]!r} was not found in the sandbox's image")
        empty = None if end is None else end.get("empty") == "1"
        status = int(end["status"]) if end is not None else code
        why = (end or {}).get("why") or None
        if (self._signalled or why) and 128 < status < 128 + 65:
            return Exited(-(status - 128), signal=status - 128, reason=why, workspace_empty=empty)
        return Exited(status, reason=why, workspace_empty=empty)

    async def signal(self, sig: int) -> bool:
        if self._ended:
            return False
        self._signalled = True
        name = signals.Signals(sig).name.removeprefix("SIG")
        try:
            cp = await self._sandbox.sb.exec.aio(
                "sh", "-c", SIGNAL, "sandbox-magics-signal", name,
                "" if self.pgid is None else str(self.pgid), self._pgfile,
                workdir=str(self._sandbox.workdir))
            return await cp.wait.aio() == 0
        except _modal().exception.Error as exc:
            raise await self._sandbox.lost(exc, f"signalling run {self._request.run_id}") from None

    async def write(self, data: bytes) -> None:
        if not self._request.interactive or self._ended:
            await super().write(data)
        try:
            await _feed(self._cp, data, eof=False)
        except _modal().exception.Error as exc:
            raise await self._sandbox.lost(exc, f"writing to run {self._request.run_id}") from None

    async def aclose(self) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers = []


async def _feed(cp: Any, data: bytes, eof: bool) -> None:
    """Write ``data`` to an exec's stdin `STDIN_CHUNK` bytes at a time, each drained before
    the next; with ``eof``, end the stdin with the last one."""
    for start in range(0, len(data), STDIN_CHUNK):
        cp.stdin.write(data[start:start + STDIN_CHUNK])
        if eof and start + STDIN_CHUNK >= len(data):
            cp.stdin.write_eof()
        await cp.stdin.drain.aio()
    if eof and not data:
        cp.stdin.write_eof()
        await cp.stdin.drain.aio()


async def _within(awaitable: Any, seconds: float, sentence: str) -> Any:
    """``awaitable``'s result, or `SandboxStartError` with ``sentence`` past ``seconds``."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise SandboxStartError(sentence) from None


def _result_text(sb: Any) -> str:
    """Modal's own words on why a sandbox ended (its result's ``exception``), if any."""
    try:
        from modal._utils.async_utils import synchronizer
        result = synchronizer._translate_in(sb)._impl.result
        return _one_line(result.exception) if result is not None else ""
    except Exception:  # noqa: BLE001 - the SDK's internals moved: give the code only
        return ""


class Backend(BaseBackend):
    """Starts `modal.Sandbox` objects in one Modal app and environment."""

    name = "modal"

    def __init__(self, settings: Settings, me: Identity) -> None:
        self.settings = settings
        self.identity = me
        self._app: Any = None

    def __repr__(self) -> str:
        return f"<modal Backend app={self.settings.app_name!r}>"

    async def app(self) -> Any:
        if self._app is None:
            self._app = await _modal().App.lookup.aio(
                self.settings.app_name, create_if_missing=True,
                environment_name=self.settings.environment)
        return self._app

    def image(self, profile: Profile) -> Any:
        modal, s = _modal(), self.settings
        ref = s.image or profile.image
        image = (modal.Image.from_registry(ref) if ref
                 else modal.Image.debian_slim(python_version=s.python_version))
        return image.pip_install(*s.pip) if s.pip else image

    def _timeouts(self, profile: Profile) -> tuple[int, int]:
        """The sandbox's ``timeout`` and ``idle_timeout``. Modal counts execs as activity,
        health polls not: the pool's heartbeats (an exec a minute) keep a warm sandbox of
        a live kernel going, so Modal's idle limit is at least `MIN_IDLE`."""
        lifetime = self.settings.timeout or min(profile.lifetime, MAX_TIMEOUT)
        idle = self.settings.idle_timeout or min(profile.idle_timeout * 2, MAX_TIMEOUT)
        return max(1, int(lifetime)), max(MIN_IDLE, int(idle))

    def preparation_timeout(self, profile: Profile) -> float:
        return self.settings.build_timeout

    async def create(self, profile: Profile, tags: Mapping[str, str]) -> ModalSandbox:
        """Build the image if Modal has no build of it yet (bounded by ``build_timeout``,
        not ``start_timeout``, and shown as the start's stage), then start the sandbox."""
        modal, s = _modal(), self.settings
        timeout, idle = self._timeouts(profile)
        try:
            app = await self.app()
            image = self.image(profile)
            report_stage("preparing the image (a first start builds it)")
            await _within(image.build.aio(app), s.build_timeout,
                          f"The image of profile {profile.name!r} did not build within "
                          f"{s.build_timeout:g} s (the modal table's build_timeout).")
            report_stage("starting the sandbox")
            sb = await _within(modal.Sandbox.create.aio(
                app=app, name=sandbox_name(tags), tags=dict(tags),
                image=image,
                secrets=[modal.Secret.from_name(n, environment_name=s.environment)
                         for n in (*profile.secrets, *s.secrets)],
                volumes={path: modal.Volume.from_name(name, environment_name=s.environment)
                         for name, path in s.volumes.items()},
                timeout=timeout, idle_timeout=idle, workdir=s.workdir, gpu=profile.gpu,
                cpu=profile.cpu, memory=profile.memory_mb, region=list(s.region) or None,
                cloud=s.cloud), profile.start_timeout,
                f"Modal did not start a sandbox for profile {profile.name!r} within "
                f"{profile.start_timeout:g} s of its image being ready.")
        except (asyncio.CancelledError, SandboxStartError):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes one sentence
            raise SandboxStartError(self.explain(profile, exc)) from None
        return ModalSandbox(sb, profile.slots_per_sandbox, tags, s.workdir,
                            profile.heartbeat_window)

    def explain(self, profile: Profile, exc: BaseException) -> str:
        """One sentence for a failed start: what Modal said, and what to do."""
        modal, p = _modal(), repr(profile.name)
        said = _one_line(exc) or type(exc).__name__
        errors = modal.exception
        if isinstance(exc, errors.AuthError):
            if "token missing" in said.lower():
                return ("No Modal credentials were found: run `modal token new` (or set "
                        "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET) and try again.")
            return (f"Modal refused the credentials ({said}); run `modal token new` to "
                    "create new ones.")
        if isinstance(exc, errors.ImageBuildError):
            image = self.settings.image or profile.image or "debian-slim"
            return (f"The image of profile {p} ({image}) failed to build on Modal: "
                    f"{said.split(' exception: ', 1)[-1]}; check its image and pip settings.")
        if profile.gpu and isinstance(exc, errors.InvalidError) and "gpu" in said.lower():
            return (f"Modal rejected GPU type {profile.gpu!r} of profile {p}: {said}; set "
                    "the profile's gpu to a type Modal offers.")
        if isinstance(exc, errors.ResourceExhaustedError):
            return (f"Modal refused a new sandbox for profile {p}, a quota or rate limit: "
                    f"{said}; wait for sandboxes to end, lower max_sandboxes, or raise the "
                    "limit in your Modal workspace.")
        if isinstance(exc, errors.NotFoundError):
            return (f"Modal could not find something profile {p} names: {said}; create it "
                    "(`modal secret create`, `modal volume create`) or remove it from the profile.")
        return f"Modal could not start a sandbox for profile {p}: {type(exc).__name__}: {said}."

    async def discover(self, profile: Profile) -> list[Sandbox]:
        modal = _modal()
        found: list[Sandbox] = []
        try:
            app = await self.app()
            async for sb in modal.Sandbox.list.aio(app_id=app.app_id,
                                                   tags={identity.PROFILE: profile.name}):
                tags = await sb.get_tags.aio()
                if identity.CLIENT in tags:
                    found.append(ModalSandbox(sb, profile.slots_per_sandbox, tags,
                                              self.settings.workdir, profile.heartbeat_window))
        except modal.exception.Error as exc:
            raise SandboxError(self.explain(profile, exc)) from None
        return found

    def notices(self, profile: Profile) -> list[str]:
        return []
