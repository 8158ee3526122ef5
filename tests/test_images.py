"""Tests for cxr_tf.data.images: every bad input with its message, every conversion with its pixels,
pad/resize, and the PIL-vs-TF resize parity that train/serve agreement rests on."""

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr_tf.data import images
from cxr_tf.data.images import ImageError


def png(array_or_image, **kwargs):
    img = array_or_image
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def jpeg(array, **kwargs):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, **kwargs)
    return buf.getvalue()


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def insert_after_ihdr(data, kind, body):
    return data[:33] + chunk(kind, body) + data[33:]  # 8 signature + 25 IHDR


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
    raises(b"GIF89a\x01\x00\x01\x00", "undecodable",
           "x.png: not a PNG, JPEG or DICOM file (starts with b'GIF8')")
    raises(b"<!DOCTYPE html>", "undecodable",
           "x.png: not a PNG, JPEG or DICOM file (starts with b'<!DO')")


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
    raises(png(ramp())[:20], "undecodable",
           "x.png: PNG header truncated or corrupt (no image size in 20 bytes)")


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
    assert images.probe_size(bomb) == (10000, 10000)

    def never(*args, **kwargs):
        raise AssertionError("PIL must not open a file over MAX_PIXELS")

    monkeypatch.setattr(Image, "open", never)
    raises(bomb, "too_large",
           "x.png: declares 10000x10000 = 100,000,000 pixels, over the 50,000,000 limit")


def test_jpeg_size_is_probed_from_its_sof_header():
    data = jpeg(ramp(30, 40))
    assert images.probe_size(data) == (40, 30)
    sof = data.index(b"\xff\xc0")
    huge = data[:sof + 5] + struct.pack(">HH", 8000, 8000) + data[sof + 9:]
    raises(huge, "too_large",
           "x.png: declares 8000x8000 = 64,000,000 pixels, over the 50,000,000 limit")
    assert images.probe_size(b"not an image") is None
    assert images.probe_size(b"\x89PNG\r\n\x1a\n") is None


def test_image_error_survives_pickling_for_worker_processes():
    error = pickle.loads(pickle.dumps(ImageError("a.png", "too_large", "declares 1x1")))
    assert (error.name, error.reason, str(error)) == ("a.png", "too_large", "a.png: declares 1x1")


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
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    stored = np.asarray(stored, np.uint16)
    ds.Rows, ds.Columns = rows or stored.shape[0], stored.shape[1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


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
    raises(data, "too_large",
           "x.png: declares 1001x50000 = 50,050,000 pixels, over the 50,000,000 limit")


def test_dicom_colour_is_undecodable():
    data = dicom([[1, 2]], "RGB")
    raises(data, "undecodable", "x.png: DICOM RGB image, expected MONOCHROME1 or MONOCHROME2")


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
