"""What every cxr_tf app does around its main(): define and parse its flags, keep
TensorFlow's start-up lines out of the output, and turn user errors into one line.

    if __name__ == "__main__":
        cli.run(main, flags.define_train_flags)

Exit codes: 0 done; 1 a user error at run time (a missing file, bad data, an unusable
model_dir); 2 a usage error (a bad flag value, a missing required flag, a missing or
self-including flagfile, an `errors.ConfigError`). Both print one `error: <what and why>` line
on stderr and no traceback. A user error is recognised by its type (`is_user_error`); any
other exception is a bug and keeps its traceback.

TensorFlow prints lines that tell a user nothing: a dozen C++ lines while it loads (before
Abseil logging is initialized, so TF_CPP_MIN_LOG_LEVEL cannot hide them), oneDNN's DT_BOOL
`E0000` line at a model's first step, a copy of the start-up lines from every spawned worker.
Unless --tf_logs is given, `cxr_tf.tf_logs` filters the process's stderr file descriptor from
flag parsing to exit: the known lines are dropped and every other line is passed through, in
order; TF_CPP_MIN_LOG_LEVEL=1 hides TF's INFO lines (its warnings and errors still show).
"""

import functools
import os
import sys

from absl import app, logging
from absl import flags as absl_flags

from cxr_tf import errors, flags, tf_logs

# The lines hidden unless --tf_logs (the name the apps' tests know them by).
TF_START_UP_LINES = tf_logs.KNOWN_LINES
filtered_stderr = tf_logs.filtered_stderr


def run(main, define_flags):
    """Defines the app's flags, parses them, and runs `main(argv)` with one-line errors."""
    define_flags()
    app.run(functools.partial(_call_main, main), flags_parser=parse_flags)


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


def _call_main(main, argv):
    try:
        return main(argv)
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
    """One line: `path: reason` for an OSError that names its file, else str(error)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{os.fsdecode(error.filename)}: {error.strerror}"
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


# --- TensorFlow's start-up lines --------------------------------------------------------

def quiet_tensorflow_start_up():
    """Hides TF's known lines in this process from now on (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    tf_logs.start(TF_START_UP_LINES)
