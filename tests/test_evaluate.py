"""The evaluate app and its library (cxr_tf.evaluation.runner) on the prepared synthetic
fixture: files, figures, threshold tuning; EvalConfig's checks and the flags made from it."""

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import app
from absl import flags as absl_flags
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_tf import errors, evaluate, flags, labels
from cxr_tf.data import input_pipeline, source
from cxr_tf.evaluation import metrics, runner
from cxr_tf.evaluation.config import ArgumentsError, EvalConfig
from cxr_tf.runs import RunDirError, history, record, thresholds

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
def run(trained_run, tmp_path_factory):
    """A copy of the session's trained run (thresholds 0.4, 0.5) and its best model."""
    from cxr_tf.runs import checkpoints

    path = shutil.copytree(trained_run[0], tmp_path_factory.mktemp("evaluate") / "run")
    return path, checkpoints.load_model(str(path))


@pytest.fixture(scope="module")
def estimable_run(estimable_dir, tmp_path_factory, make_run_dir):
    """An untrained run on `estimable_dir`, whose test split has estimable AUCs."""
    path = tmp_path_factory.mktemp("estimable_run") / "run"
    return path, make_run_dir(path, estimable_dir, thresholds=("0.4", "0.5"))


def test_report_files_and_figures_match_scikit_learn(estimable_run, estimable_dir):
    path, net = estimable_run
    report = runner.evaluate(EvalConfig(model_dir=str(path), bootstrap=100), progress=False)
    assert not (path / "thresholds.json").exists()  # evaluating test never writes thresholds
    out = path / "eval_test"
    for name in ("report.json", "report.md", "roc.png", "pr.png", "calibration.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("roc.png", "pr.png", "calibration.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and min(img.size) >= 400
    saved = json.loads((out / "report.json").read_text())  # strict JSON: no NaN
    assert saved["per_class"] == report["per_class"]
    y, probs, rows = split_probs(net, estimable_dir, "test")
    assert report["overall"]["examples"] == len(rows) == 46
    assert report["overall"]["patients"] == len({r["patient_id"] for r in rows})
    # The report's figures against scikit-learn on this test's own predictions (a separate
    # predict call: equal to float32 rounding). A finding with fewer than 10 positives or
    # negatives has no AUC, with its counts and the reason.
    aucs = []
    for c, name in enumerate(labels.LABELS):
        row = report["per_class"][name]
        positives = int(y[:, c].sum())
        negatives = len(y) - positives
        assert (row["positives"], row["negatives"]) == (positives, negatives)
        if min(positives, negatives) >= metrics.MIN_CLASS_COUNT:
            aucs.append(roc_auc_score(y[:, c], probs[:, c]))
            assert row["auc"] == pytest.approx(aucs[-1], abs=1e-6), name
            assert row["average_precision"] == pytest.approx(
                average_precision_score(y[:, c], probs[:, c]), abs=1e-6), name
            assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
            assert row["auc_not_estimable"] is None
        else:
            assert row["auc"] is None and row["auc_ci_low"] is None
            assert row["auc_not_estimable"] == metrics.not_estimable_reason(positives, negatives)
    assert len(aucs) >= 10 and report["overall"]["auc_mean_over"] == len(aucs)
    assert report["overall"]["auc_mean"] == pytest.approx(np.mean(aucs), abs=1e-6)
    assert set(report["thresholds"]) == {"0.4", "0.5"}  # no thresholds.json: no "tuned"
    assert set(report["subgroups"]) == {"sex", "age_band", "view"}
    assert sum(g["examples"] for g in report["subgroups"]["sex"].values()) == len(rows)
    text = (out / "report.md").read_text()
    assert "# Evaluation on test" in text and "Wang 2017" in text
    assert f"| **mean** over {len(aucs)} findings with an AUC |" in text


def test_evaluating_validation_gives_the_figures_training_logged(run):
    """The last checkpoint on the validation split: the figures EpochMetrics wrote to
    history.csv at the end of the last epoch, from the same weights and images."""
    path, _ = run
    report = runner.evaluate(EvalConfig(model_dir=str(path), split="validation",
                                        checkpoint="last", bootstrap=0), progress=False)
    last = history.read_history(path)[-1]
    assert last["epoch"] == 2
    assert report["overall"]["examples"] == record.read(path).resolved.validation_examples == 5
    # Micro figures: the macro ones and paper_auc are withheld below 10 positives and 10
    # negatives a finding (5 validation images here), which training's log does not do.
    for key in ("f1@0.4/micro", "f1@0.5/micro", "recall@0.5/micro",
                "precision@0.4/micro"):
        assert report["overall"][key] == pytest.approx(float(last[f"val/{key}"]), abs=1e-9), key


def test_thresholds_are_tuned_on_validation_only(run, prepared_dir):
    path, net = run
    thresholds_file = path / "thresholds.json"
    report = runner.evaluate(EvalConfig(model_dir=str(path), bootstrap=0, tune_thresholds="f1",
                                        threshold=0.45), progress=False)
    written = json.loads(thresholds_file.read_text())
    assert written["split"] == "validation" and written["method"] == "f1"
    # The fixture's validation split has a handful of images: no finding reaches 10
    # positives and 10 negatives, so every threshold keeps the given default, and the counts
    # it records are validation's, not test's (tests/test_point_of_use.py fits some).
    y_val, p_val, _ = split_probs(net, prepared_dir, "validation")
    y_test = split_probs(net, prepared_dir, "test")[0]
    assert y_val.sum(axis=0).tolist() != y_test.sum(axis=0).tolist()
    for c, name in enumerate(labels.LABELS):
        entry = written["findings"][name]
        assert (entry["positives"], entry["negatives"]) == (int(y_val[:, c].sum()),
                                                            len(y_val) - int(y_val[:, c].sum()))
        assert entry["method"] == "default" and written["thresholds"][name] == 0.45
    np.testing.assert_allclose(
        metrics.tune_thresholds(y_val, p_val, "f1", default=0.45), [0.45] * 14)
    assert report["thresholds"]["tuned"] == [0.45] * 14
    assert report["threshold_provenance"]["summary"].startswith(
        "0 of 14 tuned (f1 on validation); 14 fell back to the default 0.45 (fewer than 10 "
        "positives or negatives): Atelectasis (")

    before = thresholds_file.read_bytes()
    runner.evaluate(EvalConfig(model_dir=str(path), bootstrap=0), progress=False)
    assert thresholds_file.read_bytes() == before


@pytest.mark.slow
def test_evaluate_app_json(run):
    path, _ = run
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.evaluate", f"--model_dir={path}", "--split=validation",
         "--bootstrap=20", "--json"], capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)  # one JSON object and nothing else on stdout
    assert printed["split"] == "validation" and printed["bootstrap"]["replicates"] == 20
    assert json.loads((path / "eval_validation" / "report.json").read_text()) == printed


