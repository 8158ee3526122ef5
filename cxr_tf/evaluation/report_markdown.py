"""report.md: the evaluation report (`reporting.build_report`'s dict) as markdown, and the
table and number formatting the report's other sections (expert labels, boxes, CheXpert)
share."""

from cxr_tf.evaluation import reporting


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
        return f"no confidence intervals (bootstrap=0); AUC needs {bootstrap['min_count']} " \
               "positives and negatives"
    dropped = bootstrap.get("dropped_max")
    return (f"95 % CI: {bootstrap['method']}; resamples without both labels dropped: at most "
            f"{format_value(100 * dropped if dropped is not None else None, 1)} % per finding; "
            f"an AUC needs {bootstrap['min_count']} positives and {bootstrap['min_count']} negatives")


def format_markdown(report, title="Evaluation report", sections=()):
    """report.md: what a reader needs first (AUC with CI beside the paper), then the rest.

    sections: extra (title, markdown text) pairs appended as `## title` sections (the expert
    labels, ...), so a new report section needs no change here.
    """
    lines = [f"# {title}", ""]
    for k in ("model_dir", "checkpoint", "split", "data_dir"):
        if report.get(k) is not None:
            lines.append(f"- {k}: `{report[k]}`")
    overall = report["overall"]
    patients = f" from {overall['patients']:,} patients" if overall.get("patients") else ""
    lines += [f"- {overall['examples']:,} images{patients}",
              f"- {format_interval_note(report['bootstrap'])}", ""]
    lines += _md_per_finding(report) + _md_overall(report) + _md_thresholds(report)
    lines += _md_decisions(report)
    if report.get("no_finding"):
        lines += _md_no_finding(report["no_finding"])
    if report.get("subgroups"):
        lines += _md_subgroups(report)
    for section_title, text in sections:
        lines += [f"## {section_title}", "", text, ""]
    return "\n".join(lines)


def _md_per_finding(report):
    overall, pub, f = report["overall"], report["published"], format_value
    if pub.get("not_compared"):  # another dataset's images: no published column (external)
        rows = [[name, f"{r['positives']:,} / {r['negatives']:,}", f(r["prevalence"]),
                 format_auc(r), f(r["average_precision"])]
                for name, r in report["per_class"].items()]
        rows.append([f"**mean** over {overall['auc_mean_over']} findings with an AUC", "", "",
                     f(overall["auc_mean"]), f(overall["average_precision_mean"])])
        header = ["Finding", "Positives / negatives", "Prevalence", "AUC [95 % CI]", "AP"]
        return (["## AUC per finding", ""] + markdown_table(header, rows) +
                [f"Published AUCs: {pub['not_compared']}.", ""])
    rows = [[name, f"{r['positives']:,} / {r['negatives']:,}", f(r["prevalence"]),
             format_auc(r), f(r["average_precision"]), f(r["published_auc"]),
             f(r["auc_minus_published"])]
            for name, r in report["per_class"].items()]
    rows.append([f"**mean** over {overall['auc_mean_over']} findings with an AUC", "", "",
                 f(overall["auc_mean"]), f(overall["average_precision_mean"]),
                 f(pub["their_mean_auc_same_classes"]), f(pub["mean_difference"])])
    header = ["Finding", "Positives / negatives", "Prevalence", "AUC [95 % CI]", "AP",
              "Wang 2017", "Δ"]
    return (["## AUC per finding", ""] + markdown_table(header, rows) +
            [f"Δ = our AUC − published. Mean difference over {pub['classes_compared']} "
             f"classes: **{f(pub['mean_difference'])}**. The published mean over all 14 "
             f"findings is {f(pub['mean_auc'])}. Source: {pub['source']}.", ""])


def _md_overall(report):
    o, f = report["overall"], format_value
    rows = [[f"AUC (macro mean over {o['auc_mean_over']} findings / micro)",
             f"{f(o['auc_mean'])} / {f(o['auc_micro'])}"],
            ["Average precision (macro / micro)",
             f"{f(o['average_precision_mean'])} / {f(o['average_precision_micro'])}"],
            ["Expected calibration error (15 bins)", f(o["ece"], 4)]]
    over = o.get("macro_over")
    for key in report["thresholds"]:
        for avg in ("macro", "micro"):
            which = f"macro over {over} findings" if avg == "macro" and over is not None else avg
            rows.append([f"F1 / precision / recall @{key} ({which})", " / ".join(
                f(o[f"{m}@{key}/{avg}"]) for m in ("f1", "precision", "recall"))])
        rows.append([f"paper_auc@{key} (AUC of 0/1 predictions, mean over {over} findings)",
                     f(o[f"paper_auc@{key}"])])
    return ["## Overall", ""] + markdown_table(["Figure", "Value"], rows)


