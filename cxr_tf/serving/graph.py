"""The exported SavedModel: encoded image bytes in, probabilities and decisions out.

`build_archive` wraps a trained Keras model in a `keras.export.ExportArchive` with four
signatures, so that TF Serving (or any process with TensorFlow, and no cxr_tf) can serve it:

    serving_default(image_bytes: string [None])
        -> probabilities float32 [None, 14], positive bool [None, 14],
           ood_score float32 [None], in_distribution bool [None]
    predict_images(images: uint8 [None, S, S, 1]) -> the same outputs
    metadata() -> label_names, thresholds and their provenance (threshold_methods,
        threshold_splits, threshold_positives, threshold_negatives, threshold_reasons),
        calibration, calibration_methods, ood_method, ood_threshold, ood_percentile,
        model_card (JSON), model_card_file, image_size, version, no_finding_output, max_pixels
    describe(request: int32 scalar, ignored) -> the same as metadata (TF Serving's REST API
        cannot call a signature that has no input)

`probabilities` are the calibrated ones when the run has a calibration (`baked`), and the
thresholds apply to them. A model trained with `no_finding_output` also outputs `no_finding`
float32 [None] from both prediction signatures, and `positive` applies the constraint
(nothing is positive where No Finding beats every finding).

`decode_gray` and `preprocess_bytes` repeat `cxr_tf.data.images.preprocess` with TF ops, because the
SavedModel cannot call PIL: PNG (8/16-bit, gray, gray+alpha, palette, RGB, RGBA) or JPEG ->
uint8 gray with PIL's own rules -> centred zero pad to square ->
`tf.image.resize(bilinear, antialias=True)` -> round and clip to uint8. Decoding and the gray
conversion are bit-exact with PIL (same luma integers, same 16-bit scaling). A reduction
repeats PIL's two passes (across, round to uint8, down) and its rounding (half up), so it is
bit-exact on most films and off by one gray level on about 1 pixel in 1,000 at 1024->224;
an enlargement (a film smaller than the model's input) is one pass, within one gray level
(tests/test_export.py measures both).

The graph accepts and refuses the same bytes as `images.decode_gray`, for the same reasons,
before any pixel is decoded: IHDR first, the size against `max_pixels` (the padded square and
the decoded samples), every PNG chunk complete (bytes after IEND ignored), a JPEG frame header.
Every refusal is an InvalidArgumentError "image INDEX: REASON", raw bytes only as hex, and the
model goes on serving the next request.
"""

import os

import keras
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from cxr_tf import __version__, atomic, labels
from cxr_tf.data import image_header
from cxr_tf.evaluation import ood
from cxr_tf.serving import baked as baked_ops
from cxr_tf.serving.baked import MODEL_CARD_FILE, Baked
from cxr_tf.serving.header_checks import check, check_image, is_png, png_chunks, read_bytes

_PNG_GRAY = 0  # IHDR colour type of a gray image without alpha
# PIL's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, i.e. ITU-R 601 luma in integers.
_LUMA = (19595, 38470, 7471)
# 255 / (2**bits - 1) divided in float64 and rounded to float32, exactly as numpy does in
# `images._scale_16bit` (a float32 division could differ in the last bit).
_SCALE_BY_BITS = [float(np.float32(255.0 / (2**bits - 1))) if bits else 0.0 for bits in range(33)]


def _to_gray(image):
    """uint8 H×W×C -> uint8 H×W as PIL: C=1 as is, C=2 (gray+alpha) its gray channel,
    C=3/4 (RGB, RGBA) integer luma with alpha dropped (not composited)."""
    channels = tf.shape(image)[2]

    def luma():  # channel by channel: int32 temporaries of one channel at a time
        weighted = [tf.cast(image[:, :, c], tf.int32) * _LUMA[c] for c in range(3)]
        return tf.cast(tf.bitwise.right_shift(tf.add_n(weighted) + 0x8000, 16), tf.uint8)

    def first_channel():  # one channel: a free reshape rather than a strided copy
        return tf.cond(channels == 1, lambda: tf.reshape(image, tf.shape(image)[:2]),
                       lambda: image[:, :, 0])

    return tf.cond(channels >= 3, luma, first_channel)


