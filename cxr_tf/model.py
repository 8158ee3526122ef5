"""The one-channel network that maps an S×S×1 chest X-ray to 14 finding logits: `build_model`.

Pure Keras 3 (`keras.layers`, `keras.applications`), so the same code trains under TensorFlow
and is timed under JAX on a GPU machine that has no TensorFlow (`tools/bench_model.py`).
Every arch has the same input contract and the same ends; only the backbone differs:

    image (S×S×1, 0..255) -> normalize -> backbone -> avg_pool -> logits (float32)

| arch | backbone | built by |
|---|---|---|
| resnet18, resnet34, resnet50, resnet101 | torchvision's ResNet (v1.5) | `model_resnet` |
| resnet50_v1, resnet101_v1 | ResNet v1, keras.applications' geometry | `model_resnet` |
| densenet121, densenet169 | keras.applications.DenseNet121/169 (CheXNet's) | `model_applications` |
| efficientnetv2_s | keras.applications.EfficientNetV2S | `model_applications` |
| convnext_tiny | keras.applications.ConvNeXtTiny (+ its head LayerNorm) | `model_applications` |

The pixels are normalised in one place, the float32 layer `normalize` right after the input
(training, export and serving therefore share one preprocessing): p -> (p / 255 - mean) / std
with `NORMALIZATION[arch]`:
- (0.449, 0.226) for the ResNets, DenseNets and ConvNeXt: ImageNet's RGB mean and standard
  deviation averaged over the three channels (0.449 = mean(0.485, 0.456, 0.406), 0.226 =
  mean(0.229, 0.224, 0.225)), the usual convention when a network trained on RGB is fed one
  channel. NIH radiographs are close to it (mean gray about 0.5).
- (128/255, 128/255), i.e. p / 128 - 1, for EfficientNetV2-S: the application's own in-model
  rescaling, which treats one channel as it treats three, so its ImageNet stem converts
  exactly even where the stem's window reaches the zero padding.
With `weights="imagenet"`, `cxr_tf.pretrained` folds the difference between this and each
application's own preprocessing into the stem, exactly.

The head is global average pooling (`avg_pool`, whose input Grad-CAM explains) and a Dense
layer `logits` (no activation) that stays float32 under a mixed-precision policy, so the loss
and the sigmoid see full-precision values. BatchNorm settings are each family's (see its
module); `sync_batchnorm` synchronises every BatchNormalization of every arch.

Example:
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")  # optional, before building
    model = build_model("densenet121", image_size=224)
    logits = model(uint8_images)  # (batch, 14)
    from_imagenet = build_model("convnext_tiny", 320, weights="imagenet")  # fresh 14-way head
"""

import functools

import keras
from keras import layers

from cxr_tf import model_applications, model_resnet, pretrained
from cxr_tf.archs import ARCHS

# Fractions of 255 (see the module docstring).
PIXEL_MEAN = 0.449
PIXEL_STD = 0.226
NORMALIZATION = {arch: (PIXEL_MEAN, PIXEL_STD) for arch in ARCHS}
NORMALIZATION["efficientnetv2_s"] = (128 / 255, 128 / 255)

_MIN_IMAGE_SIZE = 32  # every arch downsamples 32x: a 1×1 map at 32 px


def build_model(arch="resnet50", image_size=224, num_classes=14, *, weights=None,
                imagenet_weights=None, name=None, sync_batchnorm=False):
    """Builds a one-channel network that outputs float32 logits, one per class.

    Args:
        arch: one of `ARCHS`.
        image_size: side S of the square S×S×1 input, at least 32.
        num_classes: number of sigmoid outputs (14 for ChestX-ray14).
        weights: None (random initialization); "imagenet" (keras.applications' ImageNet
            weights converted exactly, for `pretrained.IMAGENET_ARCHS`, with a fresh head);
            or the path of a cxr_tf `.weights.h5`/`.keras` file, loaded whole, except that a
            head of another size starts fresh (fine-tuning to another label set).
        imagenet_weights: with weights="imagenet", a local copy of keras.applications' notop
            file (for machines without network); None lets Keras download and cache it.
        name: model name; defaults to `arch`.
        sync_batchnorm: compute BatchNorm batch statistics over all replicas (TensorFlow
            backend only). Multi-worker training needs it: otherwise each worker keeps its own
            moving statistics and the workers end with different models.

    The input, named `image`, is float32 of shape (S, S, 1) with pixel values 0..255; uint8
    tensors (what the input pipeline yields) are cast exactly on entry, so uint8 and float
    inputs of the same values give the same logits. Images scaled to [0, 1] must be
    multiplied by 255 first. Set a mixed-precision policy before calling this to build a
    mixed-precision model; the `logits` layer stays float32 regardless.
    """
    _check_arguments(arch, image_size, num_classes, sync_batchnorm)
    pretrained.check_weights(arch, weights, imagenet_weights)
    if weights == "imagenet":
        # Found or fetched before building, so a machine without network fails at once.
        imagenet_weights = pretrained.imagenet_file(arch, imagenet_weights)
    net = _build(arch, image_size, num_classes, name=name or arch)
    if sync_batchnorm:
        for layer in net.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.synchronized = True  # read at every call, and saved in the config
    if weights == "imagenet":
        pretrained.load_imagenet(net, arch, imagenet_weights)
    elif weights is not None:
        # The file's head may have another size: the loader builds that twin to read it.
        twin = functools.partial(build_model, arch, image_size, name=name,
                                 sync_batchnorm=sync_batchnorm)
        pretrained.load_cxr_tf(net, weights, build_with_head=twin)
    return net


def _check_arguments(arch, image_size, num_classes, sync_batchnorm):
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; received arch={arch!r}")
    if not isinstance(image_size, int) or isinstance(image_size, bool):
        raise ValueError(f"image_size must be an int; received image_size={image_size!r}")
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be at least {_MIN_IMAGE_SIZE} (the network downsamples 32x); "
            f"received image_size={image_size}"
        )
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive int; received num_classes={num_classes!r}"
        )
    if keras.config.image_data_format() != "channels_last":
        # channels_last is what XLA's GPU convolutions want, and what the input pipeline yields.
        raise ValueError(
            "build_model needs keras.config.image_data_format() == 'channels_last'; "
            f"received {keras.config.image_data_format()!r}"
        )
    if sync_batchnorm and keras.backend.backend() != "tensorflow":
        raise ValueError("sync_batchnorm=True needs the TensorFlow backend (BatchNormalization's "
                         f"synchronized); received backend {keras.backend.backend()!r}")


def _build(arch, image_size, num_classes, name):
    """normalize -> the arch's backbone -> avg_pool -> logits."""
    # float32 rather than uint8: a uint8 Input would truncate float images on entry, while a
    # float32 one takes uint8 batches exactly (the cast runs inside the compiled step, so the
    # host still ships uint8).
    image = layers.Input(shape=(image_size, image_size, 1), dtype="float32", name="image")
    mean, std = NORMALIZATION[arch]
    # One multiply-add, computed in float32 before the first convolution casts to the compute
    # dtype.
    x = layers.Rescaling(scale=1.0 / (255.0 * std), offset=-mean / std, dtype="float32",
                         name="normalize")(image)
    if arch in model_applications.APPLICATION_ARCHS:
        features = model_applications.application_features(x, arch)
    else:
        features = model_resnet.resnet_features(x, arch)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    x = model_applications.after_pooling(x, arch)
    logits = layers.Dense(num_classes, use_bias=True, dtype="float32", name="logits")(x)
    return keras.Model(image, logits, name=name)
