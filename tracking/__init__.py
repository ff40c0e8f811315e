"""Everything MLflow: runs, nesting, tags, batched logging, artifacts and queries.

Only this package imports MLflow. It talks to the store through ``MlflowClient``
(never the fluent API's global active run), so that Ray actors reused between
trials cannot leak one trial's run into the next.
"""

from tracking.runs import SweepTracker, TrialRun, TrialStatus, client_for, resolve_tracking_uri
from tracking import tags

__all__ = ["SweepTracker", "TrialRun", "TrialStatus", "client_for", "resolve_tracking_uri", "tags"]
