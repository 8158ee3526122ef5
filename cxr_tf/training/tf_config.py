"""TF_CONFIG, the environment variable that describes a multi-worker cluster, checked before
TensorFlow reads it.

    {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}

TensorFlow parses TF_CONFIG only when MultiWorkerMirroredStrategy is made, after it has been
imported, and reports a value that is not JSON, or a task index past its job, as a traceback
(`json.decoder.JSONDecodeError`, `ValueError: The task_id 3 exceeds the maximum id of
worker`). The train app calls `read` before TensorFlow starts, so such a cluster spec is one
line naming what is wrong, at once. The rules are TensorFlow 2.21's
(`multi_worker_util._validate_cluster_spec`): jobs among chief, worker, evaluator and ps, at
most one chief and one evaluator, the task's job in the cluster (an evaluator may stand
outside it) and its index within that job.

Pure Python, so the app can check before importing TensorFlow.
"""

import json
import os

from cxr_tf import errors

JOBS = ("chief", "worker", "evaluator", "ps")


class TFConfigError(errors.UserError, ValueError):
    """A TF_CONFIG that TensorFlow could not use; the message says what and where."""


def read(environ=None):
    """The parsed TF_CONFIG of `environ` (default os.environ) as a dict, checked.

    Raises:
        TFConfigError: TF_CONFIG is unset, empty, not JSON or not a valid cluster spec.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not text.strip():
        raise TFConfigError("strategy 'multi_worker' needs the TF_CONFIG environment variable "
                            "(a JSON cluster spec)")
    try:
        config = json.loads(text)
    except ValueError as e:
        raise TFConfigError(f"TF_CONFIG is not JSON ({e}): {_shown(text)}") from None
    check(config)
    return config


def check(config):
    """Raises TFConfigError unless `config` is a cluster spec TensorFlow accepts."""
    if not isinstance(config, dict):
        raise TFConfigError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task'; got "
                            f"{type(config).__name__} {_shown(json.dumps(config))}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise TFConfigError("TF_CONFIG 'cluster' must map job names to lists of 'host:port' "
                            f"addresses; got {cluster!r}")
    sizes = {job: _job_size(job, addresses) for job, addresses in cluster.items()}
    for job in ("chief", "evaluator"):
        if sizes.get(job, 0) > 1:
            raise TFConfigError(f"TF_CONFIG 'cluster' has {sizes[job]} {job} tasks; at most "
                                "one is allowed")
    if not isinstance(task, dict):
        raise TFConfigError(f"TF_CONFIG 'task' must be an object with 'type' and 'index'; got "
                            f"{task!r}")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in JOBS:
        raise TFConfigError(f"TF_CONFIG task type {kind!r} is not one of {', '.join(JOBS)}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise TFConfigError(f"TF_CONFIG task index {index!r} is not a whole number >= 0")
    if kind not in sizes:
        if kind != "evaluator":
            raise TFConfigError(f"TF_CONFIG task type {kind!r} has no job in 'cluster' (it has "
                                f"{', '.join(sizes)})")
    elif index >= sizes[kind]:
        raise TFConfigError(f"TF_CONFIG task index {index} is out of range: 'cluster' lists "
                            f"{sizes[kind]} {kind} task(s), indices 0 to {sizes[kind] - 1}")


def _job_size(job, addresses):
    if job not in JOBS:
        raise TFConfigError(f"TF_CONFIG 'cluster' job {job!r} is not one of {', '.join(JOBS)}")
    # TensorFlow also takes {index: address} for a job whose tasks are sparse.
    values = list(addresses.values()) if isinstance(addresses, dict) else addresses
    if not isinstance(values, list) or not all(isinstance(a, str) and a for a in values):
        raise TFConfigError(f"TF_CONFIG 'cluster' job {job!r} must list 'host:port' addresses; "
                            f"got {addresses!r}")
    if isinstance(addresses, dict):
        if not all(str(k).isdigit() for k in addresses):
            raise TFConfigError(f"TF_CONFIG 'cluster' job {job!r} maps task indices to "
                                f"addresses; got keys {list(addresses)}")
        return max((int(k) for k in addresses), default=-1) + 1
    return len(values)


def _shown(text, limit=80):
    """The value as a user set it, cut short: it may be a whole shell script's mistake."""
    text = text.replace("\n", " ")
    return repr(text if len(text) <= limit else text[:limit] + "...")
