"""cxr_tf.training.tf_config: a TF_CONFIG that TensorFlow could not use is one line naming
what is wrong, found before TensorFlow starts (issue: a value that is not JSON was a
traceback after 34 s; a task index out of range a ValueError from inside TensorFlow)."""

import json
import os
import subprocess
import sys

import pytest

from cxr_tf.training import tf_config
from cxr_tf.training.tf_config import TFConfigError

TWO_WORKERS = {"worker": ["localhost:12345", "localhost:12346"]}


def env(value):
    return {"TF_CONFIG": value if isinstance(value, str) else json.dumps(value)}


def test_a_good_cluster_spec_is_returned_parsed():
    spec = {"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 1}}
    assert tf_config.read(env(spec)) == spec
    # A chief beside the workers, an evaluator outside the cluster, sparse tasks: TF's rules.
    assert tf_config.read(env({"cluster": {"chief": ["c:1"], **TWO_WORKERS},
                               "task": {"type": "chief", "index": 0}}))
    assert tf_config.read(env({"cluster": TWO_WORKERS, "task": {"type": "evaluator"}}))
    assert tf_config.read(env({"cluster": {"worker": {"0": "a:1", "3": "b:1"}},
                               "task": {"type": "worker", "index": 3}}))


@pytest.mark.parametrize("value, message", [
    ("", "strategy 'multi_worker' needs the TF_CONFIG environment variable (a JSON cluster "
         "spec)"),
    ("{cluster: {worker: [a:1]}}", "TF_CONFIG is not JSON (Expecting property name enclosed "
                                   "in double quotes: line 1 column 2 (char 1)): "
                                   "'{cluster: {worker: [a:1]}}'"),
    ("[1, 2]", "TF_CONFIG must be a JSON object with 'cluster' and 'task'; got list '[1, 2]'"),
    ({"task": {"type": "worker", "index": 0}},
     "TF_CONFIG 'cluster' must map job names to lists of 'host:port' addresses; got None"),
    ({"cluster": {"workers": ["a:1"]}, "task": {"type": "worker", "index": 0}},
     "TF_CONFIG 'cluster' job 'workers' is not one of chief, worker, evaluator, ps"),
    ({"cluster": {"worker": "a:1,b:1"}, "task": {"type": "worker", "index": 0}},
     "TF_CONFIG 'cluster' job 'worker' must list 'host:port' addresses; got 'a:1,b:1'"),
    ({"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}},
     "TF_CONFIG 'cluster' has 2 chief tasks; at most one is allowed"),
    ({"cluster": TWO_WORKERS}, "TF_CONFIG 'task' must be an object with 'type' and 'index'; "
                               "got None"),
    ({"cluster": TWO_WORKERS, "task": {"type": "master", "index": 0}},
     "TF_CONFIG task type 'master' is not one of chief, worker, evaluator, ps"),
    ({"cluster": TWO_WORKERS, "task": {"type": "chief", "index": 0}},
     "TF_CONFIG task type 'chief' has no job in 'cluster' (it has worker)"),
    ({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": "1"}},
     "TF_CONFIG task index '1' is not a whole number >= 0"),
    ({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 2}},
     "TF_CONFIG task index 2 is out of range: 'cluster' lists 2 worker task(s), indices 0 to "
     "1"),
])
def test_what_tensorflow_would_refuse_is_one_line(value, message):
    with pytest.raises(TFConfigError) as e:
        tf_config.read(env(value))
    assert str(e.value) == message


def test_tensorflow_refuses_what_the_check_refuses():
    """The rules are TensorFlow's own: its validator rejects the index and the job the check
    rejects, and accepts the evaluator outside the cluster."""
    from tensorflow.python.distribute import multi_worker_util

    with pytest.raises(ValueError, match="exceeds the maximum id of worker"):
        multi_worker_util._validate_cluster_spec(TWO_WORKERS, "worker", 2)
    with pytest.raises(ValueError, match="not found in cluster_spec"):
        multi_worker_util._validate_cluster_spec(TWO_WORKERS, "chief", 0)
    multi_worker_util._validate_cluster_spec(TWO_WORKERS, "evaluator", 0)


@pytest.mark.parametrize("value, message", [
    ("{bad", "TF_CONFIG is not JSON (Expecting property name enclosed in double quotes: "
             "line 1 column 2 (char 1)): '{bad'"),
    (json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker",
                                                                  "index": 3}}),
     "TF_CONFIG task index 3 is out of range: 'cluster' lists 1 worker task(s), indices 0 to "
     "0"),
])
def test_the_train_app_refuses_a_bad_tf_config_before_tensorflow_starts(tmp_path, value,
                                                                        message):
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.train", "--synthetic", f"--model_dir={tmp_path / 'run'}",
         "--strategy=multi_worker"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CONFIG": value})
    assert proc.stderr.splitlines() == [f"error: {message}"], proc.stderr
    assert proc.returncode == 1
    assert not (tmp_path / "run").exists()
