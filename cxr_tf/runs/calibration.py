"""calibration.json: the per-finding calibration of a run's probabilities, fitted on the
validation split by evaluate (`cxr_tf.evaluation.calibration.fit`), applied by evaluate's
report, export (in the graph) and predict.

    calibration = read(model_dir, label_names)      # None without calibration.json
    probabilities = calibration.apply(logits)

Every method is stored in one shape: an affine map on the logit (`slope`, `intercept`), then a
piecewise-linear map on the probability (`knots_x` -> `knots_y`; the identity [0, 1] -> [0, 1]
except for isotonic), so one numpy function and one graph op apply any of them.
`findings` says per output which method it got, or "none" and why (too few validation cases).
numpy only.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np

from cxr_tf import atomic
from cxr_tf.runs import RunDirError, layout

NONE = "none"  # the method of an output left uncalibrated


def path(model_dir):
    return os.path.join(model_dir, layout.CALIBRATION_FILE)


def _sigmoid(x):
    return np.exp(-np.logaddexp(0, -x))  # no overflow warning for large |x|


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """The fitted maps, one per output column.

    Args:
        method: what was asked ("temperature", "platt", "isotonic").
        label_names: the columns, in output order.
        slope, intercept: (C,) the affine map on the logit.
        knots_x, knots_y: (C, K) the piecewise-linear map on the probability, each row
            non-decreasing in x and padded by repeating its last knot.
        findings: {name: {"method", "positives", "negatives", "reason"?, and the parameters}}.
        details: split, examples, checkpoint, min_count.
    """

    method: str
    label_names: tuple
    slope: np.ndarray
    intercept: np.ndarray
    knots_x: np.ndarray
    knots_y: np.ndarray
    findings: dict
    details: dict = dataclasses.field(default_factory=dict)

    def apply(self, logits):
        """(n, C) logits -> calibrated probabilities (float64)."""
        logits = np.asarray(logits, np.float64)
        probs = _sigmoid(logits * self.slope + self.intercept)
        return np.stack([np.interp(probs[:, c], self.knots_x[c], self.knots_y[c])
                         for c in range(probs.shape[1])], axis=1)

    def fitted(self):
        """The columns that were calibrated (not left as the identity)."""
        return [name for name, entry in self.findings.items() if entry["method"] != NONE]

    def to_json(self):
        return {"method": self.method, **self.details, "findings": self.findings,
                "label_names": list(self.label_names), "slope": self.slope.tolist(),
                "intercept": self.intercept.tolist(), "knots_x": self.knots_x.tolist(),
                "knots_y": self.knots_y.tolist()}

    @classmethod
    def from_json(cls, content):
        arrays = {k: np.asarray(content[k], np.float64)
                  for k in ("slope", "intercept", "knots_x", "knots_y")}
        details = {k: v for k, v in content.items()
                   if k not in (*arrays, "method", "findings", "label_names")}
        return cls(content["method"], tuple(content["label_names"]), **arrays,
                   findings=content["findings"], details=details)


def write(model_dir, calibration, **details):
    """RUN/calibration.json; details (e.g. checkpoint) join the file's top-level keys."""
    content = calibration.to_json()
    content.update(details)
    return atomic.write_json(path(model_dir), content, indent=1)


def read(model_dir, label_names=None):
    """The run's Calibration, or None when it has no calibration.json. label_names: the
    columns the caller scores, which must be the file's."""
    file = path(model_dir)
    if not os.path.isfile(file):
        return None
    try:
        with open(file) as f:
            calibration = Calibration.from_json(json.load(f))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{file}: not a calibration file ({type(e).__name__}: {e})") from e
    if label_names is not None and tuple(label_names) != calibration.label_names:
        raise RunDirError(f"{file}: calibrates {', '.join(calibration.label_names)}; the model "
                          f"outputs {', '.join(label_names)}")
    return calibration


def fingerprint(model_dir):
    """{"method", "sha256"} of RUN/calibration.json, or None without one: thresholds.json
    records it, so thresholds tuned on another scale are never applied to these
    probabilities."""
    file = path(model_dir)
    if not os.path.isfile(file):
        return None
    with open(file, "rb") as f:
        data = f.read()
    try:
        method = json.loads(data).get("method")
    except (json.JSONDecodeError, AttributeError):
        method = None
    return {"method": method, "sha256": hashlib.sha256(data).hexdigest()}


def check_thresholds(model_dir, thresholds_content):
    """RunDirError when thresholds.json (its dict, or None) was tuned on other probabilities
    than RUN/calibration.json gives now."""
    if thresholds_content is None:
        return
    tuned_on = thresholds_content.get("calibration")
    current = fingerprint(model_dir)
    if (tuned_on or None) == current:
        return
    scale = (f"probabilities calibrated by {tuned_on.get('method')}" if tuned_on
             else "uncalibrated probabilities")
    now = (f"{layout.CALIBRATION_FILE} now calibrates them ({current['method']})" if current
           else f"{layout.CALIBRATION_FILE} is gone")
    raise RunDirError(f"{layout.thresholds_path(model_dir)}: tuned on {scale}, but "
                      f"{now}; tune the thresholds again (evaluate's tune_thresholds)")
