"""Decisions at the point of use, end to end: evaluate fits on validation (thresholds only
from findings with 10 positives and negatives, a calibration, the out-of-distribution
detector), export bakes them and a model card into the SavedModel, predict reports them,
and each app names the findings whose threshold fell back. The SavedModel is read as TF
Serving would, in a process without cxr_tf."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cxr_tf import labels
from cxr_tf.data import metadata
from cxr_tf.testing import processes

pytestmark = pytest.mark.slow  # every test here runs the apps

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
SIZE = 32
VAL_FRACTION = 0.5  # about 100 validation images: a few findings reach 10 positives


def app(*args, cwd=None, env=ENV, python=()):
    proc = subprocess.run([sys.executable, *python, "-m", *args], capture_output=True,
                          text=True, env=env, timeout=900, cwd=cwd)
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A raw Kaggle folder of 240 synthetic films, and a run dir on it (an untrained
    ResNet-18 at 32 px, half of train_val as validation) as training leaves it."""
    import keras

    from cxr_tf import model, synthetic
    from cxr_tf.runs import record
    from cxr_tf.runs.config import RunConfig

    root = tmp_path_factory.mktemp("point_of_use")
    data_dir = root / "kaggle"
    synthetic.generate(data_dir, num_images=240, image_size=64, seed=3, progress=False,
                       num_workers=1)
    run_dir = root / "run"
    keras.utils.set_random_seed(0)
    net = model.build_model("resnet18", SIZE, 14)
    os.makedirs(run_dir / "checkpoints")
    for name in ("best", "last"):
        net.save(run_dir / "checkpoints" / f"{name}.keras")
    config = RunConfig(model_dir=str(run_dir), data_dir=str(data_dir), image_size=SIZE,
                       arch="resnet18", val_fraction=VAL_FRACTION, thresholds=("0.5",))
    record.write(run_dir, record.RunRecord(config=config, resolved=record.Resolved(
        data_dir=str(data_dir), model_dir=str(run_dir), num_outputs=14,
        label_names=tuple(labels.LABELS), train_examples=88, validation_examples=97)))
    frame = metadata.build_index(data_dir, val_fraction=VAL_FRACTION, seed=0).frame
    positives = frame[frame.split == "validation"][list(labels.LABELS)].sum().to_dict()
    return run_dir, data_dir, frame, positives


@pytest.fixture(scope="module")
def evaluated(run):
    run_dir = run[0]
    proc = app("cxr_tf.evaluate", f"--model_dir={run_dir}", "--split=validation",
               "--tune_thresholds=f1", "--calibrate=temperature", "--fit_ood", "--bootstrap=0")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def exported(run, evaluated):
    run_dir = run[0]
    export_dir = run_dir.parent / "models" / "cxr" / "1"
    proc = app("cxr_tf.export", f"--model_dir={run_dir}", f"--export_dir={export_dir}")
    assert proc.returncode == 0, proc.stderr
    return export_dir, proc.stdout


def fallback_line(positives):
    """The line every app prints, built here from the split's own label counts."""
    low = [name for name in labels.LABELS if positives[name] < 10]
    total = sum(1 for _ in labels.LABELS)
    n = {name: int(positives[name]) for name in labels.LABELS}
    validation = 97
    cases = ", ".join(f"{name} ({n[name]}+/{validation - n[name]}−)" for name in low)
    return (f"{total - len(low)} of 14 tuned (f1 on validation); {len(low)} fell back to the "
            f"default 0.5 (fewer than 10 positives or negatives): {cases}")


