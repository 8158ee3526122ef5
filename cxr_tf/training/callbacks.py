"""Keras callbacks of a training run: exact per-epoch metrics, crash-safe history and checkpoints.

Order matters, because Keras passes one `logs` dict through the callbacks in list order:
`standard_callbacks` puts EpochMetrics first so that TensorBoard, history.csv, the checkpoints
and early stopping all see `val_loss` and `val/auc_mean`, and EpochBackup last so that an
epoch counts as done only once everything else about it is on disk.

Every file is written through `cxr_tf.atomic` (beside, then renamed) at the paths
`cxr_tf.runs.layout` owns. Only public Keras API is used here.
"""

import csv
import io
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from cxr_tf import atomic
from cxr_tf.evaluation import metrics
from cxr_tf.runs import RunDirError, checkpoints, history, layout

MONITOR = "val/auc_mean"


class EpochMetrics(keras.callbacks.Callback):
    """Predicts one split once per epoch and logs exact AUC / F1 / precision / recall.

    Args:
        dataset: batches of (image, labels) in the order of `y_true`, one pass.
        y_true: (n, C) multi-hot targets of that split (C = 14, or 15 with No Finding).
        thresholds: decision thresholds for F1, precision, recall and the paper's AUC.
        label_names: the 14 finding names, in model output order.
        log_dir: TensorBoard dir for the stable `{prefix}/…` tags (None: no TensorBoard).
        prefix: "val", or "test" (logged, never monitored).
        hparams: dict written once to TensorBoard's HParams plugin.

    Example:
        EpochMetrics(val_ds, y_val, [0.5], LABELS, "run/logs/metrics")
    """

    def __init__(self, dataset, y_true, thresholds, label_names, log_dir=None, prefix="val",
                 hparams=None):
        super().__init__()
        self.dataset = dataset
        self.y_true = np.asarray(y_true)
        self.thresholds = [float(t) for t in thresholds]
        self.label_names = list(label_names)
        self.log_dir = log_dir
        self.prefix = prefix
        self.hparams = hparams
        self._writer = None
        self._local_predict = None
        self._images_logged = False

    def on_train_begin(self, logs=None):
        self._images_logged = False  # once per fit(): a resumed run logs its first epoch's
        self._writer = tf.summary.create_file_writer(self.log_dir) if self.log_dir else None
        if self._writer is not None and self.hparams:
            from tensorboard.plugins.hparams import api as hp

            with self._writer.as_default():
                hp.hparams(self.hparams)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        results = self._compute(np.asarray(self._predict(), np.float64))
        logs.update(results)
        if self.prefix == "val":
            logs["learning_rate"] = _current_lr(self.model)  # Keras 3 does not log it itself
        if self._writer is not None:
            self._write(epoch, logs, results)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()

    def _predict(self):
        if not isinstance(self.model.distribute_strategy,
                          tf.distribute.MultiWorkerMirroredStrategy):
            return self.model.predict(self.dataset, verbose=0)
        # Keras's predict under MultiWorkerMirroredStrategy gathers every worker's copy of the
        # (unsharded) split into one array; each worker predicts the whole split locally instead.
        if self._local_predict is None:
            self._local_predict = tf.function(lambda x: self.model(x, training=False))
        return np.concatenate([self._local_predict(x).numpy() for x, _ in self.dataset])

    def _compute(self, logits):
        if logits.shape[0] != self.y_true.shape[0]:
            raise ValueError(
                f"{self.prefix}: predicted {logits.shape[0]} rows for {self.y_true.shape[0]} labels"
            )
        n = len(self.label_names)
        y_true = self.y_true[:, :n]
        with np.errstate(invalid="ignore"):  # a diverged model's NaN logits: a NaN loss
            loss = float(np.mean(np.logaddexp(0.0, logits) - self.y_true * logits))
        results = {f"{self.prefix}_loss": loss}
        if not np.all(np.isfinite(logits)):
            # A diverged model: report NaN rather than crash the run in scikit-learn.
            keys = metrics.epoch_metrics(y_true, np.zeros_like(y_true, float), self.thresholds,
                                         self.label_names, prefix=self.prefix)
            results.update({key: float("nan") for key in keys})
            return results
        scores = metrics.sigmoid(logits[:, :n])
        results.update(metrics.epoch_metrics(y_true, scores, self.thresholds, self.label_names,
                                             prefix=self.prefix))
        return results

    def _write(self, epoch, logs, results):
        with self._writer.as_default(step=epoch):
            for key, value in results.items():
                tag = f"{self.prefix}/loss" if key == f"{self.prefix}_loss" else key
                tf.summary.scalar(tag, value)
            if self.prefix == "val":
                if "loss" in logs:
                    tf.summary.scalar("train/loss", logs["loss"])
                tf.summary.scalar("train/learning_rate", _current_lr(self.model))
                if not self._images_logged:
                    for images, _ in self.dataset.take(1):
                        tf.summary.image("inputs/val", images[:8], max_outputs=8)
                    self._images_logged = True
        self._writer.flush()


