"""A run dir written by cxr_tf 0.2.0 still loads, evaluates, exports and predicts.

tests/data/run_dir_0_2_0/ holds the text files 0.2.0 (commit 105949a) wrote for

    python -m cxr_tf.train --data_dir=TFDS --model_dir=RUN --arch=resnet18 --image_size=32 \
        --epochs=1 --steps_per_epoch=2 --batch_size=8 --thresholds=0.4,0.5
    python -m cxr_tf.evaluate --model_dir=RUN --split=validation --tune_thresholds=f1

on the suite's `prepared_dir` data (60 synthetic images, seed 0, prepared at 32 px), with its
absolute paths as @DATA_DIR@, @MODEL_DIR@ and @PACKAGE_DIR@. The checkpoints (45 MB each) are
rebuilt here as 0.2.0 saved them: a resnet18 as an uncompiled functional model, .keras.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

OLD_RUN = Path(__file__).resolve().parent / "data" / "run_dir_0_2_0"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def old_run(prepared_dir, tmp_path_factory):
    import keras

    from cxr_tf import model

    run = tmp_path_factory.mktemp("old") / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "history.csv", "thresholds.json"):
        text = (OLD_RUN / name).read_text()
        for placeholder, value in (("@DATA_DIR@", str(prepared_dir)), ("@MODEL_DIR@", str(run)),
                                   ("@PACKAGE_DIR@", "/site-packages/cxr_tf")):
            text = text.replace(placeholder, value)
        (run / name).write_text(text)
    keras.utils.set_random_seed(0)
    net = model.build_model("resnet18", 32, 14)
    lean = keras.Model(net.input, net.output, name=net.name)  # 0.2.0's run_dir.save_model
    for name in ("best", "last"):
        lean.save(run / "checkpoints" / f"{name}.keras")
    return run


def app(name, *args):
    proc = subprocess.run([sys.executable, "-m", f"cxr_tf.{name}", *args, "--json"],
                          capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tuned_thresholds():
    return json.loads((OLD_RUN / "thresholds.json").read_text())["thresholds"]


def test_the_record_reads_with_the_runs_values(old_run, prepared_dir):
    from cxr_tf.runs import record

    run = record.read(old_run)
    assert run.version == 1
    assert (run.config.arch, run.config.image_size, run.config.thresholds) == \
        ("resnet18", 32, (0.4, 0.5))
    assert (run.config.epochs, run.config.steps_per_epoch, run.config.batch_size) == (1, 2, 8)
    assert (run.resolved.data_dir, run.resolved.validation_examples) == (str(prepared_dir), 5)


def test_rerunning_its_command_finds_it_complete(old_run, prepared_dir):
    from cxr_tf.runs.config import RunConfig
    from cxr_tf.training import runner

    config = RunConfig(data_dir=str(prepared_dir), model_dir=str(old_run), arch="resnet18",
                       image_size=32, epochs=1, steps_per_epoch=2, batch_size=8,
                       thresholds=["0.4", "0.5"])
    assert runner.run(config) == {"model_dir": str(old_run), "complete": True}


# In process, through the apps' own functions (the apps as a user runs them: the slow tests).

def test_it_evaluates_with_its_split_and_tuned_thresholds(old_run):
    from cxr_tf.evaluation import runner
    from cxr_tf.evaluation.config import EvalConfig

    report = runner.evaluate(EvalConfig(model_dir=str(old_run), split="validation",
                                        bootstrap=0), progress=False)
    assert report["overall"]["examples"] == 5  # the run's validation split
    assert report["tuned_thresholds_from"]["method"] == "f1"
    assert report["thresholds"]["tuned"] == pytest.approx(list(tuned_thresholds().values()))


@pytest.fixture(scope="module")
def old_export(old_run, tmp_path_factory):
    from cxr_tf import export
    from cxr_tf.serving.config import ExportConfig

    export_dir = tmp_path_factory.mktemp("old_export") / "cxr" / "1"
    return export_dir, export.export_run(ExportConfig(model_dir=str(old_run),
                                                      export_dir=str(export_dir)))


def test_it_exports_with_its_tuned_thresholds(old_export):
    _, summary = old_export
    assert (summary["arch"], summary["image_size"]) == ("resnet18", 32)
    assert summary["thresholds_from"] == "thresholds.json (f1, tuned on validation)"
    assert summary["thresholds"] == pytest.approx(tuned_thresholds())


@pytest.mark.parametrize("model", ["run dir", "export"])
def test_it_predicts_with_its_tuned_thresholds(old_run, old_export, kaggle_dir, model):
    from cxr_tf.serving import predictor

    loaded = predictor.Predictor(str(old_run if model == "run dir" else old_export[0]))
    np.testing.assert_allclose(loaded.thresholds, list(tuned_thresholds().values()), rtol=1e-6)
    files = [str(p) for p in sorted(kaggle_dir.glob("images_*/images/*.png"))[:3]]
    rows, failures, _ = predictor.predict_files(loaded, files)
    assert (len(rows), failures) == (3, [])
    assert loaded.thresholds_from.startswith("thresholds.json (f1, tuned on validation)"
                                             if model == "run dir" else "as exported (cxr_tf ")


@pytest.mark.slow
def test_evaluate_reads_its_data_dir_split_and_tuned_thresholds(old_run):
    report = app("evaluate", f"--model_dir={old_run}", "--split=validation", "--bootstrap=0")
    assert report["overall"]["examples"] == 5  # the run's validation split
    assert report["tuned_thresholds_from"]["method"] == "f1"
    assert {key for key in report["overall"] if key.startswith("f1@")} >= \
        {"f1@0.4/macro", "f1@0.5/macro", "f1@tuned/macro"}


@pytest.mark.slow
def test_export_and_predict_use_its_tuned_thresholds(old_run, kaggle_dir, tmp_path):
    summary = app("export", f"--model_dir={old_run}", f"--export_dir={tmp_path / 'cxr' / '1'}")
    assert (summary["arch"], summary["image_size"]) == ("resnet18", 32)
    assert summary["thresholds_from"] == "thresholds.json (f1, tuned on validation)"
    assert summary["thresholds"] == pytest.approx(tuned_thresholds())
    files = sorted(kaggle_dir.glob("images_*/images/*.png"))[:3]
    for model in (old_run, tmp_path / "cxr" / "1"):
        out = app("predict", f"--model={model}", *map(str, files))
        assert (out["predicted"], out["failed"]) == (3, [])
    assert out["thresholds_from"].startswith("as exported")
