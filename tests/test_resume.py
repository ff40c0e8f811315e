"""Which sweeps `sweep resume` accepts, and the reasons it gives when it refuses (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeps.resume import (
    DRIVER_TAG, RESULTS_DIR_TAG, SPEC_ARTIFACT, ResumeError, find_resumable, search_changes,
)
from sweeps.validate import load_spec_text
from tracking import SweepTracker

SWEEP = """
name: resumable
parameters:
  epochs: 4
  lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0e-1}
search: {trials: 4}
resources: {max_concurrent_trials: 2}
"""


def _parent(uri: str, tmp_path: Path, sweep_id: str = "s1", status: str | None = None, driver: str = "elsewhere:1",
            spec_text: str = SWEEP) -> SweepTracker:
    spec = load_spec_text(spec_text, "s.yaml")
    tracker = SweepTracker(uri, spec.experiment_name(), spec.name, sweep_id)
    tracker.start()
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    tracker.set_tags({RESULTS_DIR_TAG: str(results), DRIVER_TAG: driver})
    tracker.log_text(yaml.safe_dump(spec.model_dump(mode="json")), SPEC_ARTIFACT)
    if status is not None:
        tracker.finish(status)
    return tracker


def test_a_killed_sweep_is_found_with_its_state(tracking_uri: str, tmp_path: Path) -> None:
    _parent(tracking_uri, tmp_path, "old", status="completed")
    tracker = _parent(tracking_uri, tmp_path, "new")  # left RUNNING: its driver was killed
    target = find_resumable(tracking_uri, "resumable")
    assert (target.sweep_id, target.parent_run_id) == ("new", tracker.parent_run_id)
    assert target.results_dir == str(tmp_path / "results")
    assert target.spec.parameters["lr"].max == pytest.approx(0.1)


def test_an_interrupted_sweep_is_resumable(tracking_uri: str, tmp_path: Path) -> None:
    _parent(tracking_uri, tmp_path, "s1", status="interrupted")
    assert find_resumable(tracking_uri, "resumable").sweep_id == "s1"


def test_unknown_and_completed_sweeps_are_refused(tracking_uri: str, tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="no sweep named 'other'"):
        find_resumable(tracking_uri, "other")
    _parent(tracking_uri, tmp_path, "s1", status="completed")
    with pytest.raises(ResumeError, match=r"sweep 'resumable' \(id s1\) completed: nothing to resume"):
        find_resumable(tracking_uri, "resumable")


def test_a_changed_search_is_refused_with_the_keys(tracking_uri: str, tmp_path: Path) -> None:
    _parent(tracking_uri, tmp_path)
    changed = load_spec_text(SWEEP.replace("max: 1.0e-1", "max: 0.5").replace("trials: 4", "trials: 6"), "s.yaml")
    with pytest.raises(ResumeError) as e:
        find_resumable(tracking_uri, "resumable", changed)
    text = str(e.value)
    assert "changed search" in text
    assert "parameters.lr.max: 0.1 -> 0.5" in text and "search.trials: 4 -> 6" in text


def test_resources_may_change(tracking_uri: str, tmp_path: Path) -> None:
    _parent(tracking_uri, tmp_path)
    more = load_spec_text(SWEEP.replace("max_concurrent_trials: 2", "max_concurrent_trials: 8"), "s.yaml")
    target = find_resumable(tracking_uri, "resumable", more)
    assert target.spec.resources.max_concurrent_trials == 8


def test_missing_results_folder_is_refused(tracking_uri: str, tmp_path: Path) -> None:
    _parent(tracking_uri, tmp_path)
    (tmp_path / "results").rmdir()
    with pytest.raises(ResumeError, match="Tune's state is not at"):
        find_resumable(tracking_uri, "resumable")


def test_a_live_driver_is_not_resumed_twice(tracking_uri: str, tmp_path: Path) -> None:
    import platform
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "sweep"])
    try:
        _parent(tracking_uri, tmp_path, driver=f"{platform.node()}:{proc.pid}")
        with pytest.raises(ResumeError, match="is still running"):
            find_resumable(tracking_uri, "resumable")
    finally:
        proc.kill()
        proc.wait()
    assert find_resumable(tracking_uri, "resumable").sweep_id == "s1"  # once it is gone


def test_search_changes_ignores_blocks_that_may_change() -> None:
    a = load_spec_text(SWEEP, "s.yaml")
    b = load_spec_text(SWEEP + "fault_tolerance: {max_failures: 5}\ntracking: {flush_seconds: 9}\n", "s.yaml")
    assert search_changes(a, b) == []
