"""The one-channel ResNet that maps an S×S×1 chest X-ray to 14 finding logits.

Pure Keras 3 (`keras.layers`), so the same code trains under TensorFlow and is timed under JAX
on a GPU machine that has no TensorFlow (`tools/bench_model.py`). It reads like
`keras/src/applications/resnet.py`: one generic builder, `_resnet(stack_fn, ...)`, and thin
variants that only say which blocks to stack. Layer names follow keras.applications
(`conv1_conv`, `conv2_block1_1_conv`, ...), and the head is a layer named `logits`.

Where it departs from `keras.applications.ResNet50`, it follows the seed's torchvision model:
- BatchNormalization uses momentum 0.9 (PyTorch's 0.1) and epsilon 1e-5. With Keras's 0.99 the
  moving statistics lag the weights so far that a short run scores near chance in inference
  mode (val AUC 0.3-0.45 after 5 short epochs in a trial here, against 0.93 with 0.9).
- Convolutions have no bias: every one is followed by BN, whose offset makes a bias redundant
  (and costs a broadcast add per layer).
- The stem takes one channel, and the head outputs logits (no activation) in float32 even
  under a mixed-precision policy, so the loss and the sigmoid see full-precision values.
- Pixels are normalized inside the model (layer `normalize`), so training, export and
  serving share one preprocessing.

Two bottleneck geometries, same layers, names and parameter count:
- `resnet50`, `resnet101`: ResNet v1.5, the seed's torchvision network (also timm's and
  keras-hub's): a stage's first block strides on its 3×3 convolution (`conv3_block1_2_conv`).
- `resnet50_v1`, `resnet101_v1`: ResNet v1 as in keras.applications, which strides on the
  first 1×1 convolution (`conv3_block1_1_conv`). v1.5 costs about 7 % more compute (that
  1×1 reads every input pixel instead of one in four; XLA counts 7.93 against 7.38 GFLOP per
  224-px image, `tools/bench_model.py`) for about 0.5 % ImageNet top-1 according to NVIDIA's
  ResNet-50 v1.5 notes. keras.applications' ImageNet weights are v1, so
  `weights="imagenet"` is offered for the `_v1` archs (converted by `cxr_tf.pretrained`).

Example:
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")  # optional, before building
    model = build_model("resnet50", image_size=224)
    logits = model(uint8_images)  # (batch, 14)
    from_imagenet = build_model("resnet50_v1", 320, weights="imagenet")  # fresh 14-way head
"""

import contextvars
import functools

import keras
from keras import layers

from cxr_tf import pretrained
from cxr_tf.archs import ARCHS

# Gray pixels are normalized with the mean and standard deviation of the ImageNet RGB
# statistics averaged over the three channels, the usual convention when a torchvision
# ResNet is fed one channel (0.449 = mean(0.485, 0.456, 0.406), 0.226 = mean(0.229, 0.224,
# 0.225)). NIH radiographs are close to that (mean gray about 0.5); the exact values matter
# little because BatchNorm follows conv1, but keeping the input near zero mean and unit
# variance keeps the first steps well conditioned. These are fractions of 255.
PIXEL_MEAN = 0.449
PIXEL_STD = 0.226

# PyTorch's defaults, which the seed's torchvision ResNet used (see the module docstring).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

_MIN_IMAGE_SIZE = 32  # five stride-2 reductions leave a 1×1 map at 32 px


# Set only while build_model runs: every BatchNormalization it creates reads it.
_SYNC_BN = contextvars.ContextVar("sync_batchnorm", default=False)


