"""Scoring a run on another hospital's labels, where a finding may be uncertain (-1).

CheXpert's labeler marks a finding uncertain when the report hedges ("may represent…").
`--uncertain_labels` says what such a label becomes, as in Irvin et al. 2019 (§ "Uncertainty
approaches"): `ignore` (the default) leaves the image out for that finding only, `zeros` reads
it as negative (U-Zeros), `ones` as positive (U-Ones). The report counts what each policy did.

The figures are those of the NIH report (`reporting.build_report`): each finding on the images
labelled for it; the overall figures and subgroups on the images labelled for every finding
(the same images as per finding unless `ignore` left some out, which the report then says).
"""

import numpy as np

from cxr_tf.evaluation import report_markdown, reporting

POLICIES = ("ignore", "zeros", "ones")
UNCERTAIN = -1


def apply_policy(labels, policy):
    """int -1/0/1 labels (n, C) -> (float labels with NaN where left out, uncertain counts (C,)).

    Example: [[1, -1], [0, -1]] with "ignore" -> [[1, nan], [0, nan]], counts [0, 2];
    with "ones" -> [[1, 1], [0, 1]].
    """
    if policy not in POLICIES:
        raise ValueError(f"uncertain label policy must be one of {POLICIES}; received {policy!r}")
    labels = np.asarray(labels)
    bad = ~np.isin(labels, (UNCERTAIN, 0, 1))
    if bad.any():
        raise ValueError(f"labels must be -1, 0 or 1; found {sorted(set(labels[bad].tolist()))}")
    uncertain = labels == UNCERTAIN
    out = labels.astype(np.float64)
    out[uncertain] = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[policy]
    return out, uncertain.sum(axis=0)


def build_report(labels, probs, *, label_names, policy="ignore", thresholds, tuned_thresholds=None,
                 patient_ids, metadata, n_boot=1000, seed=0, progress=False):
    """The NIH report's sections on -1/0/1 labels, plus a `labels` section that counts them.

    Args:
        labels: (n, C) int -1/0/1; probs: (n, C) probabilities of the same C findings.
        label_names: the C findings (our output names).
        policy: what an uncertain label becomes (see `apply_policy`).
        Other arguments as in `reporting.build_report`.
    """
    y, uncertain = apply_policy(labels, policy)
    probs = np.asarray(probs, np.float64)
    patient_ids, metadata = np.asarray(patient_ids), list(metadata)
    labelled = ~np.isnan(y)
    complete = labelled.all(axis=1)
    common = dict(thresholds=thresholds, n_boot=n_boot, seed=seed, progress=progress)

    def report_on(rows, columns):
        tuned = (None if tuned_thresholds is None
                 else np.asarray(tuned_thresholds, np.float64)[columns])
        return reporting.build_report(
            y[np.ix_(rows, columns)].astype(np.int8), probs[np.ix_(rows, columns)],
            label_names=[label_names[c] for c in columns], tuned_thresholds=tuned,
            patient_ids=patient_ids[rows].tolist(),
            metadata=[m for m, keep in zip(metadata, rows) if keep], **common)

    if not complete.any():
        raise ValueError(f"no image is labelled for all of {list(label_names)} under the "
                         f"{policy!r} policy")
    columns = list(range(len(label_names)))
    report = report_on(complete, columns)
    for c in np.flatnonzero(labelled.sum(axis=0) > complete.sum()):
        # `ignore` left images out of another finding: this one's row uses all of its own.
        report["per_class"][label_names[c]] = report_on(labelled[:, c], [c])["per_class"][
            label_names[c]]
    report["labels"] = {
        "uncertain_policy": policy,
        "images": int(len(y)),
        "images_labelled_for_all": int(complete.sum()),
        "per_finding": {
            name: {"uncertain": int(uncertain[c]),
                   "left_out": int((~labelled[:, c]).sum()),
                   "images": int(labelled[:, c].sum())}
            for c, name in enumerate(label_names)},
    }
    return report


def format_markdown(section):
    """The `labels` section's markdown body (report_markdown.format_markdown adds the title)."""
    rows = [[name, r["images"], r["uncertain"], r["left_out"]]
            for name, r in section["per_finding"].items()]
    lines = [f"Uncertain labels: `{section['uncertain_policy']}`. Per finding, the AUC uses the "
             "images labelled for it; the overall figures and subgroups use the "
             f"{section['images_labelled_for_all']:,} of {section['images']:,} images labelled "
             "for every finding.", ""]
    lines += report_markdown.markdown_table(["Finding", "Images", "Uncertain", "Left out"], rows)
    views = section.get("views")
    if views:
        left = ", ".join(f"{n:,} {v}" for v, n in section["images_left_out_by_view"].items())
        lines += [f"Views: {', '.join(views)}" + (f" ({left} images left out)." if left else "."),
                  ""]
    return "\n".join(lines)
