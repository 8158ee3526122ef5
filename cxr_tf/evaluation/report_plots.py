"""The evaluation report's figures: ROC and precision-recall per finding, and the reliability
diagram of the reported calibration error. matplotlib's object API only (no pyplot state)."""

import math
import os

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_tf.evaluation import metrics, published


def _grid(label_names, extra):
    """A figure with one small panel per finding plus `extra` panels, 4 per row."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    panels = len(label_names) + extra
    rows = math.ceil(panels / 4)
    fig = Figure(figsize=(13, 3.2 * rows))
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.05, top=0.93, wspace=0.3, hspace=0.45)
    axes = fig.subplots(rows, 4, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_axis_off()
    return fig, axes[:panels]


def _finish_grid(fig, axes, path, xlabel, ylabel, title):
    for ax in axes[-4:]:  # the bottom panel of each column
        ax.set_xlabel(xlabel)
    for ax in axes[::4]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    return path


def _estimable(truth):
    positives = int(truth.sum())
    return metrics.not_estimable_reason(positives, len(truth) - positives) is None


def panel_title(kind, name, truth, prob):
    """A panel's title: the finding, its counts, then the AUC ("roc", with Wang 2017's) or
    the AP and prevalence ("pr"), or why the figure is not estimable (metrics.MIN_CLASS_COUNT:
    the rule of the report's tables)."""
    positives = int(truth.sum())
    title = f"{name} ({positives:,}+ / {len(truth) - positives:,}−)"
    figure = "AUC" if kind == "roc" else "AP"
    reason = metrics.not_estimable_reason(positives, len(truth) - positives)
    if reason is not None:
        return title + f"\n{figure} not estimable: {reason}"
    if kind == "pr":
        return (title + f"\nAP {average_precision_score(truth, prob):.3f}, "
                f"prevalence {truth.mean():.3f}")
    title += f"\nAUC {roc_auc_score(truth, prob):.3f}"
    if name in published.WANG2017_AUC:
        title += f" (Wang 2017: {published.WANG2017_AUC[name]:.3f})"
    return title


def plot_roc(path, y_true, y_prob, label_names):
    """ROC curve per finding (counts, AUC and the published AUC in the title), plus
    micro-average; no curve where the AUC is not estimable (metrics.MIN_CLASS_COUNT)."""
    from sklearn.metrics import roc_curve

    fig, axes = _grid(label_names, 1)
    columns = [(name, y_true[:, c], y_prob[:, c]) for c, name in enumerate(label_names)]
    columns.append(("micro-average", y_true.ravel(), y_prob.ravel()))
    for ax, (name, truth, prob) in zip(axes, columns):
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        if _estimable(truth):
            fpr, tpr, _ = roc_curve(truth, prob)
            ax.plot(fpr, tpr, lw=1.5)
        ax.set(title=panel_title("roc", name, truth, prob), xlim=(0, 1), ylim=(0, 1.01),
               aspect="equal")
        ax.title.set_fontsize(9)
    return _finish_grid(fig, axes, path, "false positive rate", "true positive rate",
                        "ROC per finding")


def plot_pr(path, y_true, y_prob, label_names):
    """Precision-recall curve per finding (counts, AP and prevalence in the title), with the
    prevalence (a random model) dashed; no curve where AP is not estimable
    (metrics.MIN_CLASS_COUNT), as on roc.png."""
    from sklearn.metrics import precision_recall_curve

    fig, axes = _grid(label_names, 1)
    columns = [(name, y_true[:, c], y_prob[:, c]) for c, name in enumerate(label_names)]
    columns.append(("micro-average", y_true.ravel(), y_prob.ravel()))
    for ax, (name, truth, prob) in zip(axes, columns):
        if _estimable(truth):
            precision, recall, _ = precision_recall_curve(truth, prob)
            ax.plot(recall, precision, lw=1.5, drawstyle="steps-post")
            ax.axhline(truth.mean(), color="0.7", lw=0.8, ls="--")
        ax.set(title=panel_title("pr", name, truth, prob), xlim=(0, 1), ylim=(0, 1.01))
        ax.title.set_fontsize(9)
    return _finish_grid(fig, axes, path, "recall", "precision", "Precision-recall per finding")


def _reliability(y_true, y_prob, n_bins):
    """(mean probability, positive rate) of the filled bins, and every bin's count."""
    prob, label = np.asarray(y_prob, float).ravel(), np.asarray(y_true, float).ravel()
    bins = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    filled = count > 0
    return (np.bincount(bins, prob, n_bins)[filled] / count[filled],
            np.bincount(bins, label, n_bins)[filled] / count[filled], count)


def plot_calibration(path, y_true, y_prob, n_bins=15, before=None):
    """Reliability diagram over all (image, finding) pairs, the bins of the reported ECE.
    before: the uncalibrated probabilities, drawn beside (when the run is calibrated)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], color="0.7", ls="--", label="perfectly calibrated")
    curves = [("model", y_prob)] if before is None else [("before calibration", before),
                                                          ("calibrated", y_prob)]
    eces = []
    for name, probs in curves:
        mean_prob, positive_rate, count = _reliability(y_true, probs, n_bins)
        ece = metrics.expected_calibration_error(np.asarray(y_true), np.asarray(probs), n_bins)
        top.plot(mean_prob, positive_rate, marker="o", label=f"{name} (ECE {ece:.4f})")
        eces.append(f"{ece:.4f}")
    top.set(ylabel="fraction positive", xlim=(0, 1), ylim=(0, 1),
            title=f"Calibration, all findings pooled (ECE {' → '.join(eces)}, {n_bins} bins)")
    top.legend(loc="upper left")
    edges = np.linspace(0, 1, n_bins + 1)
    bottom.bar(edges[:-1], count, width=1 / n_bins, align="edge", color="0.6", log=True)
    bottom.set(xlabel="predicted probability", ylabel="pairs (log)")
    fig.savefig(path, dpi=80)
    return path


def write_plots(out_dir, scored, before=None):
    """roc.png, pr.png and calibration.png in out_dir for an `inputs.Scored` (0/1 labels);
    returns their paths. before: uncalibrated probabilities for the reliability diagram."""
    y_true, y_prob = np.asarray(scored.y_true), np.asarray(scored.y_prob, dtype=np.float64)
    names = scored.label_names
    return [plot_roc(os.path.join(out_dir, "roc.png"), y_true, y_prob, names),
            plot_pr(os.path.join(out_dir, "pr.png"), y_true, y_prob, names),
            plot_calibration(os.path.join(out_dir, "calibration.png"), y_true, y_prob,
                             before=before)]
