"""The callbacks that measure a run and show it: exact per-epoch metrics (EpochMetrics), Keras's
TensorBoard fed with them, and a compact progress bar.

EpochMetrics runs first in the callback list (`callbacks.standard_callbacks`), so that
TensorBoard, history.csv, the checkpoints and early stopping all see `val_loss` and
`val/auc_mean` in the `logs` dict Keras passes along.
"""

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
