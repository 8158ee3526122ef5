"""ood.npz: a run's out-of-distribution detector, fitted by evaluate
(`cxr_tf.evaluation.ood.fit`) and used by evaluate's report, export (in the graph) and predict.

    detector = load(model_dir)                  # None without ood.npz
    scores = detector.score(features)           # features: one (n, D) array per layer
    in_distribution = scores <= detector.threshold

The score is the Mahalanobis distance of each layer's pooled features to the training films'
mean, d² = |(x - mean) @ W|² with W the whitening of the shared covariance, summed over the
layers as d²/D (`cxr_tf/evaluation/ood.py` says why). The matrices are stored in float32,
the precision the graph uses. numpy only.
"""

import dataclasses
import io
import json
import os

import numpy as np

from cxr_tf import atomic
from cxr_tf.runs import RunDirError, layout


def path(model_dir):
    return os.path.join(model_dir, layout.OOD_FILE)


@dataclasses.dataclass(frozen=True, eq=False)
class Detector:
    """A fitted detector.

    Args:
        layers: the layers whose pooled outputs are scored.
        means: one (D,) training mean per layer.
        whitening: one (D, D) matrix W per layer with d² = |(x - mean) @ W|².
        threshold: the cut (a score above it is out of distribution).
        details: method, percentile, the splits and counts it was fitted and cut on, and the
            share of validation films in distribution.
    """

    layers: tuple
    means: tuple
    whitening: tuple
    threshold: float
    details: dict

    def score(self, features):
        """The summed d²/D of each row; `features` holds one (n, D) array per layer."""
        total = 0.0
        for x, mean, w in zip(features, self.means, self.whitening):
            z = (np.asarray(x, np.float64) - mean) @ w
            total = total + np.einsum("ij,ij->i", z, z) / len(mean)
        return np.asarray(total, np.float64)

    def in_distribution(self, features):
        return self.score(features) <= self.threshold


def save(model_dir, detector, **details):
    """RUN/ood.npz, whole or not at all (float32 matrices: the precision the graph uses)."""
    arrays = {"layers": np.array(detector.layers),
              "details": np.array(json.dumps({**detector.details, **details}))}
    for i, (mean, w) in enumerate(zip(detector.means, detector.whitening)):
        arrays[f"mean_{i}"] = np.asarray(mean, np.float32)
        arrays[f"whitening_{i}"] = np.asarray(w, np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic.write_file(path(model_dir), buffer.getvalue(), mode="wb")


def load(model_dir):
    """The run's Detector, or None when it has no ood.npz."""
    file = path(model_dir)
    if not os.path.isfile(file):
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            layers = tuple(str(name) for name in z["layers"])
            details = json.loads(str(z["details"]))
            means = tuple(z[f"mean_{i}"].astype(np.float64) for i in range(len(layers)))
            whitening = tuple(z[f"whitening_{i}"].astype(np.float64) for i in range(len(layers)))
    except (OSError, KeyError, ValueError) as e:
        raise RunDirError(f"{file}: not an out-of-distribution detector "
                          f"({type(e).__name__}: {e})") from e
    return Detector(layers, means, whitening, float(details["threshold"]), details)
