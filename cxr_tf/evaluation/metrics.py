"""Multi-label metrics on numpy arrays: AUC, thresholded F1/precision/recall, and friends.

numpy and scikit-learn only (no keras, no tensorflow), so the same figures come out of the
per-epoch callback, the evaluate app and a notebook. Inputs are `y_true`, an (examples ×
classes) 0/1 matrix, and `y_score`, the matching matrix of probabilities (`sigmoid(logits)`);
AUC only needs the order, so logits would give the same AUC but not the same thresholded
figures.

Conventions, applied everywhere here:
- A prediction is positive when `score >= threshold` (scikit-learn's curves use the same rule,
  so a threshold from `tune_thresholds` means what it says).
- AUC is ROC AUC on the scores. A class whose column holds only one label value has no AUC:
  it is NaN, never a crash or a warning, and means skip it (`auc_mean` is the mean over the
  classes that have both values).
- Every per-finding estimate that is *fitted or reported* (an AUC, AP or F1 in the evaluate
  report, a tuned threshold, a calibration) needs at least `MIN_CLASS_COUNT` positive and as
  many negative examples (`estimable`); below that it is not estimated, and
  `not_estimable_reason` says why. The per-epoch figures (`epoch_metrics`) keep the plain rule
  above: they track training, they do not report.
- Division by zero in precision, recall, specificity and F1 gives 0.0, as scikit-learn's
  `zero_division=0`: a class with nothing predicted positive has precision 0, one with no
  positives has recall 0. Those zeros stay in the macro means, so the macros equal
  scikit-learn's `average="macro", zero_division=0`.
- `paper_auc` is the seed paper's figure, ROC AUC of the 0/1 predictions at a threshold. It is
  (recall + specificity) / 2 and says little about ranking, so it is never called "AUC".
"""

import math
from typing import NamedTuple

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

_BOOT_CHUNK = 50  # bootstrap replicates evaluated together (memory: chunk × examples floats)

# With fewer positives (or negatives) than this an AUC is decided by a handful of images: one
# positive makes it the rank of that one image, and a patient bootstrap that must drop every
# resample without it gives a narrow interval that means nothing. 10 of each is the common
# rule of thumb for a two-class estimate (events per variable); it is a reporting floor, not
# a guarantee of a useful interval.
MIN_CLASS_COUNT = 10


class Interval(NamedTuple):
    """A percentile bootstrap interval per class, and the share of resamples left out of it
    because that class had only one label value in them (NaN where none was usable)."""
    low: np.ndarray
    high: np.ndarray
    dropped: np.ndarray


def sigmoid(logits):
    """Numerically stable logistic function (no overflow warning for large |logits|)."""
    logits = np.asarray(logits)
    if not np.issubdtype(logits.dtype, np.floating):
        logits = logits.astype(np.float64)
    return np.exp(-np.logaddexp(0, -logits))


def format_threshold(threshold):
    """0.5 -> "0.5", 0.4 -> "0.4": the threshold as it appears in metric names."""
    return f"{float(threshold):.6g}"


def per_class_auc(y_true, y_score):
    """ROC AUC per class on the scores; NaN for a class with only one label value."""
    y_true, y_score = _check_pair(y_true, y_score)
    aucs = np.full(y_true.shape[1], np.nan)
    for c in np.flatnonzero(_has_both_labels(y_true)):
        aucs[c] = roc_auc_score(y_true[:, c], y_score[:, c])
    return aucs


def class_counts(y_true):
    """(positives, negatives) per class, as int arrays."""
    y_true = _check_labels(y_true)
    positives = y_true.sum(axis=0, dtype=np.int64)
    return positives, y_true.shape[0] - positives


def estimable(y_true, min_count=MIN_CLASS_COUNT):
    """True for the classes with at least `min_count` positives and `min_count` negatives: the
    one small-count rule of every per-finding estimate that is fitted or reported."""
    positives, negatives = class_counts(y_true)
    return (positives >= min_count) & (negatives >= min_count)


auc_estimable = estimable  # the name the AUC section has always used


def not_estimable_reason(positives, negatives, min_count=MIN_CLASS_COUNT):
    """Why a per-finding estimate is not made ("1 positive (fewer than 10)"), or None when it
    is."""
    short = [f"{n} {word}{'' if n == 1 else 's'}"
             for n, word in ((int(positives), "positive"), (int(negatives), "negative"))
             if n < min_count]
    return f"{' and '.join(short)} (fewer than {min_count})" if short else None


