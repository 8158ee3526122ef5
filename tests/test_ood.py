"""The out-of-distribution detector (cxr_tf.evaluation.ood): the Mahalanobis score against a
direct computation, ood.npz, the graph's copy, and what it flags on films, noise, photographs,
rotated and inverted films."""

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.covariance import LedoitWolf

from cxr_tf import labels
from cxr_tf.data import images
from cxr_tf.evaluation import ood
from cxr_tf.runs import RunDirError
from cxr_tf.runs import ood as ood_file

SIZE = 32


def gaussian_features(n, dims=(6, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (n, d)) @ rng.normal(0, 1, (d, d)) + 3 for d in dims]


def test_the_score_is_the_summed_mahalanobis_distance_per_dimension():
    train, validation = gaussian_features(300), gaussian_features(50, seed=1)
    detector = ood.fit(train, validation, ("a", "b"), percentile=90)
    expected = 0.0
    for x_train, x in zip(train, validation):
        est = LedoitWolf().fit(x_train)
        d = x - est.location_
        expected = expected + np.einsum("ij,jk,ik->i", d, est.precision_, d) / x.shape[1]
    np.testing.assert_allclose(detector.score(validation), expected, rtol=1e-8)
    assert detector.threshold == pytest.approx(np.percentile(expected, 90))
    assert detector.details["validation_in_distribution"] == pytest.approx(0.9, abs=0.02)
    assert (detector.details["train_examples"], detector.details["validation_examples"]) == \
        (300, 50)
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]; received 0"):
        ood.fit(train, validation, ("a", "b"), percentile=0)


def test_ood_npz_round_trip_and_the_graph_score(tmp_path):
    import tensorflow as tf

    from cxr_tf.serving import baked

    train, validation = gaussian_features(300), gaussian_features(50, seed=1)
    detector = ood.fit(train, validation, ("a", "b"))
    ood_file.save(tmp_path, detector, checkpoint="best")
    loaded = ood_file.load(tmp_path)
    assert loaded.layers == ("a", "b") and loaded.details["checkpoint"] == "best"
    assert loaded.threshold == detector.threshold
    # Stored in float32 (what the graph uses): scores agree to float32 precision.
    np.testing.assert_allclose(loaded.score(validation), detector.score(validation), rtol=1e-5)
    in_graph = baked.ood_scorer(loaded)([tf.constant(x, tf.float32) for x in validation])
    np.testing.assert_allclose(in_graph.numpy(), loaded.score(validation), rtol=1e-4)
    assert ood_file.load(tmp_path / "nowhere") is None
    (tmp_path / "ood.npz").write_bytes(b"not a zip")
    with pytest.raises(RunDirError, match=r"ood.npz: not an out-of-distribution detector"):
        ood_file.load(tmp_path)


def films(count, start, rng):
    """Synthetic films as the training data draws them, rendered at 2x and resized."""
    from cxr_tf.synthetic.renderer import render

    out = []
    for i in range(start, start + count):
        findings = [name for name in labels.LABELS if rng.random() < 0.1]
        film = render(2 * SIZE, findings, [0, 1, i // 2], [0, 2, i])
        out.append(np.asarray(Image.fromarray(film).resize((SIZE, SIZE),
                                                          Image.Resampling.BILINEAR)))
    return np.stack(out)[..., None]


def photographs():
    """Natural photographs that ship with scikit-learn, and a smooth colour scene."""
    from sklearn.datasets import load_sample_image

    u, v = np.meshgrid(np.linspace(0, 1, 256), np.linspace(0, 1, 256))
    scene = np.stack([255 * (0.5 + 0.5 * np.sin(6 * u + 2 * v)), 255 * v,
                      255 * (1 - u) * (v > 0.6)], -1).astype(np.uint8)
    pictures = [load_sample_image("china.jpg"), load_sample_image("flower.jpg"), scene]
    encoded = []
    for picture in pictures:
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return np.stack([images.preprocess(data, f"photo{i}", SIZE)[0]
                     for i, data in enumerate(encoded)])


@pytest.mark.slow
def test_films_pass_and_noise_photographs_rotated_and_inverted_films_are_flagged():
    # An untrained ResNet-18 at 32 px already separates them: its early stages see edge
    # orientation and the intensity distribution, which rotation and inversion change.
    import keras

    from cxr_tf import model

    rng = np.random.default_rng(0)
    train, validation, test = films(100, 0, rng), films(30, 1000, rng), films(30, 2000, rng)
    keras.utils.set_random_seed(0)
    net = ood.feature_model(model.build_model("resnet18", SIZE, 14))
    assert ood.layers_of(net) == ("conv2_block2_out", "conv3_block2_out", "conv4_block2_out",
                                  "conv5_block2_out")

    def features(pixels):
        return net.predict(pixels.astype(np.float32), verbose=0)[1:]

    detector = ood.fit(features(train), features(validation), ood.layers_of(net))
    assert detector.in_distribution(features(test)).mean() >= 0.9  # about 1 in 30 flagged
    inputs = {"noise": rng.integers(0, 256, (10, SIZE, SIZE, 1), dtype=np.uint8),
              "photographs": photographs(),
              "rotated 90°": np.rot90(test, 1, axes=(1, 2)),
              "inverted": 255 - test}
    for name, pixels in inputs.items():
        assert not detector.in_distribution(features(pixels)).any(), name
