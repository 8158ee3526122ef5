"""The evaluation report: per-class and overall figures, subgroups, the paper's baseline, plots.

Pure numpy / scikit-learn / matplotlib on arrays (no TensorFlow), so the figures can be checked
against scikit-learn on a fixed set and rebuilt in a notebook from saved probabilities.
Metric definitions live in `cxr_tf.evaluation.metrics`; this module only arranges them.

Names follow history.csv: `f1@0.5`, `precision@tuned`, `paper_auc@0.5` (the paper's AUC of 0/1
predictions, never called AUC). `report.json` holds JSON null where a figure is undefined
(a class without positives in that subset), never NaN.

Every AUC comes with its `positives` and `negatives`. Below `metrics.MIN_CLASS_COUNT` of either
it is null with the reason in `auc_not_estimable`, has no interval, and stays out of every mean;
each mean says how many findings it averages (`auc_mean_over`). The same rule holds for every
per-finding figure: AP, and F1, precision, recall, specificity and paper_auc at each threshold
are null for such a finding, and the macro means (`…/macro`) average the findings that have
them (`macro_over`). Micro figures pool every (image, finding) pair, so they keep all findings.
"""

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_tf import atomic, labels
from cxr_tf.evaluation import inputs, metrics, published

AGE_BANDS = ((0, 20, "0-20"), (20, 40, "20-40"), (40, 60, "40-60"), (60, 80, "60-80"),
             (80, math.inf, "80+"))
UNKNOWN = "unknown"
SUBGROUPS = ("sex", "age_band", "view")
THRESHOLD_METRICS = ("f1", "precision", "recall", "specificity")


def age_band(age):
    """'0-20', '20-40', '40-60', '60-80', '80+' (lower bound inclusive); 'unknown' for age < 0."""
    if age is None or age < 0:
        return UNKNOWN
    return next(name for lo, hi, name in AGE_BANDS if lo <= age < hi)


def _average_precision(y_true, y_prob):
    """AP per class, NaN below the small-count rule (one positive makes AP that image's
    precision, as arbitrary as its AUC)."""
    ap = np.full(y_true.shape[1], np.nan)
    for c in np.flatnonzero(metrics.estimable(y_true)):
        ap[c] = average_precision_score(y_true[:, c], y_prob[:, c])
    return ap


def bootstrap_replicates(y_true, y_prob, groups, bootstrap):
    """metrics.bootstrap_auc_replicates with a tqdm bar; (0, classes) without replicates.

    bootstrap: an `inputs.Bootstrap`; groups: one id per row (resampled whole) or None."""
    from tqdm import tqdm

    if not bootstrap.replicates:
        return np.empty((0, np.shape(y_true)[1]))
    with tqdm(total=bootstrap.replicates, desc="bootstrap", unit="replicate",
              disable=not bootstrap.progress) as bar:
        return metrics.bootstrap_auc_replicates(y_true, y_prob, groups,
                                                n_boot=bootstrap.replicates,
                                                seed=bootstrap.seed, progress=bar.update)


def interval_method(n_boot, groups):
    """"patient-level percentile bootstrap, 1000 resamples" (None without a bootstrap)."""
    unit = "patient" if groups is not None else "image"
    return f"{unit}-level percentile bootstrap, {n_boot} resamples" if n_boot else None


def auc_entries(y_true, y_prob, replicates):
    """One dict per class: positives, negatives, auc, auc_not_estimable (the reason, or None),
    auc_ci_low/high and auc_ci_dropped (share of resamples without both labels).

    A class below metrics.MIN_CLASS_COUNT gets auc null and no interval. `replicates` are the
    bootstrap AUCs of the same columns (resamples × classes; zero resamples: no interval).
    """
    positives, negatives = metrics.class_counts(y_true)
    estimable = metrics.auc_estimable(y_true)
    aucs = metrics.per_class_auc(y_true, y_prob)
    if len(replicates):
        interval = metrics.percentile_interval(replicates)
    else:
        interval = metrics.Interval(*np.full((3, len(aucs)), np.nan))
    entries = []
    for c in range(len(aucs)):
        ok = bool(estimable[c])
        entries.append({
            "positives": int(positives[c]), "negatives": int(negatives[c]),
            "auc": aucs[c] if ok else None,
            "auc_not_estimable": metrics.not_estimable_reason(positives[c], negatives[c]),
            "auc_ci_low": interval.low[c] if ok else None,
            "auc_ci_high": interval.high[c] if ok else None,
            "auc_ci_dropped": interval.dropped[c] if ok else None,
        })
    return entries