def threshold_metrics(y_true, y_score, threshold):
    """Per-class and macro/micro F1, precision and recall (and per-class specificity).

    `threshold` is one number or one per class. Returns per-class arrays under "f1",
    "precision", "recall", "specificity", and floats under "f1_macro", "f1_micro",
    "precision_macro", "precision_micro", "recall_macro", "recall_micro".
    """
    y_true, y_score = _check_pair(y_true, y_score)
    thresholds = _check_threshold(threshold, y_true.shape[1])
    tp, fp, fn, tn = _confusion_counts(y_true, y_score, thresholds)
    result = {
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
        "precision": _safe_divide(tp, tp + fp),
        "recall": _safe_divide(tp, tp + fn),
        "specificity": _safe_divide(tn, tn + fp),
    }
    tp_all, fp_all, fn_all = tp.sum(), fp.sum(), fn.sum()
    micro = {
        "f1": _safe_divide(2 * tp_all, 2 * tp_all + fp_all + fn_all),
        "precision": _safe_divide(tp_all, tp_all + fp_all),
        "recall": _safe_divide(tp_all, tp_all + fn_all),
    }
    for name in ("f1", "precision", "recall"):
        result[f"{name}_macro"] = float(result[name].mean())
        result[f"{name}_micro"] = float(micro[name])
    return result


def paper_auc(y_true, y_score, threshold):
    """The seed paper's metric: per-class ROC AUC of the 0/1 predictions `score >= threshold`.

    With one operating point the ROC curve is (0,0)-(FPR,TPR)-(1,1), whose area is
    (TPR + 1 - FPR) / 2, so this is computed from the confusion counts (equal to
    `roc_auc_score(y, score >= t)`); NaN for a class with only one label value.
    """
    y_true, y_score = _check_pair(y_true, y_score)
    thresholds = _check_threshold(threshold, y_true.shape[1])
    tp, fp, fn, tn = _confusion_counts(y_true, y_score, thresholds)
    result = np.full(y_true.shape[1], np.nan)
    both = _has_both_labels(y_true)
    result[both] = (tp[both] / (tp[both] + fn[both]) + tn[both] / (tn[both] + fp[both])) / 2
    return result


def epoch_metrics(y_true, y_score, thresholds, label_names, prefix="val"):
    """All per-epoch figures as one flat {name: float}, for logs, TensorBoard and history.csv.

    Names: "{prefix}/auc_mean", "{prefix}/auc/{label}", and for each threshold t (written by
    `format_threshold`) "{prefix}/{f1,precision,recall}@{t}/{macro,micro,label}" and
    "{prefix}/paper_auc@{t}" (mean over classes). Undefined values are NaN.
    """
    y_true, y_score = _check_pair(y_true, y_score)
    label_names = list(label_names)
    if len(label_names) != y_true.shape[1]:
        raise ValueError(
            f"got {len(label_names)} label names for {y_true.shape[1]} classes: {label_names}"
        )
    aucs = per_class_auc(y_true, y_score)
    out = {f"{prefix}/auc_mean": nanmean(aucs)}
    out.update({f"{prefix}/auc/{name}": float(v) for name, v in zip(label_names, aucs)})
    for threshold in thresholds:
        t = format_threshold(threshold)
        counts = threshold_metrics(y_true, y_score, threshold)
        for metric in ("f1", "precision", "recall"):
            out[f"{prefix}/{metric}@{t}/macro"] = counts[f"{metric}_macro"]
            out[f"{prefix}/{metric}@{t}/micro"] = counts[f"{metric}_micro"]
            for name, value in zip(label_names, counts[metric]):
                out[f"{prefix}/{metric}@{t}/{name}"] = float(value)
        out[f"{prefix}/paper_auc@{t}"] = nanmean(paper_auc(y_true, y_score, threshold))
    return out


