"""The serving graph's header checks: every check `images.decode_gray` makes before decoding,
in TF ops, from the headers only (PNG: signature, IHDR first, IHDR values, every chunk complete
up to IEND; JPEG: the first frame header), the size against `max_pixels` counted as the padded
square and the decoded samples. Untrusted bytes never decide an allocation: every read here is
bounds-safe and every loop capped. Each refusal is an InvalidArgumentError
"image INDEX: REASON" with raw bytes only as hex.
"""

import tensorflow as tf

from cxr_tf.data import image_header

# IHDR colour type -> channels once decoded (see image_header.PNG_COLOUR); 0 for invalid types.
_PNG_CHANNELS = [image_header.PNG_COLOUR.get(colour, (0, 0))[1] for colour in range(7)]
_PNG_VALID = [(c, d) for c, depths in image_header.PNG_DEPTHS.items() for d in depths]
_HEX = [f"{i:02x}" for i in range(256)]
# Chunk headers walked at most. A step costs ~60 us in the graph, and a crafted 1 MB file can
# hold 87,000 empty chunks: past this many (8 MB of libpng's 8 KB IDATs) truncation is left
# to libpng, which refuses pixel data that ends early too.
_MAX_CHUNKS_WALKED = 1024


def _code(name):
    """A 4-letter chunk name as the integer `_uint` reads."""
    return int.from_bytes(name, "big")


def _length(data):
    return tf.cast(tf.strings.length(data), tf.int64)


def read_bytes(data, pos, count):
    """`count` bytes of `data` from `pos` as int64, zero past the end: no read can fail, so a
    loop may read ahead of its own bounds checks."""
    pos = tf.clip_by_value(tf.cast(pos, tf.int64), 0, _length(data))
    piece = tf.strings.join([tf.strings.substr(data, pos, tf.constant(count, tf.int64)),
                             b"\0" * count])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(piece, 0, count), tf.uint8), tf.int64)


def _uint(raw, start, count):
    value = raw[start]
    for i in range(start + 1, start + count):
        value = value * 256 + raw[i]
    return value


def _hex(data, count=8):
    """The first bytes as hex: raw bytes in an error message could be anything (the Python
    client decodes the message as UTF-8), hex is always text."""
    raw = tf.io.decode_raw(tf.strings.substr(data, 0, count), tf.uint8)
    return tf.strings.reduce_join(tf.gather(_HEX, tf.cast(raw, tf.int32)), separator=" ")


def check(condition, template, *values):
    """An assert whose InvalidArgumentError reads as one sentence: `template` with each {}
    replaced by a value (tf.strings.format would quote strings)."""
    texts = template.split("{}")
    parts = [texts[0]]
    for value, text in zip(values, texts[1:]):
        value = tf.convert_to_tensor(value)
        parts += [value if value.dtype == tf.string else tf.strings.as_string(value), text]
    return tf.debugging.Assert(condition, [tf.strings.join(parts)])


def _in_order(*checks):
    """Runs `checks` (functions returning an assert op) one after the other, so the first
    failing one is the one reported, and values a check reads are only computed once the
    checks before it passed. Returns a bool tensor that depends on them all."""
    done = tf.constant(True)
    for check in checks:
        with tf.control_dependencies([done]):
            op = check()
        with tf.control_dependencies([op]):
            done = tf.identity(done)
    return done


def _check_size(index, fmt, width, height, channels, sample_bytes, max_pixels):
    """`image_header.check_size` in the graph: the padded square and the decoded samples."""
    # float64: a 32-bit width times a 32-bit height overflows int64 products.
    w, h = tf.cast(width, tf.float64), tf.cast(height, tf.float64)
    side = tf.maximum(width, height)
    decoded = tf.cast(channels * sample_bytes, tf.float64)
    return _in_order(
        lambda: check(tf.maximum(w, h) ** 2 <= max_pixels,
                       "image {}: " + fmt + " declares {}x{}, padded to {}x{} pixels, over the "
                       f"{max_pixels:,} limit", index, width, height, side, side),
        lambda: check(w * h * decoded <= max_pixels,
                       "image {}: " + fmt + " declares {}x{} with {} bytes a pixel, over the "
                       f"{max_pixels:,} limit", index, width, height, channels * sample_bytes))


