"""The scaling policy and the adopt-or-reap rule, as tables of cases (no I/O, no clock)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from sandbox_magics import identity
from sandbox_magics.identity import Identity
from sandbox_magics.pool import policy
from sandbox_magics.pool.policy import (Counts, Drain, FailWaiting, Found, SandboxFacts, Start,
                                        Stop)
from sandbox_magics.profiles import Profile

NOW = 10_000.0
P = Profile(name="p", slots_per_sandbox=2, min_sandboxes=0, max_sandboxes=3,
            idle_timeout=60.0, lifetime=3600.0)


def box(name: str, starting: bool = False, in_use: bool = False, age: float = 100.0,
        idle_for: float | None = 0.0, draining: bool = False) -> SandboxFacts:
    idle_since = None if idle_for is None else NOW - idle_for
    return SandboxFacts(name, starting, in_use, NOW - age, idle_since, 2, draining)


CASES = [
    # (case, profile changes, target, counts, expected actions)
    ("nothing to do when idle at zero", {}, None, Counts(0, ()), []),
    ("waiting runs start enough sandboxes", {}, None, Counts(3, ()), [Start(2, "3 run(s) waiting")]),
    ("never beyond max_sandboxes", {}, None, Counts(40, ()), [Start(3, "40 run(s) waiting")]),
    ("slots already starting count", {}, None, Counts(2, (box("a", starting=True),)), []),
    ("min_sandboxes is kept", {"min_sandboxes": 1}, None, Counts(0, ()),
     [Start(1, "the pool keeps at least 1")]),
    ("a scale target is a floor", {}, 2, Counts(0, ()), [Start(2, "the pool keeps at least 2")]),
    ("scale target is kept above the profile's min", {"min_sandboxes": 0}, 2,
     Counts(0, (box("a"), box("b"))), []),
    ("a lower scale target stops idle extras, oldest first", {}, 1,
     Counts(0, (box("a", age=50), box("b", age=500), box("c", in_use=True), box("d", age=9))),
     [Stop("b", "the pool is set to at most 1 sandbox(es)"),
      Stop("a", "the pool is set to at most 1 sandbox(es)"),
      Stop("d", "the pool is set to at most 1 sandbox(es)")]),
    ("scale 0 stops every idle sandbox", {}, 0, Counts(0, (box("a"), box("b"))),
     [Stop("a", "the pool is set to at most 0 sandbox(es)"),
      Stop("b", "the pool is set to at most 0 sandbox(es)")]),
    ("scale 0 drains a busy sandbox: no new run there, and waiting runs fail at once", {}, 0,
     Counts(1, (box("a", in_use=True),)),
     [Drain("a", "the pool is set to at most 0 sandbox(es); it stops when its runs end"),
      FailWaiting("profile 'p' is scaled to 0 sandboxes; run %sandbox scale p auto (or N) "
                  "to run again")]),
    ("a lower target drains the oldest busy sandboxes it cannot stop idle", {}, 1,
     Counts(0, (box("a", in_use=True, age=50), box("b", in_use=True, age=500))),
     [Drain("b", "the pool is set to at most 1 sandbox(es); it stops when its runs end")]),
    ("a draining sandbox whose runs go on is left to finish", {}, 0,
     Counts(0, (box("a", in_use=True, draining=True),)), []),
    ("a draining sandbox stops once its runs end", {}, 0, Counts(0, (box("a", draining=True),)),
     [Stop("a", "its runs ended after a scale-down")]),
    ("scale 0 fails waiting runs at once", {}, 0, Counts(1, ()),
     [FailWaiting("profile 'p' is scaled to 0 sandboxes; run %sandbox scale p auto (or N) "
                  "to run again")]),
    ("idle past idle_timeout above min stops", {}, None, Counts(0, (box("a", idle_for=61),)),
     [Stop("a", "idle for 61 s")]),
    ("idle at min is kept", {"min_sandboxes": 1}, None, Counts(0, (box("a", idle_for=600),)), []),
    ("lifetime applies at min too, and the sandbox is replaced", {"min_sandboxes": 1}, None,
     Counts(0, (box("a", age=4000),)),
     [Stop("a", "its lifetime of 3600 s was reached"), Start(1, "the pool keeps at least 1")]),
    ("a busy sandbox past its lifetime waits for its runs", {"min_sandboxes": 1}, None,
     Counts(0, (box("a", age=4000, in_use=True),)), []),
    ("one idle stop per cooldown", {}, None,
     Counts(0, (box("a", idle_for=61),), last_scale_down=NOW - 1), []),
    ("a failed start is retried after its backoff", {}, None,
     Counts(1, (box("a", in_use=True),), failed_starts=1, last_failure=NOW - 1.5,
            last_error="boom"), [Start(1, "1 run(s) waiting")]),
    ("no retry during the backoff; busy sandbox left to serve", {}, None,
     Counts(1, (box("a", in_use=True),), failed_starts=2, last_failure=NOW - 1.5,
            last_error="boom"), []),
    ("no sandbox and a failed start: waiting runs hear why at once", {}, None,
     Counts(2, (), failed_starts=1, last_failure=NOW, last_error="image pull failed"),
     [FailWaiting("Could not start a sandbox for profile 'p': image pull failed")]),
]


@pytest.mark.parametrize("case, changes, target, counts, expected", CASES, ids=[c[0] for c in CASES])
def test_decide(case: str, changes: dict[str, object], target: int | None, counts: Counts,
                expected: list[policy.Action]) -> None:
    profile = Profile(**{**P.__dict__, **changes})  # type: ignore[arg-type]
    assert policy.decide(profile, target, counts, NOW, cooldown=10.0) == expected


@pytest.mark.parametrize("target, problem", [
    (3, None), (0, None),
    (4, "Cannot scale profile 'p' to 4 sandboxes: its max_sandboxes is 3; raise "
        "max_sandboxes in the profiles file to go higher."),
    (-1, "Cannot scale profile 'p' to -1; give 0 or more."),
    (None, None), ("auto", None),
    ("many", "Cannot scale profile 'p' to 'many'; give a whole number of sandboxes, or 'auto' "
             "to autoscale between its bounds."),
    (0.5, "Cannot scale profile 'p' to 0.5; give a whole number of sandboxes, or 'auto' "
          "to autoscale between its bounds."),
    (True, "Cannot scale profile 'p' to True; give a whole number of sandboxes, or 'auto' "
           "to autoscale between its bounds."),
])
def test_check_target_refuses_anything_but_a_count_within_bounds_or_auto_with_a_sentence(
        target: object, problem: str | None) -> None:
    assert policy.check_target(P, target) == problem


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [policy.backoff(n) for n in (0, 1, 2, 3, 4, 10)] == [0.0, 1.0, 2.0, 4.0, 8.0, 60.0]
    assert policy.backoff(100) == policy.MAX_BACKOFF and math.isfinite(policy.backoff(10**6))


ME = Identity(client_id="c1", kernel_id="k1", process="host/100")


def tags(kernel: str, process: str, beat: float | None, version: str | None = None) -> dict[str, str]:
    found = {identity.KERNEL: kernel, identity.PROCESS: process,
             identity.VERSION: version or identity.version()}
    if beat is not None:
        found[identity.HEARTBEAT] = str(beat)
    return found


@pytest.mark.parametrize("case, found, verdict", [
    ("my kernel before its restart", tags("k1", "host/99", NOW - 5), Found.ADOPT),
    ("my kernel's predecessor, silent for long", tags("k1", "host/99", NOW - 10**6), Found.ADOPT),
    ("another client of this very process", tags("k1", "host/100", NOW), Found.LEAVE),
    ("my predecessor on another package version", tags("k1", "host/99", NOW, "0.0.1"), Found.REAP),
    ("another kernel, alive", tags("k2", "host/7", NOW - 60), Found.LEAVE),
    ("another kernel, silent past the window", tags("k2", "host/7", NOW - 901), Found.REAP),
    ("no heartbeat at all", tags("k2", "host/7", None), Found.REAP),
])
def test_classify(case: str, found: dict[str, str], verdict: Found) -> None:
    assert policy.classify(found, ME, NOW, window=900.0) is verdict


@pytest.mark.parametrize(("case", "changes", "target", "sandboxes", "stops"), [
    ("an idle sandbox stops at its idle timeout", {}, None, (box("a", idle_for=20),), {"a": 40}),
    ("overdue is 0", {}, None, (box("a", idle_for=90),), {"a": 0}),
    ("a busy or starting one is not idle", {}, None,
     (box("a", in_use=True, idle_for=None), box("b", starting=True)), {}),
    ("the minimum keeps the newest idle ones", {"min_sandboxes": 1}, None,
     (box("a", idle_for=50), box("b", idle_for=10)), {"a": 10}),
    ("a scale target keeps them all", {}, 2, (box("a", idle_for=50), box("b", idle_for=10)), {}),
])
def test_idle_stops(case: str, changes: dict[str, object], target: int | None,
                    sandboxes: tuple[SandboxFacts, ...], stops: dict[str, float]) -> None:
    profile = dataclasses.replace(P, **changes)
    assert policy.idle_stops(profile, target, Counts(0, sandboxes), NOW) == pytest.approx(stops)
