"""The evaluate app on the prepared synthetic fixture: files, figures, threshold tuning."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxr_tf import evaluate, labels
from cxr_tf.data import input_pipeline, source
from cxr_tf.evaluation import metrics
from cxr_tf.runs import RunDirError, thresholds

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
SIZE = 32


def split_probs(net, data_dir, split):
    """(labels, probabilities) of a split, computed here independently of cxr_tf.evaluate."""
    data = source.open_source(data_dir, image_size=SIZE)
    rows = data.rows(split)
    pixels = np.concatenate([x.numpy() for x, _ in input_pipeline.make_for_eval(
        data, split, batch_size=8)])
    probs = metrics.sigmoid(net.predict(pixels, verbose=0))
    return np.stack([r["labels"] for r in rows]), probs, rows


@pytest.fixture(scope="module")
def run(prepared_dir, tmp_path_factory, make_run_dir):
    path = tmp_path_factory.mktemp("evaluate") / "run"
    return path, make_run_dir(path, prepared_dir, thresholds=("0.4", "0.5"))


def test_report_files_and_figures_match_scikit_learn(run, prepared_dir):
    path, net = run
    report = evaluate.evaluate_run(str(path), "test", n_boot=100, progress=False)
    assert not (path / "thresholds.json").exists()  # evaluating test never writes thresholds
    out = path / "eval_test"
    for name in ("report.json", "report.md", "roc.png", "pr.png", "calibration.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("roc.png", "pr.png", "calibration.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and min(img.size) >= 400
    saved = json.loads((out / "report.json").read_text())  # strict JSON: no NaN
    assert saved["per_class"] == report["per_class"]
    y, probs, rows = split_probs(net, prepared_dir, "test")
    assert report["overall"]["examples"] == len(rows)
    assert report["overall"]["patients"] == len({r["patient_id"] for r in rows})
    # 14 test images: no finding reaches 10 positives and 10 negatives, so every AUC is
    # reported as not estimable, with its counts (tests/test_expert_labels.py checks the
    # figures against scikit-learn through evaluate on a larger synthetic split).
    for c, name in enumerate(labels.LABELS):
        row = report["per_class"][name]
        positives = int(y[:, c].sum())
        assert (row["positives"], row["negatives"]) == (positives, len(y) - positives)
        assert row["auc"] is None and row["auc_ci_low"] is None
        assert row["auc_not_estimable"] == metrics.not_estimable_reason(positives,
                                                                       len(y) - positives)
    assert report["overall"]["auc_mean"] is None and report["overall"]["auc_mean_over"] == 0
    assert set(report["thresholds"]) == {"0.4", "0.5"}  # no thresholds.json: no "tuned"
    assert set(report["subgroups"]) == {"sex", "age_band", "view"}
    assert sum(g["examples"] for g in report["subgroups"]["sex"].values()) == len(rows)
    text = (out / "report.md").read_text()
    assert "# Evaluation on test" in text and "Wang 2017" in text


def test_thresholds_are_tuned_on_validation_only(run, prepared_dir):
    path, net = run
    thresholds_file = path / "thresholds.json"
    report = evaluate.evaluate_run(str(path), "test", n_boot=0, tune="f1", progress=False)
    written = json.loads(thresholds_file.read_text())
    assert written["split"] == "validation" and written["method"] == "f1"
    y_val, p_val, _ = split_probs(net, prepared_dir, "validation")
    on_validation = metrics.tune_thresholds(y_val, p_val, "f1")
    on_test = metrics.tune_thresholds(*split_probs(net, prepared_dir, "test")[:2], "f1")
    got = np.array([written["thresholds"][name] for name in labels.LABELS])
    # Two separate predict calls agree to float32 rounding only (different batching and CPU
    # kernels gave 1e-7 relative), so: equal within what float32 can guarantee, and far from
    # the thresholds tuned on test.
    np.testing.assert_allclose(got, on_validation, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, on_test, rtol=1e-5, atol=1e-6)
    assert report["thresholds"]["tuned"] == pytest.approx(got.tolist())
    assert report["per_class"]["Atelectasis"]["tuned_threshold"] == pytest.approx(got[0])

    before = thresholds_file.read_bytes()
    evaluate.evaluate_run(str(path), "test", n_boot=0, progress=False)
    assert thresholds_file.read_bytes() == before


def test_evaluate_app_json(run):
    path, _ = run
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.evaluate", f"--model_dir={path}", "--split=validation",
         "--bootstrap=20", "--json"], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)  # one JSON object and nothing else on stdout
    assert printed["split"] == "validation" and printed["bootstrap"]["replicates"] == 20
    assert json.loads((path / "eval_validation" / "report.json").read_text()) == printed


def test_no_finding_output_report(prepared_dir, tmp_path, make_run_dir):
    net = make_run_dir(tmp_path / "run15", prepared_dir, num_outputs=15, seed=1,
                       thresholds=("0.4", "0.5"))
    report = evaluate.evaluate_run(str(tmp_path / "run15"), "test", n_boot=0, progress=False)
    y, probs, _ = split_probs(net, prepared_dir, "test")
    wins = probs[:, 14] > probs[:, :14].max(axis=1)
    nf = report["no_finding"]
    assert nf["examples_suppressed"] == int(wins.sum())
    constrained = np.where(wins[:, None], -1.0, probs[:, :14])
    f1 = metrics.threshold_metrics(y, constrained, 0.5)["f1_macro"]
    assert nf["f1@0.5/macro"]["with"] == pytest.approx(f1)
    text = (tmp_path / "run15" / "eval_test" / "report.md").read_text()
    assert "## No Finding constraint" in text


def test_not_a_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirError, match=f"^{tmp_path}: not a run dir \\(no config.json\\); "
                                          "a run dir is what training writes"):
        evaluate.evaluate_run(str(tmp_path), "test")
    assert thresholds.read_thresholds(str(tmp_path)) == (None, None)
