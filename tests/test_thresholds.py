"""thresholds.json with provenance (cxr_tf.runs.thresholds) and the tuning that writes it
(cxr_tf.evaluation.decisions.tune): a threshold is fitted only from 10 positives and 10
negatives, and every reader can say which findings fell back and why."""

import json

import numpy as np
import pytest

from cxr_tf import labels
from cxr_tf.evaluation import decisions, metrics
from cxr_tf.runs import thresholds

# Validation positives per finding: 1, 3, 9 (below the rule), 10, 30 (fitted), and the rest.
POSITIVES = (1, 3, 9, 10, 30, 0, 12, 15, 20, 2, 40, 11, 5, 0)


def validation(n=120):
    """A Predicted validation split of n images whose finding c has POSITIVES[c] positives
    on images 0..k-1, each ranked above every negative (logit 2 against -2, plus an order)."""
    y = np.zeros((n, 14), np.int8)
    for c, k in enumerate(POSITIVES):
        y[:k, c] = 1
    logits = np.where(y == 1, 2.0, -2.0) - np.arange(n)[:, None] / n
    rows = [{"labels": y[i], "patient_id": i} for i in range(n)]
    return decisions.Predicted(logits, None, rows)


def test_tuning_fits_only_findings_with_ten_positives_and_negatives(tmp_path):
    decided = decisions.tune(tmp_path, validation(), "f1", default=0.5, checkpoint="best")
    content = json.loads((tmp_path / "thresholds.json").read_text())
    # Today's keys, for old readers.
    assert (content["method"], content["split"], content["examples"], content["checkpoint"]) \
        == ("f1", "validation", 120, "best")
    assert list(content["thresholds"]) == list(labels.LABELS)
    assert content["min_count"] == metrics.MIN_CLASS_COUNT and content["default"] == 0.5
    assert content["calibration"] is None
    fitted = [name for name, k in zip(labels.LABELS, POSITIVES) if k >= 10]
    for name, k in zip(labels.LABELS, POSITIVES):
        entry = content["findings"][name]
        assert (entry["positives"], entry["negatives"], entry["split"]) == (k, 120 - k,
                                                                            "validation")
        assert entry["threshold"] == content["thresholds"][name]
        if name in fitted:  # the last positive's probability: sigmoid(2 - (k - 1)/120)
            assert entry["method"] == "f1" and "reason" not in entry
            assert entry["threshold"] == pytest.approx(metrics.sigmoid(2 - (k - 1) / 120))
        else:
            assert entry["method"] == "default" and entry["threshold"] == 0.5
            assert entry["reason"] == metrics.not_estimable_reason(k, 120 - k)
    assert decided.fell_back() == [n for n in labels.LABELS if n not in fitted]
    assert decided.summary() == (
        "7 of 14 tuned (f1 on validation); 7 fell back to the default 0.5 (fewer than 10 "
        "positives or negatives): Atelectasis (1+/119−), Cardiomegaly (3+/117−), Effusion "
        "(9+/111−), Nodule (0+/120−), Edema (2+/118−), Pleural_Thickening "
        "(5+/115−), Hernia (0+/120−)")


def test_the_default_threshold_is_what_evaluate_was_given(tmp_path):
    decisions.tune(tmp_path, validation(), "youden", default=0.3)
    decided = thresholds.read_decisions(tmp_path)
    assert decided.findings["Atelectasis"]["threshold"] == 0.3
    assert decided.default == 0.3 and "fell back to the default 0.3" in decided.summary()


def test_every_reader_gets_the_provenance(tmp_path):
    decisions.tune(tmp_path, validation(), "f1")
    decided = thresholds.read_decisions(tmp_path, default=0.9)  # the file's default wins
    assert decided.source == "thresholds.json (f1, tuned on validation)"
    assert thresholds.decision_thresholds(tmp_path, 0.9) == (list(decided.values),
                                                             decided.source)
    arrays = decided.arrays()  # what the SavedModel's metadata carries
    assert arrays["methods"][:5] == ["default", "default", "default", "f1", "f1"]
    assert arrays["positives"][:5] == [1, 3, 9, 10, 30]
    assert arrays["negatives"][:2] == [119, 117]
    assert arrays["reasons"][0] == "1 positive (fewer than 10)" and arrays["reasons"][3] == ""
    assert arrays["splits"] == ["validation"] * 14


def test_without_thresholds_json_every_finding_has_the_default(tmp_path):
    decided = thresholds.read_decisions(tmp_path, default=0.4)
    assert decided.values == (0.4,) * 14 and decided.source is None
    assert decided.summary() == "the default 0.4 for every finding (no thresholds.json)"
    assert decided.fell_back() == list(labels.LABELS)
    assert decided.arrays()["positives"] == [-1] * 14


def test_an_older_thresholds_json_has_unknown_counts_and_says_so(tmp_path):
    # What cxr_tf 0.2.0 wrote: no `findings`; its thresholds may rest on one positive.
    thresholds.write_thresholds(tmp_path, np.linspace(0.1, 0.9, 14), "f1", examples=45)
    decided = thresholds.read_decisions(tmp_path)
    assert decided.values == pytest.approx(np.linspace(0.1, 0.9, 14).tolist())
    assert decided.findings["Hernia"]["positives"] is None
    assert decided.summary() == (
        "14 tuned (f1 on validation) by an older cxr_tf that did not record how many cases "
        "each rests on: any of them may come from a handful of positives; tune them again")
    assert decided.arrays()["methods"] == ["f1"] * 14


def test_all_fitted_says_none_fell_back(tmp_path):
    y = np.zeros((100, 14), np.int8)
    y[:20] = 1
    logits = np.where(y == 1, 1.0, -1.0)
    rows = [{"labels": y[i]} for i in range(100)]
    decided = decisions.tune(tmp_path, decisions.Predicted(logits, None, rows), "f1")
    assert decided.summary() == "all 14 tuned (f1 on validation); none fell back to the default"


def test_a_new_calibration_tunes_the_existing_thresholds_again(tmp_path):
    from cxr_tf.evaluation.config import EvalConfig
    from cxr_tf.runs import calibration as calibration_file

    split = validation()
    decisions.tune(tmp_path, split, "youden", default=0.3)  # on uncalibrated probabilities
    config = EvalConfig(model_dir=str(tmp_path), split="validation", calibrate="temperature")
    done = decisions.fit(config, None, split)  # validation is the evaluated split: no predict
    assert sorted(done) == ["calibration", "thresholds"]
    content = json.loads((tmp_path / "thresholds.json").read_text())
    assert (content["method"], content["default"]) == ("youden", 0.3)  # tuned as before
    assert content["calibration"] == calibration_file.fingerprint(tmp_path)
    calibration_file.check_thresholds(tmp_path, content)  # the scale it was tuned on
    calibrated = done["calibration"].apply(split.logits)
    expected = metrics.tune_thresholds(split.labels(), calibrated, "youden", default=0.3)
    assert [content["thresholds"][n] for n in labels.LABELS] == pytest.approx(expected.tolist())
