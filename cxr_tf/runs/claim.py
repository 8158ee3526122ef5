"""Claiming a run dir for one training run: the lock, then fresh / resume / complete / another.

    with claim(model_dir, config, chief=True) as claimed:
        if claimed.state == COMPLETE:
            return                      # nothing to train, nothing written
        train(initial_epoch=claimed.initial_epoch)

The chief takes model_dir/.lock (an flock, released by the kernel however the process ends)
for the life of the block; a second holder gets RunDirError naming the first one's pid. With
`config.overwrite` the previous run is deleted (the caller checks every other input first).
Otherwise a run dir whose record holds other values is `DifferingRunError`, listing each
difference, and a complete run (`is_complete`, the one completion rule) is COMPLETE. Other
workers of a multi-worker run only read: they stop with the chief instead of waiting for it,
and never take the lock or delete anything.
"""

import contextlib
import dataclasses
import os
import shutil

from cxr_tf import atomic, locks
from cxr_tf.runs import RunDirError, history, layout, record

FRESH, RESUME, COMPLETE = "fresh", "resume", "complete"
# Fields that may change between a run and its rerun without making it another run.
NOT_THE_RUN = ("model_dir", "overwrite", "verify_data")


class DifferingRunError(RunDirError):
    """The run dir holds a run with other values.

    Attributes:
        model_dir: the run dir.
        differences: [(field, the run's value, the value now)], by field name, as config.json
            records them (thresholds as text).
    """

    def __init__(self, model_dir, differences):
        self.model_dir = model_dir
        self.differences = list(differences)
        shown = "; ".join(f"{name}: {show(was)} (run) != {show(now)} (now)"
                          for name, was, now in self.differences)
        super().__init__(f"{model_dir} holds a run with other values: {shown}. Rerun with the "
                         "run's values to resume it, start afresh with overwrite, or use "
                         "another run dir")

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.model_dir, self.differences)


def show(value):
    """A recorded value as a difference shows it: lists comma-joined."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@dataclasses.dataclass(frozen=True)
class Claimed:
    """What a claim found. state: FRESH, RESUME or COMPLETE. initial_epoch: the epoch
    training starts at (the latest backup's). found: the record that was there, or None."""

    state: str
    initial_epoch: int = 0
    found: record.RunRecord | None = None


@contextlib.contextmanager
def claim(model_dir, config, *, chief=True):
    """Holds `model_dir` for the run `config` (a RunConfig) describes; yields a Claimed.

    chief=False (another worker of a multi-worker run): nothing is locked or deleted, and
    training starts at epoch 0 in the worker's own temporary dir.
    """
    if not chief:
        yield _inspect(model_dir, config, writes=False)
        return
    with locked(model_dir):
        if config.overwrite:
            clear(model_dir)
        yield _inspect(model_dir, config, writes=True)


def _inspect(model_dir, config, *, writes):
    if config.overwrite and not writes:
        return Claimed(FRESH)  # the chief deletes the previous run
    initial_epoch = layout.resume_epoch(model_dir) if writes else 0
    if not record.exists(model_dir):
        return Claimed(RESUME if initial_epoch else FRESH, initial_epoch)
    found = record.read(model_dir)
    changed = differences(found, config)
    if changed:
        raise DifferingRunError(model_dir, changed)
    if is_complete(model_dir):
        return Claimed(COMPLETE, initial_epoch, found)
    return Claimed(RESUME, initial_epoch, found)


def differences(found, config):
    """[(field, run value, value now)] of each field the record knows that `config` sets
    otherwise (model_dir and overwrite are not compared)."""
    was, now = found.config.to_dict(), config.to_dict()
    return [(name, was[name], now[name]) for name in sorted(now)
            if name not in NOT_THE_RUN and name in found.recorded and was[name] != now[name]]


def is_complete(model_dir):
    """True when training finished: config.json and a history row exist and no backup is
    left (training removes backup/ only once fit() has returned). The one completion rule."""
    return (record.exists(model_dir) and bool(history.read_history(model_dir))
            and not layout.backup_files(model_dir))


@contextlib.contextmanager
def locked(model_dir):
    """Holds model_dir/.lock for the life of the block; RunDirError naming the holder's pid
    when another process holds it."""
    def in_use(holder):
        return RunDirError(f"{model_dir}: in use by another training process (pid {holder}); "
                           "wait for it to end or use another run dir")

    with locks.held(layout.lock_path(model_dir), in_use):
        yield


def clear(model_dir):
    """Deletes what a run wrote (layout.RUN_FILES, evaluate's eval_* reports, temporary
    files); other files (the lock, the user's own) stay."""
    for name in os.listdir(model_dir):
        path = os.path.join(model_dir, name)
        if name in layout.RUN_FILES or atomic.is_temporary(name) or \
                (name.startswith(layout.EVAL_PREFIX) and os.path.isdir(path)):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
