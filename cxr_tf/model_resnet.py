"""The one-channel ResNets of `cxr_tf.model.build_model`: stem and residual stages.

Pure Keras 3 (`keras.layers`), like the rest of the model. It reads like
`keras/src/applications/resnet.py`: thin variants that only say which blocks to stack
(`STACKS`), and layer names that follow keras.applications (`conv1_conv`,
`conv2_block1_1_conv`, ...). keras.applications' ResNet cannot be used as it stands: its
convolutions carry biases, its BatchNorm uses epsilon 1.001e-5, and it has no v1.5 geometry,
all of which the seed's torchvision network (below) needs.

Where it departs from `keras.applications.ResNet50`, it follows the seed's torchvision model:
- BatchNormalization uses momentum 0.9 (PyTorch's 0.1) and epsilon 1e-5. With Keras's 0.99 the
  moving statistics lag the weights so far that a short run scores near chance in inference
  mode (val AUC 0.3-0.45 after 5 short epochs in a trial here, against 0.93 with 0.9).
- Convolutions have no bias: every one is followed by BN, whose offset makes a bias redundant
  (and costs a broadcast add per layer).
- The stem takes one channel (`cxr_tf.model` normalises the pixels before it).

Two bottleneck geometries, same layers, names and parameter count:
- `resnet50`, `resnet101`: ResNet v1.5, the seed's torchvision network (also timm's and
  keras-hub's): a stage's first block strides on its 3×3 convolution (`conv3_block1_2_conv`).
- `resnet50_v1`, `resnet101_v1`: ResNet v1 as in keras.applications, which strides on the
  first 1×1 convolution (`conv3_block1_1_conv`). v1.5 costs about 7 % more compute (that
  1×1 reads every input pixel instead of one in four; XLA counts 7.93 against 7.38 GFLOP per
  224-px image, `tools/bench_model.py`) for about 0.5 % ImageNet top-1 according to NVIDIA's
  ResNet-50 v1.5 notes. keras.applications' ImageNet weights are v1, so
  `weights="imagenet"` is offered for the `_v1` archs (converted by `cxr_tf.pretrained`).
"""

import functools

from keras import layers

# PyTorch's defaults, which the seed's torchvision ResNet used (see the module docstring).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def resnet_features(x, arch):
    """The normalised S×S×1 tensor -> the last stage's feature map (`conv5_blockN_out`)."""
    x = layers.ZeroPadding2D(padding=3, name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = _batch_norm(x, name="conv1_bn")
    x = layers.Activation("relu", name="conv1_relu")(x)
    # Zero padding equals PyTorch's -inf padding here: after the ReLU every value is >= 0.
    x = layers.ZeroPadding2D(padding=1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    return STACKS[arch](x)


def _batch_norm(x, name):
    # cxr_tf.model sets `synchronized` on every BatchNormalization of every arch after building.
    return layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                     name=name)(x)


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


STACKS = {
    "resnet18": _stack_fn(basic_block, (2, 2, 2, 2)),
    "resnet34": _stack_fn(basic_block, (3, 4, 6, 3)),
    "resnet50": _stack_fn(bottleneck_block, (3, 4, 6, 3)),
    "resnet101": _stack_fn(bottleneck_block, (3, 4, 23, 3)),
    "resnet50_v1": _stack_fn(_bottleneck_v1, (3, 4, 6, 3)),
    "resnet101_v1": _stack_fn(_bottleneck_v1, (3, 4, 23, 3)),
}
