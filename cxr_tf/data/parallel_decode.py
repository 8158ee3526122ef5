"""Decode, pad and resize image files in worker processes, in input order.

Decoding a 1024² PNG costs about 5 ms per core, so preparing 112,120 images is CPU-bound: the
TFDS builder and `tools/bench_prepare.py` both feed files through `decode_files`, which keeps
every core busy and still yields results in input order (so the prepared dataset does not
depend on the number of workers). `map_in_order` is the process pool underneath, also used by
`cxr_tf.synthetic` to render films.

Workers are *spawned*, not forked: the parent has usually imported TensorFlow, whose threads
make `fork` unsafe. They import only what the mapped function's module imports (numpy, PIL and
`cxr_tf.data.images` here).
"""

import atexit
import concurrent.futures
import dataclasses
import io
import logging
import multiprocessing
import os
import signal
import sys

import numpy as np
from PIL import Image

from cxr_tf.data import image_header, images


@dataclasses.dataclass
class Decoded:
    image_id: str
    image: np.ndarray | bytes | None  # S×S×1 uint8 ("raw"), PNG bytes ("png"); None: skipped
    conversions: list
    skip_reason: str | None = None  # "undecodable", "too_large", "dropped_rgba"
    error: str | None = None  # "<file>: <reason>", for the report


def encode_png(image):
    """uint8 S×S(×1) -> PNG bytes. Level 1 compresses within a few % of level 6, several times faster."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image).reshape(image.shape[:2])).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def decode_file(image_id, path, image_size, drop_rgba=False, encoding="raw",
                max_pixels=image_header.MAX_PIXELS):
    """One file -> Decoded. Never raises for a bad file: whatever goes wrong reading or decoding
    it becomes a counted skip, so one file never stops a 112,120-image job.

    encoding: "raw" returns the uint8 array, "png" PNG bytes, None nothing (b"", for timing).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        image, conversions = images.preprocess(data, image_id, image_size, drop_rgba=drop_rgba,
                                               max_pixels=max_pixels)
        if encoding == "png":
            image = encode_png(image)
        elif encoding is None:
            image = b""
    except image_header.ImageError as e:
        return Decoded(image_id, None, [], e.reason, str(e))
    except OSError as e:  # unreadable file (permissions, I/O error): the file is there but unusable
        return Decoded(image_id, None, [], "undecodable", f"{image_id}: {e.strerror or e}")
    except Exception as e:  # noqa: BLE001 - a decoder bug or an input no check foresaw
        # Logged as well as counted: it may be a bug worth reporting, not just a bad file.
        error = f"{image_id}: {type(e).__name__}: {e}"
        logging.warning("skipped as undecodable: %s", error)
        return Decoded(image_id, None, [], "undecodable", error)
    return Decoded(image_id, image, conversions)


def _decode_task(args):
    return decode_file(*args)


def decode_files(items, image_size, *, drop_rgba=False, num_workers=None, encoding="raw",
                 max_pixels=image_header.MAX_PIXELS):
    """Yields a Decoded for each (image_id, path) of `items`, in order (see `decode_file`).

    num_workers=None uses every core; 0 decodes in this process (handy in tests and for tiny
    jobs, where starting processes costs more than it saves).
    """
    tasks = ((image_id, path, image_size, drop_rgba, encoding, max_pixels)
             for image_id, path in items)
    # Chunks of 8 amortise the pickling round trips and still balance the load.
    yield from map_in_order(_decode_task, tasks, num_workers=num_workers, what="decoding",
                            chunksize=8)


def map_in_order(fn, items, *, num_workers=None, what="work", chunksize=1):
    """Yields fn(item) for each of `items`, in input order, computed in worker processes.

    Args:
        fn: a module-level function (the workers import it by name).
        items: picklable arguments; all are queued at once.
        num_workers: processes; None: every core (see `worker_count`); 0: in this process.
        what: what the workers do, for log messages ("decoding").
        chunksize: items per round trip to a worker.

    An exception raised by fn comes out of the iteration at its item, as it would in-process.
    A worker that dies (killed, out of memory) raises BrokenProcessPool instead of hanging.
    """
    num_workers = worker_count(num_workers, what)
    if num_workers <= 0:
        yield from map(fn, items)
        return
    executor = _executor(num_workers)
    try:
        yield from executor.map(fn, items, chunksize=chunksize)
    except concurrent.futures.process.BrokenProcessPool:
        _EXECUTORS.pop(num_workers, None)  # unusable now: the next call starts a fresh one
        raise


def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def worker_count(num_workers, what):
    """How many processes to spawn for `what`: all cores for None, else num_workers; 0 (with
    a warning) when __main__ came from stdin (`python - <<EOF`), where a spawned worker would
    try to run the file "<stdin>" and die."""
    num_workers = default_workers() if num_workers is None else num_workers
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if num_workers > 0 and path is not None and not os.path.exists(path):
        logging.warning("%s in this process: spawned workers must re-import __main__, and %r "
                        "is not a file (run the code from a script file to use all cores)",
                        what, path)
        return 0
    return num_workers


_EXECUTORS = {}


@atexit.register
def _shutdown():
    """Stops the workers while the interpreter is whole: an executor left for the final garbage
    collection prints "Exception ignored in: ... weakref_cb" on the way out."""
    while _EXECUTORS:
        _EXECUTORS.popitem()[1].shutdown(cancel_futures=True)


def _executor(num_workers):
    """One pool per size for the whole process: starting workers costs ~1 s each (imports),
    and the builder decodes three splits, one after the other."""
    if num_workers not in _EXECUTORS:
        context = multiprocessing.get_context("spawn")
        _EXECUTORS[num_workers] = concurrent.futures.ProcessPoolExecutor(
            num_workers, mp_context=context, initializer=_leave_ctrl_c_to_the_app)
    return _EXECUTORS[num_workers]


def _leave_ctrl_c_to_the_app():
    """Ctrl-C reaches every process of the terminal's group: a worker ignores it, and the app
    stops the pool as it ends (one line, no traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
