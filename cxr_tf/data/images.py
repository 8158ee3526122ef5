"""One image from bytes to the model's input: decode to uint8 gray, pad to square, resize.

PNG (8/16-bit gray, palette, RGB, RGBA, gray+alpha), JPEG and DICOM all end as a uint8 H×W
array plus the list of conversions applied, so the prepare report can count them. Every
failure is an `ImageError` that names the file and the reason; nothing here knows about labels.

The exported SavedModel repeats `preprocess` inside the TF graph (`tf.io.decode_image` -> gray
-> centred zero pad -> `tf.image.resize(method="bilinear", antialias=True)` -> round to uint8),
so `resize` must stay numerically close to that op: tests/test_images.py asserts the bound.
"""

import io
import struct

import numpy as np
from PIL import Image

# A chest film is at most ~3000×3000 = 9 MP. Anything declaring 50 MP is a corrupt header or a
# decompression bomb (a tiny file inflating to gigabytes), so it is refused before decoding.
MAX_PIXELS = 50_000_000

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
_DICOM_MAGIC_AT = 128  # "DICM" follows the 128-byte preamble of a DICOM Part 10 file
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_COLOUR_MODES = {"RGB": "rgb", "CMYK": "rgb", "YCbCr": "rgb", "RGBA": "rgba", "LA": "rgba"}


class ImageError(ValueError):
    """An image that cannot be used; `reason` is the prepare report's skip key.

    reason: "undecodable", "too_large" or "dropped_rgba". str(e) is "NAME: detail".
    """

    def __init__(self, name, reason, detail):
        self.name = name
        self.reason = reason
        self.detail = detail
        super().__init__(f"{name}: {detail}")

    def __reduce__(self):  # picklable, so worker processes can send it back to the parent
        return type(self), (self.name, self.reason, self.detail)


def _format(data):
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_SOI):
        return "JPEG"
    if data[_DICOM_MAGIC_AT:_DICOM_MAGIC_AT + 4] == b"DICM":
        return "DICOM"
    return None


def probe_size(data):
    """(width, height) read from the PNG IHDR or JPEG SOF header, without decoding pixels.

    None when the bytes are neither, or the header is cut off before the size.
    """
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return struct.unpack(">II", data[16:24])
    if not data.startswith(JPEG_SOI):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            pos += 2
            continue
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return None


def _check_size(name, width, height):
    if width * height > MAX_PIXELS:
        raise ImageError(
            name, "too_large",
            f"declares {width}x{height} = {width * height:,} pixels, "
            f"over the {MAX_PIXELS:,} limit",
        )


def _png_chunks(name, data):
    """Walks the chunk headers (cheap: no CRC or zlib work) and returns the sBIT value or None.

    PIL decodes lazily and may accept a file that ends early, so truncation is found here, from
    the chunk lengths, with the byte counts a user can compare against the file on disk.
    """
    pos, sbit = 8, None
    while True:
        if pos + 8 > len(data):
            raise ImageError(
                name, "undecodable", f"PNG truncated (read {len(data):,} bytes, no IEND chunk)"
            )
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ImageError(
                name, "undecodable",
                f"PNG truncated (read {len(data):,} of at least {end:,} bytes)",
            )
        if kind == b"sBIT" and length >= 1:
            sbit = data[pos + 8]
        elif kind == b"IEND":
            return sbit
        pos = end


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
    scaled = np.rint(array.astype(np.float32) * np.float32(255.0 / (2**bits - 1)))
    return np.clip(scaled, 0, 255).astype(np.uint8)


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


