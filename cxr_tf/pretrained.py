"""Starting weights for `cxr_tf.model.build_model`: ImageNet, and cxr_tf weights files.

ImageNet weights are keras.applications' ResNet50/ResNet101 *notop* files, which Keras
downloads and caches itself (in `$KERAS_HOME/models`, by default `~/.keras/models`), or a
local copy of that same file for machines without network. They are ResNet v1 weights, so
they go into `resnet50_v1`/`resnet101_v1`, converted exactly into our one-channel, bias-free
network whose BatchNorm epsilon is 1e-5:
- a conv's bias b is folded into the BatchNorm after it: BN(conv + b) with moving mean μ
  equals BN(conv) with moving mean μ - b;
- keras.applications' epsilon 1.001e-5 is folded into the moving variance (v + 1.001e-5 - 1e-5);
- the stem: keras.applications feeds `preprocess_input` ("caffe": RGB->BGR, minus the BGR
  mean pixel, no scaling) to a 3-channel conv with a bias; we feed `normalize`d gray
  (x·s + o) to a 1-channel conv. For a gray image replicated to three channels the three
  kernel channels see the same pixel, so our kernel is their sum divided by s, and every
  constant term (the bias, the mean pixel, our offset o) becomes one per-filter constant,
  folded into conv1_bn's moving mean. The stem's output then equals keras.applications' on
  the gray image replicated to RGB wherever the 7×7 window stays inside the image; where it
  reaches the 3-pixel zero padding they differ (its zeros are the mean pixel there, gray
  0.449·255 here).
The 14-way head (`logits`) keeps its fresh initialization.
"""

import os
import zipfile

import h5py
import keras
import numpy as np

from cxr_tf import errors

