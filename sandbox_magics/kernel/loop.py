"""`LoopThread`: a private asyncio loop on a daemon thread, as IPython's script magics use.

The kernel's own loop is not ours to block; cells block on ``run(coro, timeout)`` instead.
`stop` (also called by a `weakref.finalize`) cancels every task left and stops the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..exceptions import WaitTimeoutError

T = TypeVar("T")


class LoopThread:
    """An event loop running forever on its own thread until `stop`."""

    def __init__(self, name: str = "sandbox-magics-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, _stop, self.loop, self._thread)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; return a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def submit_detached(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Like `submit`, but ``coro`` runs in an empty context instead of a copy of the
        caller's. In a kernel, output it sends then belongs to whichever cell is running
        when it is sent (ipykernel's rule for threads), not to the cell that started it."""
        return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and block this thread until it ends or ``timeout`` passes.

        Raises:
            WaitTimeoutError: ``timeout`` passed first (``coro`` is cancelled).
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run was called from its own loop; await instead.")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise WaitTimeoutError(f"The sandbox manager did not answer within {timeout:g} s; "
                                   "try again, or restart the kernel if it keeps happening.") from None

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` running on the loop, from any other event loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self) -> None:
        self._finalizer()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_closed():
        return

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    if thread.is_alive():
        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(10)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    if not loop.is_running():
        loop.close()
