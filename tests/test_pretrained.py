"""cxr_tf.pretrained: ImageNet conversion (offline, on randomised keras.applications weights)
and cxr_tf weights files with the same or another head size."""

import h5py
import keras
import numpy as np
import pytest

from cxr_tf import model, pretrained

SIZE = 32
GRAY = np.random.default_rng(7).integers(0, 256, (2, SIZE, SIZE, 1)).astype(np.float32)


def _randomise(reference, seed=0):
    """Every kernel, bias, BN weight and BN statistic of `reference` drawn at random."""
    rng = np.random.default_rng(seed)

    def draw(variable, distribution, *args):
        variable.assign(distribution(*args, tuple(variable.shape)).astype(np.float32))

    for layer in reference.layers:
        if isinstance(layer, keras.layers.Conv2D):
            draw(layer.kernel, rng.normal, 0, np.sqrt(2 / np.prod(layer.kernel.shape[:3])))
            draw(layer.bias, rng.normal, 0, 0.5)
        elif isinstance(layer, keras.layers.BatchNormalization):
            draw(layer.gamma, rng.uniform, 0.5, 1.5)
            draw(layer.beta, rng.normal, 0, 0.5)
            draw(layer.moving_mean, rng.normal, 0, 0.5)
            draw(layer.moving_variance, rng.uniform, 0.5, 2.0)


def _save_notop(reference, path, tmp_path):
    """The layout of keras.applications' notop download: the legacy HDF5 weights groups at
    the file's root (Keras 3 writes that layout only inside a legacy whole-model file)."""
    whole = tmp_path / "whole.h5"
    reference.save(whole)  # legacy HDF5 whole model; its model_weights group is the layout
    with h5py.File(whole, "r") as source, h5py.File(path, "w") as target:
        group = source["model_weights"]
        for key, value in group.attrs.items():
            target.attrs[key] = value
        for key in group:
            group.copy(group[key], target, name=key)
    whole.unlink()
    return path


@pytest.fixture(scope="module")
def reference():
    net = keras.applications.ResNet50(weights=None, include_top=False,
                                      input_shape=(SIZE, SIZE, 3))
    _randomise(net)
    return net


