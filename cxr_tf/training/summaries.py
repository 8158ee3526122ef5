"""What a run writes to TensorBoard beside Keras's own runs, with TensorBoard's own plugins:
the Custom Scalars layout, the HParams experiment, PR curves, labelled input images and text.

Every function writes to the default summary writer (`writer.as_default(step=...)`). Nothing
here writes a non-finite number: TensorBoard draws NaN on the x-axis, where it reads as 0.
"""

import re

import numpy as np
import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as layout_summary
from tensorboard.plugins.pr_curve import summary as pr_summary

from cxr_tf.evaluation import metrics

TRAIN_AUC_DESCRIPTION = (
    "Keras's streaming AUC over the epoch's training batches, averaged over the model's "
    "outputs: computed while the weights change, on augmented images in training mode, from "
    "200 thresholds. A trend to set beside `val/auc_mean`, not an exact figure.")


def _chart(title, *tags):
    """A multiline chart; each tag is a regular expression matched from its start."""
    return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=tags))


def _exact(tag):
    return f"^{re.escape(tag)}$"


def layout(label_names, thresholds, prefix="val"):
    """The Custom Scalars layout: the charts a user opens TensorBoard for, one page each.

    Chart titles do not depend on the run, so that TensorBoard, which merges the layouts of
    every run under its logdir and drops identical charts, shows each chart once.
    """
    ts = [metrics.format_threshold(t) for t in thresholds]
    return layout_pb2.Layout(category=[
        layout_pb2.Category(title="AUC", chart=[
            _chart("mean AUC: train (streaming) vs validation", _exact("train/auc_mean"),
                   _exact(f"{prefix}/auc_mean")),
            _chart("validation AUC per finding (findings with too few cases have no line)",
                   *[_exact(f"{prefix}/auc/{name}") for name in label_names]),
        ]),
        layout_pb2.Category(title="F1 at the paper's thresholds", chart=[
            _chart("validation macro F1 at each threshold",
                   *[_exact(f"{prefix}/f1@{t}/macro") for t in ts]),
            _chart("validation micro F1 at each threshold",
                   *[_exact(f"{prefix}/f1@{t}/micro") for t in ts]),
            _chart("the paper's AUC of 0/1 predictions at each threshold",
                   *[_exact(f"{prefix}/paper_auc@{t}") for t in ts]),
        ]),
        layout_pb2.Category(title="Loss", chart=[
            _chart("loss: train vs validation", _exact("train/loss"), _exact(f"{prefix}/loss")),
            # Alone, so that a validation spike does not flatten it against the x-axis.
            _chart("train loss", _exact("train/loss")),
        ]),
        layout_pb2.Category(title="Learning rate", chart=[
            _chart("learning rate", _exact("train/learning_rate")),
        ]),
    ])


def write_layout(label_names, thresholds, prefix="val"):
    tf.summary.experimental.write_raw_pb(
        layout_summary.pb(layout(label_names, thresholds, prefix)).SerializeToString(), step=0)


def hparams_metrics(thresholds, prefix="val"):
    """The HParams table's metric columns, in order: the monitored mean AUC first."""
    tags = [f"{prefix}/auc_mean", f"{prefix}/loss"]
    tags += [f"{prefix}/f1@{metrics.format_threshold(t)}/macro" for t in thresholds]
    return tags + ["train/loss"]


def write_hparams(hparams, thresholds, prefix="val"):
    """The session's hyperparameters, and an experiment that declares its metrics explicitly
    (without it, HParams shows a column for every scalar tag, in alphabetical order)."""
    from tensorboard.plugins.hparams import api as hp

    hp.hparams_config(hparams=[hp.HParam(name) for name in hparams],
                      metrics=[hp.Metric(tag) for tag in hparams_metrics(thresholds, prefix)])
    hp.hparams(hparams)


def write_scalars(values, descriptions=None):
    """Scalars {tag: value}; a non-finite value writes no point. Returns the tags skipped."""
    descriptions = descriptions or {}
    skipped = []
    for tag, value in values.items():
        if value is None or not np.isfinite(value):
            skipped.append(tag)
            continue
        tf.summary.scalar(tag, value, description=descriptions.get(tag))
    return skipped


def write_pr_curves(y_true, y_score, label_names, shown, prefix="val"):
    """One PR curve per finding in `shown` (a bool per finding), at tag
    `{prefix}/pr/{name}/pr_curves`, titled with the finding's counts."""
    positives, negatives = metrics.class_counts(y_true)
    for c in np.flatnonzero(shown):
        name = label_names[c]
        proto = pr_summary.pb(
            f"{prefix}/pr/{name}", y_true[:, c].astype(bool),
            y_score[:, c].astype(np.float32),
            display_name=f"{name} ({positives[c]} positives, {negatives[c]} negatives)",
            description=f"Precision-recall on {prefix} for {name}, one curve per epoch.")
        tf.summary.experimental.write_raw_pb(proto.SerializeToString())


def label_text(row, label_names):
    names = [name for name, value in zip(label_names, row) if value > 0.5]
    return ", ".join(names) if names else "no finding"


def write_inputs(images, y_true, label_names, tag="inputs/val"):
    """The images as the model receives them, their labels in the summary's description
    (numbered as TensorBoard numbers the samples), so a user sees what was asked."""
    y_true = np.asarray(y_true)[:, :len(label_names)]
    lines = [f"{i}. {label_text(row, label_names)}" for i, row in enumerate(y_true, start=1)]
    tf.summary.image(tag, images, max_outputs=len(lines),
                     description="Labels of the samples, in order:\n\n" + "\n".join(lines))


def counts_table(y_true, label_names, shown, prefix="val"):
    """Markdown: each finding's positives and negatives, and whether its figures are drawn."""
    positives, negatives = metrics.class_counts(y_true)
    rows = [f"| finding | positives | negatives | per-finding figures on {prefix} |",
            "|---|---:|---:|---|"]
    for c, name in enumerate(label_names):
        why = "drawn" if shown[c] else (
            "withheld: " + metrics.not_estimable_reason(positives[c], negatives[c]))
        rows.append(f"| {name} | {positives[c]} | {negatives[c]} | {why} |")
    return "\n".join(rows)


def write_text(tag, markdown):
    tf.summary.text(tag, markdown)
