"""thresholds.json: per-finding decision thresholds tuned on the validation split, and where
each one came from (evaluate writes it; evaluate's report, export and predict use it).

    {"method": "f1", "split": "validation", "thresholds": {label: t}, "examples": n,
     "checkpoint": "best", "default": 0.5, "min_count": 10, "calibration": null,
     "findings": {label: {"threshold": t, "method": "f1", "split": "validation",
                          "positives": 12, "negatives": 158},
                  "Hernia": {"threshold": 0.5, "method": "default", "split": "validation",
                             "positives": 0, "negatives": 170,
                             "reason": "0 positives (fewer than 10)"}}}

`method`, `split`, `thresholds`, `examples` and `checkpoint` are the keys cxr_tf 0.2.0 wrote
and its readers use; `thresholds` stays the value every reader applies. `findings` says per
finding whether its threshold was fitted (`method` "f1" or "youden") or kept the default
(`method` "default", with the `reason`: too few validation cases), on how many positives and
negatives. A file from before `findings` existed is read with unknown counts (None).
"""

import dataclasses
import json
import os

import numpy as np

from cxr_tf import atomic, labels
from cxr_tf.runs import RunDirError, layout

DEFAULT = "default"  # the method of a threshold that was not fitted
_UNRECORDED = "counts not recorded (thresholds.json from an older cxr_tf)"


@dataclasses.dataclass(frozen=True)
class Decisions:
    """Every finding's decision threshold and where it came from.

    values: one threshold per finding, in label order. findings: {name: {"threshold",
    "method", "split", "positives", "negatives", "reason" (only when not fitted)}}.
    source: "thresholds.json (f1, tuned on validation)", or None when the run has no
    thresholds.json and `default` holds for every finding (the caller names the argument that
    gave it). content: thresholds.json's dict, or None.
    """

    values: tuple
    findings: dict
    source: str | None
    default: float
    content: dict | None = None

    def fell_back(self):
        """The findings whose threshold was not fitted, in label order."""
        return [name for name, entry in self.findings.items() if entry["method"] == DEFAULT]

    def summary(self):
        """One line: how many thresholds were tuned, and which findings fell back and why."""
        n = len(self.findings)
        if self.content is None:
            return f"the default {self.default:g} for every finding (no {layout.THRESHOLDS_FILE})"
        tuned = f"({self.content.get('method')} on {self.content.get('split')})"
        if any(entry.get("reason") == _UNRECORDED for entry in self.findings.values()):
            return (f"{n} tuned {tuned} by an older cxr_tf that did not record how many cases "
                    "each rests on: any of them may come from a handful of positives; "
                    "tune them again")
        fell_back = self.fell_back()
        if not fell_back:
            return f"all {n} tuned {tuned}; none fell back to the default"
        minimum = self.content.get("min_count")
        why = f" (fewer than {minimum} positives or negatives)" if minimum else ""
        cases = ", ".join(f"{name} ({_counts(self.findings[name])})" for name in fell_back)
        default = self.findings[fell_back[0]]["threshold"]
        return (f"{n - len(fell_back)} of {n} tuned {tuned}; {len(fell_back)} fell back to "
                f"the default {default:g}{why}: {cases}")

    def arrays(self):
        """The provenance as per-finding lists, for the SavedModel's metadata: methods, splits,
        positives and negatives (-1: unknown), reasons ("" when fitted)."""
        entries = list(self.findings.values())
        return {
            "methods": [str(e["method"]) for e in entries],
            "splits": [str(e.get("split") or "") for e in entries],
            "positives": [-1 if e.get("positives") is None else int(e["positives"])
                          for e in entries],
            "negatives": [-1 if e.get("negatives") is None else int(e["negatives"])
                          for e in entries],
            "reasons": [str(e.get("reason") or "") for e in entries],
        }


def _counts(entry):
    if entry.get("positives") is None:
        return entry.get("reason") or "counts unknown"
    return f"{entry['positives']}+/{entry['negatives']}−"


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
    """RUN/thresholds.json: {"method", "thresholds": {label: t}, "split": "validation", ...}.

    details: the other keys, e.g. examples, checkpoint, default, min_count and `findings`
    (the per-finding provenance, see the module docstring)."""
    content = {"method": method, "split": "validation",
               "thresholds": {name: float(t) for name, t in zip(label_names, thresholds)},
               **details}
    return atomic.write_json(layout.thresholds_path(model_dir), content, indent=1)


def read_decisions(model_dir, default=0.5, label_names=labels.LABELS):
    """The run's Decisions: thresholds.json's values and provenance, or `default` for every
    finding when the run has none."""
    values, content = read_thresholds(model_dir, label_names)
    if values is None:
        findings = {name: {"threshold": float(default), "method": DEFAULT, "split": None,
                           "positives": None, "negatives": None,
                           "reason": f"not tuned (no {layout.THRESHOLDS_FILE})"}
                    for name in label_names}
        return Decisions(tuple([float(default)] * len(label_names)), findings, None,
                         float(default))
    recorded = content.get("findings") or {}
    findings = {}
    for name, value in zip(label_names, values.tolist()):
        entry = recorded.get(name)
        if isinstance(entry, dict):
            findings[name] = {**entry, "threshold": value}  # `thresholds` is what is applied
        else:
            findings[name] = {"threshold": value, "method": content.get("method"),
                              "split": content.get("split"), "positives": None,
                              "negatives": None, "reason": _UNRECORDED}
    source = (f"{layout.THRESHOLDS_FILE} ({content.get('method')}, tuned on "
              f"{content.get('split')})")
    return Decisions(tuple(values.tolist()), findings, source,
                     float(content.get("default", default)), content)


def decision_thresholds(model_dir, default=0.5, label_names=labels.LABELS):
    """(one threshold per finding, where they came from): the run's tuned thresholds and
    "thresholds.json (f1, tuned on validation)" when thresholds.json exists, else `default`
    for every finding and None (the caller names the argument that gave it)."""
    decisions = read_decisions(model_dir, default, label_names)
    return list(decisions.values), decisions.source
