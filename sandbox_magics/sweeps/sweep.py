"""`Sweep`: one cell run once per parameter set, its items' runs, and the results table.

Each `Item` is one parameter set and the runs tried for it (`Item.runs`, the last one
counts). The manager's loop drives a sweep (`drive`): items start as slots allow (at most
``max_parallel`` in flight), an item whose command failed is run again up to ``retries``
times, one lost to the infrastructure (its sandbox died, it never got a slot) up to
`INFRA_RETRIES` times and says so; ``fail_fast`` cancels the rest at the first item that
fails for good. Any thread may read a sweep, wait for it, cancel it or retry what failed.

``df`` is one row per item: its parameters, state, exit code, attempts, start, duration,
sandbox, last line of output, estimated cost (empty where free), and its results: the keys of a ``result.json`` it wrote, or
the columns of a one-row ``metrics.csv``, or its last stdout line when that is a JSON
object.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import dataclasses
import io
import json
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exceptions import SweepFailedError, WaitTimeoutError
from ..pool import cost as pricing
from ..runs import Run, RunSpec, RunState
from ..runs.artifacts import Artifact
from .grid import Params, item_name

if TYPE_CHECKING:
    import pandas as pd

INFRA_RETRIES = 3
RESULT_FILES = ("result.json", "metrics.csv")
RESULT_BYTES = 1024 * 1024
ITEM_STATES = ("queued", "running", "succeeded", "failed", "lost", "cancelled")


@dataclass(eq=False)
class Item:
    """One parameter set of a sweep and the runs tried for it (the last one counts)."""

    index: int
    params: Params
    name: str
    runs: list[Run] = field(default_factory=list)
    lost: int = 0
    cancelled: bool = False
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> Run | None:
        return self.runs[-1] if self.runs else None

    @property
    def state(self) -> str:
        """queued, running, succeeded, failed (failed, timed out or could not run), lost or
        cancelled."""
        run = self.run
        if run is None:
            return "cancelled" if self.cancelled else "queued"
        if not run.done:
            return "queued" if run.state is RunState.QUEUED else "running"
        if run.state is RunState.SUCCEEDED:
            return "succeeded"
        if run.state is RunState.CANCELLED:
            return "cancelled"
        return "lost" if run.state is RunState.LOST else "failed"

    @property
    def done(self) -> bool:
        """Whether the item has ended (for now: `Sweep.retry_failed` may run it again)."""
        return (self.run.done if self.run is not None else self.cancelled)

    @property
    def cost(self) -> float | None:
        """What every run tried for the item cost, estimated (None: unknown)."""
        return pricing.total(run.cost for run in self.runs)

    def last_line(self) -> str:
        """The last non-empty line of the last run's output, stdout and stderr together."""
        run = self.run
        if run is None:
            return ""
        for _, data in reversed(run.log.tail(4096)):
            lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
            if lines:
                return lines[-1][:200]
        return ""


