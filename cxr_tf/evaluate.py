"""Evaluate a trained run: report.json/report.md and plots, optionally tuning thresholds first.

    python -m cxr_tf.evaluate --model_dir=RUN --split=test [--data_dir=DIR] [--checkpoint=best|last] [--bootstrap=1000] [--tune_thresholds=f1|youden] [--json]

Writes RUN/eval_<split>/: report.json, report.md, roc.png, pr.png, calibration.png.
`--tune_thresholds` always tunes on the VALIDATION split (whatever --split says) and writes
RUN/thresholds.json, which the report (as `…@tuned`), export and predict then use. Evaluating
the test split never chooses anything: no thresholds are ever fitted on it.

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

import json
import os

import numpy as np
from absl import app

from cxr_tf import cli, errors, flags, labels

FLAGS = flags.FLAGS


def predict_split(model, data_dir, split, *, image_size, val_fraction=0.1, seed=0,
                  batch_size=64, verbose="auto"):
    """(probabilities (n, outputs), per-image metadata rows) of one split, in one order."""
    from cxr_tf.data import input_pipeline, source
    from cxr_tf.evaluation import metrics

    data = source.open_source(data_dir, image_size=image_size, val_fraction=val_fraction,
                              seed=seed)
    rows = data.rows(split)
    ds = input_pipeline.make_for_eval(data, split, batch_size=batch_size).map(
        lambda image, target: image)
    logits = np.asarray(model.predict(ds, verbose=verbose), np.float64)
    if len(logits) != len(rows):
        # Only the raw-Kaggle path drops images (undecodable files, warned above).
        raise source.SourceError(
            f"{data_dir}: the {split} split lists {len(rows)} images but {len(logits)} were "
            "read; prepare the data with `python -m cxr_tf.prepare`, which skips and counts "
            "undecodable files")
    return metrics.sigmoid(logits), rows


def tune_run(model_dir, validation, method, *, checkpoint="best"):
    """Tunes per-finding thresholds on (probabilities, rows) predicted on the validation split
    and writes RUN/thresholds.json."""
    from cxr_tf.evaluation import metrics
    from cxr_tf.runs import thresholds as run_thresholds

    probs, rows = validation
    y_true = np.stack([r["labels"] for r in rows])
    thresholds = metrics.tune_thresholds(y_true, probs[:, :labels.NUM_CLASSES], method)
    return run_thresholds.write_thresholds(model_dir, thresholds, method, examples=len(rows),
                                           checkpoint=checkpoint)


def evaluate_run(model_dir, split="test", *, data_dir=None, checkpoint="best", n_boot=1000,
                 tune=None, batch_size=64, progress=True, bbox_csv=None, expert_labels=None):
    """Evaluates a run dir on one split and writes RUN/eval_<split>/. Returns the report.

    bbox_csv: NIH's box list; adds the `localization` section. expert_labels: Google's
    radiologist labels (cxr_tf.evaluation.expert_labels); adds the `expert_labels` section.
    Both files are read before predicting, so a bad file fails at once."""
    from cxr_tf.evaluation import expert_labels as expert_lib
    from cxr_tf.evaluation import report_markdown, report_plots, reporting
    from cxr_tf.runs import checkpoints, record
    from cxr_tf.runs import thresholds as run_thresholds

    run = record.read(model_dir)
    data_dir = data_dir or run.resolved.data_dir
    boxes = find_boxes(bbox_csv, data_dir) if bbox_csv else None
    expert = expert_lib.read(expert_labels) if expert_labels else None
    model = checkpoints.load_model(model_dir, checkpoint)
    verbose = "auto" if progress else 0

    def predict(name):
        return predict_split(model, data_dir, name, image_size=run.config.image_size,
                             val_fraction=run.config.val_fraction, seed=run.config.seed,
                             batch_size=batch_size, verbose=verbose)

    probs, rows = predict(split)
    if tune:
        tune_run(model_dir, (probs, rows) if split == "validation" else predict("validation"),
                 tune, checkpoint=checkpoint)
    tuned, tuned_info = run_thresholds.read_thresholds(model_dir)
    n = labels.NUM_CLASSES
    y_true = np.stack([r["labels"] for r in rows])
    thresholds = list(run.config.thresholds)
    patient_ids = [r["patient_id"] for r in rows]
    report = reporting.build_report(
        y_true, probs[:, :n], label_names=labels.LABELS, thresholds=thresholds,
        tuned_thresholds=tuned, patient_ids=patient_ids, metadata=rows,
        no_finding_prob=probs[:, n] if probs.shape[1] > n else None, n_boot=n_boot,
        progress=progress)
    sections = []  # (title, markdown) pairs that follow the NIH report in report.md
    if expert is not None:
        section = expert_lib.evaluate(
            expert, [r["image_id"] for r in rows], patient_ids, y_true, probs[:, :n],
            label_names=labels.LABELS, thresholds=thresholds, tuned_thresholds=tuned,
            n_boot=n_boot, progress=progress)
        report["expert_labels"] = {"file": os.path.abspath(expert_labels), **section}
        sections.append(("Radiologist-adjudicated labels",
                         expert_lib.format_markdown(report["expert_labels"])))
    out_dir = os.path.join(model_dir, f"eval_{split}")
    os.makedirs(out_dir, exist_ok=True)
    report = {"model_dir": os.path.abspath(model_dir), "checkpoint": checkpoint, "split": split,
              "data_dir": os.path.abspath(data_dir), "tuned_thresholds_from": tuned_info,
              **report}
    report["files"] = [os.path.join(out_dir, name) for name in ("report.json", "report.md")]
    report["files"] += report_plots.write_plots(out_dir, y_true, probs[:, :n], labels.LABELS)
    if boxes:
        report["localization"], text = localization_section(
            model, *boxes, out_dir, n_boot=n_boot, batch_size=batch_size)
        report["files"].append(os.path.join(out_dir, "localization.png"))
        sections.append(("Localisation: Grad-CAM pointing game on NIH boxes", text))
    reporting.write_json(report["files"][0], report)
    with open(report["files"][1], "w") as f:
        f.write(report_markdown.format_markdown(report, f"Evaluation on {split}", sections))
    return report


def find_boxes(bbox_csv, data_dir):
    """(source, boxes, {image: path}) of NIH's box list; images are looked for beside the CSV
    (where the Kaggle download has it) and under data_dir. An error when none is found."""
    from cxr_tf.evaluation import localization

    boxes = localization.read_boxes(bbox_csv)
    dirs = list(dict.fromkeys([os.path.dirname(os.path.abspath(bbox_csv)),
                               os.path.abspath(data_dir)]))  # walked once each
    paths = localization.find_images(dirs, [b.image_id for b in boxes])
    if boxes and not paths:
        raise errors.NotFoundError(
            f"{bbox_csv}: none of the {len({b.image_id for b in boxes}):,} images of the box "
            f"list is under {' or '.join(dirs)}; the boxes need the image files (their "
            "size places each box)")
    return os.path.abspath(bbox_csv), boxes, paths


def localization_section(model, source, boxes, paths, out_dir, *, n_boot=1000, batch_size=32):
    """The pointing game with the model's Grad-CAM: (report section, markdown lines); writes
    out_dir/localization.png."""
    from cxr_tf.evaluation import localization
    from cxr_tf.serving import gradcam

    cam = gradcam.GradCam(model)
    pairs = localization.point(boxes, paths, cam, cam.size[0], batch_size=batch_size)
    section, examples = localization.summarize(pairs, boxes, paths, size=cam.size[0],
                                               n_boot=n_boot, source=source)
    grid = localization.plot_overlays(os.path.join(out_dir, "localization.png"), examples)
    return section, localization.format_markdown(section, grid)


def evaluate_chexpert(model_dir, *, data_dir, checkpoint="best", n_boot=1000, uncertain="ignore",
                      views=("frontal",), batch_size=64, progress=True):
    """Evaluates an NIH-trained run on CheXpert's validation split (TFDS `chexpert` prepared
    in data_dir) for the findings both label sets share; writes RUN/eval_chexpert/."""
    from cxr_tf.data import chexpert
    from cxr_tf.evaluation import external, metrics, report_markdown, report_plots, reporting
    from cxr_tf.runs import checkpoints, record
    from cxr_tf.runs import thresholds as run_thresholds

    run = record.read(model_dir)
    images, rows, excluded = chexpert.read(data_dir, run.config.image_size, views=views)
    model = checkpoints.load_model(model_dir, checkpoint)
    logits = model.predict(images.batch(batch_size), verbose="auto" if progress else 0)
    names = list(chexpert.SHARED)
    columns = [labels.LABELS.index(name) for name in names]
    probs = metrics.sigmoid(np.asarray(logits, np.float64))[:, columns]
    y = np.stack([r["labels"] for r in rows])
    tuned, tuned_info = run_thresholds.read_thresholds(model_dir)
    report = external.build_report(
        y, probs, label_names=names, policy=uncertain, thresholds=list(run.config.thresholds),
        tuned_thresholds=None if tuned is None else np.asarray(tuned)[columns],
        patient_ids=[r["patient_id"] for r in rows], metadata=rows, n_boot=n_boot,
        progress=progress)
    report["labels"].update(views=list(views), images_left_out_by_view=excluded,
                            chexpert_observation=chexpert.SHARED)
    out_dir = os.path.join(model_dir, "eval_chexpert")
    os.makedirs(out_dir, exist_ok=True)
    report = {"model_dir": os.path.abspath(model_dir), "checkpoint": checkpoint,
              "dataset": "chexpert", "split": chexpert.SPLIT,
              "data_dir": os.path.abspath(data_dir), "tuned_thresholds_from": tuned_info,
              **report}
    report["files"] = [os.path.join(out_dir, name) for name in ("report.json", "report.md")]
    y_used, _ = external.apply_policy(y, uncertain)
    complete = ~np.isnan(y_used).any(axis=1)  # the curves need every finding's label
    report["files"] += report_plots.write_plots(out_dir, y_used[complete].astype(np.int8),
                                                probs[complete], names)
    reporting.write_json(report["files"][0], report)
    with open(report["files"][1], "w") as f:
        f.write(report_markdown.format_markdown(
            report, "Evaluation on CheXpert validation",
            [("Labels (CheXpert)", external.format_markdown(report["labels"]))]))
    return report


def format_summary(report):
    overall, pub = report["overall"], report["published"]
    lines = [f"{'finding':<20} {'pos/neg':>11} {'AUC':>6}  {'95% CI':<15} {'Wang17':>6}"]
    for name, r in report["per_class"].items():
        ci = (f"[{r['auc_ci_low']:.3f}, {r['auc_ci_high']:.3f}]"
              if r["auc_ci_low"] is not None else "")
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.3f}"
        counts = f"{r['positives']}/{r['negatives']}"
        lines.append(f"{name:<20} {counts:>11} {auc:>6}  {ci:<15} {r['published_auc']:>6.3f}")
    mean = "n/a" if overall["auc_mean"] is None else f"{overall['auc_mean']:.3f}"
    diff = "n/a" if pub["mean_difference"] is None else f"{pub['mean_difference']:+.3f}"
    over = f"mean of {overall['auc_mean_over']}"
    lines += [f"{over:<20} {'':>11} {mean:>6}  {'':<15} {pub['mean_auc']:>6.3f}   "
              f"(difference {diff})",
              f"n/a: fewer than {report['bootstrap']['min_count']} positives or negatives; "
              f"CI: {report['bootstrap']['method'] or 'none'}",
              f"ECE {overall['ece']:.4f} over {overall['examples']:,} images"]
    if report.get("expert_labels"):
        expert = report["expert_labels"]
        aucs = ", ".join(f"{name} {'n/a' if e['auc'] is None else format(e['auc'], '.3f')}"
                         for name, e in expert["per_finding"].items() if e["predicted"])
        lines.append(f"Radiologist labels on {expert['images']:,} images: AUC {aucs}")
    if report.get("tuned_thresholds_from"):
        lines.append(f"Tuned thresholds: {report['model_dir']}/thresholds.json "
                     f"({report['tuned_thresholds_from']['method']}, on validation)")
    if report.get("localization") and report["localization"]["overall"]:
        loc = report["localization"]["overall"]
        lines.append(f"Grad-CAM pointing game: {loc['hits']} of {loc['boxes']} NIH boxes hit "
                     f"({loc['hit_rate']:.3f}, chance {loc['chance']:.3f})")
    if report.get("labels"):
        left = sum(r["left_out"] for r in report["labels"]["per_finding"].values())
        lines.append(f"Uncertain labels {report['labels']['uncertain_policy']}: {left} "
                     "finding labels left out")
    lines.append(f"Report: {report['files'][1]}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    flags.build_config(flags.EvaluateOptions)  # checks every value once
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required")
    if FLAGS.dataset == "chexpert":
        if not FLAGS.data_dir:
            raise app.UsageError("--dataset=chexpert needs --data_dir (the TFDS dir holding "
                                 "the prepared chexpert dataset)")
        if (FLAGS.tune_thresholds or FLAGS.bbox_csv or FLAGS.expert_labels
                or FLAGS["split"].present):
            raise app.UsageError("--split, --tune_thresholds, --bbox_csv and --expert_labels "
                                 "work on NIH data (--dataset=chexpert always evaluates "
                                 "CheXpert's validation split)")
        report = evaluate_chexpert(FLAGS.model_dir, data_dir=FLAGS.data_dir,
                                   checkpoint=FLAGS.checkpoint, n_boot=FLAGS.bootstrap,
                                   uncertain=FLAGS.uncertain_labels, views=FLAGS.views,
                                   batch_size=FLAGS.batch_size, progress=not FLAGS.json)
        print(json.dumps(report) if FLAGS.json else format_summary(report))
        return 0
    if FLAGS["uncertain_labels"].present or FLAGS["views"].present:
        raise app.UsageError("--uncertain_labels and --views apply to --dataset=chexpert")
    report = evaluate_run(FLAGS.model_dir, FLAGS.split, data_dir=FLAGS.data_dir,
                          checkpoint=FLAGS.checkpoint, n_boot=FLAGS.bootstrap,
                          tune=FLAGS.tune_thresholds, batch_size=FLAGS.batch_size,
                          progress=not FLAGS.json, bbox_csv=FLAGS.bbox_csv,
                          expert_labels=FLAGS.expert_labels)
    print(json.dumps(report) if FLAGS.json else format_summary(report))
    return 0


if __name__ == "__main__":
    cli.run(main, flags.define_evaluate_flags)
