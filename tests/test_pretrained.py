"""cxr_tf.pretrained: ImageNet conversion of every family, offline, on randomised
keras.applications weights saved in the notop layout; wrong converters fail the same checks;
cxr_tf weights files with the same or another head size."""

import dataclasses
import types

import h5py
import keras
import numpy as np
import pytest

from cxr_tf import errors, model, pretrained

SIZE = 32
GRAY = np.random.default_rng(7).integers(0, 256, (2, SIZE, SIZE, 1)).astype(np.float32)
FAMILIES = ("resnet50_v1", "densenet121", "efficientnetv2_s", "convnext_tiny")
KERAS_EPSILON = 1.001e-5  # keras.applications' ResNet and DenseNet BatchNorm


def _randomise(reference, seed=0):
    """Every weight and BN statistic of `reference` drawn at random; in each BatchNorm one
    channel in eight is nearly dead (variance < 1e-6, γ ~ 1e-3), as trained networks have,
    so that an epsilon left unfolded (1.001e-5 against 1e-5) shows: 5e-4 of its scale."""
    rng = np.random.default_rng(seed)
    for variable in reference.weights:
        shape, kind = tuple(variable.shape), variable.path.rsplit("/", 1)[-1]
        if "kernel" in kind:  # conv, depthwise, grouped and dense kernels: fan-in scaled
            value = rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
        elif kind == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif kind == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # biases, beta, moving_mean
            value = rng.normal(0, 0.5, shape)
        variable.assign(value.astype(np.float32))
    for layer in reference.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            dead = np.arange(0, layer.gamma.shape[0], 8)
            for variable, low, high in ((layer.gamma, 5e-4, 1.5e-3),
                                        (layer.moving_variance, 0.0, 1e-6)):
                value = keras.ops.convert_to_numpy(variable).copy()
                value[dead] = rng.uniform(low, high, dead.size)
                variable.assign(value)


def _application(arch, seed=0):
    """keras.applications' network for `arch`, three channels, pooled like our `avg_pool`
    (ConvNeXt: pooled, then its LayerNorm, like our head)."""
    application = getattr(keras.applications, pretrained.IMAGENET[arch].application)
    net = application(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3),
                      pooling="avg")
    _randomise(net, seed)
    return net


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


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """One family: the randomised reference, its notop file, and our network built from that
    file by build_model(weights="imagenet", imagenet_weights=FILE)."""
    arch = request.param
    reference = _application(arch)
    tmp_path = tmp_path_factory.mktemp(arch)
    notop = _save_notop(reference, tmp_path / pretrained.imagenet_file_name(arch), tmp_path)
    converted = model.build_model(arch, SIZE, weights="imagenet", imagenet_weights=str(notop))
    return types.SimpleNamespace(arch=arch, reference=reference, notop=notop,
                                 converted=converted)


def _np(variable):
    return keras.ops.convert_to_numpy(variable).astype(np.float64)


def _keras_input(arch, gray):
    """What keras.applications is fed: the gray image as RGB, through its preprocess_input
    (EfficientNetV2 and ConvNeXt preprocess inside the model)."""
    rgb = np.repeat(gray, 3, axis=-1)
    if arch.startswith("resnet"):
        return keras.applications.resnet.preprocess_input(rgb)
    if arch.startswith("densenet"):
        return keras.applications.densenet.preprocess_input(rgb)
    return rgb


def _outputs(net, layer_name, images):
    return keras.ops.convert_to_numpy(
        keras.Model(net.input, net.get_layer(layer_name).output)(images)).astype(np.float64)


def _features(net, images):
    """Our pooled features: what the `logits` head reads."""
    return keras.ops.convert_to_numpy(
        keras.Model(net.input, net.get_layer("logits").input)(images)).astype(np.float64)


def _leaves(net):
    return {layer.name: layer for layer in pretrained._leaf_layers(net)}


