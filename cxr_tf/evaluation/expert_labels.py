"""Radiologist-adjudicated labels for NIH images (Majkowska et al., Radiology 2020): reader,
the mapping from our 14 outputs to their four findings, and the report section.

Google re-read 4,376 NIH images (1,962 of the official test list, 2,414 of train_val) with
three radiologists per image and adjudication, for four findings, each YES or NO; both file
shapes are read by `expert_file`.

The section scores the run against these labels and, on the same images, against NIH's own
labels mapped the same way: the difference is the label-noise gap. Thresholds are the run's
(configured, and tuned on NIH validation labels); nothing is fitted on expert labels. It
says what it could not score: the file's rows per set, how many lie in the evaluated split,
and why the others were skipped (`coverage`); the intervals resample patients, so an AUC needs
ten positive and ten negative patients, not images.
"""

from typing import NamedTuple

import numpy as np

from cxr_tf.evaluation import inputs, metrics, report_markdown, reporting
# The section's input, read by expert_file (`expert_labels.read` for callers).
from cxr_tf.evaluation.expert_file import FINDINGS, read  # noqa: F401

SOURCE = ("Majkowska et al., Chest Radiograph Interpretation with Deep Learning Models, "
          "Radiology 2020, doi:10.1148/radiol.2019191293")


class Mapping(NamedTuple):
    """How one expert finding is scored from our outputs: the maximum of `outputs` (none:
    not predicted), and why."""
    outputs: tuple
    reason: str


# Every expert finding is scored as the maximum of its outputs' probabilities, and predicted
# positive when any of them is positive at its own threshold: "the model says nodule or mass
# when it says nodule or says mass". The maximum, not noisy-OR (1 - (1-p)(1-q)), because
# noisy-OR assumes the outputs are independent evidence, and Nodule and Mass are one lesion on
# either side of NIH's 3 cm cut: it would inflate the probability and move every threshold.
# The maximum keeps each output's threshold meaning what it meant. Majkowska et al. publish
# no mapping from NIH's 14 labels; the grouping of opacities follows CheXpert's label
# hierarchy (Irvin et al., AAAI 2019, Fig. 2: Lung Opacity is the parent of Edema,
# Consolidation, Pneumonia, Lung Lesion and Atelectasis; Lung Lesion is Nodule or mass here).
MAPPING = {
    "Fracture": Mapping((), "not predicted: none of NIH's 14 findings is a fracture, so the run "
                            "has no output for it"),
    "Pneumothorax": Mapping(("Pneumothorax",), "the same finding"),
    "Airspace opacity": Mapping(
        ("Atelectasis", "Consolidation", "Edema", "Infiltration", "Pneumonia"),
        "NIH's findings seen as airspace opacity: consolidation and pneumonia fill airspaces, "
        "NIH's Infiltration is its word for such opacity, and CheXpert's hierarchy puts edema "
        "and atelectasis under lung opacity too"),
    "Nodule or mass": Mapping(("Nodule", "Mass"),
                              "NIH splits one finding at 3 cm: a nodule is smaller, a mass larger"),
}


def map_scores(probs, label_names):
    """(n, 4) expert-finding scores: the maximum of each finding's outputs; NaN for Fracture."""
    probs = np.asarray(probs, dtype=np.float64)
    out = np.full((len(probs), len(FINDINGS)), np.nan)
    for f, name in enumerate(FINDINGS):
        columns = _columns(MAPPING[name].outputs, label_names)
        if columns:
            out[:, f] = probs[:, columns].max(axis=1)
    return out


def map_decisions(probs, thresholds, label_names):
    """(n, 4) bool: any of a finding's outputs at or above its own threshold (False for an
    unpredicted finding). thresholds: one number or one per output."""
    positive = np.asarray(probs) >= np.broadcast_to(thresholds, np.shape(probs)[1:])
    out = np.zeros((len(positive), len(FINDINGS)), bool)
    for f, name in enumerate(FINDINGS):
        columns = _columns(MAPPING[name].outputs, label_names)
        if columns:
            out[:, f] = positive[:, columns].any(axis=1)
    return out


def _columns(outputs, label_names):
    label_names = list(label_names)
    missing = [o for o in outputs if o not in label_names]
    if missing:
        raise ValueError(f"the expert-label mapping needs outputs {missing}; "
                         f"the run has {label_names}")
    return [label_names.index(o) for o in outputs]


