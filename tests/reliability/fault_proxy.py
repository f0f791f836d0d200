"""A TCP proxy on 127.0.0.1 that injects faults between the pool and an agent.

Each connection the pool opens to the proxy is forwarded to the agent, unless the proxy
decides otherwise, with the odds in `Faults`:

``refused``
    closed as soon as it is accepted, before a byte reaches the agent;
``exec-cut``
    one exec request in ``exec_cut_every`` (counted over every proxy sharing the `Faults`)
    is read and its connection closed before the agent sees it, so the run's process never
    starts (the pool must re-queue the run);
``response-cut``
    closed after part of an answer was forwarded (mid-stream for an exec);
``slow``
    the first chunks of every answer are each held back a while.

It is a fault injector, not an HTTP implementation: an exec is recognised by a chunk from
the client that begins with its request line, as aiohttp sends a request's head. `Faults`
counts what was done, by kind; ``enabled = False`` turns every fault off (the proxy still
forwards), for the pool to heal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass
class Faults:
    """The odds of each fault per connection, how often an exec is cut, and what the
    proxies sharing it did so far."""

    seed: int = 12
    refused: float = 0.02
    exec_cut_every: int = 15
    response_cut: float = 0.02
    slow: float = 0.15
    slow_chunks: int = 3
    max_delay: float = 0.4
    enabled: bool = True
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.execs = 0

    def roll(self, odds: float) -> bool:
        return self.enabled and self.rng.random() < odds


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``upstream``, injecting `Faults`."""

    def __init__(self, upstream: int, faults: Faults) -> None:
        self.upstream = upstream
        self.faults = faults
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._connection(client_r, client_w)
        finally:
            self._handlers.discard(task)

    async def _connection(self, client_r: asyncio.StreamReader,
                          client_w: asyncio.StreamWriter) -> None:
        faults = self.faults
        agent_w: asyncio.StreamWriter | None = None
        try:
            if faults.roll(faults.refused):
                faults.counts["refused"] += 1
                return
            try:
                agent_r, agent_w = await asyncio.open_connection("127.0.0.1", self.upstream)
            except OSError:
                return
            cut_after = (faults.rng.randrange(0, 400) if faults.roll(faults.response_cut)
                         else None)
            slow = faults.roll(faults.slow)
            pumps = [asyncio.ensure_future(self._requests(client_r, agent_w)),
                     asyncio.ensure_future(self._answers(agent_r, client_w, cut_after, slow))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for writer in (client_w, agent_w):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()

    async def _requests(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Client to agent; an exec request may be dropped here, before the agent sees it."""
        faults = self.faults
        while data := await source.read(CHUNK):
            line = data.split(b"\r\n", 1)[0]
            if line.startswith(b"POST ") and line.endswith(b"/exec HTTP/1.1") and faults.enabled:
                faults.execs += 1
                if faults.execs % faults.exec_cut_every == faults.exec_cut_every // 2:
                    faults.counts["exec-cut"] += 1
                    return
            sink.write(data)
            await sink.drain()

    async def _answers(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       cut_after: int | None, slow: bool) -> None:
        """Agent to client; cut after ``cut_after`` bytes, or held back if ``slow``."""
        faults = self.faults
        forwarded = 0
        delayed = 0
        while data := await source.read(CHUNK):
            if cut_after is not None and faults.enabled and forwarded + len(data) > cut_after:
                sink.write(data[:cut_after - forwarded])
                await sink.drain()
                faults.counts["response-cut"] += 1
                return
            if slow and faults.enabled and delayed < faults.slow_chunks:
                if not delayed:
                    faults.counts["slow"] += 1
                delayed += 1
                await asyncio.sleep(faults.rng.uniform(0.05, faults.max_delay))
            sink.write(data)
            await sink.drain()
            forwarded += len(data)
