"""cxr_tf.model: structure, parameter counts, normalization, dtypes, and no TensorFlow import,
for the ResNets (model_resnet) and the keras.applications families (model_applications)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cxr_tf import model, pretrained

REPO = Path(__file__).resolve().parents[1]
HAS_JAX = importlib.util.find_spec("jax") is not None


@pytest.fixture
def mixed_bfloat16():
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_dtype_policy(previous)


@pytest.fixture(scope="module")
def resnet50():
    return model.build_model("resnet50", image_size=64)


def test_stem_is_one_channel_7x7_stride2_without_bias_after_3_pixel_padding(resnet50):
    pad = resnet50.get_layer("conv1_pad")
    assert pad.padding == ((3, 3), (3, 3))
    conv = resnet50.get_layer("conv1_conv")
    assert conv.kernel.shape == (7, 7, 1, 64)
    assert conv.bias is None and not conv.use_bias
    assert conv.strides == (2, 2) and conv.padding == "valid"
    assert resnet50.get_layer("pool1_pool").pool_size == (3, 3)
    assert resnet50.get_layer("pool1_pool").strides == (2, 2)
    assert resnet50.input.name == "image" and tuple(resnet50.input.shape) == (None, 64, 64, 1)


def test_block_convs_have_no_bias_and_keras_application_names(resnet50):
    convs = [layer for layer in resnet50.layers if isinstance(layer, keras.layers.Conv2D)]
    # 1 stem + 16 blocks × 3 + 4 projection shortcuts.
    assert len(convs) == 53
    assert not any(conv.use_bias for conv in convs)
    for name in ("conv2_block1_0_conv", "conv2_block3_3_conv", "conv4_block6_2_conv",
                 "conv5_block3_out"):
        resnet50.get_layer(name)  # raises if missing


@pytest.fixture(scope="module")
def resnet50_v1():
    return model.build_model("resnet50_v1", image_size=64)


@pytest.mark.parametrize("stage", [3, 4, 5])
def test_v1_5_strides_on_the_3x3_and_v1_on_the_first_1x1(resnet50, resnet50_v1, stage):
    def strides(net, conv):
        return net.get_layer(f"conv{stage}_block1_{conv}_conv").strides

    # v1.5 (torchvision): 1x1 at full resolution, then the 3x3 strides (padded 1 each side).
    assert [strides(resnet50, conv) for conv in (0, 1, 2, 3)] == [(2, 2), (1, 1), (2, 2), (1, 1)]
    assert resnet50.get_layer(f"conv{stage}_block1_2_pad").padding == ((1, 1), (1, 1))
    assert resnet50.get_layer(f"conv{stage}_block1_2_conv").padding == "valid"
    # v1 (keras.applications): the first 1x1 strides, the 3x3 keeps its "same" padding.
    assert [strides(resnet50_v1, conv) for conv in (0, 1, 2, 3)] == [
        (2, 2), (2, 2), (1, 1), (1, 1)]
    assert resnet50_v1.get_layer(f"conv{stage}_block1_2_conv").padding == "same"
    # Later blocks never stride; both end at the same map size.
    assert resnet50.get_layer(f"conv{stage}_block2_2_conv").strides == (1, 1)
    assert resnet50_v1.get_layer(f"conv{stage}_block2_1_conv").strides == (1, 1)
    assert (resnet50.get_layer(f"conv{stage}_block1_out").output.shape
            == resnet50_v1.get_layer(f"conv{stage}_block1_out").output.shape)


def test_v1_and_v1_5_share_layer_names_and_parameters(resnet50, resnet50_v1):
    def weights(net):
        return [(w.path, tuple(w.shape)) for w in net.weights]

    assert weights(resnet50) == weights(resnet50_v1)
    assert resnet50_v1.count_params() == resnet50.count_params() == 23_583_566
    # v1.5 adds only the explicit padding layers before the three strided 3x3 convs.
    extra = {l.name for l in resnet50.layers} - {l.name for l in resnet50_v1.layers}
    assert extra == {"conv3_block1_2_pad", "conv4_block1_2_pad", "conv5_block1_2_pad"}


def test_logits_head(resnet50):
    logits = resnet50.get_layer("logits")
    assert logits.kernel.shape == (2048, 14)
    assert logits.bias.shape == (14,)
    assert logits.activation is keras.activations.linear
    assert tuple(resnet50.output.shape) == (None, 14)


def test_resnet50_parameter_count(resnet50):
    # torchvision resnet50: 25,557,032 parameters (3-channel stem, 1000 classes).
    #   stem with 1 channel: - 7*7*64*(3-1)            =      6,272
    #   head 2048->14:       - (2048*1000 + 1000) + (2048*14 + 14) = - 2,049,000 + 28,686
    #   => trainable: 25,557,032 - 6,272 - 2,020,314   = 23,530,446
    # Keras also counts BN moving mean/variance (torchvision buffers): 2 × 26,560 channels
    #   => total 23,530,446 + 53,120                   = 23,583,566
    trainable = sum(int(np.prod(w.shape)) for w in resnet50.trainable_weights)
    assert trainable == 23_530_446
    assert resnet50.count_params() == 23_583_566


@pytest.mark.parametrize(
    "arch, torchvision_params, features",
    # torchvision's counts, minus the 2 stem channels (6,272) and the 1000-class head.
    [("resnet18", 11_689_512, 512), ("resnet34", 21_797_672, 512), ("resnet101", 44_549_160, 2048),
     ("resnet101_v1", 44_549_160, 2048)],
)
def test_other_archs_match_torchvision_counts(arch, torchvision_params, features):
    net = model.build_model(arch, image_size=32)
    expected = torchvision_params - 7 * 7 * 64 * 2 - (features * 1000 + 1000) + (features * 14 + 14)
    assert sum(int(np.prod(w.shape)) for w in net.trainable_weights) == expected
    assert net.name == arch
    assert net.get_layer("logits").kernel.shape == (features, 14)


def test_every_batch_norm_uses_pytorch_momentum_and_epsilon(resnet50):
    norms = [l for l in resnet50.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(norms) == 53
    assert {(bn.momentum, bn.epsilon) for bn in norms} == {(0.9, 1e-5)}


def test_normalization_inside_the_model_and_uint8_equals_float():
    net = model.build_model("resnet18", image_size=32)
    normalize = keras.Model(net.input, net.get_layer("normalize").output)
    pixels = np.zeros((1, 32, 32, 1), np.float32)  # row 0: black
    pixels[0, 1] = model.PIXEL_MEAN * 255  # row 1: the mean gray
    pixels[0, 2] = 255  # row 2: white
    out = keras.ops.convert_to_numpy(normalize(pixels))
    np.testing.assert_allclose(
        out[0, :3, 0, 0],
        [-model.PIXEL_MEAN / model.PIXEL_STD, 0.0, (1 - model.PIXEL_MEAN) / model.PIXEL_STD],
        atol=1e-5,
    )
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1)).astype(np.uint8)
    from_uint8 = keras.ops.convert_to_numpy(net(images))
    from_float = keras.ops.convert_to_numpy(net(images.astype(np.float32)))
    assert from_uint8.dtype == np.float32 and from_uint8.shape == (2, 14)
    np.testing.assert_array_equal(from_uint8, from_float)


def test_logits_stay_float32_under_mixed_bfloat16(mixed_bfloat16):
    net = model.build_model("resnet18", image_size=32)
    assert net.get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert net.get_layer("conv1_conv").kernel.dtype == "float32"  # variables stay float32
    assert net.get_layer("logits").compute_dtype == "float32"
    assert net.get_layer("logits").kernel.dtype == "float32"
    out = net(np.zeros((1, 32, 32, 1), np.uint8))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_saved_model_file_round_trip(tmp_path):
    net = model.build_model("resnet18", image_size=32)
    path = tmp_path / "m.keras"
    net.save(path)
    loaded = keras.models.load_model(path)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 1)).astype(np.uint8)
    expected = keras.ops.convert_to_numpy(net(images))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"arch": "resnet152"},
            "arch must be one of resnet18, resnet34, resnet50, resnet101, resnet50_v1, "
            "resnet101_v1, densenet121, densenet169, efficientnetv2_s, convnext_tiny; "
            "received arch='resnet152'",
        ),
        (
            {"image_size": 16},
            "image_size must be at least 32 (the network downsamples 32x); received image_size=16",
        ),
        ({"image_size": 64.0}, "image_size must be an int; received image_size=64.0"),
        ({"num_classes": 0}, "num_classes must be a positive int; received num_classes=0"),
    ],
)
def test_arguments_are_checked_first(kwargs, message):
    with pytest.raises(ValueError) as error:
        model.build_model(**kwargs)
    assert str(error.value) == message


_TF_IMPORTS = {"tensorflow", "tf_keras"}


@pytest.mark.parametrize("module", ["model.py", "model_resnet.py", "model_applications.py",
                                    "pretrained.py", "losses.py"])
def test_source_imports_no_tensorflow(module, import_roots):
    imported = import_roots(module)
    assert not imported & _TF_IMPORTS, f"cxr_tf/{module} imports {imported & _TF_IMPORTS}"


@pytest.mark.slow  # a JAX subprocess builds and runs ResNet-50 (about a minute)
@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed (the bench extra installs it)")
def test_model_builds_and_runs_under_jax_without_tensorflow():
    script = """