def evaluate(expert, image_ids, scored, thresholds, bootstrap=inputs.Bootstrap(), *,
             elsewhere=None):
    """The report section: each expert finding scored against the radiologists and, on the
    same images, against NIH's labels mapped the same way (the label-noise gap).

    Args:
        expert: `read`'s DataFrame; only the images in `image_ids` that it lists are used.
        image_ids: the evaluated split's images, one per row of `scored`.
        scored: an `inputs.Scored` of the split: NIH's 0/1 labels, the probabilities and the
            patient ids (without them, counts and intervals are per image).
        thresholds: the run's (`inputs.Thresholds`), as for reporting.build_report.
        bootstrap: patient-level; the gap's interval is paired (the same resamples).
        elsewhere: {split: image ids} of the dataset's other splits, so that the section can
            say why each of the file's rows was skipped (in another split, or not in the
            dataset at all); None: "not in this split" only.
    """
    image_ids = np.asarray(image_ids)
    y_nih, probs = np.asarray(scored.y_true), np.asarray(scored.y_prob)
    label_names = scored.label_names
    rows = np.flatnonzero(np.isin(image_ids, expert["image_id"].to_numpy()))
    labels = expert.set_index("image_id").loc[image_ids[rows]]
    groups = None if scored.patient_ids is None else np.asarray(scored.patient_ids)[rows]
    section = _header(expert, labels, groups, bootstrap)
    section["coverage"] = coverage(expert, image_ids, elsewhere)
    predicted = [f for f, name in enumerate(FINDINGS) if MAPPING[name].outputs]
    y_expert = labels[[FINDINGS[f] for f in predicted]].to_numpy()
    for key, t in thresholds.sets():
        section["thresholds"][key] = t
        _add_threshold_figures(section["per_finding"], key, t, probs[rows], y_expert,
                               predicted, label_names)
    if len(rows):
        figures = _score(y_expert, map_scores(y_nih[rows], label_names)[:, predicted],
                         map_scores(probs[rows], label_names)[:, predicted], groups, bootstrap)
        for i, f in enumerate(predicted):
            section["per_finding"][FINDINGS[f]].update(figures[i])
    entries = [section["per_finding"][FINDINGS[f]] for f in predicted]
    section["auc_mean"], section["auc_mean_over"] = reporting.auc_mean(entries)
    gaps = [e["label_noise_gap"] for e in entries if e.get("label_noise_gap") is not None]
    section["label_noise_gap_mean"] = float(np.mean(gaps)) if gaps else None
    section["label_noise_gap_mean_over"] = len(gaps)
    return reporting.to_json_ready(section)


def _header(expert, labels, groups, bootstrap):
    """The section before scoring: what the file holds, which images were used, and every
    finding's counts with null figures."""
    unit = "images" if groups is None else "patients"
    return {
        "source": SOURCE, "rows_in_file": int(len(expert)),
        "not_adjudicated": int(expert.attrs.get("not_adjudicated", 0)),
        "images": int(len(labels)),
        "patients": None if groups is None else int(len(set(groups.tolist()))),
        "expert_sets": {k: int(v) for k, v in labels["split"].value_counts().sort_index().items()},
        "method": reporting.interval_method(bootstrap.replicates, groups),
        "min_count": metrics.MIN_CLASS_COUNT,
        # The interval resamples patients, so an AUC needs enough of them, not of images: ten
        # positive films of one patient are one resampling unit.
        "min_count_unit": unit,
        "thresholds": {},
        "per_finding": {name: _unscored(name, labels[name].to_numpy(), groups)
                        for name in FINDINGS},
    }


def coverage(expert, split_ids, elsewhere=None):
    """Per set of the file (its `test` and `validation`): its rows, how many are in the
    evaluated split, and why the others were skipped: not adjudicated, in another split of
    the dataset (by split), or not in the dataset at all.

    `rows` counts every row of the file (`read`'s attrs), the not-adjudicated ones too, so
    rows = not_adjudicated + in_split + sum(in_other_split) + not_in_dataset.
    """
    in_split = np.isin(expert["image_id"].to_numpy(), np.asarray(split_ids))
    rows_by_set = expert.attrs.get("rows_by_set") or expert["split"].value_counts().to_dict()
    per_set = {}
    for name in sorted(rows_by_set):
        mine = (expert["split"] == name).to_numpy()
        ids = expert["image_id"].to_numpy()[mine & ~in_split]
        entry = {"rows": int(rows_by_set[name]),
                 "not_adjudicated": int(rows_by_set[name] - mine.sum()),
                 "in_split": int((mine & in_split).sum())}
        if elsewhere is None:
            entry["not_in_split"] = int(len(ids))
        else:
            found = {split: np.isin(ids, np.asarray(other)) for split, other in elsewhere.items()}
            entry["in_other_split"] = {split: int(hit.sum()) for split, hit in found.items()}
            anywhere = np.any(list(found.values()), axis=0) if found else np.zeros(len(ids), bool)
            entry["not_in_dataset"] = int((~anywhere).sum())
        per_set[name] = entry
    return {"unit": "rows of the file (one image each)", "per_set": per_set}


