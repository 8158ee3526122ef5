"""Radiologist-adjudicated labels for NIH images (Majkowska et al., Radiology 2020): reader,
the mapping from our 14 outputs to their four findings, and the report section.

Google re-read 4,376 NIH images (1,962 of the official test list, 2,414 of train_val) with
three radiologists per image and adjudication, for four findings, each YES or NO. Two file
shapes are read, by header name (docs/DATA.md):
  * Google's `four_findings_expert_labels/{validation,test}_labels.csv`: NIH's metadata columns
    (`Image Index`, `Patient ID`, ...) plus the four findings; the split is in the file name.
  * torchxrayvision's `google2019_nih-chest-xray-labels.csv.gz`: both files in one, with a
    `Set Id` column (`val`, `test`).

The section scores the run against these labels and, on the same images, against NIH's own
labels mapped the same way: the difference is the label-noise gap. Thresholds are the run's
(configured, and tuned on NIH validation labels); nothing is fitted on expert labels.
"""

import os
from typing import NamedTuple

import numpy as np
import pandas as pd

from cxr_tf.data import metadata
from cxr_tf.evaluation import inputs, metrics, report_markdown, reporting

SOURCE = ("Majkowska et al., Chest Radiograph Interpretation with Deep Learning Models, "
          "Radiology 2020, doi:10.1148/radiol.2019191293")
FINDINGS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
_SPLITS = {"val": "validation", "validation": "validation", "test": "test"}
_VALUES = {"YES": 1, "NO": 0}


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


def read(path, split=None):
    """The adjudicated labels of `path` (either shape, .csv or .csv.gz) as a DataFrame.

    Columns: image_id, patient_id, split ("validation" or "test"), and the four FINDINGS as
    0/1 ints. The split comes from `Set Id`, else from `split`, else from the file name
    (`validation_labels.csv`, `test_labels.csv`). Google leaves all four findings empty for an
    image it did not adjudicate: such rows are dropped (`frame.attrs["not_adjudicated"]`).
    Raises metadata.MetadataError naming the file, line and column of a bad value (or saying
    the file is not a CSV table).
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise metadata.MetadataError(f"not a CSV table ({str(e).strip()})", path) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("Image Index", "Patient ID", *FINDINGS) if c not in frame.columns]
    if missing:
        raise metadata.MetadataError(
            f"missing column(s) {missing}; expected Google's four-findings header "
            f"(Image Index, Patient ID, ..., {', '.join(FINDINGS)}[, Set Id])", path)
    findings = frame[list(FINDINGS)].apply(lambda column: column.str.strip())
    unlabelled = (findings == "").all(axis=1)
    out = pd.DataFrame({
        "image_id": frame["Image Index"].str.strip(),
        "patient_id": _patient_ids(frame["Patient ID"], path),
        "split": _splits(frame, path, split),
    })
    for name in FINDINGS:
        out[name] = _yes_no(findings[name], unlabelled, path, name)
    _check_image_ids(out, path)  # before dropping rows, so errors give the file's line
    out = out[~unlabelled.to_numpy()].reset_index(drop=True)
    out.attrs["not_adjudicated"] = int(unlabelled.sum())
    return out


def _bad(path, rows, column, reason):
    row = int(rows[0])
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    return metadata.MetadataError(f"column '{column}': {reason}{more}", path, row + 2)


def _yes_no(values, unlabelled, path, column):
    codes = values.map(_VALUES)
    bad = np.flatnonzero(codes.isna().to_numpy() & ~unlabelled.to_numpy())
    if bad.size:
        value = values.iloc[bad[0]]
        hint = ("; HEDGE is a single reader's answer (individual_readers.csv): use the "
                "adjudicated validation_labels.csv or test_labels.csv"
                if value.upper() == "HEDGE" else "")
        raise _bad(path, bad, column, f"{value!r} is not YES or NO{hint}")
    return codes.fillna(-1).astype(np.int8)


def _patient_ids(values, path):
    ids = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = np.flatnonzero(ids.isna().to_numpy() | (ids % 1 != 0).to_numpy())
    if bad.size:
        raise _bad(path, bad, "Patient ID", f"{values.iloc[bad[0]]!r} is not a patient number")
    return ids.astype(np.int64)


def _splits(frame, path, split):
    if "Set Id" in frame.columns:
        values = frame["Set Id"].str.strip()
        bad = np.flatnonzero(~values.isin(list(_SPLITS)).to_numpy())
        if bad.size:
            raise _bad(path, bad, "Set Id", f"{values.iloc[bad[0]]!r} is not val or test")
        return values.map(_SPLITS)
    if split is None:
        name = os.path.basename(path).lower()
        split = next((s for s in ("validation", "test") if s in name), None)
    if split not in ("validation", "test"):
        raise metadata.MetadataError(
            "no Set Id column, and the file name says neither validation nor test: keep "
            "Google's name (validation_labels.csv, test_labels.csv) or pass split=", path)
    return pd.Series(split, index=frame.index)


def _check_image_ids(frame, path):
    bad = np.flatnonzero(~frame["image_id"].str.match(metadata.IMAGE_INDEX_RE).to_numpy())
    if bad.size:
        raise _bad(path, bad, "Image Index",
                   f"{frame['image_id'].iloc[bad[0]]!r} is not an NIH image name")
    first = frame.drop_duplicates("image_id")
    if len(first) != len(frame):
        repeated = frame["image_id"][frame["image_id"].duplicated()].iloc[0]
        raise metadata.MetadataError(f"image {repeated} is listed more than once", path)


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


def evaluate(expert, image_ids, scored, thresholds, bootstrap=inputs.Bootstrap()):
    """The report section: each expert finding scored against the radiologists and, on the
    same images, against NIH's labels mapped the same way (the label-noise gap).

    Args:
        expert: `read`'s DataFrame; only the images in `image_ids` that it lists are used.
        image_ids: the evaluated split's images, one per row of `scored`.
        scored: an `inputs.Scored` of the split: NIH's 0/1 labels, the probabilities and the
            patient ids.
        thresholds: the run's (`inputs.Thresholds`), as for reporting.build_report.
        bootstrap: patient-level; the gap's interval is paired (the same resamples).
    """
    image_ids = np.asarray(image_ids)
    y_nih, probs = np.asarray(scored.y_true), np.asarray(scored.y_prob)
    label_names = scored.label_names
    rows = np.flatnonzero(np.isin(image_ids, expert["image_id"].to_numpy()))
    labels = expert.set_index("image_id").loc[image_ids[rows]]
    groups = np.asarray(scored.patient_ids)[rows]
    section = _header(expert, labels, groups, bootstrap)
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
    return {
        "source": SOURCE, "rows_in_file": int(len(expert)),
        "not_adjudicated": int(expert.attrs.get("not_adjudicated", 0)),
        "images": int(len(labels)), "patients": int(len(set(groups.tolist()))),
        "expert_sets": {k: int(v) for k, v in labels["split"].value_counts().sort_index().items()},
        "method": reporting.interval_method(bootstrap.replicates, groups),
        "min_count": metrics.MIN_CLASS_COUNT,
        "thresholds": {},
        "per_finding": {name: _unscored(name, labels[name].to_numpy()) for name in FINDINGS},
    }


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


def _unscored(name, y):
    """A finding's entry before scoring: counts, the mapping, and nulls (why: the reason)."""
    mapping = MAPPING[name]
    positives = int(y.sum())
    return {
        "outputs": list(mapping.outputs), "mapping": mapping.reason,
        "predicted": bool(mapping.outputs), "positives": positives,
        "negatives": int(len(y) - positives), "auc": None,
        "auc_not_estimable": (mapping.reason if not mapping.outputs
                              else "no image of this split has expert labels"),
        "auc_ci_low": None, "auc_ci_high": None, "auc_ci_dropped": None,
        "average_precision": None, "nih": None, "label_noise_gap": None,
        "label_noise_gap_ci_low": None, "label_noise_gap_ci_high": None, "agreement": None,
    }


