"""Files that are either wholly old or wholly new: write beside, then rename.

A job killed mid-write (SIGKILL, preemption) must not leave a truncated config.json, report,
history or checkpoint that a resumed run or a server would then read. The temporary name is
unique per process (two writers never share one) and starts with a dot, so nothing that lists
the directory mistakes it for the real file; it is removed if the write fails.
"""

import contextlib
import errno
import json
import os

from cxr_tf import errors


class NotWrittenError(errors.UserError, OSError):
    """A file could not be written (a full disk, a read-only folder): one line naming it and
    the cause; nothing half-written is left behind."""


def temporary_path(path):
    """Where `path` is written before its rename: `.NAME.tmp-PID.EXT` in the same directory
    (same file system, so the rename is atomic). The extension stays last because Keras
    chooses its format from it (`.keras`, `.weights.h5`)."""
    directory, base = os.path.split(os.fspath(path))
    stem, ext = _split_ext(base)
    return os.path.join(directory, f".{stem}.tmp-{os.getpid()}{ext}")


def is_temporary(name):
    """True for a name `temporary_path` makes (of this or any other process)."""
    return name.startswith(".") and ".tmp-" in name


def _split_ext(base):
    for ext in (".weights.h5", ".keras", ".json", ".csv"):
        if base.endswith(ext) and len(base) > len(ext):
            return base[:-len(ext)], ext
    return os.path.splitext(base)


@contextlib.contextmanager
def replacing(path):
    """Yields the temporary path to write; renames it onto `path` when the block succeeds.

    On any failure the temporary file is removed. An OSError (a full disk, a read-only
    directory) is raised again as one line naming `path` and the cause.

    Example:
        with atomic.replacing("run/checkpoints/last.keras") as tmp:
            model.save(tmp)
    """
    path = os.fspath(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, FileExistsError):
            # h5py's message spans several lines of internals; the errno says it all.
            cause = os.strerror(e.errno) if e.errno else str(e)
            raise NotWrittenError(e.errno, f"{path}: not written ({cause})") from e
        raise


def check_writable(path):
    """Raises NotWrittenError now unless a file can be written at `path` (its folder exists
    and takes a new file; no folder stands in its place). For an app that writes its output
    last: a typo in the output path must not cost the work done before it.

    Creates and removes the temporary file `replacing` would write, so it checks exactly what
    the final write needs; an existing file at `path` is left as it is.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise NotWrittenError(errno.EISDIR, "cannot be written (a folder)", path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "x"):
            pass
        os.remove(tmp)
    except OSError as e:
        cause = os.strerror(e.errno) if e.errno else str(e)
        # With the file name, an app prints it as `PATH: cannot be written (CAUSE)`.
        raise NotWrittenError(e.errno, f"cannot be written ({cause})", path) from e


def write_file(path, data, mode="w", **open_options):
    """`data` (str, or bytes with mode="wb") into `path`, whole or not at all."""
    with replacing(path) as tmp, open(tmp, mode, **open_options) as f:
        f.write(data)
    return os.fspath(path)


def write_json(path, obj, **dump_options):
    """json.dumps(obj, **dump_options) into `path`, whole or not at all."""
    return write_file(path, json.dumps(obj, **dump_options))
