"""Tests for cxr_tf.data.images: every bad input with its message, every conversion with its pixels,
pad/resize, and the PIL-vs-TF resize parity that train/serve agreement rests on."""

import io
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr_tf.data import image_header, images
from cxr_tf.data.image_header import ImageError
from cxr_tf.testing import image_bytes
from cxr_tf.testing.image_bytes import chunk, insert_after_ihdr, jpeg, png, png_from


def ramp(height=6, width=8):
    return (np.arange(height * width, dtype=np.uint8).reshape(height, width) * 5)


def raises(data, reason, message, **kwargs):
    with pytest.raises(ImageError) as info:
        images.decode_any(data, "x.png", **kwargs)
    assert info.value.reason == reason
    assert info.value.name == "x.png"
    assert str(info.value) == message
    return info.value


# ---- bad input


def test_empty_file():
    raises(b"", "undecodable", "x.png: empty file (0 bytes)")
    with pytest.raises(ImageError, match=r"^x.png: empty file \(0 bytes\)$"):
        images.decode_gray(b"", "x.png")


def test_not_an_image():
    # Raw bytes appear in a message as hex only (text could be anything, even invalid UTF-8).
    raises(b"GIF89a\x01\x00\x01\x00", "undecodable",
           "x.png: not a PNG, JPEG or DICOM file (starts with 47 49 46 38 39 61 01 00)")
    raises(b"\xff\xfe\x80<!DOCTYPE", "undecodable",
           "x.png: not a PNG, JPEG or DICOM file (starts with ff fe 80 3c 21 44 4f 43)")


def test_truncated_inside_a_chunk_names_both_byte_counts():
    data = png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start:start + 4])
    cut = data[:start + 100]
    raises(cut, "undecodable",
           f"x.png: PNG truncated (read {len(cut):,} of at least {start + 12 + length:,} bytes)")


def test_truncated_between_chunks():
    data = png(ramp())
    cut = data[:data.index(b"IEND") - 4]
    raises(cut, "undecodable", f"x.png: PNG truncated (read {len(cut):,} bytes, no IEND chunk)")


def test_truncated_header():
    raises(png(ramp())[:20], "undecodable", "x.png: PNG header truncated (20 bytes, fewer than 33)")


def test_corrupt_pixel_data_is_caught_by_forcing_the_decode():
    data = bytearray(png(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)))
    start = data.index(b"IDAT") + 4
    data[start + 2:start + 200] = b"\xff" * 198  # garbage zlib stream, lengths intact
    with pytest.raises(ImageError) as info:
        images.decode_any(bytes(data), "x.png")
    assert info.value.reason == "undecodable"
    assert str(info.value).startswith("x.png: PNG ")


def test_truncated_jpeg():
    data = jpeg(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8))
    with pytest.raises(ImageError) as info:
        images.decode_any(data[:len(data) // 2], "y.jpg")
    assert info.value.reason == "undecodable"
    assert str(info.value).startswith("y.jpg: JPEG truncated (")


def test_declared_size_over_the_limit_is_refused_before_decoding(monkeypatch):
    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 0, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 40000)) + chunk(b"IEND", b""))
    assert len(bomb) < 200
    assert image_header.read_header(bomb, "x.png") == (10000, 10000, 1, 1)

    def never(*args, **kwargs):
        raise AssertionError("PIL must not open a file over MAX_PIXELS")

    monkeypatch.setattr(Image, "open", never)
    raises(bomb, "too_large",
           "x.png: declares 10000x10000 = 100,000,000 pixels, over the 50,000,000 limit")


def test_jpeg_size_is_read_from_its_sof_header():
    data = jpeg(ramp(30, 40))
    assert image_header.read_header(data, "x.jpg") == (40, 30, 1, 1)
    colour = jpeg(np.zeros((30, 40, 3), np.uint8))
    assert image_header.read_header(colour, "x.jpg") == (40, 30, 3, 1)
    sof = data.index(b"\xff\xc0")
    huge = data[:sof + 5] + struct.pack(">HH", 8000, 8000) + data[sof + 9:]
    raises(huge, "too_large",
           "x.png: declares 8000x8000 = 64,000,000 pixels, over the 50,000,000 limit")
    with pytest.raises(ImageError, match=r"^x: not a PNG or JPEG file \(starts with 6e 6f"):
        image_header.read_header(b"not an image", "x")
    raises(data[:sof], "undecodable",
           f"x.png: JPEG header truncated or corrupt (no frame header in {sof:,} bytes)")