def _score(y_expert, y_nih, scores, groups, bootstrap):
    """AUC entries against both references, AP, the gap with its paired interval, and how
    often the two references agree; one bootstrap over both so the resamples are paired."""
    from sklearn.metrics import average_precision_score

    k = y_expert.shape[1]
    y_nih = y_nih.astype(np.int8)
    truth, both = np.hstack([y_expert, y_nih]), np.hstack([scores, scores])
    replicates = reporting.bootstrap_replicates(truth, both, groups, bootstrap)
    auc = reporting.auc_entries(truth, both, replicates)
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
    sets = " and ".join(f"{n:,} from its {s} set" for s, n in section["expert_sets"].items())
    lines = [f"{section['images']:,} images of this split ({section['patients']:,} patients) "
             f"have adjudicated labels in `{section.get('file', 'the file')}`, which lists "
             f"{section['rows_in_file']:,} images{' (' + sets + ')' if sets else ''}. "
             f"Source: {section['source']}.", "",
             "Each finding is scored against the radiologists and, on the same images, against "
             "NIH's labels mapped the same way; the gap is the first AUC minus the second "
             f"(paired). Intervals: {section['method'] or 'none'}; an AUC needs "
             f"{section['min_count']} positives and negatives.", ""]
    keys = list(section["thresholds"])
    header = ["Finding", "Our outputs (max)", "Pos / neg", "AUC vs radiologists",
              "NIH pos / neg", "AUC vs NIH labels", "Gap", "AP"] + [f"F1@{k}" for k in keys]
    rows = []
    for name, e in section["per_finding"].items():
        nih = e.get("nih")
        gap = _signed(e["label_noise_gap"])
        if e["label_noise_gap_ci_low"] is not None:
            gap += (f" [{_signed(e['label_noise_gap_ci_low'])}, "
                    f"{_signed(e['label_noise_gap_ci_high'])}]")
        rows.append([name, ", ".join(e["outputs"]) or "none",
                     f"{e['positives']:,} / {e['negatives']:,}",
                     report_markdown.format_auc(e) if e["predicted"] else "not predicted",
                     f"{nih['positives']:,} / {nih['negatives']:,}" if nih else "–",
                     report_markdown.format_auc(nih) if nih else "–", gap,
                     f(e.get("average_precision"))] + [f(e.get(f"f1@{k}")) for k in keys])
    lines += report_markdown.markdown_table(header, rows)
    lines += [f"Mean AUC vs radiologists over {section['auc_mean_over']} findings: "
              f"{f(section['auc_mean'])}; mean gap over {section['label_noise_gap_mean_over']}: "
              f"{_signed(section['label_noise_gap_mean'])}. F1 uses the run's thresholds (tuned "
              "ones come from NIH validation labels, never from these).", ""]
    lines += [f"- {name}: {m.reason}." for name, m in MAPPING.items()]
    return "\n".join(lines)


def _signed(value):
    return "–" if value is None else f"{value:+.3f}"
