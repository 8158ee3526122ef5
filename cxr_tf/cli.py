"""What every cxr_tf app does around its main(): define and parse its flags, keep
TensorFlow's start-up lines out of the output, turn user errors into one line, and stop
cleanly on Ctrl-C or SIGTERM.

    if __name__ == "__main__":
        cli.run(main, flags.define_train_flags, outputs=lambda f: [f.model_dir])

Exit codes: 0 done; 1 a user error at run time (a missing file, bad data, an unusable
model_dir); 2 a usage error (a bad flag value, a missing required flag, a missing or
self-including flagfile, an `errors.ConfigError`); 130 and 143 interrupted by SIGINT and
SIGTERM. Errors print one `error: <what and why>` line on stderr and no traceback. A user
error is recognised by its type (`is_user_error`); any other exception is a bug and keeps its
traceback.

Interrupts: the first SIGINT or SIGTERM raises `errors.Interrupted` in the main thread, so
`finally` blocks and atomic writes clean up as they unwind; the app prints one line saying
what it left (the message the code that knew put on the exception, e.g. training's "the state
after epoch 2 is saved in RUN/backup", else the app's `outputs` that changed: "nothing
written", or which files) and exits 128 + the signal's number. The handler first gives both
signals back their default action, so a second one ends the process at once, whatever it is
doing; atomic writes leave only a temporary file then, which the next run removes.

TensorFlow 2.21 prints a dozen C++ lines while it loads (oneDNN, CUDA stubs, factory
registrations), before Abseil logging is initialized, so TF_CPP_MIN_LOG_LEVEL cannot hide them
(abseil-cpp#1957, tensorflow#102212). Unless --tf_logs is given, the process's stderr file
descriptor is filtered while `tensorflow` is first imported: the known lines below are dropped
and every other line is passed through; TF_CPP_MIN_LOG_LEVEL=1 then hides TF's later INFO
lines (its warnings and errors still show).
"""

import contextlib
import fcntl
import functools
import importlib.abc
import importlib.util
import itertools
import os
import re
import signal
import sys
import threading

from absl import app, logging
from absl import flags as absl_flags

from cxr_tf import errors, flags

# glog's prefix (`I0000 00:00:1795855481.275492   14990 port.cc:153] `) or TF's older one
# (`2024-01-01 12:00:00.000000: W tensorflow/.../py_utils.cc:38] `). Never F (fatal) lines.
_PREFIX = (r"(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ |\d{4}-\d\d-\d\d [\d:.]+: [IWE] )"
           r"\S+:\d+\] ")
TF_START_UP_LINES = re.compile("|".join([
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
]))


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def run(main, define_flags, outputs=None):
    """Defines the app's flags, parses them, and runs `main(argv)` with one-line errors and
    interrupts. outputs: FLAGS -> the files or folders the app writes (None entries are
    ignored), which an interrupt reports on."""
    define_flags()
    handle_interrupts()
    try:
        app.run(functools.partial(_call_main, main, outputs), flags_parser=parse_flags)
    except KeyboardInterrupt as e:  # outside main: while flags were parsed
        stop(errors.Interrupted.of(e))


def handle_interrupts():
    """SIGINT and SIGTERM raise errors.Interrupted in the main thread (see the docstring)."""
    for signum in INTERRUPTS:
        signal.signal(signum, _interrupt)


def _interrupt(signum, frame):
    for each in INTERRUPTS:  # a second signal ends the process at once
        signal.signal(each, signal.SIG_DFL)
    raise errors.Interrupted(signum)


def stop(interrupted, left=None):
    """Prints the interruption's line (its message, else `interrupted; <left>`) on stderr and
    exits 128 + its signal's number."""
    sys.stderr.flush()
    line = interrupted.message or f"interrupted; {left or 'nothing written'}"
    print(line, file=sys.stderr, flush=True)
    sys.exit(128 + interrupted.signum)


def parse_flags(argv):
    """absl `app.run(..., flags_parser=)`: expands flagfiles, parses, quiets TensorFlow.

    TFDS and TF log every file they open at INFO, so apps show warnings and up unless the
    user passes --verbosity (e.g. --verbosity=0 for INFO).
    """
    try:
        remaining = flags.FLAGS(flags.expand_flagfiles(argv))
    except (absl_flags.Error, flags.FlagfileError, OSError) as e:
        fail(e, 2)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if not flags.FLAGS.tf_logs:
        quiet_tensorflow_start_up()
    return remaining


def _call_main(main, outputs, argv):
    paths = [p for p in (outputs(flags.FLAGS) if outputs else []) if p]
    before = {path: snapshot(path) for path in paths}
    try:
        return main(argv)
    except KeyboardInterrupt as e:
        stop(errors.Interrupted.of(e), changed(before))
    except (app.UsageError, errors.ConfigError) as e:
        fail(e, 2)
    except Exception as e:  # only user errors are caught: a bug re-raises
        if not is_user_error(e):
            raise
        fail(e, 1)


