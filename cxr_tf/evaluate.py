"""Evaluate a trained run: report.json/report.md and plots, optionally tuning thresholds first.

    python -m cxr_tf.evaluate --model_dir=RUN --split=test [--data_dir=DIR] [--checkpoint=best|last] [--bootstrap=1000] [--tune_thresholds=f1|youden] [--calibrate=temperature|platt|isotonic|none] [--fit_ood] [--json]

Writes RUN/eval_<split>/: report.json, report.md, roc.png, pr.png, calibration.png.
`--tune_thresholds` always tunes on the VALIDATION split (whatever --split says) and writes
RUN/thresholds.json, which the report (as `…@tuned`), export and predict then use; a finding
with fewer than 10 validation positives or negatives keeps --threshold, and thresholds.json
says so. `--calibrate` fits a per-finding calibration on the VALIDATION split
(RUN/calibration.json; thresholds are tuned on the calibrated probabilities), `--fit_ood` the
out-of-distribution detector (RUN/ood.npz, cut at --ood_percentile of validation). Evaluating
the test split never chooses anything: nothing is ever fitted on it.

    python -m cxr_tf.evaluate --model_dir=RUN --split=test --bbox_csv=KAGGLE_DIR/BBox_List_2017.csv

adds the Grad-CAM pointing game on NIH's boxes (images looked for beside the CSV and under
--data_dir) to the report, and RUN/eval_<split>/localization.png.

    python -m cxr_tf.evaluate --model_dir=RUN --split=test --expert_labels=google2019_nih-chest-xray-labels.csv.gz

adds the radiologist-adjudicated labels (Google's four findings, either file shape) on the
split's images that have them, beside NIH's labels on the same images (the label-noise gap).

    python -m cxr_tf.evaluate --model_dir=RUN --dataset=chexpert --data_dir=TFDS_DIR [--uncertain_labels=ignore|zeros|ones] [--views=frontal]

evaluates on CheXpert's radiologist-labelled validation split (TFDS `chexpert`, prepared with
`tfds build chexpert --manual_dir=DIR --data_dir=TFDS_DIR`) for the 7 findings both label sets
share, and writes RUN/eval_chexpert/.
"""

import dataclasses
import json

from absl import app

from cxr_tf import cli, flags
from cxr_tf.evaluation.config import ArgumentsError, EvalConfig

FLAGS = flags.FLAGS


def format_summary(report):
    overall, pub = report["overall"], report["published"]
    compared = not pub.get("not_compared")  # CheXpert: no NIH-test column (not like with like)
    lines = [f"{'finding':<20} {'pos/neg':>11} {'AUC':>6}  {'95% CI':<15} "
             f"{'Wang17' if compared else '':>6}"]
    for name, r in report["per_class"].items():
        ci = (f"[{r['auc_ci_low']:.3f}, {r['auc_ci_high']:.3f}]"
              if r["auc_ci_low"] is not None else "")
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.3f}"
        counts = f"{r['positives']}/{r['negatives']}"
        published = f"{r['published_auc']:>6.3f}" if compared else ""
        lines.append(f"{name:<20} {counts:>11} {auc:>6}  {ci:<15} {published}".rstrip())
    lines += [_mean_line(overall, pub, compared),
              f"n/a: fewer than {report['bootstrap']['min_count']} positives or negatives; "
              f"CI: {report['bootstrap']['method'] or 'none'}",
              f"ECE {overall['ece']:.4f} over {overall['examples']:,} images"]
    lines += _decision_lines(report)
    if report.get("expert_labels"):
        expert = report["expert_labels"]
        aucs = ", ".join(f"{name} {'n/a' if e['auc'] is None else format(e['auc'], '.3f')}"
                         for name, e in expert["per_finding"].items() if e["predicted"])
        skipped = expert["rows_in_file"] - expert["images"]
        why = (f" ({skipped:,} of the file's {expert['rows_in_file']:,} skipped: report.md "
               "says why)" if skipped else "")
        lines.append(f"Radiologist labels on {expert['images']:,} images{why}: AUC {aucs}")
    if report.get("tuned_thresholds_from"):
        lines.append(f"Tuned thresholds: {report['model_dir']}/thresholds.json "
                     f"({report['tuned_thresholds_from']['method']}, on validation)")
    if report.get("threshold_provenance"):
        lines.append(f"Thresholds: {report['threshold_provenance']['summary']}")
    if report.get("localization") and report["localization"]["overall"]:
        section = report["localization"]
        loc = section["overall"]
        rate = ("no box scored" if loc["hit_rate"] is None else
                f"{loc['hit_rate']:.3f}, chance {loc['chance']:.3f}")
        lines.append(f"Grad-CAM pointing game: {loc['hits']} of {loc['boxes']} NIH boxes hit "
                     f"({rate}); {section['boxes_on_flat_maps']} boxes on "
                     f"{section['flat_maps']} maps that point nowhere, not scored")
    if report.get("labels"):
        left = sum(r["left_out"] for r in report["labels"]["per_finding"].values())
        lines.append(f"Uncertain labels {report['labels']['uncertain_policy']}: {left} "
                     "finding labels left out")
    lines.append(f"Report: {report['files'][1]}")
    return "\n".join(lines)