def test_image_error_survives_pickling_for_worker_processes():
    error = pickle.loads(pickle.dumps(ImageError("a.png", "too_large", "declares 1x1")))
    assert (error.name, error.reason, str(error)) == ("a.png", "too_large", "a.png: declares 1x1")


def never_decoded(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("PIL must not open a file over the limit")

    monkeypatch.setattr(Image, "open", never)


def test_the_padded_square_counts_not_width_times_height(monkeypatch):
    # Issue 10: a 157-byte 1x40000 PNG cost +1.6 GB, because the film is padded to a square.
    narrow = png_from(1, 40000, b"\0\0" * 40000)
    assert len(narrow) == 157
    never_decoded(monkeypatch)
    raises(narrow, "too_large", "x.png: declares 1x40000, padded to 40000x40000 = "
           "1,600,000,000 pixels, over the 50,000,000 limit")
    wide = png_from(200000, 1, b"\0" * 200001)
    raises(wide, "too_large", "x.png: declares 200000x1, padded to 200000x200000 = "
           "40,000,000,000 pixels, over the 50,000,000 limit")
    raises(png_from(40000, 1249, b""), "too_large", "x.png: declares 40000x1249, padded to "
           "40000x40000 = 1,600,000,000 pixels, over the 50,000,000 limit")
    sof_at = jpeg(ramp(30, 40)).index(b"\xff\xc0")
    data = jpeg(ramp(30, 40))
    long_jpeg = data[:sof_at + 5] + struct.pack(">HH", 700, 65500) + data[sof_at + 9:]
    raises(long_jpeg, "too_large", "x.png: declares 65500x700, padded to 65500x65500 = "
           "4,290,250,000 pixels, over the 50,000,000 limit")


def test_the_decoded_sample_type_counts(monkeypatch):
    never_decoded(monkeypatch)
    # 4000x4000 is a 16 MP square, but 16-bit RGBA decodes to 8 bytes a pixel.
    raises(png_from(4000, 4000, b"", depth=16, colour=6), "too_large",
           "x.png: declares 4000x4000 with 8 bytes a pixel = 128,000,000 bytes decoded, "
           "over the 50,000,000 limit")
    # A palette counts 4 channels: TensorFlow's decoder expands it to RGBA.
    raises(png_from(4000, 4000, b"", depth=8, colour=3), "too_large",
           "x.png: declares 4000x4000 with 4 bytes a pixel = 64,000,000 bytes decoded, "
           "over the 50,000,000 limit")


def test_max_pixels_is_the_one_limit():
    data = png(ramp(10, 20))  # a 20x20 square once padded: 400 pixels
    raises(data, "too_large", "x.png: declares 20x10, padded to 20x20 = 400 pixels, over the "
           "399 limit", max_pixels=399)
    assert images.decode_any(data, "x.png", max_pixels=400)[0].shape == (10, 20)
    out, _ = images.preprocess(data, "x.png", 8, max_pixels=400)
    assert out.shape == (8, 8, 1)


def test_ihdr_must_be_the_first_chunk(monkeypatch):
    # Issue 10: an ancillary chunk before IHDR hid 23000² gray and 10000² RGBA16 from the guard.
    text = chunk(b"tEXt", b"Comment\0hello")
    never_decoded(monkeypatch)
    for width, depth, colour in ((23000, 8, 0), (10000, 16, 6)):
        raises(png_from(width, width, b"", depth=depth, colour=colour, before=text),
               "undecodable", "x.png: PNG does not start with a 13-byte IHDR chunk "
               "(found 00 00 00 0d 74 45 58 74)")
    raises(png_from(8, 8, b"", depth=8, colour=5), "undecodable",
           "x.png: PNG IHDR invalid (8x8, colour type 5, bit depth 8)")
    raises(png_from(0, 8, b""), "undecodable",
           "x.png: PNG IHDR invalid (0x8, colour type 0, bit depth 8)")


def test_pixel_data_that_ends_early_is_refused_not_padded_with_black():
    # Issue 10: PIL filled the missing rows with black (96 % of the image) and accepted it.
    rows = b"".join(b"\0" + bytes([200] * 64) for _ in range(64))
    short = png_from(64, 64, rows[:65 * 3])
    raises(short, "undecodable", "x.png: PNG pixel data ends early (inflates to 195 of 4,160 "
           "bytes)")
    assert images.decode_any(png_from(64, 64, rows), "x.png")[0].min() == 200
    assert images.decode_any(png_from(64, 64, rows + rows), "x.png")[0].shape == (64, 64)


def adam7(image):
    """The raw (filter type 0) rows of an 8-bit gray image interlaced with Adam7."""
    raw = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                           (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = image[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.tobytes() for row in sub)
    return raw


def test_interlaced_png_size_is_counted_pass_by_pass():
    image = ramp(8, 8)
    raw = adam7(image)
    assert len(raw) == 79  # passes of 1x1, 1x1, 2x1, 2x2, 4x2, 4x4, 8x4 pixels + filter bytes
    gray, _ = images.decode_any(png_from(8, 8, raw, interlace=1), "x.png")
    np.testing.assert_array_equal(gray, image)
    raises(png_from(8, 8, raw[:-9], interlace=1), "undecodable",
           "x.png: PNG pixel data ends early (inflates to 70 of 79 bytes)")


def test_trailing_bytes_after_iend_are_ignored_and_sbit_after_idat_too():
    data = png(ramp())
    gray, _ = images.decode_any(data + b"\0" * 5000, "x.png")
    np.testing.assert_array_equal(gray, ramp())
    values = np.array([[0, 1000, 4095]], dtype=np.uint16)  # 12 bits used -> 4095 is 255
    late = png(Image.fromarray(values))
    late = late[:-12] + chunk(b"sBIT", b"\x10") + late[-12:]  # after IDAT: not an sBIT
    assert images.decode_any(late, "x.png")[0].tolist() == [[0, 62, 255]]


# ---- the PNG rules (cxr_tf.data.png_chunks): libpng's, which the SavedModel decodes with


def test_a_wrong_crc_refuses_a_critical_chunk_and_is_ignored_on_an_ancillary_one():
    data = png(ramp())
    for kind in (b"IHDR", b"IDAT", b"IEND"):
        raises(image_bytes.with_bad_crc(data, kind), "undecodable",
               f"x.png: PNG {kind.decode()} chunk corrupt (CRC mismatch)")
    palette = png(Image.fromarray(ramp()).convert("P"))
    raises(image_bytes.with_bad_crc(palette, b"PLTE"), "undecodable",
           "x.png: PNG PLTE chunk corrupt (CRC mismatch)")
    # Issue: PIL refused a tEXt chunk with a wrong CRC that libpng ignores.
    text = insert_after_ihdr(data, b"tEXt", b"Comment\0film")
    np.testing.assert_array_equal(
        images.decode_any(image_bytes.with_bad_crc(text, b"tEXt"), "x.png")[0], ramp())
    # Ancillary content never decides (PIL refuses a 2-byte gAMA, libpng warns).
    np.testing.assert_array_equal(
        images.decode_any(insert_after_ihdr(data, b"gAMA", b"\0\0"), "x.png")[0], ramp())


def test_an_sbit_with_a_wrong_crc_is_not_read():
    values = png(Image.fromarray(np.array([[0, 500, 1000]], np.uint16)))
    sbit = insert_after_ihdr(values, b"sBIT", b"\x10")  # 16 bits: 1000 -> 4
    assert images.decode_any(sbit, "x.png")[0].tolist() == [[0, 2, 4]]
    # Without it, 1000 fits 10 bits: 1000 -> 249.
    assert images.decode_any(image_bytes.with_bad_crc(sbit, b"sBIT"),
                             "x.png")[0].tolist() == [[0, 125, 249]]


def test_chunk_names_and_order_follow_the_png_standard():
    data = png(ramp())
    raises(insert_after_ihdr(data, b"XYZW", b""), "undecodable",  # issue: PIL accepted it
           "x.png: PNG has an unknown critical chunk XYZW (a decoder must not guess what it "
           "means)")
    np.testing.assert_array_equal(
        images.decode_any(insert_after_ihdr(data, b"xyZW", b""), "x.png")[0], ramp())
    raises(insert_after_ihdr(data, b"ab1d", b""), "undecodable",
           "x.png: PNG chunk type 61 62 31 64 at byte 33 is not four letters (corrupt file)")
    raises(insert_after_ihdr(data, b"IHDR", data[16:29]), "undecodable",
           "x.png: PNG has a second IHDR chunk")
    raises(data[:33] + chunk(b"IEND", b""), "undecodable",
           "x.png: PNG has no IDAT chunk (no pixel data)")
    palette = png(Image.fromarray(ramp()).convert("P"))
    spans = {kind: (start, end) for kind, start, end in image_bytes.chunk_spans(palette)}
    plte = palette[slice(*spans[b"PLTE"])]
    without = palette.replace(plte, b"")
    raises(without, "undecodable", "x.png: PNG palette image without a PLTE chunk")
    raises(without[:-12] + plte + without[-12:], "undecodable",
           "x.png: PNG palette image without a PLTE chunk")
    raises(insert_after_ihdr(palette, b"PLTE", plte[8:-4]), "undecodable",
           "x.png: PNG has a second PLTE chunk")
    stream = image_bytes.idat_stream(data)
    split = (chunk(b"IDAT", stream[:20]) + chunk(b"tEXt", b"a\0b") +
             chunk(b"IDAT", stream[20:]))
    [(start, end)] = [(a, b) for kind, a, b in image_bytes.chunk_spans(data) if kind == b"IDAT"]
    raises(data[:start] + split + data[end:], "undecodable",
           "x.png: PNG IDAT chunks are not consecutive (a tEXt chunk between them)")


def test_the_zlib_stream_ends_with_its_checksum_after_the_rows():
    image = ramp()
    data = png(image)
    stream = image_bytes.idat_stream(data)
    # Issue: a wrong Adler-32 or a stream cut before it was accepted by PIL, refused by libpng.
    raises(image_bytes.with_idat(data, stream[:-1] + bytes([stream[-1] ^ 1])), "undecodable",
           "x.png: PNG pixel data corrupt (zlib checksum mismatch)")
    raises(image_bytes.with_idat(data, stream[:-4]), "undecodable",
           "x.png: PNG pixel data does not end (its zlib stream stops before its checksum)")
    raises(image_bytes.with_idat(data, b"\x78\x9d" + stream[2:]), "undecodable",
           "x.png: PNG pixel data corrupt (zlib header 78 9d)")
    # Rows past the image's: inflated to find the stream's end, their checksum not read,
    # as by libpng (tests/test_hostile.py holds serving to the same).
    raw = b"".join(b"\0" + row.tobytes() for row in image) * 2
    extra = zlib.compress(raw)
    for body in (extra, extra[:-1] + bytes([extra[-1] ^ 1])):
        np.testing.assert_array_equal(
            images.decode_any(image_bytes.with_idat(data, body), "x.png")[0], image)
    raises(image_bytes.with_idat(data, extra[:-4]), "undecodable",
           "x.png: PNG pixel data does not end (its zlib stream stops before its checksum)")


# ---- conversions


def test_plain_gray_is_returned_unchanged():
    gray, conversions = images.decode_any(png(ramp()), "x.png")
    assert conversions == []
    assert gray.dtype == np.uint8
    np.testing.assert_array_equal(gray, ramp())


def test_16bit_full_range_scales_by_257():
    values = np.array([[0, 257, 257 * 100], [257 * 200, 65535, 65535]], dtype=np.uint16)
    gray, conversions = images.decode_any(png(Image.fromarray(values)), "x.png")
    assert conversions == ["gray16"]
    np.testing.assert_array_equal(gray, [[0, 1, 100], [200, 255, 255]])


def test_16bit_with_12bit_data_scales_by_4095():
    values = np.array([[0, 2048, 4095, 1000]], dtype=np.uint16)
    gray, _ = images.decode_any(png(Image.fromarray(values)), "x.png")
    # 2048 * 255 / 4095 = 127.5 -> 128 (round half to even), 1000 * 255 / 4095 = 62.3 -> 62
    np.testing.assert_array_equal(gray, [[0, 128, 255, 62]])


def test_16bit_sbit_chunk_wins_over_the_data_range():
    values = np.array([[0, 1000, 2570]], dtype=np.uint16)
    data = insert_after_ihdr(png(Image.fromarray(values)), b"sBIT", b"\x10")  # 16 bits used
    gray, _ = images.decode_any(data, "x.png")
    np.testing.assert_array_equal(gray, [[0, 4, 10]])  # 1000 / 257 = 3.9, 2570 / 257 = 10


def test_rgb_becomes_itu_601_luma():
    colours = np.array([[[200, 100, 50], [0, 0, 255], [255, 255, 255], [10, 200, 30]]], np.uint8)
    gray, conversions = images.decode_any(png(colours), "x.png")
    assert conversions == ["rgb"]
    # 0.299 R + 0.587 G + 0.114 B: 124.2, 29.1, 255, 123.8
    np.testing.assert_array_equal(gray, [[124, 29, 255, 124]])


def test_rgba_drops_alpha_without_compositing():
    pixels = np.array([[[200, 100, 50, 0], [90, 90, 90, 128]]], np.uint8)
    gray, conversions = images.decode_any(png(pixels), "x.png")
    assert conversions == ["rgba"]
    np.testing.assert_array_equal(gray, [[124, 90]])


def test_gray_alpha_keeps_the_gray_channel():
    pixels = np.dstack([ramp(), np.full((6, 8), 7, np.uint8)])
    gray, conversions = images.decode_any(png(Image.fromarray(pixels, "LA")), "x.png")
    assert conversions == ["rgba"]
    np.testing.assert_array_equal(gray, ramp())


def test_palette_indices_map_through_the_palette_to_gray():
    img = Image.frombytes("P", (4, 1), bytes([0, 1, 2, 3]))
    img.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0, 10, 20, 30])
    gray, conversions = images.decode_any(png(img), "x.png")
    assert conversions == ["palette"]
    np.testing.assert_array_equal(gray, [[0, 255, 76, 18]])  # red: 76.2; (10,20,30): 18.2


