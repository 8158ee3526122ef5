"""What evaluate fits for the point of use, always on the VALIDATION split (the out-of-
distribution Gaussian on the training split), and the run-dir files it leaves for export and
predict:

    calibration.json   `calibrate`: per-finding calibration of the probabilities
    thresholds.json    `tune_thresholds`: per-finding thresholds, tuned on the calibrated
                       probabilities, with each one's provenance
    ood.npz            `fit_ood`: the out-of-distribution detector and its cut

    fit(config, predict, evaluated)       # predict(split) -> Predicted

Every per-finding fit follows one rule: at least `metrics.MIN_CLASS_COUNT` positives and
negatives on validation, else no fit (the threshold keeps `config.threshold`, the finding
stays uncalibrated) and the entry says why. Fitting a new calibration re-tunes existing
thresholds with their own method, so thresholds.json never holds values of another scale.
"""

import dataclasses

import numpy as np

from cxr_tf import labels
from cxr_tf.evaluation import calibration as calibration_lib
from cxr_tf.evaluation import metrics, ood
from cxr_tf.runs import calibration as calibration_file
from cxr_tf.runs import layout
from cxr_tf.runs import ood as ood_file
from cxr_tf.runs import thresholds as thresholds_file


@dataclasses.dataclass(frozen=True, eq=False)
class Predicted:
    """One split as the model saw it: logits (n, outputs), the pooled features of `layers`
    (one (n, D) array each; None without them) and the per-image metadata rows, in one
    order."""

    logits: np.ndarray
    features: list | None
    rows: list
    layers: tuple = ()

    def labels(self):
        """(n, outputs) 0/1 targets: the 14 findings, then No Finding when the model has it."""
        y = np.stack([r["labels"] for r in self.rows])
        if self.logits.shape[1] > labels.NUM_CLASSES:
            y = np.concatenate([y, 1 - y.max(axis=1, keepdims=True)], axis=1)
        return y


def output_names(num_outputs):
    """The names of a model's outputs: the 14 findings, and No Finding as the 15th."""
    return list(labels.LABELS) + ([labels.NO_FINDING] if num_outputs > labels.NUM_CLASSES
                                  else [])


def probabilities(logits, calibration):
    """The probabilities the run serves: calibrated when the run has a calibration."""
    if calibration is None:
        return metrics.sigmoid(np.asarray(logits, np.float64))
    return calibration.apply(logits)


def fit(config, predict, evaluated):
    """Fits what `config` (an EvalConfig) asks and writes the files; returns {what: summary}.

    predict(split, limit=None) -> Predicted (with features when the detector needs them);
    evaluated: the Predicted of config.split, reused when that is the validation split."""
    cache = {config.split: evaluated}

    def split(name):
        if name not in cache:
            cache[name] = predict(name)
        return cache[name]

    model_dir = config.model_dir
    names = output_names(evaluated.logits.shape[1])
    done = {}
    if config.calibrate != calibration_file.NONE:
        validation = split("validation")
        fitted = calibration_lib.fit(validation.labels(), validation.logits, config.calibrate,
                                     names)
        calibration_file.write(model_dir, fitted, checkpoint=config.checkpoint)
        done["calibration"] = fitted
    method, default = config.tune_thresholds, config.threshold
    _, existing = thresholds_file.read_thresholds(model_dir)
    if method is None and "calibration" in done and existing is not None:
        # Thresholds of the old scale: tune them again, as they were tuned.
        method, default = existing.get("method"), existing.get("default", default)
    if method:
        done["thresholds"] = tune(model_dir, split("validation"), method, default=default,
                                  checkpoint=config.checkpoint)
    if config.fit_ood:
        train = predict("train", limit=ood.MAX_FIT_EXAMPLES)
        validation = split("validation")
        detector = ood.fit(train.features, validation.features,
                           train.layers, percentile=config.ood_percentile)
        ood_file.save(model_dir, detector, checkpoint=config.checkpoint)
        done["ood"] = detector
    return done


def tune(model_dir, validation, method, *, default=0.5, checkpoint="best"):
    """Tunes per-finding thresholds on a Predicted of the validation split (calibrated
    as the run's calibration.json says) and writes RUN/thresholds.json; returns its
    Decisions."""
    calibration = calibration_file.read(model_dir, output_names(validation.logits.shape[1]))
    probs = probabilities(validation.logits, calibration)[:, :labels.NUM_CLASSES]
    y_true = validation.labels()[:, :labels.NUM_CLASSES]
    values = metrics.tune_thresholds(y_true, probs, method, default=default)
    positives, negatives = metrics.class_counts(y_true)
    findings = {}
    for c, name in enumerate(labels.LABELS):
        reason = metrics.not_estimable_reason(positives[c], negatives[c])
        findings[name] = {"threshold": float(values[c]),
                          "method": thresholds_file.DEFAULT if reason else method,
                          "split": "validation", "positives": int(positives[c]),
                          "negatives": int(negatives[c]), **({"reason": reason} if reason else {})}
    thresholds_file.write_thresholds(
        model_dir, values, method, examples=len(validation.rows), checkpoint=checkpoint,
        default=float(default), min_count=metrics.MIN_CLASS_COUNT,
        calibration=calibration_file.fingerprint(model_dir), findings=findings)
    return thresholds_file.read_decisions(model_dir, default)


def calibration_section(y_true, raw, calibrated, calibration):
    """The report's `calibration`: the run's calibration and the ECE of the evaluated split's
    probabilities before and after it (the 14 findings pooled, as the overall ECE)."""
    if calibration is None:
        return {"method": calibration_file.NONE, "file": None,
                "ece": metrics.expected_calibration_error(y_true, raw)}
    return {"method": calibration.method, "file": layout.CALIBRATION_FILE,
            "fitted_on": calibration.details.get("split"),
            "min_count": calibration.details.get("min_count"),
            "ece_before": metrics.expected_calibration_error(y_true, raw),
            "ece_after": metrics.expected_calibration_error(y_true, calibrated),
            "findings": {name: {k: v for k, v in entry.items()
                                if k in ("method", "positives", "negatives", "reason")}
                         for name, entry in calibration.findings.items()},
            "calibrated": calibration.fitted()}


def ood_section(detector, features):
    """The report's `ood`: the detector and the share of the evaluated split it passes."""
    if detector is None:
        return {"method": None, "reason": f"no {layout.OOD_FILE} (evaluate's fit_ood)"}
    scores = detector.score(features)
    return {**detector.details, "examples": int(len(scores)),
            "in_distribution": int(np.sum(scores <= detector.threshold)),
            "in_distribution_share": float(np.mean(scores <= detector.threshold))}
