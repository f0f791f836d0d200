"""One slot's run: start its process in its own process group, record its output, stop it.

Output is read in chunks as produced into a buffer bounded in bytes, which `record`
drains into the run's `output.RunLog`, whether or not a client follows it: a slow disk
slows the process down, a slow client does not. A run ends when its main process exits;
whatever it left in its process group (a ``cmd &`` holding stdout open) is killed after a
short grace, so the run cannot hang on a straggler. What escaped the group with
``setsid`` is adopted by the agent (a subreaper) and killed once no slot is running
(`kill_strays`).

`Job.exited` is set the moment the main process itself exits, while a straggler may still
hold the pipes open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import output, protocol, workspace

STRAGGLER_GRACE = 0.5
STOP_GRACE = 2.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
FLUSH_INTERVAL = 0.05
PR_SET_CHILD_SUBREAPER = 36
BUFFER_LIMIT = 4 * 1024 * 1024
SMALL_READ = 16 * 1024
DEFAULT_PIPE_SIZE = 64 * 1024
PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
READ_PAUSE = 0.02
RATE_WINDOW = 0.1
FLOOD_RATE = 1024 * 1024


class RateMeter:
    """Tells a trickle from a flood: whether more than `FLOOD_RATE` bytes a second went
    through in the last window of `RATE_WINDOW` seconds."""

    def __init__(self) -> None:
        self.flooding = False
        self._start = time.monotonic()
        self._bytes = 0

    def add(self, size: int) -> None:
        self._bytes += size
        now = time.monotonic()
        if now - self._start >= RATE_WINDOW:
            self.flooding = self._bytes / (now - self._start) > FLOOD_RATE
            self._start, self._bytes = now, 0


class OutputBuffer:
    """Output waiting to be sent: bounded in bytes (writers wait when it is full), with
    consecutive chunks of one stream grouped as they arrive (joined once, when sent)."""

    def __init__(self, limit: int = BUFFER_LIMIT) -> None:
        self.limit = limit
        self.size = 0
        self.closed = False
        self._items: list[tuple[int, list[bytes]]] = []
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, kind: int, data: bytes) -> None:
        while self.size >= self.limit:
            self._room.clear()
            await self._room.wait()
        if self._items and self._items[-1][0] == kind:
            self._items[-1][1].append(data)
        else:
            self._items.append((kind, [data]))
        self.size += len(data)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def wait(self) -> bool:
        """Wait for output; False once the buffer is closed and empty."""
        while not self._items and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        return bool(self._items)

    def take(self) -> tuple[int, list[tuple[int, list[bytes]]]]:
        """Everything buffered, as (kind, chunks) groups (one per stream switch), and its
        output size."""
        items, size = self._items, self.size
        self._items, self.size = [], 0
        self._room.set()
        return size, items


@dataclass(eq=False)
class Job:
    """A running command: its process, the moment it exits, the moment its output ends."""

    popen: subprocess.Popen[bytes]
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str | None = None

    @property
    def pgid(self) -> int:
        return self.popen.pid

    def close_pipes(self) -> None:
        """Close our ends of the output pipes (idempotent)."""
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


@dataclass(eq=False)
class Run:
    """A run of a slot: its output ``log``, its ``job`` once started and the task
    ``recorder`` keeping the job's output, whether it goes on when its client goes away
    (``detach``), how many clients follow its output now, and whether one has read its
    end."""

    run_id: str
    detach: bool
    log: output.RunLog
    job: Job | None = None
    recorder: asyncio.Future[None] | None = None
    followers: int = 0
    read: bool = False
    stdin: int | None = None
    """The write end of an interactive run's stdin pipe, until it is closed."""

    def close_stdin(self) -> None:
        """Close an interactive run's stdin: the process reads end of file (idempotent)."""
        if self.stdin is not None:
            with contextlib.suppress(OSError):
                os.close(self.stdin)
            self.stdin = None

    async def write_stdin(self, data: bytes) -> None:
        """Write all of ``data`` to the interactive run's stdin as the pipe takes it.

        Raises:
            BrokenPipeError: the process no longer reads it (it ended, or closed it).
        """
        if self.stdin is None:
            raise BrokenPipeError("stdin is closed")
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.stdin, view):]
            except BlockingIOError:
                await _fd_ready(loop, self.stdin, writing=True)

    def start(self, job: Job, workspace_path: Path, timeout: float | None = None,
              files: tuple[str, ...] = ()) -> None:
        """Record ``job``, started for this run in ``workspace_path``, until it ends; stop
        it past ``timeout`` seconds; remove the ``files`` written for it when it ends."""
        self.job = job
        self.recorder = asyncio.ensure_future(record(self, workspace_path, timeout, files))

    @property
    def kept_for_a_client(self) -> bool:
        """Whether the agent holds this run for a client to come: a detached run that is
        going, or whose end no client has read yet."""
        return self.detach and not (self.log.ended and self.read)