def _crc_table():
    """CRC-32 (ISO 3309, the PNG chunk CRC) of every byte value, as zlib's table."""
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def _short_chunk_crc_ok(data, pos, size):
    """Whether the CRC of a chunk of at most 4 data bytes (sBIT's 1 to 4) is right: the CRC
    covers its type and data, 4 + size bytes, computed here byte by byte."""
    raw = read_bytes(data, pos + 4, 8)
    table = tf.constant(_CRC_TABLE, tf.int64)
    crc = tf.constant(0xFFFFFFFF, tf.int64)
    for i in range(8):
        step = tf.bitwise.bitwise_xor(
            tf.gather(table, tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(crc, raw[i]), 0xFF)),
            tf.bitwise.right_shift(crc, 8))
        crc = tf.where(i < 4 + size, step, crc)
    stored = _uint(read_bytes(data, pos + 8 + size, 4), 0, 4)
    return (size <= 4) & (tf.bitwise.bitwise_xor(crc, 0xFFFFFFFF) == stored)


def png_chunks(data):
    """Walks the chunks as `cxr_tf.data.png_chunks.walk` does: (status, position, sBIT).

    status 1: no IEND (position: where the next chunk header would start), 2: a chunk runs
    past the end (position: the bytes it needs), 3: IEND found, 0: not decided within
    `_MAX_CHUNKS_WALKED` chunks. sBIT is the first sBIT chunk before IDAT with a right CRC, 0
    without one. Bytes after IEND are ignored, as by PIL and libpng. The rest of the chunk
    rules (CRCs, order, the zlib stream) are libpng's own, inside `tf.io.decode_png`.
    """
    n = _length(data)

    def step(pos, status, sbit, seen_idat):
        raw = read_bytes(data, pos, 9)
        size, kind = _uint(raw, 0, 4), _uint(raw, 4, 4)
        end = pos + 12 + size
        status = tf.where(pos + 8 > n, 1, tf.where(end > n, 2,
                                                   tf.where(kind == _code(b"IEND"), 3, 0)))
        fits = status != 1
        is_sbit = fits & (kind == _code(b"sBIT")) & (size >= 1) & (sbit == 0) & ~seen_idat
        is_sbit = tf.cond(is_sbit, lambda: _short_chunk_crc_ok(data, pos, size),
                          lambda: tf.constant(False))  # the CRC only for a candidate sBIT
        sbit = tf.where(is_sbit, raw[8], sbit)
        seen_idat = seen_idat | (fits & (kind == _code(b"IDAT")))
        return tf.where(status == 1, pos, end), status, sbit, seen_idat

    start = (tf.constant(8, tf.int64), tf.constant(0), tf.constant(0, tf.int64),
             tf.constant(False))
    pos, status, sbit, _ = tf.while_loop(lambda pos, status, *_: status == 0, step, start,
                                         maximum_iterations=_MAX_CHUNKS_WALKED)
    return status, pos, sbit


