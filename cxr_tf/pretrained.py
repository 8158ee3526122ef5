"""Starting weights for `cxr_tf.model.build_model`: ImageNet, and cxr_tf weights files.

ImageNet weights are keras.applications' *notop* files (`IMAGENET`: for the ResNet v1, DenseNet,
EfficientNetV2-S and ConvNeXt-Tiny archs), which Keras downloads and caches itself (in
`$KERAS_HOME/models`, by default `~/.keras/models`), or a local copy of that same file for
machines without network. Keras reads the file into its own three-channel application, and
`transfer_imagenet` converts that, exactly, into our one-channel network:
- Layers are matched by name and copied, except the stem's convolution and the 14-way head
  (`logits`), which keeps its fresh initialization.
- BatchNorm epsilon: where ours differs (ResNet and DenseNet: 1e-5 against keras.applications'
  1.001e-5) the difference is folded into the moving variance (v + 1.001e-5 - 1e-5), so the
  inference map γ(z - μ)/√(v + ε) + β is unchanged.
- ResNet: keras.applications' convolutions have biases, ours do not: BN(conv + b) with
  moving mean μ equals BN(conv) with moving mean μ - b.
- The stem: the application sees its own preprocessing of the pixel p in each of its three
  input channels, x_c = a_c·p + b_c (`ImagenetSource.scale`/`offset`: "caffe" for ResNet,
  "torch" for DenseNet, the in-model rescaling of EfficientNetV2 and normalisation of
  ConvNeXt), and we feed `normalize`d gray g = s·p + o to a one-channel conv. For a gray image
  replicated to three channels every channel sees the same pixel, so our kernel is
  Σ_c a_c·W_c / s, and the rest is one constant per filter, Σ over the window of
  Σ_c W_c·(b_c - o·a_c/s): it goes into the following BatchNorm's moving mean (ResNet,
  DenseNet, EfficientNetV2) or into the conv's own bias (ConvNeXt, whose stem is followed by a
  LayerNorm). The stem's output then equals the application's on the gray image replicated to
  RGB wherever the window stays inside the image. Where it reaches the zero padding they
  differ, since their zero is the per-channel mean pixel and ours the mean gray: ResNet and
  DenseNet pad their 7×7 stem by 3 pixels; EfficientNetV2-S's normalisation is its own (zero
  = pixel 128 in both), and ConvNeXt's 4×4 stride-4 stem does not pad, so those two are exact
  everywhere.
"""

import dataclasses
import os
import re
import zipfile

import h5py
import keras
import numpy as np

from cxr_tf import errors
from cxr_tf.model_applications import CONVNEXT_HEAD_NORM


class WeightsError(errors.UserError, ValueError):
    """A `weights`/`imagenet_weights` argument or file that build_model cannot use (the apps
    print it as one `error:` line)."""


class ImagenetFetchError(errors.UserError, RuntimeError):
    """keras.applications' ImageNet file could not be fetched (no network, no local copy)."""


_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# keras.applications.imagenet_utils' "caffe" mean pixel, in the weights' BGR channel order.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# ImageNet's RGB mean and standard deviation, as fractions of 255 ("torch" mode, ConvNeXt).
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE = ((1.0, 1.0, 1.0), tuple(-m for m in CAFFE_BGR_MEAN))
_TORCH = (tuple(1 / (255 * s) for s in TORCH_STD),
          tuple(-m / s for m, s in zip(TORCH_MEAN, TORCH_STD)))
_RESCALE_128 = ((1 / 128,) * 3, (-1.0,) * 3)  # EfficientNetV2-S: p / 128 - 1


@dataclasses.dataclass(frozen=True)
class ImagenetSource:
    """Where an arch's ImageNet weights come from and what their stem was fed.

    application: the keras.applications function whose notop weights these are.
    url: the notop file's URL; its name is the file's name in Keras's cache.
    file_hash: the hash keras.applications checks (md5, or sha256 for ConvNeXt).
    scale, offset: the application's preprocessing, x_c = scale_c·p + offset_c for the pixel
        p (0..255), in the weights' channel order (BGR for ResNet, RGB for the others).
    stem: (the stem conv's name, the BatchNorm that follows it, or None when the conv's own
        bias takes the stem's constant).
    """

    application: str
    url: str
    file_hash: str
    scale: tuple
    offset: tuple
    stem: tuple

    @property
    def file_name(self):
        return self.url.rsplit("/", 1)[1]


