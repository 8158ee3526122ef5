"""Binary cross-entropy on logits, optionally with a per-class weight on the positive term.

`pos_weight` "balanced" up-weights the rare positives of each finding by neg/pos, the way
`torch.nn.BCEWithLogitsLoss(pos_weight=...)` does. It lives in the loss rather than in
Keras's `class_weight`, which weights whole examples and cannot express one weight per
output of a multi-label model. Pure `keras.ops`, so it runs under any backend.
"""

import keras
import numpy as np
from keras import ops


def make_loss(pos_weight=None):
    """The training loss: BCE from logits, averaged over classes and then over the batch.

    Args:
        pos_weight: None for plain `keras.losses.BinaryCrossentropy(from_logits=True)`, or one
            positive weight per class (a sequence or 1-D array, e.g. `balanced_pos_weight`).
    """
    if pos_weight is None:
        return keras.losses.BinaryCrossentropy(from_logits=True, name="bce")
    return WeightedBinaryCrossentropy(pos_weight)


@keras.saving.register_keras_serializable(package="cxr_tf")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """BCE from logits with `pos_weight[c]` multiplying the positive term of class c.

    Per element: pos_weight * y * softplus(-z) + (1 - y) * softplus(z), which equals
    -(pos_weight * y * log(sigmoid(z)) + (1 - y) * log(1 - sigmoid(z))) without the overflow of
    exponentiating large logits. With every weight 1 it is plain BCE from logits.

    Example:
        loss = WeightedBinaryCrossentropy(balanced_pos_weight(train_labels))
        model.compile(optimizer="adam", loss=loss)
    """

    def __init__(
        self, pos_weight, reduction="sum_over_batch_size", name="weighted_bce", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        weights = np.asarray(pos_weight, dtype=np.float64)
        if weights.ndim != 1 or weights.size == 0:
            raise ValueError(
                f"pos_weight must be a non-empty 1-D sequence (one weight per class); "
                f"received shape {weights.shape}"
            )
        if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise ValueError(f"pos_weight must be finite and > 0; received {weights.tolist()}")
        self.pos_weight = [float(w) for w in weights]

    def call(self, y_true, y_pred):
        logits = y_pred
        labels = ops.cast(y_true, logits.dtype)
        weight = ops.convert_to_tensor(self.pos_weight, dtype=logits.dtype)
        positive_term = weight * labels * ops.softplus(-logits)
        per_element = positive_term + (1.0 - labels) * ops.softplus(logits)
        # Mean over classes, as keras.losses.BinaryCrossentropy does, so the two are equal at
        # pos_weight=1 and the learning rate means the same with or without weights.
        return ops.mean(per_element, axis=-1)

    def get_config(self):
        config = super().get_config()
        config["pos_weight"] = self.pos_weight
        return config


def balanced_pos_weight(labels, max_weight=None):
    """Per-class neg/pos from the train split's multi-hot matrix (examples × classes).

    A class whose column holds only one value (no positives, or no negatives) gets 1.0: neg/0
    is infinite and 0/pos would switch the positives off, while with a constant column the
    weight barely matters for training, so the neutral value keeps the loss plain BCE for it
    (and finite in config.json). `max_weight` caps the weights of very rare classes (Hernia is
    about 1 in 500 in NIH), which otherwise dominate the gradient.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ValueError(
            f"labels must be a non-empty 2-D multi-hot matrix (examples × classes); "
            f"received shape {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        values = np.unique(labels)[:10].tolist()
        raise ValueError(f"labels must hold only 0 and 1; received values {values}")
    if max_weight is not None and not max_weight > 0:
        raise ValueError(f"max_weight must be > 0 or None; received max_weight={max_weight!r}")
    positives = labels.sum(axis=0, dtype=np.int64)
    negatives = labels.shape[0] - positives
    weights = np.ones(labels.shape[1], dtype=np.float64)
    both = (positives > 0) & (negatives > 0)
    weights[both] = negatives[both] / positives[both]
    if max_weight is not None:
        weights = np.minimum(weights, max_weight)
    return weights.astype(np.float32)
