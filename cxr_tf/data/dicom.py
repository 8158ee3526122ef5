"""DICOM bytes -> uint8 gray, as `cxr_tf.data.images` does for PNG and JPEG (which calls this).

Applies the modality LUT (rescale slope/intercept), then the VOI LUT or window the file asks
for, scaling that window onto 0..255; without one, the image's own min..max. A MONOCHROME1
image (bright = air) is inverted so that bone is bright like every other input.

Real archives hold files that break this: a window width of 0 or less (scanners write these),
a VOI LUT whose data does not match its descriptor, text where a number belongs, compressed
pixel data without an installed decoder, a deflated dataset that inflates to gigabytes. Each
is either a fallback counted in the conversions ("voi_fallback": the image's own range) or an
`ImageError` naming the file and the reason; none lets another exception out.

Memory stays bounded: the size, frames and bits come from the header and are checked (with
`image_header.check_size`) before the pixels are decoded, the embedded JPEG / JPEG 2000 header
of a compressed frame is checked against Rows and Columns, and the float64 LUT arithmetic runs
over blocks of rows, so it costs megabytes rather than 8 bytes a pixel.
"""

import io
import struct
import warnings
import zlib
from collections.abc import Sequence

import numpy as np

from cxr_tf.data import image_header
from cxr_tf.data.image_header import Header, ImageError

_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_BLOCK_PIXELS = 1 << 20  # pixels converted at a time: float64 temporaries of ~8 MB
_J2K_CODESTREAM = b"\xff\x4f\xff\x51"  # SOC then SIZ, which carries the size