def _affine(bn, epsilon, bias=0.0):
    """Inference BN as y = a·z + c, for z the conv output without `bias`."""
    a = _np(bn.gamma) / np.sqrt(_np(bn.moving_variance) + epsilon)
    return a, _np(bn.beta) - a * _np(bn.moving_mean) + a * bias


def check_copied(reference, ours, arch):
    """Every weight of ours but the stem conv's and the head's is the reference's: kernels
    bit for bit, BatchNorms as the same inference affine map (epsilon and biases folded)."""
    theirs = _leaves(reference)
    stem_conv, stem_norm = pretrained.IMAGENET[arch].stem
    checked = 0
    for name, layer in _leaves(ours).items():
        if not layer.weights or name in ("logits", stem_conv, stem_norm):
            continue  # the stem's are checked through its output
        source = reference.layers[-1] if name.endswith("_head_layernorm") else theirs[name]
        if isinstance(layer, keras.layers.BatchNormalization):
            conv = theirs.get(name[: -len("_bn")] + "_conv")
            bias = _np(conv.bias) if conv is not None and conv.use_bias else 0.0
            want_a, want_c = _affine(source, source.epsilon, bias)
            a, c = _affine(layer, layer.epsilon)
            np.testing.assert_allclose(a, want_a, rtol=1e-5, err_msg=name)
            np.testing.assert_allclose(c, want_c, rtol=1e-5, atol=1e-5, err_msg=name)
        else:
            for mine, source_weight in zip(layer.weights, source.weights):
                np.testing.assert_array_equal(_np(mine), _np(source_weight), err_msg=mine.path)
        checked += 1
    return checked