@dataclass(eq=False)
class Slot:
    """A workspace directory, its running or last `Run`, and the folder of its output."""

    index: int
    path: Path
    output: Path
    run: Run | None = None

    @property
    def busy(self) -> bool:
        """Whether a run is going (from its exec's arrival to its EXIT frame)."""
        return self.run is not None and not self.run.log.ended

    def begin(self, run_id: str, detach: bool, output_limit: int) -> Run:
        """Make ``run_id`` the slot's run; its last run's output goes."""
        if self.run is not None:
            self.run.log.remove()
        self.run = Run(run_id, detach, output.RunLog(self.output, output_limit))
        return self.run

    def abandon(self, run: Run) -> None:
        """Forget ``run``, which never started."""
        run.log.remove()
        if self.run is run:
            self.run = None


def become_subreaper() -> bool:
    """Linux: adopt orphaned descendants, so a run that escapes its process group with
    ``setsid`` (a daemon) stays findable by `kill_strays`. False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kill_strays() -> list[int]:
    """Kill and reap every child of this process; call only while no job runs (asyncio
    watches the jobs' own processes). Returns the pids killed."""
    me = str(os.getpid())
    killed = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = fh.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        if ppid == me:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    return killed


def killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it is already gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill(job: Job, reason: str) -> None:
    """SIGKILL the job's process group; its EXIT frame gives ``reason`` unless it has one."""
    job.stop_reason = job.stop_reason or reason
    killpg(job.pgid, signal.SIGKILL)


async def stop(job: Job, reason: str, grace: float = STOP_GRACE) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the job's process group, each given ``grace``
    seconds to end it, as the kernel's cancel escalates; its EXIT frame gives ``reason``
    unless it has one."""
    job.stop_reason = job.stop_reason or reason
    for sig in STOP_SIGNALS:
        if job.finished.is_set() or not killpg(job.pgid, sig):
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(job.finished.wait(), grace)


def start(argv: list[str], cwd: Path, env: dict[str, str], stdin: IO[bytes] | int) -> Job:
    """Start ``argv`` in ``cwd`` as the leader of a new process group, ``stdin`` as its input.

    The input is a file the caller filled (an unlinked temporary file) rather than a pipe:
    no writer task, no blocking on a program that never reads it; the process gets its own
    descriptor, so the caller may close ``stdin`` once this returns. The process is started
    with `subprocess` and watched through a pidfd (a thread where there is none): asyncio's
    own subprocess transport costs half a millisecond more per run.
    """
    popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    for pipe in (popen.stdout, popen.stderr):
        assert pipe is not None
        os.set_blocking(pipe.fileno(), False)
    job = Job(popen)
    _watch_exit(asyncio.get_running_loop(), job)
    return job


async def record(run: Run, workspace_path: Path, timeout: float | None = None,
                 files: tuple[str, ...] = ()) -> None:
    """Keep the run's output in its log as it comes, then its EXIT payload (with whether
    ``workspace_path`` is empty, once the ``files`` written for the run are removed, and
    the output's size); past ``timeout`` seconds, stop the run (its EXIT gives the reason
    "timeout")."""
    job = run.job
    assert job is not None
    out = OutputBuffer()
    paced = run.stdin is None  # an interactive run answers requests: no pacing delays them
    pumper = asyncio.ensure_future(_pump_then_close(job, out, paced))
    limit = asyncio.ensure_future(_stop_after(job, timeout)) if timeout else None
    try:
        await _keep(out, run.log, paced)
        info = await pumper
    finally:
        if limit is not None:
            limit.cancel()
        if not pumper.done():
            kill(job, "agent-exit")
            pumper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumper
    run.close_stdin()
    for name in files:
        with contextlib.suppress(OSError):
            os.unlink(workspace_path / name)  # a link the run put there goes, not its target
    run.log.end({**info, "workspace_empty": workspace.is_empty(workspace_path),
                 "bytes": run.log.size})


async def _stop_after(job: Job, timeout: float) -> None:
    await asyncio.sleep(timeout)
    await stop(job, "timeout")


async def _pump_then_close(job: Job, out: OutputBuffer, paced: bool) -> dict[str, Any]:
    try:
        return await pump(job, out, paced)
    finally:
        out.close()


async def _keep(out: OutputBuffer, log: output.RunLog, paced: bool = True) -> None:
    """Move output frames from ``out`` to ``log`` until the run's output ends.

    Output after a quiet spell is kept at once; while it trickles in, appends are at least
    `FLUSH_INTERVAL` apart and carry everything gathered meanwhile, so a chatty run costs
    its followers ~20 frames a second, not one per ``print``. A flood is kept as fast as
    it comes, and so is all output of a run that is not ``paced``.
    """
    loop = asyncio.get_running_loop()
    rate = RateMeter()
    last_append = -FLUSH_INTERVAL
    while await out.wait():
        pause = last_append + FLUSH_INTERVAL - loop.time()
        if pause > 0 and paced and not rate.flooding:
            await asyncio.sleep(pause)
        size, groups = out.take()
        rate.add(size)
        log.append(groups)
        last_append = loop.time()


async def pump(job: Job, out: OutputBuffer, paced: bool = True) -> dict[str, Any]:
    """Put the job's output into ``out`` until it ends (reads paced as `_read` says,
    unless not ``paced``); return the EXIT payload."""
    popen = job.popen
    assert popen.stdout is not None and popen.stderr is not None
    started = time.monotonic()
    feeders = [asyncio.ensure_future(_read(popen.stdout.fileno(), protocol.STDOUT, out, paced)),
               asyncio.ensure_future(_read(popen.stderr.fileno(), protocol.STDERR, out, paced))]
    try:
        await job.exited.wait()
        _, pending = await asyncio.wait(feeders, timeout=STRAGGLER_GRACE)
        if pending:
            killpg(job.pgid, signal.SIGKILL)
            await asyncio.wait(pending, timeout=5.0)
    finally:
        killpg(job.pgid, signal.SIGKILL)
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)
        job.close_pipes()
        job.finished.set()
    await asyncio.wait_for(job.exited.wait(), 5.0)
    code = popen.returncode
    return {
        "exit_code": code,
        "signal": -code if code is not None and code < 0 else None,
        "reason": job.stop_reason,
        "seconds": round(time.monotonic() - started, 6),
    }


def _watch_exit(loop: asyncio.AbstractEventLoop, job: Job) -> None:
    """Reap the job's process when it exits and set `Job.exited`."""
    try:
        pidfd = os.pidfd_open(job.pgid)
    except (AttributeError, OSError):
        threading.Thread(target=_wait_in_thread, args=(loop, job), daemon=True).start()
        return

    def exited() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        job.popen.poll()
        job.exited.set()

    loop.add_reader(pidfd, exited)


