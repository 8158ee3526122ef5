"""The run dir (`model_dir`) as evaluate, export and predict read it: config, checkpoints and
the tuned decision thresholds."""

import json
import os

import keras
import numpy as np

from cxr_tf import atomic, labels

THRESHOLDS_FILE = "thresholds.json"


def read_config(model_dir):
    """RUN/config.json as a dict; the error says what a run dir is when it is missing."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; --model_dir must be a run dir written by "
                                "`python -m cxr_tf.train` (config.json, checkpoints/)")
    with open(path) as f:
        return json.load(f)


def checkpoint_path(model_dir, checkpoint="best"):
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last'; received {checkpoint!r}")
    path = os.path.join(model_dir, "checkpoints", f"{checkpoint}.keras")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (has the run finished an epoch?)")
    return path


def load_model(model_dir, checkpoint="best", *, float32=True):
    """The run's Keras model (plain layers, so no custom objects and no compile needed).

    A run trained under mixed precision saves bfloat16/float16 layers; with float32=True
    (export, predict, evaluate) the same architecture is rebuilt in float32 and given the
    saved weights (kept in float32 by Keras anyway), so CPUs without 16-bit kernels serve
    it at full speed and the figures do not depend on the training hardware.
    """
    net = keras.models.load_model(checkpoint_path(model_dir, checkpoint), compile=False)
    if not float32 or all(layer.compute_dtype == "float32" for layer in net.layers):
        return net
    from cxr_tf import model

    config = read_config(model_dir)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        full = model.build_model(config["arch"], int(net.input_shape[1]),
                                 int(net.output_shape[-1]), name=net.name)
    finally:
        keras.config.set_dtype_policy(policy)
    full.set_weights(net.get_weights())
    return full


def read_thresholds(model_dir, label_names=labels.LABELS):
    """(per-class thresholds as a float array, the file's dict), or (None, None) if none."""
    path = os.path.join(model_dir, THRESHOLDS_FILE)
    if not os.path.isfile(path):
        return None, None
    with open(path) as f:
        content = json.load(f)
    by_label = content.get("thresholds") or {}
    missing = [name for name in label_names if name not in by_label]
    if missing:
        raise ValueError(f"{path}: no threshold for {', '.join(missing)}")
    return np.array([float(by_label[name]) for name in label_names]), content


def write_thresholds(model_dir, thresholds, method, label_names=labels.LABELS, **details):
    """RUN/thresholds.json: {"method", "thresholds": {label: t}, "split": "validation", ...}."""
    content = {"method": method, "split": "validation",
               "thresholds": {name: float(t) for name, t in zip(label_names, thresholds)},
               **details}
    return atomic.write_json(os.path.join(model_dir, THRESHOLDS_FILE), content, indent=1)


def decision_thresholds(model_dir, default=0.5, label_names=labels.LABELS):
    """(one threshold per finding, where they came from): the run's tuned thresholds when
    thresholds.json exists, else `default` for every finding."""
    tuned, content = read_thresholds(model_dir, label_names)
    if tuned is not None:
        return tuned.tolist(), f"{THRESHOLDS_FILE} ({content.get('method')}, tuned on " \
                               f"{content.get('split')})"
    return [float(default)] * len(label_names), f"--threshold={default:g}"
