"""The evaluation report against scikit-learn on fixed arrays (no TensorFlow)."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy.stats import rankdata
from sklearn.metrics import (average_precision_score, f1_score, precision_score, recall_score,
                             roc_auc_score)

from cxr_tf import labels
from cxr_tf.evaluation import metrics, published, report_markdown, report_plots, reporting
from cxr_tf.evaluation.inputs import Bootstrap, Scored, Thresholds

LABELS = list(labels.LABELS)


def fixed_set(n=300, seed=0):
    """Scores that rank positives higher, a class with no positives (Hernia) and metadata."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 14)) < np.linspace(0.05, 0.4, 14)).astype(np.uint8)
    y[:, 13] = 0
    prob = 1 / (1 + np.exp(-(2.0 * y - 1.0 + rng.normal(0, 1.2, y.shape))))
    meta = [{"sex": "MF"[i % 2], "age": [-1, 5, 25, 45, 65, 85][i % 6],
             "view": "PA" if i % 3 else "AP"} for i in range(n)]
    patients = np.arange(n) // 3
    return y, prob, meta, patients


@pytest.fixture(scope="module")
def report():
    y, prob, meta, patients = fixed_set()
    tuned = metrics.tune_thresholds(y, prob, "f1")
    return reporting.build_report(
        Scored(y, prob, LABELS, patient_ids=patients, metadata=meta),
        Thresholds((0.4, 0.5), tuned), Bootstrap(200, seed=0)), tuned


def test_per_class_figures_equal_scikit_learn(report):
    report, tuned = report
    y, prob, _, _ = fixed_set()
    for c, name in enumerate(LABELS[:13]):
        row = report["per_class"][name]
        assert row["positives"] == y[:, c].sum() >= 10 and row["negatives"] == 300 - y[:, c].sum()
        assert row["auc_not_estimable"] is None
        assert row["prevalence"] == pytest.approx(y[:, c].mean())
        assert row["auc"] == pytest.approx(roc_auc_score(y[:, c], prob[:, c]), abs=1e-12)
        assert row["average_precision"] == pytest.approx(
            average_precision_score(y[:, c], prob[:, c]), abs=1e-12)
        for key, t in (("0.4", 0.4), ("0.5", 0.5), ("tuned", tuned[c])):
            pred = prob[:, c] >= t
            assert row[f"f1@{key}"] == pytest.approx(f1_score(y[:, c], pred, zero_division=0))
            assert row[f"precision@{key}"] == pytest.approx(
                precision_score(y[:, c], pred, zero_division=0))
            assert row[f"recall@{key}"] == pytest.approx(recall_score(y[:, c], pred))
            assert row[f"specificity@{key}"] == pytest.approx(recall_score(1 - y[:, c], ~pred))
            assert row[f"paper_auc@{key}"] == pytest.approx(roc_auc_score(y[:, c], pred))
        assert row["tuned_threshold"] == pytest.approx(tuned[c])
        assert row["published_auc"] == published.WANG2017_AUC[name]
        assert row["auc_minus_published"] == pytest.approx(row["auc"] - row["published_auc"])


def test_class_without_positives_is_null_not_nan(report):
    report, _ = report
    hernia = report["per_class"]["Hernia"]
    assert hernia["positives"] == 0 and hernia["negatives"] == 300
    assert hernia["auc"] is None and hernia["auc_ci_low"] is None
    assert hernia["auc_not_estimable"] == "0 positives (fewer than 10)"
    assert hernia["average_precision"] is None and hernia["paper_auc@0.5"] is None
    json.dumps(report, allow_nan=False)  # strict JSON


