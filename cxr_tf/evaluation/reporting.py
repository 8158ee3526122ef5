"""The evaluation report: per-class and overall figures, subgroups, the paper's baseline, plots.

Pure numpy / scikit-learn / matplotlib on arrays (no TensorFlow), so the figures can be checked
against scikit-learn on a fixed set and rebuilt in a notebook from saved probabilities.
Metric definitions live in `cxr_tf.evaluation.metrics`; this module only arranges them.

Names follow history.csv: `f1@0.5`, `precision@tuned`, `paper_auc@0.5` (the paper's AUC of 0/1
predictions, never called AUC). `report.json` holds JSON null where a figure is undefined
(a class without positives in that subset), never NaN.

Every AUC comes with its `positives` and `negatives`. Below `metrics.MIN_CLASS_COUNT` of either
it is null with the reason in `auc_not_estimable`, has no interval, and stays out of every mean;
each mean says how many findings it averages (`auc_mean_over`).
"""

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_tf import atomic, labels
from cxr_tf.evaluation import metrics, published

AGE_BANDS = ((0, 20, "0-20"), (20, 40, "20-40"), (40, 60, "40-60"), (60, 80, "60-80"),
             (80, math.inf, "80+"))
UNKNOWN = "unknown"
SUBGROUPS = ("sex", "age_band", "view")
_THRESHOLD_METRICS = ("f1", "precision", "recall", "specificity")


def age_band(age):
    """'0-20', '20-40', '40-60', '60-80', '80+' (lower bound inclusive); 'unknown' for age < 0."""
    if age is None or age < 0:
        return UNKNOWN
    return next(name for lo, hi, name in AGE_BANDS if lo <= age < hi)


def threshold_sets(thresholds, tuned):
    """[(key, threshold or per-class array)]: each configured threshold, then "tuned"."""
    sets = [(metrics.format_threshold(t), float(t)) for t in thresholds]
    if tuned is not None:
        sets.append(("tuned", np.asarray(tuned, dtype=np.float64)))
    return sets


def _average_precision(y_true, y_prob):
    ap = np.full(y_true.shape[1], np.nan)
    for c in range(y_true.shape[1]):
        if 0 < y_true[:, c].sum() < len(y_true):
            ap[c] = average_precision_score(y_true[:, c], y_prob[:, c])
    return ap


def bootstrap_replicates(y_true, y_prob, groups, n_boot, seed, progress=False):
    """metrics.bootstrap_auc_replicates with a tqdm bar; (0, classes) when n_boot is 0."""
    from tqdm import tqdm

    if not n_boot:
        return np.empty((0, np.shape(y_true)[1]))
    with tqdm(total=n_boot, desc="bootstrap", unit="replicate", disable=not progress) as bar:
        return metrics.bootstrap_auc_replicates(y_true, y_prob, groups, n_boot=n_boot,
                                                seed=seed, progress=bar.update)


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


