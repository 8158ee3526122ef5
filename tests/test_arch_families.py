"""Every keras.applications family through the apps, in subprocesses as a user runs them: train
two steps, evaluate, export (the SavedModel serves PNG bytes), predict with Grad-CAM from the
run dir. The ResNets have their own tests (test_train, test_export, test_predict,
test_mirrored); MirroredStrategy's numbers are checked there once, on ResNet's BatchNorms, and
every family's BatchNorms are synchronized (tests/test_model.py, in process)."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
# The layer Grad-CAM explains: the one whose output feeds `avg_pool`.
FEATURE_LAYER = {"densenet121": "relu", "efficientnetv2_s": "top_activation",
                 "convnext_tiny": "convnext_tiny_stage_3_out"}
TINY = ["--image_size=32", "--batch_size=4", "--learning_rate=0.001", "--noaugment",
        "--deterministic", "--epochs=1", "--steps_per_epoch=2", "--json"]
# Runs its arguments (`-m MODULE ARGS`) in a process with two logical CPUs (test_mirrored).
TWO_CPUS = """
import runpy, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
_, module, *args = sys.argv[1:]  # -m MODULE ARGS
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
# Serves PNG bytes with TensorFlow alone, as TF Serving would.
SERVE = """
import json, sys
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
data = [open(path, "rb").read() for path in sys.argv[2:]]
out = model.signatures["serving_default"](image_bytes=tf.constant(data))
print(json.dumps({"probabilities": out["probabilities"].numpy().tolist()}))
"""


def run(*args, two_cpus=False):
    prefix = [sys.executable, "-c", TWO_CPUS] if two_cpus else [sys.executable]
    proc = subprocess.run([*prefix, *args], capture_output=True, text=True, env=ENV,
                          timeout=1800)
    assert proc.returncode == 0, f"{args[:2]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


@pytest.mark.slow  # 2-4 min per family here
# EfficientNetV2-S passed it too (1.5 min here): not repeated on every run (docs/TESTING.md).
@pytest.mark.parametrize("arch", ["densenet121", "convnext_tiny"])
def test_train_evaluate_export_and_predict(arch, prepared_dir, films, tmp_path):
    run_dir, export_dir = tmp_path / "run", tmp_path / "export" / "1"
    summary = last_json(run("-m", "cxr_tf.train", f"--data_dir={prepared_dir}",
                            f"--model_dir={run_dir}", f"--arch={arch}", *TINY))
    assert summary["epochs_run"] == 1 and not summary["terminated_on_nan"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == arch

    report = last_json(run("-m", "cxr_tf.evaluate", f"--model_dir={run_dir}",
                           "--split=validation", "--bootstrap=0", "--json"))
    assert report["overall"]["examples"] == config["validation_examples"]
    # evaluate (best.keras, the only epoch) scores the validation split as training did.
    # (Micro figures: the per-finding ones are withheld below 10 positives and 10 negatives.)
    from cxr_tf.runs import history

    logged = history.read_history(run_dir)[-1]
    for key in ("f1@0.5/micro", "recall@0.5/micro"):
        assert report["overall"][key] == pytest.approx(float(logged[f"val/{key}"]), abs=1e-6)

    run("-m", "cxr_tf.export", f"--model_dir={run_dir}", f"--export_dir={export_dir}")
    served = last_json(run("-c", SERVE, str(export_dir), *films))["probabilities"]

    cam_dir = tmp_path / "cam"
    predicted = last_json(run("-m", "cxr_tf.predict", f"--model={run_dir}",
                              f"--gradcam_dir={cam_dir}", "--json", *films))
    assert predicted["predicted"] == 2 and predicted["failed"] == []
    # The SavedModel fed PNG bytes and the run dir's Keras model give the same probabilities.
    by_file = {os.path.basename(row["file"]): row["probabilities"]
               for row in predicted["predictions"]}
    np.testing.assert_allclose([by_file["a.png"], by_file["b.png"]], served, atol=1e-5)
    assert np.asarray(served).shape == (2, 14)
    # One overlay per film at least (its positive findings, else its top one), each a PNG.
    overlays = predicted["gradcam"]
    assert len(overlays) >= 2 and all(os.path.isfile(path) for path in overlays)
    assert {os.path.basename(p).split("_")[0] for p in overlays} >= {"a", "b"}
    assert Image.open(overlays[0]).format == "PNG"