def test_overall_figures_equal_scikit_learn(report):
    report, _ = report
    y, prob, _, patients = fixed_set()
    overall = report["overall"]
    assert overall["examples"] == 300 and overall["patients"] == 100
    assert overall["classes_with_auc"] == overall["auc_mean_over"] == 13
    aucs = [roc_auc_score(y[:, c], prob[:, c]) for c in range(13)]
    assert overall["auc_mean"] == pytest.approx(np.mean(aucs))
    assert overall["average_precision_mean"] == pytest.approx(
        np.mean([average_precision_score(y[:, c], prob[:, c]) for c in range(13)]))
    assert overall["auc_micro"] == pytest.approx(roc_auc_score(y, prob, average="micro"))
    assert overall["average_precision_micro"] == pytest.approx(
        average_precision_score(y, prob, average="micro"))
    # Micro pools every (image, finding) pair; macro averages the 13 findings that reach 10
    # positives (Hernia has none) and says so.
    assert overall["macro_over"] == 13
    for avg, cols in (("macro", slice(0, 13)), ("micro", slice(None))):
        assert overall[f"f1@0.5/{avg}"] == pytest.approx(
            f1_score(y[:, cols], prob[:, cols] >= 0.5, average=avg, zero_division=0))
        assert overall[f"precision@0.4/{avg}"] == pytest.approx(
            precision_score(y[:, cols], prob[:, cols] >= 0.4, average=avg, zero_division=0))
        assert overall[f"recall@0.4/{avg}"] == pytest.approx(
            recall_score(y[:, cols], prob[:, cols] >= 0.4, average=avg, zero_division=0))
    # ECE by hand: 15 equal bins over all (image, finding) pairs.
    bins = np.minimum((prob.ravel() * 15).astype(int), 14)
    ece = sum(abs(y.ravel()[bins == b].mean() - prob.ravel()[bins == b].mean()) * (bins == b).mean()
              for b in range(15) if (bins == b).any())
    assert overall["ece"] == pytest.approx(ece)


def test_published_comparison():
    assert published.WANG2017_MEAN_AUC == pytest.approx(0.745, abs=5e-4)
    assert set(published.WANG2017_AUC) == set(LABELS)
    y, prob, _, _ = fixed_set()
    result = reporting.build_report(Scored(y, prob, LABELS), Thresholds((0.5,)), Bootstrap(0))
    pub = result["published"]
    ours = [roc_auc_score(y[:, c], prob[:, c]) for c in range(13)]
    theirs = [published.WANG2017_AUC[n] for n in LABELS[:13]]
    assert pub["classes_compared"] == 13  # Hernia has no AUC here, so it is left out
    assert pub["mean_difference"] == pytest.approx(np.mean(ours) - np.mean(theirs))
    assert pub["mean_auc"] == published.WANG2017_MEAN_AUC


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data():
    widths = []
    for n in (400, 4000):  # 400 × the rarest prevalence (5 %) leaves every class 10 positives
        y, prob, _, patients = fixed_set(n, seed=1)
        r = reporting.build_report(Scored(y, prob, LABELS, patient_ids=patients),
                                   Thresholds((0.5,)), Bootstrap(300))
        rows = [r["per_class"][name] for name in LABELS[:13]]
        for row in rows:
            assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
        widths.append(np.mean([row["auc_ci_high"] - row["auc_ci_low"] for row in rows]))
    # 10x the data: the interval shrinks by about sqrt(10) = 3.2.
    assert widths[1] < widths[0] / 2.2


def test_honest_counts_with_1_3_and_30_positives():
    # 100 images of 100 patients, scores i/100 for image i. A and B hold 1 and 3 positives:
    # below the minimum of 10, so no AUC, no interval and no place in the means, however
    # well they happen to rank. C: 30 positives on images 10..39, 70 negatives: the 60
    # negatives 40..99 score above every positive, the 10 negatives 0..9 below, so each
    # positive wins 10 of 70 pairs: AUC = 30·10 / (30·70) = 1/7.
    y = np.zeros((100, 3), np.int8)
    y[99, 0] = 1
    y[[97, 98, 99], 1] = 1
    y[10:40, 2] = 1
    prob = np.repeat(np.arange(100)[:, None] / 100, 3, axis=1)
    r = reporting.build_report(Scored(y, prob, ["A", "B", "C"], patient_ids=np.arange(100)),
                               Thresholds((0.5,)), Bootstrap(400, seed=0))
    a, b, c = (r["per_class"][n] for n in "ABC")
    assert (a["positives"], a["negatives"], b["positives"], b["negatives"]) == (1, 99, 3, 97)
    for row, reason in ((a, "1 positive (fewer than 10)"), (b, "3 positives (fewer than 10)")):
        assert row["auc"] is None and row["auc_not_estimable"] == reason
        assert row["auc_ci_low"] is row["auc_ci_high"] is row["auc_ci_dropped"] is None
    assert (c["positives"], c["negatives"]) == (30, 70)
    assert c["auc"] == pytest.approx(1 / 7) and c["auc_not_estimable"] is None
    assert c["auc_ci_low"] <= 1 / 7 <= c["auc_ci_high"]
    assert c["auc_ci_dropped"] == 0.0  # 30 of 100 patients: a resample without one is ~1e-16
    assert r["overall"]["auc_mean"] == pytest.approx(1 / 7)
    assert r["overall"]["auc_mean_over"] == r["overall"]["classes_with_auc"] == 1
    assert r["bootstrap"]["method"] == "patient-level percentile bootstrap, 400 resamples"
    assert r["bootstrap"]["min_count"] == metrics.MIN_CLASS_COUNT == 10
    assert r["bootstrap"]["dropped_max"] == 0.0
    text = report_markdown.format_markdown(r)
    assert "| A | 1 / 99 | 0.010 | not estimable: 1 positive (fewer than 10) |" in text
    assert f"| C | 30 / 70 | 0.300 | {1 / 7:.3f} [" in text
    assert f"| **mean** over 1 findings with an AUC |  |  | {1 / 7:.3f} |" in text
    assert "95 % CI: patient-level percentile bootstrap, 400 resamples" in text


