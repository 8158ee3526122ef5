"""Unit tests for cxr_tf.data.parallel_decode: the worker count and its stdin fallback, order
kept in and out of process, a failing item, and decode_file's skips (one bad file never raises)."""

import concurrent.futures
import io
import logging
import os
import sys
import types

import numpy as np
import pytest
from PIL import Image

from cxr_tf.data import images, parallel_decode

STDIN_WARNING = ("decoding in this process: spawned workers must re-import __main__, and "
                 "'<stdin>' is not a file (run the code from a script file to use all cores)")


@pytest.fixture
def main_from_stdin(monkeypatch):
    """`python - <<EOF`: __main__.__file__ names no file."""
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__="<stdin>"))


@pytest.fixture
def no_executor(monkeypatch):
    """Fails the test if a worker process would be started."""
    def refuse(num_workers):
        raise AssertionError(f"started {num_workers} worker process(es)")
    monkeypatch.setattr(parallel_decode, "_executor", refuse)


def _png(path, size=40, width=None):
    gray = np.arange(size * (width or size), dtype=np.uint8).reshape(size, width or size)
    Image.fromarray(gray).save(path)
    return str(path)


# --- worker_count ---------------------------------------------------------------------------

def test_worker_count(monkeypatch):
    monkeypatch.setattr(parallel_decode, "default_workers", lambda: 6)
    assert parallel_decode.worker_count(None, "decoding") == 6
    assert parallel_decode.worker_count(3, "decoding") == 3
    assert parallel_decode.worker_count(0, "decoding") == 0


def test_worker_count_falls_back_to_this_process_from_stdin(main_from_stdin, caplog):
    with caplog.at_level(logging.WARNING):
        assert parallel_decode.worker_count(4, "decoding") == 0
    assert caplog.messages == [STDIN_WARNING]
    caplog.clear()
    assert parallel_decode.worker_count(0, "decoding") == 0  # nothing to fall back from
    assert caplog.messages == []


def test_interactive_main_without_file_keeps_the_workers(monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace())  # python -i, Jupyter
    assert parallel_decode.worker_count(4, "decoding") == 4


# --- map_in_order ---------------------------------------------------------------------------

def test_in_process_keeps_order_and_starts_no_worker(no_executor):
    assert list(parallel_decode.map_in_order(abs, [3, -1, -2, 0], num_workers=0)) == [3, 1, 2, 0]


def test_stdin_main_maps_in_this_process(main_from_stdin, no_executor):
    out = parallel_decode.map_in_order(abs, [-5, 4], num_workers=2, what="decoding")
    assert list(out) == [5, 4]


def test_workers_keep_order_and_raise_at_the_failing_item():
    # Builtins only, so the spawned workers import nothing heavy.
    items = [str(i) for i in range(40, 0, -1)]
    assert list(parallel_decode.map_in_order(int, items, num_workers=2, chunksize=3)) == \
        list(range(40, 0, -1))
    results = parallel_decode.map_in_order(int, ["1", "2", "x", "4"], num_workers=2)
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(ValueError, match=r"^invalid literal for int\(\) with base 10: 'x'$"):
        next(results)


def test_a_dead_worker_is_an_error_not_a_hang():
    # multiprocessing.Pool would wait for ever on the lost task; the executor raises.
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        list(parallel_decode.map_in_order(os._exit, [3], num_workers=1))
    assert 1 not in parallel_decode._EXECUTORS  # the broken pool is not reused
    assert list(parallel_decode.map_in_order(abs, [-1], num_workers=1)) == [1]


def test_failing_item_in_process_raises_at_its_item():
    results = parallel_decode.map_in_order(int, ["7", "x"], num_workers=0)
    assert next(results) == 7
    with pytest.raises(ValueError, match="'x'"):
        next(results)


# --- decode_file / decode_files -------------------------------------------------------------

def test_decode_file_encodings(tmp_path):
    path = _png(tmp_path / "00000001_000.png", width=32)  # 40 high, 32 wide: padded
    raw = parallel_decode.decode_file("00000001_000.png", path, 16)
    assert raw.image.shape == (16, 16, 1) and raw.image.dtype == np.uint8
    assert (raw.conversions, raw.skip_reason, raw.error) == (["padded"], None, None)
    png = parallel_decode.decode_file("00000001_000.png", path, 16, encoding="png")
    assert png.image[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png.image)) as img:
        np.testing.assert_array_equal(np.asarray(img)[..., None], raw.image)  # lossless
    assert parallel_decode.decode_file("00000001_000.png", path, 16, encoding=None).image == b""


def test_decode_file_bad_files_are_skips_not_errors(tmp_path):
    (tmp_path / "a.png").write_bytes(b"<html>403 Forbidden</html>")
    not_png = parallel_decode.decode_file("a.png", str(tmp_path / "a.png"), 16)
    assert (not_png.image, not_png.skip_reason) == (None, "undecodable")
    assert not_png.error.startswith("a.png: ")
    gone = parallel_decode.decode_file("b.png", str(tmp_path / "b.png"), 16)
    assert (gone.skip_reason, gone.error) == ("undecodable", "b.png: No such file or directory")
    folder = parallel_decode.decode_file("c.png", str(tmp_path), 16)
    assert (folder.skip_reason, folder.error) == ("undecodable", "c.png: Is a directory")


def test_an_unexpected_exception_is_a_logged_skip(tmp_path, monkeypatch, caplog):
    # Not an ImageError: a decoder bug or an input nobody foresaw (as pydicom's errors were).
    def broken(data, image_id, image_size, drop_rgba=False, max_pixels=None):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(images, "preprocess", broken)
    with caplog.at_level(logging.WARNING):
        result = parallel_decode.decode_file("d.dcm", _png(tmp_path / "d.png"), 16)
    assert (result.image, result.conversions) == (None, [])
    assert (result.skip_reason, result.error) == (
        "undecodable", "d.dcm: ZeroDivisionError: float division by zero")
    assert caplog.messages == ["skipped as undecodable: d.dcm: ZeroDivisionError: float "
                               "division by zero"]


def test_decode_files_keeps_order_past_a_bad_file(tmp_path):
    items = [("1.png", _png(tmp_path / "1.png", size=20)), ("2.png", str(tmp_path / "none")),
             ("3.png", _png(tmp_path / "3.png", size=30))]
    out = list(parallel_decode.decode_files(items, 8, num_workers=0))
    assert [d.image_id for d in out] == ["1.png", "2.png", "3.png"]
    assert [d.skip_reason for d in out] == [None, "undecodable", None]
    assert out[0].image.shape == out[2].image.shape == (8, 8, 1)