def decode(data, name, *, max_pixels=image_header.MAX_PIXELS):
    """DICOM bytes -> (uint8 H×W, ["dicom"] plus "monochrome1" when inverted and
    "voi_fallback" when the file's window or VOI LUT is unusable)."""
    ds = _read(bytes(data), name, max_pixels)
    rows, columns = _integer(ds, "Rows", name), _integer(ds, "Columns", name)
    bits = _integer(ds, "BitsAllocated", name)
    if rows <= 0 or columns <= 0 or bits <= 0:
        raise ImageError(name, "undecodable", f"DICOM declares {columns}x{rows} pixels of "
                         f"{bits} bits")
    image_header.check_size(name, Header(columns, rows, 1, (bits + 7) // 8), max_pixels)
    frames = _integer(ds, "NumberOfFrames", name, default=1)
    if frames != 1:
        raise ImageError(name, "undecodable", f"DICOM holds {frames} frames, expected one")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(name, "undecodable", f"DICOM {photometric or 'without a photometric'}"
                         " image, expected MONOCHROME1 or MONOCHROME2")
    _check_compressed(ds, name, columns, rows, max_pixels)
    try:
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types: missing codec, bad length, ...
        raise ImageError(name, "undecodable",
                         f"DICOM pixel data undecodable ({_reason(e)})") from e
    if pixels.shape != (rows, columns):
        raise ImageError(name, "undecodable", f"DICOM pixel data has shape {pixels.shape}, "
                         "expected one grayscale frame")
    gray, conversions = _to_gray(ds, pixels, name)
    if photometric == "MONOCHROME1":
        np.subtract(255, gray, out=gray)
        conversions.append("monochrome1")
    return gray, conversions


def without_preamble(data):
    """`data` readable as DICOM when it is a DICOM dataset without the 128-byte preamble,
    else None.

    A Part 10 file starts with a 128-byte preamble and "DICM" (`image_header.image_format`).
    Some exporters drop the preamble, keeping "DICM" (given back with a zero preamble) or not
    (a bare dataset, which `decode` reads as pydicom's forced read does). Bytes are taken for
    a bare dataset only when that forced read finds an image in them (Rows, Columns,
    BitsAllocated), so a text file or noise is still "not an image".
    """
    import pydicom

    data = bytes(data)
    if data.startswith(image_header.DICOM_MAGIC):
        return bytes(image_header.DICOM_MAGIC_AT) + data
    try:
        with warnings.catch_warnings():  # a forced read of noise warns about every element
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            found = all(isinstance(ds.get(k), int) for k in ("Rows", "Columns",
                                                              "BitsAllocated"))
    except Exception:  # noqa: BLE001 - whatever a forced read of other bytes raises: not DICOM
        return None
    return data if found else None


def _read(data, name, max_pixels):
    import pydicom

    # Without "DICM" at 128 only a bare dataset reaches here (`without_preamble`).
    force = image_header.image_format(data) != "DICOM"
    try:
        _check_deflated(data, name, max_pixels, force)
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
        if force:
            _set_syntax_from_encoding(ds)
        # pydicom converts each element on first access, where a bad value (an unknown VR,
        # bytes that are no number) raises anything: convert them all here, once.
        ds.walk(lambda *_: None)
        return ds
    except ImageError:
        raise
    except Exception as e:  # a corrupt header raises InvalidDicomError, struct.error, ...
        raise ImageError(name, "undecodable",
                         f"DICOM header undecodable ({_reason(e)})") from e


def _set_syntax_from_encoding(ds):
    """A bare dataset has no file meta to name its transfer syntax, which pydicom needs to
    decode pixels: the encoding its forced read found (implicit or explicit VR, byte order)
    names an uncompressed one. Compressed pixel data then fails to decode, with its reason."""
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    ds.file_meta.TransferSyntaxUID = (uid.ImplicitVRLittleEndian if implicit else
                                      uid.ExplicitVRLittleEndian if little else
                                      uid.ExplicitVRBigEndian)


def _reason(error):
    """pydicom's message, first line only: its tag wrapper appends a whole traceback."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check_deflated(data, name, max_pixels, force=False):
    """A deflated dataset is inflated whole by pydicom: measure it first, in slices."""
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import UID

    fp = io.BytesIO(data)
    read_preamble(fp, force)
    syntax = _read_file_meta_info(fp).get("TransferSyntaxUID")
    if not syntax or not UID(syntax).is_deflated:  # a bare dataset has no file meta
        return
    inflater, part, total, limit = zlib.decompressobj(-zlib.MAX_WBITS), data[fp.tell():], 0, \
        image_header.max_file_bytes(max_pixels)
    while part and total <= limit:
        total += len(inflater.decompress(part, 1 << 22))
        part = inflater.unconsumed_tail
    if total > limit:
        raise ImageError(name, "too_large", f"DICOM deflated dataset inflates to over "
                         f"{limit:,} bytes")


def _value(ds, keyword, name):
    try:  # pydicom converts raw element values on first access, and may fail there
        return ds.get(keyword)
    except Exception as e:
        raise ImageError(name, "undecodable",
                         f"DICOM {keyword} unreadable ({_reason(e)})") from e


def _integer(ds, keyword, name, default=0):
    value = _value(ds, keyword, name)
    if value is None or value == "":
        return default
    if _many(value):
        raise ImageError(name, "undecodable", f"DICOM {keyword} has {len(value)} values "
                         f"({list(value)[:4]}), expected one")
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise ImageError(name, "undecodable", f"DICOM {keyword} {value!r} is not an "
                         "integer") from e


def _many(value):
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _number(ds, keyword, name):
    value = _value(ds, keyword, name)
    if _many(value):  # a window may list several (centre, width) pairs: the first, as pydicom
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError) as e:
        raise ImageError(name, "undecodable", f"DICOM {keyword} {value!r} is not a "
                         "number") from e
    if not np.isfinite(number):
        raise ImageError(name, "undecodable", f"DICOM {keyword} {value!r} is not finite")
    return number


def _check_compressed(ds, name, columns, rows, max_pixels):
    """Compressed pixel data: an installed decoder, and an embedded size equal to the header's
    (the decoder allocates what the embedded JPEG / JPEG 2000 header declares)."""
    from pydicom.encaps import generate_frames
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise ImageError(name, "undecodable", f"no decoder for {syntax.name}")
    if not syntax.is_encapsulated or syntax == "1.2.840.10008.1.2.5":  # RLE: no inner header
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as e:
        raise ImageError(name, "undecodable", f"DICOM pixel data fragments unreadable "
                         f"({_reason(e)})") from e
    if frame.startswith(image_header.JPEG_SOI):
        header = image_header.read_header(frame, name)
    elif frame.startswith(_J2K_CODESTREAM) and len(frame) >= 44:
        x, y, x0, y0 = struct.unpack(">4I", frame[8:24])
        header = Header(x - x0, y - y0, struct.unpack(">H", frame[40:42])[0],
                        1 + (frame[42] & 0x7F) // 8)
    else:
        raise ImageError(name, "undecodable", f"DICOM {syntax.name} frame without a JPEG or "
                         f"JPEG 2000 header (starts with {image_header.starts_with(frame)})")
    image_header.check_size(name, header, max_pixels)
    if header[:2] != (columns, rows):
        raise ImageError(name, "undecodable", f"DICOM frame is {header.width}x"
                         f"{header.height}, the header says {columns}x{rows}")


def _voi(ds, name):
    """The VOI transform the file asks for, as pydicom's `apply_voi_lut` picks it:
    (transform, is_lut, low, high) with the output range; "fallback" when it is unusable;
    None when there is none."""
    from pydicom.pixels import apply_voi, apply_windowing

    sequence = _value(ds, "VOILUTSequence", name)
    if sequence and sequence[0].get("LUTDescriptor") and sequence[0].get("LUTData") is not None:
        transform, is_lut = apply_voi, True
    elif _value(ds, "WindowCenter", name) is not None and \
            _value(ds, "WindowWidth", name) is not None:
        function = str(_value(ds, "VOILUTFunction", name) or "LINEAR").strip().upper()
        if function not in _VOI_FUNCTIONS:
            raise ImageError(name, "undecodable", f"DICOM VOILUTFunction {function!r} unknown "
                             f"(expected one of {', '.join(_VOI_FUNCTIONS)})")
        _number(ds, "WindowCenter", name), _number(ds, "WindowWidth", name)
        transform, is_lut = apply_windowing, False
    else:
        return None
    try:  # a width <= 0, a LUT shorter than its descriptor, ...: pydicom raises
        if is_lut:  # every input the LUT maps
            n, first = sequence[0].LUTDescriptor[:2]
            probe = np.arange(first, first + (n or 2**16))
        else:  # windowing maps everything below/above the window onto its fixed output range
            probe = np.array([-np.inf, np.inf])
        with np.errstate(all="ignore"):
            out = transform(probe, ds)
        low, high = float(np.min(out)), float(np.max(out))
    except Exception:
        return "fallback"
    return transform, is_lut, low, high


def _to_gray(ds, pixels, name):
    """Modality LUT, VOI transform and scaling onto 0..255, one block of rows at a time."""
    from pydicom.pixels import apply_modality_lut

    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        _number(ds, "RescaleSlope", name), _number(ds, "RescaleIntercept", name)
    conversions, voi = ["dicom"], _voi(ds, name)
    if voi == "fallback":
        conversions.append("voi_fallback")
        voi = None
    step = max(1, _BLOCK_PIXELS // pixels.shape[1])
    blocks = [slice(start, start + step) for start in range(0, pixels.shape[0], step)]

    def values(block):
        try:
            out = apply_modality_lut(pixels[block], ds)
        except Exception as e:
            raise ImageError(name, "undecodable",
                             f"DICOM modality LUT unusable ({_reason(e)})") from e
        if voi is None:
            return out
        if voi[1] and out.dtype.kind == "f":
            out = np.rint(out).astype(np.int64)  # a LUT is indexed by integers
        return voi[0](out, ds)

    if voi is None:  # the image's own range: a first pass for its min and max
        ranges = [(float(np.min(v)), float(np.max(v))) for v in map(values, blocks)]
        low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    else:
        low, high = voi[2:]
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ImageError(name, "undecodable", f"DICOM values are not finite ({low}..{high})")
    scale = 255.0 / (high - low) if high > low else 0.0
    gray = np.empty(pixels.shape, np.uint8)
    for block in blocks:
        scaled = values(block).astype(np.float64)
        scaled -= low
        scaled *= scale
        gray[block] = np.clip(np.rint(scaled), 0, 255)
    return gray, conversions
