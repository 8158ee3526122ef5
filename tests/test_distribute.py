"""cxr_tf.training.distribute (strategy choice, the chief, where a worker writes), the version
check of keras_compat, and a cluster that assembles within its timeout or ends naming the
missing worker (training.cluster: milliseconds in-process; the slow ones run the train app).
MirroredStrategy with two replicas trains in tests/test_mirrored.py; two workers in
tests/test_train.py; claiming the run dir (the chief's lock, the other workers' read-only
claim) in tests/test_run_claim.py."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import pytest
import tensorflow as tf

from cxr_tf import errors
from cxr_tf.testing import processes
from cxr_tf.training import cluster, distribute, keras_compat


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


# --- a cluster within its timeout -------------------------------------------------------

def tf_config(ports, index=0):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


@pytest.mark.parametrize("value, message", [
    ("{not json", r"^TF_CONFIG is not JSON \("),
    ('{"cluster": {"worker": ["a:1"]}}', r"^TF_CONFIG 'task' must be an object with 'type' "
                                         r"and 'index'; got None$"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     r"^TF_CONFIG task index 1 is out of range: 'cluster' lists 1 worker task\(s\), indices 0 "
     r"to 0$"),
])
def test_a_tf_config_that_cannot_be_used_is_one_line(value, message):
    # cluster reads TF_CONFIG through tf_config, TensorFlow's rules (tests/test_tf_config.py)
    with pytest.raises(errors.UserError, match=message):
        cluster.read_tf_config({"TF_CONFIG": value})


def test_waiting_ends_when_every_peer_answers_or_names_the_silent_ones():
    up, down = processes.free_ports(2)
    peers = {("worker", 1): f"127.0.0.1:{up}", ("worker", 2): f"127.0.0.1:{down}"}
    with cluster.answering(up):  # as a waiting peer answers on its own port
        cluster.wait_for({("worker", 1): peers[("worker", 1)]}, time.monotonic() + 60, 60)
        with pytest.raises(cluster.ClusterError) as info:
            cluster.wait_for(peers, time.monotonic(), 60)  # the deadline has passed
    assert str(info.value) == (
        f"the cluster did not assemble within 60 s: worker 2 (127.0.0.1:{down}) did not answer; "
        "start every task of TF_CONFIG's cluster (and check its addresses and ports), or raise "
        "cluster_timeout")
    with socket.socket() as taken:
        taken.bind(("", down))
        taken.listen()
        with pytest.raises(cluster.ClusterError, match=f"^port {down} of this task \\(TF_CONFIG\\)"
                                                       " cannot be used: Address already in use$"):
            with cluster.answering(down):
                pass


def cluster_train(prepared_dir, tmp_path, ports, *flags):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "TF_CONFIG": tf_config(ports)}
    return subprocess.Popen(
        [sys.executable, "-m", "cxr_tf.train", f"--data_dir={prepared_dir}",
         f"--model_dir={tmp_path / 'run'}", "--strategy=multi_worker", "--arch=resnet18",
         "--image_size=32", "--batch_size=4", "--epochs=1", *flags],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_worker_whose_peer_never_starts_ends_naming_it(prepared_dir, tmp_path):
    ports = processes.free_ports(2)
    proc = cluster_train(prepared_dir, tmp_path, ports, "--cluster_timeout=5")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.splitlines()[-2:] == [
        f"waiting up to 5 s for the other workers: worker 1 (127.0.0.1:{ports[1]})",
        f"error: the cluster did not assemble within 5 s: worker 1 (127.0.0.1:{ports[1]}) did "
        "not answer; start every task of TF_CONFIG's cluster (and check its addresses and "
        "ports), or raise cluster_timeout"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_peer_that_answers_but_never_joins_is_bounded_by_tensorflows_barrier(prepared_dir,
                                                                               tmp_path):
    """Something else answers on worker 1's port: the wait in Python passes, and
    TensorFlow's register barrier (bounded by the time left) names worker 1."""
    ports = processes.free_ports(2)
    with cluster.answering(ports[1]):
        proc = cluster_train(prepared_dir, tmp_path, ports, "--cluster_timeout=10")
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err
    # TensorFlow logs its own lines about the failed barrier too (E0000 ..., at exit).
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: the cluster did not assemble within 10 s: worker 1 (127.0.0.1:{ports[1]}) did "
        "not answer; start every task of TF_CONFIG's cluster (and check its addresses and "
        "ports), or raise cluster_timeout"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT],
                         ids=lambda signum: signum.name)
def test_a_signal_ends_the_wait_for_the_cluster(prepared_dir, tmp_path, signum):
    """TensorFlow's own wait ignores both (it holds the interpreter, and logs SIGTERM only)."""
    ports = processes.free_ports(2)
    proc = cluster_train(prepared_dir, tmp_path, ports, "--cluster_timeout=600")
    for line in proc.stderr:  # the marker: the wait has begun
        if line.startswith("waiting up to"):
            break
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum and "Traceback" not in err, err
    assert err.splitlines() == [  # the rest of stderr, after the marker
        f"interrupted while waiting for the other workers (worker 1 (127.0.0.1:{ports[1]})); "
        "nothing written"]