def build_report(y_true, y_prob, *, label_names, thresholds, tuned_thresholds=None,
                 patient_ids=None, metadata=None, no_finding_prob=None, n_boot=1000, seed=0,
                 progress=False):
    """The whole report as a JSON-ready dict.

    Args:
        y_true: (n, C) 0/1 findings; y_prob: (n, C) probabilities (sigmoid of the logits).
        label_names: the C finding names.
        thresholds: configured decision thresholds (e.g. [0.4, 0.5, 0.6]).
        tuned_thresholds: optional per-class thresholds (from thresholds.json), reported as
            `…@tuned`.
        patient_ids: one id per row; the AUC CI then resamples patients, not images.
        metadata: optional per-row dicts with "sex", "age", "view" for the subgroup tables.
        no_finding_prob: optional (n,) probabilities of a 15th "No Finding" output.
        n_boot: bootstrap replicates for the 95 % CI (0: no CI).
    """
    y_true = np.asarray(y_true).astype(np.int8)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    label_names = list(label_names)
    sets = threshold_sets(thresholds, tuned_thresholds)
    ap = _average_precision(y_true, y_prob)
    entries = auc_entries(y_true, y_prob, bootstrap_replicates(y_true, y_prob, patient_ids,
                                                               n_boot, seed, progress))
    at = {key: (metrics.threshold_metrics(y_true, y_prob, t), metrics.paper_auc(y_true, y_prob, t))
          for key, t in sets}

    per_class = {}
    for c, name in enumerate(label_names):
        row = {"prevalence": float(y_true[:, c].mean()), **entries[c],
               "average_precision": ap[c]}
        for key, (tm, pa) in at.items():
            row.update({f"{m}@{key}": tm[m][c] for m in _THRESHOLD_METRICS})
            row[f"paper_auc@{key}"] = pa[c]
        if tuned_thresholds is not None:
            row["tuned_threshold"] = float(tuned_thresholds[c])
        row["published_auc"] = published.WANG2017_AUC.get(name)
        row["auc_minus_published"] = (row["auc"] - row["published_auc"]
                                      if None not in (row["auc"], row["published_auc"]) else None)
        per_class[name] = row

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
    }
    for key, (tm, pa) in at.items():
        for m in ("f1", "precision", "recall"):
            overall[f"{m}@{key}/macro"] = tm[f"{m}_macro"]
            overall[f"{m}@{key}/micro"] = tm[f"{m}_micro"]
        overall[f"specificity@{key}/macro"] = float(tm["specificity"].mean())
        overall[f"paper_auc@{key}"] = metrics.nanmean(pa)

    compared = [n for n in label_names
                if per_class[n]["auc"] is not None and n in published.WANG2017_AUC]
    ours = [per_class[n]["auc"] for n in compared]
    theirs = [published.WANG2017_AUC[n] for n in compared]
    report = {
        "label_names": label_names,
        "thresholds": {key: (t.tolist() if isinstance(t, np.ndarray) else t) for key, t in sets},
        "bootstrap": {"replicates": n_boot, "confidence": 0.95, "seed": seed,
                      "unit": "patient" if patient_ids is not None else "image",
                      "method": interval_method(n_boot, patient_ids),
                      "min_count": metrics.MIN_CLASS_COUNT,
                      "dropped_max": max((e["auc_ci_dropped"] for e in entries
                                          if e["auc_ci_dropped"] is not None), default=None)},
        "per_class": per_class,
        "overall": overall,
        "published": {
            "source": published.WANG2017_SOURCE,
            "mean_auc": published.WANG2017_MEAN_AUC,
            "classes_compared": len(compared),
            "our_mean_auc": float(np.mean(ours)) if ours else None,
            "their_mean_auc_same_classes": float(np.mean(theirs)) if theirs else None,
            "mean_difference": float(np.mean(np.subtract(ours, theirs))) if ours else None,
        },
        "subgroups": _subgroups(y_true, y_prob, metadata, label_names) if metadata else None,
        "no_finding": (_no_finding_effect(y_true, y_prob, np.asarray(no_finding_prob), sets, at)
                       if no_finding_prob is not None else None),
    }
    return to_json_ready(report)


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


# --- markdown --------------------------------------------------------------------------------

def format_value(value, digits=3):
    """A figure with `digits` decimals; "–" for a missing (null) one."""
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(header, rows):
    """A GitHub markdown table as lines, with the blank line after it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def format_auc(entry):
    """"0.871 [0.820, 0.915]", "0.871" without an interval, or "not estimable: 1 positive
    (fewer than 10)"."""
    if entry["auc"] is None:
        return f"not estimable: {entry['auc_not_estimable'] or 'no AUC'}"
    ci = (f" [{format_value(entry['auc_ci_low'])}, {format_value(entry['auc_ci_high'])}]"
          if entry.get("auc_ci_low") is not None else "")
    return format_value(entry["auc"]) + ci


def format_interval_note(bootstrap):
    """The line that says how intervals were made and how many resamples were dropped."""
    if not bootstrap.get("method"):
        return f"no confidence intervals (--bootstrap=0); AUC needs {bootstrap['min_count']} " \
               "positives and negatives"
    dropped = bootstrap.get("dropped_max")
    return (f"95 % CI: {bootstrap['method']}; resamples without both labels dropped: at most "
            f"{format_value(100 * dropped if dropped is not None else None, 1)} % per finding; an AUC "
            f"needs {bootstrap['min_count']} positives and {bootstrap['min_count']} negatives")