def _mean_line(overall, pub, compared=True):
    """The mean AUC of the k findings that have one, beside Wang et al.'s mean of the same k
    findings (their 14-finding mean only when k is 14): like with like. No Wang column where
    the report makes no comparison (another hospital's images)."""
    k = overall["auc_mean_over"]
    mean = "n/a" if overall["auc_mean"] is None else f"{overall['auc_mean']:.3f}"
    if not compared:
        return f"{f'mean of {k}':<20} {'':>11} {mean:>6}"
    if not pub["classes_compared"]:
        return f"{f'mean of {k}':<20} {'':>11} {mean:>6}  (no finding to compare with Wang17)"
    same = pub["their_mean_auc_same_classes"]
    label = ("Wang17 mean of 14" if pub["classes_compared"] == 14
             else f"Wang17 mean of the same {pub['classes_compared']}")
    return (f"{f'mean of {k}':<20} {'':>11} {mean:>6}  {'':<15} {same:>6.3f}   ({label}; "
            f"difference {pub['mean_difference']:+.3f})")


def _decision_lines(report):
    """Calibration and the out-of-distribution flag, as the report saw them on this split."""
    lines = []
    calibration, ood = report.get("calibration"), report.get("ood")
    if calibration and calibration["method"] != "none":
        lines.append(f"Calibration {calibration['method']} (fitted on validation): ECE "
                     f"{calibration['ece_before']:.4f} before, {calibration['ece_after']:.4f} "
                     "after; the figures above are calibrated")
    if ood and ood.get("method"):
        lines.append(f"In distribution: {ood['in_distribution']:,} of {ood['examples']:,} "
                     f"images ({100 * ood['in_distribution_share']:.1f} %; cut "
                     f"{ood['threshold']:.2f}, the {ood['percentile']:g}th percentile on "
                     "validation)")
    return lines


def build_config(flag_values=FLAGS):
    """The EvalConfig of the command line; arguments that do not go together are a usage
    error spelled with their flags (`--uncertain_labels and --views apply to ...`)."""
    given = tuple(f.name for f in dataclasses.fields(EvalConfig)
                  if f.name in flag_values and flag_values[f.name].present)
    try:
        return flags.build_config(EvalConfig, flag_values, given=given)
    except ArgumentsError as e:
        raise app.UsageError(e.spelled(lambda name: f"--{name}")) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = build_config()
    from cxr_tf.evaluation import runner  # TensorFlow: after the flags are checked

    report = runner.evaluate(config, progress=not FLAGS.json)
    print(json.dumps(report) if FLAGS.json else format_summary(report))
    return 0


if __name__ == "__main__":
    cli.run(main, flags.define_evaluate_flags, outputs=lambda f: [f.model_dir])