def _inside(arch):
    """Output rows/columns of the stem whose window stays inside the 32-px image."""
    if arch.startswith(("resnet", "densenet")):
        # Output i of the 7×7 stride-2 conv (padding 3) reads input rows 2i-3 .. 2i+3.
        return [i for i in range(SIZE // 2) if 2 * i - 3 >= 0 and 2 * i + 3 <= SIZE - 1]
    # EfficientNetV2-S pads zero = pixel 128 in both; ConvNeXt's stem does not pad.
    return list(range(SIZE // 2 if arch == "efficientnetv2_s" else SIZE // 4))


def check_stem(reference, ours, arch, images=GRAY):
    """The stem's output (after its norm) equals the reference's on the gray image replicated
    to RGB wherever its window stays inside the image."""
    # After the stem's norm, the same name in both networks (ConvNeXt: its stem Sequential).
    layer = pretrained.IMAGENET[arch].stem[1] or "convnext_tiny_stem"
    theirs = _outputs(reference, layer, _keras_input(arch, images))
    mine = _outputs(ours, layer, images)
    inside = _inside(arch)
    window = np.ix_(range(len(images)), inside, inside, range(mine.shape[-1]))
    np.testing.assert_allclose(mine[window], theirs[window], rtol=1e-5,
                               atol=1e-5 * np.abs(theirs).max())
    return mine, theirs


def check_whole(reference, ours, arch, images=GRAY):
    """The pooled features equal the reference's within 1e-5 of the largest."""
    theirs = keras.ops.convert_to_numpy(reference(_keras_input(arch, images))).astype(np.float64)
    mine = _features(ours, images)
    assert mine.shape == theirs.shape
    difference = np.abs(mine - theirs).max() / np.abs(theirs).max()
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())
    return difference


def _converted(reference, arch):
    ours = model.build_model(arch, SIZE)
    pretrained.transfer_imagenet(reference, ours, arch)
    return ours


def _projected_stem(reference, arch):
    """Makes the zero padding immaterial for ResNet and DenseNet (for a whole-network test
    only): each stem kernel tap loses its component along u, u_c = b_c - o·a_c/s, so it
    weighs their per-channel padding (0 in x_c, i.e. the mean pixel) as ours (the mean gray).
    Returns the original kernel."""
    source = pretrained.IMAGENET[arch]
    stem = reference.get_layer(source.stem[0]).kernel
    original = keras.ops.convert_to_numpy(stem)
    mean, std = model.NORMALIZATION[arch]
    s, o = 1 / (255 * std), -mean / std  # normalize's scale and offset
    u = np.asarray(source.offset) - o / s * np.asarray(source.scale)
    kernel = original - np.einsum("hwcf,c->hwf", original, u)[:, :, None, :] * u[:, None] / (u @ u)
    stem.assign(kernel.astype(np.float32))
    return original


def test_sources_are_keras_applications_own(monkeypatch):
    # What the installed Keras itself fetches for each notop file, caught at get_file.
    from keras.src.utils import file_utils

    fetched = []

    class Caught(Exception):
        pass

    def get_file(fname, origin, **kwargs):
        fetched.append((fname, origin, kwargs["file_hash"], kwargs["cache_subdir"]))
        raise Caught

    monkeypatch.setattr(file_utils, "get_file", get_file)
    for arch, source in pretrained.IMAGENET.items():
        with pytest.raises(Caught):
            getattr(keras.applications, source.application)(weights="imagenet",
                                                            include_top=False)
        assert fetched[-1] == (source.file_name, source.url, source.file_hash, "models"), arch
    assert pretrained.imagenet_file_name("resnet50_v1") == (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert pretrained.imagenet_file_name("efficientnetv2_s") == "efficientnetv2-s_notop.h5"
    assert pretrained.IMAGENET_ARCHS == ("resnet50_v1", "resnet101_v1", "densenet121",
                                         "densenet169", "efficientnetv2_s", "convnext_tiny")


def _their_preprocessing(arch, pixels):
    """keras.applications' own preprocessing of RGB pixels, the in-model layers included."""
    if arch.startswith(("resnet", "densenet")):
        return _keras_input(arch, pixels[..., :1])
    application = getattr(keras.applications, pretrained.IMAGENET[arch].application)
    net = application(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    last = [layer for layer in net.layers
            if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))][-1]
    preprocess = keras.Model(net.input, last.output)
    return keras.ops.convert_to_numpy(preprocess(np.broadcast_to(pixels, (1, SIZE, SIZE, 3))))


@pytest.mark.parametrize("arch", FAMILIES)
def test_preprocessing_constants_are_keras_applications_own(arch):
    source = pretrained.IMAGENET[arch]
    black, white = (_their_preprocessing(arch, np.full((1, SIZE, SIZE, 3), p, np.float32))
                    for p in (0.0, 255.0))
    np.testing.assert_allclose(black[0, 0, 0], source.offset, rtol=1e-5)
    np.testing.assert_allclose((white - black)[0, 0, 0], np.asarray(source.scale) * 255,
                               rtol=1e-5)


def test_every_weight_but_the_stem_and_head_is_copied(family):
    # Layers with weights, less the stem's conv and norm and the head: ResNet-50 53 convs +
    # 53 BN - 2; DenseNet-121 120 convs (stem, 2 per block × 58, 3 transitions) + 121 BN - 2;
    # EfficientNetV2-S 280 - 2; ConvNeXt-T 98 (the stem's LayerNorm is in, its conv out,
    # the head's LayerNorm in).
    counts = {"resnet50_v1": 104, "densenet121": 239, "efficientnetv2_s": 278,
              "convnext_tiny": 98}
    checked = check_copied(family.reference, family.converted, family.arch)
    assert checked == counts[family.arch]


def test_stem_equals_keras_applications_on_replicated_gray_inside_the_image(family):
    ours, theirs = check_stem(family.reference, family.converted, family.arch)
    if family.arch in ("resnet50_v1", "densenet121"):
        # Where the window reaches the padding, their zeros are the mean pixel, ours mean gray.
        assert np.abs(ours[:, 0] - theirs[:, 0]).max() > 1e-2 * np.abs(theirs).max()
    else:  # the whole output: no padding (ConvNeXt), or the same padding (EfficientNetV2-S)
        assert len(_inside(family.arch)) == ours.shape[1]


def test_whole_network_equals_keras_applications(family):
    arch, reference = family.arch, family.reference
    if arch in ("resnet50_v1", "densenet121"):
        original = _projected_stem(reference, arch)
        try:
            difference = check_whole(reference, _converted(reference, arch), arch)
        finally:
            reference.get_layer(pretrained.IMAGENET[arch].stem[0]).kernel.assign(original)
    else:
        difference = check_whole(reference, family.converted, arch)
    # Measured here, max |difference| / max |feature| (float32 through the whole network with
    # random statistics, at 32 px): ResNet-50 1.6e-6, DenseNet-121 2.9e-7, EfficientNetV2-S
    # 2.9e-7, ConvNeXt-T 8.9e-7. The bound, 1e-5, leaves room for other CPUs' summation orders.
    assert difference <= 1e-5


def _wrong_converter(monkeypatch, arch, mistake):
    source = pretrained.IMAGENET[arch]
    if mistake == "channel order reversed":
        wrong = dataclasses.replace(source, scale=source.scale[::-1], offset=source.offset[::-1])
    else:  # "preprocessing ignored": the stem's channels summed as if it saw raw pixels
        wrong = dataclasses.replace(source, scale=(1.0,) * 3, offset=(0.0,) * 3)
    monkeypatch.setitem(pretrained.IMAGENET, arch, wrong)


@pytest.mark.parametrize("arch, mistake", [
    ("resnet50_v1", "epsilon not folded"), ("resnet50_v1", "channel order reversed"),
    ("resnet50_v1", "preprocessing ignored"),
    ("densenet121", "epsilon not folded"), ("densenet121", "channel order reversed"),
    ("densenet121", "preprocessing ignored"),
    # EfficientNetV2's preprocessing is the same for R, G and B and its epsilon is ours, so
    # neither of those mistakes is possible; ConvNeXt's LayerNorm epsilon is ours too.
    ("efficientnetv2_s", "preprocessing ignored"),
    ("convnext_tiny", "channel order reversed"), ("convnext_tiny", "preprocessing ignored"),
])
def test_a_wrong_converter_fails_the_checks(monkeypatch, arch, mistake):
    reference = _application(arch, seed=2)
    if mistake == "epsilon not folded":
        ours = _converted(reference, arch)
        for layer in ours.layers:  # what a converter that copied the variance would leave
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_variance.assign(_np(layer.moving_variance)
                                             + layer.epsilon - KERAS_EPSILON)
        with pytest.raises(AssertionError, match="_bn"):
            check_copied(reference, ours, arch)
        return
    _wrong_converter(monkeypatch, arch, mistake)
    ours = _converted(reference, arch)
    check_copied(reference, ours, arch)  # the rest is right: only the stem is wrong
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        check_stem(reference, ours, arch)


@pytest.mark.parametrize("arch, application, layers", [
    ("resnet101_v1", "ResNet101", 206), ("densenet169", "DenseNet169", 335)])
def test_deeper_variants_take_every_weight(arch, application, layers):
    reference = _application(arch, seed=1)
    ours = _converted(reference, arch)
    assert reference.name == application.lower()
    assert check_copied(reference, ours, arch) == layers
    check_stem(reference, ours, arch)


def test_imagenet_head_starts_fresh(family):
    logits = family.converted.get_layer("logits")
    assert logits.kernel.shape[1] == 14
    np.testing.assert_array_equal(_np(logits.bias), np.zeros(14))
    assert _np(logits.kernel).std() > 0


def test_the_notop_file_of_another_application_is_refused(family):
    other = "convnext_tiny" if family.arch != "convnext_tiny" else "densenet121"
    with pytest.raises(pretrained.WeightsError) as error:
        model.build_model(other, SIZE, weights="imagenet", imagenet_weights=str(family.notop))
    application = pretrained.IMAGENET[other].application
    assert str(error.value).startswith(
        f"{family.notop}: not keras.applications.{application}'s notop ImageNet weights (")
    assert "\n" not in str(error.value)


def test_imagenet_without_network_says_which_file_and_where(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", "/data/keras")
    with pytest.raises(pretrained.ImagenetFetchError) as error:  # a UserError: one line
        model.build_model("densenet121", SIZE, weights="imagenet")
    url = ("https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
           "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert str(error.value) == (
        f"ImageNet weights for densenet121 (keras.applications.DenseNet121): could not fetch "
        f"{url} (URL fetch failure on https://...: None -- [Errno -3] Temporary failure in "
        "name resolution). Without network, fetch that file elsewhere and put it in Keras's "
        "cache, /data/keras/models, or pass its path as imagenet_weights (--imagenet_weights)"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "resnet50", "weights": "imagenet"},
         "weights='imagenet' is offered for arch resnet50_v1, resnet101_v1, densenet121, "
         "densenet169, efficientnetv2_s, convnext_tiny (keras.applications has ImageNet "
         "weights for those; its ResNets are v1); received arch='resnet50'"),
        ({"arch": "resnet50_v1", "imagenet_weights": "w.h5"},
         "imagenet_weights is read only with weights='imagenet'; received weights=None, "
         "imagenet_weights='w.h5'"),
        ({"arch": "convnext_tiny", "weights": "imagenet", "imagenet_weights": "/nonexistent.h5"},
         "imagenet_weights='/nonexistent.h5': no such file (expected a copy of "
         "https://storage.googleapis.com/tensorflow/keras-applications/convnext/"
         "convnext_tiny_notop.h5)"),
        ({"arch": "resnet50_v1", "weights": "notop.h5"},
         "weights='notop.h5': expected None, 'imagenet' or a cxr_tf .weights.h5 or .keras "
         "file (keras.applications' ImageNet .h5 goes in imagenet_weights, with "
         "weights='imagenet')"),
        ({"arch": "resnet18", "weights": "/nonexistent/best.keras"},
         "weights='/nonexistent/best.keras': no such file"),
    ],
)
def test_weights_arguments_are_checked_before_building(kwargs, message):
    with pytest.raises(pretrained.WeightsError) as error:
        model.build_model(image_size=SIZE, **kwargs)
    assert str(error.value) == message
    # The apps print a UserError as one `error:` line; `except ValueError` callers still work.
    assert isinstance(error.value, errors.UserError) and isinstance(error.value, ValueError)


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
    with pytest.raises(pretrained.WeightsError) as error:
        model.build_model("resnet34", SIZE, weights=folder / "run.weights.h5")
    # Then Keras's own first line: "A total of 58 objects could not be loaded. ..."
    assert str(error.value).startswith(
        f"{folder / 'run.weights.h5'}: its weights do not fit resnet34 (A total of ")
    assert "objects could not be loaded" in str(error.value)


def test_a_file_without_a_head_is_not_a_cxr_tf_weights_file(tmp_path):
    target = tmp_path / "notop.weights.h5"
    _save_notop(_application("resnet50_v1"), target, tmp_path)
    with pytest.raises(pretrained.WeightsError) as error:
        model.build_model("resnet18", SIZE, weights=target)
    assert str(error.value) == (f"{target}: not a cxr_tf weights file (expected a Dense head "
                                "kernel among its layers; found none)")


def test_convnext_weights_with_another_head_find_the_head_among_its_dense_layers(tmp_path):
    # ConvNeXt's pointwise convolutions are Dense layers too: the head is the last of them.
    source = model.build_model("convnext_tiny", SIZE)
    rng = np.random.default_rng(4)
    source.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in source.weights])
    source.save_weights(tmp_path / "run.weights.h5")
    net = model.build_model("convnext_tiny", SIZE, num_classes=3,
                            weights=tmp_path / "run.weights.h5")
    assert net.get_layer("logits").kernel.shape == (768, 3)
    assert len(net.weights) == len(source.weights) == 182
    for mine, theirs in zip(net.weights, source.weights):
        if not mine.path.startswith("logits/"):
            np.testing.assert_array_equal(_np(mine), _np(theirs), err_msg=mine.path)
