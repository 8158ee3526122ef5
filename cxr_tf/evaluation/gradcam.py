"""Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391) on the Keras model: where did it look?

For finding c, the feature maps A_k of the last convolutional stage (the layer that feeds the
global average pooling: `conv5_block3_out` in ResNet-50, `conv5_block2_out` in ResNet-18) are
weighted by the spatial mean of d logit_c / d A_k, summed, passed through ReLU and upsampled
bilinearly to the input size. With our GAP -> Dense head this equals the class activation map
of Zhou et al. 2016 up to scale. The map is as coarse as that stage: S/32 cells a side (7×7 at
224 px), so read it as a region, not a pixel.

Evaluate's pointing game (`runner.pointing_game`) and predict's overlays
(`cxr_tf.serving.predictor`) both use it, so it lives in evaluation/, below serving.

Example:
    cam = GradCam(model)
    heatmaps = cam(images_uint8, class_indices=[2, 2])  # (2, S, S) in [0, 1]
    save_overlay("effusion.png", images_uint8[0, :, :, 0], heatmaps[0], "Effusion 0.91")
"""

import numpy as np
import tensorflow as tf

from cxr_tf.evaluation import localization

_POOL_LAYER = "avg_pool"


def feature_layer_name(model):
    """Name of the layer whose output the head pools: the last convolutional stage."""
    try:
        pool = model.get_layer(_POOL_LAYER)
    except ValueError as e:
        raise ValueError(f"model {model.name!r} has no {_POOL_LAYER!r} layer; pass layer_name "
                         "(the last convolutional layer) explicitly") from e
    # Public API only: the layer whose symbolic output is the pooling layer's input.
    for layer in model.layers:
        if layer.output is pool.input:
            return layer.name
    raise ValueError(f"model {model.name!r}: no single layer feeds {_POOL_LAYER!r}; pass "
                     "layer_name (the last convolutional layer) explicitly")


class GradCam:
    """Grad-CAM heatmaps of one Keras model (built once, reused for every batch).

    Args:
        model: Keras model mapping (B, S, S, 1) pixels 0..255 to logits.
        layer_name: convolutional layer to explain (default: `feature_layer_name(model)`).
    """

    def __init__(self, model, layer_name=None):
        import keras

        self.layer_name = layer_name or feature_layer_name(model)
        self.size = tuple(int(d) for d in model.input_shape[1:3])
        self._model = keras.Model(model.inputs,
                                  [model.get_layer(self.layer_name).output, model.output])

    def __call__(self, images, class_indices):
        """uint8 (B, S, S, 1) images, one class index per image (or one for all) ->
        float32 (B, S, S) heatmaps scaled to a maximum of 1 (all zeros if nothing is positive)."""
        images = tf.cast(tf.convert_to_tensor(images), tf.float32)
        indices = np.broadcast_to(np.asarray(class_indices, np.int32), (images.shape[0],))
        with tf.GradientTape() as tape:
            tape.watch(images)  # records the forward pass even if no weight is trainable
            features, logits = self._model(images, training=False)
            features = tf.cast(features, tf.float32)  # mixed-precision models compute in 16 bits
            scores = tf.gather(tf.cast(logits, tf.float32), indices, axis=1, batch_dims=1)
        # Each image's score depends only on its own features (BN in inference mode), so the
        # gradient of the sum is every image's own gradient.
        grads = tape.gradient(scores, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, self.size, method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(cam, peak).numpy()


def peak(heatmap):
    """(row, col) where the heatmap points: the centre of its region of tied maxima
    (`localization.peak`, which the pointing game tests), not the block's top-left pixel."""
    return localization.peak(heatmap)


def to_original(row, col, size, original_shape):
    """Model-input pixel (row, col) of an S×S input -> (x, y) in the original H×W image.

    The input is the original padded (centred, zeros) to a square side×side and resized to
    size×size (`images.preprocess`), so pixel centres map back through both steps.
    """
    height, width = original_shape[:2]
    side = max(height, width)
    scale = side / size
    return ((col + 0.5) * scale - (side - width) // 2,
            (row + 0.5) * scale - (side - height) // 2)


def overlay(gray, heatmap, alpha=0.4):
    """uint8 H×W gray image + [0, 1] heatmap -> uint8 H×W×3, the heatmap in the jet colormap."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    base = np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)
    return np.clip(np.rint((1 - alpha) * base + alpha * heat), 0, 255).astype(np.uint8)


def enlarged_overlay(gray, heatmap, min_side=256):
    """(PIL RGB image of the overlay enlarged by a whole factor, nearest, to at least
    `min_side` pixels, the factor): small models' maps stay readable."""
    from PIL import Image

    image = Image.fromarray(overlay(gray, heatmap))
    factor = max(1, -(-min_side // max(image.size)))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor),
                             Image.Resampling.NEAREST)
    return image, factor


def save_overlay(path, gray, heatmap, caption=None, min_side=256):
    """Writes the overlay as PNG, enlarged (nearest) to at least `min_side` and captioned."""
    from PIL import ImageDraw

    image, _ = enlarged_overlay(gray, heatmap, min_side)
    if caption:
        draw = ImageDraw.Draw(image)
        box = draw.textbbox((4, 4), caption)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((4, 4), caption, fill=(255, 255, 255))
    image.save(path, format="PNG")
    return path
