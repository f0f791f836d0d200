"""The program a kernel session runs in its sandbox slot: a live IPython shell driven by frames.

It is sent as source (``python -u -c SOURCE``) and imports only the standard library at
the top, so it runs in any image with Python 3.8+ and IPython; nothing of sandbox_magics
needs to be there. Requests come on stdin and answers go out on stdout, each one frame:
`HEADER` (a kind byte, a payload length) then the payload (JSON, or raw bytes for output
and pickles). The user's code never touches those two: fd 0 reads ``/dev/null``, fds 1
and 2 are pipes whose bytes the bridge frames as stdout and stderr (what subprocesses
print too), and ``sys.stdout``/``sys.stderr`` write frames directly, so prints and
displays keep their order. A SIGINT interrupts the code running (IPython shows the
KeyboardInterrupt and the state stays); between cells it is ignored.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import queue
import select
import signal
import struct
import sys
import threading
from typing import Any

HEADER = struct.Struct(">cI")
# bridge -> host
READY, STDOUT, STDERR, DISPLAY, RESULT, ERROR, CLEAR, DATA, DONE, FATAL = (
    b"R", b"1", b"2", b"D", b"X", b"E", b"C", b"V", b"F", b"!")
# host -> bridge
EXECUTE, PUSH, PULL = b"e", b"p", b"u"
NO_IPYTHON = 3
READ = 65536
BATCH = 8192


class Channel:
    """Frames out on ``fd`` (a copy of the original stdout), one writer at a time. Before
    any frame but output, the ``flushers`` send the output held so far (Python's, then
    the pipes'), so output keeps its place before displays and answers."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.RLock()
        self.flushers: list = []

    def send(self, kind: bytes, payload: bytes) -> None:
        if kind not in (STDOUT, STDERR):
            for flush in self.flushers:  # outside the lock: a pipe's pump takes it too
                flush()
        data = memoryview(HEADER.pack(kind, len(payload)) + payload)
        with self.lock:
            while data:
                data = data[os.write(self.fd, data):]

    def json(self, kind: bytes, obj: Any) -> None:
        self.send(kind, json.dumps(obj, default=repr).encode())


class Requests(threading.Thread):
    """Reads request frames from ``fd`` into ``queue`` (None at end of input)."""

    def __init__(self, fd: int, inbox: "queue.Queue[tuple[bytes, bytes] | None]") -> None:
        super().__init__(daemon=True)
        self.fd, self.inbox = fd, inbox

    def exactly(self, size: int) -> bytes | None:
        parts, left = [], size
        while left:
            chunk = os.read(self.fd, min(left, 1 << 20))
            if not chunk:
                return None
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def run(self) -> None:
        while True:
            head = self.exactly(HEADER.size)
            kind, size = HEADER.unpack(head) if head else (b"", 0)
            payload = self.exactly(size) if head else None
            if payload is None:
                self.inbox.put(None)
                return
            self.inbox.put((kind, payload))


class Pipes:
    """fds 1 and 2 as pipes: their bytes go out as STDOUT and STDERR frames, live from a
    thread, and all of what is written so far on `drain` (before a cell says it is done)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.lock = threading.Lock()
        self.ends: dict[int, bytes] = {}
        for fd, kind in ((1, STDOUT), (2, STDERR)):
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            os.set_blocking(read, False)
            self.ends[read] = kind
        threading.Thread(target=self.pump, daemon=True).start()

    def pump(self) -> None:
        while True:
            ready, _, _ = select.select(list(self.ends), [], [])
            for fd in ready:
                self.move(fd)

    def move(self, fd: int) -> None:
        with self.lock:
            while True:
                try:
                    data = os.read(fd, READ)
                except BlockingIOError:
                    return
                if not data:
                    return
                self.channel.send(self.ends[fd], data)

    def drain(self) -> None:
        for fd in self.ends:
            self.move(fd)


class Stream:
    """``sys.stdout`` / ``sys.stderr``: text written goes out as a frame at each line end,
    each `BATCH` characters, each ``flush`` and before any other frame."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, channel: Channel, kind: bytes, fileno: int) -> None:
        self.channel, self.kind, self._fileno = channel, kind, fileno
        self.held: list = []
        self.size = 0

    def write(self, text: str) -> int:
        with self.channel.lock:
            self.held.append(text)
            self.size += len(text)
            if "\n" in text or self.size >= BATCH:
                self.flush()
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self.channel.lock:
            if self.size:
                text, self.held, self.size = "".join(self.held), [], 0
                self.channel.send(self.kind, text.encode("utf-8", "replace"))

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fileno

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False


def memory() -> int | None:
    """This process's resident memory in bytes (Linux), None elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def make_shell(channel: Channel) -> Any:
    """An IPython shell whose displays, results and tracebacks go out as frames."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class Publisher(DisplayPublisher):
        def publish(self, data: Any, metadata: Any = None, source: Any = None, *,
                    transient: Any = None, update: bool = False, **_: Any) -> None:
            channel.json(DISPLAY, {"data": data, "metadata": metadata or {},
                                   "transient": transient or {}, "update": update})

        def clear_output(self, wait: bool = False) -> None:
            channel.json(CLEAR, {"wait": wait})

    class Hook(DisplayHook):
        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: Any, md_dict: Any = None) -> None:
            channel.json(RESULT, {"data": format_dict, "metadata": md_dict or {},
                                  "execution_count": self.prompt_count})

        def finish_displayhook(self) -> None:
            pass

    class Shell(InteractiveShell):
        displayhook_class = Hook
        display_pub_class = Publisher

        def _showtraceback(self, etype: Any, evalue: Any, stb: Any) -> None:
            channel.json(ERROR, {"ename": getattr(etype, "__name__", str(etype)),
                                 "evalue": str(evalue), "traceback": list(stb)})

        def enable_gui(self, gui: Any = None) -> None:
            pass

    shell = Shell.instance(colors="Linux")
    return shell