class Sweep:
    """A cell run for every parameter set in ``params``, from ``spec`` (its code, profile
    and flags); items are named ``name[k=v,...]``."""

    def __init__(self, sweep_id: str, name: str, spec: RunSpec, params: list[Params],
                 retries: int = 0, fail_fast: bool = False,
                 max_parallel: int | None = None) -> None:
        self.id = sweep_id
        self.name = name
        self.spec = spec
        self.retries = retries
        self.fail_fast = fail_fast
        self.max_parallel = max_parallel
        self.items = [Item(i, p, item_name(name, p)) for i, p in enumerate(params)]
        self.notices: list[str] = []
        self._future: concurrent.futures.Future[Sweep] = concurrent.futures.Future()
        self._cancel: Callable[[], Any] | None = None
        self._retry: Callable[[], Any] | None = None

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        return f"<Sweep {self.id} {self.name!r} {len(self.items)} items: {counts}>"

    @property
    def done(self) -> bool:
        return self._future.done()

    def counts(self) -> dict[str, int]:
        """How many items are in each state (`ITEM_STATES`)."""
        counts = dict.fromkeys(ITEM_STATES, 0)
        for item in self.items:
            counts[item.state] += 1
        return counts

    @property
    def cost(self) -> float | None:
        """What the sweep's runs cost so far, estimated (None: unknown)."""
        return pricing.total(item.cost for item in self.items)

    @property
    def failed(self) -> list[Item]:
        """Items that ended without succeeding (failed, lost or cancelled)."""
        return [i for i in self.items if i.done and i.state != "succeeded"]

    def item(self, key: int | str | Params) -> Item:
        """An item by index, name, or parameter set.

        Raises:
            KeyError: no such item.
        """
        for item in self.items:
            if key in (item.index, item.name) or (isinstance(key, dict) and key == item.params):
                return item
        raise KeyError(f"Sweep {self.name!r} has no item {key!r}.")

    def logs(self, key: int | str | Params) -> Run:
        """The last run of an item (its log: ``.stdout``, ``.stderr``, its view in a cell)."""
        run = self.item(key).run
        if run is None:
            raise KeyError(f"Item {self.item(key).name!r} has not started.")
        return run

    def artifacts(self, key: int | str | Params) -> list[Artifact]:
        run = self.item(key).run
        return [] if run is None else run.artifacts

    @property
    def df(self) -> pd.DataFrame:
        """One row per item: parameters, state, exit code, attempts, start, duration,
        sandbox, last line, then its results."""
        import pandas as pd
        rows = []
        for item in self.items:
            run = item.run
            start = run.started_at if run else None
            end = run.ended_at if run else None
            row = {
                "item": item.name, **item.params, "state": item.state,
                "exit_code": run.exit_code if run else None, "attempts": len(item.runs),
                "started": pd.to_datetime(start, unit="s", utc=True) if start else pd.NaT,
                "duration_s": round(end - start, 3) if start and end else None,
                "sandbox": run.sandbox if run else None, "last_line": item.last_line(),
                "cost": item.cost if any(r.rate for r in item.runs) else None}
            # a result named as a column already there is kept as result.NAME
            rows.append({**row, **{k if k not in row else f"result.{k}": v
                                   for k, v in item.results.items()}})
        return pd.DataFrame(rows).set_index("item")

    def join(self, timeout: float | None = None) -> bool:
        """Block until every item has ended or ``timeout`` passes; return whether they have.
        Never raises."""
        try:
            self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        return True

    def wait(self, timeout: float | None = None) -> Sweep:
        """Block until every item has ended; return the sweep.

        Raises:
            SweepFailedError: items failed (the sentence lists their parameter sets).
            WaitTimeoutError: items still run after ``timeout`` seconds; they go on.
        """
        if not self.join(timeout):
            left = sum(not i.done for i in self.items)
            raise WaitTimeoutError(f"Sweep {self.name!r} still has {left} item(s) going after "
                                   f"{timeout:g} s; they go on: wait again, or cancel it.")
        return self.check()

    def __await__(self) -> Generator[Any, None, Sweep]:
        return self._await().__await__()

    async def _await(self) -> Sweep:
        await asyncio.wrap_future(self._future)
        return self.check()

    def check(self) -> Sweep:
        """Raise `SweepFailedError` if items failed; return the sweep."""
        if self.failed and self.spec.raise_error:
            raise SweepFailedError(self.failure_message(), self.id, None)
        return self

    def failure_message(self) -> str:
        failed = self.failed
        shown = "; ".join(f"{_params_text(i.params)} ({_why(i)})" for i in failed[:10])
        more = f"; and {len(failed) - 10} more" if len(failed) > 10 else ""
        return (f"Sweep {self.name!r}: {len(failed)} of {len(self.items)} item(s) did not "
                f"succeed: {shown}{more}. sweep.retry_failed() runs only those again.")

    def cancel(self) -> None:
        """Cancel every item not ended: queued ones never start, running ones are stopped."""
        if self._cancel is not None and not self.done:
            self._cancel()

    def retry_failed(self) -> None:
        """Run again, once each, the items that failed, were lost or cancelled."""
        if self._retry is not None:
            self._retry()

    def _reopen(self) -> None:
        """Items run again: later waits wait for them."""
        if self._future.done():
            self._future = concurrent.futures.Future()

    def _finish(self) -> None:
        if not self._future.done():
            self._future.set_result(self)