def fail(error, exit_code):
    """Prints `error: <message>` (one line) on stderr and exits with exit_code."""
    sys.stderr.flush()
    print(f"error: {error_message(error)}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


def error_message(error):
    """One line: `path: reason` for an OSError that names its file, its message without the
    `[Errno N]` prefix for another OSError, else str(error)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{os.fsdecode(error.filename)}: {error.strerror}"
    elif isinstance(error, OSError) and error.errno is not None and error.strerror:
        text = error.strerror  # its own message (atomic's "PATH: not written (cause)")
    else:
        text = str(error) or type(error).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def is_user_error(error):
    """Whether `error` is the user's to fix (its message says what), not a bug, by its type:
    an `errors.UserError` (cxr_tf raises one whenever the cause is the user's input: a file,
    a folder, an argument, the environment); an OSError that names its file (missing,
    unreadable, a full or read-only disk); TensorFlow's NotFound and PermissionDenied. Any
    other exception, a ValueError from inside cxr_tf included, is a bug.
    """
    if isinstance(error, errors.UserError):
        return True
    if isinstance(error, OSError) and error.filename is not None:
        return True
    # Looked up, not imported: an error of TensorFlow's cannot occur before it is imported.
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(
        error, (tf.errors.NotFoundError, tf.errors.PermissionDeniedError))


SNAPSHOT_LIMIT = 100_000  # files: a model_dir given as ~ by mistake is not walked whole


def snapshot(path):
    """{file: (size, mtime)} under `path` (a file or a folder), to tell what an app wrote;
    None for a folder of more than SNAPSHOT_LIMIT files."""
    path = os.fspath(path)
    if os.path.isfile(path):
        found = [path]
    else:
        walked = (os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        found = list(itertools.islice(walked, SNAPSHOT_LIMIT + 1))
        if len(found) > SNAPSHOT_LIMIT:
            return None
    files = {}
    for name in found:
        with contextlib.suppress(OSError):
            info = os.stat(name)
            files[name] = (info.st_size, info.st_mtime_ns)
    return files


def changed(before):
    """What the app wrote since `before` ({path: snapshot}): "nothing written", or the files
    new, changed or removed (a folder's counted, its first few named)."""
    parts = []
    for path, old in before.items():
        if old is None:
            parts.append(f"{path} not checked (over {SNAPSHOT_LIMIT:,} files)")
            continue
        now = snapshot(path) or {}
        new = sorted(name for name in set(old) | set(now) if old.get(name) != now.get(name))
        if not new:
            continue
        if new == [os.fspath(path)]:
            parts.append(f"left {new[0]}")
        else:
            shown = ", ".join(os.path.relpath(name, path) for name in new[:3])
            more = f" and {len(new) - 3} more" if len(new) > 3 else ""
            files = f"{len(new)} file{'s' if len(new) > 1 else ''}"
            parts.append(f"left {path}: {files} new, changed or removed ({shown}{more})")
    return "; ".join(parts) or "nothing written"


# --- TensorFlow's start-up lines --------------------------------------------------------

def quiet_tensorflow_start_up():
    """Hides TF's known start-up lines in this process (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Wraps the first import of `tensorflow` (direct, or through keras or TFDS) in
    `filtered_stderr`, then removes itself.

    It stays in place until TensorFlow is actually loaded: TFDS and Keras probe with
    `importlib.util.find_spec("tensorflow")` long before they import it.
    """

    def __init__(self):
        self._finding = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow" or self._finding:
            return None
        self._finding = True  # the finders after this one find the real spec
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader, self)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader, finder):
        self.loader = loader
        self.finder = finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self.finder)
        # The module keeps the real loader: nothing of this wrapper stays behind.
        module.__loader__ = module.__spec__.loader = self.loader
        with filtered_stderr(TF_START_UP_LINES):
            self.loader.exec_module(module)
            # The CUDA probe logs its cuInit failure on first device use: do that here.
            module.config.list_physical_devices()


@contextlib.contextmanager
def filtered_stderr(drop):
    """Filters file descriptor 2 while the block runs: lines matching `drop` are dropped,
    every other line (Python's, C++'s) is passed through unchanged and in order.

    fd level, because TensorFlow's C++ writes to fd 2 directly, not through sys.stderr.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(AttributeError, OSError):
        # Headroom: a C++ static initializer writes while the import holds the GIL, so the
        # forwarding thread cannot drain the pipe until it returns (64 KiB by default).
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    forward = threading.Thread(target=_forward_lines, args=(read_fd, saved, drop),
                               name="filtered_stderr", daemon=True)
    forward.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread reads EOF
        forward.join()
        os.close(saved)


def _forward_lines(read_fd, out_fd, drop):
    with open(read_fd, "rb") as pipe, open(os.dup(out_fd), "wb") as out:
        for line in pipe:
            if not drop.match(line.decode("utf-8", "replace").rstrip("\r\n")):
                out.write(line)
                out.flush()
