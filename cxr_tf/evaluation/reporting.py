"""The evaluation report: per-class and overall figures, subgroups, the paper's baseline, plots.

Pure numpy / scikit-learn / matplotlib on arrays (no TensorFlow), so the figures can be checked
against scikit-learn on a fixed set and rebuilt in a notebook from saved probabilities.
Metric definitions live in `cxr_tf.evaluation.metrics`; this module only arranges them.

Names follow history.csv: `f1@0.5`, `precision@tuned`, `paper_auc@0.5` (the paper's AUC of 0/1
predictions, never called AUC). `report.json` holds JSON null where a figure is undefined
(a class without positives in that subset), never NaN.
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


def _threshold_sets(thresholds, tuned):
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


def _bootstrap(y_true, y_prob, groups, n_boot, seed, progress):
    """Per-class CI (metrics.bootstrap_auc_ci) with a tqdm bar over the replicates."""
    from tqdm import tqdm

    with tqdm(total=n_boot, desc="bootstrap", unit="replicate", disable=not progress) as bar:
        return metrics.bootstrap_auc_ci(y_true, y_prob, groups, n_boot=n_boot, seed=seed,
                                        progress=bar.update)


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
            aucs = metrics.per_class_auc(y_true[rows], y_prob[rows])
            out[key][name] = {
                "examples": int(rows.sum()),
                "any_finding_prevalence": float(y_true[rows].max(axis=1).mean()),
                "auc_mean": metrics.nanmean(aucs),
                "auc": dict(zip(label_names, aucs.tolist())),
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
    sets = _threshold_sets(thresholds, tuned_thresholds)
    aucs = metrics.per_class_auc(y_true, y_prob)
    ap = _average_precision(y_true, y_prob)
    if n_boot:
        ci_lo, ci_hi = _bootstrap(y_true, y_prob, patient_ids, n_boot, seed, progress)
    else:
        ci_lo = ci_hi = np.full(len(label_names), np.nan)
    at = {key: (metrics.threshold_metrics(y_true, y_prob, t), metrics.paper_auc(y_true, y_prob, t))
          for key, t in sets}

    per_class = {}
    for c, name in enumerate(label_names):
        row = {
            "positives": int(y_true[:, c].sum()),
            "prevalence": float(y_true[:, c].mean()),
            "auc": aucs[c], "auc_ci_low": ci_lo[c], "auc_ci_high": ci_hi[c],
            "average_precision": ap[c],
        }
        for key, (tm, pa) in at.items():
            row.update({f"{m}@{key}": tm[m][c] for m in _THRESHOLD_METRICS})
            row[f"paper_auc@{key}"] = pa[c]
        if tuned_thresholds is not None:
            row["tuned_threshold"] = float(tuned_thresholds[c])
        row["published_auc"] = published.WANG2017_AUC.get(name)
        row["auc_minus_published"] = (aucs[c] - row["published_auc"]
                                      if row["published_auc"] is not None else None)
        per_class[name] = row

    both = np.isfinite(aucs)
    overall = {
        "examples": int(len(y_true)),
        "patients": int(len(set(patient_ids))) if patient_ids is not None else None,
        "auc_mean": metrics.nanmean(aucs),
        "auc_micro": float(roc_auc_score(y_true.ravel(), y_prob.ravel()))
        if 0 < y_true.sum() < y_true.size else math.nan,
        "average_precision_mean": metrics.nanmean(ap),
        "average_precision_micro": float(average_precision_score(y_true.ravel(), y_prob.ravel()))
        if y_true.sum() else math.nan,
        "ece": metrics.expected_calibration_error(y_true, y_prob),
        "classes_with_auc": int(both.sum()),
    }
    for key, (tm, pa) in at.items():
        for m in ("f1", "precision", "recall"):
            overall[f"{m}@{key}/macro"] = tm[f"{m}_macro"]
            overall[f"{m}@{key}/micro"] = tm[f"{m}_micro"]
        overall[f"specificity@{key}/macro"] = float(tm["specificity"].mean())
        overall[f"paper_auc@{key}"] = metrics.nanmean(pa)

    compared = [n for c, n in enumerate(label_names) if both[c] and n in published.WANG2017_AUC]
    ours = [per_class[n]["auc"] for n in compared]
    theirs = [published.WANG2017_AUC[n] for n in compared]
    report = {
        "label_names": label_names,
        "thresholds": {key: (t.tolist() if isinstance(t, np.ndarray) else t) for key, t in sets},
        "bootstrap": {"replicates": n_boot, "confidence": 0.95, "seed": seed,
                      "unit": "patient" if patient_ids is not None else "image"},
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

def _f(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def format_markdown(report, title="Evaluation report"):
    """report.md: what a reader needs first (AUC with CI beside the paper), then the rest."""
    overall, per_class, pub = report["overall"], report["per_class"], report["published"]
    keys = list(report["thresholds"])
    lines = [f"# {title}", ""]
    for k in ("model_dir", "checkpoint", "split", "data_dir"):
        if report.get(k) is not None:
            lines.append(f"- {k}: `{report[k]}`")
    patients = f" from {overall['patients']:,} patients" if overall.get("patients") else ""
    lines += [f"- {overall['examples']:,} images{patients}; 95 % CI: "
              f"{report['bootstrap']['unit']}-level bootstrap, "
              f"{report['bootstrap']['replicates']} replicates", ""]
    lines += ["## AUC per finding", ""]
    header = ["Finding", "Prevalence", "AUC [95 % CI]", "AP", "Wang 2017", "Δ"]
    rows = []
    for name, r in per_class.items():
        ci = (f" [{_f(r['auc_ci_low'])}, {_f(r['auc_ci_high'])}]"
              if r["auc_ci_low"] is not None else "")
        rows.append([name, _f(r["prevalence"]), _f(r["auc"]) + ci, _f(r["average_precision"]),
                     _f(r["published_auc"]), _f(r["auc_minus_published"], 3)])
    rows.append([f"**mean** ({pub['classes_compared']} classes with an AUC)", "",
                 _f(pub["our_mean_auc"]), _f(overall["average_precision_mean"]),
                 _f(pub["their_mean_auc_same_classes"]), _f(pub["mean_difference"])])
    lines += _table(header, rows)
    lines += [f"Δ = our AUC − published. Mean difference over {pub['classes_compared']} "
              "classes: "
              f"**{_f(pub['mean_difference'])}**. The published mean over all 14 findings is "
              f"{_f(pub['mean_auc'])}. Source: {pub['source']}.", ""]
    lines += ["## Overall", ""]
    rows = [["AUC (macro mean / micro)", f"{_f(overall['auc_mean'])} / {_f(overall['auc_micro'])}"],
            ["Average precision (macro / micro)",
             f"{_f(overall['average_precision_mean'])} / {_f(overall['average_precision_micro'])}"],
            ["Expected calibration error (15 bins)", _f(overall["ece"], 4)]]
    for key in keys:
        for avg in ("macro", "micro"):
            rows.append([f"F1 / precision / recall @{key} ({avg})", " / ".join(
                _f(overall[f"{m}@{key}/{avg}"]) for m in ("f1", "precision", "recall"))])
        rows.append([f"paper_auc@{key} (AUC of 0/1 predictions)", _f(overall[f"paper_auc@{key}"])])
    lines += _table(["Figure", "Value"], rows)
    for key in keys:
        lines += [f"## At threshold {key}", ""]
        header = ["Finding"] + (["Threshold"] if key == "tuned" else []) + \
            ["F1", "Precision", "Recall", "Specificity", f"paper_auc@{key}"]
        rows = [[name] + ([_f(r["tuned_threshold"])] if key == "tuned" else []) +
                [_f(r[f"{m}@{key}"]) for m in (*_THRESHOLD_METRICS, "paper_auc")]
                for name, r in per_class.items()]
        lines += _table(header, rows)
    if report.get("no_finding"):
        nf = report["no_finding"]
        lines += ["## No Finding constraint", "",
                  f"When the No Finding output is the most likely one, no finding is returned "
                  f"({nf['examples_suppressed']:,} images). No Finding AUC: "
                  f"{_f(nf['no_finding_auc'])}.", ""]
        rows = [[name, _f(v["without"]), _f(v["with"]), _f(v["change"])]
                for name, v in nf.items() if isinstance(v, dict)]
        lines += _table(["Figure", "Without", "With", "Change"], rows)
    if report.get("subgroups"):
        lines += ["## Subgroups (mean AUC)", "",
                  "Who the data represents matters: a gap here is a gap in who the model "
                  "serves.", ""]
        for key, groups in report["subgroups"].items():
            rows = [[name, f"{g['examples']:,}", _f(g["any_finding_prevalence"]), _f(g["auc_mean"])]
                    for name, g in groups.items()]
            lines += [f"### {key}", ""] + _table([key, "Images", "Any finding", "Mean AUC"], rows)
    return "\n".join(lines)


# --- plots -----------------------------------------------------------------------------------