def test_no_threshold_from_fewer_than_ten_cases_is_used_and_evaluate_says_so(run, evaluated):
    run_dir, _, frame, positives = run
    assert (frame.split == "validation").sum() == 97
    fitted = [name for name in labels.LABELS if positives[name] >= 10]
    assert fitted == ["Atelectasis", "Infiltration"]  # 16 and 17 positives; the rest 0..8
    assert f"Thresholds: {fallback_line(positives)}" in evaluated
    content = json.loads((run_dir / "thresholds.json").read_text())
    for name in labels.LABELS:
        entry = content["findings"][name]
        assert entry["positives"] == positives[name]
        if name in fitted:
            assert entry["method"] == "f1"
        else:
            assert entry["method"] == "default" and content["thresholds"][name] == 0.5
    # Thresholds were tuned on the calibrated probabilities, and say so.
    assert content["calibration"]["method"] == "temperature"
    calibration = json.loads((run_dir / "calibration.json").read_text())
    assert [n for n, e in calibration["findings"].items() if e["method"] != "none"] == fitted
    report = json.loads((run_dir / "eval_validation" / "report.json").read_text())
    assert report["calibration"]["ece_after"] <= report["calibration"]["ece_before"]
    assert report["ood"]["examples"] == 97 and report["ood"]["percentile"] == 99.5
    assert report["ood"]["in_distribution"] == 96  # the cut passes 99.5 % of validation
    assert report["threshold_provenance"]["fell_back"] == [
        n for n in labels.LABELS if n not in fitted]


def test_export_bakes_the_decisions_and_says_which_fell_back(run, exported):
    run_dir, _, _, positives = run
    export_dir, stdout = exported
    assert f"  {fallback_line(positives)}" in stdout
    assert f"Model card: {export_dir / 'assets' / 'model_card.json'}" in stdout
    assert "  calibration: temperature (2 of 14 outputs calibrated)" in stdout


_NO_CXR_TF = processes.BLOCK_CXR_TF + r"""
import numpy as np
import tensorflow as tf

model = tf.saved_model.load(sys.argv[1])
meta = {k: v.numpy() for k, v in model.signatures["metadata"]().items()}
card = json.loads(meta["model_card"].decode())
with open(f"{sys.argv[1]}/{meta['model_card_file'].decode()}") as f:
    card_file = json.load(f)
films = [open(path, "rb").read() for path in sys.argv[2:]]
noise = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1), dtype=np.uint8)
served = model.signatures["serving_default"](image_bytes=tf.constant(films))
noisy = model.signatures["predict_images"](images=tf.constant(noise))
print(json.dumps({
    "cxr_tf_modules": sorted(m for m in sys.modules if m.split(".")[0] == "cxr_tf"),
    "card": card, "same_card": card == card_file,
    "outputs": sorted(served),
    "probabilities": served["probabilities"].numpy().tolist(),
    "ood_score": served["ood_score"].numpy().tolist(),
    "noise_in_distribution": noisy["in_distribution"].numpy().tolist(),
    "thresholds": meta["thresholds"].tolist(),
    "methods": [m.decode() for m in meta["threshold_methods"]],
    "positives": meta["threshold_positives"].tolist(),
    "calibration": meta["calibration"].decode(),
    "ood_threshold": float(meta["ood_threshold"]),
}))
"""


