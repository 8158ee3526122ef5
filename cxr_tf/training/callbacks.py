"""Keras callbacks of a training run: crash-safe history, checkpoints and backups, the run's
recorded status, and the list of callbacks a run uses (the metric callbacks are in
`epoch_metrics`).

Order matters, because Keras passes one `logs` dict through the callbacks in list order:
`standard_callbacks` puts EpochMetrics first so that TensorBoard, history.csv, the checkpoints
and early stopping all see `val_loss` and `val/auc_mean`, and EpochBackup last so that an
epoch counts as done only once everything else about it is on disk. RunStatus stands just
before it: at the end of training the status is recorded (complete, or stopped early) before
the backup is removed, so no instant looks finished without saying so.

The run's `monitor` (a RunConfig value, `MONITORED` below) picks best.keras and drives early
stopping and the plateau schedule (keras.callbacks.ReduceLROnPlateau, placed after EpochMetrics
so that it sees the validation values, and before EpochBackup so that the reduced learning rate
is saved). The state of the stateful Keras callbacks (the plateau's and early stopping's
counters and best value) is saved inside each backup file, so that a resumed run reduces the
learning rate and stops at the same epochs as an uninterrupted one.

Every file is written through `cxr_tf.atomic` (beside, then renamed) at the paths
`cxr_tf.runs.layout` owns. Only public Keras API is used here.
"""

import dataclasses
import json
import math
import os
import shutil

import h5py
import keras
import numpy as np

from cxr_tf import atomic
from cxr_tf.runs import RunDirError, checkpoints, history, layout, record
from cxr_tf.training import keras_compat
from cxr_tf.training.epoch_metrics import MONITOR, CompactProgbarLogger, TensorBoard


# RunConfig.monitor -> (the key in Keras's logs, whether higher or lower is better).
MONITORED = {"val_auc_mean": (MONITOR, "max"), "val_loss": ("val_loss", "min")}