def auc_mean(entries):
    """(mean AUC, number of findings averaged) over the entries that have an AUC."""
    values = [e["auc"] for e in entries if e["auc"] is not None]
    return (float(np.mean(values)) if values else None), len(values)


def _subgroups(y_true, y_prob, metadata, label_names):
    """{"sex": {"F": {...}, "M": {...}}, "age_band": {...}, "view": {...}}."""
    keys = {
        "sex": [str(r["sex"]) or UNKNOWN for r in metadata],
        "age_band": [age_band(int(r["age"])) for r in metadata],
        "view": [str(r["view"]) or UNKNOWN for r in metadata],
    }
    order = {"age_band": [name for *_, name in AGE_BANDS] + [UNKNOWN]}
    out = {}
    for key, values in keys.items():
        values = np.array(values)
        present = set(values.tolist())
        names = [v for v in order.get(key, sorted(present)) if v in present]
        out[key] = {}
        for name in names:
            rows = values == name
            entries = auc_entries(y_true[rows], y_prob[rows], ())
            mean, over = auc_mean(entries)
            out[key][name] = {
                "examples": int(rows.sum()),
                "any_finding_prevalence": float(y_true[rows].max(axis=1).mean()),
                "auc_mean": mean, "auc_mean_over": over,
                **{field: {n: e[field] for n, e in zip(label_names, entries)}
                   for field in ("auc", "positives", "negatives")},
            }
    return out


def _no_finding_effect(y_true, y_prob, no_finding_prob, sets, at):
    """F1 with and without the constraint, at every threshold set (`at`: the unconstrained
    figures, already computed by build_report)."""
    wins = labels.no_finding_wins(y_prob, no_finding_prob)
    # A suppressed row's findings are all predicted negative; -1 is below any threshold.
    constrained = np.where(wins[:, None], -1.0, y_prob)
    target = 1 - y_true.max(axis=1)
    out = {
        "examples_suppressed": int(wins.sum()),
        "macro_over": int(y_true.shape[1]),  # a before/after contrast: every finding
        "no_finding_auc": metrics.per_class_auc(target, no_finding_prob)[0],
        "no_finding_prevalence": float(target.mean()),
    }
    for key, threshold in sets:
        before = at[key][0]
        after = metrics.threshold_metrics(y_true, constrained, threshold)
        for name in ("f1", "precision", "recall"):
            for avg in ("macro", "micro"):
                a, b = before[f"{name}_{avg}"], after[f"{name}_{avg}"]
                out[f"{name}@{key}/{avg}"] = {"without": a, "with": b, "change": b - a}
    return out


def build_report(scored, thresholds, bootstrap=inputs.Bootstrap(), *, no_finding_prob=None):
    """The whole report as a JSON-ready dict.

    Args:
        scored: an `inputs.Scored` with 0/1 labels; with patient_ids the AUC CI resamples
            patients, not images; with metadata ("sex", "age", "view") the subgroup tables.
        thresholds: an `inputs.Thresholds`: the configured ones (e.g. 0.4, 0.5, 0.6) and
            optional per-class tuned ones (thresholds.json), reported as `…@tuned`.
        bootstrap: an `inputs.Bootstrap` for the 95 % CI (0 replicates: no CI).
        no_finding_prob: optional (n,) probabilities of a 15th "No Finding" output.
    """
    y_true = np.asarray(scored.y_true).astype(np.int8)
    y_prob = np.asarray(scored.y_prob, dtype=np.float64)
    label_names, patient_ids = list(scored.label_names), scored.patient_ids
    sets = thresholds.sets()
    ap = _average_precision(y_true, y_prob)
    entries = auc_entries(y_true, y_prob,
                          bootstrap_replicates(y_true, y_prob, patient_ids, bootstrap))
    at = {key: (metrics.threshold_metrics(y_true, y_prob, t), metrics.paper_auc(y_true, y_prob, t))
          for key, t in sets}

    estimable = metrics.estimable(y_true)
    per_class = _per_class(y_true, label_names, entries, ap, at, thresholds.tuned)
    overall = _overall(y_true, y_prob, patient_ids, entries, ap, at, estimable)
    report = {
        "label_names": label_names,
        "thresholds": {key: (t.tolist() if isinstance(t, np.ndarray) else t) for key, t in sets},
        "bootstrap": _bootstrap_section(bootstrap, patient_ids, entries),
        "per_class": per_class,
        "overall": overall,
        "published": _published(per_class),
        "subgroups": (_subgroups(y_true, y_prob, scored.metadata, label_names)
                      if scored.metadata else None),
        "no_finding": (_no_finding_effect(y_true, y_prob, np.asarray(no_finding_prob), sets, at)
                       if no_finding_prob is not None else None),
    }
    return to_json_ready(report)