def build_model(arch="resnet50", image_size=224, num_classes=14, *, weights=None,
                imagenet_weights=None, name=None, sync_batchnorm=False):
    """Builds a one-channel ResNet that outputs float32 logits, one per class.

    Args:
        arch: one of `ARCHS`.
        image_size: side S of the square S×S×1 input, at least 32.
        num_classes: number of sigmoid outputs (14 for ChestX-ray14).
        weights: None (random initialization); "imagenet" (keras.applications' ImageNet
            weights converted exactly, `resnet50_v1`/`resnet101_v1` only, with a fresh head);
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
    pretrained.check_weights(arch, weights, imagenet_weights)
    if weights == "imagenet":
        # Found or fetched before building, so a machine without network fails at once.
        imagenet_weights = pretrained.imagenet_file(arch, imagenet_weights)
    stack_fn = _STACKS[arch]
    token = _SYNC_BN.set(bool(sync_batchnorm))
    try:
        net = _resnet(stack_fn, image_size, num_classes, name=name or arch)
    finally:
        _SYNC_BN.reset(token)
    if weights == "imagenet":
        pretrained.load_imagenet(net, arch, imagenet_weights)
    elif weights is not None:
        # The file's head may have another size: the loader builds that twin to read it.
        twin = functools.partial(build_model, arch, image_size, name=name,
                                 sync_batchnorm=sync_batchnorm)
        pretrained.load_cxr_tf(net, weights, build_with_head=twin)
    return net


def _resnet(stack_fn, image_size, num_classes, name):
    """Stem, the residual stages from `stack_fn`, and the pooled `logits` head."""
    # float32 rather than uint8: a uint8 Input would truncate float images on entry, while a
    # float32 one takes uint8 batches exactly (the cast runs inside the compiled step, so the
    # host still ships uint8).
    image = layers.Input(shape=(image_size, image_size, 1), dtype="float32", name="image")
    # One multiply-add: (x / 255 - mean) / std, computed in float32 before the first
    # convolution casts to the compute dtype.
    x = layers.Rescaling(
        scale=1.0 / (255.0 * PIXEL_STD),
        offset=-PIXEL_MEAN / PIXEL_STD,
        dtype="float32",
        name="normalize",
    )(image)

    x = layers.ZeroPadding2D(padding=3, name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = _batch_norm(x, name="conv1_bn")
    x = layers.Activation("relu", name="conv1_relu")(x)
    # Zero padding equals PyTorch's -inf padding here: after the ReLU every value is >= 0.
    x = layers.ZeroPadding2D(padding=1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    x = stack_fn(x)

    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(num_classes, use_bias=True, dtype="float32", name="logits")(x)
    return keras.Model(image, logits, name=name)


def _batch_norm(x, name):
    return layers.BatchNormalization(
        axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=_SYNC_BN.get(), name=name
    )(x)


def _conv_bn(x, filters, kernel_size, stride, name, relu=True):
    """Conv (no bias) -> BN [-> ReLU]; a 3×3 stride-2 conv pads 1 on each side as PyTorch does."""
    padding = "valid" if kernel_size == 1 else "same"
    if kernel_size > 1 and stride > 1:
        # "same" with stride 2 on an even size pads only after (TF/XLA rule); pad both sides
        # explicitly so the geometry matches torchvision's padding=1.
        x = layers.ZeroPadding2D(padding=kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    x = layers.Conv2D(
        filters, kernel_size, strides=stride, padding=padding, use_bias=False, name=f"{name}_conv"
    )(x)
    x = _batch_norm(x, name=f"{name}_bn")
    if relu:
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    return x


def bottleneck_block(x, filters, stride=1, conv_shortcut=True, name=None, stride_on_3x3=True):
    """Bottleneck: 1×1 -> 3×3 -> 1×1 (4·filters), plus the shortcut.

    `stride_on_3x3`: True is v1.5 (torchvision), False is v1 (keras.applications: the stride
    sits on the first 1×1, which then reads one input pixel in four).
    """
    if conv_shortcut:
        shortcut = _conv_bn(x, 4 * filters, 1, stride, name=f"{name}_0", relu=False)
    else:
        shortcut = x
    stride_1x1, stride_3x3 = (1, stride) if stride_on_3x3 else (stride, 1)
    x = _conv_bn(x, filters, 1, stride_1x1, name=f"{name}_1")
    x = _conv_bn(x, filters, 3, stride_3x3, name=f"{name}_2")
    x = _conv_bn(x, 4 * filters, 1, 1, name=f"{name}_3", relu=False)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def basic_block(x, filters, stride=1, conv_shortcut=True, name=None):
    """ResNet-18/34 block: 3×3 (stride) -> 3×3, plus the shortcut (torchvision BasicBlock)."""
    if conv_shortcut:
        shortcut = _conv_bn(x, filters, 1, stride, name=f"{name}_0", relu=False)
    else:
        shortcut = x
    x = _conv_bn(x, filters, 3, stride, name=f"{name}_1")
    x = _conv_bn(x, filters, 3, 1, name=f"{name}_2", relu=False)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def stack_blocks(x, block_fn, filters, blocks, stride1=2, name=None):
    """`blocks` blocks of `block_fn`; only the first one strides and projects the shortcut."""
    # The first block needs a projection when it strides or changes the width: always for
    # bottlenecks (64 -> 256 even at stride 1), only when striding for basic blocks.
    projection = stride1 != 1 or block_fn is not basic_block
    x = block_fn(x, filters, stride=stride1, conv_shortcut=projection, name=f"{name}_block1")
    for i in range(2, blocks + 1):
        x = block_fn(x, filters, conv_shortcut=False, name=f"{name}_block{i}")
    return x


_bottleneck_v1 = functools.partial(bottleneck_block, stride_on_3x3=False)


def _stack_fn(block_fn, blocks_per_stage):
    def stack_fn(x):
        for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            stride1 = 1 if stage == 0 else 2  # the max-pool already halved the stem's output
            x = stack_blocks(x, block_fn, filters, blocks, stride1, name=f"conv{stage + 2}")
        return x

    return stack_fn


_STACKS = {
    "resnet18": _stack_fn(basic_block, (2, 2, 2, 2)),
    "resnet34": _stack_fn(basic_block, (3, 4, 6, 3)),
    "resnet50": _stack_fn(bottleneck_block, (3, 4, 6, 3)),
    "resnet101": _stack_fn(bottleneck_block, (3, 4, 23, 3)),
    "resnet50_v1": _stack_fn(_bottleneck_v1, (3, 4, 6, 3)),
    "resnet101_v1": _stack_fn(_bottleneck_v1, (3, 4, 23, 3)),
}
