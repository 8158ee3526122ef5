"""Export a trained run as a SavedModel that serves encoded PNG/JPEG bytes (TF Serving ready).

    python -m cxr_tf.export --model_dir=RUN --export_dir=DIR/1 [--checkpoint=best] [--threshold=0.5] [--json]

Signatures (see cxr_tf/serving/graph.py): `serving_default` (image_bytes -> probabilities,
positive, ood_score, in_distribution), `predict_images` (uint8 [N,S,S,1] -> the same),
`metadata` (label names, thresholds and their provenance, calibration, the OOD cut, the model
card) and `describe` (the same, for TF Serving's REST API). Decisions use the run's tuned
thresholds (RUN/thresholds.json, from `cxr_tf.evaluate --tune_thresholds`; one line names the
findings that fell back to the default), else --threshold for every finding; probabilities
are calibrated as RUN/calibration.json says (`--calibrate`), and the out-of-distribution flag
is RUN/ood.npz's (`--fit_ood`; without it ood_score is NaN and in_distribution true). The
model card (assets/model_card.json) is built from the run dir and evaluate's reports of the
same checkpoint. `serving_default` refuses images over --max_pixels before decoding them (the
limit prepare and predict use; `metadata` reports it). The SavedModel needs TensorFlow only,
not cxr_tf.
"""

import dataclasses
import json
import os

from absl import app

from cxr_tf import cli, flags
from cxr_tf.serving.config import ExportConfig

FLAGS = flags.FLAGS


def export_run(config):
    """Writes the SavedModel of a run dir's checkpoint as `config` (an ExportConfig) says;
    returns a summary dict."""
    from cxr_tf import labels
    from cxr_tf.console import say
    from cxr_tf.evaluation import decisions
    from cxr_tf.runs import calibration, checkpoints, ood, record, thresholds
    from cxr_tf.serving import graph, model_card

    run = record.read(config.model_dir)
    provenance = thresholds.read_decisions(config.model_dir, config.threshold)
    calibration.check_thresholds(config.model_dir, provenance.content)
    say(f"loading {checkpoints.checkpoint_path(config.model_dir, config.checkpoint)}")
    model = checkpoints.load_model(config.model_dir, config.checkpoint)
    names = decisions.output_names(int(model.output_shape[-1]))
    baked = graph.Baked(calibration.read(config.model_dir, names), ood.load(config.model_dir),
                        provenance)
    size = int(model.input_shape[1])
    card = model_card.build(config.model_dir, config.checkpoint, baked, image_size=size,
                            max_pixels=config.max_pixels)
    baked = dataclasses.replace(baked, model_card=json.dumps(card, indent=1))
    say(f"writing the SavedModel to {config.export_dir} (tracing its serving graph)")
    graph.export(model, config.export_dir, provenance.values, max_pixels=config.max_pixels,
                 baked=baked)
    return {
        "export_dir": os.path.abspath(config.export_dir),
        "model_dir": os.path.abspath(config.model_dir),
        "checkpoint": config.checkpoint,
        "image_size": size,
        "arch": run.config.arch,
        "thresholds": dict(zip(labels.LABELS, provenance.values)),
        "thresholds_from": provenance.source or f"--threshold={config.threshold:g}",
        "thresholds_summary": provenance.summary(),
        "fell_back": provenance.fell_back(),
        "calibration": card["model_parameters"]["calibration"]["method"],
        "ood": card["model_parameters"]["out_of_distribution"]["method"],
        "model_card": os.path.join(os.path.abspath(config.export_dir), graph.MODEL_CARD_FILE),
        "model_card_summary": model_card.summary(card),
        "signatures": ["serving_default", "predict_images", "metadata", "describe"],
        "max_pixels": config.max_pixels,
    }


def format_summary(summary):
    return "\n".join([
        f"SavedModel: {summary['export_dir']}",
        f"  from {summary['model_dir']} ({summary['checkpoint']}.keras, "
        f"{summary['arch']} at {summary['image_size']} px)",
        f"  thresholds: {summary['thresholds_from']}",
        f"  {summary['thresholds_summary']}",
        "  signatures: serving_default (image_bytes: PNG/JPEG bytes -> probabilities, "
        "positive, ood_score, in_distribution), predict_images, metadata (describe over REST)",
        f"Model card: {summary['model_card']}",
        *(f"  {line}" for line in summary["model_card_summary"]),
        f"Predict:  python -m cxr_tf.predict --model={summary['export_dir']} FILES...",
        f"Inspect:  saved_model_cli show --dir {summary['export_dir']} --all",
    ])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags.build_config(ExportConfig)
    if not config.model_dir or not config.export_dir:
        raise app.UsageError("--model_dir and --export_dir are required")
    summary = export_run(config)
    print(json.dumps(summary) if FLAGS.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    cli.run(main, flags.define_export_flags, outputs=lambda f: [f.export_dir])
