"""Riding out a tracking server that is briefly unreachable.

A trial must neither die nor lose metrics because the MLflow server restarts. Two
mechanisms, used by :class:`tracking.runs.TrialRun`:

- :class:`ServerRetry` retries a write that could not reach the server, with capped
  exponential backoff, for up to ``patience_s`` seconds, then gives up with the last error.
  Only connection failures, time-outs and the "try again" HTTP statuses (429, 502, 503,
  504) count: a rejected request (bad parameter, permission) fails at once.
- :func:`single_attempt` makes MLflow's HTTP client try once, without its own retries
  (seven by default, minutes of blocking), so that a trial keeps training while its epoch
  metrics wait in memory; the trial checkpoint holds them too (its learning curves), so a
  worker that dies meanwhile loses nothing either.

Replays are idempotent: a metric keeps the timestamp it was first buffered with, and
MLflow stores a (key, step, timestamp, value) it already has only once.

Example:
    >>> retry = ServerRetry(patience_s=0.0)
    >>> retry.call("answer", lambda: 42)
    42
    >>> is_unreachable(ConnectionRefusedError("[Errno 111] Connection refused"))
    True
    >>> is_unreachable(ValueError("bad value"))
    False
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 502, 503, 504})  # HTTP statuses that mean "not now", not "no"
_RETRY_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})  # MLflow error codes of the same
_UNREACHABLE_TEXT = ("Max retries exceeded", "Connection refused", "Connection reset", "Connection aborted",
                     "RemoteDisconnected", "timed out", "Name or service not known", "too many 50", "too many 429")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the tracking server could not be reached (or asked to retry later).

    MLflow wraps transport errors in ``MlflowException("API request to ... failed with
    exception ...")``; the original ``requests`` / ``urllib3`` error is in its context.
    """
    import requests

    for e in _chain(exc):
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.RetryError, ConnectionError, TimeoutError)):
            return True
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in RETRY_STATUSES:
            return True
        if getattr(e, "error_code", None) in _RETRY_CODES:
            return True
        text = str(e)
        if text.startswith("API request to") and any(s in text for s in _UNREACHABLE_TEXT):
            return True
    return False


@contextlib.contextmanager
def single_attempt(timeout_s: int | None = None) -> Iterator[None]:
    """MLflow's HTTP client tries once (no retries of its own) in this block, within ``timeout_s``
    when given (else MLflow's own time-out).

    MLflow reads these variables on every request; the block restores them afterwards.
    """
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    if timeout_s is not None:
        wanted["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(timeout_s))
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class ServerRetry:
    """Retry writes to an unreachable tracking server for up to ``patience_s`` seconds.

    Args:
        patience_s: how long one call keeps retrying before the last error is raised (>= 0).
        first_delay_s: the first wait; each next one doubles, up to ``max_delay_s``.
        max_delay_s: the longest wait between two attempts.
        sleep: the waiting function (tests pass a fake clock's).
        clock: monotonic seconds.

    Example:
        >>> attempts = []
        >>> def flaky():
        ...     attempts.append(1)
        ...     if len(attempts) < 3:
        ...         raise ConnectionRefusedError("Connection refused")
        ...     return "sent"
        >>> ServerRetry(patience_s=10, sleep=lambda s: None).call("log_batch", flaky), len(attempts)
        ('sent', 3)
    """

    def __init__(self, patience_s: float = 600.0, first_delay_s: float = 0.5, max_delay_s: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        if patience_s < 0:
            raise ValueError(f"patience_s={patience_s!r}: must be >= 0")
        if not 0 < first_delay_s <= max_delay_s:
            raise ValueError(f"first_delay_s={first_delay_s!r}, max_delay_s={max_delay_s!r}: "
                             "need 0 < first_delay_s <= max_delay_s")
        self.patience_s = patience_s
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep
        self._clock = clock
        self.waited_s = 0.0  # total time spent waiting for the server, over all calls

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried while the server is unreachable and patience lasts."""
        deadline = self._clock() + self.patience_s
        delay = self.first_delay_s
        failures = 0
        while True:
            try:
                with single_attempt():
                    result = fn(*args, **kwargs)
            except Exception as e:
                if not is_unreachable(e):
                    raise
                left = deadline - self._clock()
                if left <= 0:
                    logger.error("%s: tracking server still unreachable after %.0f s; giving up", what,
                                 self.patience_s)
                    raise
                failures += 1
                if failures == 1:
                    logger.warning("%s: tracking server unreachable (%s); retrying for up to %.0f s",
                                   what, _short(e), self.patience_s)
                wait = min(delay, left)
                self._sleep(wait)
                self.waited_s += wait
                delay = min(delay * 2, self.max_delay_s)
                continue
            if failures:
                logger.warning("%s: tracking server reachable again after %d failed attempt(s)", what, failures)
            return result


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
