"""Evaluating a run: what `python -m cxr_tf.evaluate` runs, as one call on an EvalConfig.

    report = runner.evaluate(EvalConfig(model_dir="runs/demo", split="test", bootstrap=200))

NIH data: predicts the split, optionally fits on the VALIDATION split first (whatever
`split` says; nothing is ever fitted on test: `decisions`) a calibration, thresholds and the
out-of-distribution detector (RUN/calibration.json, thresholds.json, ood.npz), then writes
RUN/eval_<split>/: report.json, report.md, roc.png, pr.png, calibration.png, plus the
radiologist section (`expert_labels`) and the Grad-CAM pointing game (`bbox_csv`,
localization.png). CheXpert (`dataset="chexpert"`): RUN/eval_chexpert/ on the 7 findings both
label sets share. The report's figures come from the pure modules beside this one.
"""

import os

import numpy as np

from cxr_tf import errors, labels
from cxr_tf.data import chexpert, input_pipeline, source
from cxr_tf.console import say
from cxr_tf.evaluation import (box_list, box_overlays, decisions, expert_labels, external,
                               gradcam, localization, metrics, ood, report_markdown,
                               report_plots, reporting)
from cxr_tf.evaluation.inputs import Bootstrap, Scored, Thresholds
from cxr_tf.runs import calibration as calibration_file
from cxr_tf.runs import checkpoints, record
from cxr_tf.runs import ood as ood_file
from cxr_tf.runs import thresholds as run_thresholds_file


class SplitReadError(errors.UserError, ValueError):
    """Fewer images were read than the split lists (undecodable files in a raw folder)."""


# --- the run dir: every read and write evaluation makes ---------------------------------------

def run_thresholds(model_dir, run):
    """(Thresholds: the run's configured ones and its tuned ones (thresholds.json) if any,
    thresholds.json's content or None). Tuned thresholds of another probability scale than
    the run's calibration.json gives are refused (RunDirError)."""
    tuned, content = run_thresholds_file.read_thresholds(model_dir)
    calibration_file.check_thresholds(model_dir, content)
    return Thresholds(run.config.thresholds, tuned), content


# --- NIH -----------------------------------------------------------------------------------

def evaluate(config, *, progress=True):
    """Evaluates as `config` (an EvalConfig) says; returns the report it wrote."""
    if config.dataset == "chexpert":
        return evaluate_chexpert(config, progress=progress)
    return evaluate_run(config, progress=progress)


def evaluate_run(config, *, progress=True):
    """Evaluates a run dir on one NIH split and writes RUN/eval_<split>/. Returns the report.

    The box list (bbox_csv) and the radiologist labels (expert_labels) are read before
    predicting, so a bad file fails at once. What `config` asks to fit (calibration,
    thresholds, the out-of-distribution detector) is fitted first (`decisions.fit`), so the
    report shows the probabilities and decisions that export and predict will give."""
    run = record.read(config.model_dir)
    data_dir = config.data_dir or run.resolved.data_dir
    boxes = box_list.find_boxes(config.bbox_csv, data_dir) if config.bbox_csv else None
    expert = expert_labels.read(config.expert_labels) if config.expert_labels else None
    # Data before the model: a damaged dataset is refused before the slower model load.
    say(f"opening the dataset in {data_dir}")
    data = source.open_source(data_dir, image_size=run.config.image_size,
                              val_fraction=run.config.val_fraction, seed=run.config.seed,
                              verify_data=config.verify_data)
    say(f"loading {checkpoints.checkpoint_path(config.model_dir, config.checkpoint)}")
    model = checkpoints.load_model(config.model_dir, config.checkpoint)
    bootstrap = Bootstrap(config.bootstrap, progress=progress)
    with_features = config.fit_ood or ood_file.load(config.model_dir) is not None
    net = ood.feature_model(model) if with_features else model

    def predict(split, limit=None):
        say(f"predicting the {split} split ({data.split_sizes.get(split, 0):,} images)")
        return predict_outputs(net, data, split, batch_size=config.batch_size, limit=limit,
                               verbose="auto" if progress else 0)

    evaluated = predict(config.split)
    fitted = decisions.fit(config, predict, evaluated)
    report, scored, uncalibrated = _nih_report(config, run, evaluated, bootstrap)
    report["decisions"] = {"fitted": sorted(fitted)}
    sections = []  # (title, markdown) pairs that follow the NIH report in report.md
    if expert is not None:
        report["expert_labels"] = _expert_section(config, run, expert, data, evaluated, scored,
                                                  bootstrap)
        sections.append(("Radiologist-adjudicated labels",
                         expert_labels.format_markdown(report["expert_labels"])))
    out_dir = _out_dir(config.model_dir, f"eval_{config.split}")
    report = {"model_dir": os.path.abspath(config.model_dir), "checkpoint": config.checkpoint,
              "split": config.split, "data_dir": os.path.abspath(data_dir), **report}
    say(f"writing the report and its plots in {out_dir}")
    report["files"] = _report_files(out_dir) + report_plots.write_plots(out_dir, scored,
                                                                        before=uncalibrated)
    if boxes:
        say("scoring Grad-CAM on the NIH boxes")
        report["localization"], text = localization_section(
            model, boxes, out_dir, bootstrap=bootstrap, batch_size=config.batch_size)
        report["files"].append(os.path.join(out_dir, "localization.png"))
        sections.append(("Localisation: Grad-CAM pointing game on NIH boxes", text))
    return _write(report, f"Evaluation on {config.split}", sections)