# The attributes that are a Keras callback's state between epochs (on_train_begin resets them):
# what a resumed run must hand back to behave as if it had never stopped.
CALLBACK_STATE = {keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
                  keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch")}
# The backup file's root attribute that holds that state, as JSON.
STATE_ATTRIBUTE = "cxr_tf_callback_state"


@dataclasses.dataclass(frozen=True)
class Plateau:
    """The plateau schedule's settings, as keras.callbacks.ReduceLROnPlateau names them."""
    factor: float = 0.1
    patience: int = 1
    min_delta: float = 1e-4
    min_lr: float = 0.0


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger that appends across restarts, keeps each epoch exactly once, and numbers
    epochs from 1 as the progress bar and the backups do.

    On (re)start it keeps only the rows of the `initial_epoch` epochs the backup holds: a crash
    between writing a row and backing up that epoch makes the rerun redo the epoch, and its row
    is written again. The file is read by `runs.history` (a torn last row is dropped, a
    0-based file from an older cxr_tf is renumbered) and rewritten whole.
    """

    def __init__(self, filename, initial_epoch=0):
        super().__init__(filename, append=True)
        self.initial_epoch = initial_epoch

    def on_train_begin(self, logs=None):
        history.keep_epochs(self.filename, self.initial_epoch)
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves `last.keras` every epoch and `best.keras` on a new best `monitor` value, both
    without optimizer state (`runs.checkpoints.save_model`); the training state is EpochBackup's.

    Each file is written beside its target and renamed into place, so a kill never leaves a
    half-written `best.keras`; when an epoch is the best, best.keras is a hard link to the
    last.keras just written rather than a second save. The best value so far is read back
    from history.csv on restart, and the best.keras it belongs to is checked whole.
    """

    def __init__(self, model_dir, monitor=MONITOR, mode="max"):
        super().__init__()
        self.model_dir = model_dir
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.best = -np.inf

    def on_train_begin(self, logs=None):
        directory = layout.checkpoints_dir(self.model_dir)
        os.makedirs(directory, exist_ok=True)
        _remove_temporary_files(directory)
        self.best = -np.inf
        best_file = checkpoints.checkpoint_path(self.model_dir, "best", must_exist=False)
        if not os.path.exists(best_file):
            return  # nothing to beat: the first epoch of this fit() becomes best.keras
        checkpoints.verify_checkpoint(best_file)
        values = [r[self.monitor] for r in history.read_history(self.model_dir)
                  if not math.isnan(r.get(self.monitor, math.nan))]
        if values:
            self.best = max(self.sign * v for v in values)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        last = checkpoints.save_model(self.model, self.model_dir, "last")
        current = logs.get(self.monitor)
        if current is not None and np.isfinite(current) and self.sign * current > self.best:
            self.best = self.sign * current
            best = checkpoints.checkpoint_path(self.model_dir, "best", must_exist=False)
            with atomic.replacing(best) as tmp:
                _link_or_copy(last, tmp)


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def _remove_temporary_files(directory):
    """Temporary files a killed process left (the run dir's lock says none is running)."""
    for name in os.listdir(directory):
        if atomic.is_temporary(name):
            os.remove(os.path.join(directory, name))


class EpochBackup(keras.callbacks.Callback):
    """The full training state (weights and optimizer) after each epoch, for resuming.

    Keras's BackupAndRestore writes the weights and the epoch marker as two files, so a kill
    between them resumes new weights with the old epoch number. Here the epoch is in the
    file name (`runs.layout.backup_path`): a new backup is written whole under a temporary name,
    renamed into place, and only then is the previous one removed, so at every instant the
    newest complete backup is one consistent (weights, epoch) pair.

    Args:
        model_dir: the run dir.
        initial_epoch: the epoch fit() starts at (`runs.layout.resume_epoch`); its backup is
            restored at the start of training.
        on_step: test hook, called with "written", "renamed", "pruned" during each save.
        stateful: Keras callbacks of the same fit() whose state (`CALLBACK_STATE`) is saved in
            each backup file (one HDF5 attribute, so weights and state are one atomic unit)
            and handed back on restore, after their on_train_begin reset it.
    """

    def __init__(self, model_dir, initial_epoch=0, on_step=None, stateful=()):
        super().__init__()
        self.model_dir = model_dir
        self.initial_epoch = initial_epoch
        self.on_step = on_step or (lambda step: None)
        self.stateful = list(stateful)

    def on_train_begin(self, logs=None):
        directory = layout.backup_dir(self.model_dir)
        if os.path.isdir(directory):
            _remove_temporary_files(directory)
        if self.initial_epoch:
            self._restore(layout.backup_path(self.model_dir, self.initial_epoch))

    def _restore(self, path):
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # its slots are in the file
        try:
            self.model.load_weights(path)
            saved = _read_state(path)
        except Exception as e:  # h5py, Keras and json raise several types for a damaged file
            raise RunDirError(
                f"{path}: cannot restore the training state ({type(e).__name__}: {e}); "
                f"{checkpoints.what_to_do(path)}") from e
        for callback in self.stateful:
            # A backup without it (an older cxr_tf) leaves the reset state, as before.
            for name, value in saved.get(type(callback).__name__, {}).items():
                setattr(callback, name, value)

    def _state(self):
        return {type(cb).__name__: {name: _number(getattr(cb, name))
                                    for name in _state_names(cb)} for cb in self.stateful}

    def on_epoch_end(self, epoch, logs=None):
        path = layout.backup_path(self.model_dir, epoch + 1)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # The HDF5 file is made in memory and written with plain file I/O: h5py writing to a
        # full disk leaves a file object whose cleanup fails twice at exit and crashes the
        # process (exit 139) after the error was reported.
        state = {STATE_ATTRIBUTE: json.dumps(self._state())}
        data = keras_compat.weights_file_bytes(self.model, state)
        with atomic.replacing(path) as tmp:
            if data is None:  # another Keras release: its own writer
                self.model.save_weights(tmp)
                with h5py.File(tmp, "r+") as f:
                    f.attrs.update(state)
            else:
                with open(tmp, "wb") as f:
                    f.write(data)
            self.on_step("written")
        self.on_step("renamed")
        for older, older_path in layout.backup_files(self.model_dir).items():
            if older < epoch + 1:
                os.remove(older_path)
        self.on_step("pruned")

    def on_train_end(self, logs=None):
        # fit() returned (all epochs, early stop or NaN stop), and RunStatus, just before this,
        # recorded how: the state to resume from is no longer needed.
        shutil.rmtree(layout.backup_dir(self.model_dir), ignore_errors=True)
        self.on_step("removed")


def _state_names(callback):
    return next(names for cls, names in CALLBACK_STATE.items() if isinstance(callback, cls))


def _number(value):
    """A state value as JSON keeps it exactly: None, an int, or a float (repr round-trips;
    json writes an infinite best as Infinity and reads it back)."""
    if value is None:
        return None
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


def _read_state(path):
    """{callback class name: {attribute: value}} saved in the backup at `path` ({} if none).
    ValueError unless it holds only the attributes CALLBACK_STATE names, each None or a
    number: nothing else read from a file is set on a callback."""
    with h5py.File(path, "r") as f:
        text = f.attrs.get(STATE_ATTRIBUTE)
    state = json.loads(text) if text is not None else {}
    allowed = {cls.__name__: names for cls, names in CALLBACK_STATE.items()}
    for owner, values in (state.items() if isinstance(state, dict) else [(None, None)]):
        if owner not in allowed or not isinstance(values, dict):
            raise ValueError(f"{STATE_ATTRIBUTE}: {owner!r} is not a saved callback state")
        for name, value in values.items():
            number = value is None or type(value) in (int, float)
            if name not in allowed[owner] or not number:
                raise ValueError(f"{STATE_ATTRIBUTE}: {owner}.{name}={value!r} is not a saved "
                                 "counter or best value")
    return state


class RunStatus(keras.callbacks.Callback):
    """The run record's status (`runs.record.Status`): running from the start of fit(), then,
    when fit() returns, complete, or stopped with its reason (a NaN loss, early stopping).

    A fit() that raises (Ctrl-C, an error) calls no callback; the runner records that stop.
    A kill records nothing: the status stays running, and the rerun resumes.

    Args:
        model_dir: the run dir (its config.json must exist).
        epochs: the epochs configured; initial_epoch: the epochs the backup holds.
        on_step: test hook, called with "recorded" once the final status is written.

    Attributes:
        epoch: the epoch in progress, counted from 1 (None before the first begins).
    """

    def __init__(self, model_dir, epochs, initial_epoch=0, on_step=None):
        super().__init__()
        self.model_dir = model_dir
        self.epochs = epochs
        self.initial_epoch = initial_epoch
        self.on_step = on_step or (lambda step: None)
        self.epoch = None

    def on_train_begin(self, logs=None):
        self.epoch, self.done, self.diverged = None, self.initial_epoch, False
        record.write_status(self.model_dir, record.Status(record.RUNNING, self.done, self.epochs))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_epoch_end(self, epoch, logs=None):
        self.done = epoch + 1
        self.diverged = not math.isfinite((logs or {}).get("loss", 0.0))

    def on_train_end(self, logs=None):
        record.write_status(self.model_dir, self.final_status())
        self.on_step("recorded")

    def final_status(self):
        if self.diverged:
            return record.Status(record.STOPPED, self.done, self.epochs, record.NAN_LOSS)
        if self.done < self.epochs:
            return record.Status(record.STOPPED, self.done, self.epochs, record.EARLY_STOP)
        return record.Status(record.COMPLETE, self.done, self.epochs)


def standard_callbacks(model_dir, *, epoch_metrics, epochs, initial_epoch=0,
                       early_stop_patience=0, tensorboard=True, monitor="val_auc_mean",
                       plateau=None):
    """The callback list of a run, in the order explained in the module docstring.

    epoch_metrics: EpochMetrics instances (validation first; a test one is only logged).
    epochs: the epochs configured (for the recorded status).
    monitor: a key of MONITORED. plateau: a Plateau for the plateau schedule, else None.
    """
    key, mode = MONITORED[monitor]
    callbacks = list(epoch_metrics)
    if tensorboard:
        callbacks.append(TensorBoard(layout.logs_dir(model_dir)))
    callbacks.append(CompactProgbarLogger())
    callbacks.append(ResumableCSVLogger(layout.history_path(model_dir),
                                        initial_epoch=initial_epoch))
    callbacks.append(AtomicCheckpoint(model_dir, monitor=key, mode=mode))
    stateful = []
    if early_stop_patience:
        stateful.append(keras.callbacks.EarlyStopping(
            monitor=key, mode=mode, patience=early_stop_patience, verbose=1))
    if plateau is not None:
        stateful.append(keras.callbacks.ReduceLROnPlateau(
            monitor=key, mode=mode, verbose=1, **dataclasses.asdict(plateau)))
    callbacks.extend(stateful)
    callbacks.append(keras.callbacks.TerminateOnNaN())
    callbacks.append(RunStatus(model_dir, epochs, initial_epoch))
    callbacks.append(EpochBackup(model_dir, initial_epoch, stateful=stateful))
    return callbacks
