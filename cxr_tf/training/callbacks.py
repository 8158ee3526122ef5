"""Keras callbacks of a training run: exact per-epoch metrics, crash-safe history and checkpoints.

Order matters, because Keras passes one `logs` dict through the callbacks in list order:
`standard_callbacks` puts EpochMetrics first so that history.csv, the checkpoints and early
stopping all see `val/auc_mean`, and BackupAndRestore last so that an epoch counts as done
only once everything else about it is on disk.
"""

import csv
import os

import keras
import numpy as np
import tensorflow as tf

from cxr_tf.evaluation import metrics

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

    def on_train_begin(self, logs=None):
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
                if epoch == 0 or epoch == getattr(self.model, "_initial_epoch", 0):
                    for images, _ in self.dataset.take(1):
                        tf.summary.image("inputs/val", images[:8], max_outputs=8)
        self._writer.flush()


def _current_lr(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


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
            if len(kept) == 1:
                kept = []  # header only: let CSVLogger write its own
            _atomic_write_rows(self.filename, kept)
        super().on_train_begin(logs)


def _atomic_write_rows(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    os.replace(tmp, path)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves `last.keras` every epoch and `best.keras` on a new best `monitor` value.

    Each file is written beside its target and renamed into place, so a kill never leaves a
    half-written `best.keras`. The best value so far is read back from history.csv on restart.
    """

    def __init__(self, directory, monitor=MONITOR, mode="max", history_file=None):
        super().__init__()
        self.directory = directory
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.history_file = history_file
        self.best = -np.inf

    def on_train_begin(self, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        self.best = -np.inf
        if self.history_file and os.path.exists(self.history_file):
            with open(self.history_file, newline="") as f:
                values = [float(r[self.monitor]) for r in csv.DictReader(f)
                          if r.get(self.monitor) not in (None, "", "nan")]
            if values:
                self.best = max(self.sign * v for v in values)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._save("last.keras")
        current = logs.get(self.monitor)
        if current is not None and np.isfinite(current) and self.sign * current > self.best:
            self.best = self.sign * current
            self._save("best.keras")

    def _save(self, name):
        target = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".{name[:-len('.keras')]}.tmp.keras")
        self.model.save(tmp, overwrite=True)
        os.replace(tmp, target)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose weights and epoch marker are each written, then renamed.

    Keras writes them in place, so a kill mid-write can leave a torn weights file. The marker
    is renamed last: a kill before it only makes the rerun redo the epoch.
    """

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp_weights = os.path.join(self.backup_dir, "tmp.weights.h5")
        self.model.save_weights(tmp_weights, overwrite=True)
        os.replace(tmp_weights, self._weights_path)
        tmp_meta = self._training_metadata_path + ".tmp"
        with open(tmp_meta, "w") as f:
            f.write(f'{{"epoch": {self._current_epoch}, "batch": {self._last_batch_seen}}}')
        os.replace(tmp_meta, self._training_metadata_path)


def backup_initial_epoch(backup_dir):
    """The epoch a rerun resumes at (0 for a fresh run): the input pipeline needs it before
    fit() starts, so that the resumed run reads exactly the data the crashed one would have."""
    import json

    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])


def standard_callbacks(run_dir, *, epoch_metrics, initial_epoch=0, early_stop_patience=0,
                       tensorboard=True):
    """The callback list of a run, in the order explained in the module docstring.

    epoch_metrics: EpochMetrics instances (validation first; a test one is only logged).
    """
    callbacks = []
    if tensorboard:
        # Keras's own TensorBoard writes losses, graphs and histograms; it runs before
        # EpochMetrics so our `val/...` keys are not written a second time under its names.
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")))
    callbacks.extend(epoch_metrics)
    callbacks.append(CompactProgbarLogger())
    history = os.path.join(run_dir, "history.csv")
    callbacks.append(ResumableCSVLogger(history, initial_epoch=initial_epoch))
    callbacks.append(AtomicCheckpoint(os.path.join(run_dir, "checkpoints"), history_file=history))
    if early_stop_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=MONITOR, mode="max", patience=early_stop_patience, verbose=1))
    callbacks.append(keras.callbacks.TerminateOnNaN())
    callbacks.append(AtomicBackupAndRestore(os.path.join(run_dir, "backup")))
    return callbacks