def _expert_section(config, run, expert, data, evaluated, scored, bootstrap):
    """The radiologist-label section of the report: the file, its coverage and its scores."""
    image_ids = [r["image_id"] for r in evaluated.rows]
    return {"file": os.path.abspath(config.expert_labels),
            **expert_labels.evaluate(expert, image_ids, scored, _thresholds(config, run),
                                     bootstrap, elsewhere=_other_splits(data, config.split))}


def _other_splits(data, split):
    """{split: image ids} of the source's other splits, so the radiologist section can say
    why a labelled image was not scored. A prepared dataset's ids are read from its records
    (metadata only, no image decoded)."""
    return {other: data.columns(other)["image_id"] for other in source.SPLITS
            if other != split and other in data.split_sizes}

def _thresholds(config, run):
    return run_thresholds(config.model_dir, run)[0]


def _nih_report(config, run, evaluated, bootstrap):
    """(the report's NIH sections as a dict, the Scored they were computed on, the
    uncalibrated probabilities for the reliability diagram or None when the run has no
    calibration)."""
    names = decisions.output_names(evaluated.logits.shape[1])
    calibration = calibration_file.read(config.model_dir, names)
    thresholds, tuned_from = run_thresholds(config.model_dir, run)
    decided = run_thresholds_file.read_decisions(config.model_dir, config.threshold)
    probs = decisions.probabilities(evaluated.logits, calibration)
    scored, no_finding = _scored(probs, evaluated.rows)
    report = reporting.build_report(scored, thresholds, bootstrap, no_finding_prob=no_finding)
    raw = metrics.sigmoid(evaluated.logits)[:, :labels.NUM_CLASSES]
    report["calibration"] = reporting.to_json_ready(decisions.calibration_section(
        scored.y_true, raw, scored.y_prob, calibration))
    report["ood"] = reporting.to_json_ready(decisions.ood_section(
        ood_file.load(config.model_dir), evaluated.features))
    report["threshold_provenance"] = {"summary": decided.summary(),
                                      "fell_back": decided.fell_back(),
                                      "findings": decided.findings if tuned_from else None}
    return ({"tuned_thresholds_from": tuned_from, **report}, scored,
            raw if calibration is not None else None)


