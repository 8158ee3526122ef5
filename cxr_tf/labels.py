"""The 14 ChestX-ray14 findings and the mapping from "Finding Labels" text to a multi-hot vector.

`LABELS` is the one label order of the whole project: CSV columns, model outputs, reports and
export metadata all follow it. "No Finding" is not a label: it is the all-zero vector. (The
paper's parser turned "No Finding" into all ones; that bug is why `to_multi_hot` never guesses.)
"""

import numpy as np

from cxr_tf import errors

LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_CLASSES = len(LABELS)
NO_FINDING = "No Finding"
_INDEX = {name: i for i, name in enumerate(LABELS)}


class UnknownLabelError(errors.UserError, ValueError):
    """A "Finding Labels" entry names something that is not one of the 14 findings."""

    def __init__(self, label, text):
        self.label = label
        super().__init__(
            f"unknown label {label!r} in Finding Labels {text!r}; "
            f"expected {NO_FINDING!r} or '|'-separated names from {', '.join(LABELS)}"
        )


def parse_findings(text):
    """Returns the finding names in `text` ("A|B", or "No Finding" for none) in NIH order.

    Raises UnknownLabelError for any name outside LABELS, including misspellings and
    "No Finding" mixed with a finding: a silent guess here would change a label.
    """
    if not isinstance(text, str) or not text.strip():
        raise UnknownLabelError(text, text)
    names = [part.strip() for part in text.split("|")]
    if names == [NO_FINDING]:
        return []
    for name in names:
        if name not in _INDEX:
            raise UnknownLabelError(name, text)
    return sorted(set(names), key=_INDEX.__getitem__)


def to_multi_hot(text):
    """'Cardiomegaly|Effusion' -> uint8 vector of length 14; 'No Finding' -> all zeros."""
    vector = np.zeros(NUM_CLASSES, dtype=np.uint8)
    for name in parse_findings(text):
        vector[_INDEX[name]] = 1
    return vector


def from_multi_hot(vector):
    """Inverse of `to_multi_hot`: a 14-vector of 0/1 -> 'A|B' or 'No Finding'."""
    vector = np.asarray(vector)
    if vector.shape != (NUM_CLASSES,):
        raise ValueError(f"expected a vector of {NUM_CLASSES} labels, got shape {vector.shape}")
    names = [LABELS[i] for i in np.flatnonzero(vector)]
    return "|".join(names) if names else NO_FINDING


def no_finding_wins(finding_probs, no_finding_prob, *, xp=np):
    """The paper's future-work constraint: True where the No Finding output is the single most
    likely output (above every finding), so that no finding is reported for that image."""
    return xp.greater(no_finding_prob, xp.max(finding_probs, axis=1))


def decide(probabilities, thresholds, no_finding=None, *, xp=np):
    """The one decision rule of every path (predict, the report, the serving graph): a finding
    is positive when its probability reaches its threshold, except where No Finding wins.

    probabilities: (n, 14); thresholds: one per finding, or one for all; no_finding: (n,) or
    None. xp is numpy, or `tf.experimental.numpy` inside the SavedModel's graph.
    """
    positive = xp.greater_equal(probabilities,
                                xp.asarray(thresholds, dtype=probabilities.dtype))
    if no_finding is not None:
        wins = no_finding_wins(probabilities, no_finding, xp=xp)
        positive = xp.logical_and(positive, xp.logical_not(wins[:, None]))
    return positive