@pytest.fixture(scope="module")
def notop_file(reference, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("imagenet")
    return _save_notop(reference, tmp_path / pretrained.imagenet_file_name("resnet50_v1"),
                       tmp_path)


@pytest.fixture(scope="module")
def converted(notop_file):
    return model.build_model("resnet50_v1", SIZE, weights="imagenet",
                             imagenet_weights=str(notop_file))


def _np(variable):
    return keras.ops.convert_to_numpy(variable).astype(np.float64)


def _keras_input(gray):
    """What keras.applications is fed: the gray image as RGB, through its preprocess_input."""
    return keras.applications.resnet.preprocess_input(np.repeat(gray, 3, axis=-1))


def _outputs(net, layer_name, images):
    return keras.ops.convert_to_numpy(keras.Model(net.input, net.get_layer(layer_name).output)(images))


def test_constants_are_keras_applications_own():
    from keras.src.applications import resnet  # the installed Keras is the truth

    assert pretrained.KERAS_WEIGHTS_URL == resnet.BASE_WEIGHTS_PATH
    for arch, name in (("resnet50_v1", "resnet50"), ("resnet101_v1", "resnet101")):
        assert pretrained._IMAGENET[arch] == (name, resnet.WEIGHTS_HASHES[name][1])
    assert pretrained.imagenet_file_name("resnet50_v1") == (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    # "caffe" preprocessing subtracts the BGR mean pixel and does not scale.
    black = keras.applications.resnet.preprocess_input(np.zeros((1, 1, 1, 3), np.float32))
    np.testing.assert_allclose(black[0, 0, 0], [-m for m in pretrained.CAFFE_BGR_MEAN], rtol=1e-6)


def test_kernels_are_copied_and_the_stem_sums_its_channels(reference, converted):
    convs = [l for l in converted.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 53
    for conv in convs[1:]:
        np.testing.assert_array_equal(_np(conv.kernel), _np(reference.get_layer(conv.name).kernel))
    stem = _np(reference.get_layer("conv1_conv").kernel).sum(axis=2, keepdims=True)
    scale = 1 / (255 * model.PIXEL_STD)
    np.testing.assert_allclose(_np(converted.get_layer("conv1_conv").kernel), stem / scale,
                               rtol=1e-6)


def test_every_batch_norm_keeps_its_inference_affine_map(reference, converted):
    # Inference BN is y = a·z + c. Theirs sees z + bias (z: our bias-free conv output) with
    # epsilon 1.001e-5, so a = γ/√(v + 1.001e-5) and c = β - a·μ + a·bias; ours uses 1e-5.
    norms = [l for l in converted.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(norms) == 53
    assert reference.get_layer("conv2_block1_0_bn").epsilon == pytest.approx(1.001e-5)
    for bn in norms[1:]:  # the stem's is checked through its output below
        theirs = reference.get_layer(bn.name)
        bias = _np(reference.get_layer(bn.name[:-3] + "_conv").bias)
        a = _np(theirs.gamma) / np.sqrt(_np(theirs.moving_variance) + theirs.epsilon)
        c = _np(theirs.beta) - a * _np(theirs.moving_mean) + a * bias
        ours_a = _np(bn.gamma) / np.sqrt(_np(bn.moving_variance) + 1e-5)
        ours_c = _np(bn.beta) - ours_a * _np(bn.moving_mean)
        np.testing.assert_allclose(ours_a, a, rtol=1e-5, err_msg=bn.name)
        np.testing.assert_allclose(ours_c, c, rtol=1e-5, atol=1e-5, err_msg=bn.name)


def test_stem_equals_keras_applications_on_replicated_gray_except_at_the_padding(
        reference, converted):
    theirs = _outputs(reference, "conv1_bn", _keras_input(GRAY))
    ours = _outputs(converted, "conv1_bn", GRAY)
    # Output i of the 7×7 stride-2 conv (padding 3) reads input rows 2i-3 .. 2i+3.
    inside = [i for i in range(SIZE // 2) if 2 * i - 3 >= 0 and 2 * i + 3 <= SIZE - 1]
    assert inside == list(range(2, 15))
    window = np.ix_(range(2), inside, inside, range(64))
    np.testing.assert_allclose(ours[window], theirs[window], rtol=1e-5,
                               atol=1e-5 * np.abs(theirs).max())
    # Where the window reaches the padding, their zeros are the mean pixel, ours mean gray.
    assert np.abs(ours[:, 0] - theirs[:, 0]).max() > 1e-2 * np.abs(theirs).max()


def test_whole_network_equals_keras_applications(reference):
    # The padding only stops mattering when the stem's kernel weighs the three channels'
    # mean pixels exactly as our mean gray: project each kernel tap onto that subspace
    # (for this test only).
    stem = reference.get_layer("conv1_conv").kernel
    original = keras.ops.convert_to_numpy(stem)
    u = np.array(pretrained.CAFFE_BGR_MEAN) - 255 * model.PIXEL_MEAN
    kernel = original - np.einsum("hwcf,c->hwf", original, u)[:, :, None, :] * u[:, None] / (u @ u)
    stem.assign(kernel.astype(np.float32))
    try:
        ours = model.build_model("resnet50_v1", SIZE)
        pretrained.transfer_imagenet(reference, ours)
        theirs = keras.ops.convert_to_numpy(reference(_keras_input(GRAY)))
        ours = _outputs(ours, "conv5_block3_out", GRAY)
    finally:
        stem.assign(original)  # the module's other tests read the reference
    # Measured here: max |difference| 0.054 with outputs up to 42,005, i.e. 1.3e-6 of the
    # largest (float32 through 53 conv+BN layers with random statistics; 2e-6 at 64 px);
    # the bound, 1e-5 of the largest output, leaves room for other CPUs' summation orders.
    assert ours.shape == theirs.shape == (2, 1, 1, 2048)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())


def test_resnet101_v1_takes_every_weight_of_keras_applications_resnet101():
    reference = keras.applications.ResNet101(weights=None, include_top=False,
                                             input_shape=(SIZE, SIZE, 3))
    _randomise(reference, seed=1)
    ours = model.build_model("resnet101_v1", SIZE)
    pretrained.transfer_imagenet(reference, ours)
    convs = [l for l in ours.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 104 and convs[-1].name == "conv5_block3_3_conv"
    for conv in convs[1:]:
        np.testing.assert_array_equal(_np(conv.kernel), _np(reference.get_layer(conv.name).kernel))
    theirs, mine = reference.get_layer("conv4_block23_3_bn"), ours.get_layer("conv4_block23_3_bn")
    bias = _np(reference.get_layer("conv4_block23_3_conv").bias)
    np.testing.assert_allclose(_np(mine.moving_mean), _np(theirs.moving_mean) - bias,
                               rtol=1e-6, atol=1e-6)


def test_imagenet_head_starts_fresh(converted):
    logits = converted.get_layer("logits")
    assert logits.kernel.shape == (2048, 14)
    np.testing.assert_array_equal(_np(logits.bias), np.zeros(14))
    assert _np(logits.kernel).std() > 0


def test_imagenet_without_network_says_which_file_and_where(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", "/data/keras")
    with pytest.raises(RuntimeError) as error:
        model.build_model("resnet101_v1", SIZE, weights="imagenet")
    url = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
           "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert str(error.value) == (
        f"ImageNet weights for resnet101_v1 (keras.applications resnet101): could not fetch "
        f"{url} (URL fetch failure on https://...: None -- [Errno -3] Temporary failure in "
        "name resolution). Without network, fetch that file elsewhere and put it in Keras's "
        "cache, /data/keras/models, or pass its path as imagenet_weights (--imagenet_weights)"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "resnet50", "weights": "imagenet"},
         "weights='imagenet' is offered for arch resnet50_v1 and resnet101_v1 "
         "(keras.applications' ImageNet weights are ResNet v1); received arch='resnet50'"),
        ({"arch": "resnet50_v1", "imagenet_weights": "w.h5"},
         "imagenet_weights is read only with weights='imagenet'; received weights=None, "
         "imagenet_weights='w.h5'"),
        ({"arch": "resnet50_v1", "weights": "imagenet", "imagenet_weights": "/nonexistent.h5"},
         "imagenet_weights='/nonexistent.h5': no such file (expected a copy of "
         "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
         "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5)"),
        ({"arch": "resnet50_v1", "weights": "notop.h5"},
         "weights='notop.h5': expected None, 'imagenet' or a cxr_tf .weights.h5 or .keras "
         "file (keras.applications' ImageNet .h5 goes in imagenet_weights, with "
         "weights='imagenet')"),
        ({"arch": "resnet18", "weights": "/nonexistent/best.keras"},
         "weights='/nonexistent/best.keras': no such file"),
    ],
)
def test_weights_arguments_are_checked_before_building(kwargs, message):
    with pytest.raises(ValueError) as error:
        model.build_model(image_size=SIZE, **kwargs)
    assert str(error.value) == message


@pytest.fixture(scope="module")
def trained_resnet18(tmp_path_factory):
    """A resnet18 with every weight and statistic away from its initial value, saved as
    .weights.h5 and as .keras (with Adam's slots, as a run's checkpoints are)."""
    net = model.build_model("resnet18", SIZE)
    rng = np.random.default_rng(3)
    net.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in net.weights])
    net.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    net.optimizer.build(net.trainable_variables)  # the slots a trained run's .keras holds
    folder = tmp_path_factory.mktemp("cxr_tf_weights")
    net.save_weights(folder / "run.weights.h5")
    net.save(folder / "best.keras")
    return net, folder


def test_cxr_tf_weights_load_whole(trained_resnet18):
    source, folder = trained_resnet18
    net = model.build_model("resnet18", SIZE, weights=str(folder / "run.weights.h5"))
    assert len(net.weights) == len(source.weights) == 102
    for mine, theirs in zip(net.weights, source.weights):
        np.testing.assert_array_equal(_np(mine), _np(theirs), err_msg=mine.path)


@pytest.mark.parametrize("file_name", ["run.weights.h5", "best.keras"])
def test_cxr_tf_weights_with_another_head_load_all_but_the_head(trained_resnet18, file_name):
    source, folder = trained_resnet18
    net = model.build_model("resnet18", SIZE, num_classes=3, weights=folder / file_name)
    for layer in net.layers:
        if layer.name == "logits":
            assert layer.kernel.shape == (512, 3)
            np.testing.assert_array_equal(_np(layer.bias), np.zeros(3))
            continue
        for mine, theirs in zip(layer.weights, source.get_layer(layer.name).weights):
            np.testing.assert_array_equal(_np(mine), _np(theirs), err_msg=mine.path)


def test_cxr_tf_weights_of_another_arch_are_refused(trained_resnet18):
    _, folder = trained_resnet18
    with pytest.raises(ValueError) as error:
        model.build_model("resnet34", SIZE, weights=folder / "run.weights.h5")
    # Then Keras's own first line: "A total of 58 objects could not be loaded. ..."
    assert str(error.value).startswith(
        f"{folder / 'run.weights.h5'}: its weights do not fit resnet34 (A total of ")
    assert "objects could not be loaded" in str(error.value)


def test_a_file_without_a_head_is_not_a_cxr_tf_weights_file(notop_file, tmp_path):
    target = tmp_path / "notop.weights.h5"
    target.write_bytes(notop_file.read_bytes())
    with pytest.raises(ValueError) as error:
        model.build_model("resnet18", SIZE, weights=target)
    assert str(error.value) == (f"{target}: not a cxr_tf weights file (expected one 2-D head "
                                "kernel among its layers, found shapes [])")