def test_jpeg_gray_and_colour():
    flat = np.full((16, 16), 120, np.uint8)
    gray, conversions = images.decode_any(jpeg(flat), "x.jpg")
    assert conversions == [] and np.abs(gray.astype(int) - 120).max() <= 1
    colour = np.dstack([flat, flat, flat])
    gray, conversions = images.decode_any(jpeg(colour), "x.jpg")
    assert conversions == ["rgb"] and np.abs(gray.astype(int) - 120).max() <= 2


def test_drop_rgba_skips_colour_but_not_gray_or_palette():
    colour = np.zeros((4, 4, 3), np.uint8)
    raises(png(colour), "dropped_rgba", "x.png: RGB image dropped (--drop_rgba)", drop_rgba=True)
    raises(png(np.zeros((4, 4, 4), np.uint8)), "dropped_rgba",
           "x.png: RGBA image dropped (--drop_rgba)", drop_rgba=True)
    assert images.decode_any(png(ramp()), "x.png", drop_rgba=True)[1] == []
    palette = Image.frombytes("P", (2, 1), bytes([0, 1]))
    palette.putpalette([0, 0, 0, 255, 255, 255])
    assert images.decode_any(png(palette), "x.png", drop_rgba=True)[1] == ["palette"]


# ---- DICOM