def test_patient_level_bootstrap_is_wider_than_image_level():
    # Each patient contributes 5 copies of one image: they are one observation, not five.
    y, prob, _, _ = fixed_set(100, seed=2)
    y, prob = np.repeat(y, 5, axis=0), np.repeat(prob, 5, axis=0)
    patients = np.repeat(np.arange(100), 5)
    by_patient = reporting.build_report(Scored(y, prob, LABELS, patient_ids=patients),
                                        Thresholds((0.5,)), Bootstrap(300))
    by_image = reporting.build_report(Scored(y, prob, LABELS), Thresholds((0.5,)),
                                      Bootstrap(300))
    assert by_patient["bootstrap"]["unit"] == "patient" and by_image["bootstrap"]["unit"] == "image"

    # The minimum counts images, so both reports leave out the same rare findings.
    names = [n for n in LABELS if by_patient["per_class"][n]["auc"] is not None]
    assert len(names) >= 10
    assert names == [n for n in LABELS if by_image["per_class"][n]["auc"] is not None]

    def width(r):
        return np.mean([r["per_class"][n]["auc_ci_high"] - r["per_class"][n]["auc_ci_low"]
                        for n in names])

    assert width(by_patient) > 1.8 * width(by_image)  # sqrt(5) = 2.2 in theory


def test_subgroups_by_sex_age_band_and_view(report):
    report, _ = report
    y, prob, meta, _ = fixed_set()
    groups = report["subgroups"]
    assert list(groups["age_band"]) == ["0-20", "20-40", "40-60", "60-80", "80+", "unknown"]
    assert [g["examples"] for g in groups["age_band"].values()] == [50] * 6
    assert set(groups["sex"]) == {"F", "M"} and set(groups["view"]) == {"AP", "PA"}
    rows = np.array([m["view"] == "AP" for m in meta])
    ap = groups["view"]["AP"]
    assert ap["examples"] == rows.sum() == 100
    estimable = []
    for c, name in enumerate(LABELS):
        positives = int(y[rows, c].sum())
        assert (ap["positives"][name], ap["negatives"][name]) == (positives, 100 - positives)
        if positives >= 10:
            assert ap["auc"][name] == pytest.approx(roc_auc_score(y[rows, c], prob[rows, c]))
            estimable.append(ap["auc"][name])
        else:  # Hernia (none) and the rarest findings: out of the subgroup's mean
            assert ap["auc"][name] is None
    assert 3 <= len(estimable) < 14 and ap["auc_mean_over"] == len(estimable)
    assert ap["auc_mean"] == pytest.approx(np.mean(estimable))


@pytest.mark.parametrize("age,band", [(0, "0-20"), (19, "0-20"), (20, "20-40"), (59, "40-60"),
                                      (79, "60-80"), (80, "80+"), (120, "80+"), (-1, "unknown")])
def test_age_band_edges(age, band):
    assert reporting.age_band(age) == band