def test_no_finding_output_report(prepared_dir, tmp_path, make_run_dir):
    net = make_run_dir(tmp_path / "run15", prepared_dir, num_outputs=15, seed=1,
                       thresholds=("0.4", "0.5"))
    report = runner.evaluate(EvalConfig(model_dir=str(tmp_path / "run15"), bootstrap=0),
                             progress=False)
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
        runner.evaluate(EvalConfig(model_dir=str(tmp_path)))
    assert thresholds.read_thresholds(str(tmp_path)) == (None, None)


# --- EvalConfig: one check of the arguments, whoever builds it --------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({}, "model_dir is required"),
    ({"model_dir": "R", "dataset": "chexpert"},
     "dataset=chexpert needs data_dir (the TFDS dir holding the prepared chexpert dataset)"),
    ({"model_dir": "R", "dataset": "chexpert", "data_dir": "D", "split": "validation"},
     "split, tune_thresholds, bbox_csv and expert_labels work on NIH data (dataset=chexpert "
     "always evaluates CheXpert's validation split)"),
    ({"model_dir": "R", "dataset": "chexpert", "data_dir": "D", "given": ("split",)},
     "split, tune_thresholds, bbox_csv and expert_labels work on NIH data (dataset=chexpert "
     "always evaluates CheXpert's validation split)"),
    ({"model_dir": "R", "dataset": "chexpert", "data_dir": "D", "bbox_csv": "b.csv"},
     "split, tune_thresholds, bbox_csv and expert_labels work on NIH data (dataset=chexpert "
     "always evaluates CheXpert's validation split)"),
    ({"model_dir": "R", "views": ("lateral",)},
     "uncertain_labels and views apply to dataset=chexpert"),
    ({"model_dir": "R", "given": ("uncertain_labels",)},
     "uncertain_labels and views apply to dataset=chexpert"),
])
def test_arguments_that_do_not_go_together_are_refused(kwargs, message):
    with pytest.raises(ArgumentsError) as raised:
        EvalConfig(**kwargs)
    assert str(raised.value) == message
    assert isinstance(raised.value, errors.UserError)


def test_an_arguments_error_spells_the_names_as_the_caller_asks():
    error = ArgumentsError("{uncertain_labels} and {views} apply to {dataset}=chexpert")
    assert error.spelled(lambda name: f"--{name}") == (
        "--uncertain_labels and --views apply to --dataset=chexpert")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "train"}, "split must be one of test, validation; received split='train'"),
    ({"bootstrap": -1}, "bootstrap must be at least 0; received bootstrap=-1"),
    ({"batch_size": 0}, "batch_size must be at least 1; received batch_size=0"),
    ({"views": ("frontal", "oblique")}, "views must be one of frontal, lateral; received "
                                        "views=('frontal', 'oblique')"),
    ({"views": ()}, "views must name at least one of frontal, lateral; received views=()"),
    ({"tune_thresholds": "auc"}, "tune_thresholds must be one of f1, youden; received "
                                 "tune_thresholds='auc'"),
])
def test_a_bad_value_is_a_config_error_naming_the_argument(kwargs, message):
    with pytest.raises(errors.ConfigError) as raised:
        EvalConfig(model_dir="R", **kwargs)
    assert str(raised.value) == message