def dicom(stored, photometric, *, slope=None, intercept=None, window=None, rows=None):
    """12 bits stored in 16, with this file's shorthand for the rescale, window and Rows."""
    attributes = {"Rows": rows} if rows else {}
    if slope is not None:
        attributes.update(RescaleSlope=slope, RescaleIntercept=intercept)
    if window is not None:
        attributes.update(WindowCenter=window[0], WindowWidth=window[1])
    return image_bytes.dicom(np.asarray(stored, np.uint16), photometric, bits_stored=12,
                             **attributes)


# Stored s -> value 2 s - 1024; window centre 40.5, width 401 (LINEAR: c - 0.5 = 40, w - 1 = 400)
# maps value x to ((x - 40) / 400 + 0.5) * 255: -160 -> 0, -60 -> 63.75, 40 -> 127.5, 140 ->
# 191.25, 240 -> 255, and everything outside the window to 0 or 255.
STORED = [[0, 432, 482, 532], [582, 632, 1012, 4095]]
WINDOWED = np.array([[0, 0, 64, 128], [191, 255, 255, 255]], np.uint8)


def test_dicom_monochrome2_applies_rescale_then_window():
    data = dicom(STORED, "MONOCHROME2", slope=2, intercept=-1024, window=(40.5, 401))
    gray, conversions = images.decode_any(data, "x.dcm")
    assert conversions == ["dicom"]
    np.testing.assert_array_equal(gray, WINDOWED)


