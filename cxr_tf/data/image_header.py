"""What an image file declares before any pixel is decoded, and the limits it must keep.

Pure Python (struct only): the bottom of the data layer, imported by the decoders
(`cxr_tf.data.images` for PNG and JPEG, `cxr_tf.data.dicom`), by the exported graph's header
checks (`cxr_tf.serving.header_checks`) and by the predictor, so they share one error type, one
set of magic bytes and one size limit without importing each other.

Memory is bounded before decoding: the size and sample type come from a parsed header (PNG:
IHDR, which must be the first chunk; JPEG: the first SOF marker; DICOM: Rows, Columns and bits,
read by `dicom`), and `check_size` refuses an image whose padded square or decoded samples
would take more than `max_pixels` bytes (one limit for prepare, predict and the SavedModel).
"""

import struct
import typing

from cxr_tf import errors

# A chest film is at most ~3000×3000 = 9 MP. Anything declaring 50 MP is a corrupt header or a
# decompression bomb (a tiny file inflating to gigabytes), so it is refused before decoding.
MAX_PIXELS = 50_000_000

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IHDR = b"\x00\x00\x00\x0dIHDR"  # the first chunk of every PNG: 13 bytes long
JPEG_SOI = b"\xff\xd8\xff"
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_AT = 128  # "DICM" follows the 128-byte preamble of a DICOM Part 10 file
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# PNG colour type -> (samples per pixel as stored, channels once decoded). A palette pixel is
# one index, which TensorFlow's decoder expands to RGB(A): four channels at most.
PNG_COLOUR = {0: (1, 1), 2: (3, 3), 3: (1, 4), 4: (2, 2), 6: (4, 4)}
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def max_file_bytes(max_pixels=MAX_PIXELS):
    """The most bytes worth reading for one image: its decoded samples may take `max_pixels`
    bytes, and headers (ICC profiles, DICOM elements) some megabytes more."""
    return max_pixels + (64 << 20)


class ImageError(errors.UserError, ValueError):
    """An image that cannot be used; `reason` is the prepare report's skip key.

    reason: "undecodable", "too_large", "dropped_rgba" or "missing". str(e) is "NAME: detail".
    A `UserError` (an app prints it as one line), and a ValueError for `except ValueError`.
    """

    def __init__(self, name, reason, detail):
        self.name = name
        self.reason = reason
        self.detail = detail
        super().__init__(f"{name}: {detail}")

    def __reduce__(self):  # picklable, so worker processes can send it back to the parent
        return type(self), (self.name, self.reason, self.detail)


class Header(typing.NamedTuple):
    """What a header declares: the decoded size and samples, before any pixel is decoded."""

    width: int
    height: int
    channels: int  # once decoded (a PNG palette counts 4: decoders may expand it to RGBA)
    sample_bytes: int  # 1, or 2 for 16-bit samples (4/8 for 32/64-bit DICOM)


def check_size(name, header, max_pixels=MAX_PIXELS):
    """Refuses ("too_large") an image whose decode would allocate more than `max_pixels` bytes.

    Two allocations scale with the image: the decoded samples (width × height × channels ×
    bytes per sample) and the uint8 square it is padded to (max(width, height)²). A 1×40000
    PNG is 40,000 pixels but a 1.6-gigapixel square.
    """
    width, height, channels, sample_bytes = header
    side = max(width, height)
    if side * side > max_pixels:
        size = (f"{width}x{height} = {side * side:,} pixels" if width == height else
                f"{width}x{height}, padded to {side}x{side} = {side * side:,} pixels")
        raise ImageError(name, "too_large", f"declares {size}, over the {max_pixels:,} limit")
    decoded = width * height * channels * sample_bytes
    if decoded > max_pixels:
        raise ImageError(
            name, "too_large",
            f"declares {width}x{height} with {channels * sample_bytes} bytes a pixel = "
            f"{decoded:,} bytes decoded, over the {max_pixels:,} limit")


def image_format(data):
    """The format its magic bytes say: "PNG", "JPEG" or "DICOM"; None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_SOI):
        return "JPEG"
    if data[DICOM_MAGIC_AT:DICOM_MAGIC_AT + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return "DICOM"
    return None


def starts_with(data):
    """The first bytes as hex, for messages: raw bytes never go into a message as text."""
    return data[:8].hex(" ")


def png_ihdr(data, name):
    """(width, height, bit depth, colour type, interlace) from IHDR, the first chunk."""
    if len(data) < 33:
        raise ImageError(name, "undecodable",
                         f"PNG header truncated ({len(data):,} bytes, fewer than 33)")
    if data[8:16] != PNG_IHDR:
        raise ImageError(name, "undecodable", f"PNG does not start with a 13-byte IHDR chunk "
                         f"(found {data[8:16].hex(' ')})")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if not width or not height or depth not in PNG_DEPTHS.get(colour, ()):
        raise ImageError(name, "undecodable", f"PNG IHDR invalid ({width}x{height}, colour "
                         f"type {colour}, bit depth {depth})")
    return width, height, depth, colour, interlace


def _jpeg_sof(data, name):
    """(width, height, components, precision) from the first start-of-frame marker, walking
    the marker segments by their lengths as libjpeg does."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            pos += 2
            continue
        if marker in JPEG_SOF:
            if pos + 10 > len(data):
                break
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 4:pos + 10])
            if not width or not height or not components:
                raise ImageError(name, "undecodable", f"JPEG frame header invalid ({width}x"
                                 f"{height}, {components} components)")
            return width, height, components, precision
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    raise ImageError(name, "undecodable", f"JPEG header truncated or corrupt (no frame header "
                     f"in {len(data):,} bytes)")


def read_header(data, name):
    """The `Header` of PNG or JPEG bytes, from IHDR or the SOF marker; ImageError if corrupt."""
    if data.startswith(PNG_SIGNATURE):
        width, height, depth, colour, _ = png_ihdr(data, name)
        return Header(width, height, PNG_COLOUR[colour][1], 2 if depth == 16 else 1)
    if data.startswith(JPEG_SOI):
        width, height, components, precision = _jpeg_sof(data, name)
        return Header(width, height, components, 2 if precision > 8 else 1)
    raise ImageError(name, "undecodable", f"not a PNG or JPEG file (starts with "
                     f"{starts_with(data)})")