def _scale_gray16(image16, sbit):
    """16-bit gray -> uint8 as `images._scale_16bit`: by the sBIT bit depth when the file sets
    one, else by the smallest of 8/10/12/14/16 bits that holds the image's maximum; never by
    the image's own min/max."""
    peak = tf.reduce_max(tf.cast(image16, tf.int32))
    peak_bits = tf.constant(32)
    for bits in (16, 14, 12, 10, 8):  # smallest first wins: assign from the largest down
        peak_bits = tf.where(peak < 2**bits, bits, peak_bits)
    sbit = tf.cast(sbit, tf.int32)
    bits = tf.where((sbit >= 8) & (sbit <= 16), sbit, peak_bits)
    scaled = tf.round(tf.cast(image16, tf.float32) * tf.gather(_SCALE_BY_BITS, bits))
    return tf.cast(tf.clip_by_value(scaled, 0.0, 255.0), tf.uint8)


def _decode_png(data):
    def eight_bit():
        return _to_gray(tf.io.decode_png(data, channels=0, dtype=tf.uint8))

    def sixteen_bit():
        image16 = tf.io.decode_png(data, channels=0, dtype=tf.uint16)
        # PIL keeps 16-bit gray as I;16 (scaled below) but opens 16-bit RGB(A) and gray+alpha
        # as 8-bit RGB(A) from the high byte of each sample.
        return tf.cond(
            read_bytes(data, 25, 1)[0] == _PNG_GRAY,
            lambda: _scale_gray16(image16[:, :, 0], png_chunks(data)[2]),
            lambda: _to_gray(tf.cast(tf.bitwise.right_shift(image16, 8), tf.uint8)),
        )

    return tf.cond(read_bytes(data, 24, 1)[0] == 16, sixteen_bit, eight_bit)


