"""cxr_tf.training.distribute (strategy choice, the chief, where a worker writes) and the
version check of keras_compat, in milliseconds. MirroredStrategy with two replicas trains in
tests/test_mirrored.py; two workers in tests/test_train.py; claiming the run dir (the chief's
lock, the other workers' read-only claim) in tests/test_run_claim.py."""

import json
import os
import types

import pytest
import tensorflow as tf

from cxr_tf import errors
from cxr_tf.training import distribute, keras_compat


def test_strategy_choice_on_a_machine_without_gpus(monkeypatch):
    assert distribute.make_strategy("auto") is tf.distribute.get_strategy()
    one = distribute.make_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    assert one.extended.worker_devices == ("/job:localhost/replica:0/task:0/device:CPU:0",)
    mirrored = distribute.make_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 1  # one logical CPU in this process
    with pytest.raises(ValueError, match="strategy must be one of .*, got 'tpu'"):
        distribute.make_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(errors.UserError,
                       match="strategy 'multi_worker' needs the TF_CONFIG environment variable"):
        distribute.make_strategy("multi_worker")


def fake_strategy(task_type, task_id):
    resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id)
    return types.SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize("cluster,task_type,task_id,chief", [
    ({"worker": ["a:1", "b:1"]}, "worker", 0, True),
    ({"worker": ["a:1", "b:1"]}, "worker", 1, False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "chief", 0, True),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "worker", 0, False),
    ({"worker": ["a:1"], "evaluator": ["e:1"]}, "evaluator", 0, False),
])
def test_is_chief_follows_tf_config(monkeypatch, cluster, task_type, task_id, chief):
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": cluster, "task": {"type": task_type, "index": task_id}}))
    assert distribute.is_chief(fake_strategy(task_type, task_id)) is chief


def test_one_process_is_always_the_chief():
    assert distribute.is_chief(tf.distribute.get_strategy())
    assert distribute.is_chief(fake_strategy(None, None))


def test_only_the_chief_writes_the_model_dir(monkeypatch, tmp_path):
    model_dir = str(tmp_path / "run")
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}))
    assert distribute.writable_run_dir(model_dir, fake_strategy("worker", 0)) == model_dir
    elsewhere = distribute.writable_run_dir(model_dir, fake_strategy("worker", 1))
    assert os.path.basename(elsewhere).startswith("cxr_tf_worker1_")
    assert os.path.isdir(elsewhere)
    distribute.cleanup_run_dir(elsewhere, model_dir)
    assert not os.path.exists(elsewhere)
    os.makedirs(model_dir)
    distribute.cleanup_run_dir(model_dir, model_dir)  # the chief's own dir is kept
    assert os.path.isdir(model_dir)


def test_mixed_precision_policy_on_cpu():
    assert distribute.mixed_precision_policy("off") == "float32"
    assert distribute.mixed_precision_policy("bfloat16") == "mixed_bfloat16"
    assert distribute.mixed_precision_policy("float16") == "mixed_float16"
    assert distribute.mixed_precision_policy("auto") == "float32"


def test_keras_compat_refuses_an_untested_keras():
    keras_compat.check_keras_version("3.15.9")
    with pytest.raises(keras_compat.KerasVersionError) as info:
        keras_compat.check_keras_version("3.16.0")
    assert str(info.value).startswith(
        "cxr_tf.training.keras_compat was tested with Keras 3.15.x, found Keras 3.16.0: its "
        "workarounds use private Keras names (Model._symbolic_build")
    assert "Install keras~=3.15.0" in str(info.value)


def test_keras_compat_is_the_only_module_with_private_keras_names():
    package = os.path.join(os.path.dirname(distribute.__file__), "..")
    offenders = []
    for root, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py") and name != "keras_compat.py":
                text = open(os.path.join(root, name)).read()
                if any(private in text for private in (
                        "keras.src", "._keras_history", "_symbolic_build", "._initial_epoch",
                        "def _save_model", "._weights_path")):
                    offenders.append(name)
    assert offenders == []
