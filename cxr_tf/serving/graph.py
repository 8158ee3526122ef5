"""The exported SavedModel: encoded image bytes in, probabilities and decisions out.

`build_archive` wraps a trained Keras model in a `keras.export.ExportArchive` with three
signatures, so that TF Serving (or any process with TensorFlow, and no cxr_tf) can serve it:

    serving_default(image_bytes: string [None])
        -> probabilities float32 [None, 14], positive bool [None, 14]
    predict_images(images: uint8 [None, S, S, 1]) -> probabilities float32 [None, 14]
    metadata() -> label_names, thresholds, image_size, version, no_finding_output

A model trained with `--no_finding_output` also outputs `no_finding` float32 [None] from both
prediction signatures, and `positive` applies the constraint (nothing is positive where No
Finding beats every finding).

`decode_gray` and `preprocess_bytes` repeat `cxr_tf.data.images.preprocess` with TF ops, because the
SavedModel cannot call PIL: PNG (8/16-bit, gray, gray+alpha, palette, RGB, RGBA) or JPEG ->
uint8 gray with PIL's own rules -> centred zero pad to square ->
`tf.image.resize(bilinear, antialias=True)` -> round and clip to uint8. Decoding and the gray
conversion are bit-exact with PIL (same luma integers, same 16-bit scaling); the resize
differs from PIL's by at most one gray level, because PIL rounds to uint8 between its two
passes and TF does not (tests/test_export.py measures it).
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from cxr_tf import __version__, labels
from cxr_tf.data import images

_PNG_HEADER_BYTES = 33  # signature (8) + IHDR chunk (25): width, height, bit depth, colour type
_PNG_GRAY = 0  # IHDR colour type of a gray image without alpha
_IEND_WINDOW = 4096
# PIL's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, i.e. ITU-R 601 luma in integers.
_LUMA = (19595, 38470, 7471)
# 255 / (2**bits - 1) divided in float64 and rounded to float32, exactly as numpy does in
# `images._scale_16bit` (a float32 division could differ in the last bit).
_SCALE_BY_BITS = [float(np.float32(255.0 / (2**bits - 1))) if bits else 0.0 for bits in range(33)]


def _byte(data, pos):
    """The byte at `pos` of a scalar string, as int32 (the string must be long enough)."""
    return tf.cast(tf.io.decode_raw(tf.strings.substr(data, pos, 1), tf.uint8)[0], tf.int32)


def _uint32_be(data, pos):
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, pos, 4), tf.uint8), tf.int64)
    return raw[0] * 2**24 + raw[1] * 2**16 + raw[2] * 2**8 + raw[3]


def _offset_of(data, marker):
    """(found, offset) of the first occurrence of the bytes `marker` in a scalar string."""
    pieces = tf.strings.split(data, sep=marker, maxsplit=1)
    return tf.size(pieces) > 1, tf.strings.length(pieces[0])


def _check(condition, template, *values):
    """An assert whose InvalidArgumentError reads as one sentence (tf.strings.format)."""
    return tf.debugging.Assert(condition, [tf.strings.format(template, values, summarize=8)])


def _to_gray(image):
    """uint8 H×W×C -> uint8 H×W as PIL: C=1 as is, C=2 (gray+alpha) its gray channel,
    C=3/4 (RGB, RGBA) integer luma with alpha dropped (not composited)."""
    channels = tf.shape(image)[2]

    def luma():
        rgb = tf.cast(image[:, :, :3], tf.int32)
        weighted = rgb[:, :, 0] * _LUMA[0] + rgb[:, :, 1] * _LUMA[1] + rgb[:, :, 2] * _LUMA[2]
        return tf.cast(tf.bitwise.right_shift(weighted + 0x8000, 16), tf.uint8)

    def first_channel():  # one channel: a free reshape rather than a strided copy
        return tf.cond(channels == 1, lambda: tf.reshape(image, tf.shape(image)[:2]),
                       lambda: image[:, :, 0])

    return tf.cond(channels >= 3, luma, first_channel)


def _scale_gray16(image16, data):
    """16-bit gray -> uint8 as `images._scale_16bit`: by the sBIT bit depth when the file sets
    one (before IDAT, as the PNG spec requires), else by the smallest of 8/10/12/14/16 bits
    that holds the image's maximum; never by the image's own min/max."""
    _, idat_at = _offset_of(data, b"IDAT")
    # Searched for in the bytes before IDAT only: a second split of the whole film would copy
    # it once more.
    has_sbit, sbit_at = _offset_of(tf.strings.substr(data, 0, idat_at), b"sBIT")
    sbit = tf.cond(has_sbit, lambda: _byte(data, sbit_at + 4), lambda: tf.constant(0))
    peak = tf.reduce_max(tf.cast(image16, tf.int32))
    peak_bits = tf.constant(32)
    for bits in (16, 14, 12, 10, 8):  # smallest first wins: assign from the largest down
        peak_bits = tf.where(peak < 2**bits, bits, peak_bits)
    bits = tf.where((sbit >= 8) & (sbit <= 16), sbit, peak_bits)
    scaled = tf.round(tf.cast(image16, tf.float32) * tf.gather(_SCALE_BY_BITS, bits))
    return tf.cast(tf.clip_by_value(scaled, 0.0, 255.0), tf.uint8)


def _decode_png(data, index):
    # Size guard before any pixel is decoded, as `images.decode_gray` does.
    ok_header = _check(tf.strings.length(data) >= _PNG_HEADER_BYTES,
                       "image {}: PNG header truncated ({} bytes, fewer than 33)", index,
                       tf.strings.length(data))
    with tf.control_dependencies([ok_header]):
        width, height = _uint32_be(data, 16), _uint32_be(data, 20)
        depth, colour = _byte(data, 24), _byte(data, 25)
    # IEND closes every complete PNG. Searched for in the tail only: a split of the whole
    # string would copy it (~4 ms for a 1024² film); PIL, like libpng, ignores trailing bytes
    # after IEND, and writers that add any add far less than this window.
    tail_start = tf.maximum(tf.strings.length(data) - _IEND_WINDOW, 0)
    has_end, _ = _offset_of(tf.strings.substr(data, tail_start, _IEND_WINDOW), b"IEND")
    checks = [
        _check(width * height <= images.MAX_PIXELS,
               "image {}: PNG declares {}x{} pixels, over the " f"{images.MAX_PIXELS:,} limit",
               index, width, height),
        _check(has_end, "image {}: PNG truncated (no IEND chunk in {} bytes)", index,
               tf.strings.length(data)),
    ]
    with tf.control_dependencies(checks):
        data = tf.identity(data)

    def eight_bit():
        return _to_gray(tf.io.decode_png(data, channels=0, dtype=tf.uint8))

    def sixteen_bit():
        image16 = tf.io.decode_png(data, channels=0, dtype=tf.uint16)
        # PIL keeps 16-bit gray as I;16 (scaled below) but opens 16-bit RGB(A) and gray+alpha
        # as 8-bit RGB(A) from the high byte of each sample.
        return tf.cond(
            colour == _PNG_GRAY,
            lambda: _scale_gray16(image16[:, :, 0], data),
            lambda: _to_gray(tf.cast(tf.bitwise.right_shift(image16, 8), tf.uint8)),
        )

    return tf.cond(depth == 16, sixteen_bit, eight_bit)


def _decode_jpeg(data, index):
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
    ok = _check(shape[0] * shape[1] <= images.MAX_PIXELS,
                "image {}: JPEG declares {}x{} pixels, over the " f"{images.MAX_PIXELS:,} limit",
                index, shape[1], shape[0])
    # INTEGER_ACCURATE is libjpeg's ISLOW, what PIL uses; TF's default (IFAST) differs from
    # PIL by up to 5 gray levels, ISLOW matches it bit for bit.
    with tf.control_dependencies([ok]):
        return _to_gray(tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE"))


def decode_gray(data, index=0):
    """One encoded PNG or JPEG (scalar string) -> uint8 H×W, exactly as `images.decode_gray`.

    Bad bytes raise tf.errors.InvalidArgumentError naming the image's position in the batch:
    "image 3: not a PNG or JPEG image", "image 0: PNG truncated (no IEND chunk ...)", or TF's
    own decoder message ("Invalid PNG data", "Invalid JPEG data").
    """
    is_png = tf.strings.substr(data, 0, len(images.PNG_SIGNATURE)) == images.PNG_SIGNATURE
    is_jpeg = tf.strings.substr(data, 0, len(images.JPEG_SOI)) == images.JPEG_SOI
    known = _check(is_png | is_jpeg, "image {}: not a PNG or JPEG image ({} bytes, starting "
                   "with {})", index, tf.strings.length(data), tf.strings.substr(data, 0, 8))
    with tf.control_dependencies([known]):
        data = tf.identity(data)
    return tf.cond(is_png, lambda: _decode_png(data, index), lambda: _decode_jpeg(data, index))


def pad_and_resize(gray, size):
    """uint8 H×W -> uint8 size×size×1: centred zero pad to square, antialiased bilinear resize,
    round half to even and clip (as `images.pad_to_square` then `images.resize`)."""
    height, width = tf.shape(gray)[0], tf.shape(gray)[1]
    side = tf.maximum(height, width)
    square = tf.cond(  # most films are square already: skip the copy
        tf.equal(height, width), lambda: gray[:, :, None],
        lambda: tf.image.pad_to_bounding_box(
            gray[:, :, None], (side - height) // 2, (side - width) // 2, side, side))
    # uint8 goes into the resize kernel as is (float32 comes out): casting the full-size
    # film first gives the same result and costs a pass over ~1M pixels.
    resized = tf.image.resize(square, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def preprocess_bytes(image_bytes, size):
    """string [N] of encoded images -> uint8 [N, size, size, 1] (the serving preprocessing).

    The images are decoded in parallel by a tf.data map inside the graph: TensorFlow runs a
    `tf.map_fn` loop (and even two independent decode ops) on one thread, which made PNG
    decoding ~2x slower than it needs to be on a 2-core machine. The order is kept.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    count = tf.size(image_bytes, out_type=tf.int64)

    def decode_all():
        ds = tf.data.Dataset.from_tensor_slices((tf.range(count), image_bytes)).map(
            lambda index, data: pad_and_resize(decode_gray(data, index), size),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(count).get_single_element()

    # get_single_element fails on an empty dataset: an empty request gets an empty batch.
    return tf.cond(count > 0, decode_all, lambda: tf.zeros((0, size, size, 1), tf.uint8))


def build_archive(model, thresholds, *, label_names=labels.LABELS):
    """A `keras.export.ExportArchive` serving `model` (logits out) with the three signatures.

    Args:
        model: the Keras model; input (S, S, 1) pixels 0..255, output logits, 14 findings
            (or 15 when the last output is "No Finding").
        thresholds: one decision threshold per finding (14 floats).
        label_names: the finding names, in output order.
    """
    size = int(model.input_shape[1])
    num_labels = len(label_names)
    num_outputs = int(model.output_shape[-1])
    if num_outputs not in (num_labels, num_labels + 1):
        raise ValueError(f"model has {num_outputs} outputs; expected {num_labels} findings, or "
                         f"{num_labels + 1} with No Finding last")
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) != num_labels:
        raise ValueError(f"need {num_labels} thresholds, one per finding; received {thresholds}")
    has_no_finding = num_outputs == num_labels + 1

    def probabilities_of(images_uint8):
        def run():
            logits = model(tf.cast(images_uint8, tf.float32), training=False)
            return tf.sigmoid(tf.cast(logits, tf.float32))

        # The CPU batch-norm kernels reject an empty batch: answer an empty request directly.
        probs = tf.cond(tf.shape(images_uint8)[0] > 0, run,
                        lambda: tf.zeros((0, num_outputs), tf.float32))
        return probs[:, :num_labels], (probs[:, num_labels] if has_no_finding else None)

    def outputs(pixels, with_decisions):
        probs, no_finding = probabilities_of(pixels)
        out = {"probabilities": probs}
        if with_decisions:
            out["positive"] = labels.decide(probs, thresholds, no_finding, xp=tnp)
        if has_no_finding:
            out["no_finding"] = no_finding
        return out

    def serve_bytes(image_bytes):
        return outputs(preprocess_bytes(image_bytes, size), with_decisions=True)

    def predict_images(pixels):
        return outputs(pixels, with_decisions=False)

    def metadata():
        return {
            "label_names": tf.constant(list(label_names)),
            "thresholds": tf.constant(thresholds, tf.float32),
            "image_size": tf.constant(size, tf.int32),
            "version": tf.constant(__version__),
            "no_finding_output": tf.constant(has_no_finding),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes,
                         [tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("predict_images", predict_images,
                         [tf.TensorSpec([None, size, size, 1], tf.uint8, name="images")])
    archive.add_endpoint("metadata", metadata, [])
    return archive


def export(model, export_dir, thresholds, *, label_names=labels.LABELS):
    """Writes the SavedModel to `export_dir` (e.g. `models/cxr/1`, TF Serving's version dir)."""
    build_archive(model, thresholds, label_names=label_names).write_out(
        str(export_dir), verbose=False)
    return str(export_dir)