def _check_png(data, index, max_pixels):
    """The PNG header checks of `images.decode_gray`, in its order, with its reasons."""
    n = _length(data)
    head = read_bytes(data, 0, 29)
    width, height = _uint(head, 16, 4), _uint(head, 20, 4)
    depth, colour = head[24], head[25]
    valid = (width > 0) & (height > 0) & tf.reduce_any(
        [(colour == c) & (depth == d) for c, d in _PNG_VALID])
    channels = tf.gather(_PNG_CHANNELS, tf.clip_by_value(colour, 0, 6))
    # Walked whatever the header says: every read is bounds-safe, the steps are capped.
    status, needed, _ = png_chunks(data)
    return _in_order(
        lambda: check(n >= 33, "image {}: PNG header truncated ({} bytes, fewer than 33)",
                       index, n),
        lambda: check(tf.strings.substr(data, 8, 8) == image_header.PNG_IHDR,
                       "image {}: PNG does not start with a 13-byte IHDR chunk (found {})",
                       index, _hex(tf.strings.substr(data, 8, 8))),
        lambda: check(valid, "image {}: PNG IHDR invalid ({}x{}, colour type {}, bit depth "
                       "{})", index, width, height, colour, depth),
        lambda: _check_size(index, "PNG", width, height, tf.cast(channels, tf.int64),
                            tf.where(depth == 16, tf.constant(2, tf.int64), 1), max_pixels),
        lambda: check(status != 1, "image {}: PNG truncated (read {} bytes, no IEND chunk)",
                       index, n),
        lambda: check(status != 2, "image {}: PNG truncated (read {} of at least {} bytes)",
                       index, n, needed),
    )


def _jpeg_frame(data):
    """(found, width, height, components, precision) of the first SOF marker, walking the
    marker segments by their lengths as `image_header._jpeg_sof` (and libjpeg) does."""
    n = _length(data)
    sof = tf.constant(sorted(image_header.JPEG_SOF), tf.int64)

    def step(pos, status, frame):
        raw = read_bytes(data, pos, 10)
        marker = raw[1]
        bad = (pos + 4 > n) | (raw[0] != 0xFF)
        is_sof = tf.reduce_any(tf.equal(marker, sof))
        no_length = (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD8))
        skip = tf.where(marker == 0xFF, tf.constant(1, tf.int64),
                        tf.where(no_length, tf.constant(2, tf.int64), 2 + _uint(raw, 2, 2)))
        status = tf.where(bad | (is_sof & (pos + 10 > n)), 2, tf.where(is_sof, 1, 0))
        frame = tf.where(status == 1, tf.stack([_uint(raw, 7, 2), _uint(raw, 5, 2), raw[9],
                                                raw[4]]), frame)
        return pos + skip, status, frame

    start = (tf.constant(2, tf.int64), tf.constant(0), tf.zeros([4], tf.int64))
    _, status, frame = tf.while_loop(lambda pos, status, frame: status == 0, step, start)
    return status == 1, frame[0], frame[1], frame[2], frame[3]


def _check_jpeg(data, index, max_pixels):
    found, width, height, components, precision = _jpeg_frame(data)
    return _in_order(
        lambda: check(found, "image {}: JPEG header truncated or corrupt (no frame header in "
                       "{} bytes)", index, _length(data)),
        lambda: check((width > 0) & (height > 0) & (components > 0), "image {}: JPEG frame "
                       "header invalid ({}x{}, {} components)", index, width, height,
                       components),
        lambda: _check_size(index, "JPEG", width, height, components,
                            tf.where(precision > 8, tf.constant(2, tf.int64), 1), max_pixels),
    )


def is_png(data):
    signature = image_header.PNG_SIGNATURE
    return tf.strings.substr(data, 0, len(signature)) == signature


def check_image(data, index=0, max_pixels=image_header.MAX_PIXELS):
    """Every check `images.decode_gray` makes before decoding, from the headers only: the
    format, IHDR first, the size against `max_pixels`, the PNG chunks complete. Raises
    InvalidArgumentError "image INDEX: REASON" (raw bytes as hex); returns True."""
    is_jpeg = tf.strings.substr(data, 0, len(image_header.JPEG_SOI)) == image_header.JPEG_SOI
    return _in_order(
        lambda: check(is_png(data) | is_jpeg, "image {}: not a PNG or JPEG image ({} bytes, "
                       "starting with {})", index, tf.strings.length(data), _hex(data)),
        lambda: tf.cond(is_png(data), lambda: _check_png(data, index, max_pixels),
                        lambda: _check_jpeg(data, index, max_pixels)),
    )
