"""thresholds.json: per-finding decision thresholds tuned on the validation split (evaluate
writes it; evaluate's report, export and predict use it).

    {"method": "f1", "split": "validation", "thresholds": {label: t}, "examples": n, ...}
"""

import json
import os

import numpy as np

from cxr_tf import atomic, labels
from cxr_tf.runs import RunDirError, layout


def read_thresholds(model_dir, label_names=labels.LABELS):
    """(per-class thresholds as a float array, the file's dict), or (None, None) if none."""
    path = layout.thresholds_path(model_dir)
    if not os.path.isfile(path):
        return None, None
    with open(path) as f:
        try:
            content = json.load(f)
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path}: not valid JSON ({e})") from e
    by_label = content.get("thresholds") or {}
    missing = [name for name in label_names if name not in by_label]
    if missing:
        raise RunDirError(f"{path}: no threshold for {', '.join(missing)}")
    return np.array([float(by_label[name]) for name in label_names]), content


def write_thresholds(model_dir, thresholds, method, label_names=labels.LABELS, **details):
    """RUN/thresholds.json: {"method", "thresholds": {label: t}, "split": "validation", ...}."""
    content = {"method": method, "split": "validation",
               "thresholds": {name: float(t) for name, t in zip(label_names, thresholds)},
               **details}
    return atomic.write_json(layout.thresholds_path(model_dir), content, indent=1)


def decision_thresholds(model_dir, default=0.5, label_names=labels.LABELS):
    """(one threshold per finding, where they came from): the run's tuned thresholds and
    "thresholds.json (f1, tuned on validation)" when thresholds.json exists, else `default`
    for every finding and None (the caller names the argument that gave it)."""
    tuned, content = read_thresholds(model_dir, label_names)
    if tuned is not None:
        return tuned.tolist(), (f"{layout.THRESHOLDS_FILE} ({content.get('method')}, tuned on "
                                f"{content.get('split')})")
    return [float(default)] * len(label_names), None
