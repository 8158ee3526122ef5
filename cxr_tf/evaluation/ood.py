"""The out-of-distribution flag: is an input unlike the films the model was trained on? ood.npz.

    net = feature_model(model)                      # logits, then one pooled feature per stage
    detector = fit(train_features, validation_features, stage_layers(model))
    scores = detector.score(features)               # features: one (n, D) array per stage
    in_distribution = scores <= detector.threshold

The score is the Mahalanobis distance of a film's features to the training films', with one
shared (Ledoit-Wolf shrunk) covariance: Lee, Lee, Lee & Shin, "A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018. As their
"feature ensemble" it is taken at the end of every residual stage, on the stage's
global-average-pooled output, and the stages are summed as d²/D (about 1 per stage for a
film like the training ones). Two departures, both because this is a multi-label model
without OOD examples to learn from: one Gaussian for all films (no class-conditional means),
and equal weights for the stages instead of weights fitted on OOD data.

Why this score, measured on the demo run (docs/EVALUATION.md): the energy score on the logits
(Liu et al. 2020) flagged none of the noise, photographs, rotated or inverted films; the last
stage's pooled features alone missed 69 % of the films rotated by 90°, because global
average pooling of the last stage hardly sees orientation; the early stages see it (edge
orientation statistics), and the sum over stages flags every kind tried.

The Gaussian is fitted on the training split (up to `MAX_FIT_EXAMPLES` films); the cut is
the `percentile` (default 99.5) of the validation films' scores, out of sample, so about
0.5 % of in-distribution films are flagged. numpy and scikit-learn; `feature_model` (Keras) is
the only function that needs a model.
"""

import dataclasses
import re

import numpy as np

from cxr_tf.runs.ood import Detector

METHOD = "mahalanobis"
DEFAULT_PERCENTILE = 99.5
MAX_FIT_EXAMPLES = 10_000  # enough for a 2,048-dim covariance; the full NIH train split is 78k
POOL_PREFIX = "ood_pool_"
_STAGE_OUTPUT = re.compile(r"^conv(\d+)_block(\d+)_out$")


def stage_layers(model):
    """The last block's output layer of each residual stage (`conv2_block3_out`, ...), in
    order; for any other network, the layer that feeds `logits` (the pooled features)."""
    last = {}
    for layer in model.layers:
        match = _STAGE_OUTPUT.match(layer.name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            if block >= last.get(stage, (0, ""))[0]:
                last[stage] = (block, layer.name)
    if last:
        return tuple(name for _, (_, name) in sorted(last.items()))
    pooled = model.get_layer("logits").input
    return tuple(layer.name for layer in model.layers if layer.output is pooled)[:1]


def feature_model(model, layers=None):
    """A Keras model with the same weights as `model` that outputs [logits, the pooled output
    of each layer in `layers` (default `stage_layers`)]: one forward pass for both. Its
    `output_names` are ["logits" or the model's, "ood_pool_<layer>", ...]."""
    import keras

    outputs = [model.outputs[0]]
    for name in layers or stage_layers(model):
        x = model.get_layer(name).output
        pool = (keras.layers.GlobalAveragePooling2D if len(x.shape) == 4
                else keras.layers.Identity)
        outputs.append(pool(name=f"{POOL_PREFIX}{name}")(x))
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")


def layers_of(net):
    """The scored layers of a `feature_model` (empty for a plain model)."""
    return tuple(name.removeprefix(POOL_PREFIX) for name in net.output_names
                 if name.startswith(POOL_PREFIX))


def _gaussian(x):
    """(mean, whitening) of a Ledoit-Wolf fit: W = V Λ^-1/2 from the shrunk covariance's
    eigendecomposition (positive definite by construction, so no inverse can fail)."""
    from sklearn.covariance import LedoitWolf

    est = LedoitWolf().fit(np.asarray(x, np.float64))
    values, vectors = np.linalg.eigh(est.covariance_)
    return est.location_, vectors / np.sqrt(np.maximum(values, 1e-12))


def fit(train_features, validation_features, layers, *, percentile=DEFAULT_PERCENTILE):
    """A Detector whose Gaussian is fitted on `train_features` and whose cut is the
    `percentile` of the scores of `validation_features` (each: one (n, D) array per layer)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100]; received {percentile!r}")
    fitted = [_gaussian(x) for x in train_features]
    detector = Detector(tuple(layers), tuple(m for m, _ in fitted), tuple(w for _, w in fitted),
                        0.0, {})
    scores = detector.score(validation_features)
    threshold = float(np.percentile(scores, percentile))
    details = {"method": METHOD, "percentile": float(percentile), "threshold": threshold,
               "layers": list(layers), "fitted_on": "train",
               "train_examples": int(len(train_features[0])), "cut_on": "validation",
               "validation_examples": int(len(scores)),
               "validation_in_distribution": float(np.mean(scores <= threshold))}
    return dataclasses.replace(detector, threshold=threshold, details=details)