def test_dicom_without_its_preamble_is_read_when_pydicom_finds_an_image_in_it():
    # Issue: a DICOM without its 128-byte preamble was refused, though pydicom's forced read
    # parses it. Without the preamble and "DICM" (a bare dataset: here its file meta group,
    # then the rest), and without the preamble only: both decode as the whole file does.
    data = dicom(STORED, "MONOCHROME2", slope=2, intercept=-1024, window=(40.5, 401))
    assert data[128:132] == b"DICM"
    for stripped in (data[132:], data[128:]):
        gray, conversions = images.decode_any(stripped, "x.dcm")
        assert conversions == ["dicom"]
        np.testing.assert_array_equal(gray, WINDOWED)
    # The dataset alone, no file meta either (implicit VR little endian, as old PACS write).
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.file_meta
    ds.preamble = None
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    assert buffer.getvalue()[:4] == b"\x08\x00\x16\x00"  # (0008,0016), no preamble
    np.testing.assert_array_equal(images.decode_any(buffer.getvalue(), "x.dcm")[0], WINDOWED)
    # A forced read finds no image in text or noise: they stay "not an image", with no warning.
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for other in (b"Patient notes: nothing to see\n" * 40, rng.bytes(4000),
                      data[132:400]):
            with pytest.raises(ImageError, match=r"^x.dcm: not a PNG, JPEG or DICOM file"):
                images.decode_any(other, "x.dcm")


