"""Fitting the per-finding probability calibration, on the validation split only.

    calibration = fit(y_validation, logits_validation, "temperature", names)
    probabilities = calibration.apply(logits)   # what the report, export and predict give
    runs.calibration.write(model_dir, calibration)   # RUN/calibration.json

Methods: "temperature" (one T per finding, sigmoid(logit / T), fitted by minimizing the
log loss with scipy; Guo et al. 2017), "platt" (sigmoid(a * logit + b), scikit-learn's
unpenalized logistic regression on the logit; Platt 1999) and "isotonic" (scikit-learn's
IsotonicRegression on the probability, a monotone step function read with linear
interpolation; Zadrozny & Elkan 2002). A finding with fewer than `metrics.MIN_CLASS_COUNT`
positives or negatives on validation is not calibrated (identity), and its entry says why:
a map fitted from 3 positives would move every film's probability on their account.

Every method gives a `cxr_tf.runs.calibration.Calibration`, one shape for all (an affine map
on the logit, then a piecewise-linear map on the probability), so numpy and the SavedModel's
graph each need one implementation. numpy, scipy and scikit-learn only.
"""

import numpy as np

from cxr_tf.evaluation import metrics
from cxr_tf.runs.calibration import NONE, Calibration

METHODS = ("temperature", "platt", "isotonic")
_LOG_T_BOUNDS = (-5.0, 5.0)  # temperature in [0.007, 148]: far beyond any useful map


def fit(y_true, logits, method, label_names, *, min_count=metrics.MIN_CLASS_COUNT):
    """A Calibration of each column of `logits` against the 0/1 labels `y_true` (validation
    data only); columns below `min_count` positives or negatives stay the identity."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; received {method!r}")
    y_true = np.asarray(y_true)
    logits = np.asarray(logits, np.float64)
    positives, negatives = metrics.class_counts(y_true)
    enough = metrics.estimable(y_true, min_count)
    maps, findings = [], {}
    for c, name in enumerate(label_names):
        entry = {"method": method, "positives": int(positives[c]),
                 "negatives": int(negatives[c])}
        if enough[c]:
            one, params = _FITS[method](y_true[:, c], logits[:, c])
        else:
            one, params = _IDENTITY, {}
            entry.update(method=NONE, reason=metrics.not_estimable_reason(
                positives[c], negatives[c], min_count))
        maps.append(one)
        findings[name] = {**entry, **params}
    width = max(len(m[2]) for m in maps)
    pad = [np.pad(np.asarray(m[i], np.float64), (0, width - len(m[i])), mode="edge")
           for m in maps for i in (2, 3)]
    return Calibration(method, tuple(label_names), np.array([m[0] for m in maps], np.float64),
                       np.array([m[1] for m in maps], np.float64), np.stack(pad[0::2]),
                       np.stack(pad[1::2]), findings,
                       {"split": "validation", "examples": int(len(y_true)),
                        "min_count": int(min_count)})


_IDENTITY = (1.0, 0.0, (0.0, 1.0), (0.0, 1.0))  # (slope, intercept, knots_x, knots_y)


def _fit_temperature(y, z):
    from scipy.optimize import minimize_scalar

    def log_loss(log_t):
        scaled = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, scaled) - y * scaled))

    best = minimize_scalar(log_loss, bounds=_LOG_T_BOUNDS, method="bounded")
    temperature = float(np.exp(best.x))
    return (1.0 / temperature, 0.0, *_IDENTITY[2:]), {"temperature": temperature}


def _fit_platt(y, z):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=np.inf).fit(z[:, None], y)  # C=inf: no penalty
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    return (slope, intercept, *_IDENTITY[2:]), {"slope": slope, "intercept": intercept}


def _fit_isotonic(y, z):
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        metrics.sigmoid(z), y)
    return (1.0, 0.0, iso.X_thresholds_, iso.y_thresholds_), {"knots": len(iso.X_thresholds_)}


_FITS = {"temperature": _fit_temperature, "platt": _fit_platt, "isotonic": _fit_isotonic}
