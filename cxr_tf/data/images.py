"""One image from bytes to the model's input: decode to uint8 gray, pad to square, resize.

PNG (8/16-bit gray, palette, RGB, RGBA, gray+alpha), JPEG and DICOM all end as a uint8 H×W
array plus the list of conversions applied, so the prepare report can count them. Every
failure is an `ImageError` that names the file and the reason; nothing here knows about labels.

Memory is bounded before any pixel is decoded: the header is parsed and checked against
`max_pixels` (`cxr_tf.data.image_header`: the limit, the magic bytes and the error type live
there, shared with `dicom` and the SavedModel's header checks), and a PNG's chunks and pixel
data are measured before PIL decodes them. Which damaged PNGs are accepted is decided once, by
libpng's rules, for this path and the SavedModel alike (`cxr_tf.data.png_chunks`). EXIF
orientation is not applied, here or in the SavedModel (docs/RELIABILITY.md).

The exported SavedModel repeats `preprocess` inside the TF graph (`cxr_tf/serving/graph.py`),
accepting and refusing the same bytes, so `resize` must stay numerically close to that
graph's `tf.image.resize(method="bilinear", antialias=True)`: tests/test_images.py asserts
the bound.
"""

import io
import struct

import numpy as np
from PIL import Image

from cxr_tf.data import dicom, png_chunks
from cxr_tf.data.image_header import (
    MAX_PIXELS,
    ImageError,
    check_size,
    image_format,
    png_ihdr,
    read_header,
    starts_with,
)

_COLOUR_MODES = {"RGB": "rgb", "CMYK": "rgb", "YCbCr": "rgb", "RGBA": "rgba", "LA": "rgba"}


def _scale_16bit(array, sbit):
    # Scale by the bit depth the data really uses, never by this image's min/max: a min-max
    # stretch would give the same tissue a different gray level in every image. Detectors
    # store 10-14 bit values in 16-bit containers; dividing those by 257 would leave them
    # nearly black. So: the sBIT chunk if the writer set one, else the smallest of 8/10/12/14/16
    # bits that holds the image's maximum (a full-range image: 65535 -> 255, i.e. /257).
    if sbit and 8 <= sbit <= 16:
        bits = sbit
    else:
        peak = int(array.max()) if array.size else 0
        bits = next(b for b in (8, 10, 12, 14, 16, 32) if peak < 2**b)
    scaled = array.astype(np.float32)  # one float copy, then in place: memory is 4 bytes a pixel
    scaled *= np.float32(255.0 / (2**bits - 1))
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def _to_gray(img, sbit, name):
    mode = img.mode
    if mode == "L":
        return np.asarray(img), []
    if mode == "1":
        return np.asarray(img.convert("L")), []
    if mode.startswith("I"):  # PIL opens 16-bit gray PNGs as I;16 (or I)
        return _scale_16bit(np.asarray(img), sbit), ["gray16"]
    if mode in ("P", "PA"):
        return np.asarray(img.convert("L")), ["palette"]
    if mode == "LA":  # the gray channel as is; alpha in exported films is a constant 255
        return np.asarray(img.getchannel("L")), ["rgba"]
    if mode in _COLOUR_MODES:
        # ITU-R 601 luma (PIL's L = 0.299 R + 0.587 G + 0.114 B); alpha is dropped, not
        # composited, because compositing onto black would invent darker tissue.
        return np.asarray(img.convert("L")), [_COLOUR_MODES[mode]]
    raise ImageError(name, "undecodable", f"unsupported {img.format} mode {mode}")


