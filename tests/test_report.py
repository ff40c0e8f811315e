"""The sweep report (``sweeps/report.py``) against a fake MLflow store (``tests/fixtures_report.py``).

The numbers are recomputed here from the repeat runs with numpy/scipy (not with
``sweeps.stats``) and compared with what the report shows. The HTML is opened in headless
Chromium through Playwright; without Playwright or ``/usr/bin/chromium`` that test fails
with a message saying what to install.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from sweeps import report as R
from tests.fixtures_report import FakeSweep, build_fake_sweep, repeat_values
from tracking import SweepTracker, client_for

CHROMIUM = "/usr/bin/chromium"


def _store(tmp: Path, template: Path) -> str:
    db = tmp / "mlflow.db"
    shutil.copyfile(template, db)
    return f"sqlite:///{db}"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, _empty_store: Path) -> FakeSweep:
    """Two variants (none = baseline, dropout) x 3 search trials, 3 seeds of rank1 each."""
    tmp = tmp_path_factory.mktemp("report-study")
    return build_fake_sweep(_store(tmp, _empty_store), tmp / "artifacts")


@pytest.fixture(scope="module")
def report(study: FakeSweep) -> R.Report:
    return R.build_report(study.uri, study.sweep_id)


@pytest.fixture(scope="module")
def written(study: FakeSweep, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return R.write_report(study.client, study.sweep_id, out_dir=tmp_path_factory.mktemp("report-out"))


def _by_name(report: R.Report) -> dict[str, R.VariantResult]:
    return {v.name: v for v in report.variants}


# ---- numbers ------------------------------------------------------------------------------------
def test_variant_statistics_agree_with_repeat_runs(study: FakeSweep, report: R.Report) -> None:
    assert report.primary_metric == "test_accuracy"
    assert [v.name for v in report.variants] == ["none", "dropout"]
    assert report.baseline == "none"
    html = R.render_html(report)
    for v in report.variants:
        xs = np.array(repeat_values(study.client, study, v.name, "test_accuracy"))
        n = len(xs)
        mean, se = xs.mean(), xs.std(ddof=1) / math.sqrt(n)
        half = st.t.ppf(0.975, n - 1) * se
        assert n == v.n == 3
        assert v.values == pytest.approx(list(xs))
        assert v.mean == pytest.approx(mean)
        assert v.se == pytest.approx(se)
        assert (v.ci_low, v.ci_high) == (pytest.approx(mean - half), pytest.approx(mean + half))
        assert f"{mean:.4g} ± {se:.2g}" in html  # shown as computed
        assert f"[{mean - half:.4g}, {mean + half:.4g}]" in html


def test_welch_test_against_baseline(study: FakeSweep, report: R.Report) -> None:
    a = np.array(repeat_values(study.client, study, "dropout", "test_accuracy"))
    b = np.array(repeat_values(study.client, study, "none", "test_accuracy"))
    t_res = st.ttest_ind(a, b, equal_var=False)
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    g = (a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (len(a) + len(b)) - 9))
    v = _by_name(report)
    assert v["none"].comparison is None
    c = v["dropout"].comparison
    assert c is not None
    assert c.p_value == pytest.approx(t_res.pvalue)
    assert c.mean_difference == pytest.approx(a.mean() - b.mean())
    assert c.hedges_g == pytest.approx(g)
    assert R._fmt_p(t_res.pvalue) in R.render_html(report)
    assert v["dropout"].differs and "dropout" in v["dropout"].differs  # a param the baseline does not have
    assert "lr" in v["dropout"].params and "seed" not in v["dropout"].params


def test_budget_bias_variance_and_verdicts(study: FakeSweep, report: R.Report) -> None:
    b = report.budget
    assert b.search_by_status == {"completed": 4, "stopped_early": 1, "failed": 1}
    assert b.repeat_by_status == {"completed": 6}
    assert b.summary_runs == 2 and b.planned_trials == 6
    assert b.total_epochs == study.epochs
    assert b.epoch_seconds == pytest.approx(study.epoch_seconds)
    assert (b.cpu_seconds, b.cpu_runs, b.trial_runs) == (pytest.approx(study.cpu_seconds), 12, 12)
    rows = dict(R._tables(report)["budget"][1])
    cpu_row = next(k for k in rows if k.startswith("CPU time"))
    assert rows[cpu_row] == f"{study.cpu_seconds:.1f} s" and "recorded by" not in cpu_row  # every run has it
    older = dataclasses.replace(report, budget=dataclasses.replace(b, cpu_seconds=40.0, cpu_runs=5))
    assert rows != (partial := dict(R._tables(older)["budget"][1]))
    assert partial["CPU time: every trial process's CPU seconds, all threads (start-up, epochs, evaluation)"
                   " — recorded by 5 of 12 runs"] == "40.0 s"
    none = dataclasses.replace(report, budget=dataclasses.replace(b, cpu_seconds=0.0, cpu_runs=0))
    assert "– (not recorded by these runs)" in dict(R._tables(none)["budget"][1]).values()
    parent = study.client.get_run(study.parent_run_id).info
    assert b.wall_seconds == pytest.approx((parent.end_time - parent.start_time) / 1000)
    runs = study.client.search_runs([study.experiment_id], "tags.`sweep.stage` = 'repeat'")
    for v in report.variants:
        mine = [r for r in runs if r.data.tags["sweep.variant"] == v.name]
        bv = v.bias_variance
        assert bv is not None and bv.source == "repeat runs" and bv.n_runs == len(mine) == 3
        for key, got in (("diag_train_error", bv.train_error), ("diag_val_error", bv.val_error),
                         ("diag_variance", bv.variance)):
            assert got == pytest.approx(np.mean([r.data.metrics[key] for r in mine]))
    assert _by_name(report)["none"].bias_variance.verdict == "high_variance"  # type: ignore[union-attr]
    assert _by_name(report)["dropout"].bias_variance.verdict == "good_fit"  # type: ignore[union-attr]


# ---- findings -----------------------------------------------------------------------------------
def test_findings_name_winner_and_significance(report: R.Report) -> None:
    v = _by_name(report)
    text = "\n".join(report.findings)
    diff_pp = (v["dropout"].mean - v["none"].mean) * 100
    assert report.findings[0].startswith("Best test_accuracy (higher is better): variant dropout")
    assert f"{diff_pp:+.2f} percentage points" in report.findings[0]
    assert "Welch's two-sided t-test" in text and "significant at 0.05" in text
    assert "not significant" not in text  # the fixture's effect (4 points, SD 1 point) is significant
    assert "Variant none over-fits (high variance)" in text
    assert "fewer than 5 seeds" in text  # 3 seeds per variant
    assert "1 of 6 search trials failed" in text


def test_findings_follow_the_numbers(report: R.Report) -> None:
    """Change the numbers, and the sentences change: nothing is canned."""
    v = _by_name(report)
    assert v["dropout"].comparison is not None
    swapped = dataclasses.replace(report, variants=[
        dataclasses.replace(v["none"], mean=v["dropout"].mean + 0.1, ci_low=math.nan, ci_high=math.nan),
        dataclasses.replace(v["dropout"], comparison=dataclasses.replace(v["dropout"].comparison, p_value=0.3,
                                                                         mean_difference=-0.1)),
    ])
    text = "\n".join(R.findings(swapped))
    assert "variant none with" in R.findings(swapped)[0] and "the runner-up dropout" in R.findings(swapped)[0]
    assert "p = 0.3000" in text and "(worse)" in text and "not significant at 0.05" in text


def test_several_variants_are_corrected_with_holm(report: R.Report) -> None:
    v = _by_name(report)
    c = v["dropout"].comparison
    assert c is not None
    # one comparison: no family to correct; the Holm column repeats the p-value
    text = "\n".join(report.findings)
    assert "Holm" not in text
    header, rows, _ = R._tables(report)["results"]
    holm_col = header.index("Holm p")
    assert header[holm_col - 1] == "Welch p" and rows[1][holm_col] == rows[1][holm_col - 1] and rows[0][holm_col] == "–"

    def tested(name: str, p: float) -> R.VariantResult:
        return dataclasses.replace(v["dropout"], name=name, comparison=dataclasses.replace(c, p_value=p))

    # by hand: sorted 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 -> 0.06 (step-down stays monotone)
    three = dataclasses.replace(report, variants=[v["none"], tested("dropout", 0.01), tested("l1", 0.04),
                                                  tested("l2", 0.03)])
    text = "\n".join(R.findings(three))
    assert "After Holm's correction for 3 comparisons (family-wise error rate 0.05), 1 remains significant: " \
           "dropout; no longer significant: l1, l2." in text
    assert "Variant l1 vs baseline none" in text and "p = 0.0400" in text and "(Holm-adjusted p = 0.0600)" in text
    _, rows, marks = R._tables(three)["results"]
    assert [r[holm_col] for r in rows] == ["–", "0.0300", "0.0600", "0.0600"]
    assert all(len(m) == len(header) for m in marks)
    none_left = dataclasses.replace(three, variants=[v["none"], tested("dropout", 0.03), tested("l1", 0.3)])
    assert "none remains significant; no longer significant: dropout." in "\n".join(R.findings(none_left))


def test_findings_say_when_a_variant_trained_longer(report: R.Report, tmp_path: Path, _empty_store: Path) -> None:
    assert not any("epochs, the baseline" in f for f in report.findings)  # same budget: nothing said
    # built from the store, as `sweep report` does: the baseline's epochs are a fixed parameter that
    # the results table leaves out (not searched, not different), and the finding still sees them
    fake = build_fake_sweep(_store(tmp_path, _empty_store), tmp_path / "a", variant_epochs={"dropout": 10})
    rep = R.build_report(fake.uri, fake.sweep_id)
    base, longer = _by_name(rep)["none"], _by_name(rep)["dropout"]
    assert "epochs" not in base.params and longer.params["epochs"] == "10" and "epochs" in longer.differs
    assert ("Variant dropout trained for 10 epochs, the baseline none for 5: part of its difference may "
            "come from its 5 more epochs, not from its regularization.") in rep.findings


# ---- other shapes of sweep ----------------------------------------------------------------------
def test_regression_uses_the_test_twin(tmp_path: Path, _empty_store: Path) -> None:
    fake = build_fake_sweep(_store(tmp_path, _empty_store), tmp_path / "a", task="regression", name="reg")
    rep = R.build_report(fake.uri, "reg")  # by sweep name
    assert (rep.metric, rep.primary_metric, rep.primary_goal) == ("val_mse", "test_mse", "minimize")
    best = min(rep.variants, key=lambda v: v.mean)
    assert f"variant {best.name} with" in rep.findings[0] and "lower is better" in rep.findings[0]
    xs = repeat_values(fake.client, fake, best.name, "test_mse")
    assert best.mean == pytest.approx(np.mean(xs))


def test_single_variant_without_repeats(tmp_path: Path, _empty_store: Path) -> None:
    fake = build_fake_sweep(_store(tmp_path, _empty_store), tmp_path / "a", variants=(None,), seeds=None,
                            name="solo", trials=4, with_failures=False, conditional=True)
    rep = R.build_report(fake.uri, experiment="solo")  # newest sweep of the experiment
    (v,) = rep.variants
    assert v.name == "main" and v.source == "best search trial (no repeats)" and v.n == 1
    assert v.comparison is None and math.isnan(v.se)
    runs = fake.client.search_runs([fake.experiment_id], "tags.`sweep.trial_status` = 'completed'")
    best = max(runs, key=lambda r: r.data.metrics["val_accuracy"])
    assert v.mean == pytest.approx(best.data.metrics["test_accuracy"])
    assert v.bias_variance is not None and v.bias_variance.source == "completed search runs"
    assert "seeds" not in [f.name for f in rep.figures]
    assert any("No repeat runs" in n for n in rep.notes)
    assert rep.budget.repeat_by_status == {}
    assert rep.budget.search_by_status == {"completed": 4}
    # momentum is searched only with sgd: fANOVA runs on the parameters every trial has
    assert any("conditional parameters momentum are left out" in n for n in rep.notes)
    assert "importance" in [f.name for f in rep.figures]
    html = R.render_html(rep)
    assert "best search trial" in html and "Variant main reached test_accuracy" in html


def test_parent_without_children(tmp_path: Path, _empty_store: Path) -> None:
    uri = _store(tmp_path, _empty_store)
    client_for(uri).create_experiment("empty", artifact_location=(tmp_path / "a").as_uri())
    tracker = SweepTracker(uri, "empty", "empty", "s-empty")
    tracker.start("nothing ran")
    tracker.finish("failed")
    rep = R.build_report(uri, "s-empty")
    assert rep.findings == [f"No run of this sweep recorded {rep.primary_metric}: nothing to compare."]
    assert rep.figures == [] and rep.budget.total_epochs == 0
    assert "spec.resolved.yaml" in " ".join(rep.notes)
    assert "<table id='results'>" in R.render_html(rep) and "## Results per variant" in R.render_markdown(rep)


def test_unknown_sweep_is_an_error(study: FakeSweep) -> None:
    with pytest.raises(LookupError, match="no-such-sweep"):
        R.build_report(study.client, "no-such-sweep")


def test_distributions_from_the_resolved_spec() -> None:
    lr = R._distribution({"distribution": "log_uniform", "min": 1e-4, "max": 0.1, "condition": None})
    assert lr.log and R._param_value("0.01", lr) == 0.01
    layers = R._distribution({"distribution": "int_uniform", "min": 1, "max": 5, "step": 2})
    assert layers.step == 2 and R._param_value("3", layers) == 3
    opt = R._distribution({"values": ["sgd", True, None], "distribution": "categorical"})
    assert R._param_value("True", opt) is True and R._param_value("None", opt) is None
    assert R._distribution({"value": 3}) is None  # fixed
    with pytest.raises(ValueError):
        R._param_value("0.5", lr)  # outside [1e-4, 0.1]


# ---- output -------------------------------------------------------------------------------------
def test_write_report_files_and_parent_artifacts(study: FakeSweep, written: tuple[Path, Path],
                                                 report: R.Report) -> None:
    html_path, md_path = written
    assert html_path.name == "report.html" and md_path.name == "report.md"
    md = md_path.read_text()
    pngs = sorted(p.name for p in (md_path.parent / "report").glob("*.png"))
    assert pngs == sorted(f.filename for f in report.figures)
    assert {"seeds.png", "learning_curves.png", "bias_variance.png", "optimization_history.png",
            "importance.png", "parallel_coordinates.png"} <= set(pngs)
    for name in pngs:
        assert f"](report/{name})" in md
        assert (md_path.parent / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = study.client
    top = {a.path for a in client.list_artifacts(study.parent_run_id)}
    assert {"report.html", "report.md", "report", "spec.resolved.yaml"} <= top
    logged = sorted(a.path for a in client.list_artifacts(study.parent_run_id, "report"))
    assert logged == [f"report/{n}" for n in pngs]


def test_html_renders_in_headless_chromium(written: tuple[Path, Path], report: R.Report) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("this test needs Python Playwright: pip install playwright (the browser is the system "
                    f"Chromium at {CHROMIUM}; never run `playwright install`)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"this test needs Chromium at {CHROMIUM}: apt-get install -y chromium")
    html_path, _ = written
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(html_path.resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({w: e.naturalWidth, h: e.naturalHeight, ok: e.complete, "
                       "src: e.src.slice(0, 22)}))")
            rows = {t: page.eval_on_selector_all(f"table#{t} tbody tr", "els => els.length")
                    for t in ("results", "budget", "bias-variance")}
            first_row = page.inner_text("table#results tbody tr:first-child")
            findings = page.eval_on_selector_all("#findings li", "els => els.length")
            spec = page.inner_text("pre#spec")
        finally:
            browser.close()
    assert len(images) == len(report.figures) == 6
    for img in images:
        assert img["ok"] and img["w"] > 0 and img["h"] > 0, img
        assert img["src"] == "data:image/png;base64,"  # self-contained
    assert rows["results"] == rows["bias-variance"] == len(report.variants) == 2
    assert rows["budget"] == len(report.budget.search_by_status) + 7
    assert first_row.startswith("none (baseline)")
    assert findings == len(report.findings)
    assert "baseline_variant: none" in spec


def test_variants_added_on_resume_are_named_in_the_notes(tmp_path: Path, _empty_store: Path) -> None:
    from sweeps.resume import VARIANTS_ADDED_TAG

    fake = build_fake_sweep(_store(tmp_path, _empty_store), tmp_path / "a", name="grown", trials=2, seeds=2,
                            with_failures=False)
    assert not any("Added on resume" in n for n in R.build_report(fake.uri, fake.sweep_id).notes)
    fake.client.set_tag(fake.parent_run_id, VARIANTS_ADDED_TAG, "dropout")
    rep = R.build_report(fake.uri, fake.sweep_id)
    (note,) = [n for n in rep.notes if "Added on resume" in n]
    assert "after the study had started: dropout." in note
    assert "Added on resume" in R.render_html(rep) and "Added on resume" in R.render_markdown(rep)


def test_a_study_stopped_part_way_names_its_unstarted_variants(tmp_path: Path, _empty_store: Path,
                                                               report: R.Report) -> None:
    fake = build_fake_sweep(_store(tmp_path, _empty_store), tmp_path / "a", name="part", trials=2, seeds=2,
                            with_failures=False, unstarted=("l2", "l1"))
    rep = R.build_report(fake.uri, fake.sweep_id)
    assert [v.name for v in rep.variants] == ["none", "dropout"]
    (note,) = [n for n in rep.notes if n.startswith("Not started yet")]
    assert "2 of the 4 variants in the spec have no runs (l2, l1)" in note
    # the plan counts every declared variant's trials, run or not
    assert rep.budget.planned_trials == 2 * 4 and sum(rep.budget.search_by_status.values()) == 2 * 2
    assert rep.budget.still_running
    assert "Not started yet" in R.render_markdown(rep)
    # the finished two-variant study has no such note, and plans only its own trials
    assert not any(n.startswith("Not started yet") for n in report.notes)
    assert report.budget.planned_trials == 3 * 2 and not report.budget.still_running