async def drive(sweep: Sweep, items: list[Item], submit: Callable[[RunSpec], Run],
                stop: Callable[[Run], Awaitable[Any]]) -> None:
    """Run ``items`` of ``sweep`` (all of them, or those being retried) to their ends, then
    mark the sweep finished if nothing else runs; ``submit`` starts a run, ``stop`` cancels
    one. Cancel this task to cancel the items."""
    gate = asyncio.Semaphore(sweep.max_parallel or len(items) or 1)
    tasks: list[asyncio.Task[None]] = []

    def cancel_rest() -> None:
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
    tasks.extend(asyncio.ensure_future(_item(sweep, item, gate, submit, stop, cancel_rest))
                 for item in items)
    try:
        await asyncio.gather(*tasks, return_exceptions=True)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        if all(item.done for item in sweep.items):
            sweep._finish()


async def _item(sweep: Sweep, item: Item, gate: asyncio.Semaphore,
                submit: Callable[[RunSpec], Run], stop: Callable[[Run], Awaitable[Any]],
                cancel_rest: Callable[[], None]) -> None:
    """Run one item until it succeeds or its tries are used up."""
    failures = 0
    try:
        async with gate:
            while True:
                run = submit(_spec_of(sweep, item))
                item.runs.append(run)
                try:
                    await asyncio.shield(asyncio.wrap_future(run._future))
                except asyncio.CancelledError:
                    await stop(run)
                    raise
                item.results = _results(run)
                if run.state is RunState.LOST and item.lost < INFRA_RETRIES:
                    item.lost += 1
                    sweep.notices.append(f"{item.name} was lost ({run.error}); it runs again "
                                         f"(infrastructure retry {item.lost} of {INFRA_RETRIES}).")
                    continue
                if run.state in (RunState.FAILED, RunState.TIMED_OUT) and failures < sweep.retries:
                    failures += 1
                    continue
                if sweep.fail_fast and run.state is not RunState.SUCCEEDED:
                    sweep.notices.append(f"{item.name} did not succeed; --fail-fast cancels "
                                         "the rest.")
                    cancel_rest()
                return
    except asyncio.CancelledError:
        item.cancelled = True
        raise


def _spec_of(sweep: Sweep, item: Item) -> RunSpec:
    """The run of ``item``: the sweep's cell with the item's parameters as environment
    variables, ``SANDBOX_PARAMS`` and a ``params.json``; downloads go to a folder named
    after the item."""
    spec = sweep.spec
    params = json.dumps(item.params)
    return dataclasses.replace(
        spec, name=item.name, env={**spec.env, **item.params, "SANDBOX_PARAMS": params},
        files={**spec.files, "params.json": params},
        downloads=tuple((remote, str(Path(item.name) / local)) for remote, local in spec.downloads))


def _results(run: Run) -> dict[str, Any]:
    """What ``run`` reported: ``result.json``'s keys, a one-row ``metrics.csv``'s columns,
    or its last stdout line when that is a JSON object."""
    files = {a.path: a for a in run.artifacts if a.local is not None and a.size <= RESULT_BYTES}
    try:
        if "result.json" in files:
            data = json.loads(files["result.json"].read_bytes())
            if isinstance(data, dict):
                return data
        if "metrics.csv" in files:
            rows = list(csv.DictReader(io.StringIO(files["metrics.csv"].read_bytes().decode())))
            if len(rows) == 1:
                return {k: _number(v) for k, v in rows[0].items()}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    lines = run.log.text("stdout").strip().splitlines()[-1:] if run.log.total_bytes < RESULT_BYTES else []
    try:
        data = json.loads(lines[0]) if lines else None
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _number(text: str | None) -> Any:
    for kind in (int, float):
        try:
            return kind(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return text


def _params_text(params: Params) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def _why(item: Item) -> str:
    run = item.run
    if run is None:
        return "cancelled before it started"
    if run.state is RunState.FAILED and run.exit_code is not None:
        return f"exit {run.exit_code}"
    return run.state.value
