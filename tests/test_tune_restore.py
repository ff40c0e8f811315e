"""Resuming a trial whose checkpoint the saved Tune state names is gone (no Ray cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs
import pytest
import torch

from sweeps.tune import META_FILE, STATE_FILE, replace_missing_checkpoint

FS = pyarrow.fs.LocalFileSystem()


def _checkpoint(trial: Path, index: int, epoch: int, truncate: bool = False) -> Path:
    folder = trial / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    torch.save({"epoch": epoch, "weights": torch.arange(1000.0)}, folder / STATE_FILE)
    (folder / META_FILE).write_text(json.dumps({"mlflow_run_id": "r", "epoch": epoch}))
    if truncate:  # a kill while the worker was uploading it
        data = (folder / STATE_FILE).read_bytes()
        (folder / STATE_FILE).write_bytes(data[: len(data) // 2])
    return folder


def _epoch(folder: Path) -> int:
    return json.loads((folder / META_FILE).read_text())["epoch"]


def test_the_newest_intact_later_checkpoint_takes_the_missing_ones_place(tmp_path: Path) -> None:
    named = tmp_path / "checkpoint_000002"  # deleted by Tune after it registered checkpoint_000003
    newer = _checkpoint(tmp_path, 3, epoch=4)
    _checkpoint(tmp_path, 4, epoch=5, truncate=True)
    _checkpoint(tmp_path, 1, epoch=2)  # older ones are never taken

    assert replace_missing_checkpoint(FS, str(named)) == str(newer)
    assert _epoch(named) == 4 and not newer.exists()
    state = torch.load(named / STATE_FILE, weights_only=True)
    assert state["epoch"] == 4 and torch.equal(state["weights"], torch.arange(1000.0))
    assert (tmp_path / "checkpoint_000004").exists(), "the truncated one is left for Tune to overwrite"


@pytest.mark.parametrize("case", ["present", "nothing_later", "only_truncated", "missing_meta", "not_a_checkpoint"])
def test_nothing_is_moved_when_nothing_is_needed_or_possible(tmp_path: Path, case: str) -> None:
    named = tmp_path / "checkpoint_000002"
    if case == "present":
        _checkpoint(tmp_path, 2, epoch=3)
        _checkpoint(tmp_path, 3, epoch=4)
    elif case == "nothing_later":
        _checkpoint(tmp_path, 1, epoch=2)
    elif case == "only_truncated":
        _checkpoint(tmp_path, 3, epoch=4, truncate=True)
    elif case == "missing_meta":
        (_checkpoint(tmp_path, 3, epoch=4) / META_FILE).unlink()
    else:
        named = tmp_path / "somewhere_else"
        _checkpoint(tmp_path, 3, epoch=4)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert replace_missing_checkpoint(FS, str(named)) is None
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    if case == "present":
        assert _epoch(named) == 3


def test_a_missing_trial_folder_is_left_to_tunes_own_error(tmp_path: Path) -> None:
    assert replace_missing_checkpoint(FS, str(tmp_path / "gone" / "checkpoint_000001")) is None
