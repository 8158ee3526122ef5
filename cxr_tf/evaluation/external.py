"""Scoring a run on another hospital's labels, where a finding may be uncertain (-1).

CheXpert's labeler marks a finding uncertain when the report hedges ("may represent…"). The
`uncertain_labels` argument says what such a label becomes, as in Irvin et al. 2019
(§ "Uncertainty approaches"): `ignore` (the default) leaves the image out for that finding
only, `zeros` reads it as negative (U-Zeros), `ones` as positive (U-Ones). The report counts
what each policy did.

The figures are those of the NIH report (`reporting.build_report`): each finding on the images
labelled for it; the overall figures and subgroups on the images labelled for every finding
(the same images as per finding unless `ignore` left some out, which the report then says).
The NIH report's comparison with Wang et al. 2017 is dropped: those AUCs are on NIH's test
split, and AUCs on another hospital's images are not like with like.
"""

import dataclasses

import numpy as np

from cxr_tf import errors
from cxr_tf.evaluation import inputs, report_markdown, reporting
from cxr_tf.evaluation.config import UNCERTAIN_POLICIES as POLICIES

UNCERTAIN = -1


class ExternalLabelsError(errors.UserError, ValueError):
    """An external set's labels that cannot be scored (a value other than -1, 0 or 1, or no
    image labelled for every finding)."""


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
        raise ExternalLabelsError(
            f"labels must be -1, 0 or 1; found {sorted(set(labels[bad].tolist()))}")
    uncertain = labels == UNCERTAIN
    out = labels.astype(np.float64)
    out[uncertain] = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[policy]
    return out, uncertain.sum(axis=0)


def build_report(scored, policy, thresholds, bootstrap=inputs.Bootstrap()):
    """The NIH report's sections on -1/0/1 labels, plus a `labels` section that counts them.

    Args:
        scored: an `inputs.Scored` whose y_true holds int -1/0/1 labels, with patient_ids
            and metadata.
        policy: what an uncertain label becomes (see `apply_policy`).
        thresholds, bootstrap: as in `reporting.build_report`.
    """
    y, uncertain = apply_policy(scored.y_true, policy)
    label_names = list(scored.label_names)
    scored = dataclasses.replace(scored, y_true=y, metadata=list(scored.metadata))
    labelled = ~np.isnan(y)
    complete = labelled.all(axis=1)

    def report_on(rows, columns):
        return reporting.build_report(scored.select(rows, columns),
                                      thresholds.select(columns), bootstrap)

    if not complete.any():
        raise ExternalLabelsError(f"no image is labelled for all of {label_names} under the "
                                  f"{policy!r} policy")
    report = report_on(complete, list(range(len(label_names))))
    for c in np.flatnonzero(labelled.sum(axis=0) > complete.sum()):
        # `ignore` left images out of another finding: this one's row uses all of its own.
        report["per_class"][label_names[c]] = report_on(labelled[:, c], [c])["per_class"][
            label_names[c]]
    _not_compared_with_published(report)
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


NOT_COMPARED = ("not compared: the published AUCs (Wang et al. 2017) are on NIH's official "
                "test split, not on these images, and are not like with like")


def _not_compared_with_published(report):
    """Drops the comparison with Wang et al. 2017 (NIH test AUCs) from a report on another
    hospital's images: the keys stay, null, and `published` says why."""
    for row in report["per_class"].values():
        row["published_auc"] = row["auc_minus_published"] = None
    report["published"] = {**{key: None for key in report["published"]},
                           "source": report["published"]["source"], "classes_compared": 0,
                           "not_compared": NOT_COMPARED}


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
