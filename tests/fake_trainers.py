"""User trainers (``trainer: tests.fake_trainers:NAME``) for end-to-end tests of the trainer contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def scripted(params: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> dict[str, float]:
    """Reports a rising curve; ``mode`` makes it misbehave the ways real trainers do."""
    mode = params.get("mode", "ok")
    for epoch in range(1, int(params.get("epochs", 3)) + 1):
        accuracy = 0.5 + 0.1 * epoch
        if mode == "nan" and epoch == 2:
            accuracy = float("nan")
        if mode == "raise" and epoch == 2:
            raise RuntimeError("out of memory (scripted)")
        if mode == "misspelled":
            report({"epoch": epoch, "val_acc": accuracy})
        else:
            report({"epoch": epoch, "val_accuracy": accuracy, "val_loss": 1.0 - accuracy})
    return {"test_accuracy": 0.75}
