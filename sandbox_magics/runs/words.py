"""How a run's end and a cancel's outcome read to a person: words first, the signal's name
in brackets (never a bare "SIGINT" or "exit -2")."""

from __future__ import annotations

import signal

STOP_STEPS = {
    "dequeued": "taken out of the queue before it started",
    "already-finished": "it had already ended",
    "SIGINT": "its process group was interrupted (SIGINT)",
    "SIGTERM": "its process group was stopped (SIGTERM), as it did not end on an interrupt",
    "SIGKILL": "its process group was killed (SIGKILL), as it did not end on an interrupt "
               "or SIGTERM",
    "sandbox-unreachable": "its sandbox did not answer, so the sandbox was retired",
}


def stop_words(step: str) -> str:
    """What a cancel took, e.g. "its process group was interrupted (SIGINT)"; other steps ("stopped while
    uploading", "still stopping (it was running)") already read as words."""
    return STOP_STEPS.get(step, step)


def exit_words(code: int | None) -> str:
    """"exit code 3", "ended by an interrupt (SIGINT)" for a negative code, or ""."""
    if code is None:
        return ""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"ended by signal {-code}"
    return {"SIGINT": "ended by an interrupt (SIGINT)"}.get(name, f"ended by {name}")
