"""Every keras.applications family through the apps' library functions, in this process: train
two steps (`runner.run`, as `python -m cxr_tf.train` calls it), evaluate, export (the
SavedModel serves PNG bytes), predict with Grad-CAM from the run dir. The apps' flags and
messages do not depend on the arch: the ResNets run them as a user does (test_train,
test_evaluate, test_export, test_predict). MirroredStrategy's numbers are checked there once,
on ResNet's BatchNorms, and every family's BatchNorms are synchronized (tests/test_model.py)."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """Two PNG films at the model's size: the predict app and the SavedModel resize in two
    implementations that round one gray level apart on some pixels (tests/test_predict.py
    compares them), which a trained model's probabilities would show."""
    folder = tmp_path_factory.mktemp("films")
    rng = np.random.default_rng(5)
    for name, shape in (("a.png", (32, 32)), ("b.png", (32, 32))):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
        (folder / name).write_bytes(buf.getvalue())
    return sorted(str(path) for path in folder.iterdir())


@pytest.mark.slow  # about a minute per family here: their graphs are large
# EfficientNetV2-S passed it too: not repeated on every run (docs/TESTING.md).
@pytest.mark.parametrize("arch", ["densenet121", "convnext_tiny"])
def test_train_evaluate_export_and_predict(arch, prepared_dir, films, tmp_path):
    import tensorflow as tf

    from cxr_tf import export
    from cxr_tf.evaluation import runner as evaluation
    from cxr_tf.evaluation.config import EvalConfig
    from cxr_tf.runs import history
    from cxr_tf.runs.config import RunConfig
    from cxr_tf.serving import predictor
    from cxr_tf.serving.config import ExportConfig
    from cxr_tf.training import runner

    run_dir, export_dir = tmp_path / "run", tmp_path / "export" / "1"
    summary = runner.run(RunConfig(
        data_dir=str(prepared_dir), model_dir=str(run_dir), arch=arch, image_size=32,
        batch_size=4, learning_rate=0.001, augment=False, epochs=1, steps_per_epoch=2),
        verbose=0)
    assert summary["epochs_run"] == 1 and not summary["terminated_on_nan"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == arch

    report = evaluation.evaluate(EvalConfig(model_dir=str(run_dir), split="validation",
                                            bootstrap=0), progress=False)
    assert report["overall"]["examples"] == config["validation_examples"]
    # evaluate (best.keras, the only epoch) scores the validation split as training did.
    # (Micro figures: the per-finding ones are withheld below 10 positives and 10 negatives.)
    logged = history.read_history(run_dir)[-1]
    for key in ("f1@0.5/micro", "recall@0.5/micro"):
        assert report["overall"][key] == pytest.approx(float(logged[f"val/{key}"]), abs=1e-6)

    export.export_run(ExportConfig(model_dir=str(run_dir), export_dir=str(export_dir)))
    # Served as TF Serving would: the SavedModel's signature on PNG bytes.
    serving = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    data = [open(path, "rb").read() for path in films]
    served = serving(image_bytes=tf.constant(data))["probabilities"].numpy()

    rows, failures, overlays = predictor.predict_files(
        predictor.Predictor(str(run_dir)), films, gradcam_dir=str(tmp_path / "cam"))
    assert len(rows) == 2 and failures == []
    # The SavedModel fed PNG bytes and the run dir's Keras model give the same probabilities.
    by_file = {os.path.basename(row["file"]): row["probabilities"] for row in rows}
    np.testing.assert_allclose([by_file["a.png"], by_file["b.png"]], served, atol=1e-5)
    assert served.shape == (2, 14)
    # One overlay per film at least (its positive findings, else its top one), each a PNG.
    assert len(overlays) >= 2 and all(os.path.isfile(path) for path in overlays)
    assert {os.path.basename(p).split("_")[0] for p in overlays} >= {"a", "b"}
    assert Image.open(overlays[0]).format == "PNG"