def test_no_finding_constraint_and_its_effect_on_f1():
    # 4 images, 2 findings. No Finding wins on images 1 and 3 (0.9 > 0.6, 0.8 > 0.7).
    y = np.array([[1, 0], [0, 0], [0, 1], [1, 0]])
    prob = np.array([[0.9, 0.2], [0.6, 0.1], [0.3, 0.8], [0.7, 0.6]])
    no_finding = np.array([0.1, 0.9, 0.2, 0.8])
    assert labels.no_finding_wins(prob, no_finding).tolist() == [False, True, False, True]
    r = reporting.build_report(Scored(y, prob, ["A", "B"]), Thresholds((0.5,)), Bootstrap(0),
                               no_finding_prob=no_finding)
    nf = r["no_finding"]
    assert nf["examples_suppressed"] == 2
    # Without: A predicted on 0,1,3 (tp 2, fp 1) -> F1 0.8; B on 2,3 (tp 1, fp 1) -> 2/3.
    # With: A on 0 only (tp 1, fn 1) -> 2/3; B on 2 only (tp 1) -> 1.
    assert nf["f1@0.5/macro"]["without"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert nf["f1@0.5/macro"]["with"] == pytest.approx((2 / 3 + 1) / 2)
    # Micro: without tp 3 fp 2 fn 0 -> 6/8; with tp 2 fp 0 fn 1 -> 4/5.
    assert nf["f1@0.5/micro"]["without"] == pytest.approx(0.75)
    assert nf["f1@0.5/micro"]["with"] == pytest.approx(0.8)
    assert nf["f1@0.5/micro"]["change"] == pytest.approx(0.05)
    # No Finding target = [0, 1, 0, 0]; its score ranks image 1 first.
    assert nf["no_finding_auc"] == 1.0


def test_markdown_shows_the_headline_figures(report):
    report, _ = report
    text = report_markdown.format_markdown(report)
    e = report["per_class"]["Effusion"]
    assert (f"| Effusion | {e['positives']} / {e['negatives']} | {e['prevalence']:.3f} | "
            f"{e['auc']:.3f} [{e['auc_ci_low']:.3f}, {e['auc_ci_high']:.3f}] |") in text
    assert "Wang 2017" in text and "0.745" in text
    assert "## At threshold tuned" in text and "## Subgroups (mean AUC)" in text
    assert "### age_band" in text and "| unknown | 50 |" in text
    assert "| Hernia | 0 / 300 | 0.000 | not estimable: 0 positives (fewer than 10) |" in text
    assert "| **mean** over 13 findings with an AUC |" in text


def test_plots_are_written_and_non_empty(tmp_path):
    y, prob, _, _ = fixed_set()
    paths = report_plots.write_plots(str(tmp_path), Scored(y, prob, LABELS))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["roc.png", "pr.png", "calibration.png"]
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "PNG" and min(img.size) >= 400
            # Not blank: a plot has many distinct colours.
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or ()) > 20


def test_interval_is_a_patient_bootstrap_of_rank_aucs():
    # An independent, plain patient bootstrap: resample patients with numpy, score each
    # resample with the rank-sum (Mann-Whitney) AUC, take percentiles. The report's interval
    # (weighted AUCs, other draws) must agree to Monte Carlo error: within 0.4 of the
    # replicates' spread, about 4 standard errors at these counts. Each patient has 4 copies
    # of one image, so an image-level bootstrap would be half as wide and miss by ~1 spread.
    y, prob, _, _ = fixed_set(120, seed=3)
    y, prob = np.repeat(y[:, 6], 4), np.repeat(prob[:, 6], 4)
    patients = np.repeat(np.arange(120), 4)
    r = reporting.build_report(Scored(y[:, None], prob[:, None], ["A"], patient_ids=patients),
                               Thresholds((0.5,)), Bootstrap(1000, seed=0))["per_class"]["A"]
    rng = np.random.default_rng(7)
    members = [np.flatnonzero(patients == p) for p in range(120)]
    naive = []
    for _ in range(1000):
        rows = np.concatenate([members[p] for p in rng.integers(0, 120, 120)])
        ranks, positive = rankdata(prob[rows]), y[rows] == 1
        n1, n0 = positive.sum(), (~positive).sum()
        naive.append((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    lo, hi = np.quantile(naive, [0.025, 0.975])
    spread = np.std(naive)
    assert r["auc_ci_low"] == pytest.approx(lo, abs=0.4 * spread)
    assert r["auc_ci_high"] == pytest.approx(hi, abs=0.4 * spread)
    assert r["auc_ci_dropped"] == 0.0


def test_scored_and_thresholds_select_rows_and_findings():
    scored = Scored(np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]]),
                    np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3], [0.6, 0.5, 0.4]]),
                    ["A", "B", "C"], patient_ids=[7, 8, 9], metadata=[{"i": 0}, {"i": 1}, {"i": 2}])
    part = scored.select([True, False, True], [2, 0])
    assert part.y_true.tolist() == [[1, 1], [0, 1]]
    assert part.y_prob.tolist() == [[0.8, 0.9], [0.4, 0.6]]
    assert part.label_names == ["C", "A"] and part.patient_ids == [7, 9]
    assert part.metadata == [{"i": 0}, {"i": 2}]
    assert Scored([[1]], [[0.5]], ["A"]).select([True], [0]).patient_ids is None
    thresholds = Thresholds((0.4, 0.5), [0.1, 0.2, 0.3])
    assert [key for key, _ in thresholds.sets()] == ["0.4", "0.5", "tuned"]
    assert thresholds.select([2, 0]).tuned.tolist() == [0.3, 0.1]
    assert thresholds.select([2, 0]).configured == (0.4, 0.5)
    assert Thresholds((0.5,)).select([1]).tuned is None


