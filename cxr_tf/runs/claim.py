"""Claiming a run dir for one training run: the lock, then fresh / resume / complete /
stopped / another.

    with claim(model_dir, config, chief=True) as claimed:
        if claimed.state in (COMPLETE, STOPPED):
            return                      # nothing to train, nothing written
        train(initial_epoch=claimed.initial_epoch)

The chief takes model_dir/.lock (an flock, released by the kernel however the process ends)
for the life of the block; a second holder gets RunDirError naming the first one's pid. With
`config.overwrite` the previous run is deleted, but only a run dir's (`check_overwritable`:
its record says it is cxr_tf's; the caller checks every other input first). Otherwise a run
dir whose record holds other values is `DifferingRunError`, listing each difference; a run
whose status (`cxr_tf.runs.status`) says complete is COMPLETE, and one that stopped by its own
rule (early stopping, a NaN loss) is STOPPED. A block that fails before the run finished an
epoch removes the run dir when the claim created it: a failed start leaves nothing behind.
Other workers of a multi-worker run only read: they stop with the chief instead of waiting
for it, and never take the lock or delete anything.
"""

import contextlib
import dataclasses
import os
import shutil

from cxr_tf import atomic, locks
from cxr_tf.runs import RunDirError, history, layout, record, status

FRESH, RESUME, COMPLETE, STOPPED = "fresh", "resume", "complete", "stopped"
# Fields that may change between a run and its rerun without making it another run.
NOT_THE_RUN = ("model_dir", "overwrite", "verify_data", "cluster_timeout")


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
    """What a claim found. state: FRESH, RESUME, COMPLETE or STOPPED. initial_epoch: the
    epoch training starts at (the latest backup's). found: the record that was there, or
    None. status: the found run's record.Status (recorded, or judged for an older run dir)."""

    state: str
    initial_epoch: int = 0
    found: record.RunRecord | None = None
    status: record.Status | None = None


@contextlib.contextmanager
def claim(model_dir, config, *, chief=True):
    """Holds `model_dir` for the run `config` (a RunConfig) describes; yields a Claimed.

    chief=False (another worker of a multi-worker run): nothing is locked or deleted, and
    training starts at epoch 0 in the worker's own temporary dir.
    """
    if not chief:
        yield _inspect(model_dir, config, writes=False)
        return
    if config.overwrite:
        check_overwritable(model_dir)  # before the lock file is made in a folder not ours
    created = not os.path.lexists(model_dir)
    with locked(model_dir):
        if config.overwrite:
            clear(model_dir)
        try:
            yield _inspect(model_dir, config, writes=True)
        except BaseException:
            if created and not trained(model_dir):
                shutil.rmtree(model_dir, ignore_errors=True)
            raise


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
    now = status.of(model_dir, found)
    if now.state == record.COMPLETE:
        return Claimed(COMPLETE, initial_epoch, found, now)
    if now.final:
        return Claimed(STOPPED, initial_epoch, found, now)
    return Claimed(RESUME, initial_epoch, found, now)


def differences(found, config):
    """[(field, run value, value now)] of each field the record knows that `config` sets
    otherwise (model_dir and overwrite are not compared)."""
    was, now = found.config.to_dict(), config.to_dict()
    return [(name, was[name], now[name]) for name in sorted(now)
            if name not in NOT_THE_RUN and name in found.recorded and was[name] != now[name]]


def is_complete(model_dir):
    """True when the run in `model_dir` trained every configured epoch, as its record says
    (`cxr_tf.runs.status`: the one completion rule)."""
    return record.exists(model_dir) and \
        status.of(model_dir, record.read(model_dir)).state == record.COMPLETE


def trained(model_dir):
    """Whether any epoch of the run in `model_dir` finished (a history row or a backup);
    True when that cannot be told (a damaged history.csv): then nothing is removed."""
    try:
        return bool(layout.backup_files(model_dir)) or bool(history.read_history(model_dir))
    except (OSError, RunDirError):
        return True


def check_overwritable(model_dir):
    """Raises RunDirError, naming what it found, unless overwrite may empty `model_dir`: it
    does not exist, holds nothing (a lock and temporary files aside), or is a cxr_tf run dir
    (its config.json is a cxr_tf run record). A folder of other files, another tool's
    config.json, the home folder: refused."""
    if not os.path.isdir(model_dir):
        if os.path.lexists(model_dir):
            raise RunDirError(f"{model_dir}: not a folder; overwrite deletes only a run dir")
        return
    names = sorted(name for name in os.listdir(model_dir)
                   if name != layout.LOCK_FILE and not atomic.is_temporary(name))
    if not names:
        return
    real = os.path.realpath(model_dir)
    special = {os.path.realpath(os.path.expanduser("~")): "the home folder",
               os.path.realpath(os.sep): "the root folder"}
    if real in special:
        raise RunDirError(f"{model_dir}: is {special[real]}; overwrite deletes only a run dir: "
                          "give the run's own folder as model_dir")
    if not record.exists(model_dir):
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise RunDirError(f"{model_dir}: not a cxr_tf run dir (no {layout.CONFIG_FILE}; it "
                          f"holds {shown}); overwrite deletes only a run dir: use another "
                          "model_dir")
    record.read_json(model_dir)  # another tool's config.json: RunDirError naming it


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
