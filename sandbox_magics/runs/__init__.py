"""Runs: a submitted command's state, bounded log and history."""

from .artifacts import Artifact
from .log import LogBuffer
from .registry import RunRegistry
from .run import Run, RunSpec
from .state import RunState, Stage

__all__ = ["Artifact", "LogBuffer", "Run", "RunRegistry", "RunSpec", "RunState", "Stage"]
