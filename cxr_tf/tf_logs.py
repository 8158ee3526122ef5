"""TensorFlow's (and its neighbours') log lines that tell a user nothing, and the stderr filter
that drops them for the life of a process.

    tf_logs.start()        # the apps (cxr_tf.cli), and the TFDS builder under `tfds build`

TensorFlow 2.21 prints a dozen C++ lines while it loads (oneDNN, CUDA stubs, factory
registrations), before Abseil logging is initialized, so TF_CPP_MIN_LOG_LEVEL cannot hide
them (abseil-cpp#1957, tensorflow#102212); oneDNN prints an `E0000` line about DT_BOOL at a
model's first step; a spawned worker process prints its own copy of the start-up lines.
They are written by C++ straight to file descriptor 2, so the filter works on the descriptor:
fd 2 becomes a pipe read by a small forwarder process, which drops the lines `KNOWN_LINES`
matches and passes every other line through unchanged and in order.

A forwarder *process*, not a thread: if this process dies (a segfault, SIGKILL, a C++ `F`
line followed by abort()), what it wrote last is still in the pipe, and only a reader outside
it can deliver that. The forwarder ends when every writer of the pipe has closed it (this
process and the workers it spawned), and it ignores SIGINT and SIGTERM, which are for this
process to handle.
"""

import atexit
import contextlib
import os
import re
import select
import subprocess
import sys

# glog's prefix (`I0000 00:00:1795855481.275492   14990 port.cc:153] `) or TF's older one
# (`2024-01-01 12:00:00.000000: W tensorflow/.../py_utils.cc:38] `). Never F (fatal) lines.
_PREFIX = (r"(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ |\d{4}-\d\d-\d\d [\d:.]+: [IWE] )"
           r"\S+:\d+\] ")
KNOWN_LINES = re.compile("|".join([
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR$",
    _PREFIX + r"oneDNN custom operations are on\.",
    _PREFIX + r"Could not find cuda drivers on your machine, GPU will not be used\.$",
    # 303 (CUDA_ERROR_SHARED_OBJECT_INIT_FAILED) is the stub libcuda of a machine without a
    # driver, which the line above already says; other cuInit failures still show.
    _PREFIX + r"failed call to cuInit: .*\(303\)$",
    _PREFIX + r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: [\w ,.]+ in other operations, rebuild "
    r"TensorFlow with the appropriate compiler flags\.$",
    _PREFIX + r"Unable to register (?:cuDNN|cuFFT|cuBLAS) factory: Attempting to register "
    r"factory for plugin \w+ when one has already been registered$",
    _PREFIX + r"computation placer already registered\.",
    _PREFIX + r"TF-TRT Warning: Could not find TensorRT$",
    # oneDNN has no bool kernels and says so, as an error, at a model's first step; TF runs
    # its own kernel instead (the line itself says so), so nothing is wrong.
    _PREFIX + r"oneDNN supports DT_BOOL only on platforms with AVX-512\. Falling back to the "
    r"default Eigen-based implementation if present\.$",
    # TensorFlow's echo of a status an op is about to raise (end of a dataset, a corrupt
    # record): the exception that follows carries it, and cxr_tf reports it in its words.
    _PREFIX + r"Local rendezvous is aborting with status: ",
    # Apache Beam, imported by the `tfds build` CLI (and its spawned workers) at start-up.
    r"WARNING:root:apitools not found, and bigquery client libraries are not available "
    r"despite the import not raising an ImportError\.$",
]))

# Runs in a fresh interpreter (-I -S: no site, no user paths): reads the pipe on stdin, writes
# what passes to stdout (the original stderr), and answers a flush request (the line `_FLUSH`)
# with a byte on the descriptor named by argv[2]. A line ends at \n or \r, so a progress bar's
# redraws pass as they come, not when the bar ends.
_FLUSH = b"\x1b[cxr_tf.tf_logs flush]\n"
_FORWARDER = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
drop, ack, flush = re.compile(sys.argv[1]), int(sys.argv[2]), os.fsencode(sys.argv[3])
def emit(line):
    if line.endswith(flush):  # after a partial line, if the process left one
        emit(line[:-len(flush)])
        os.write(ack, b".")
        return
    if line and drop.match(line.decode("utf-8", "replace").rstrip("\r\n")):
        return
    view = memoryview(line)
    while view:
        view = view[os.write(1, view):]
pending = b""
while True:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    *lines, pending = re.split(rb"(?<=[\r\n])", pending + chunk)
    for line in lines:
        emit(line)
if pending:
    emit(pending)
"""


class _Filter:
    """One running filter: the original fd 2 (saved), the forwarder reading the pipe, and the
    pipe on which it acknowledges a flush."""

    def __init__(self, drop):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.terminal = os.isatty(self.saved)
        read_fd, write_fd = os.pipe()
        self.ack_read, ack_write = os.pipe()
        try:
            # A session of its own: a Ctrl-C at the terminal, or `timeout` signalling the
            # process group, reaches this process, which decides; the forwarder drains.
            self.forwarder = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _FORWARDER, drop.pattern, str(ack_write),
                 _FLUSH.decode()],
                stdin=read_fd, stdout=self.saved, pass_fds=(ack_write,),
                start_new_session=True)
        except BaseException:
            for fd in (read_fd, write_fd, self.saved, self.ack_read, ack_write):
                os.close(fd)
            raise
        for fd in (read_fd, ack_write):
            os.close(fd)
        os.dup2(write_fd, 2)
        os.close(write_fd)

    def stop(self, wait_s, reap_s=0.0):
        """Gives fd 2 back once the forwarder has passed on everything this process wrote
        (waiting at most wait_s). The forwarder itself ends when the workers this process
        spawned, which share the pipe, have closed it too."""
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            os.write(2, _FLUSH)
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if select.select([self.ack_read], [], [], wait_s)[0]:
            os.read(self.ack_read, 1)
        os.close(self.ack_read)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.forwarder.wait(reap_s)


_active = None


def start(drop=KNOWN_LINES):
    """Filters fd 2 from now until the process exits (or `stop`); a no-op if already on."""
    global _active
    if _active is None:
        try:
            _active = _Filter(drop)
        except OSError:  # no stderr at all, or no process to spare: nothing to filter
            return
        atexit.register(stop)


def stop(wait_s=5.0):
    """Ends the process-long filter, if any (registered to run at exit)."""
    global _active
    if _active is not None:
        active, _active = _active, None
        active.stop(wait_s)


def stderr_is_terminal():
    """Whether the user's stderr is a terminal (fd 2 is a pipe while filtered): decides
    whether a progress bar is drawn."""
    if _active is not None:
        return _active.terminal
    return os.isatty(2)


@contextlib.contextmanager
def filtered_stderr(drop=KNOWN_LINES):
    """Filters fd 2 while the block runs (`start` for a whole process); inside a process-long
    filter, the block changes nothing."""
    if _active is not None:
        yield
        return
    try:
        scoped = _Filter(drop)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        scoped.stop(wait_s=30.0, reap_s=5.0)