def predict_outputs(net, data, split, *, batch_size=64, limit=None, verbose="auto"):
    """A `decisions.Predicted` of one split of `data` (a `source.Source`): `net` is the model
    (logits) or its `ood.feature_model` (logits and pooled features). limit: at most this many
    images (whole batches, in file order)."""
    rows = data.rows(split)
    ds = input_pipeline.make_for_eval(data, split, batch_size=batch_size).map(
        lambda image, target: image)
    if limit is not None:
        ds = ds.take(-(-limit // batch_size))
        rows = rows[:-(-limit // batch_size) * batch_size]
    with data.reading():  # a shard damaged since it was opened: one error naming it
        outputs = net.predict(ds, verbose=verbose)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    logits = np.asarray(outputs[0], np.float64)
    if len(logits) != len(rows):
        # Only the raw-Kaggle path drops images (undecodable files, warned above).
        raise SplitReadError(
            f"{data.data_dir}: the {split} split lists {len(rows)} images but {len(logits)} "
            "were read; prepare the data with `python -m cxr_tf.prepare`, which skips and "
            "counts undecodable files")
    features = [np.asarray(f, np.float32) for f in outputs[1:]] or None
    return decisions.Predicted(logits, features, rows, ood.layers_of(net))


def _scored(probs, rows):
    """(Scored of the 14 findings, the No Finding output's probabilities or None)."""
    n = labels.NUM_CLASSES
    scored = Scored(np.stack([r["labels"] for r in rows]), probs[:, :n], labels.LABELS,
                    patient_ids=[r["patient_id"] for r in rows], metadata=rows)
    return scored, (probs[:, n] if probs.shape[1] > n else None)


# --- Grad-CAM on NIH's boxes ---------------------------------------------------------------

def pointing_game(model, boxes, *, batch_size=32, bootstrap=Bootstrap(), overlay_dir=None):
    """(the report's `localization` section, {finding: [Pair]} the first pairs to draw): the
    pointing game of the model's Grad-CAM on a `box_list.BoxList`. overlay_dir: also write
    one overlay PNG per box there."""
    cam = gradcam.GradCam(model)
    size = cam.size[0]
    pairs = localization.point(boxes, cam, size, batch_size=batch_size)
    if overlay_dir:
        pairs = box_overlays.save_box_overlays(pairs, overlay_dir)
    return localization.summarize(pairs, boxes, size=size, bootstrap=bootstrap)


def localization_section(model, boxes, out_dir, *, bootstrap=Bootstrap(), batch_size=32):
    """The pointing game as a report section: (section, markdown); writes
    out_dir/localization.png."""
    section, examples = pointing_game(model, boxes, batch_size=batch_size,
                                      bootstrap=bootstrap)
    grid = box_overlays.plot_overlays(os.path.join(out_dir, "localization.png"), examples)
    return section, localization.format_markdown(section, grid)


# --- CheXpert ------------------------------------------------------------------------------

def evaluate_chexpert(config, *, progress=True):
    """Evaluates an NIH-trained run on CheXpert's validation split (TFDS `chexpert` prepared
    in config.data_dir) for the findings both label sets share; writes RUN/eval_chexpert/."""
    run = record.read(config.model_dir)
    say(f"opening CheXpert in {config.data_dir}")
    images, rows, excluded = chexpert.read(config.data_dir, run.config.image_size,
                                           views=config.views)
    say(f"loading {checkpoints.checkpoint_path(config.model_dir, config.checkpoint)}")
    model = checkpoints.load_model(config.model_dir, config.checkpoint)
    say(f"predicting CheXpert's {chexpert.SPLIT} split ({len(rows):,} images)")
    logits = model.predict(images.batch(config.batch_size), verbose="auto" if progress else 0)
    names = list(chexpert.SHARED)
    columns = [labels.LABELS.index(name) for name in names]
    logits = np.asarray(logits, np.float64)
    calibration = calibration_file.read(config.model_dir,
                                        decisions.output_names(logits.shape[1]))
    probs = decisions.probabilities(logits, calibration)[:, columns]  # as served
    scored = Scored(np.stack([r["labels"] for r in rows]), probs, names,
                    patient_ids=[r["patient_id"] for r in rows], metadata=rows)
    thresholds, tuned_from = run_thresholds(config.model_dir, run)
    report = external.build_report(scored, config.uncertain_labels, thresholds.select(columns),
                                   Bootstrap(config.bootstrap, progress=progress))
    report["labels"].update(views=list(config.views), images_left_out_by_view=excluded,
                            chexpert_observation=chexpert.SHARED)
    out_dir = _out_dir(config.model_dir, "eval_chexpert")
    report = {"model_dir": os.path.abspath(config.model_dir), "checkpoint": config.checkpoint,
              "dataset": "chexpert", "split": chexpert.SPLIT,
              "data_dir": os.path.abspath(config.data_dir), "tuned_thresholds_from": tuned_from,
              **report}
    y_used, _ = external.apply_policy(scored.y_true, config.uncertain_labels)
    complete = ~np.isnan(y_used).any(axis=1)  # the curves need every finding's label
    plotted = Scored(y_used[complete].astype(np.int8), probs[complete], names)
    say(f"writing the report and its plots in {out_dir}")
    report["files"] = _report_files(out_dir) + report_plots.write_plots(out_dir, plotted)
    return _write(report, "Evaluation on CheXpert validation",
                  [("Labels (CheXpert)", external.format_markdown(report["labels"]))])


# --- writing -------------------------------------------------------------------------------

def _out_dir(model_dir, name):
    out_dir = os.path.join(model_dir, name)
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


def _report_files(out_dir):
    return [os.path.join(out_dir, name) for name in ("report.json", "report.md")]


def _write(report, title, sections):
    """Writes report.json and report.md (the first two of report["files"]); returns report."""
    reporting.write_json(report["files"][0], report)
    with open(report["files"][1], "w") as f:
        f.write(report_markdown.format_markdown(report, title, sections))
    return report
