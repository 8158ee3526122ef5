"""The callbacks that measure a run and show it: exact per-epoch metrics (EpochMetrics), Keras's
TensorBoard fed with them, and a compact progress bar.

EpochMetrics runs first in the callback list (`callbacks.standard_callbacks`), so that
TensorBoard, history.csv, the checkpoints and early stopping all see `val_loss` and
`val/auc_mean` in the `logs` dict Keras passes along.

Two records, one small-count rule. The `logs` (and so history.csv, best.keras and early
stopping) keep every figure that can be computed: a finding's AUC is NaN only when the split
holds one label value, and `val/auc_mean` averages the others, so a small run still picks a
checkpoint. What a person reads per finding in TensorBoard (AUC, F1, precision, recall, PR
curve) follows the evaluate report instead: below `metrics.MIN_CLASS_COUNT` positives or
negatives it is withheld, and the split's counts are written as text so the gap is explained.
No non-finite number is ever written to TensorBoard.
"""

import math
import sys

import keras
import numpy as np
import tensorflow as tf

from cxr_tf.evaluation import metrics
from cxr_tf.training import summaries

MONITOR = "val/auc_mean"

# A loss that grows more than this between two epochs is reported as a possible divergence.
DIVERGENCE_FACTOR = 10.0


class EpochMetrics(keras.callbacks.Callback):
    """Predicts one split once per epoch and logs exact AUC / F1 / precision / recall.

    The validation instance also logs the learning rate, warns when a loss diverges, and
    writes the run's TensorBoard layout, hparams, input images and PR curves.

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
        # Per finding: are its figures shown in TensorBoard (the report's small-count rule)?
        self.shown = metrics.auc_estimable(self.y_true[:, :len(self.label_names)])
        self._writer = None
        self._local_predict = None
        self._first_epoch_logged = False
        self._previous_losses = {}

    def on_train_begin(self, logs=None):
        # Once per fit(): a resumed run shows its images and counts again, and compares
        # losses only within this fit().
        self._first_epoch_logged = False
        self._previous_losses = {}
        self._writer = tf.summary.create_file_writer(self.log_dir) if self.log_dir else None
        if self._writer is not None and self.prefix == "val":
            with self._writer.as_default(step=0):
                summaries.write_layout(self.label_names, self.thresholds, self.prefix)
                if self.hparams:
                    summaries.write_hparams(self.hparams, self.thresholds, self.prefix)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logits = np.asarray(self._predict(), np.float64)
        results = self._compute(logits)
        logs.update(results)
        warning = None
        if self.prefix == "val":
            logs["learning_rate"] = _current_lr(self.model)  # Keras 3 does not log it itself
            warning = self._check_divergence(epoch, logs)
        if self._writer is not None:
            self._write(epoch, logs, results, logits, warning)

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

    def _check_divergence(self, epoch, logs):
        current = {key: logs.get(key) for key in ("loss", "val_loss")}
        warning = divergence_warning(epoch, self._previous_losses, current)
        self._previous_losses = current
        if warning:
            print(warning, file=sys.stderr, flush=True)
        return warning

    def _write(self, epoch, logs, results, logits, warning):
        n = len(self.label_names)
        with self._writer.as_default(step=epoch):
            summaries.write_scalars(self._scalars(logs, results), self._descriptions())
            if np.all(np.isfinite(logits)):
                summaries.write_pr_curves(self.y_true[:, :n], metrics.sigmoid(logits[:, :n]),
                                          self.label_names, self.shown, self.prefix)
            if warning:
                summaries.write_text("warnings/divergence", warning)
            if not self._first_epoch_logged:
                self._write_first_epoch()
        self._writer.flush()

    def _scalars(self, logs, results):
        """{tag: value} to draw: the per-finding figures of withheld findings left out."""
        withheld = {name for name, shown in zip(self.label_names, self.shown) if not shown}
        values = {(f"{self.prefix}/loss" if key == f"{self.prefix}_loss" else key): value
                  for key, value in results.items() if key.rsplit("/", 1)[-1] not in withheld}
        if self.prefix == "val":
            values["train/loss"] = logs.get("loss")
            values["train/auc_mean"] = logs.get("auc")
            values["train/learning_rate"] = logs.get("learning_rate")
        return values

    def _descriptions(self):
        defined = int(np.sum(np.ptp(self.y_true[:, :len(self.label_names)], axis=0) > 0))
        return {
            f"{self.prefix}/auc_mean": (
                f"Mean ROC AUC over the {defined} findings with both label values in "
                f"{self.prefix} (the history.csv column; on validation it picks best.keras). "
                f"{int(self.shown.sum())} of them have at least {metrics.MIN_CLASS_COUNT} "
                "positives and negatives and are drawn per finding."),
            "train/auc_mean": summaries.TRAIN_AUC_DESCRIPTION,
        }

    def _write_first_epoch(self):
        n = len(self.label_names)
        summaries.write_text(f"{self.prefix}/class_counts", summaries.counts_table(
            self.y_true[:, :n], self.label_names, self.shown, self.prefix))
        if self.prefix == "val":
            for images, y in self.dataset.take(1):
                summaries.write_inputs(images[:8], np.asarray(y)[:8], self.label_names)
        self._first_epoch_logged = True


def divergence_warning(epoch, previous, current, factor=DIVERGENCE_FACTOR):
    """One line when a loss in `current` ({"loss": .., "val_loss": ..}) is not finite or grew
    more than `factor` times its value in `previous` (the epoch before); else None."""
    parts = []
    for key, name in (("loss", "training loss"), ("val_loss", "validation loss")):
        now, before = current.get(key), previous.get(key)
        if now is None:
            continue
        if not math.isfinite(now):
            parts.append(f"the {name} is {now}")
        elif before is not None and math.isfinite(before) and 0 < before * factor < now:
            parts.append(f"the {name} rose {now / before:,.0f}x, from {before:.4g} to "
                         f"{now:,.4g}")
    if not parts:
        return None
    return (f"warning: epoch {epoch + 1}: {'; '.join(parts)}. Training may be diverging; "
            "a lower learning rate usually helps")


def _current_lr(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard, run after EpochMetrics, so that its `validation` run exists.

    Keras writes `logs/validation` only from `val_*` keys, which fit() produces only when it
    is given validation data; our validation is EpochMetrics' exact pass instead. This passes
    Keras the validation loss (`val_loss`) and mean AUC (as `val_auc`), so `epoch_loss` and
    `epoch_auc` show train and validation curves overlaid, and keeps the `val/...` and
    `test...` keys (EpochMetrics' own `metrics` run) out of Keras's runs. A non-finite value
    (a diverged epoch) writes no point: TensorBoard would draw it as 0.
    """

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        keras_logs = {k: v for k, v in logs.items()
                      if "/" not in k and not k.startswith("test_")}
        if MONITOR in logs:
            keras_logs["val_auc"] = logs[MONITOR]
        super().on_epoch_end(epoch, {k: v for k, v in keras_logs.items() if _finite(v)})


def _finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number: Keras's own business


class CompactProgbarLogger(keras.callbacks.ProgbarLogger):
    """The Keras progress bar, showing headline figures only: per-class values (dozens of
    them) stay in history.csv and TensorBoard instead of flooding the terminal."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items() if _headline(k)})


def _headline(key):
    if "/" not in key:
        return True  # loss, auc, val_loss, learning_rate
    return key.endswith("/auc_mean") or (key.endswith("/macro") and "/f1@" in key)
