"""Choosing a tf.distribute strategy, and who writes the run dir.

MultiWorkerMirroredStrategy must be created before any other TensorFlow op runs, so the
train app calls `make_strategy` first. With several workers only the chief writes to
model_dir, and holds it (`claimed_run_dir`) for the life of the run; the others write to a
temporary dir that is removed at the end, as the TF multi-worker guide does, because every
worker runs every callback.
"""

import contextlib
import json
import os
import shutil
import tempfile

import tensorflow as tf

from cxr_tf.serving import run_dir

STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")


def make_strategy(name="auto"):
    """The tf.distribute strategy `name` (one of STRATEGIES) names on this machine.

    "mirrored" replicates over every GPU or, on a machine without one, over every logical
    CPU device: one on a plain host, N after `tf.config.set_logical_device_configuration`
    splits the CPU (how the tests run MirroredStrategy with two replicas without GPUs).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy 'multi_worker' needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
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
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if "chief" in cluster:
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


@contextlib.contextmanager
def claimed_run_dir(config, strategy):
    """Holds `config.model_dir` for one run; yields True when that run is already complete.

    The chief takes the run dir's lock (another process holding it: RunDirError naming its
    pid), then with `config.overwrite` deletes the previous run. Otherwise a run dir whose
    config.json recorded other flags is RunDirError listing them, and a complete run
    (`run_dir.is_complete`) yields True: there is nothing to train, and nothing is written.
    Other workers only read: they stop with the chief instead of waiting for it forever.

    Example:
        with distribute.claimed_run_dir(config, strategy) as complete:
            if not complete:
                runner.run(config, strategy=strategy)
    """
    if not is_chief(strategy):
        yield not config.overwrite and _finished(config)
        return
    with run_dir.locked(config.model_dir):
        if config.overwrite:
            run_dir.clear(config.model_dir)
            yield False
        else:
            yield _finished(config)


def _finished(config):
    """True if model_dir holds this run complete; RunDirError if it holds another run."""
    model_dir = config.model_dir
    if not os.path.isfile(run_dir.config_path(model_dir)):
        return False
    changed = run_dir.differing_flags(model_dir, config.to_dict())
    if changed:
        raise run_dir.RunDirError(
            f"{model_dir} holds a run with other flags: {'; '.join(changed)}. Rerun with the "
            "run's flags to resume it, --overwrite to start afresh, or use another --model_dir")
    return run_dir.is_complete(model_dir)