def test_a_report_without_bootstrap_says_so():
    y, prob, _, _ = fixed_set(100)
    r = reporting.build_report(Scored(y, prob, LABELS), Thresholds((0.5,)), Bootstrap(0))
    assert r["bootstrap"] | {"dropped_max": None} == {
        "replicates": 0, "confidence": 0.95, "seed": 0, "unit": "image", "method": None,
        "min_count": 10, "dropped_max": None}
    assert all(row["auc_ci_low"] is None for row in r["per_class"].values())
    assert ("- no confidence intervals (bootstrap=0); AUC needs 10 positives and negatives"
            in report_markdown.format_markdown(r))


def counts_set(positives=(1, 3, 9, 10, 30), n=100):
    """n images; column c has positives[c] positives on images 0..k-1, scored 1 - i/n."""
    y = np.zeros((n, len(positives)), np.int8)
    for c, k in enumerate(positives):
        y[:k, c] = 1
    prob = np.repeat((1 - np.arange(n) / n)[:, None], len(positives), axis=1)
    return y, prob


def test_ap_f1_and_their_means_follow_the_auc_rule_with_1_3_9_10_and_30_positives():
    # Columns with 1, 3 and 9 positives: no AP, no F1/precision/recall/specificity and no
    # paper_auc (one positive makes recall 0 or 1), out of every macro mean; 10 and 30: all
    # figures, equal to scikit-learn's. Micro figures pool every pair and keep all five.
    y, prob = counts_set()
    names = ["P1", "P3", "P9", "P10", "P30"]
    r = reporting.build_report(Scored(y, prob, names), Thresholds((0.5,)), Bootstrap(0))
    for name in names[:3]:
        row = r["per_class"][name]
        assert row["average_precision"] is None and row["auc"] is None
        assert all(row[f"{m}@0.5"] is None for m in reporting.THRESHOLD_METRICS)
        assert row["paper_auc@0.5"] is None
    for c, name in ((3, "P10"), (4, "P30")):
        row = r["per_class"][name]
        assert row["average_precision"] == pytest.approx(
            average_precision_score(y[:, c], prob[:, c]))
        assert row["f1@0.5"] == pytest.approx(f1_score(y[:, c], prob[:, c] >= 0.5))
    overall = r["overall"]
    assert overall["macro_over"] == overall["auc_mean_over"] == 2
    assert overall["f1@0.5/macro"] == pytest.approx(
        f1_score(y[:, 3:], prob[:, 3:] >= 0.5, average="macro"))
    assert overall["f1@0.5/micro"] == pytest.approx(
        f1_score(y, prob >= 0.5, average="micro"))
    assert overall["average_precision_mean"] == pytest.approx(np.mean(
        [average_precision_score(y[:, c], prob[:, c]) for c in (3, 4)]))
    text = report_markdown.format_markdown(r)
    assert "| P1 | 1 / 99 | 0.010 | not estimable: 1 positive (fewer than 10) | – |" in text
    assert "| F1 / precision / recall @0.5 (macro over 2 findings) |" in text
    assert "| P9 | – | – | – | – | – |" in text  # the table at threshold 0.5


def test_plot_titles_carry_the_counts_and_the_rule():
    y, prob = counts_set()
    assert report_plots.panel_title("pr", "Mass", y[:, 0], prob[:, 0]) == (
        "Mass (1+ / 99−)\nAP not estimable: 1 positive (fewer than 10)")
    assert report_plots.panel_title("roc", "Mass", y[:, 2], prob[:, 2]) == (
        "Mass (9+ / 91−)\nAUC not estimable: 9 positives (fewer than 10)")
    ap = average_precision_score(y[:, 3], prob[:, 3])
    assert report_plots.panel_title("pr", "Mass", y[:, 3], prob[:, 3]) == (
        f"Mass (10+ / 90−)\nAP {ap:.3f}, prevalence 0.100")
    assert report_plots.panel_title("roc", "Mass", y[:, 4], prob[:, 4]) == (
        "Mass (30+ / 70−)\nAUC 1.000 (Wang 2017: 0.693)")


def test_reliability_diagram_before_and_after_calibration(tmp_path):
    y, prob, _, _ = fixed_set()
    path = report_plots.plot_calibration(str(tmp_path / "calibration.png"), y, prob ** 0.5,
                                         before=prob)
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= 400
