"""A run's states and stages move only as the tables in runs/state.py allow: every pair is
tried on a real `Run`, allowed ones succeed and tell the listeners, all others raise
`TransitionError` and leave the run as it was."""

from __future__ import annotations

import itertools

import pytest

from sandbox_magics.exceptions import SandboxError
from sandbox_magics.runs import Run, RunSpec, RunState, Stage
from sandbox_magics.runs.state import ENDED, FINISHED, STAGES, TRANSITIONS, TransitionError

ALLOWED = {
    (RunState.QUEUED, RunState.RUNNING), (RunState.QUEUED, RunState.CANCELLING),
    (RunState.QUEUED, RunState.CANCELLED), (RunState.QUEUED, RunState.ERROR),
    (RunState.QUEUED, RunState.LOST),
    (RunState.RUNNING, RunState.QUEUED), (RunState.RUNNING, RunState.CANCELLING),
    (RunState.RUNNING, RunState.DETACHING), (RunState.DETACHING, RunState.DETACHED),
    *((RunState.RUNNING, end) for end in ENDED),
    *((RunState.CANCELLING, end) for end in ENDED),
    *((RunState.DETACHING, end) for end in ENDED),
}


def run_in(state: RunState) -> Run:
    run = Run("r1", RunSpec("true"), "local")
    run.state = state  # the starting point of the table row, set directly
    return run


@pytest.mark.parametrize(("old", "new"), list(itertools.product(RunState, RunState)),
                         ids=lambda s: s.value)
def test_every_state_pair_is_allowed_or_refused_as_the_table_says(old: RunState,
                                                                 new: RunState) -> None:
    run = run_in(old)
    heard: list[str] = []
    run.add_listener(lambda _run, stream, _data: heard.append(stream))
    if (old, new) in ALLOWED:
        run._to(new)
        assert run.state is new and heard == ["state"]
    else:
        with pytest.raises(TransitionError, match=f"from {old.value} to {new.value}"):
            run._to(new)
        assert run.state is old and heard == []


def test_the_table_is_the_one_tested_and_finished_states_are_final() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED
    assert all(not TRANSITIONS[state] and state.finished for state in FINISHED)
    assert issubclass(TransitionError, SandboxError)


STAGE_ALLOWED = {(Stage.QUEUED, Stage.QUEUED), (Stage.QUEUED, Stage.UPLOADING),
                 (Stage.QUEUED, Stage.RUNNING),
                 (Stage.UPLOADING, Stage.RUNNING), (Stage.UPLOADING, Stage.QUEUED),
                 (Stage.RUNNING, Stage.COLLECTING), (Stage.RUNNING, Stage.QUEUED)}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(Stage, Stage)),
                         ids=lambda s: s.value)
def test_every_stage_pair_is_allowed_or_refused_as_the_table_says(old: Stage, new: Stage) -> None:
    run = Run("r1", RunSpec("true"), "local")
    run.stage = old
    if (old, new) in STAGE_ALLOWED:
        run._stage(new)
        assert run.stage is new
    else:
        with pytest.raises(TransitionError):
            run._stage(new)
        assert run.stage is old
    assert {(a, b) for a, targets in STAGES.items() for b in targets} == STAGE_ALLOWED


def test_a_cancel_asked_of_a_finished_run_changes_nothing_and_a_requeue_keeps_a_cancel() -> None:
    run = run_in(RunState.RUNNING)
    run._request_cancel()
    assert run.cancelling
    run._requeue()
    assert run.state is RunState.CANCELLING and run.sandbox is None
    run._finish(RunState.CANCELLED, error="cancelled while queued")
    run._request_cancel()
    assert run.state is RunState.CANCELLED and run.done
    with pytest.raises(TransitionError):
        run_in(RunState.QUEUED)._finish(RunState.SUCCEEDED, 0)
