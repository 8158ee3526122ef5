"""The errors a user can fix, as one family: apps print them as one `error:` line.

    raise errors.UserError(f"{path}: not a run dir (no config.json)")

An app (`cxr_tf.cli`) prints a `UserError` as `error: <message>` and exits 1, a `ConfigError`
(a bad argument value) as a usage error, exit 2; any other exception is a bug and keeps its
traceback. So a library raises a `UserError` subclass whenever the cause is the user's input
(a file, a folder, an argument) and says in the message what to do, and a plain exception
(ValueError, TypeError, ...) when the cause is a caller's mistake in code.

The subclasses that also derive from ValueError keep `except ValueError` callers working.
"""


class UserError(Exception):
    """The user's to fix: the message names the thing, the reason and, where there is one,
    the remedy. Printed as one line, exit 1."""


class ConfigError(UserError, ValueError):
    """A configuration value out of its allowed range or set (a usage error, exit 2).

    Attributes:
        field: the argument's name (a config field, which the apps expose as `--field`).
        value: the value received.
        reason: what is wrong with it, e.g. "must be at least 1".
    """

    def __init__(self, field, value, reason):
        super().__init__(f"{field} {reason}; received {field}={value!r}")
        self.field = field
        self.value = value
        self.reason = reason

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.field, self.value, self.reason)


class NotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named is missing, or does not hold what it must (a prepared
    dataset, a SavedModel). Still a FileNotFoundError for callers that catch one."""


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop: SIGINT (Ctrl-C) or SIGTERM. A KeyboardInterrupt, so code
    that cleans up after Ctrl-C (atomic writes, TFDS's unfinished folders) does so for both.

    The app (`cxr_tf.cli`) prints `message` as one line and exits 128 + signum (130, 143). The
    code that knows what the process leaves behind re-raises with a message saying so:

        except errors.Interrupted as e:
            raise e.saying(f"interrupted in epoch {n}; ...") from None

    Attributes:
        signum: the signal's number (signal.SIGINT when raised for a plain KeyboardInterrupt).
        message: one line for the user, or None (the app then says what it can).
    """

    def __init__(self, signum=2, message=None):
        super().__init__(message or f"interrupted by signal {signum}")
        self.signum = signum
        self.message = message

    def saying(self, message):
        """The same interruption, with the line to print."""
        return type(self)(self.signum, message)

    @classmethod
    def of(cls, error):
        """`error` (any KeyboardInterrupt) as an Interrupted."""
        return error if isinstance(error, cls) else cls()

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.signum, self.message)