def _md_thresholds(report):
    lines = []
    provenance = (report.get("threshold_provenance") or {}).get("findings") or {}
    for key in report["thresholds"]:
        tuned = key == "tuned"
        header = ["Finding"] + (["Threshold", "Chosen by"] if tuned else []) + \
            ["F1", "Precision", "Recall", "Specificity", f"paper_auc@{key}"]
        rows = [[name] + ([format_value(r["tuned_threshold"]),
                           _chosen_by(provenance.get(name))] if tuned else []) +
                [format_value(r[f"{m}@{key}"]) for m in (*reporting.THRESHOLD_METRICS, "paper_auc")]
                for name, r in report["per_class"].items()]
        lines += [f"## At threshold {key}", ""] + markdown_table(header, rows)
    if any(key != "tuned" for key in report["thresholds"]):
        lines += [f"A finding below {report['bootstrap']['min_count']} positives or negatives "
                  "gets no figure here (–): one positive makes its recall 0 or 1.", ""]
    return lines


def _chosen_by(entry):
    """"f1 on validation (45+/120−)", "default: 3 positives (fewer than 10)"."""
    if not entry:
        return "–"
    if entry.get("positives") is None:
        return f"{entry.get('method')}: {entry.get('reason') or 'counts unknown'}"
    if entry.get("reason"):
        return f"{entry['method']}: {entry['reason']}"
    return (f"{entry['method']} on {entry.get('split')} "
            f"({entry['positives']}+/{entry['negatives']}−)")


def _md_decisions(report):
    """What export and predict will do with a film: calibration, thresholds, OOD flag."""
    lines = []
    if report.get("threshold_provenance"):
        lines.append(f"- Thresholds: {report['threshold_provenance']['summary']}.")
    if report.get("calibration"):
        lines.append(_md_calibration(report["calibration"]))
    if report.get("ood"):
        lines.append(_md_ood(report["ood"]))
    return ["## Decisions at the point of use", ""] + lines + [""] if lines else []


def _md_calibration(calibration):
    if calibration["method"] == "none":
        return f"- Calibration: none (ECE {format_value(calibration['ece'], 4)})."
    left = [f"{name} ({entry['positives']}+/{entry['negatives']}−)"
            for name, entry in calibration["findings"].items() if entry["method"] == "none"]
    return (f"- Calibration: {calibration['method']}, fitted on {calibration['fitted_on']} "
            f"for {len(calibration['calibrated'])} outputs; ECE on this split "
            f"{format_value(calibration['ece_before'], 4)} before, "
            f"{format_value(calibration['ece_after'], 4)} after (every figure above uses the "
            "calibrated probabilities)." + (
                f" Not calibrated, with fewer than {calibration['min_count']} positives or "
                f"negatives on validation: "
                f"{', '.join(left)}." if left else ""))


def _md_ood(ood):
    if not ood.get("method"):
        return f"- Out-of-distribution flag: none ({ood['reason']})."
    return (f"- Out-of-distribution flag: {ood['method']} distance on "
            f"{', '.join(ood['layers'])}, cut at {format_value(ood['threshold'], 2)} (the "
            f"{ood['percentile']:g}th percentile of {ood['validation_examples']:,} validation "
            f"films); on this split {ood['in_distribution']:,} of {ood['examples']:,} films "
            f"({format_value(100 * ood['in_distribution_share'], 1)} %) are in distribution.")


def _md_no_finding(nf):
    f = format_value
    rows = [[name, f(v["without"]), f(v["with"]), f(v["change"])]
            for name, v in nf.items() if isinstance(v, dict)]
    return (["## No Finding constraint", "",
             f"When the No Finding output is the most likely one, no finding is returned "
             f"({nf['examples_suppressed']:,} images). No Finding AUC: "
             f"{f(nf['no_finding_auc'])}.", ""] +
            markdown_table(["Figure", "Without", "With", "Change"], rows))


def _md_subgroups(report):
    lines = ["## Subgroups (mean AUC)", "",
             "Who the data represents matters: a gap here is a gap in who the model serves.", ""]
    for key, groups in report["subgroups"].items():
        rows = [[name, f"{g['examples']:,}", format_value(g["any_finding_prevalence"]),
                 format_value(g["auc_mean"]), g["auc_mean_over"]] for name, g in groups.items()]
        lines += [f"### {key}", ""] + markdown_table(
            [key, "Images", "Any finding", "Mean AUC", "Findings averaged"], rows)
    return lines + [f"A finding enters a subgroup's mean only with "
                    f"{report['bootstrap']['min_count']} positives and negatives in that "
                    "subgroup.", ""]