def _current_lr(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard, run after EpochMetrics, so that its `validation` run exists.

    Keras writes `logs/validation` only from `val_*` keys, which fit() produces only when it
    is given validation data; our validation is EpochMetrics' exact pass instead. This passes
    Keras the validation loss (`val_loss`) and mean AUC (as `val_auc`), so `epoch_loss` and
    `epoch_auc` show train and validation curves overlaid, and keeps the `val/...` and
    `test...` keys (EpochMetrics' own `metrics` run) out of Keras's runs.
    """

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        keras_logs = {k: v for k, v in logs.items()
                      if "/" not in k and not k.startswith("test_")}
        if MONITOR in logs:
            keras_logs["val_auc"] = logs[MONITOR]
        super().on_epoch_end(epoch, keras_logs)


class CompactProgbarLogger(keras.callbacks.ProgbarLogger):
    """The Keras progress bar, showing headline figures only: per-class values (dozens of
    them) stay in history.csv and TensorBoard instead of flooding the terminal."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items() if _headline(k)})


def _headline(key):
    if "/" not in key:
        return True  # loss, auc, val_loss, learning_rate
    return key.endswith("/auc_mean") or (key.endswith("/macro") and "/f1@" in key)


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger that appends across restarts and keeps each epoch exactly once.

    On (re)start it drops rows for epochs >= `initial_epoch`: a crash between writing a row and
    backing up that epoch makes the rerun redo the epoch, and its row is written again.
    """

    def __init__(self, filename, initial_epoch=0):
        super().__init__(filename, append=True)
        self.initial_epoch = initial_epoch

    def on_train_begin(self, logs=None):
        if os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                rows = list(csv.reader(f))
            kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) < self.initial_epoch]
            text = io.StringIO()
            if len(kept) > 1:  # header only: let CSVLogger write its own
                csv.writer(text).writerows(kept)
            atomic.write_file(self.filename, text.getvalue(), newline="")
        super().on_train_begin(logs)


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
        values = [float(r[self.monitor]) for r in history.read_history(self.model_dir)
                  if r.get(self.monitor) not in (None, "", "nan")]
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
    """

    def __init__(self, model_dir, initial_epoch=0, on_step=None):
        super().__init__()
        self.model_dir = model_dir
        self.initial_epoch = initial_epoch
        self.on_step = on_step or (lambda step: None)

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
        except Exception as e:  # h5py and Keras raise several types for a damaged file
            raise RunDirError(
                f"{path}: cannot restore the training state ({type(e).__name__}: {e}); "
                f"{checkpoints.what_to_do(path)}") from e

    def on_epoch_end(self, epoch, logs=None):
        path = layout.backup_path(self.model_dir, epoch + 1)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic.replacing(path) as tmp:
            self.model.save_weights(tmp)
            self.on_step("written")
        self.on_step("renamed")
        for older, older_path in layout.backup_files(self.model_dir).items():
            if older < epoch + 1:
                os.remove(older_path)
        self.on_step("pruned")

    def on_train_end(self, logs=None):
        # fit() returned (all epochs, early stop or NaN stop): the run is complete.
        shutil.rmtree(layout.backup_dir(self.model_dir), ignore_errors=True)


def standard_callbacks(model_dir, *, epoch_metrics, initial_epoch=0, early_stop_patience=0,
                       tensorboard=True):
    """The callback list of a run, in the order explained in the module docstring.

    epoch_metrics: EpochMetrics instances (validation first; a test one is only logged).
    """
    callbacks = list(epoch_metrics)
    if tensorboard:
        callbacks.append(TensorBoard(layout.logs_dir(model_dir)))
    callbacks.append(CompactProgbarLogger())
    callbacks.append(ResumableCSVLogger(layout.history_path(model_dir),
                                        initial_epoch=initial_epoch))
    callbacks.append(AtomicCheckpoint(model_dir))
    if early_stop_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=MONITOR, mode="max", patience=early_stop_patience, verbose=1))
    callbacks.append(keras.callbacks.TerminateOnNaN())
    callbacks.append(EpochBackup(model_dir, initial_epoch))
    return callbacks
