"""ipywidgets views fed by polling the manager (2 Hz at most): dashboard, run log, artifacts,
sweep."""

from .artifacts import ArtifactsView
from .dashboard import Dashboard
from .run_log import RunLogView
from .sweep_view import SweepView

__all__ = ["ArtifactsView", "Dashboard", "RunLogView", "SweepView"]