def _add_threshold_figures(per_finding, key, threshold, probs, y_expert, predicted,
                           label_names):
    """f1/precision/recall@key of each predicted finding under the any-output rule (None for
    Fracture, and for all when no image has expert labels)."""
    counts = None
    if len(probs):
        decided = map_decisions(probs, threshold, label_names)[:, predicted]
        # The 0/1 decisions as scores at 0.5, so threshold_metrics counts exactly them.
        counts = metrics.threshold_metrics(y_expert, decided.astype(float), 0.5)
    for f, name in enumerate(FINDINGS):
        for m in ("f1", "precision", "recall"):
            scored = counts is not None and f in predicted
            per_finding[name][f"{m}@{key}"] = counts[m][predicted.index(f)] if scored else None


def _unscored(name, y, groups):
    """A finding's entry before scoring: counts, the mapping, and nulls (why: the reason)."""
    mapping = MAPPING[name]
    positives = int(y.sum())
    return {
        "outputs": list(mapping.outputs), "mapping": mapping.reason,
        "predicted": bool(mapping.outputs), "positives": positives,
        "negatives": int(len(y) - positives), **patient_counts(y, groups), "auc": None,
        "auc_not_estimable": (mapping.reason if not mapping.outputs
                              else "no image of this split has expert labels"),
        "auc_ci_low": None, "auc_ci_high": None, "auc_ci_dropped": None,
        "average_precision": None, "nih": None, "label_noise_gap": None,
        "label_noise_gap_ci_low": None, "label_noise_gap_ci_high": None, "agreement": None,
    }


def patient_counts(y, groups):
    """{"positive_patients", "negative_patients"}: patients with a positive image, and with a
    negative one (a patient with both counts in each); nulls without patient ids."""
    if groups is None:
        return {"positive_patients": None, "negative_patients": None}
    y, groups = np.asarray(y).astype(bool), np.asarray(groups)
    return {"positive_patients": int(len(set(groups[y].tolist()))),
            "negative_patients": int(len(set(groups[~y].tolist())))}


def _patient_rule(entry, y, groups):
    """Adds the patient counts to an AUC entry and withdraws its AUC when, the interval being
    patient-level, fewer than MIN_CLASS_COUNT patients are positive or negative."""
    entry.update(patient_counts(y, groups))
    if groups is None or entry["auc"] is None:
        return entry
    minimum = metrics.MIN_CLASS_COUNT
    short = [f"{n} {word} patient{'' if n == 1 else 's'}"
             for n, word in ((entry["positive_patients"], "positive"),
                             (entry["negative_patients"], "negative")) if n < minimum]
    if short:
        entry.update(auc=None, auc_ci_low=None, auc_ci_high=None, auc_ci_dropped=None,
                     auc_not_estimable=f"{' and '.join(short)} (fewer than {minimum}; the "
                                       "interval resamples patients)")
    return entry


def _score(y_expert, y_nih, scores, groups, bootstrap):
    """AUC entries against both references, AP, the gap with its paired interval, and how
    often the two references agree; one bootstrap over both so the resamples are paired."""
    from sklearn.metrics import average_precision_score

    k = y_expert.shape[1]
    y_nih = y_nih.astype(np.int8)
    truth, both = np.hstack([y_expert, y_nih]), np.hstack([scores, scores])
    replicates = reporting.bootstrap_replicates(truth, both, groups, bootstrap)
    auc = [_patient_rule(entry, truth[:, c], groups)
           for c, entry in enumerate(reporting.auc_entries(truth, both, replicates))]
    entries = []
    for i in range(k):
        expert, nih = auc[i], auc[k + i]
        entry = {**expert, "nih": nih, "label_noise_gap": None,
                 "label_noise_gap_ci_low": None, "label_noise_gap_ci_high": None,
                 "average_precision": (average_precision_score(y_expert[:, i], scores[:, i])
                                       if 0 < expert["positives"] < len(y_expert) else None),
                 "agreement": _agreement(y_expert[:, i], y_nih[:, i])}
        if expert["auc"] is not None and nih["auc"] is not None:
            entry["label_noise_gap"] = expert["auc"] - nih["auc"]
            if len(replicates):
                gap = metrics.percentile_interval(replicates[:, [i]] - replicates[:, [k + i]])
                entry["label_noise_gap_ci_low"] = gap.low[0]
                entry["label_noise_gap_ci_high"] = gap.high[0]
        entries.append(entry)
    return entries


