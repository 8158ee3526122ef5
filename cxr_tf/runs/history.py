"""history.csv: one row per epoch, written by training (a resumable CSV logger), read by the
checkpoint callback on resume, the completion rule and tools/plot_history.py."""

import csv
import os

from cxr_tf.runs import layout


def read_history(model_dir):
    """history.csv's rows as dicts of strings, oldest epoch first ([] when there is none)."""
    path = layout.history_path(model_dir)
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
