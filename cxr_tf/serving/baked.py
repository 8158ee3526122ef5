"""What a run decided for the point of use, as graph ops beside the model: the calibration of
the probabilities, the out-of-distribution score, and the `metadata` signature's values (label
names, thresholds and their provenance, calibration, the OOD cut, the model card).

Each op repeats its numpy twin in float32: `calibrator` is `Calibration.apply`
(`cxr_tf.runs.calibration`), `ood_scorer` is `Detector.score` (`cxr_tf.runs.ood`),
so a SavedModel serves what predict and evaluate compute from the run dir.
"""

import dataclasses

import numpy as np
import tensorflow as tf

MODEL_CARD_FILE = "assets/model_card.json"  # in the SavedModel dir


@dataclasses.dataclass(frozen=True)
class Baked:
    """What the run decided for the point of use, baked into the graph beside the model.

    Args:
        calibration: a `runs.calibration.Calibration` of the model's outputs, or None
            (probabilities are the plain sigmoid).
        detector: a `runs.ood.Detector`, or None (ood_score NaN, in_distribution true).
        provenance: the `runs.thresholds.Decisions` the thresholds came from, or None.
        model_card: the model card as a JSON string ("" for none).
    """

    calibration: object = None
    detector: object = None
    provenance: object = None
    model_card: str = ""


def calibrator(calibration, num_outputs):
    """logits [N, C] -> float32 probabilities, as `Calibration.apply`: an affine map on the
    logit, then the piecewise-linear map on the probability (skipped when every column's is
    the identity). In float64, as numpy: isotonic knots of saturated probabilities lie closer
    together than float32 can tell apart, which moved a probability by 1e-4."""
    if calibration is None:
        return tf.sigmoid
    if len(calibration.label_names) != num_outputs:
        raise ValueError(f"the calibration has {len(calibration.label_names)} columns; the "
                         f"model has {num_outputs} outputs")
    slope = tf.constant(calibration.slope, tf.float64)
    intercept = tf.constant(calibration.intercept, tf.float64)
    knots_x = tf.constant(calibration.knots_x, tf.float64)
    knots_y = tf.constant(calibration.knots_y, tf.float64)
    identity = calibration.knots_x.shape[1] == 2 and (calibration.knots_x == [0, 1]).all() \
        and (calibration.knots_y == [0, 1]).all()

    def calibrate(logits):
        probs = tf.sigmoid(tf.cast(logits, tf.float64) * slope + intercept)
        return tf.cast(probs if identity else interp(probs, knots_x, knots_y), tf.float32)

    return calibrate


def interp(probs, knots_x, knots_y):
    """np.interp of each column of probs [N, C] on its own knots (row c of [C, K]): values
    outside the knots take the end values, as np.interp does."""
    values = tf.transpose(probs)  # [C, N]: searchsorted works row by row
    last = tf.shape(knots_x)[1] - 1
    upper = tf.clip_by_value(tf.searchsorted(knots_x, values, side="right"), 1, last)
    x0 = tf.gather(knots_x, upper - 1, batch_dims=1)
    x1 = tf.gather(knots_x, upper, batch_dims=1)
    y0 = tf.gather(knots_y, upper - 1, batch_dims=1)
    y1 = tf.gather(knots_y, upper, batch_dims=1)
    width = x1 - x0
    weight = tf.where(width > 0, (values - x0) / tf.where(width > 0, width, tf.ones_like(width)),
                      tf.zeros_like(width))
    weight = tf.clip_by_value(weight, 0.0, 1.0)
    return tf.transpose(y0 + weight * (y1 - y0))


def ood_scorer(detector):
    """pooled features (one [N, D] per layer) -> ood_score [N], as `Detector.score`. The means
    and whitening matrices are variables, not constants: both prediction signatures share one
    copy in variables/ (as constants each function's graph held its own, 2 × 22 MB for a
    ResNet-50)."""
    means = [tf.Variable(np.asarray(m, np.float32), trainable=False, name=f"ood_mean_{i}")
             for i, m in enumerate(detector.means)]
    whitening = [tf.Variable(np.asarray(w, np.float32), trainable=False,
                             name=f"ood_whitening_{i}") for i, w in enumerate(detector.whitening)]

    def score(features):
        total = 0.0
        for x, mean, w in zip(features, means, whitening):
            z = tf.matmul(x - mean, w)
            total += tf.reduce_sum(z * z, axis=1) / float(mean.shape[0])
        return total

    return score


def about(thresholds, label_names, baked):
    """The plain-Python summary that `saved_model_cli show --all` prints (see _metadata_fn)."""
    methods = (baked.provenance.arrays()["methods"] if baked.provenance is not None
               else ["unknown"] * len(label_names))
    return {
        "label_names": tuple(label_names),
        "thresholds": {name: round(t, 6) for name, t in zip(label_names, thresholds)},
        "threshold_methods": dict(zip(label_names, methods)),
        "calibration": baked.calibration.method if baked.calibration is not None else "none",
        "ood": (f"{baked.detector.details['method']}, in_distribution when ood_score <= "
                f"{baked.detector.threshold:.6g}" if baked.detector is not None else "none"),
        "model_card": f"{MODEL_CARD_FILE} (and the metadata signature's model_card output)",
    }


def metadata_values(thresholds, label_names, baked, values):
    """Every `metadata` output: label names, thresholds and their provenance, calibration,
    the out-of-distribution cut and the model card, beside `values`."""
    n = len(label_names)
    provenance = (baked.provenance.arrays() if baked.provenance is not None else
                  {"methods": ["unknown"] * n, "splits": [""] * n, "positives": [-1] * n,
                   "negatives": [-1] * n, "reasons": [""] * n})
    calibration, detector = baked.calibration, baked.detector
    per_finding = ([calibration.findings[name]["method"] for name in label_names]
                   if calibration is not None else ["none"] * n)
    return {
        "label_names": tf.constant(list(label_names)),
        "thresholds": tf.constant(thresholds, tf.float32),
        **{f"threshold_{key}": tf.constant(value, tf.int64 if key in ("positives", "negatives")
                                           else tf.string)
           for key, value in provenance.items()},
        "threshold_summary": tf.constant(baked.provenance.summary() if baked.provenance
                                         is not None else "unknown (no provenance given)"),
        **values,
        "calibration": tf.constant(calibration.method if calibration is not None else "none"),
        "calibration_methods": tf.constant(per_finding),
        "ood_method": tf.constant(detector.details["method"] if detector is not None
                                  else "none"),
        "ood_threshold": tf.constant(detector.threshold if detector is not None else np.nan,
                                     tf.float32),
        "ood_percentile": tf.constant(detector.details["percentile"] if detector is not None
                                      else np.nan, tf.float32),
        "model_card": tf.constant(baked.model_card),
        "model_card_file": tf.constant(MODEL_CARD_FILE),
    }