def _wait_in_thread(loop: asyncio.AbstractEventLoop, job: Job) -> None:
    job.popen.wait()
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(job.exited.set)


async def _fd_ready(loop: asyncio.AbstractEventLoop, fd: int, writing: bool = False) -> None:
    """Wait until ``fd`` can be read (or, ``writing``, written) without blocking."""
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if writing else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if writing else loop.remove_reader)(fd)


def stdin_pipe() -> tuple[int, int]:
    """An interactive run's stdin: (read end for the process, non-blocking write end)."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    return read, write


def _grow_pipe(fd: int) -> None:
    """Let a flooding pipe hold `PIPE_SIZE` bytes, so each read moves more (Linux only;
    refused past the user's pipe quota, which is fine)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)


async def _read(fd: int, kind: int, out: OutputBuffer, paced: bool = True) -> None:
    """Move a pipe's output into ``out``.

    While output trickles (under `FLOOD_RATE`), the pipe is left alone for `READ_PAUSE`
    seconds after each small read, so a process printing a line a millisecond wakes the
    agent ~50 times a second, not 1,000 (the lines wait in the pipe). A flood is read
    flat out, and its pipe made larger.
    """
    loop = asyncio.get_running_loop()
    rate = RateMeter()
    read_size = DEFAULT_PIPE_SIZE
    while True:
        try:
            chunk = os.read(fd, read_size)
        except BlockingIOError:
            await _fd_ready(loop, fd)
            continue
        if not chunk:
            return
        if len(chunk) == read_size < PIPE_SIZE:
            _grow_pipe(fd)
            read_size = PIPE_SIZE
        await out.put(kind, chunk)
        rate.add(len(chunk))
        if paced and not rate.flooding and len(chunk) < SMALL_READ:
            await asyncio.sleep(READ_PAUSE)
