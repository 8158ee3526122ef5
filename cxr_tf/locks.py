"""One process at a time in a folder: an exclusive `flock` on a lock file in it.

    with locks.held(os.path.join(run_dir, ".lock"), in_use=lambda pid: RunDirError(...)):
        ...  # a second holder gets in_use(the first one's pid) at once

The kernel releases an flock however its holder ends (exit, crash, SIGKILL), so a lock file
left behind never blocks anyone. The holder writes its pid into the file, for the message the
next process shows. Used for the run dir (`cxr_tf.runs.claim`) and for prepare's output dir.
"""

import contextlib
import errno
import fcntl
import os


@contextlib.contextmanager
def held(lock_path, in_use):
    """Holds `lock_path` (created, with its folder, if missing) for the life of the block.

    in_use: pid text ("12345", or "unknown") -> the exception to raise when another process
    holds the lock; raised at once, never waited for.
    """
    os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise in_use(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