def test_what_goes_together_is_accepted():
    config = EvalConfig(model_dir="R", dataset="chexpert", data_dir="D",
                        views=["frontal", "lateral"], uncertain_labels="zeros",
                        given=("views", "uncertain_labels"))
    assert config.views == ("frontal", "lateral") and config.split == "test"
    assert EvalConfig(model_dir="R", split="validation", tune_thresholds="youden",
                      given=("split", "tune_thresholds")).tune_thresholds == "youden"


def test_the_config_names_the_choices_the_library_knows():
    from cxr_tf.data import chexpert
    from cxr_tf.evaluation import calibration, config, external
    from cxr_tf.runs import calibration as calibration_file

    assert config.VIEWS == chexpert.VIEWS and config.UNCERTAIN_POLICIES == external.POLICIES
    y = np.array([[0], [1], [0], [1]])
    scores = np.array([[0.1], [0.8], [0.3], [0.6]])
    for method in config.TUNING_METHODS:  # each accepted: 0.6 splits the classes
        assert metrics.tune_thresholds(y, scores, method, min_count=1).tolist() == [0.6]
    assert config.CALIBRATION_METHODS == (*calibration.METHODS, calibration_file.NONE)


# --- the app: flags made from EvalConfig, conflicts spelled as flags ---------------------------

def parse(*args):
    values = absl_flags.FlagValues()
    flags.define_evaluate_flags(values)
    values(["evaluate", *args])
    return values


def test_the_apps_flags_are_evalconfigs_fields():
    values = parse()
    fields = [f.name for f in dataclasses.fields(EvalConfig) if f.name != "given"]
    assert set(values) == set(fields) | {"json", "tf_logs"}
    assert {name: values[name].default for name in fields} == {
        "model_dir": None, "split": "test", "data_dir": None, "checkpoint": "best",
        "bootstrap": 1000, "tune_thresholds": None, "threshold": 0.5, "calibrate": "none",
        "fit_ood": False, "ood_percentile": 99.5, "batch_size": 64, "expert_labels": None,
        "bbox_csv": None, "dataset": "nih", "uncertain_labels": "ignore", "views": ["frontal"],
        "verify_data": False}
    assert values["calibrate"].parser.enum_values == ["temperature", "platt", "isotonic", "none"]
    assert values["split"].parser.enum_values == ["test", "validation"]
    assert values["batch_size"].help == "Images per prediction batch. [1, 2147483647]"
    config = evaluate.build_config(parse("--model_dir=R", "--split=validation",
                                         "--tune_thresholds=f1", "--bootstrap=20"))
    assert config == EvalConfig(model_dir="R", split="validation", tune_thresholds="f1",
                                bootstrap=20, given=("model_dir", "split", "bootstrap",
                                                     "tune_thresholds"))


@pytest.mark.parametrize("args, message", [
    ([], "--model_dir is required"),
    (["--model_dir=R", "--dataset=chexpert"], "--dataset=chexpert needs --data_dir (the TFDS "
                                               "dir holding the prepared chexpert dataset)"),
    (["--model_dir=R", "--dataset=chexpert", "--data_dir=D", "--split=test"],
     "--split, --tune_thresholds, --bbox_csv and --expert_labels work on NIH data "
     "(--dataset=chexpert always evaluates CheXpert's validation split)"),
    (["--model_dir=R", "--uncertain_labels=ignore"],
     "--uncertain_labels and --views apply to --dataset=chexpert"),
    (["--model_dir=R", "--dataset=chexpert", "--data_dir=D", "--calibrate=platt"],
     "--calibrate, --fit_ood, --ood_percentile and --threshold fit on NIH's validation split; "
     "they do not apply to --dataset=chexpert"),
    (["--model_dir=R", "--ood_percentile=40"],
     "flag --ood_percentile=40.0: must be at least 50.0"),
    (["--model_dir=R", "--views=frontal,oblique"],
     "flag --views=frontal,oblique: must be one of frontal, lateral"),
    (["--model_dir=R", "--views="], "flag --views=: must name at least one of frontal, lateral"),
])
def test_the_app_refuses_with_the_flags_spelling(args, message):
    with pytest.raises(app.UsageError) as raised:
        evaluate.build_config(parse(*args))
    assert str(raised.value) == message
