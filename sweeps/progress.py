"""What a running sweep looks like from outside: counts and the best trial so far.

Library code only produces :class:`SweepSnapshot` values; the CLI renders them with
rich, tests collect them in a list, and the default sink logs them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSnapshot:
    """Counts of trials by state, and the best trial so far."""

    name: str
    metric: str
    goal: str
    total: int
    completed: int = 0
    stopped_early: int = 0
    failed: int = 0
    running: int = 0
    best_value: float | None = None
    best_trial: str | None = None
    best_config: dict[str, Any] = field(default_factory=dict)
    last_event: str = ""

    @property
    def done(self) -> int:
        return self.completed + self.stopped_early + self.failed

    @property
    def pending(self) -> int:
        return max(self.total - self.done - self.running, 0)


class ProgressSink(Protocol):
    def update(self, snapshot: SweepSnapshot) -> None: ...


class LoggingProgress:
    """Logs each event at INFO level."""

    def update(self, snapshot: SweepSnapshot) -> None:
        if snapshot.last_event:
            logger.info(
                "%s: %d/%d done (%d stopped early, %d failed), %d running; best %s=%s",
                snapshot.last_event, snapshot.done, snapshot.total, snapshot.stopped_early,
                snapshot.failed, snapshot.running, snapshot.metric, snapshot.best_value,
            )