def bootstrap_auc_replicates(y_true, y_score, groups=None, *, n_boot=1000, seed=0,
                             progress=None):
    """The AUC of each class in `n_boot` bootstrap resamples: an (n_boot, classes) array.

    With `groups` (one id per example, e.g. Patient ID) whole groups are resampled with
    replacement, because the images of one patient are not independent and an image-level
    bootstrap would give intervals that are too narrow. Each replicate is the AUC of the
    examples weighted by how often they were drawn, computed from one sort per class rather
    than re-sorting every replicate. A replicate in which a class has only one label value is
    NaN for that class. The draws depend only on `seed` and the number of groups, so two
    calls on columns of the same examples are paired (their differences are a paired
    bootstrap). progress: optional callable, given the number of replicates done after each
    chunk (a tqdm bar's `update`).
    """
    y_true, y_score = _check_pair(y_true, y_score)
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int; received n_boot={n_boot!r}")
    n = y_true.shape[0]
    if groups is None:
        unit_of_example, n_units = np.arange(n), n
    else:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(
                f"groups must hold one id per example ({n}); received shape {groups.shape}"
            )
        _, unit_of_example = np.unique(groups, return_inverse=True)
        n_units = int(unit_of_example.max()) + 1
    rng = np.random.default_rng(seed)
    sorted_classes = [_sort_for_auc(y_true[:, c], y_score[:, c]) for c in range(y_true.shape[1])]
    replicates = np.empty((n_boot, y_true.shape[1]))
    for start in range(0, n_boot, _BOOT_CHUNK):
        size = min(_BOOT_CHUNK, n_boot - start)
        draws = rng.integers(0, n_units, size=(size, n_units))
        # Row r of `counts` says how often each unit was drawn in replicate r.
        offsets = n_units * np.arange(size)[:, None]  # one bincount for all rows
        counts = np.bincount((draws + offsets).ravel(), minlength=size * n_units)
        weights = counts.reshape(size, n_units)[:, unit_of_example]
        for c, (order, labels, block_starts) in enumerate(sorted_classes):
            auc = _weighted_auc(weights[:, order], labels, block_starts)
            replicates[start : start + size, c] = auc
        if progress is not None:
            progress(size)
    return replicates


def percentile_interval(replicates, alpha=0.05):
    """Interval(low, high, dropped) of each column of (resamples × classes) `replicates`: the
    alpha/2 and 1 - alpha/2 quantiles of its finite values, and the share that was NaN."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); received alpha={alpha!r}")
    replicates = np.asarray(replicates, dtype=np.float64)
    finite = np.isfinite(replicates)
    lo = np.full(replicates.shape[1], np.nan)
    hi = np.full(replicates.shape[1], np.nan)
    for c in np.flatnonzero(finite.any(axis=0)):
        lo[c], hi[c] = np.quantile(replicates[finite[:, c], c], [alpha / 2, 1 - alpha / 2])
    return Interval(lo, hi, 1.0 - finite.mean(axis=0))


def bootstrap_auc_ci(y_true, y_score, groups=None, *, n_boot=1000, alpha=0.05, seed=0,
                     progress=None):
    """Percentile bootstrap confidence interval of each class's AUC: Interval(low, high,
    dropped), from `bootstrap_auc_replicates` (see there for `groups` and `progress`).

    Resamples in which a class has only one label value are left out of that class's
    percentiles, and `dropped` says what share that was: a large share means the interval
    describes only the resamples that kept the rare positives, so it is too narrow.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); received alpha={alpha!r}")
    replicates = bootstrap_auc_replicates(y_true, y_score, groups, n_boot=n_boot, seed=seed,
                                          progress=progress)
    return percentile_interval(replicates, alpha)


def tune_thresholds(y_true, y_score, method="f1", *, default=0.5, min_count=MIN_CLASS_COUNT):
    """One threshold per class: "f1" maximizes F1, "youden" maximizes TPR - FPR.

    The thresholds are scores taken from `y_score` (predict positive when `score >=` it), so
    tune them on validation data, never on the test split. A class with fewer than `min_count`
    positives or negatives is not fitted and gets `default`: with 1 positive, F1 is maximal
    at that image's score, whatever it is (a threshold of 3e-20 was seen), and the threshold
    would flag every film. `estimable(y_true, min_count)` says which classes were fitted.
    """
    if method not in ("f1", "youden"):
        raise ValueError(f"method must be 'f1' or 'youden'; received method={method!r}")
    y_true, y_score = _check_pair(y_true, y_score)
    thresholds = np.full(y_true.shape[1], float(default))
    for c in np.flatnonzero(estimable(y_true, max(int(min_count), 1))):
        if method == "f1":
            precision, recall, candidates = precision_recall_curve(y_true[:, c], y_score[:, c])
            # The curve's last point (precision 1, recall 0) has no threshold: drop it.
            f1 = _safe_divide(2 * precision[:-1] * recall[:-1], precision[:-1] + recall[:-1])
            thresholds[c] = candidates[np.argmax(f1)]
        else:
            fpr, tpr, candidates = roc_curve(y_true[:, c], y_score[:, c], drop_intermediate=False)
            # candidates[0] is +inf (nothing predicted positive): never a useful answer.
            thresholds[c] = candidates[1:][np.argmax(tpr[1:] - fpr[1:])]
    return thresholds