def test_dicom_monochrome1_is_inverted():
    data = dicom(STORED, "MONOCHROME1", slope=2, intercept=-1024, window=(40.5, 401))
    gray, conversions = images.decode_any(data, "x.dcm")
    assert conversions == ["dicom", "monochrome1"]
    np.testing.assert_array_equal(gray, 255 - WINDOWED)


def test_dicom_without_window_uses_its_own_range():
    gray, _ = images.decode_dicom(dicom([[100, 340, 500]], "MONOCHROME2"), "x.dcm")
    np.testing.assert_array_equal(gray, [[0, 153, 255]])  # 240 / 400 * 255 = 153


def test_dicom_voi_lut_sequence_maps_through_the_lut():
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(io.BytesIO(dicom([[0, 1, 2, 3, 9]], "MONOCHROME2")))
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 16])  # 4 entries, first maps stored value 0
    item.add_new("LUTData", "US", [0, 100, 200, 4000])
    ds.VOILUTSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    gray, _ = images.decode_any(buf.getvalue(), "x.dcm")
    # LUT output 0..4000 -> 0..255: 100 -> 6.4, 200 -> 12.75; 9 is past the LUT -> last entry
    np.testing.assert_array_equal(gray, [[0, 6, 13, 255, 255]])


def test_dicom_declaring_too_many_pixels_is_refused_before_its_pixels():
    data = dicom(np.zeros((1, 1001)), "MONOCHROME2", rows=50_000)  # header says 50,000 rows
    raises(data, "too_large", "x.png: declares 1001x50000, padded to 50000x50000 = "
           "2,500,000,000 pixels, over the 50,000,000 limit")
    # 16-bit samples count twice: 6000x6000 is a 36 MP square but 72 MB of samples.
    data = dicom(np.zeros((1, 6000)), "MONOCHROME2", rows=6000)
    raises(data, "too_large", "x.png: declares 6000x6000 with 2 bytes a pixel = 72,000,000 "
           "bytes decoded, over the 50,000,000 limit")


