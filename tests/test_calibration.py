"""Per-finding calibration: the fits (cxr_tf.evaluation.calibration) against scipy and
scikit-learn, the small-count rule, calibration.json (cxr_tf.runs.calibration), and the
graph's copy of the maps."""

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from cxr_tf.evaluation import calibration, metrics
from cxr_tf.runs import RunDirError, thresholds
from cxr_tf.runs import calibration as calibration_file


def overconfident(n=600, positives=(1, 3, 9, 10, 30), seed=0):
    """Columns with the given positive counts (logits that separate them, 3x too large), and
    a last column drawn from a calibrated model and made overconfident: labels
    y ~ Bernoulli(sigmoid(z)), logits 3z, so its right temperature is 3."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, len(positives) + 1), np.int8)
    for c, k in enumerate(positives):
        y[rng.choice(n, k, replace=False), c] = 1
    logits = 3.0 * (np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.0, y.shape))
    z = rng.normal(-1.0, 2.0, n)
    y[:, -1] = rng.random(n) < metrics.sigmoid(z)
    logits[:, -1] = 3.0 * z
    return y, logits


def names(k):
    return [f"F{i}" for i in range(k)]


@pytest.mark.parametrize("method", calibration.METHODS)
def test_findings_below_ten_positives_stay_uncalibrated(method):
    y, logits = overconfident()
    fitted = calibration.fit(y, logits, method, names(6))
    methods = [fitted.findings[n]["method"] for n in names(6)]
    assert methods == ["none"] * 3 + [method] * 3  # 1, 3, 9 positives | 10, 30, ~200
    assert [fitted.findings[n].get("reason") for n in names(3)] == [
        "1 positive (fewer than 10)", "3 positives (fewer than 10)",
        "9 positives (fewer than 10)"]
    assert [fitted.findings[n]["positives"] for n in names(5)] == [1, 3, 9, 10, 30]
    assert fitted.fitted() == names(6)[3:]
    probs = fitted.apply(logits)
    # The uncalibrated columns are the plain sigmoid, exactly.
    np.testing.assert_array_equal(probs[:, :3], metrics.sigmoid(logits[:, :3]))
    assert not np.allclose(probs[:, 3:], metrics.sigmoid(logits[:, 3:]))


def test_temperature_minimizes_the_log_loss_and_lowers_the_ece():
    y, logits = overconfident()
    fitted = calibration.fit(y, logits, "temperature", names(6))
    t = fitted.findings["F5"]["temperature"]

    def log_loss(temperature):
        z = logits[:, 5] / temperature
        return np.mean(np.logaddexp(0, z) - y[:, 5] * z)

    assert 2.5 < t < 3.5  # the logits were made 3x too large
    assert log_loss(t) <= min(log_loss(t * 0.97), log_loss(t * 1.03))
    assert fitted.slope[5] == pytest.approx(1 / t) and fitted.intercept[5] == 0
    before = metrics.expected_calibration_error(y[:, 5:], metrics.sigmoid(logits[:, 5:]))
    after = metrics.expected_calibration_error(y[:, 5:], fitted.apply(logits)[:, 5:])
    assert after < before / 2


def test_platt_is_scikit_learns_unpenalized_logistic_regression():
    y, logits = overconfident()
    fitted = calibration.fit(y, logits, "platt", names(6))
    reference = LogisticRegression(C=np.inf).fit(logits[:, 4:5], y[:, 4])
    assert fitted.findings["F4"]["slope"] == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    assert fitted.findings["F4"]["intercept"] == pytest.approx(reference.intercept_[0],
                                                               rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(fitted.apply(logits)[:, 4],
                               reference.predict_proba(logits[:, 4:5])[:, 1], atol=1e-6)


def test_isotonic_equals_scikit_learns_prediction():
    y, logits = overconfident()
    fitted = calibration.fit(y, logits, "isotonic", names(6))
    probs = metrics.sigmoid(logits)
    for c in (3, 5):
        reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
            probs[:, c], y[:, c])
        np.testing.assert_allclose(fitted.apply(logits)[:, c], reference.predict(probs[:, c]),
                                   atol=1e-12)
    # Rows are padded to one width by repeating their last knot; np.interp is unchanged.
    assert fitted.knots_x.shape[0] == 6 and fitted.knots_x[0].tolist() == [0.0] + [1.0] * (
        fitted.knots_x.shape[1] - 1)


def test_calibration_json_round_trip_and_fingerprint(tmp_path):
    y, logits = overconfident()
    fitted = calibration.fit(y, logits, "isotonic", names(6))
    calibration_file.write(tmp_path, fitted, checkpoint="best")
    read = calibration_file.read(tmp_path, names(6))
    np.testing.assert_array_equal(read.apply(logits), fitted.apply(logits))
    content = json.loads((tmp_path / "calibration.json").read_text())
    assert content["method"] == "isotonic" and content["split"] == "validation"
    assert content["checkpoint"] == "best" and content["min_count"] == 10
    assert calibration_file.fingerprint(tmp_path)["method"] == "isotonic"
    with pytest.raises(RunDirError, match=r"calibration.json: calibrates F0, F1, F2, F3, F4, "
                                          r"F5; the model outputs A"):
        calibration_file.read(tmp_path, ["A"])
    (tmp_path / "calibration.json").write_text("{")
    with pytest.raises(RunDirError, match=r"calibration.json: not a calibration file"):
        calibration_file.read(tmp_path)
    assert calibration_file.read(tmp_path / "nowhere") is None


def test_thresholds_of_another_scale_are_refused(tmp_path):
    # Thresholds tuned before a calibration was fitted hold values of the old scale.
    thresholds.write_thresholds(tmp_path, [0.5] * 14, "f1", calibration=None)
    _, content = thresholds.read_thresholds(tmp_path)
    calibration_file.check_thresholds(tmp_path, content)  # no calibration: consistent
    y, logits = overconfident()
    calibration_file.write(tmp_path, calibration.fit(y, logits, "temperature", names(6)))
    with pytest.raises(RunDirError, match=r"thresholds.json: tuned on uncalibrated "
                                          r"probabilities, but calibration.json now "
                                          r"calibrates them \(temperature\); tune the "
                                          r"thresholds again"):
        calibration_file.check_thresholds(tmp_path, content)
    thresholds.write_thresholds(tmp_path, [0.5] * 14, "f1",
                                calibration=calibration_file.fingerprint(tmp_path))
    calibration_file.check_thresholds(tmp_path, thresholds.read_thresholds(tmp_path)[1])


@pytest.mark.parametrize("method", calibration.METHODS)
def test_the_graph_applies_the_same_maps(method):
    import tensorflow as tf

    from cxr_tf.serving import baked

    y, logits = overconfident()
    fitted = calibration.fit(y, logits, method, names(6))
    # The model's logits are float32: both sides get the same ones.
    grid = np.concatenate([logits, np.linspace(-40, 40, 6 * 50).reshape(50, 6)]).astype(
        np.float32)
    in_graph = baked.calibrator(fitted, 6)(tf.constant(grid)).numpy()
    np.testing.assert_allclose(in_graph, fitted.apply(grid), atol=1e-7)  # float32 rounding
    with pytest.raises(ValueError, match="the calibration has 6 columns; the model has 14"):
        baked.calibrator(fitted, 14)