# tests/test_pretrained.py checks every URL and hash against the installed Keras.
IMAGENET = {
    "resnet50_v1": ImagenetSource(
        "ResNet50", _URL + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626", *_CAFFE, ("conv1_conv", "conv1_bn")),
    "resnet101_v1": ImagenetSource(
        "ResNet101", _URL + "resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "88cf7a10940856eca736dc7b7e228a21", *_CAFFE, ("conv1_conv", "conv1_bn")),
    "densenet121": ImagenetSource(
        "DenseNet121", _URL + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738", *_TORCH, ("conv1_conv", "conv1_bn")),
    "densenet169": ImagenetSource(
        "DenseNet169", _URL + "densenet/densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b8c4d4c20dd625c148057b9ff1c1176b", *_TORCH, ("conv1_conv", "conv1_bn")),
    "efficientnetv2_s": ImagenetSource(
        "EfficientNetV2S", _URL + "efficientnet_v2/efficientnetv2-s_notop.h5",
        "af0682fb74e8c54910f2d4393339c070", *_RESCALE_128, ("stem_conv", "stem_bn")),
    "convnext_tiny": ImagenetSource(
        "ConvNeXtTiny", _URL + "convnext/convnext_tiny_notop.h5",
        "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1", *_TORCH,
        ("convnext_tiny_stem_conv", None)),
}
IMAGENET_ARCHS = tuple(IMAGENET)
_WEIGHTS_SUFFIXES = (".weights.h5", ".keras")


def imagenet_file_name(arch):
    """`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` for resnet50_v1."""
    return IMAGENET[arch].file_name


def check_weights(arch, weights, imagenet_weights):
    """Raises WeightsError (a ValueError) for a `weights`/`imagenet_weights` pair that
    build_model cannot honour."""
    if imagenet_weights is not None and weights != "imagenet":
        raise WeightsError(
            "imagenet_weights is read only with weights='imagenet'; "
            f"received weights={weights!r}, imagenet_weights={imagenet_weights!r}"
        )
    if weights == "imagenet":
        if arch not in IMAGENET:
            raise WeightsError(
                f"weights='imagenet' is offered for arch {', '.join(IMAGENET_ARCHS)} "
                "(keras.applications has ImageNet weights for those; its ResNets are v1); "
                f"received arch={arch!r}"
            )
        if imagenet_weights is not None and not os.path.isfile(imagenet_weights):
            raise WeightsError(
                f"imagenet_weights={imagenet_weights!r}: no such file (expected a copy of "
                f"{IMAGENET[arch].url})"
            )
    elif weights is not None:
        path = os.fspath(weights)
        if not path.endswith(_WEIGHTS_SUFFIXES):
            raise WeightsError(
                f"weights={path!r}: expected None, 'imagenet' or a cxr_tf .weights.h5 or "
                ".keras file (keras.applications' ImageNet .h5 goes in imagenet_weights, "
                "with weights='imagenet')"
            )
        if not os.path.isfile(path):
            raise WeightsError(f"weights={path!r}: no such file")


def imagenet_file(arch, imagenet_weights=None):
    """`imagenet_weights` if given, else the notop file from Keras's cache, which Keras
    downloads there (checking its hash) if it is not there yet."""
    if imagenet_weights is not None:
        return os.fspath(imagenet_weights)
    source = IMAGENET[arch]
    try:
        return keras.utils.get_file(source.file_name, source.url, cache_subdir="models",
                                    file_hash=source.file_hash)
    except Exception as error:  # get_file raises bare Exception for URL errors
        cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")),
                             "models")
        raise ImagenetFetchError(
            f"ImageNet weights for {arch} (keras.applications.{source.application}): could "
            f"not fetch {source.url} ({error}). Without network, fetch that file elsewhere "
            f"and put it in Keras's cache, {cache}, or pass its path as imagenet_weights "
            "(--imagenet_weights)"
        ) from error


def load_imagenet(net, arch, path):
    """Converts keras.applications' ImageNet weights for `arch`, read from the notop file at
    `path`, into `net` (see the module docstring)."""
    application = getattr(keras.applications, IMAGENET[arch].application)
    try:
        # Keras reads its own legacy HDF5 file, checking it layer by layer against the model.
        reference = application(weights=path, include_top=False)
    except ValueError as error:  # its message goes on to list shapes
        raise WeightsError(f"{path}: not keras.applications.{application.__name__}'s notop "
                           f"ImageNet weights ({str(error).splitlines()[0]})") from error
    transfer_imagenet(reference, net, arch)


def transfer_imagenet(reference, net, arch):
    """Sets every weight of `net` but the head's from keras.applications' `reference`, the
    application of `IMAGENET[arch]` (three channels, any input size)."""
    source = IMAGENET[arch]
    theirs = {layer.name: layer for layer in _leaf_layers(reference)}
    stem_conv, stem_norm = source.stem
    ours = {layer.name: layer for layer in _leaf_layers(net)}
    for layer in ours.values():
        if not layer.weights or layer.name in ("logits", stem_conv):
            continue
        if layer.name == CONVNEXT_HEAD_NORM:  # from the notop network's last layer
            _copy_layer(reference.layers[-1], layer, theirs)
        else:
            _copy_layer(theirs[layer.name], layer, theirs)
    normalize = net.get_layer("normalize")
    kernel, constant = fold_stem(theirs[stem_conv], source, float(normalize.scale),
                                 float(normalize.offset))
    _assign(ours[stem_conv].kernel, kernel)
    if stem_norm is None:  # their output = ours + constant: our bias takes it
        _assign(ours[stem_conv].bias, _np(theirs[stem_conv].bias) + constant)
    else:  # BN(theirs) with moving mean μ = BN(ours) with moving mean μ - constant
        norm = ours[stem_norm]
        _assign(norm.moving_mean, _np(norm.moving_mean) - constant)


def fold_stem(conv, source, scale, offset):
    """(one-channel kernel, per-filter constant) such that, for a gray image replicated to
    three channels, conv(preprocessed RGB) without its bias = our conv(s·p + o) + constant
    wherever the window stays inside the image."""
    kernel = _np(conv.kernel)  # (h, w, 3, filters), the weights' channel order
    a, b = np.asarray(source.scale), np.asarray(source.offset)
    ours = np.einsum("hwcf,c->hwf", kernel, a)[:, :, None, :] / scale
    constant = np.einsum("hwcf,c->f", kernel, b - offset * a / scale)
    return ours, constant


def _copy_layer(source, target, theirs):
    """One layer's weights, folding what differs (see the module docstring)."""
    values = [_np(w) for w in source.weights]
    if isinstance(target, keras.layers.BatchNormalization):
        gamma, beta, mean, variance = values
        conv = theirs.get(target.name[: -len("_bn")] + "_conv")
        if conv is not None and conv.use_bias:  # ResNet: the bias moves into the BN
            mean = mean - _np(conv.bias)
        values = [gamma, beta, mean, variance + source.epsilon - target.epsilon]
    elif isinstance(target, keras.layers.Conv2D) and not target.use_bias and source.use_bias:
        values = values[:1]  # ResNet: the BN after it takes the bias (above)
    if len(values) != len(target.weights):
        raise ValueError(f"{target.name}: {len(values)} ImageNet weights for its "
                         f"{len(target.weights)}")
    for variable, value in zip(target.weights, values):
        _assign(variable, value)


def _leaf_layers(net):
    """The model's layers, with those of nested models (ConvNeXt's stem and downsampling
    blocks are Sequential models) in their place."""
    for layer in net.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _np(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)


def _assign(variable, value):
    if tuple(variable.shape) != value.shape:
        raise WeightsError(f"{variable.path}: ImageNet weight of shape {value.shape}, "
                         f"expected {tuple(variable.shape)}")
    variable.assign(value.astype(np.float32))


def load_cxr_tf(net, path, build_with_head):
    """Loads a cxr_tf weights file into `net`; a head of another size starts fresh.

    Args:
        net: the model to fill.
        path: a `.weights.h5` or `.keras` file written by cxr_tf (`save_weights`, `save`).
        build_with_head: `build_with_head(num_classes)` builds `net`'s twin with another
            head size, into which a file whose head differs is loaded first (strictly: any
            other mismatch is an error), before every layer but `logits` is copied over.
    """
    path = os.fspath(path)
    head = net.get_layer("logits").units
    file_head = _head_units(path)
    if file_head == head:
        _load_weights(net, path)
        return
    twin = build_with_head(file_head)
    _load_weights(twin, path)
    for layer in net.layers:
        if layer.weights and layer.name != "logits":
            layer.set_weights(twin.get_layer(layer.name).get_weights())


def _load_weights(net, path):
    try:
        net.load_weights(path)
    except ValueError as error:  # Keras's message goes on to print whole kernels
        summary = str(error).splitlines()[0]
        raise WeightsError(f"{path}: its weights do not fit {net.name} ({summary})") from error


def _head_units(path):
    """Outputs of the file's head, `logits`: every arch's last Dense layer."""
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as file:
            return _head_units_h5(file, path)
    with open(path, "rb") as file:
        return _head_units_h5(file, path)


def _head_units_h5(file, path):
    # Keras names a layer's group in the file after its class, numbered in the model's layer
    # order (dense, dense_1, ...), so the head is the Dense group with the largest number
    # (ConvNeXt's pointwise convolutions are Dense layers too). Under "layers" only: a
    # .keras file also holds the optimizer's slots.
    with h5py.File(file, "r") as weights:
        group = weights.get("layers")
        dense = {}
        for key in group if isinstance(group, h5py.Group) else ():
            match = re.fullmatch(r"dense(?:_(\d+))?", key)
            if match:
                dense[int(match.group(1) or 0)] = group[key]
        kernel = dense[max(dense)].get("vars/0") if dense else None
        if kernel is None or kernel.ndim != 2:
            raise WeightsError(f"{path}: not a cxr_tf weights file (expected a Dense head "
                               "kernel among its layers; found none)")
        return kernel.shape[1]