def test_dicom_colour_is_undecodable():
    data = dicom([[1, 2]], "RGB")
    raises(data, "undecodable", "x.png: DICOM RGB image, expected MONOCHROME1 or MONOCHROME2")


def test_dicom_window_width_zero_or_negative_falls_back_to_the_stored_range():
    # Real scanners write these; pydicom raises on them. Stored 0..4095 -> 2 s - 1024.
    for width in (0, -5):
        data = dicom(STORED, "MONOCHROME2", slope=2, intercept=-1024, window=(40, width))
        gray, conversions = images.decode_any(data, "x.dcm")
        assert conversions == ["dicom", "voi_fallback"]
        # The own range -1024..7166: -160 -> 864 / 8190 * 255 = 26.9, -60 -> 30.0, 40 -> 33.1
        assert gray[0].tolist() == [0, 27, 30, 33]
        assert gray[1, 3] == 255


def with_element(data, keyword, vr, value):
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.add_new(keyword, vr, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_voi_lut_shorter_than_its_descriptor_falls_back():
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(io.BytesIO(dicom([[0, 1, 2, 3, 9]], "MONOCHROME2")))
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [16, 0, 16])  # 16 entries declared, 4 given
    item.add_new("LUTData", "US", [0, 100, 200, 4000])
    ds.VOILUTSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    gray, conversions = images.decode_any(buf.getvalue(), "x.dcm")
    assert conversions == ["dicom", "voi_fallback"]
    assert gray.tolist() == [[0, 28, 57, 85, 255]]  # 0..9 onto 0..255


def test_dicom_unknown_voi_function_text_slope_and_multivalued_rows_are_image_errors():
    data = with_element(dicom(STORED, "MONOCHROME2", window=(40, 400)), "VOILUTFunction", "CS",
                        "CUBIC")
    raises(data, "undecodable", "x.png: DICOM VOILUTFunction 'CUBIC' unknown (expected one "
           "of LINEAR, LINEAR_EXACT, SIGMOID)")
    # pydicom refuses to write bad values: the bytes are edited after writing.
    data = dicom(STORED, "MONOCHROME2", slope="1.25", intercept="0").replace(b"1.25", b"abcd")
    raises(data, "undecodable", "x.png: DICOM RescaleSlope 'abcd' is not a number")
    rows = b"\x28\x00\x10\x00US\x02\x00\x02\x00"  # (0028,0010) Rows, US, 2 bytes: 2
    data = dicom(STORED, "MONOCHROME2")
    assert rows in data
    data = data.replace(rows, b"\x28\x00\x10\x00US\x04\x00\x02\x00\x02\x00")
    raises(data, "undecodable", "x.png: DICOM Rows has 2 values ([2, 2]), expected one")


def test_dicom_compressed_without_a_decoder_names_the_syntax():
    from pydicom.uid import JPEGLSLossless

    data = dicom(STORED, "MONOCHROME2")
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 20])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raises(buf.getvalue(), "undecodable",
           "x.png: no decoder for JPEG-LS Lossless Image Compression")


def test_dicom_embedded_jpeg_larger_than_its_header_is_refused(monkeypatch):
    import pydicom
    from pydicom.uid import JPEGBaseline8Bit

    ds = pydicom.dcmread(io.BytesIO(dicom(STORED, "MONOCHROME2")))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    frame = jpeg(ramp(30, 40))
    sof = frame.index(b"\xff\xc0")
    ds.PixelData = pydicom.encaps.encapsulate(
        [frame[:sof + 5] + struct.pack(">HH", 9000, 9000) + frame[sof + 9:]])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raises(buf.getvalue(), "too_large",
           "x.png: declares 9000x9000 = 81,000,000 pixels, over the 50,000,000 limit")
    ds.PixelData = pydicom.encaps.encapsulate([frame])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raises(buf.getvalue(), "undecodable", "x.png: DICOM frame is 40x30, the header says 4x2")


def test_dicom_multiframe_is_refused_before_decoding():
    data = with_element(dicom(STORED, "MONOCHROME2"), "NumberOfFrames", "IS", "3")
    raises(data, "undecodable", "x.png: DICOM holds 3 frames, expected one")


