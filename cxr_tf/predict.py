"""Predict findings for PNG, JPEG and DICOM files with an exported SavedModel or a run dir.

    python -m cxr_tf.predict --model=DIR FILES_OR_DIRS... [--output=preds.csv] [--gradcam_dir=DIR] [--json]

--model is a SavedModel dir (from `cxr_tf.export`) or a run dir (its checkpoints/best.keras).
Folders are searched recursively for .png, .jpg, .jpeg, .dcm and .dicom files. Every file
goes through `cxr_tf.data.images.preprocess`, the preprocessing of the training data (DICOM:
rescale slope/intercept, VOI LUT or window, MONOCHROME1 inverted). The CSV has `file`, one
probability column per finding and `positive_labels` ("A|B", or "No Finding"), then one 0/1
decision column per finding (`<Finding>_positive`), `ood_score` and `in_distribution` (0: the
input is unlike the training films); it is written whole at the end (a temporary name, then
renamed), names that are not UTF-8 escaped (\\xNN). The thresholds, with how each was chosen
and on how many cases, go beside it (`preds.csv` -> `preds.thresholds.json`; in --json under
`decisions`), and one line names the findings whose threshold fell back to the default. No
image file under the paths given is an error (exit 1, no CSV).
A file that cannot be read (not a regular file, over --max_pixels, corrupt) is reported with
its reason and the others go on; the exit code is 1 if any failed. --gradcam_dir (run dir
only) writes one Grad-CAM overlay per file and positive finding (or the top --gradcam_top_k
findings when none is positive).
"""

import json
import os
import sys

from absl import app

from cxr_tf import atomic, cli, errors, flags
from cxr_tf.serving import inputs
from cxr_tf.serving.config import PredictConfig

FLAGS = flags.FLAGS


def format_summary(summary):
    lines = [f"Predicted {summary['predicted']} of {summary['files']} files with "
             f"{summary['model']} (thresholds: {summary['thresholds_from']}).",
             f"Thresholds: {summary['decisions']['summary']}"]
    if summary["output"]:
        lines.append(f"CSV: {summary['output']} (thresholds and their provenance: "
                     f"{summary['decisions_file']})")
    flagged = summary["out_of_distribution"]
    if flagged is not None:
        lines.append(f"Out of distribution: {flagged} of {summary['predicted']} files "
                     "(in_distribution 0 in the CSV: do not trust their findings)")
    if summary["gradcam"]:
        lines.append(f"Grad-CAM overlays: {len(summary['gradcam'])} in {summary['gradcam_dir']}")
    if summary["failed"]:
        lines.append(f"{len(summary['failed'])} failed:")
        lines += [f"  {failure['reason']}" for failure in summary["failed"]]
    return "\n".join(lines)


def decisions_path(output):
    """Where predict writes the decisions beside its CSV: preds.csv -> preds.thresholds.json."""
    return os.path.splitext(output)[0] + ".thresholds.json"


def main(argv):
    paths = argv[1:]
    config = flags.build_config(PredictConfig)
    if not config.model or not paths:
        raise app.UsageError("--model and at least one file or folder are required "
                             "(python -m cxr_tf.predict --model=DIR FILES_OR_DIRS...)")
    if config.output:  # before predicting: a bad path must not cost the predictions
        atomic.check_writable(config.output)
    files = inputs.list_inputs(paths)
    if not files:  # a mistyped folder in a batch job must not look like a clean run
        raise errors.NotFoundError(
            f"no image file ({', '.join(inputs.IMAGE_EXTENSIONS)}) found under "
            f"{', '.join(paths)}")
    from cxr_tf.console import say
    from cxr_tf.serving import predictor as predictor_lib  # TensorFlow starts here

    say(f"loading {config.model}")
    predictor = predictor_lib.Predictor(config.model, config.threshold)
    if config.gradcam_dir and predictor.keras_model is None:
        raise app.UsageError("--gradcam_dir needs the Keras model: pass a run dir as --model")
    say(f"predicting {len(files):,} files" + (" with Grad-CAM" if config.gradcam_dir else ""))
    rows, failures, overlays = predictor_lib.predict_files(
        predictor, files, batch_size=config.batch_size, gradcam_dir=config.gradcam_dir,
        gradcam_top_k=config.gradcam_top_k, max_pixels=config.max_pixels)
    thresholds_from = predictor.thresholds_from or f"--threshold={config.threshold:g}"
    decided = {"model": config.model, "thresholds_from": thresholds_from,
               **predictor.decisions}
    summary = {"model": config.model, "thresholds_from": thresholds_from,
               "files": len(files), "predicted": len(rows), "failed": failures,
               "output": config.output, "gradcam_dir": config.gradcam_dir, "gradcam": overlays,
               "decisions": decided, "decisions_file": None,
               "out_of_distribution": (sum(not r["in_distribution"] for r in rows)
                                       if decided["ood_method"] != "none" else None)}
    if config.output:  # whole or not at all: an interrupted run leaves no half-written CSV
        with atomic.replacing(config.output) as tmp, open(tmp, "w", newline="",
                                                          encoding="utf-8") as f:
            predictor_lib.write_csv(rows, predictor.label_names, f)
        summary["decisions_file"] = atomic.write_json(decisions_path(config.output), decided,
                                                      indent=1)
    if FLAGS.json:
        print(json.dumps({**summary, "label_names": predictor.label_names, "predictions": rows}))
    elif config.output:
        print(format_summary(summary))
    else:  # CSV on stdout, so the summary goes to stderr
        predictor_lib.write_csv(rows, predictor.label_names, sys.stdout)
        print(format_summary(summary), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    cli.run(main, flags.define_predict_flags, outputs=lambda f: [f.output, f.gradcam_dir])