# keras/src/applications/resnet.py: BASE_WEIGHTS_PATH and WEIGHTS_HASHES[name][1] (notop).
# tests/test_pretrained.py checks these against the installed Keras.
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
_IMAGENET = {  # our arch: (keras.applications weights name, notop file md5)
    "resnet50_v1": ("resnet50", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101_v1": ("resnet101", "88cf7a10940856eca736dc7b7e228a21"),
}
IMAGENET_ARCHS = tuple(_IMAGENET)
# keras.applications.imagenet_utils' "caffe" mean pixel, in the weights' BGR channel order.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_WEIGHTS_SUFFIXES = (".weights.h5", ".keras")


class WeightsError(errors.UserError, ValueError):
    """Starting weights that cannot be used: a missing or foreign file, a weights/arch pair
    that does not go together."""


class WeightsUnavailableError(WeightsError, RuntimeError):
    """The ImageNet weights file could not be fetched (no network) and no copy was given."""


def imagenet_file_name(arch):
    """`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5` for resnet50_v1."""
    return f"{_IMAGENET[arch][0]}_weights_tf_dim_ordering_tf_kernels_notop.h5"


def check_weights(arch, weights, imagenet_weights):
    """Raises WeightsError for a `weights`/`imagenet_weights` pair build_model cannot honour."""
    if imagenet_weights is not None and weights != "imagenet":
        raise WeightsError(
            "imagenet_weights is read only with weights='imagenet'; "
            f"received weights={weights!r}, imagenet_weights={imagenet_weights!r}"
        )
    if weights == "imagenet":
        if arch not in _IMAGENET:
            raise WeightsError(
                f"weights='imagenet' is offered for arch {' and '.join(IMAGENET_ARCHS)} "
                f"(keras.applications' ImageNet weights are ResNet v1); received arch={arch!r}"
            )
        if imagenet_weights is not None and not os.path.isfile(imagenet_weights):
            raise WeightsError(
                f"imagenet_weights={imagenet_weights!r}: no such file (expected a copy of "
                f"{KERAS_WEIGHTS_URL}{imagenet_file_name(arch)})"
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
    downloads there (checking its md5) if it is not there yet."""
    if imagenet_weights is not None:
        return os.fspath(imagenet_weights)
    name, md5 = _IMAGENET[arch]
    file_name = imagenet_file_name(arch)
    try:
        return keras.utils.get_file(file_name, KERAS_WEIGHTS_URL + file_name,
                                    cache_subdir="models", file_hash=md5)
    except Exception as error:  # get_file raises bare Exception for URL errors
        cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")),
                             "models")
        raise WeightsUnavailableError(
            f"ImageNet weights for {arch} (keras.applications {name}): could not fetch "
            f"{KERAS_WEIGHTS_URL}{file_name} ({error}). Without network, fetch that file "
            f"elsewhere and put it in Keras's cache, {cache}, or pass its path as "
            "imagenet_weights (--imagenet_weights)"
        ) from error


def load_imagenet(net, arch, path):
    """Converts keras.applications' ImageNet weights for `arch`, read from the notop file at
    `path`, into `net` (see the module docstring)."""
    application = {"resnet50": keras.applications.ResNet50,
                   "resnet101": keras.applications.ResNet101}[_IMAGENET[arch][0]]
    # Keras reads its own legacy HDF5 file, checking it layer by layer against the model.
    reference = application(weights=path, include_top=False)
    transfer_imagenet(reference, net)


def transfer_imagenet(reference, net):
    """Sets every conv and BatchNorm of `net` from keras.applications' `reference` (v1).

    Layers are matched by name; `normalize` and the `logits` head are left as they are.
    """
    scale = float(net.get_layer("normalize").scale)
    offset = float(net.get_layer("normalize").offset)
    for layer in net.layers:
        if isinstance(layer, keras.layers.Conv2D):
            source = reference.get_layer(layer.name)
            kernel, _ = (np.asarray(w, np.float64) for w in source.get_weights())
            if layer.name == "conv1_conv":
                # Three channels of one gray pixel: one channel, undoing our scale s.
                kernel = kernel.sum(axis=2, keepdims=True) / scale
            _assign(layer.kernel, kernel)
        elif isinstance(layer, keras.layers.BatchNormalization):
            conv_name = layer.name[: -len("_bn")] + "_conv"
            _transfer_batch_norm(reference.get_layer(layer.name),
                                 reference.get_layer(conv_name), layer, scale, offset)


def _transfer_batch_norm(source_bn, source_conv, bn, scale, offset):
    """BN after a biased conv -> BN after our bias-free conv, with our epsilon."""
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in source_bn.get_weights())
    kernel, bias = (np.asarray(w, np.float64) for w in source_conv.get_weights())
    # Their conv output minus ours, a constant per filter: the bias, and for the stem the
    # mean pixel they subtract and the offset we add (Σ over the window of W·(g - m) + b
    # against Σ of W'·(s·g + o) with W' = ΣW/s).
    shift = bias
    if source_conv.name == "conv1_conv":
        summed = kernel.sum(axis=2)
        shift = (bias - np.einsum("hwcf,c->f", kernel, CAFFE_BGR_MEAN)
                 - offset / scale * summed.sum(axis=(0, 1)))
    _assign(bn.gamma, gamma)
    _assign(bn.beta, beta)
    _assign(bn.moving_mean, mean - shift)
    _assign(bn.moving_variance, variance + source_bn.epsilon - bn.epsilon)


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
    """Outputs of the file's head: the only 2-D weight among the model's layers."""
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as file:
            return _head_units_h5(file, path)
    with open(path, "rb") as file:
        return _head_units_h5(file, path)


def _head_units_h5(file, path):
    shapes = []
    with h5py.File(file, "r") as weights:
        # Under "layers" only: a .keras file also holds the optimizer's 2-D slots.
        if isinstance(weights.get("layers"), h5py.Group):
            weights["layers"].visititems(
                lambda _, item: shapes.append(item.shape)
                if isinstance(item, h5py.Dataset) and item.ndim == 2 else None)
    if len(shapes) != 1:
        raise WeightsError(f"{path}: not a cxr_tf weights file (expected one 2-D head kernel "
                         f"among its layers, found shapes {shapes})")
    return shapes[0][1]