def _decode_pixels(data):
    """Checked PNG or JPEG bytes -> uint8 H×W (TF's decoder errors pass through)."""
    # INTEGER_ACCURATE is libjpeg's ISLOW, what PIL uses; TF's default (IFAST) differs from
    # PIL by up to 5 gray levels, ISLOW matches it bit for bit.
    return tf.cond(is_png(data), lambda: _decode_png(data), lambda: _to_gray(
        tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE")))


def decode_gray(data, index=0, max_pixels=image_header.MAX_PIXELS):
    """One encoded PNG or JPEG (scalar string) -> uint8 H×W, exactly as `images.decode_gray`.

    `check_image` runs first ("image 3: not a PNG or JPEG image ...", "image 0: PNG truncated
    ..."); pixel data the decoder refuses raises its own InvalidArgumentError.
    """
    with tf.control_dependencies([check_image(data, index, max_pixels)]):
        return _decode_pixels(tf.identity(data))


def pad_and_resize(gray, size):
    """uint8 H×W -> uint8 size×size×1: centred zero pad to square, antialiased bilinear resize
    rounded as PIL rounds (as `images.pad_to_square` then `images.resize`)."""
    height, width = tf.shape(gray)[0], tf.shape(gray)[1]
    side = tf.maximum(height, width)
    square = tf.cond(  # most films are square already: skip the copy
        tf.equal(height, width), lambda: gray[:, :, None],
        lambda: tf.image.pad_to_bounding_box(
            gray[:, :, None], (side - height) // 2, (side - width) // 2, side, side))

    # uint8 goes into the resize kernel as is (float32 comes out): casting the full-size
    # film first gives the same result and costs a pass over ~1M pixels.
    def as_pil_reduces():
        # PIL resizes across, rounds to uint8, then resizes down: so do we. Measured against
        # PIL (share of pixels off by one level): 1024->224 films 0.09 -> 0.0009, 128->64
        # films 0.16 -> 0 (bit-exact), 1024->64 films 0.05 -> 0.0001.
        across = tf.image.resize(square, (side, size), method="bilinear", antialias=True)
        return tf.image.resize(_round_as_pil(across), (size, size), method="bilinear",
                               antialias=True)

    def one_pass():  # enlarging: two passes would be off by 2 levels at 64->224, this by 1
        return tf.image.resize(square, (size, size), method="bilinear", antialias=True)

    return _round_as_pil(tf.cond(side >= size, as_pil_reduces, one_pass))


def _round_as_pil(values):
    """float -> uint8 as PIL's resampling rounds: half up (it adds 0.5 in fixed point)."""
    return tf.cast(tf.clip_by_value(tf.floor(values + 0.5), 0.0, 255.0), tf.uint8)


def preprocess_bytes(image_bytes, size, max_pixels=image_header.MAX_PIXELS):
    """string [N] of encoded images -> uint8 [N, size, size, 1] (the serving preprocessing).

    Two passes. First `check_image` over every image, in order, from the headers alone: a bad
    image is refused before any pixel of the batch is decoded, so what a request may allocate
    is bounded by `max_pixels` per image. Then the decode, in parallel by a tf.data map inside
    the graph (TensorFlow runs a `tf.map_fn` loop on one thread, which made PNG decoding ~2x
    slower than it needs to be on a 2-core machine); the order is kept. Pixel data that TF's
    decoder refuses is caught there (`ignore_errors`, the decoder's message goes to the log) so
    that the error still names the image: "image 2: PNG pixel data undecodable".
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    count = tf.size(image_bytes, out_type=tf.int64)

    def decode_all():
        indices = tf.range(count)
        # One image after the other (a tf.data map of these small ops costs more than the
        # parallelism saves): the first bad image is the one reported.
        checked = tf.map_fn(lambda args: check_image(args[1], args[0], max_pixels),
                            (indices, image_bytes), fn_output_signature=tf.bool)
        with tf.control_dependencies([checked]):
            checked_bytes = tf.identity(image_bytes)
        ds = tf.data.Dataset.from_tensor_slices((indices, checked_bytes)).map(
            lambda index, data: (index, pad_and_resize(_decode_pixels(data), size)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        nothing = tf.data.Dataset.from_tensors(
            (tf.zeros([0], tf.int64), tf.zeros([0, size, size, 1], tf.uint8)))
        # Every image failing leaves no batch at all: the empty one stands in for it.
        decoded, pixels = ds.ignore_errors(log_warning=True).batch(count).concatenate(
            nothing).take(1).get_single_element()
        found = tf.scatter_nd(decoded[:, None], tf.ones_like(decoded), [count])
        first = tf.argmin(found)  # the first image without pixels
        fmt = tf.where(is_png(checked_bytes[first]), "PNG", "JPEG")
        ok = check(tf.size(decoded, out_type=tf.int64) == count, "image {}: {} pixel data "
                    "undecodable", first, fmt)
        with tf.control_dependencies([ok]):
            return tf.identity(pixels)

    # get_single_element fails on an empty dataset: an empty request gets an empty batch.
    return tf.cond(count > 0, decode_all, lambda: tf.zeros((0, size, size, 1), tf.uint8))


def build_archive(model, thresholds, *, label_names=labels.LABELS,
                  max_pixels=image_header.MAX_PIXELS, baked=Baked()):
    """A `keras.export.ExportArchive` serving `model` (logits out) with the signatures above.

    Args:
        model: the Keras model; input (S, S, 1) pixels 0..255, output logits, 14 findings
            (or 15 when the last output is "No Finding").
        thresholds: one decision threshold per finding (14 floats), on the probabilities
            the graph outputs (calibrated when `baked.calibration` is given).
        label_names: the finding names, in output order.
        max_pixels: the largest image `serving_default` decodes (see `image_header.check_size`);
            the `metadata` signature reports it.
        baked: calibration, out-of-distribution detector, provenance and model card (`Baked`).
    """
    size = int(model.input_shape[1])
    thresholds, max_pixels, has_no_finding = _checked(model, thresholds, label_names,
                                                      max_pixels)
    outputs = _outputs(model, thresholds, len(label_names), has_no_finding, baked)

    def serve_bytes(image_bytes):
        return outputs(preprocess_bytes(image_bytes, size, max_pixels))

    values = baked_ops.metadata_values(thresholds, label_names, baked, {
        "image_size": tf.constant(size, tf.int32),
        "version": tf.constant(__version__),
        "no_finding_output": tf.constant(has_no_finding),
        "max_pixels": tf.constant(max_pixels, tf.int64),
    })
    metadata = _metadata_fn(values)
    metadata(baked_ops.about(thresholds, label_names, baked))  # traced once: see baked.about

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes,
                         [tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("predict_images", outputs,
                         [tf.TensorSpec([None, size, size, 1], tf.uint8, name="images")])
    archive.add_endpoint("metadata", metadata)
    # TF Serving's REST API cannot call a signature without inputs ("Failed to get input
    # map"): the same values, for a dummy scalar input.
    archive.add_endpoint("describe", lambda request: _identities(values),
                         [tf.TensorSpec([], tf.int32, name="request")])
    return archive


def _metadata_fn(values):
    """The `metadata` signature: `values` as constants. Its one argument is a dict of plain
    Python values (`baked.about`), bound when traced: TensorFlow keeps it in the SavedModel as
    the function's argument, and `saved_model_cli show --all` prints it under "Concrete
    Functions", so the label names, thresholds and the card's place are readable without
    running anything."""

    @tf.function
    def metadata(about):
        del about  # only there to be printed
        return _identities(values)

    return metadata


def _identities(values):
    return {name: tf.identity(value) for name, value in values.items()}


def _checked(model, thresholds, label_names, max_pixels):
    """(thresholds as floats, max_pixels as int, whether the model has a No Finding output),
    once the model's outputs, the thresholds and the limit are checked to fit together."""
    num_labels = len(label_names)
    num_outputs = int(model.output_shape[-1])
    if num_outputs not in (num_labels, num_labels + 1):
        raise ValueError(f"model has {num_outputs} outputs; expected {num_labels} findings, or "
                         f"{num_labels + 1} with No Finding last")
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) != num_labels:
        raise ValueError(f"need {num_labels} thresholds, one per finding; received {thresholds}")
    max_pixels = int(max_pixels)
    if not 0 < max_pixels <= 2**40:  # float64 size checks are exact below 2**53
        raise ValueError(f"max_pixels must be in 1..2**40; received {max_pixels}")
    return thresholds, max_pixels, num_outputs == num_labels + 1


def _outputs(model, thresholds, num_labels, has_no_finding, baked):
    """`outputs(pixels)`: the prediction signatures' output dict for a uint8 batch: the
    (calibrated) probabilities, the decisions at `thresholds`, No Finding when the model has
    it, and the out-of-distribution score and flag, all from one forward pass."""
    num_outputs = num_labels + int(has_no_finding)
    detector = baked.detector
    net = ood.feature_model(model, detector.layers) if detector is not None else model
    calibrate = baked_ops.calibrator(baked.calibration, num_outputs)
    score = baked_ops.ood_scorer(detector) if detector is not None else None

    def run(images_uint8):
        out = net(tf.cast(images_uint8, tf.float32), training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        probs = calibrate(tf.cast(out[0], tf.float32))
        if detector is None:  # nothing to score: NaN, and nothing is flagged
            return probs, tf.fill(tf.shape(probs)[:1], np.float32(np.nan))
        return probs, score([tf.cast(f, tf.float32) for f in out[1:]])

    def empty():  # the CPU batch-norm kernels reject an empty batch: answer it directly
        return tf.zeros((0, num_outputs), tf.float32), tf.zeros((0,), tf.float32)

    def outputs(pixels):
        probs, ood_score = tf.cond(tf.shape(pixels)[0] > 0, lambda: run(pixels), empty)
        findings = probs[:, :num_labels]
        no_finding = probs[:, num_labels] if has_no_finding else None
        out = {"probabilities": findings,
               "positive": labels.decide(findings, thresholds, no_finding, xp=tnp),
               "ood_score": ood_score,
               "in_distribution": (ood_score <= detector.threshold if detector is not None
                                   else tf.ones_like(ood_score, tf.bool))}
        if has_no_finding:
            out["no_finding"] = no_finding
        return out

    return outputs


def export(model, export_dir, thresholds, *, label_names=labels.LABELS,
           max_pixels=image_header.MAX_PIXELS, baked=Baked()):
    """Writes the SavedModel to `export_dir` (e.g. `models/cxr/1`, TF Serving's version dir),
    and the model card (when `baked` has one) as `assets/model_card.json` in it."""
    build_archive(model, thresholds, label_names=label_names, max_pixels=max_pixels,
                  baked=baked).write_out(str(export_dir), verbose=False)
    if baked.model_card:
        os.makedirs(os.path.join(export_dir, "assets"), exist_ok=True)
        atomic.write_file(os.path.join(export_dir, MODEL_CARD_FILE), baked.model_card)
    return str(export_dir)