def decode_gray(data, name, *, drop_rgba=False, max_pixels=MAX_PIXELS):
    """PNG or JPEG bytes -> (uint8 H×W, conversions from {"gray16","palette","rgb","rgba"}).

    "rgba" means an alpha channel was dropped (RGBA, or gray+alpha). With drop_rgba=True an
    RGB(A) image raises ImageError("dropped_rgba"), as the paper skipped them. The header is
    parsed and checked against `max_pixels` (see `check_size`) before any pixel is decoded;
    a PNG whose chunks or pixel data end early is refused, as the SavedModel refuses it.
    """
    data = bytes(data)
    if not data:
        raise ImageError(name, "undecodable", "empty file (0 bytes)")
    header = read_header(data, name)
    check_size(name, header, max_pixels)
    fmt, sbit = image_format(data), None
    if fmt == "PNG":  # the rules libpng (the SavedModel's decoder) applies: png_chunks
        sbit, idat, data = png_chunks.walk(name, data)
        png_chunks.check_pixel_data(name, idat, png_chunks.raw_size(*png_ihdr(data, name)))
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            if img.size != header[:2]:  # PIL's JPEG parser keeps the last of several SOFs
                raise ImageError(name, "undecodable", f"{fmt} frame headers disagree "
                                 f"({header.width}x{header.height}, then {img.size[0]}x"
                                 f"{img.size[1]})")
            if drop_rgba and img.mode in ("RGB", "RGBA"):
                raise ImageError(name, "dropped_rgba", f"{img.mode} image dropped (--drop_rgba)")
            img.load()  # PIL is lazy: force the full decode here so corrupt data fails here
            return _to_gray(img, sbit, name)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
            Image.DecompressionBombError) as e:
        kind = "truncated" if "truncated" in str(e) else "undecodable"
        raise ImageError(name, "undecodable", f"{fmt} {kind} ({e})") from e


def decode_dicom(data, name, *, max_pixels=MAX_PIXELS):
    """DICOM bytes -> (uint8 H×W, conversions): see `cxr_tf.data.dicom.decode` (which imports
    pydicom only when a DICOM file comes)."""
    return dicom.decode(data, name, max_pixels=max_pixels)


def decode_any(data, name, *, drop_rgba=False, max_pixels=MAX_PIXELS):
    """Dispatches on the magic bytes (PNG signature, JPEG SOI, "DICM" at offset 128); other
    bytes are read as DICOM when they are a dataset without its preamble
    (`dicom.without_preamble`)."""
    data = bytes(data)
    if not data:
        raise ImageError(name, "undecodable", "empty file (0 bytes)")
    fmt = image_format(data)
    if fmt == "DICOM":
        return decode_dicom(data, name, max_pixels=max_pixels)
    if fmt is None and (part10 := dicom.without_preamble(data)) is not None:
        return decode_dicom(part10, name, max_pixels=max_pixels)
    if fmt is None:
        raise ImageError(
            name, "undecodable", f"not a PNG, JPEG or DICOM file (starts with "
            f"{starts_with(data)})")
    return decode_gray(data, name, drop_rgba=drop_rgba, max_pixels=max_pixels)


def pad_to_square(image):
    """Centred zero padding to a square (no content lost); returns (image, padded)."""
    height, width = image.shape[:2]
    if height == width:
        return image, False
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    out[top:top + height, left:left + width] = image
    return out, True


def resize(image, size):
    """uint8 H×W -> uint8 size×size, antialiased.

    PIL's BILINEAR scales its triangle filter with the reduction factor (antialiasing) and
    samples at pixel centres, which is what tf.image.resize(method="bilinear",
    antialias=True) computes. reducing_gap=None keeps PIL from a box pre-reduction that TF
    does not do. PIL rounds to uint8 between its horizontal and vertical passes, TF does not.
    Measured against TF's output rounded to uint8 (|difference| in gray levels, max / mean),
    on 1024² synthetic films / uniform noise:
      1024->224: 1 / 0.09 and 1 / 0.09      1024->64: 1 / 0.06 and 1 / 0.05
      64->224 (upscaling): 1 / 0.11 and 1 / 0.22
    TF's other antialiased methods match PIL BILINEAR far worse at 1024->224: "area" max 12
    (films) and 32 (noise), "bicubic" 11 / 13, "lanczos3" 17 / 21.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"resize expects a uint8 H×W array, got {image.dtype} {image.shape}")
    if image.shape == (size, size):
        return image.copy()
    img = Image.fromarray(image)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))


def preprocess(data, name, size, *, drop_rgba=False, max_pixels=MAX_PIXELS):
    """Bytes -> (uint8 size×size×1, conversions): decode_any, pad_to_square ("padded"), resize.

    Peak memory is a few times `max_pixels` bytes at most, whatever the header declares.
    """
    gray, conversions = decode_any(data, name, drop_rgba=drop_rgba, max_pixels=max_pixels)
    gray, padded = pad_to_square(gray)
    if padded:
        conversions = conversions + ["padded"]
    return resize(gray, size)[:, :, None], conversions