def test_a_process_without_cxr_tf_reads_the_card_decisions_and_flags(run, exported, tmp_path):
    run_dir, data_dir, frame, positives = run
    export_dir, _ = exported
    test_files = sorted(str(data_dir / p) for p in frame[frame.split == "test"].path)[:8]
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _NO_CXR_TF, str(export_dir), *test_files],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cxr_tf_modules"] == [] and out["same_card"]
    assert out["outputs"] == ["in_distribution", "ood_score", "positive", "probabilities"]
    assert out["noise_in_distribution"] == [False, False]
    content = json.loads((run_dir / "thresholds.json").read_text())
    assert out["thresholds"] == pytest.approx([content["thresholds"][n] for n in labels.LABELS])
    assert out["methods"] == [content["findings"][n]["method"] for n in labels.LABELS]
    assert out["positives"] == [positives[n] for n in labels.LABELS]
    assert out["calibration"] == "temperature"
    card = out["card"]
    assert {"schema_version", "model_details", "model_parameters", "quantitative_analysis",
            "considerations"} <= set(card)
    params = card["model_parameters"]
    assert params["label_names"] == list(labels.LABELS)
    assert params["training_config"]["arch"] == "resnet18"
    assert params["data"][1]["patient_wise"] and params["data"][1]["examples"] == 97
    assert params["decision_thresholds"]["summary"] == fallback_line(positives)
    assert params["calibration"]["method"] == "temperature"
    assert params["out_of_distribution"]["threshold"] == pytest.approx(out["ood_threshold"],
                                                                       rel=1e-6)
    metric = next(m for m in card["quantitative_analysis"]["performance_metrics"]
                  if m["slice"] == "validation/Hernia")
    assert (metric["value"], metric["positives"]) == (None, 0)
    assert "NLP" in " ".join(x["description"] for x in card["considerations"]["limitations"])
    assert card["model_details"]["package_versions"] is None  # this run dir records none

    # predict on the same files gives the served probabilities (PIL and the graph resize
    # these 64 -> 32 px films identically) and the same calibration.
    csv_path = tmp_path / "preds.csv"
    proc = app("cxr_tf.predict", f"--model={run_dir}", *test_files, f"--output={csv_path}")
    assert proc.returncode == 0, proc.stderr
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    predicted = np.array([[float(r[n]) for n in labels.LABELS] for r in rows])
    np.testing.assert_allclose(predicted, out["probabilities"], atol=1e-3)
    np.testing.assert_allclose([float(r["ood_score"]) for r in rows], out["ood_score"],
                               rtol=1e-3)


def test_predict_reports_the_decisions_beside_its_csv(run, exported, tmp_path):
    run_dir, data_dir, frame, positives = run
    export_dir, _ = exported
    files = sorted(str(data_dir / p) for p in frame[frame.split == "test"].path)[:3]
    for model in (export_dir, run_dir):
        out = tmp_path / f"{model.name}.csv"
        proc = app("cxr_tf.predict", f"--model={model}", *files, f"--output={out}")
        assert proc.returncode == 0, proc.stderr
        assert f"Thresholds: {fallback_line(positives)}" in proc.stdout
        with open(out, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        assert reader.fieldnames == ["file", *labels.LABELS, "positive_labels",
                                     *(f"{n}_positive" for n in labels.LABELS), "ood_score",
                                     "in_distribution"]
        for row in rows:
            decided = [n for n in labels.LABELS if row[f"{n}_positive"] == "1"]
            assert row["positive_labels"] == ("|".join(decided) or labels.NO_FINDING)
            assert row["in_distribution"] in ("0", "1") and float(row["ood_score"]) > 0
        beside = json.loads((tmp_path / f"{model.name}.thresholds.json").read_text())
        assert beside["summary"] == fallback_line(positives)
        assert beside["findings"]["Hernia"]["method"] == "default"
        assert beside["findings"]["Hernia"]["positives"] == 0
        assert beside["calibration"] == "temperature" and beside["ood_method"] == "mahalanobis"


def test_saved_model_cli_alone_names_labels_thresholds_and_the_card(exported):
    export_dir, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--dir", str(export_dir), "--all"],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    content = json.loads((export_dir.parents[2] / "run" / "thresholds.json").read_text())
    for name in labels.LABELS:
        assert f"'{name}': {round(content['thresholds'][name], 6)}" in text
    assert "'model_card': 'assets/model_card.json" in text
    assert "outputs['in_distribution']" in text and "outputs['ood_score']" in text
    assert "outputs['model_card'] tensor_info" in text


def test_predict_refuses_an_empty_input_set(exported, tmp_path):
    export_dir, _ = exported
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image")
    out = tmp_path / "preds.csv"
    # -X importtime: Python lists every module the process imported on stderr.
    proc = app("cxr_tf.predict", f"--model={export_dir}", str(empty), f"--output={out}",
               python=["-X", "importtime"])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: no image file (.png, .jpg, .jpeg, .dcm, .dicom) found under {empty}")
    assert not out.exists() and proc.stdout == ""
    # Refused before TensorFlow started: the user does not wait seconds for this line.
    imported = re.findall(r"\| +([\w.]+)$", proc.stderr, re.MULTILINE)
    assert "cxr_tf.serving.inputs" in imported and "tensorflow" not in imported
