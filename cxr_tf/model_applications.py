"""DenseNet-121/169, EfficientNetV2-S and ConvNeXt-Tiny for `cxr_tf.model.build_model`.

Each is keras.applications' own network (`weights=None, include_top=False`), built on the
one-channel tensor that `cxr_tf.model` has already normalised. Its layers, their names and
its geometry are the application's, so keras.applications' ImageNet weights fit it one to one
(`cxr_tf.pretrained` folds the three-channel stem into one channel). No network code of ours:
what the applications' arguments cannot say is set on the layers they built, here:
- `include_preprocessing=False` (EfficientNetV2, ConvNeXt): the model normalises in one
  place, `cxr_tf.model`'s `normalize` layer. (Given one channel, ConvNeXt would skip its
  per-channel ImageNet normalisation anyway; EfficientNetV2-S's p/128 - 1 is exactly what
  `normalize` computes for it.)
- BatchNorm of the DenseNets: momentum 0.9 and epsilon 1e-5 (`DENSENET_BN`) instead of
  keras.applications' 0.99 and 1.001e-5, which the applications take no argument for.
  These are the values of the Torch DenseNet that keras.applications' implementation and
  preprocessing ("torch" mode) follow, and of torchvision's densenet121, CheXNet's network;
  Keras's 1.001e-5 was chosen to stay above cuDNN's minimum epsilon (1e-5), not by the
  training. `cxr_tf.pretrained` folds the difference into the moving variance, so ImageNet
  outputs are unchanged. With Keras's momentum the moving statistics lag a short run: the
  demo (`--flagfile=demo.cfg --arch=densenet121`, 4 epochs of 42 steps) reached validation
  mean AUC 0.640 in inference mode (training AUC 0.97), against 0.979 with 0.9.
- EfficientNetV2 keeps its BatchNorm (momentum 0.9, epsilon 1e-3: its TensorFlow training's),
  and its stochastic depth (Dropout layers up to 0.2, as keras.applications builds them).
  The head drops the application's top dropout: the 14-way head is the same for every arch.
- ConvNeXt has no BatchNorm (LayerNorm, epsilon 1e-6, as trained). Its notop network ends in
  a LayerNormalization applied at every position, while its ImageNet head (and the paper's,
  Liu et al. 2022) pools first and normalises the pooled vector. So we take the last stage's
  output and `after_pooling` normalises after `avg_pool` (layer `convnext_tiny_head_layernorm`,
  keras.applications' name for the head's, which takes the notop file's last LayerNorm). The
  last stage ends in an anonymous add (`inputs + ...` in ConvNeXtBlock), which is no layer
  Grad-CAM could name, so an Identity layer names it (`CONVNEXT_FEATURES`).

`cxr_tf.model` sets `synchronized` on every BatchNormalization, of every arch, for multi-replica
training.
"""

import keras
from keras import layers

# arch: (keras.applications builder, arguments besides include_top, weights and the input).
_APPLICATIONS = {
    "densenet121": (keras.applications.DenseNet121, {}),
    "densenet169": (keras.applications.DenseNet169, {}),
    "efficientnetv2_s": (keras.applications.EfficientNetV2S, {"include_preprocessing": False}),
    "convnext_tiny": (keras.applications.ConvNeXtTiny, {"include_preprocessing": False}),
}
APPLICATION_ARCHS = tuple(_APPLICATIONS)

DENSENET_BN = (0.9, 1e-5)  # (momentum, epsilon); see the module docstring
CONVNEXT_FEATURES = "convnext_tiny_stage_3_out"
CONVNEXT_HEAD_NORM = "convnext_tiny_head_layernorm"


def application_features(x, arch):
    """The normalised S×S×1 tensor -> the application's last feature map (before pooling)."""
    builder, kwargs = _APPLICATIONS[arch]
    net = builder(include_top=False, weights=None, input_tensor=x,
                  input_shape=tuple(x.shape[1:]), **kwargs)
    if arch.startswith("densenet"):
        for layer in net.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum, layer.epsilon = DENSENET_BN
    if arch == "convnext_tiny":
        per_position_norm = net.layers[-1]
        if not isinstance(per_position_norm, layers.LayerNormalization):  # another Keras
            raise RuntimeError(f"keras.applications.ConvNeXtTiny {keras.__version__} no "
                               "longer ends in a LayerNormalization; cxr_tf.model_applications "
                               "needs updating")
        return layers.Identity(name=CONVNEXT_FEATURES)(per_position_norm.input)
    return net.output


def after_pooling(pooled, arch):
    """ConvNeXt's head LayerNorm on the pooled features; the others use them as they are."""
    if arch != "convnext_tiny":
        return pooled
    return layers.LayerNormalization(epsilon=1e-6, name=CONVNEXT_HEAD_NORM)(pooled)
