"""cxr_tf.evaluation.metrics on tiny arrays with the counts worked out, checked against scikit-learn."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from cxr_tf.evaluation import metrics
from cxr_tf.labels import LABELS

REPO = Path(__file__).resolve().parents[1]

# Two classes, four examples. At threshold 0.5:
#   class 0: y = 1 0 1 0, score .9 .6 .4 .1 -> pred 1 1 0 0: tp=1 fp=1 fn=1 tn=1
#   class 1: y = 0 1 1 1, score .2 .8 .7 .3 -> pred 0 1 1 0: tp=2 fp=0 fn=1 tn=1
Y = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
S = np.array([[0.9, 0.2], [0.6, 0.8], [0.4, 0.7], [0.1, 0.3]])


def test_per_class_auc_matches_sklearn():
    # class 0: positives .9 .4 vs negatives .6 .1 -> pairs won 2 + 1 of 4 = 0.75
    # class 1: positives .8 .7 .3 vs negative .2 -> 3 of 3 = 1.0
    np.testing.assert_allclose(metrics.per_class_auc(Y, S), [0.75, 1.0])
    sklearn_aucs = [roc_auc_score(Y[:, c], S[:, c]) for c in range(2)]
    np.testing.assert_allclose(metrics.per_class_auc(Y, S), sklearn_aucs)


def test_ties_count_half_as_in_sklearn():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.5, 0.5, 0.7, 0.2])  # pairs: (.5 vs .5) tie = 1/2, others won: (3.5)/4
    assert metrics.per_class_auc(y, s)[0] == pytest.approx(0.875)
    assert metrics.per_class_auc(y, s)[0] == pytest.approx(roc_auc_score(y, s))


def test_class_with_one_label_value_is_nan_without_warning():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])  # class 1 all 0, class 2 all 1
    s = np.array([[0.9, 0.1, 0.3], [0.2, 0.4, 0.5], [0.8, 0.3, 0.6], [0.1, 0.2, 0.9]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aucs = metrics.per_class_auc(y, s)
        paper = metrics.paper_auc(y, s, 0.5)
        result = metrics.epoch_metrics(y, s, [0.5], ["A", "B", "C"])
        lo, hi, dropped = metrics.bootstrap_auc_ci(y, s, n_boot=20)
    assert aucs[0] == 1.0 and np.isnan(aucs[1]) and np.isnan(aucs[2])
    assert np.isnan(paper[1]) and np.isnan(paper[2])
    assert result["val/auc_mean"] == 1.0  # mean over the classes that have both labels
    assert np.isnan(result["val/auc/B"])
    assert np.isnan(lo[1]) and np.isnan(hi[2])
    assert dropped[1] == dropped[2] == 1.0  # no resample of a one-valued class has an AUC
    assert np.isnan(metrics.epoch_metrics(y[:, 1:], s[:, 1:], [0.5], ["B", "C"])["val/auc_mean"])


def test_threshold_metrics_by_hand_and_against_sklearn():
    result = metrics.threshold_metrics(Y, S, 0.5)
    # precision tp/(tp+fp): 1/2, 2/2; recall tp/(tp+fn): 1/2, 2/3; specificity tn/(tn+fp): 1/2, 1/1
    np.testing.assert_allclose(result["precision"], [0.5, 1.0])
    np.testing.assert_allclose(result["recall"], [0.5, 2 / 3])
    np.testing.assert_allclose(result["specificity"], [0.5, 1.0])
    # f1 2tp/(2tp+fp+fn): 2/4, 4/5; micro over tp=3 fp=1 fn=2: 6/9
    np.testing.assert_allclose(result["f1"], [0.5, 0.8])
    assert result["f1_macro"] == pytest.approx(0.65)
    assert result["f1_micro"] == pytest.approx(6 / 9)
    assert result["precision_micro"] == pytest.approx(3 / 4)
    assert result["recall_micro"] == pytest.approx(3 / 5)
    predicted = (S >= 0.5).astype(int)
    for name, fn in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        np.testing.assert_allclose(result[name], fn(Y, predicted, average=None, zero_division=0))
        for average in ("macro", "micro"):
            expected = fn(Y, predicted, average=average, zero_division=0)
            assert result[f"{name}_{average}"] == pytest.approx(expected)


def test_score_equal_to_threshold_is_positive():
    assert metrics.threshold_metrics([[1], [0]], [[0.5], [0.49]], 0.5)["recall"][0] == 1.0


def test_zero_division_gives_zero_like_sklearn():
    # Nothing predicted positive (precision 0/0) and no positives at all (recall 0/0).
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    s = np.array([[0.1, 0.9], [0.2, 0.1], [0.3, 0.2], [0.4, 0.3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics.threshold_metrics(y, s, 0.5)
    np.testing.assert_array_equal(result["precision"], [0.0, 0.0])
    np.testing.assert_array_equal(result["recall"], [0.0, 0.0])
    np.testing.assert_array_equal(result["f1"], [0.0, 0.0])
    predicted = (s >= 0.5).astype(int)
    assert result["f1_macro"] == f1_score(y, predicted, average="macro", zero_division=0)


def test_per_class_thresholds():
    # class 0 at 0.95 predicts nothing (recall 0); class 1 at 0.25 predicts .8 .7 .3 (recall 1)
    result = metrics.threshold_metrics(Y, S, [0.95, 0.25])
    np.testing.assert_array_equal(result["recall"], [0.0, 1.0])
    message = r"threshold must be one number or one per class \(2\); received shape \(3,\)"
    with pytest.raises(ValueError, match=message):
        metrics.threshold_metrics(Y, S, [0.5, 0.5, 0.5])


def test_paper_auc_is_auc_of_binarized_predictions_and_differs_from_auc():
    # Scores rank class 0 perfectly (AUC 1), but at 0.5 only one positive is above it:
    #   y = 1 1 0 0, score .45 .9 .3 .1 -> pred 0 1 0 0: TPR 1/2, FPR 0 -> (1/2 + 1) / 2 = 0.75
    y = np.array([1, 1, 0, 0])
    s = np.array([0.45, 0.9, 0.3, 0.1])
    assert metrics.per_class_auc(y, s)[0] == 1.0
    assert metrics.paper_auc(y, s, 0.5)[0] == pytest.approx(0.75)
    binarized_auc = roc_auc_score(y, (s >= 0.5).astype(int))
    assert metrics.paper_auc(y, s, 0.5)[0] == pytest.approx(binarized_auc)
    np.testing.assert_allclose(
        metrics.paper_auc(Y, S, 0.4),
        [roc_auc_score(Y[:, c], (S[:, c] >= 0.4).astype(int)) for c in range(2)],
    )


def test_epoch_metrics_key_names_exactly():
    result = metrics.epoch_metrics(Y, S, [0.4, 0.5], ["Atelectasis", "Hernia"], prefix="val")
    expected = ["val/auc_mean", "val/auc/Atelectasis", "val/auc/Hernia"]
    for t in ("0.4", "0.5"):
        for name in ("f1", "precision", "recall"):
            expected += [f"val/{name}@{t}/macro", f"val/{name}@{t}/micro",
                         f"val/{name}@{t}/Atelectasis", f"val/{name}@{t}/Hernia"]
        expected.append(f"val/paper_auc@{t}")
    assert list(result) == expected
    assert all(type(value) is float for value in result.values())
    assert result["val/auc_mean"] == pytest.approx(0.875)
    assert result["val/f1@0.5/macro"] == pytest.approx(0.65)
    assert result["val/recall@0.5/Hernia"] == pytest.approx(2 / 3)
    # paper_auc@0.5: class 0 (1/2 + 1/2)/2 = 0.5, class 1 (2/3 + 1)/2 = 5/6 -> mean 2/3
    assert result["val/paper_auc@0.5"] == pytest.approx(2 / 3)
    assert "test/auc_mean" in metrics.epoch_metrics(Y, S, [0.5], ["a", "b"], prefix="test")


def test_format_threshold():
    formatted = [metrics.format_threshold(t) for t in (0.5, 0.4, 0.1 + 0.2, 0.25, 1)]
    assert formatted == ["0.5", "0.4", "0.3", "0.25", "1"]


def test_input_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"received \(4, 2\) and \(4, 3\)"):
        metrics.per_class_auc(Y, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"y_true must hold only 0 and 1; received values \[0, 2"):
        metrics.per_class_auc(Y * 2, S)
    with pytest.raises(ValueError, match="y_score holds 1 NaN or infinite values of 8"):
        metrics.per_class_auc(Y, np.where(S == 0.9, np.nan, S))
    with pytest.raises(ValueError, match="got 1 label names for 2 classes"):
        metrics.epoch_metrics(Y, S, [0.5], ["a"])


def test_epoch_metrics_on_a_validation_sized_split_equal_scikit_learn():
    # 10,000 × 14 as a real validation epoch; the speed is measured by tools/ benchmarks.
    rng = np.random.default_rng(0)
    y = (rng.random((10_000, 14)) < 0.1).astype(np.uint8)
    s = np.clip(0.3 * y + 0.7 * rng.random((10_000, 14)), 0, 1)
    result = metrics.epoch_metrics(y, s, [0.4, 0.5, 0.6], LABELS)
    assert len(result) == 1 + 14 + 3 * (3 * (2 + 14) + 1)
    aucs = [roc_auc_score(y[:, c], s[:, c]) for c in range(14)]
    np.testing.assert_allclose([result[f"val/auc/{name}"] for name in LABELS], aucs)
    assert result["val/auc_mean"] == pytest.approx(np.mean(aucs))
    assert result["val/f1@0.6/macro"] == pytest.approx(
        f1_score(y, s >= 0.6, average="macro", zero_division=0))
    assert result["val/recall@0.4/micro"] == pytest.approx(
        recall_score(y, s >= 0.4, average="micro", zero_division=0))


def _weighted_auc_sklearn(y, s, weights):
    return roc_auc_score(np.repeat(y, weights), np.repeat(s, weights))


def test_bootstrap_replicate_auc_equals_sklearn_on_the_resampled_data():
    rng = np.random.default_rng(3)
    y = (rng.random(200) < 0.3).astype(np.int8)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounding makes ties
    weights = rng.integers(0, 3, size=(4, 200))
    order, labels, starts = metrics._sort_for_auc(y, s)
    got = metrics._weighted_auc(weights[:, order].astype(float), labels, starts)
    np.testing.assert_allclose(got, [_weighted_auc_sklearn(y, s, w) for w in weights])


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def sample(n):
        y = (rng.random((n, 2)) < 0.4).astype(np.uint8)
        return y, np.clip(0.25 * y + rng.random((n, 2)), 0, None)

    y_small, s_small = sample(100)
    y_big, s_big = sample(1600)
    lo_small, hi_small, _ = metrics.bootstrap_auc_ci(y_small, s_small, n_boot=300, seed=1)
    lo_big, hi_big, _ = metrics.bootstrap_auc_ci(y_big, s_big, n_boot=300, seed=1)
    auc_small = metrics.per_class_auc(y_small, s_small)
    auc_big = metrics.per_class_auc(y_big, s_big)
    assert np.all((lo_small <= auc_small) & (auc_small <= hi_small))
    assert np.all((lo_big <= auc_big) & (auc_big <= hi_big))
    # 16× the data: the width should shrink about 4×; ask for at least 2×.
    assert np.all(hi_big - lo_big < (hi_small - lo_small) / 2)
    again = metrics.bootstrap_auc_ci(y_small, s_small, n_boot=300, seed=1)
    np.testing.assert_array_equal(again[0], lo_small)  # same seed, same interval
    np.testing.assert_array_equal(again.dropped, [0.0, 0.0])


def test_patient_bootstrap_is_wider_when_a_patients_images_agree():
    # 40 patients × 10 images; all images of a patient share label and score, so there are
    # only 40 independent units. An image-level bootstrap pretends there are 400.
    rng = np.random.default_rng(0)
    patient_y = (rng.random(40) < 0.5).astype(np.uint8)
    patient_s = rng.random(40) + 0.5 * patient_y
    y, s = np.repeat(patient_y, 10)[:, None], np.repeat(patient_s, 10)[:, None]
    groups = np.repeat(np.arange(40), 10)
    lo_img, hi_img, _ = metrics.bootstrap_auc_ci(y, s, n_boot=300)
    lo_pat, hi_pat, _ = metrics.bootstrap_auc_ci(y, s, groups=groups, n_boot=300)
    assert (hi_pat - lo_pat)[0] > 2 * (hi_img - lo_img)[0]
    message = r"groups must hold one id per example \(400\); received shape \(3,\)"
    with pytest.raises(ValueError, match=message):
        metrics.bootstrap_auc_ci(y, s, groups=[1, 2, 3])


def test_counts_and_the_minimum_for_an_auc():
    # 12 examples: class 0 has 1 positive and 11 negatives, class 1 10 and 2, class 2 6 and
    # 6. None reaches 10 of each; with min_count=2 only class 0 (1 positive) falls short.
    y = np.zeros((12, 3), np.int8)
    y[0, 0] = 1
    y[:10, 1] = 1
    y[:6, 2] = 1
    positives, negatives = metrics.class_counts(y)
    assert positives.tolist() == [1, 10, 6] and negatives.tolist() == [11, 2, 6]
    assert metrics.auc_estimable(y).tolist() == [False, False, False]  # 10 of each needed
    assert metrics.auc_estimable(y, min_count=2).tolist() == [False, True, True]
    assert metrics.not_estimable_reason(1, 11) == "1 positive (fewer than 10)"
    assert metrics.not_estimable_reason(10, 2) == "2 negatives (fewer than 10)"
    assert metrics.not_estimable_reason(0, 3) == "0 positives and 3 negatives (fewer than 10)"
    assert metrics.not_estimable_reason(10, 10) is None
    assert metrics.not_estimable_reason(1, 11, min_count=1) is None


@pytest.mark.parametrize("positives,dropped", [(1, 0.99 ** 100), (3, 0.97 ** 100), (30, 0.0)])
def test_dropped_share_is_the_chance_a_resample_misses_every_positive(positives, dropped):
    # 100 patients, one image each: a resample misses all k positives with probability
    # (1 - k/100)^100: 0.366 for 1 positive, 0.048 for 3, ~1e-16 for 30. Those resamples
    # have no AUC and are dropped; `dropped` must say so. 4,000 resamples: sd <= 0.008.
    y = np.zeros(100, np.int8)
    y[:positives] = 1
    s = np.linspace(0, 1, 100)
    interval = metrics.bootstrap_auc_ci(y, s, groups=np.arange(100), n_boot=4000, seed=2)
    assert interval.dropped[0] == pytest.approx(dropped, abs=0.03)


def test_replicates_are_paired_across_calls_and_columns():
    # The draws depend on seed and group count only: the same column bootstrapped alone and
    # beside another gives the same replicates, so differences between columns are paired.
    rng = np.random.default_rng(4)
    y = (rng.random((60, 2)) < 0.5).astype(np.int8)
    s = rng.random((60, 2)) + 0.5 * y
    groups = np.arange(60) // 2
    both = metrics.bootstrap_auc_replicates(y, s, groups, n_boot=120, seed=3)
    alone = metrics.bootstrap_auc_replicates(y[:, 1], s[:, 1], groups, n_boot=120, seed=3)
    np.testing.assert_allclose(both[:, 1], alone[:, 0])
    interval = metrics.percentile_interval(np.c_[both, np.full(120, np.nan)])
    assert interval.dropped.tolist() == [0.0, 0.0, 1.0] and np.isnan(interval.low[2])
    np.testing.assert_allclose(interval.low[:2], np.quantile(both, 0.025, axis=0))


def test_tune_thresholds_beats_half():
    # Scores all sit below 0.5 (an under-confident model), so 0.5 predicts nothing (F1 0),
    # while the positives still rank first: y = 1 1 0 0, score .4 .35 .2 .1 -> best cut 0.35.
    # min_count=1: a toy this small is below the reporting rule (see the next tests).
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    s = np.array([[0.4, 0.1], [0.35, 0.2], [0.2, 0.3], [0.1, 0.05]])
    tuned = metrics.tune_thresholds(y, s, "f1", min_count=1)
    np.testing.assert_allclose(tuned, [0.35, 0.3])
    assert metrics.threshold_metrics(y, s, tuned)["f1_macro"] == 1.0
    assert metrics.threshold_metrics(y, s, 0.5)["f1_macro"] == 0.0
    youden = metrics.tune_thresholds(y, s, "youden", min_count=1)
    assert metrics.threshold_metrics(y, s, youden)["f1_macro"] == 1.0


def test_tune_thresholds_gives_the_default_for_a_one_valued_class():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.7, 0.1], [0.2, 0.4], [0.6, 0.2]])
    np.testing.assert_allclose(metrics.tune_thresholds(y, s, "youden", min_count=1), [0.6, 0.5])
    np.testing.assert_allclose(
        metrics.tune_thresholds(y, s, "youden", default=0.3, min_count=1), [0.6, 0.3])
    with pytest.raises(ValueError, match="method must be 'f1' or 'youden'; received method='auc'"):
        metrics.tune_thresholds(y, s, "auc")


def counts_set(positives=(1, 3, 9, 10, 30), n=100):
    """n images; column c has positives[c] positives on the top-scored images 0..k-1 (score
    1 - i/n for image i, so every column ranks perfectly and F1 peaks exactly at the last
    positive's score)."""
    y = np.zeros((n, len(positives)), np.int8)
    for c, k in enumerate(positives):
        y[:k, c] = 1
    scores = np.repeat((1 - np.arange(n) / n)[:, None], len(positives), axis=1)
    return y, scores


@pytest.mark.parametrize("method", ["f1", "youden"])
def test_thresholds_are_fitted_only_from_ten_positives_and_negatives(method):
    # 1, 3 and 9 positives: below MIN_CLASS_COUNT, the default stays (a threshold "fitted"
    # from 1 positive is that image's score: 0.99 here, 3e-20 was seen on a real run).
    # 10 and 30 positives: fitted, at the last positive's score, 1 - (k - 1)/100.
    y, scores = counts_set()
    tuned = metrics.tune_thresholds(y, scores, method, default=0.5)
    np.testing.assert_allclose(tuned, [0.5, 0.5, 0.5, 0.91, 0.71])
    assert metrics.estimable(y).tolist() == [False, False, False, True, True]
    positives, negatives = metrics.class_counts(y)
    assert [metrics.not_estimable_reason(p, n) for p, n in zip(positives, negatives)] == [
        "1 positive (fewer than 10)", "3 positives (fewer than 10)",
        "9 positives (fewer than 10)", None, None]
    # Too few negatives counts the same way: 95 positives, 5 negatives.
    y_neg = np.ones((100, 1), np.int8)
    y_neg[95:] = 0
    assert metrics.tune_thresholds(y_neg, scores[:, :1], method).tolist() == [0.5]
    assert metrics.not_estimable_reason(95, 5) == "5 negatives (fewer than 10)"


def test_ece_of_a_calibrated_toy_is_zero_and_of_an_overconfident_one_is_not():
    # 4 bins' worth: in each, the positive rate equals the probability (1 in 4 at 0.25, ...).
    prob = np.array([0.25] * 4 + [0.5] * 4 + [0.75] * 4 + [1.0] * 4)
    label = np.array([1, 0, 0, 0] + [1, 1, 0, 0] + [1, 1, 1, 0] + [1, 1, 1, 1])
    ece = metrics.expected_calibration_error(label.reshape(8, 2), prob.reshape(8, 2), n_bins=10)
    assert ece == pytest.approx(0.0, abs=1e-12)
    # Always saying 0.9 for a 50 % event: |0.5 - 0.9| = 0.4.
    y = np.array([[1], [0], [1], [0]])
    assert metrics.expected_calibration_error(y, np.full((4, 1), 0.9)) == pytest.approx(0.4)
    with pytest.raises(ValueError, match=r"apply sigmoid to logits first"):
        metrics.expected_calibration_error(y, np.full((4, 1), 3.0))


def test_sigmoid_is_stable():
    np.testing.assert_allclose(metrics.sigmoid([0.0, np.log(3.0)]), [0.5, 0.75])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = metrics.sigmoid(np.array([-1000.0, 1000.0], np.float32))
    np.testing.assert_array_equal(out, [0.0, 1.0])
    assert out.dtype == np.float32


def test_metrics_imports_neither_keras_nor_tensorflow(import_roots):
    roots = import_roots("evaluation/metrics.py")
    assert roots <= {"math", "numpy", "sklearn", "typing"}, roots
    script = (
        "import json, sys; import cxr_tf.evaluation.metrics; heavy = {'keras', 'tensorflow', 'jax'}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & heavy)))"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