def expected_calibration_error(y_true, y_prob, n_bins=15):
    """ECE over all (example, class) pairs with `n_bins` equal-width probability bins.

    Sum over bins of (pairs in bin / all pairs) × |positive rate - mean probability|; a
    probability of exactly 1 falls in the last bin.
    """
    y_true, y_prob = _check_pair(y_true, y_prob)
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int; received n_bins={n_bins!r}")
    if y_prob.min() < 0 or y_prob.max() > 1:
        raise ValueError(
            f"y_prob must be probabilities in [0, 1]; received values in "
            f"[{y_prob.min():g}, {y_prob.max():g}] (apply sigmoid to logits first)"
        )
    prob, label = y_prob.ravel(), y_true.ravel()
    bins = np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)
    prob_sum = np.bincount(bins, weights=prob, minlength=n_bins)
    label_sum = np.bincount(bins, weights=label, minlength=n_bins)
    # |label_sum - prob_sum| / N is count/N × |mean label - mean prob| without dividing by 0.
    return float(np.abs(label_sum - prob_sum).sum() / prob.size)


def _check_pair(y_true, y_score):
    """Both as 2-D arrays (a 1-D pair is one class), labels 0/1, scores finite."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if y_score.ndim == 1:
        y_score = y_score[:, None]
    if y_true.ndim != 2 or y_true.shape != y_score.shape or y_true.shape[0] == 0:
        raise ValueError(
            f"y_true and y_score must be non-empty (examples × classes) arrays of one shape; "
            f"received {y_true.shape} and {y_score.shape}"
        )
    bad = np.count_nonzero(~np.isfinite(y_score))
    if bad:
        raise ValueError(f"y_score holds {bad} NaN or infinite values of {y_score.size}")
    return _check_labels(y_true), y_score


def _check_labels(y_true):
    """y_true as a 2-D int8 0/1 array (a 1-D one is one class)."""
    y_true = np.asarray(y_true)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if not np.isin(y_true, (0, 1)).all():
        values = np.unique(y_true)[:10].tolist()
        raise ValueError(f"y_true must hold only 0 and 1; received values {values}")
    return y_true.astype(np.int8)


def _check_threshold(threshold, num_classes):
    threshold = np.asarray(threshold, dtype=np.float64)
    if threshold.ndim > 1 or (threshold.ndim == 1 and threshold.shape[0] != num_classes):
        raise ValueError(
            f"threshold must be one number or one per class ({num_classes}); "
            f"received shape {threshold.shape}"
        )
    return np.broadcast_to(threshold, (num_classes,))


def _has_both_labels(y_true):
    positives = y_true.sum(axis=0)
    return (positives > 0) & (positives < y_true.shape[0])


def _confusion_counts(y_true, y_score, thresholds):
    """tp, fp, fn, tn per class for `score >= threshold`, all classes at once."""
    predicted = y_score >= thresholds
    actual = y_true.astype(bool)
    tp = np.count_nonzero(predicted & actual, axis=0)
    fp = np.count_nonzero(predicted & ~actual, axis=0)
    positives = np.count_nonzero(actual, axis=0)
    fn = positives - tp
    tn = y_true.shape[0] - positives - fp
    return tp, fp, fn, tn


def _safe_divide(numerator, denominator):
    """numerator / denominator, 0.0 where the denominator is 0 (see the module docstring)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def nanmean(values):
    """Mean of the finite values (e.g. the classes that have an AUC); NaN, and no warning,
    when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _sort_for_auc(labels, scores):
    """Sort order, sorted 0/1 labels and the start of each run of tied scores."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    block_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    return order, labels[order].astype(np.float64), block_starts


def _weighted_auc(weights, labels, block_starts):
    """AUC per row of `weights` (replicates × examples, in sorted-score order).

    Mann-Whitney with multiplicities: each positive counts the weight of the negatives scored
    below it, plus half of those tied with it, which is what roc_auc_score gives on the
    resampled data.
    """
    positive = np.add.reduceat(weights * labels, block_starts, axis=1)
    negative = np.add.reduceat(weights * (1.0 - labels), block_starts, axis=1)
    negatives_below = np.cumsum(negative, axis=1) - negative
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    wins = (positive * (negatives_below + 0.5 * negative)).sum(axis=1)
    return np.divide(wins, pairs, out=np.full(pairs.shape, np.nan), where=pairs > 0)
