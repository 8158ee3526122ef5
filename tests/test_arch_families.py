"""Every keras.applications family through the apps, in subprocesses as a user runs them: train
two steps, evaluate, export (the SavedModel serves PNG bytes), predict with Grad-CAM from the
run dir; MirroredStrategy on two logical CPUs; and the demo with DenseNet-121. The ResNets
have their own tests (test_train, test_export, test_predict, test_mirrored)."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
FAMILIES = ["densenet121", "efficientnetv2_s", "convnext_tiny"]
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
@pytest.mark.parametrize("arch", FAMILIES)
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
    assert report["overall"]["paper_auc@0.5"] == pytest.approx(
        summary["final"]["val/paper_auc@0.5"], abs=1e-6)

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


@pytest.mark.slow  # about a minute per family here
@pytest.mark.parametrize("arch", FAMILIES)
def test_mirrored_two_replicas(arch, prepared_dir, tmp_path):
    """One step on two replicas (synchronized BatchNorm, averaged gradients) equals one step
    on one device; EfficientNetV2's stochastic depth draws other masks on each replica, so
    there only the run itself is checked."""
    import keras

    args = ["--image_size=32", "--batch_size=4", "--learning_rate=0.001", "--optimizer=sgd",
            "--noaugment", "--deterministic", "--epochs=1", "--steps_per_epoch=1", "--json"]
    one, two = tmp_path / "one", tmp_path / "two"
    run("-m", "cxr_tf.train", f"--data_dir={prepared_dir}", f"--model_dir={one}",
        f"--arch={arch}", *args)
    summary = last_json(run("-m", "cxr_tf.train", f"--data_dir={prepared_dir}",
                            f"--model_dir={two}", f"--arch={arch}", "--strategy=mirrored", *args,
                            two_cpus=True))
    assert summary["num_replicas_in_sync"] == 2 and not summary["terminated_on_nan"]
    nets = [keras.models.load_model(d / "checkpoints" / "last.keras", compile=False)
            for d in (one, two)]
    norms = [l for l in nets[1].layers if isinstance(l, keras.layers.BatchNormalization)]
    assert all(bn.synchronized for bn in norms)
    assert len(norms) == {"densenet121": 121, "efficientnetv2_s": 110, "convnext_tiny": 0}[arch]
    if arch != "efficientnetv2_s":
        # DenseNet at 32 px: its last block's BatchNorms see 1×1 maps, 4 values a channel,
        # whose near-zero variances amplify float32 rounding: measured 1.5e-4 on the stem
        # kernel, which the step moved by 8.7e-2. Without synchronization the same step
        # differed by 1.8e5 (2 values a replica). ConvNeXt (LayerNorm only): within 2e-5.
        atol = {"densenet121": 2e-3, "convnext_tiny": 2e-5}[arch]
        for a, b in zip(*[net.weights for net in nets]):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=atol, err_msg=a.path)
    # The Keras model Grad-CAM explains: the layer feeding avg_pool is a named one.
    pool = nets[1].get_layer("avg_pool")
    assert [l.name for l in nets[1].layers if l.output is pool.input] == [FEATURE_LAYER[arch]]


@pytest.mark.slow  # about 10 min on 2 CPU cores: generates the data, then 4 epochs at 64 px
def test_demo_learns_the_synthetic_findings_with_densenet121(tmp_path):
    """The README's demo with CheXNet's network, with the demo's ResNet settings unchanged
    (measured here: validation mean AUC 0.979)."""
    env = {**ENV, "CXR_TF_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.train", "--flagfile=demo.cfg", "--arch=densenet121",
         f"--model_dir={tmp_path / 'demo'}", "--json"],
        capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc)
    assert summary["epochs_run"] == 4
    assert summary["val_auc_mean"] >= 0.85, summary["val_auc"]
    # Every finding with validation positives is learned, not just the common ones.
    assert sum(auc >= 0.7 for auc in summary["val_auc"].values() if auc == auc) >= 12
