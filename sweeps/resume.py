"""Find an interrupted sweep and check that it may be resumed.

``sweep resume NAME`` (or ``sweep resume FILE``) continues the newest execution of a sweep
whose driver was interrupted or killed: same sweep id, same parent run, Tune's own state
restored from the results folder. This module only reads MLflow and the files; the resuming
itself is :func:`sweeps.tune.run_sweep` with ``resume=``.

A changed search is refused: Optuna's study and Tune's trials were built from the stored
spec, and mixing two search spaces in one study would make the comparison meaningless.
What does not change the search (resources, retries, flush interval, description) may differ.
A study may also gain variants, even once it has completed: each variant is searched in its
own stage, with the same budget and search seed, so the finished stages stay valid and only the
new variants run. The parent run then keeps the extended file, and ``sweep.variants_added``
names what was added after the start.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from sweeps.spec import SweepSpec
from tracking import client_for
from tracking import tags as T
from tracking.artifacts import read_text_artifact

logger = logging.getLogger(__name__)

SPEC_ARTIFACT = "spec.resolved.yaml"  # the resolved spec the parent run keeps
SOURCE_ARTIFACT = "sweep.yaml"  # the file as the user wrote it
MAY_CHANGE = ("description", "resources", "fault_tolerance", "tracking")  # blocks a resume may change
RESULTS_DIR_TAG = "sweep.results_dir"  # on the parent: where Tune keeps the sweep's state
DRIVER_TAG = "sweep.driver"  # on the parent: host and pid of the process driving the sweep
VARIANTS_ADDED_TAG = "sweep.variants_added"  # on the parent: variants a resume added, comma-separated


class ResumeError(ValueError):
    """The sweep cannot be resumed; the message says why and what to do instead."""


@dataclass(frozen=True)
class ResumeTarget:
    """The execution to continue."""

    sweep_id: str
    parent_run_id: str
    results_dir: str
    spec: SweepSpec  # the stored spec (with resources etc. taken from the new file, when given)
    source_text: str | None
    added_variants: tuple[str, ...] = ()  # variants the new file adds to the stored study


def driver_tag() -> str:
    """This process, as recorded on the parent run (``host:pid``)."""
    return f"{platform.node()}:{os.getpid()}"


def _driver_alive(tag: str | None) -> bool:
    if not tag or ":" not in tag:
        return False
    host, _, pid = tag.rpartition(":")
    if host != platform.node() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"sweep" in cmdline


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    return {prefix: value}


def search_changes(stored: SweepSpec, new: SweepSpec) -> list[str]:
    """The keys whose values differ between two specs, outside the blocks a resume may change.

    Example:
        >>> a = SweepSpec(name="s", parameters={"lr": 0.1})
        >>> search_changes(a, SweepSpec(name="s", parameters={"lr": 0.2}))
        ['parameters.lr.value: 0.1 -> 0.2']
        >>> search_changes(a, a.model_copy(update={"description": "other"}))
        []
    """
    old_flat = {k: v for k, v in _flatten(stored.model_dump(mode="json")).items() if k.split(".")[0] not in MAY_CHANGE}
    new_flat = {k: v for k, v in _flatten(new.model_dump(mode="json")).items() if k.split(".")[0] not in MAY_CHANGE}
    changes = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key, "<absent>") != new_flat.get(key, "<absent>"):
            changes.append(f"{key}: {old_flat.get(key, '<absent>')} -> {new_flat.get(key, '<absent>')}")
    return changes


def added_variants(stored: SweepSpec, new: SweepSpec) -> tuple[str, ...]:
    """The variants ``new`` adds to ``stored``'s study, which a resume may run.

    Each variant is its own stage (its own Tune experiment and Optuna study, with the same
    budget and search seed), so stages do not depend on each other or on their order: a new
    variant may go anywhere in the list, and runs when the resumed study reaches it.

    Raises:
        ResumeError: ``new`` drops a stored variant, changes the baseline, or adds variants to
            a sweep that had none (its one stage is unnamed).

    Example:
        >>> a = SweepSpec(name="s", parameters={"lr": 0.1}, variants={"none": {}, "l2": {"l2": 1e-4}})
        >>> added_variants(a, a.model_copy(update={"variants": {"none": {}, "l1": {"l1": 1e-5}, **a.variants}}))
        ('l1',)
    """
    old, names = list(stored.variants), list(new.variants)
    added = tuple(n for n in names if n not in stored.variants)
    if not added:
        return ()
    if not old:
        raise ResumeError("variants: the stored sweep has none, so variants cannot be added on resume "
                          "(a sweep without variants runs one unnamed stage); run the study with `sweep run`")
    missing = [n for n in old if n not in new.variants]
    if missing:
        raise ResumeError(f"variants: {missing} of the stored study are missing from the new file; "
                          "a resume may add variants, not remove them")
    if new.baseline() != stored.baseline():
        raise ResumeError(f"variants: the baseline would change from {stored.baseline()!r} to {new.baseline()!r} "
                          "(the first variant is the baseline unless baseline_variant says otherwise); "
                          f"add the new variants after {stored.baseline()!r} or set baseline_variant")
    return added


def _parents(client: MlflowClient, name: str) -> list[Run]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    return client.search_runs(
        experiments, filter_string=f"tags.`{T.SWEEP_NAME}` = '{name}' and tags.`{T.ROLE}` = 'parent'",
        order_by=["attributes.start_time DESC"], max_results=50,
    )


def find_resumable(uri: str, name: str, new_spec: SweepSpec | None = None, new_source: str | None = None,
                   results_dir: str | None = None) -> ResumeTarget:
    """The newest execution of sweep ``name`` in ``uri``, checked for resuming.

    Raises:
        ResumeError: no such sweep; its newest execution completed (and ``new_spec`` adds no
            variants); its driver still runs;
            Tune's state is gone; or ``new_spec`` changes the search.
    """
    client = client_for(uri)
    parents = _parents(client, name)
    if not parents:
        raise ResumeError(f"no sweep named {name!r} in {uri}: nothing to resume (start one with `sweep run FILE`)")
    parent = parents[0]
    t = parent.data.tags
    sweep_id = t[T.SWEEP_ID]
    status = t.get(T.SWEEP_STATUS, "")
    if parent.info.status == "RUNNING" and _driver_alive(t.get(DRIVER_TAG)):
        raise ResumeError(f"sweep {name!r} (id {sweep_id}) is still running: its driver {t[DRIVER_TAG]} is alive; "
                          f"stop it first (Ctrl-C, or `sweep stop` for a job)")
    text = read_text_artifact(client, parent.info.run_id, SPEC_ARTIFACT)
    if text is None:
        raise ResumeError(f"sweep {name!r} (id {sweep_id}): its parent run has no {SPEC_ARTIFACT}, "
                          "so the search it ran is unknown; it cannot be resumed")
    stored = SweepSpec.model_validate(yaml.safe_load(text))
    spec = stored
    added: tuple[str, ...] = ()
    if new_spec is not None:
        added = added_variants(stored, new_spec)
        # the stored study's part of the new file: its variants, and its baseline when that resolves
        # the same (naming the implicit baseline, the first variant, is no change)
        comparable = new_spec.model_copy(update={
            "variants": {k: v for k, v in new_spec.variants.items() if k not in added},
            "baseline_variant": (stored.baseline_variant if stored.baseline() == new_spec.baseline()
                                 else new_spec.baseline_variant),
        })
        changes = search_changes(stored, comparable)
        if changes:
            raise ResumeError(
                f"cannot resume sweep {name!r} (id {sweep_id}) with a changed search: "
                + "; ".join(changes[:10]) + (f"; and {len(changes) - 10} more" if len(changes) > 10 else "")
                + f". Only {', '.join(MAY_CHANGE)} may change on resume, and variants may be added; "
                "run the new search with `sweep run`."
            )
        spec = new_spec
    if status == "completed" and not added:
        raise ResumeError(f"sweep {name!r} (id {sweep_id}) completed: nothing to resume; "
                          "`sweep run FILE` starts a new execution, and `sweep resume FILE` with new "
                          "variants extends the study")
    folder = results_dir or t.get(RESULTS_DIR_TAG)
    if not folder or not _exists(folder):
        raise ResumeError(f"sweep {name!r} (id {sweep_id}): Tune's state is not at {folder!r} "
                          "(results folder moved or deleted?); pass --results-dir")
    source = new_source if new_source is not None else read_text_artifact(client, parent.info.run_id, SOURCE_ARTIFACT)
    logger.info("resuming sweep %s (id %s, parent run %s, status %s)", name, sweep_id, parent.info.run_id, status)
    return ResumeTarget(sweep_id, parent.info.run_id, folder, spec, source, added)


def log_spec(tracker: Any, spec: SweepSpec, source_text: str | None) -> None:
    """The parent run's copies of the sweep file as written and of the resolved spec (in the
    file's key order: variants run in it), which :func:`find_resumable` compares against."""
    if source_text is not None:
        tracker.log_text(source_text, SOURCE_ARTIFACT)
    tracker.log_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), SPEC_ARTIFACT)


def record_added_variants(tracker: Any, target: ResumeTarget, spec: SweepSpec, source_text: str | None) -> None:
    """On the reopened parent run: the extended study's file and resolved spec, and which variants were added.

    ``tracker`` is the sweep's :class:`tracking.SweepTracker`, already reopened. Without added
    variants nothing changes. The tag accumulates over resumes (``l1,batchnorm``).
    """
    if not target.added_variants:
        return
    before = [n for n in tracker.client.get_run(target.parent_run_id).data.tags.get(VARIANTS_ADDED_TAG, "").split(",")
              if n]
    tracker.set_tags({VARIANTS_ADDED_TAG: ",".join(before + [n for n in target.added_variants if n not in before])})
    log_spec(tracker, spec, source_text)
    logger.info("sweep %s: variants %s added on resume; the parent run keeps the extended spec",
                spec.name, ", ".join(target.added_variants))


def _exists(folder: str) -> bool:
    if "://" in folder:  # remote storage (s3://...): Tune checks it when it restores
        return True
    return Path(folder).is_dir()
