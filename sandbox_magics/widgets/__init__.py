"""ipywidgets views fed by polling the manager (2 Hz at most): dashboard, run log, artifacts."""

from .artifacts import ArtifactsView
from .dashboard import Dashboard
from .run_log import RunLogView

__all__ = ["ArtifactsView", "Dashboard", "RunLogView"]
