"""Encoded image files as bytes, for tests and tools: PNG and JPEG through PIL, PNGs written
chunk by chunk (any header, pixel data that ends early, gigapixel bombs in under 1 MB) or
damaged (a wrong CRC, another zlib stream), and DICOM Part 10 files through pydicom.

    film = np.zeros((30, 40), np.uint8)
    image_bytes.png(film), image_bytes.jpeg(film, quality=90)
    image_bytes.png_from(40000, 1249, rows=4)  # declares 40000x1249, holds 4 rows of pixels
    image_bytes.dicom(film.astype(np.uint16), bits_stored=12, WindowCenter=40, WindowWidth=400)
"""

import io
import struct
import zlib

from PIL import Image

from cxr_tf.data.image_header import PNG_COLOUR, PNG_SIGNATURE

# The SOP class of the files built here: Digital X-Ray Image Storage - For Presentation.
DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"
_IHDR_END = 33  # the signature (8 bytes), then IHDR: length 4, type 4, data 13, CRC 4


def encode(image, fmt="PNG", **params):
    """A numpy array (H×W gray, H×W×3 RGB, H×W×4 RGBA; uint8, or uint16 for 16-bit PNG) or a
    PIL image as `fmt` bytes; `params` go to PIL's `save` (quality=, compress_level=, ...)."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def png(image, **params):
    """`encode` as PNG."""
    return encode(image, "PNG", **params)


def jpeg(image, quality=95, **params):
    """`encode` as JPEG, at `quality`."""
    return encode(image, "JPEG", quality=quality, **params)


def chunk(kind, body):
    """One PNG chunk: its length, type (4 bytes, e.g. b"sBIT"), data and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def insert_after_ihdr(data, kind, body):
    """The PNG `data` with a `kind` chunk right after IHDR, where sBIT and the other chunks
    that describe the pixels belong."""
    return data[:_IHDR_END] + chunk(kind, body) + data[_IHDR_END:]


def chunk_spans(data):
    """[(type, start, end)] of the PNG's chunks, walked by their lengths (end: past the CRC)."""
    pos, spans = 8, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        spans.append((kind, pos, pos + 12 + length))
        pos += 12 + length
    return spans


def with_bad_crc(data, kind):
    """The PNG with the CRC of its first `kind` chunk wrong (its last byte changed)."""
    _, _, end = next(span for span in chunk_spans(data) if span[0] == kind)
    return data[:end - 1] + bytes([data[end - 1] ^ 0x01]) + data[end:]


def with_idat(data, body):
    """The PNG with its IDAT chunks replaced by one holding `body` (a zlib stream, whole or
    damaged), its CRC right."""
    spans = [span for span in chunk_spans(data) if span[0] == b"IDAT"]
    return data[:spans[0][1]] + chunk(b"IDAT", body) + data[spans[-1][2]:]


def idat_stream(data):
    """The zlib stream a PNG's IDAT chunks hold, joined."""
    return b"".join(data[start + 8:end - 4] for kind, start, end in chunk_spans(data)
                    if kind == b"IDAT")


def png_from(width, height, raw=None, *, depth=8, colour=0, interlace=0, before=b"",
             rows=None):
    """A PNG written chunk by chunk, its IHDR saying whatever the arguments say.

    raw: the filtered rows (per row a filter byte, then the packed samples), deflated at
        level 9. None: rows of zeros (filter 0), deflated as a stream: zeros deflate about
        1000:1, so the pixels of gigapixel images fit in under 1 MB.
    rows: with raw=None, how many zero rows (at most `height`, the default): fewer gives
        pixel data that ends early, which leaves the header alone to decide a refusal.
    before: whole chunks written ahead of IHDR (which must come first).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    if raw is not None:
        idat = zlib.compress(raw, 9)
    else:
        count = height if rows is None else min(rows, height)
        idat = _zero_rows(width, count, depth, colour)
    return (PNG_SIGNATURE + before + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _zero_rows(width, count, depth, colour):
    """`count` filtered rows of zeros, deflated at level 9 in slices of at most 16 MB."""
    samples = PNG_COLOUR.get(colour, (1, 1))[0]  # an invalid colour type: one sample a pixel
    row = b"\0" * (1 + (width * samples * depth + 7) // 8)
    deflate, parts, written = zlib.compressobj(9), [], 0
    while written < count:
        step = min(count - written, max(1, (1 << 24) // len(row)))
        parts.append(deflate.compress(row * step))
        written += step
    parts.append(deflate.flush())
    return b"".join(parts)


def dicom(pixels=None, photometric="MONOCHROME2", *, bits_stored=None, syntax=None,
          **attributes):
    """A DICOM Part 10 file (digital X-ray, one grayscale frame) as bytes.

    pixels: the frame, a 2-D uint8 or uint16 array: Rows, Columns and BitsAllocated come from
        its shape and dtype, BitsStored is `bits_stored` (default: all allocated bits), HighBit
        the bit below. None: `attributes` give them, PixelData too, already in `syntax`.
    syntax: the transfer syntax (default explicit VR little endian). With `pixels` and an
        encapsulated syntax, pydicom's own encoder compresses them (RLE Lossless); a deflated
        syntax is applied when the file is written.
    attributes: further data elements by keyword (RescaleSlope=2, WindowCenter=40, ...), set
        after the ones above, so they may override them: Rows=50000 declares more rows than
        the pixel data holds.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    syntax = UID(syntax or ExplicitVRLittleEndian)
    compress = pixels is not None and syntax.is_encapsulated
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_XRAY
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if compress else syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DIGITAL_XRAY, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, photometric, 0
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated = 8 * pixels.dtype.itemsize
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if pixels is not None:
        ds.PixelData = pixels.tobytes()
    if compress:
        ds.compress(syntax, encoding_plugin="pydicom")
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
