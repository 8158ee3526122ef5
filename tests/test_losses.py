"""cxr_tf.losses: weighted BCE from logits by hand, equality with Keras BCE, balanced weights."""

import math

import keras
import numpy as np
import pytest

from cxr_tf import losses


def _value(loss, y_true, logits):
    value = loss(np.asarray(y_true, np.float32), np.asarray(logits, np.float32))
    return float(keras.ops.convert_to_numpy(value))


def softplus(z):
    return math.log1p(math.exp(z))


def test_weighted_bce_by_hand():
    # 2 examples × 2 classes, pos_weight = [2, 0.5]; per element
    # (y=1: w·softplus(-z), y=0: softplus(z)):
    #   [0,0] y=1 z=0   -> 2   * softplus(0)  = 2 ln 2
    #   [0,1] y=0 z=2   ->       softplus(2)  = ln(1 + e^2)
    #   [1,0] y=0 z=1   ->       softplus(1)  = ln(1 + e)
    #   [1,1] y=1 z=-1  -> 0.5 * softplus(1)  = 0.5 ln(1 + e)
    # mean over classes, then over the batch = sum / 4
    y_true = [[1, 0], [0, 1]]
    logits = [[0.0, 2.0], [1.0, -1.0]]
    expected = (2 * softplus(0) + softplus(2) + softplus(1) + 0.5 * softplus(1)) / 4
    assert _value(losses.make_loss([2.0, 0.5]), y_true, logits) == pytest.approx(expected, rel=1e-6)


def test_positive_weight_scales_only_the_positive_term():
    # One positive (z=0.5) and one negative (z=-0.5) in a 4-class row; weight 3 on class 0.
    y_true = [[1, 0, 0, 0]]
    logits = [[0.5, -0.5, 0.0, 0.0]]
    plain = _value(losses.make_loss([1.0] * 4), y_true, logits)
    weighted = _value(losses.make_loss([3.0, 1.0, 1.0, 1.0]), y_true, logits)
    # Only the [0,0] term changes: by (3 - 1) · softplus(-0.5), divided by the 4 classes.
    assert weighted - plain == pytest.approx(2 * softplus(-0.5) / 4, rel=1e-5)
    # A weight on a class whose label is 0 changes nothing.
    unused_weight = _value(losses.make_loss([1.0, 5.0, 1.0, 1.0]), y_true, logits)
    assert unused_weight == pytest.approx(plain, rel=1e-6)


def test_pos_weight_one_equals_keras_bce_from_logits():
    rng = np.random.default_rng(0)
    y_true = (rng.random((8, 14)) < 0.3).astype(np.float32)
    logits = rng.normal(0, 4, (8, 14)).astype(np.float32)
    keras_bce = keras.losses.BinaryCrossentropy(from_logits=True)
    assert _value(losses.make_loss([1.0] * 14), y_true, logits) == pytest.approx(
        _value(keras_bce, y_true, logits), rel=1e-5
    )


def test_no_pos_weight_is_plain_keras_bce():
    loss = losses.make_loss(None)
    assert isinstance(loss, keras.losses.BinaryCrossentropy)
    assert loss.get_config()["from_logits"] is True


def test_large_logits_do_not_overflow():
    value = _value(losses.make_loss([2.0]), [[1.0], [0.0]], [[-100.0], [100.0]])
    # 2 · softplus(100) + softplus(100) ≈ 300, averaged over the 2 examples.
    assert value == pytest.approx(150.0, rel=1e-5)


def test_config_round_trip_keeps_weights():
    loss = losses.make_loss(np.array([1.5, 2.5], np.float32))
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, losses.WeightedBinaryCrossentropy)
    assert restored.pos_weight == [1.5, 2.5]


_SHAPE_ERROR = "pos_weight must be a non-empty 1-D sequence (one weight per class)"


@pytest.mark.parametrize(
    "pos_weight, message",
    [
        ([], f"{_SHAPE_ERROR}; received shape (0,)"),
        ([[1.0, 2.0]], f"{_SHAPE_ERROR}; received shape (1, 2)"),
        ([1.0, 0.0], "pos_weight must be finite and > 0; received [1.0, 0.0]"),
        ([1.0, float("inf")], "pos_weight must be finite and > 0; received [1.0, inf]"),
    ],
)
def test_bad_pos_weight_is_rejected(pos_weight, message):
    with pytest.raises(ValueError) as error:
        losses.make_loss(pos_weight)
    assert str(error.value) == message


def test_balanced_pos_weight_is_neg_over_pos():
    labels = np.array(
        [
            # class 0: 1 of 4 positive -> 3/1; class 1: 2 of 4 -> 2/2;
            # class 2: no positives -> 1.0; class 3: all positive -> 1.0
            [1, 1, 0, 1],
            [0, 1, 0, 1],
            [0, 0, 0, 1],
            [0, 0, 0, 1],
        ],
        np.uint8,
    )
    weights = losses.balanced_pos_weight(labels)
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, [3.0, 1.0, 1.0, 1.0])
    capped = losses.balanced_pos_weight(labels, max_weight=2.5)
    np.testing.assert_array_equal(capped, [2.5, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "labels, max_weight, message",
    [
        (
            np.array([1, 0]),
            None,
            "labels must be a non-empty 2-D multi-hot matrix (examples × classes); "
            "received shape (2,)",
        ),
        (np.array([[1, 2]]), None, "labels must hold only 0 and 1; received values [1, 2]"),
        (np.array([[1, 0]]), 0, "max_weight must be > 0 or None; received max_weight=0"),
    ],
)
def test_balanced_pos_weight_checks_its_input(labels, max_weight, message):
    with pytest.raises(ValueError) as error:
        losses.balanced_pos_weight(labels, max_weight=max_weight)
    assert str(error.value) == message
