"""What a person reads about a run's end: words first, the signal's name in brackets."""

from __future__ import annotations

import re

import pytest

from sandbox_magics.runs import Run, RunSpec, RunState
from sandbox_magics.runs.words import exit_words, stop_words


@pytest.mark.parametrize(("code", "words"), [
    (None, ""), (0, "exit code 0"), (3, "exit code 3"),
    (-2, "ended by an interrupt (SIGINT)"), (-9, "ended by SIGKILL"), (-15, "ended by SIGTERM"),
    (-99, "ended by signal 99")])
def test_exit_codes_read_as_words(code: int | None, words: str) -> None:
    assert exit_words(code) == words


@pytest.mark.parametrize(("step", "words"), [
    ("SIGINT", "its process group was interrupted (SIGINT)"),
    ("SIGKILL", "its process group was killed (SIGKILL), as it did not end on an interrupt "
                "or SIGTERM"),
    ("dequeued", "taken out of the queue before it started"),
    ("stopped while uploading", "stopped while uploading")])
def test_cancel_steps_read_as_words(step: str, words: str) -> None:
    assert stop_words(step) == words


def ended(state: RunState, code: int | None, step: str | None = None) -> Run:
    run = Run("r3", RunSpec("sleep 9"), "local")
    run._assign("default-1", 0, "default-1")
    if state is RunState.CANCELLED:
        run._request_cancel()
        run.stop_step = step
    run._finish(state, code)
    return run


@pytest.mark.parametrize(("state", "code", "step", "words"), [
    (RunState.FAILED, 3, None, "exited with code 3."),
    (RunState.FAILED, -9, None, "was ended by SIGKILL."),
    (RunState.CANCELLED, -2, "SIGINT",
     "was cancelled: its process group was interrupted (SIGINT)."),
    (RunState.CANCELLED, None, "stopped while uploading", "was cancelled: stopped while uploading."),
    (RunState.CANCELLED, None, None, "was cancelled.")])
def test_failures_read_as_words_with_no_raw_signal_number(
        state: RunState, code: int | None, step: str | None, words: str) -> None:
    message = ended(state, code, step).failure_message()
    assert message == f"Run r3 (bash, profile 'default') {words}"
    assert not re.search(r"-\d", message), message
