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

FLAGS = flags.FLAGS


def export_run(model_dir, export_dir, *, checkpoint="best", threshold=0.5, max_pixels=None):
    """Writes the SavedModel of a run dir's checkpoint; returns a summary dict."""
    from cxr_tf import labels
    from cxr_tf.data import images
    from cxr_tf.serving import graph, run_dir

    max_pixels = images.MAX_PIXELS if max_pixels is None else max_pixels
    config = run_dir.read_config(model_dir)
    thresholds, source = run_dir.decision_thresholds(model_dir, threshold)
    model = run_dir.load_model(model_dir, checkpoint)
    graph.export(model, export_dir, thresholds, max_pixels=max_pixels)
    return {
        "export_dir": os.path.abspath(export_dir),
        "model_dir": os.path.abspath(model_dir),
        "checkpoint": checkpoint,
        "image_size": int(model.input_shape[1]),
        "arch": config.get("arch"),
        "thresholds": dict(zip(labels.LABELS, thresholds)),
        "thresholds_from": source,
        "signatures": ["serving_default", "predict_images", "metadata"],
        "max_pixels": max_pixels,
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
    if not FLAGS.model_dir or not FLAGS.export_dir:
        raise app.UsageError("--model_dir and --export_dir are required")
    summary = export_run(FLAGS.model_dir, FLAGS.export_dir, checkpoint=FLAGS.checkpoint,
                         threshold=FLAGS.threshold, max_pixels=FLAGS.max_pixels)
    print(json.dumps(summary) if FLAGS.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    cli.run(main, flags.define_export_flags)