def format_markdown(report, title="Evaluation report", sections=()):
    """report.md: what a reader needs first (AUC with CI beside the paper), then the rest.

    sections: extra (title, markdown text) pairs appended as `## title` sections (the expert
    labels, ...), so a new report section needs no change here.
    """
    overall, per_class, pub = report["overall"], report["per_class"], report["published"]
    keys = list(report["thresholds"])
    lines = [f"# {title}", ""]
    for k in ("model_dir", "checkpoint", "split", "data_dir"):
        if report.get(k) is not None:
            lines.append(f"- {k}: `{report[k]}`")
    patients = f" from {overall['patients']:,} patients" if overall.get("patients") else ""
    lines += [f"- {overall['examples']:,} images{patients}",
              f"- {format_interval_note(report['bootstrap'])}", ""]
    lines += ["## AUC per finding", ""]
    header = ["Finding", "Positives / negatives", "Prevalence", "AUC [95 % CI]", "AP",
              "Wang 2017", "Δ"]
    rows = []
    for name, r in per_class.items():
        rows.append([name, f"{r['positives']:,} / {r['negatives']:,}", format_value(r["prevalence"]),
                     format_auc(r), format_value(r["average_precision"]), format_value(r["published_auc"]),
                     format_value(r["auc_minus_published"], 3)])
    rows.append([f"**mean** over {overall['auc_mean_over']} findings with an AUC", "", "",
                 format_value(overall["auc_mean"]), format_value(overall["average_precision_mean"]),
                 format_value(pub["their_mean_auc_same_classes"]), format_value(pub["mean_difference"])])
    lines += markdown_table(header, rows)
    lines += [f"Δ = our AUC − published. Mean difference over {pub['classes_compared']} "
              "classes: "
              f"**{format_value(pub['mean_difference'])}**. The published mean over all 14 findings is "
              f"{format_value(pub['mean_auc'])}. Source: {pub['source']}.", ""]
    lines += ["## Overall", ""]
    rows = [[f"AUC (macro mean over {overall['auc_mean_over']} findings / micro)",
             f"{format_value(overall['auc_mean'])} / {format_value(overall['auc_micro'])}"],
            ["Average precision (macro / micro)",
             f"{format_value(overall['average_precision_mean'])} / {format_value(overall['average_precision_micro'])}"],
            ["Expected calibration error (15 bins)", format_value(overall["ece"], 4)]]
    for key in keys:
        for avg in ("macro", "micro"):
            rows.append([f"F1 / precision / recall @{key} ({avg})", " / ".join(
                format_value(overall[f"{m}@{key}/{avg}"]) for m in ("f1", "precision", "recall"))])
        rows.append([f"paper_auc@{key} (AUC of 0/1 predictions)", format_value(overall[f"paper_auc@{key}"])])
    lines += markdown_table(["Figure", "Value"], rows)
    for key in keys:
        lines += [f"## At threshold {key}", ""]
        header = ["Finding"] + (["Threshold"] if key == "tuned" else []) + \
            ["F1", "Precision", "Recall", "Specificity", f"paper_auc@{key}"]
        rows = [[name] + ([format_value(r["tuned_threshold"])] if key == "tuned" else []) +
                [format_value(r[f"{m}@{key}"]) for m in (*_THRESHOLD_METRICS, "paper_auc")]
                for name, r in per_class.items()]
        lines += markdown_table(header, rows)
    if report.get("no_finding"):
        nf = report["no_finding"]
        lines += ["## No Finding constraint", "",
                  f"When the No Finding output is the most likely one, no finding is returned "
                  f"({nf['examples_suppressed']:,} images). No Finding AUC: "
                  f"{format_value(nf['no_finding_auc'])}.", ""]
        rows = [[name, format_value(v["without"]), format_value(v["with"]), format_value(v["change"])]
                for name, v in nf.items() if isinstance(v, dict)]
        lines += markdown_table(["Figure", "Without", "With", "Change"], rows)
    if report.get("subgroups"):
        lines += ["## Subgroups (mean AUC)", "",
                  "Who the data represents matters: a gap here is a gap in who the model "
                  "serves.", ""]
        for key, groups in report["subgroups"].items():
            rows = [[name, f"{g['examples']:,}", format_value(g["any_finding_prevalence"]),
                     format_value(g["auc_mean"]), g["auc_mean_over"]] for name, g in groups.items()]
            lines += [f"### {key}", ""] + markdown_table(
                [key, "Images", "Any finding", "Mean AUC", "Findings averaged"], rows)
        lines += [f"A finding enters a subgroup's mean only with {report['bootstrap']['min_count']}"
                  " positives and negatives in that subgroup.", ""]
    for section_title, text in sections:
        lines += [f"## {section_title}", "", text, ""]
    return "\n".join(lines)
