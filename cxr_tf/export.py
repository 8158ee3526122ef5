"""Export a trained run as a SavedModel that serves encoded PNG/JPEG bytes (TF Serving ready).

    python -m cxr_tf.export --model_dir=RUN --export_dir=DIR/1 [--checkpoint=best] [--threshold=0.5] [--json]

Signatures (see cxr_tf/serving/graph.py): `serving_default` (image_bytes -> probabilities, positive),
`predict_images` (uint8 [N,S,S,1] -> probabilities) and `metadata`. Decisions use the run's
tuned thresholds (RUN/thresholds.json, from `cxr_tf.evaluate --tune_thresholds`), else
--threshold for every finding. `serving_default` refuses images over --max_pixels before
decoding them (the limit prepare and predict use; `metadata` reports it). The SavedModel needs
TensorFlow only, not cxr_tf.
"""

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
    from cxr_tf.runs import checkpoints, record, thresholds
    from cxr_tf.serving import graph

    run = record.read(config.model_dir)
    values, source = thresholds.decision_thresholds(config.model_dir, config.threshold)
    say(f"loading {checkpoints.checkpoint_path(config.model_dir, config.checkpoint)}")
    model = checkpoints.load_model(config.model_dir, config.checkpoint)
    say(f"writing the SavedModel to {config.export_dir} (tracing its serving graph)")
    graph.export(model, config.export_dir, values, max_pixels=config.max_pixels)
    return {
        "export_dir": os.path.abspath(config.export_dir),
        "model_dir": os.path.abspath(config.model_dir),
        "checkpoint": config.checkpoint,
        "image_size": int(model.input_shape[1]),
        "arch": run.config.arch,
        "thresholds": dict(zip(labels.LABELS, values)),
        "thresholds_from": source or f"--threshold={config.threshold:g}",
        "signatures": ["serving_default", "predict_images", "metadata"],
        "max_pixels": config.max_pixels,
    }


def format_summary(summary):
    return "\n".join([
        f"SavedModel: {summary['export_dir']}",
        f"  from {summary['model_dir']} ({summary['checkpoint']}.keras, "
        f"{summary['arch']} at {summary['image_size']} px)",
        f"  thresholds: {summary['thresholds_from']}",
        "  signatures: serving_default (image_bytes: PNG/JPEG bytes -> probabilities, "
        "positive), predict_images, metadata",
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
