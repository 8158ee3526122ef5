"""What every cxr_tf app does around its main(): define and parse its flags, keep
TensorFlow's noise out of the output, turn user errors into one line, and stop cleanly on
Ctrl-C or SIGTERM.

    if __name__ == "__main__":
        cli.run(main, flags.define_train_flags, outputs=lambda f: [f.model_dir])

Exit codes: 0 done; 1 a user error at run time (a missing file, bad data, an unusable
model_dir); 2 a usage error (a bad flag value, a missing required flag, a missing or
self-including flagfile, an `errors.ConfigError`); 130 and 143 interrupted by SIGINT and
SIGTERM. Errors print one `error: <what and why>` line on stderr and no traceback. A user
error is recognised by its type (`is_user_error`); any other exception is a bug and keeps its
traceback.

Interrupts: the first SIGINT or SIGTERM raises `errors.Interrupted` in the main thread, in a
frame of cxr_tf, Keras or the program (`can_raise_in`; caught in a library's frame, it is
raised at the next line the main thread runs in one of those), so `finally` blocks and atomic
writes clean up as they unwind; the app prints one line saying what it left (the message the
code that knew put on the exception, e.g. training's "the state after epoch 2 is saved in
RUN/backup", else the app's `outputs` that changed: "nothing written", or which files) and
exits 128 + the signal's number. A second signal ends the process at once, whatever it is
doing (the first gives both signals back their default action, or, while it waits, ends the
process itself); atomic writes leave only a temporary file then, which the next run removes.

TensorFlow prints lines that tell a user nothing: a dozen C++ lines while it loads (before
Abseil logging is initialized, so TF_CPP_MIN_LOG_LEVEL cannot hide them), oneDNN's DT_BOOL
`E0000` line at a model's first step, a copy of the start-up lines from every spawned worker.
Unless --tf_logs is given, `cxr_tf.tf_logs` filters the process's stderr file descriptor from
flag parsing to exit: the known lines are dropped and every other line is passed through, in
order; TF_CPP_MIN_LOG_LEVEL=1 hides TF's INFO lines (its warnings and errors still show).
"""

import contextlib
import functools
import itertools
import os
import signal
import sys
import sysconfig
import threading

from absl import app, logging
from absl import flags as absl_flags

from cxr_tf import errors, flags, tf_logs

# The lines hidden unless --tf_logs (the name the apps' tests know them by).
TF_START_UP_LINES = tf_logs.KNOWN_LINES
filtered_stderr = tf_logs.filtered_stderr


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
    if sys.unraisablehook is not _unraisable:
        _unraisable.previous = sys.unraisablehook
        sys.unraisablehook = _unraisable


# An interrupt waiting for a frame of ours (see _interrupt): {"signum": the signal waiting,
# "resent": whether the signal now handled is the one _send_again sent}.
_waiting = {}
# Library code that C and C++ call back into: TensorFlow's tensor conversion, dm-tree's
# flatten under TFDS, and the standard library's helpers they call (abc, functools). An
# exception raised there can leave the C++ caller with an error it does not check: a Ctrl-C
# while TFDS opened a dataset segfaulted the process, ended in an unrelated AttributeError, or
# vanished (3 of 15 tries). cxr_tf's, Keras's and the program's own frames are Python loops and
# calls, where an exception unwinds like any other.
_LIBRARIES = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
_STANDARD_LIBRARY = tuple({os.path.join(path, "") for name, path in sysconfig.get_paths().items()
                          if name in ("stdlib", "platstdlib")})
_RAISE_IN = (f"{os.sep}cxr_tf{os.sep}", f"{os.sep}keras{os.sep}")


def can_raise_in(frame):
    """Whether an interrupt may be raised in `frame`: one of cxr_tf's, Keras's or the
    program's own (a script; `python -c`), not an installed library's or the standard
    library's. Code made at run time (dataclasses' __init__, namedtuples' __new__, all named
    "<string>") counts as the program's only in __main__: libraries' such code runs under C++
    callers too (dm-tree rebuilding a namedtuple)."""
    filename = frame.f_code.co_filename
    if filename.startswith("<"):
        return (filename in ("<string>", "<stdin>")
                and frame.f_globals.get("__name__") == "__main__")
    if any(part in filename for part in _RAISE_IN):
        return True
    return not (filename.startswith(_STANDARD_LIBRARY)
                or any(part in filename for part in _LIBRARIES))


def _interrupt(signum, frame):
    resent = _waiting.pop("resent", False)
    if _waiting and not resent:  # a second signal while the first waits: end at once
        _end_now(signum)
    if frame is None or can_raise_in(frame):
        raise _interrupted(signum)
    _waiting["signum"] = signum
    _raise_at_our_next_line(frame)


def _interrupted(signum):
    """The Interrupted to raise now; ends the wait and gives both signals their default
    action, so that a second one ends the process at once."""
    _waiting.clear()
    if sys.gettrace() is _trace_call:  # ours, not a debugger's or coverage's
        sys.settrace(None)
    for each in INTERRUPTS:
        signal.signal(each, signal.SIG_DFL)
    return errors.Interrupted(signum)


def _raise_at_our_next_line(frame):
    """Raises the waiting interrupt at the next line the main thread runs in a frame where
    `can_raise_in`: those among `frame`'s callers and every one entered from now on are
    traced. Not a signal sent again later: that lands where the main thread returns
    from C++, which in training is TensorFlow's frame after each step (a Ctrl-C waited for the
    end of the epoch)."""
    while frame is not None:
        if can_raise_in(frame):
            frame.f_trace = _trace_line
        frame = frame.f_back
    sys.settrace(_trace_call)


def _trace_call(frame, event, arg):
    return _trace_line if can_raise_in(frame) else None


def _trace_line(frame, event, arg):
    if "signum" not in _waiting:  # a frame traced for an interrupt already raised
        return None
    if event == "line":
        raise _interrupted(_waiting["signum"])
    return _trace_line


def _send_again(signum):
    """Sends `signum` to this process again in 10 ms, from another thread."""

    def send():
        _waiting["resent"] = True
        os.kill(os.getpid(), signum)

    again = threading.Timer(0.01, send)
    again.daemon = True
    again.start()


def _end_now(signum):
    for each in INTERRUPTS:
        signal.signal(each, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _unraisable(unraisable):
    """Python runs a signal handler wherever the main thread is, and drops what it raises
    inside a garbage-collection callback or a __del__ (JAX, imported with Keras, registers such
    a callback): the first Ctrl-C would vanish and training go on. Such an interrupt is sent
    again from another thread, to land once that callback has returned (and, should it land
    in one again, again)."""
    if isinstance(unraisable.exc_value, errors.Interrupted):
        handle_interrupts()
        _send_again(unraisable.exc_value.signum)
        return
    _unraisable.previous(unraisable)


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
    """Hides TF's known lines in this process from now on (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    tf_logs.start(TF_START_UP_LINES)
