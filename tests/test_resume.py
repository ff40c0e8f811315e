"""Which sweeps `sweep resume` accepts, and the reasons it gives when it refuses (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeps.resume import (
    DRIVER_TAG, RESULTS_DIR_TAG, SOURCE_ARTIFACT, SPEC_ARTIFACT, VARIANTS_ADDED_TAG, ResumeError, find_resumable,
    log_spec, record_added_variants, search_changes,
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
    log_spec(tracker, spec, None)  # as run_sweep
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


STUDY = SWEEP + """
variants:
  none: {}
  l2: {l2: {distribution: log_uniform, min: 1.0e-6, max: 1.0e-3}}
"""


def _artifact(tracker: SweepTracker, path: str, tmp_path: Path) -> str:
    local = tracker.client.download_artifacts(tracker.parent_run_id, path, str(tmp_path / "dl"))
    return Path(local).read_text()


def test_a_study_may_gain_variants_anywhere_but_first(tracking_uri: str, tmp_path: Path) -> None:
    tracker = _parent(tracking_uri, tmp_path, spec_text=STUDY, status="interrupted")
    # anywhere but first (that would change the baseline): stages do not depend on their order
    text = STUDY.replace("  l2:", "  l1: {l1: 1.0e-5}\n  l2:") + "  dropout: {dropout: 0.3}\n"
    target = find_resumable(tracking_uri, "resumable", load_spec_text(text, "s.yaml"), text)
    assert target.added_variants == ("l1", "dropout")
    assert list(target.spec.variants) == ["none", "l1", "l2", "dropout"]

    tracker.reopen(target.parent_run_id)
    record_added_variants(tracker, target, target.spec, text)
    assert tracker.client.get_run(target.parent_run_id).data.tags[VARIANTS_ADDED_TAG] == "l1,dropout"
    assert _artifact(tracker, SOURCE_ARTIFACT, tmp_path) == text
    # the next resume compares against the extended study: the same file changes nothing
    stored = yaml.safe_load(_artifact(tracker, SPEC_ARTIFACT, tmp_path))
    assert list(stored["variants"]) == ["none", "l1", "l2", "dropout"]
    again = find_resumable(tracking_uri, "resumable", load_spec_text(text, "s.yaml"), text)
    assert again.added_variants == ()


def test_a_completed_study_may_be_extended_but_not_rerun(tracking_uri: str, tmp_path: Path) -> None:
    _parent(tracking_uri, tmp_path, spec_text=STUDY, status="completed")
    with pytest.raises(ResumeError, match="completed: nothing to resume.*with new variants extends the study"):
        find_resumable(tracking_uri, "resumable", load_spec_text(STUDY, "s.yaml"), STUDY)
    text = STUDY + "  l1: {l1: 1.0e-5}\n"
    assert find_resumable(tracking_uri, "resumable", load_spec_text(text, "s.yaml"), text).added_variants == ("l1",)


def test_naming_the_implicit_baseline_is_no_change(tracking_uri: str, tmp_path: Path) -> None:
    _parent(tracking_uri, tmp_path, spec_text=STUDY, status="interrupted")
    text = STUDY.replace("  none: {}\n", "  l1: {l1: 1.0e-5}\n  none: {}\n") + "baseline_variant: none\n"
    target = find_resumable(tracking_uri, "resumable", load_spec_text(text, "s.yaml"), text)
    assert target.added_variants == ("l1",) and target.spec.baseline() == "none"


def test_added_variants_accumulate_on_the_parent(tracking_uri: str, tmp_path: Path) -> None:
    tracker = _parent(tracking_uri, tmp_path, spec_text=STUDY, status="interrupted")
    tracker.set_tags({VARIANTS_ADDED_TAG: "l1"})
    text = STUDY + "  dropout: {dropout: 0.3}\n"
    target = find_resumable(tracking_uri, "resumable", load_spec_text(text, "s.yaml"), text)
    record_added_variants(tracker, target, target.spec, text)
    assert tracker.client.get_run(target.parent_run_id).data.tags[VARIANTS_ADDED_TAG] == "l1,dropout"


@pytest.mark.parametrize(("text", "message"), [
    (STUDY.replace("max: 1.0e-3", "max: 1.0e-2") + "  l1: {l1: 1.0e-5}\n",
     r"changed search: variants\.l2\.l2\.max: 0\.001 -> 0\.01"),
    (STUDY.replace("  none: {}\n", "") + "  l1: {l1: 1.0e-5}\n", r"\['none'\] of the stored study are missing"),
    (STUDY.replace("  none: {}\n", "  l1: {l1: 1.0e-5}\n  none: {}\n"), r"baseline would change from 'none' to 'l1'"),
    (STUDY + "  l1: {l1: 1.0e-5}\nbaseline_variant: l1\n", r"baseline would change from 'none' to 'l1'"),
])
def test_changed_dropped_or_reordered_variants_are_refused(tracking_uri: str, tmp_path: Path, text: str,
                                                           message: str) -> None:
    _parent(tracking_uri, tmp_path, spec_text=STUDY, status="interrupted")
    with pytest.raises(ResumeError, match=message):
        find_resumable(tracking_uri, "resumable", load_spec_text(text, "s.yaml"), text)


def test_variants_cannot_be_added_to_a_sweep_without_them(tracking_uri: str, tmp_path: Path) -> None:
    _parent(tracking_uri, tmp_path, status="interrupted")
    with pytest.raises(ResumeError, match="the stored sweep has none"):
        find_resumable(tracking_uri, "resumable", load_spec_text(STUDY, "s.yaml"), STUDY)