def test_dicom_conversion_in_row_blocks_equals_one_block(monkeypatch):
    from cxr_tf.data import dicom as dicom_module

    stored = np.random.default_rng(3).integers(0, 4096, (37, 50))
    for kwargs in ({}, {"slope": 2, "intercept": -1024, "window": (40.5, 401)}):
        data = dicom(stored, "MONOCHROME2", **kwargs)
        whole, _ = images.decode_any(data, "x.dcm")
        monkeypatch.setattr(dicom_module, "_BLOCK_PIXELS", 120)  # blocks of 2 rows
        blocks, _ = images.decode_any(data, "x.dcm")
        monkeypatch.undo()
        np.testing.assert_array_equal(blocks, whole)
        assert len(np.unique(whole)) > 50


def test_dicom_deflate_bomb_is_measured_before_pydicom_inflates_it():
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(dicom(np.zeros((1000, 1000)), "MONOCHROME2")))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert len(buf.getvalue()) < 10_000  # 2 MB of zeros, deflated
    raises(buf.getvalue(), "too_large", "x.png: DICOM deflated dataset inflates to over "
           "1,000,000 bytes", max_pixels=1_000_000 - (64 << 20))
    gray, _ = images.decode_any(buf.getvalue(), "x.dcm")
    assert gray.shape == (1000, 1000)


# ---- pad, resize, preprocess


def test_pad_to_square_centres_without_losing_content():
    image = np.arange(1, 11, dtype=np.uint8).reshape(2, 5)
    padded, was_padded = images.pad_to_square(image)
    assert was_padded and padded.shape == (5, 5)
    np.testing.assert_array_equal(padded[1:3], image)  # 3 rows of padding: 1 above, 2 below
    assert padded[[0, 3, 4]].sum() == 0
    tall, _ = images.pad_to_square(image.T)
    np.testing.assert_array_equal(tall[:, 1:3], image.T)
    square = ramp(4, 4)
    same, was_padded = images.pad_to_square(square)
    assert not was_padded and same is square


def test_resize_shape_dtype_and_constant_image():
    out = images.resize(np.full((100, 60), 77, np.uint8), 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert (out == 77).all()
    with pytest.raises(ValueError, match="uint8 H×W"):
        images.resize(np.zeros((8, 8), np.float32), 4)


def test_preprocess_pads_resizes_and_counts():
    colour = np.zeros((40, 80, 3), np.uint8)
    colour[:, :, 1] = 255
    out, conversions = images.preprocess(png(colour), "x.png", 16)
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    assert conversions == ["rgb", "padded"]
    assert out[8, 8, 0] == 150 and out[0, 8, 0] == 0  # green luma 149.7; padding stays black
    out, conversions = images.preprocess(png(ramp(8, 8)), "x.png", 8)
    assert conversions == []
    np.testing.assert_array_equal(out[:, :, 0], ramp(8, 8))


# ---- train/serve parity with the exported graph's TF resize


def resize_tf_reference(image, size):
    """What the SavedModel does: tf.image.resize(bilinear, antialias) then round/clip to uint8."""
    tf = pytest.importorskip("tensorflow")
    out = tf.image.resize(tf.constant(image[:, :, None], tf.float32), (size, size),
                          method="bilinear", antialias=True)
    return np.clip(np.rint(out.numpy()[:, :, 0]), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def films():
    from cxr_tf import synthetic

    rng = np.random.default_rng(0)
    return [synthetic.render(1024, ("Nodule", "Fibrosis"), [0, 1, 1], [0, 2, 1]),
            synthetic.render(1024, ("Effusion", "Mass"), [0, 1, 2], [0, 2, 2]),
            rng.integers(0, 256, (1024, 1024), dtype=np.uint8)]


@pytest.mark.parametrize("source, size", [(1024, 224), (1024, 64), (1024, 320), (64, 224)])
def test_resize_matches_tf_bilinear_antialias(films, source, size):
    # Measured (see images.resize): max 1 gray level; mean 0.05-0.09 down, 0.11-0.22 up.
    for film in films:
        image = film if source == 1024 else images.resize(film, source)
        diff = np.abs(images.resize(image, size).astype(int) - resize_tf_reference(image, size))
        assert diff.max() <= 1
        assert diff.mean() <= 0.25
