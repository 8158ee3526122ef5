"""Choosing a tf.distribute strategy, and who writes the run dir.

MultiWorkerMirroredStrategy must be created before any other TensorFlow op runs, so
`runner.run` calls `make_strategy` first. With several workers only the chief writes to
model_dir, and holds it (`cxr_tf.runs.claim`) for the life of the run; the others write to a
temporary dir that is removed at the end, as the TF multi-worker guide does, because every
worker runs every callback.
"""

import json
import os
import shutil
import tempfile

import tensorflow as tf

from cxr_tf.runs.config import STRATEGIES
from cxr_tf.training import cluster


def make_strategy(name="auto", cluster_timeout=600):
    """The tf.distribute strategy `name` (one of STRATEGIES) names on this machine.

    "multi_worker" waits at most `cluster_timeout` seconds for the other workers of
    TF_CONFIG (`cluster.multi_worker_strategy`).

    "mirrored" replicates over every GPU or, on a machine without one, over every logical
    CPU device: one on a plain host, N after `tf.config.set_logical_device_configuration`
    splits the CPU (how the tests run MirroredStrategy with two replicas without GPUs).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "multi_worker":
        return cluster.multi_worker_strategy(cluster_timeout)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    jobs = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if "chief" in jobs:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def writable_run_dir(model_dir, strategy):
    """model_dir on the chief; a fresh temporary dir on any other worker."""
    if is_chief(strategy):
        return model_dir
    return tempfile.mkdtemp(prefix=f"cxr_tf_worker{strategy.cluster_resolver.task_id}_")


def cleanup_run_dir(worker_dir, model_dir):
    if os.path.abspath(worker_dir) != os.path.abspath(model_dir):
        shutil.rmtree(worker_dir, ignore_errors=True)


def mixed_precision_policy(choice="auto"):
    """'auto' picks bfloat16 on GPUs with compute capability >= 8 (Ampere+), else float32."""
    if choice == "off":
        return "float32"
    if choice in ("bfloat16", "float16"):
        return f"mixed_{choice}"
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and capability[0] >= 8:
            return "mixed_bfloat16"
    return "float32"