def _agreement(y_expert, y_nih):
    """Images on which the radiologists and NIH's labels agree or not."""
    e, n = y_expert.astype(bool), y_nih.astype(bool)
    return {"both_positive": int((e & n).sum()), "radiologists_only": int((e & ~n).sum()),
            "nih_only": int((~e & n).sum()), "both_negative": int((~e & ~n).sum())}


def format_markdown(section):
    """The section's markdown body (report_markdown.format_markdown adds the `##` title)."""
    f = report_markdown.format_value
    unit = section.get("min_count_unit", "images")
    patients = "" if section["patients"] is None else f" ({section['patients']:,} patients)"
    lines = [f"`{section.get('file', 'the file')}` lists {section['rows_in_file']:,} adjudicated "
             f"images; {section['images']:,} of them{patients} are in this split and scored. "
             f"Source: {section['source']}.", ""]
    lines += _coverage_lines(section.get("coverage"))
    lines += ["Each finding is scored against the radiologists and, on the same images, against "
              "NIH's labels mapped the same way; the gap is the first AUC minus the second "
              f"(paired). Intervals: {section['method'] or 'none'}; an AUC needs "
              f"{section['min_count']} positive and {section['min_count']} negative {unit}"
              + (" (the interval resamples patients)" if unit == "patients" else "") + ".", ""]
    keys = list(section["thresholds"])
    header = ["Finding", "Our outputs (max)", "Pos / neg images (patients)",
              "AUC vs radiologists", "NIH pos / neg images (patients)", "AUC vs NIH labels",
              "Gap", "AP"] + [f"F1@{k}" for k in keys]
    rows = []
    for name, e in section["per_finding"].items():
        nih = e.get("nih")
        gap = _signed(e["label_noise_gap"])
        if e["label_noise_gap_ci_low"] is not None:
            gap += (f" [{_signed(e['label_noise_gap_ci_low'])}, "
                    f"{_signed(e['label_noise_gap_ci_high'])}]")
        rows.append([name, ", ".join(e["outputs"]) or "none", _counts(e),
                     report_markdown.format_auc(e) if e["predicted"] else "not predicted",
                     _counts(nih) if nih else "–",
                     report_markdown.format_auc(nih) if nih else "–", gap,
                     f(e.get("average_precision"))] + [f(e.get(f"f1@{k}")) for k in keys])
    lines += report_markdown.markdown_table(header, rows)
    lines += [f"Mean AUC vs radiologists over {section['auc_mean_over']} findings: "
              f"{f(section['auc_mean'])}; mean gap over {section['label_noise_gap_mean_over']}: "
              f"{_signed(section['label_noise_gap_mean'])}. F1 uses the run's thresholds (tuned "
              "ones come from NIH validation labels, never from these).", ""]
    lines += [f"- {name}: {m.reason}." for name, m in MAPPING.items()]
    return "\n".join(lines)


def _counts(entry):
    """"12 / 30 (6 / 15)": positive / negative images, then patients when known."""
    text = f"{entry['positives']:,} / {entry['negatives']:,}"
    if entry.get("positive_patients") is not None:
        text += f" ({entry['positive_patients']:,} / {entry['negative_patients']:,})"
    return text


def _coverage_lines(coverage):
    """A table of the file's sets: rows, scored here, and why the others were skipped."""
    if not coverage:
        return []
    per_set = coverage["per_set"]
    others = sorted({split for e in per_set.values() for split in e.get("in_other_split", {})})
    header = ["File's set", "Rows", "Not adjudicated", "In this split (scored)"]
    header += [f"Skipped: in {split}" for split in others]
    header += ["Skipped: not in the dataset" if others else "Skipped: not in this split"]
    rows = []
    for name, e in per_set.items():
        last = e["not_in_dataset"] if others else e.get("not_in_split", 0)
        rows.append([name, f"{e['rows']:,}", f"{e['not_adjudicated']:,}", f"{e['in_split']:,}"]
                    + [f"{e.get('in_other_split', {}).get(split, 0):,}" for split in others]
                    + [f"{last:,}"])
    return report_markdown.markdown_table(header, rows)


def _signed(value):
    return "–" if value is None else f"{value:+.3f}"