def decode_gray(data, name, *, drop_rgba=False):
    """PNG or JPEG bytes -> (uint8 H×W, conversions from {"gray16","palette","rgb","rgba"}).

    "rgba" means an alpha channel was dropped (RGBA, or gray+alpha). With drop_rgba=True an
    RGB(A) image raises ImageError("dropped_rgba"), as the paper skipped them. The declared
    size is checked against MAX_PIXELS before any pixel is decoded.
    """
    data = bytes(data)
    if not data:
        raise ImageError(name, "undecodable", "empty file (0 bytes)")
    fmt = _format(data)
    if fmt not in ("PNG", "JPEG"):
        raise ImageError(name, "undecodable", f"not a PNG or JPEG file (starts with {data[:4]!r})")
    size = probe_size(data)
    if size is None:
        raise ImageError(name, "undecodable", f"{fmt} header truncated or corrupt "
                         f"(no image size in {len(data):,} bytes)")
    _check_size(name, *size)
    sbit = _png_chunks(name, data) if fmt == "PNG" else None
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            if drop_rgba and img.mode in ("RGB", "RGBA"):
                raise ImageError(name, "dropped_rgba", f"{img.mode} image dropped (--drop_rgba)")
            _check_size(name, *img.size)
            img.load()  # PIL is lazy: force the full decode here so corrupt data fails here
            return _to_gray(img, sbit, name)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error,
            Image.DecompressionBombError) as e:
        kind = "truncated" if "truncated" in str(e) else "undecodable"
        raise ImageError(name, "undecodable", f"{fmt} {kind} ({e})") from e


def _voi_range(ds):
    """The (low, high) output range of the dataset's VOI transform, to map it onto 0..255."""
    from pydicom.pixels import apply_voi_lut

    if ds.get("VOILUTSequence"):
        n, first = ds.VOILUTSequence[0].LUTDescriptor[:2]
        out = apply_voi_lut(np.arange(first, first + (n or 2**16)), ds)
    else:  # windowing maps everything below/above the window onto its fixed output range
        out = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
    return float(np.min(out)), float(np.max(out))


def decode_dicom(data, name):
    """DICOM bytes -> (uint8 H×W, ["dicom"] plus "monochrome1" when inverted).

    Applies the modality LUT (rescale slope/intercept), then the VOI LUT or window the file
    asks for, scaling that window onto 0..255; without one, the image's own min..max. A
    MONOCHROME1 image (bright = air) is inverted so that bone is bright like every other input.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(bytes(data)))
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    except (InvalidDicomError, OSError, ValueError, EOFError, struct.error) as e:
        raise ImageError(name, "undecodable", f"DICOM header undecodable ({e})") from e
    _check_size(name, columns, rows)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(name, "undecodable", f"DICOM {photometric or 'without a photometric'}"
                         " image, expected MONOCHROME1 or MONOCHROME2")
    try:
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types: missing codec, bad length, ...
        raise ImageError(name, "undecodable", f"DICOM pixel data undecodable ({e})") from e
    if pixels.ndim != 2:
        raise ImageError(name, "undecodable", f"DICOM pixel data has shape {pixels.shape}, "
                         "expected one grayscale frame")
    values = apply_modality_lut(pixels, ds)
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        if ds.get("VOILUTSequence") and values.dtype.kind == "f":
            values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
        low, high = _voi_range(ds)
        values = apply_voi_lut(values, ds).astype(np.float64)
    else:
        low, high = float(values.min()), float(values.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    gray = np.clip(np.rint((values - low) * scale), 0, 255).astype(np.uint8)
    conversions = ["dicom"]
    if photometric == "MONOCHROME1":
        gray = 255 - gray
        conversions.append("monochrome1")
    return gray, conversions


def decode_any(data, name, *, drop_rgba=False):
    """Dispatches on the magic bytes (PNG signature, JPEG SOI, "DICM" at offset 128)."""
    data = bytes(data)
    if not data:
        raise ImageError(name, "undecodable", "empty file (0 bytes)")
    fmt = _format(data)
    if fmt == "DICOM":
        return decode_dicom(data, name)
    if fmt is None:
        raise ImageError(
            name, "undecodable", f"not a PNG, JPEG or DICOM file (starts with {data[:4]!r})"
        )
    return decode_gray(data, name, drop_rgba=drop_rgba)


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


def preprocess(data, name, size, *, drop_rgba=False):
    """Bytes -> (uint8 size×size×1, conversions): decode_any, pad_to_square ("padded"), resize."""
    gray, conversions = decode_any(data, name, drop_rgba=drop_rgba)
    gray, padded = pad_to_square(gray)
    if padded:
        conversions = conversions + ["padded"]
    return resize(gray, size)[:, :, None], conversions