import json, sys
import numpy as np
import keras
from cxr_tf import losses, model
images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1)).astype(np.uint8)
results = {}
for arch in ("resnet18", "efficientnetv2_s", "convnext_tiny"):
    net = model.build_model(arch, image_size=32)
    a = keras.ops.convert_to_numpy(net(images))
    b = keras.ops.convert_to_numpy(net(images.astype(np.float32)))
    loss = losses.make_loss([2.0] * 14)(np.zeros((2, 14)), a)
    results[arch] = {"equal": bool((a == b).all()), "shape": list(a.shape), "loss": float(loss)}
try:
    model.build_model("densenet121", image_size=32, sync_batchnorm=True)
except ValueError as error:
    results["sync_batchnorm"] = str(error)
print(json.dumps({"backend": keras.backend.backend(), "results": results,
                  "tensorflow": [m for m in sys.modules if m.split(".")[0] == "tensorflow"][:3]}))
"""
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    results = result.pop("results")
    assert results.pop("sync_batchnorm") == (
        "sync_batchnorm=True needs the TensorFlow backend (BatchNormalization's synchronized); "
        "received backend 'jax'")
    # DenseNet-121 under JAX was measured once, not rerun by the suite (docs/TESTING.md).
    assert list(results) == ["resnet18", "efficientnetv2_s", "convnext_tiny"]
    for arch, one in results.items():
        assert one["equal"] and one["shape"] == [2, 14], arch
        assert np.isfinite(one["loss"]), arch
    assert result["tensorflow"] == []


# The keras.applications families (cxr_tf.model_applications).
APPLICATIONS = ("densenet121", "densenet169", "efficientnetv2_s", "convnext_tiny")


@pytest.fixture(scope="module")
def applications():
    return {arch: model.build_model(arch, image_size=32) for arch in APPLICATIONS}


@pytest.mark.parametrize(
    "arch, reference_params, features, stem_channels",
    # torchvision's counts (densenet121, densenet169, efficientnet_v2_s, convnext_tiny), less
    # the stem's two extra input channels and the 1000-class head, plus our 14-way head.
    [("densenet121", 7_978_856, 1024, 7 * 7 * 64), ("densenet169", 14_149_480, 1664, 7 * 7 * 64),
     ("efficientnetv2_s", 21_458_488, 1280, 3 * 3 * 24),
     ("convnext_tiny", 28_589_128, 768, 4 * 4 * 96)],
)
def test_applications_match_torchvision_parameter_counts(applications, arch, reference_params,
                                                         features, stem_channels):
    net = applications[arch]
    expected = (reference_params - 2 * stem_channels - (features * 1000 + 1000)
                + (features * 14 + 14))
    assert sum(int(np.prod(w.shape)) for w in net.trainable_weights) == expected
    assert net.name == arch
    assert net.get_layer("logits").kernel.shape == (features, 14)
    assert net.get_layer("logits").dtype_policy.name == "float32"
    assert net.input.name == "image" and tuple(net.input.shape) == (None, 32, 32, 1)


@pytest.mark.parametrize("arch, stem, kernel, strides, feature_layer", [
    ("densenet121", "conv1_conv", (7, 7, 1, 64), (2, 2), "relu"),
    ("densenet169", "conv1_conv", (7, 7, 1, 64), (2, 2), "relu"),
    ("efficientnetv2_s", "stem_conv", (3, 3, 1, 24), (2, 2), "top_activation"),
    ("convnext_tiny", "convnext_tiny_stem_conv", (4, 4, 1, 96), (4, 4),
     "convnext_tiny_stage_3_out"),
])
def test_applications_take_one_channel_and_pool_a_named_layer(applications, arch, stem, kernel,
                                                               strides, feature_layer):
    net = applications[arch]
    layers = {layer.name: layer for layer in pretrained._leaf_layers(net)}
    assert tuple(layers[stem].kernel.shape) == kernel and layers[stem].strides == strides
    # Grad-CAM explains the layer whose output feeds `avg_pool` (public API only).
    pool = net.get_layer("avg_pool")
    assert [layer.name for layer in net.layers if layer.output is pool.input] == [feature_layer]
    assert tuple(pool.input.shape)[:3] == (None, 1, 1)  # 32 px, downsampled 32x
    # Nothing of the applications' own preprocessing: `normalize` is the only one.
    preprocessing = [layer.name for layer in layers.values()
                     if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))]
    assert preprocessing == ["normalize"]


@pytest.mark.parametrize("arch, norms, momentum_epsilon", [
    ("densenet121", 121, (0.9, 1e-5)), ("densenet169", 169, (0.9, 1e-5)),
    ("efficientnetv2_s", 110, (0.9, 1e-3)), ("convnext_tiny", 0, None),
])
def test_applications_batch_norm_settings(applications, arch, norms, momentum_epsilon):
    found = [l for l in applications[arch].layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(found) == norms
    if norms:
        assert {(bn.momentum, bn.epsilon) for bn in found} == {momentum_epsilon}
        assert not any(bn.synchronized for bn in found)


def test_convnext_normalises_after_pooling():
    # keras.applications' notop ConvNeXt ends in a per-position LayerNorm; its ImageNet head
    # pools first. Ours: avg_pool -> head LayerNorm -> logits, and no per-position norm after
    # the last stage.
    net = model.build_model("convnext_tiny", image_size=64)
    names = [layer.name for layer in net.layers]
    assert names[-4:] == ["convnext_tiny_stage_3_out", "avg_pool",
                          "convnext_tiny_head_layernorm", "logits"]
    assert net.get_layer("convnext_tiny_head_layernorm").epsilon == 1e-6
    assert tuple(net.get_layer("avg_pool").input.shape) == (None, 2, 2, 768)


@pytest.mark.parametrize("arch, mean, std", [
    ("resnet50", 0.449, 0.226), ("densenet121", 0.449, 0.226),
    ("convnext_tiny", 0.449, 0.226), ("efficientnetv2_s", 128 / 255, 128 / 255)])
def test_each_arch_normalises_in_its_normalize_layer(applications, arch, mean, std):
    assert model.NORMALIZATION[arch] == pytest.approx((mean, std))
    net = applications.get(arch) or model.build_model(arch, image_size=32)
    normalize = keras.Model(net.input, net.get_layer("normalize").output)
    pixels = np.zeros((1, 32, 32, 1), np.float32)
    pixels[0, 1], pixels[0, 2] = 128, 255
    out = keras.ops.convert_to_numpy(normalize(pixels))[0, :3, 0, 0]
    np.testing.assert_allclose(out, [(p / 255 - mean) / std for p in (0, 128, 255)], atol=1e-5)
    if arch == "efficientnetv2_s":  # the application's own p / 128 - 1
        np.testing.assert_allclose(out, [-1, 0, 255 / 128 - 1], atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", *APPLICATIONS])
def test_sync_batchnorm_synchronises_every_batch_norm(arch):
    net = model.build_model(arch, image_size=32, sync_batchnorm=True)
    norms = [l for l in net.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert all(bn.synchronized for bn in norms)
    # Saved with the model: a run's checkpoints keep it.
    config = [l["config"] for l in net.get_config()["layers"]
              if l["class_name"] == "BatchNormalization"]
    assert len(config) == len(norms) and all(c["synchronized"] for c in config)


@pytest.mark.slow  # 0.5-1.5 min each here: compiling a bfloat16 train step on the CPU
# DenseNet-121 and EfficientNetV2-S passed it too (1-2 min each here): not repeated on every
# run (docs/TESTING.md).
@pytest.mark.parametrize("arch", ["convnext_tiny"])
def test_applications_train_a_step_in_mixed_bfloat16(mixed_bfloat16, arch):
    net = model.build_model(arch, image_size=32)
    assert net.get_layer("logits").compute_dtype == "float32"
    assert {l.compute_dtype for l in net.layers if isinstance(l, keras.layers.Conv2D)} == {
        "bfloat16"}
    net.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.BinaryCrossentropy(from_logits=True))
    images = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 1)).astype(np.uint8)
    labels = (np.random.default_rng(3).uniform(size=(4, 14)) < 0.3).astype(np.float32)
    before = keras.ops.convert_to_numpy(net.get_layer("logits").kernel).copy()
    loss = net.train_on_batch(images, labels)
    assert np.isfinite(loss)
    assert not np.array_equal(keras.ops.convert_to_numpy(net.get_layer("logits").kernel), before)
    out = net(images)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


@pytest.mark.parametrize("arch", ["densenet121", "efficientnetv2_s", "convnext_tiny"])
def test_applications_round_trip_through_a_keras_file(applications, arch, tmp_path):
    # ConvNeXt's LayerScale is keras.applications' own layer class: Keras must find it again.
    net = applications[arch]
    net.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 1)).astype(np.uint8)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)),
                               keras.ops.convert_to_numpy(net(images)), rtol=1e-6, atol=1e-6)
    uint8, float32 = (keras.ops.convert_to_numpy(net(x)) for x in (images, images.astype("f4")))
    np.testing.assert_array_equal(uint8, float32)
