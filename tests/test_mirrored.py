"""MirroredStrategy with two replicas, on this CPU split into two logical devices
(`tf.config.set_logical_device_configuration`), as one multi-GPU host would run it.

With more than one replica BatchNorm is synchronized (global-batch statistics), so one step
on two replicas equals one step on one device with the same global batch, to float32
rounding; the run dir it leaves is evaluated and exported like any other."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
# Runs its arguments (`-m MODULE ARGS` or `-c CODE`) in a process with two logical CPUs.
TWO_CPUS = """
import runpy, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
mode, target, *args = sys.argv[1:]
if mode == "-m":
    sys.argv = [target, *args]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(target)
"""
ARGS = ["--arch=resnet18", "--image_size=32", "--batch_size=4", "--learning_rate=0.001",
        "--optimizer=sgd", "--noaugment", "--deterministic", "--epochs=1", "--steps_per_epoch=1",
        "--json"]


def run(*args, two_cpus=False):
    cmd = [sys.executable, "-c", TWO_CPUS, *args] if two_cpus else [sys.executable, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


STREAM_CHECK = """
import json, numpy as np, tensorflow as tf
from cxr_tf.training import distribute, runner
from cxr_tf.runs.config import RunConfig
config = RunConfig(data_dir=DATA_DIR, model_dir="unused", arch="resnet18", image_size=32,
                   batch_size=4, augment=False, deterministic=True, epochs=1)
data = runner.open_data(config)
mirrored = distribute.make_strategy("mirrored")
one = next(iter(runner.train_stream(config, data, tf.distribute.get_strategy(),
                                    steps_per_epoch=2, initial_epoch=0)))
two = next(iter(runner.train_stream(config, data, mirrored, steps_per_epoch=2, initial_epoch=0)))
halves = [x.numpy() for x, _ in zip(*[mirrored.experimental_local_results(t) for t in two])]
print(json.dumps({"replicas": mirrored.num_replicas_in_sync,
                  "devices": list(mirrored.extended.worker_devices),
                  "shapes": [list(h.shape) for h in halves],
                  "same_global_batch": bool(np.array_equal(np.concatenate(halves), one[0]))}))
"""


@pytest.mark.slow
def test_each_replica_gets_half_the_global_batch(prepared_dir):
    proc = run("-c", STREAM_CHECK.replace("DATA_DIR", repr(str(prepared_dir))), two_cpus=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {
        "replicas": 2, "devices": ["/job:localhost/replica:0/task:0/device:CPU:0",
                                   "/job:localhost/replica:0/task:0/device:CPU:1"],
        "shapes": [[2, 32, 32, 1], [2, 32, 32, 1]], "same_global_batch": True}


@pytest.mark.slow
def test_mirrored_trains_like_one_device_and_its_run_dir_serves(prepared_dir, tmp_path):
    import keras

    one, two = tmp_path / "one", tmp_path / "two"
    run("-m", "cxr_tf.train", f"--data_dir={prepared_dir}", f"--model_dir={one}", *ARGS)
    summary = json.loads(run("-m", "cxr_tf.train", f"--data_dir={prepared_dir}",
                             f"--model_dir={two}", "--strategy=mirrored", *ARGS,
                             two_cpus=True).stdout.strip().splitlines()[-1])
    assert summary["num_replicas_in_sync"] == 2
    assert json.loads((two / "config.json").read_text())["num_replicas_in_sync"] == 2

    # One step on two replicas (synchronized BatchNorm, gradients averaged) equals one step
    # on one device: float32 rounding differs (1.4e-6 measured), a wrong split would not
    # (a step moves the weights by up to 2.4e-2 here).
    nets = [keras.models.load_model(d / "checkpoints" / "last.keras", compile=False)
            for d in (one, two)]
    for a, b in zip(*[net.weights for net in nets]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5, err_msg=a.path)

    # The epoch's metrics come out once, not once per replica.
    with open(two / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert [row["epoch"] for row in history] == ["1"]  # counted as the progress bar counts
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(two / "logs" / "metrics"),
                                             size_guidance={"tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Tensors("val/auc_mean")] == [0]

    # Its run dir evaluates and exports (the apps' library functions, in this process).
    from cxr_tf import export
    from cxr_tf.evaluation import runner as evaluation
    from cxr_tf.evaluation.config import EvalConfig
    from cxr_tf.serving.config import ExportConfig

    report = evaluation.evaluate(EvalConfig(model_dir=str(two), split="validation",
                                            bootstrap=0), progress=False)
    # evaluate (one device, best.keras = the only epoch) scores the split as training did.
    config = json.loads((two / "config.json").read_text())
    assert report["overall"]["examples"] == config["validation_examples"]
    # Micro figures: evaluate withholds the per-finding ones below 10 positives and 10 negatives.
    for key in ("f1@0.5/micro", "precision@0.5/micro", "recall@0.5/micro"):
        assert report["overall"][key] == pytest.approx(float(history[0][f"val/{key}"]),
                                                       abs=1e-9), key
    export.export_run(ExportConfig(model_dir=str(two), export_dir=str(tmp_path / "export")))
    assert (tmp_path / "export" / "saved_model.pb").exists()