class Bridge:
    """The request loop: one request at a time, in the main thread (signals land here)."""

    def __init__(self, channel: Channel, shell: Any) -> None:
        self.channel, self.shell = channel, shell
        self.busy = False

    def interrupt(self, signum: int, frame: Any) -> None:
        if self.busy:
            raise KeyboardInterrupt

    def done(self, rid: int, **fields: Any) -> None:
        self.channel.json(DONE, {"id": rid, "memory": memory(), **fields})

    def execute(self, request: dict) -> None:
        status = "ok"
        self.busy = True
        try:
            result = self.shell.run_cell(request["code"], store_history=True)
            if not result.success:
                error = result.error_in_exec or result.error_before_exec
                status = "interrupted" if isinstance(error, KeyboardInterrupt) else "error"
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            self.busy = False
        self.done(request["id"], status=status, execution_count=self.shell.execution_count - 1)

    def push(self, payload: bytes) -> None:
        message = pickle.loads(payload)
        failed = {}
        for name, data in message["values"].items():
            try:
                self.shell.user_ns[name] = pickle.loads(data)
            except Exception as exc:  # noqa: BLE001 - named in the answer
                failed[name] = f"{type(exc).__name__}: {exc}"
        self.done(message["id"], status="ok", failed=failed)

    def pull(self, request: dict) -> None:
        values, failed = {}, {}
        for name in request["names"]:
            if name not in self.shell.user_ns:
                failed[name] = "it is not defined in the sandbox's kernel"
                continue
            try:
                values[name] = pickle.dumps(self.shell.user_ns[name], request["protocol"])
            except Exception as exc:  # noqa: BLE001 - named in the answer
                failed[name] = f"it cannot be pickled ({type(exc).__name__}: {exc})"
        self.channel.send(DATA, pickle.dumps(values, request["protocol"]))
        self.done(request["id"], status="ok", failed=failed)

    def serve(self, inbox: "queue.Queue[tuple[bytes, bytes] | None]") -> None:
        while True:
            try:
                item = inbox.get()
            except KeyboardInterrupt:
                continue
            if item is None:
                return
            kind, payload = item
            if kind == EXECUTE:
                self.execute(json.loads(payload))
            elif kind == PUSH:
                self.push(payload)
            elif kind == PULL:
                self.pull(json.loads(payload))


def main() -> int:
    channel = Channel(os.dup(1))
    requests = os.dup(0)
    quiet = os.open(os.devnull, os.O_RDONLY)
    os.dup2(quiet, 0)
    os.close(quiet)
    try:
        import IPython
    except ImportError:
        channel.json(FATAL, {"reason": "no-ipython", "python": sys.version.split()[0],
                             "executable": sys.executable})
        return NO_IPYTHON
    pipes = Pipes(channel)
    sys.stdout = Stream(channel, STDOUT, 1)
    sys.stderr = Stream(channel, STDERR, 2)
    channel.flushers = [sys.stdout.flush, sys.stderr.flush, pipes.drain]
    if importlib.util.find_spec("matplotlib_inline"):  # plots show inline, as in a notebook
        os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    shell = make_shell(channel)
    bridge = Bridge(channel, shell)
    signal.signal(signal.SIGINT, bridge.interrupt)
    inbox: "queue.Queue[tuple[bytes, bytes] | None]" = queue.Queue()
    Requests(requests, inbox).start()
    channel.json(READY, {"pid": os.getpid(), "python": sys.version.split()[0],
                         "ipython": IPython.__version__, "memory": memory()})
    bridge.serve(inbox)
    return 0


if __name__ == "__main__":
    sys.exit(main())
