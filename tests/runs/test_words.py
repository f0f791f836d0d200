"""What a person reads about a run's end: words first, the signal's name in brackets."""

from __future__ import annotations

import pytest

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