def _bootstrap_section(bootstrap, patient_ids, entries):
    """How the intervals were made, and the largest share of resamples a finding dropped."""
    return {"replicates": bootstrap.replicates, "confidence": 0.95, "seed": bootstrap.seed,
            "unit": "patient" if patient_ids is not None else "image",
            "method": interval_method(bootstrap.replicates, patient_ids),
            "min_count": metrics.MIN_CLASS_COUNT,
            "dropped_max": max((e["auc_ci_dropped"] for e in entries
                                if e["auc_ci_dropped"] is not None), default=None)}


def _per_class(y_true, label_names, entries, ap, at, tuned_thresholds):
    """{finding: prevalence, AUC entry, AP, threshold metrics, published AUC}."""
    per_class = {}
    for c, name in enumerate(label_names):
        row = {"prevalence": float(y_true[:, c].mean()), **entries[c],
               "average_precision": ap[c]}
        ok = row["auc"] is not None  # the small-count rule (auc_entries)
        for key, (tm, pa) in at.items():
            row.update({f"{m}@{key}": tm[m][c] if ok else None for m in THRESHOLD_METRICS})
            row[f"paper_auc@{key}"] = pa[c] if ok else None
        if tuned_thresholds is not None:
            row["tuned_threshold"] = float(tuned_thresholds[c])
        row["published_auc"] = published.WANG2017_AUC.get(name)
        row["auc_minus_published"] = (row["auc"] - row["published_auc"]
                                      if None not in (row["auc"], row["published_auc"]) else None)
        per_class[name] = row
    return per_class


def _overall(y_true, y_prob, patient_ids, entries, ap, at, estimable):
    """Micro figures over all findings; macro means over the `estimable` ones, which
    `macro_over` counts."""
    mean, over = auc_mean(entries)
    overall = {
        "examples": int(len(y_true)),
        "patients": int(len(set(patient_ids))) if patient_ids is not None else None,
        "auc_mean": mean, "auc_mean_over": over,
        "auc_micro": float(roc_auc_score(y_true.ravel(), y_prob.ravel()))
        if 0 < y_true.sum() < y_true.size else math.nan,
        # Over the same findings as auc_mean: one positive makes AP as arbitrary as AUC.
        "average_precision_mean": metrics.nanmean(
            [ap[c] for c, e in enumerate(entries) if e["auc"] is not None]),
        "average_precision_micro": float(average_precision_score(y_true.ravel(), y_prob.ravel()))
        if y_true.sum() else math.nan,
        "ece": metrics.expected_calibration_error(y_true, y_prob),
        "classes_with_auc": over,
        "macro_over": int(estimable.sum()),
    }
    for key, (tm, pa) in at.items():
        for m in ("f1", "precision", "recall"):
            overall[f"{m}@{key}/macro"] = metrics.nanmean(tm[m][estimable])
            overall[f"{m}@{key}/micro"] = tm[f"{m}_micro"]
        overall[f"specificity@{key}/macro"] = metrics.nanmean(tm["specificity"][estimable])
        overall[f"paper_auc@{key}"] = metrics.nanmean(pa[estimable])
    return overall


def _published(per_class):
    """Our AUCs against Wang et al. 2017's, over the findings both have (ours estimable)."""
    compared = [n for n, row in per_class.items()
                if row["auc"] is not None and n in published.WANG2017_AUC]
    ours = [per_class[n]["auc"] for n in compared]
    theirs = [published.WANG2017_AUC[n] for n in compared]
    return {
        "source": published.WANG2017_SOURCE,
        "mean_auc": published.WANG2017_MEAN_AUC,
        "classes_compared": len(compared),
        "our_mean_auc": float(np.mean(ours)) if ours else None,
        "their_mean_auc_same_classes": float(np.mean(theirs)) if theirs else None,
        "mean_difference": float(np.mean(np.subtract(ours, theirs))) if ours else None,
    }


def to_json_ready(value):
    """NaN/inf -> None and numpy scalars/arrays -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): to_json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json_ready(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path, obj):
    return atomic.write_json(path, obj, indent=1, allow_nan=False)
