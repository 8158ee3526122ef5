"""What `python -m cxr_tf.export` and `python -m cxr_tf.predict` do: their configs, each field
with its default, help and bounds (`cxr_tf.schema.option`), from which the apps' flags are
generated. Pure Python, so the apps check their flags before TensorFlow starts."""

import dataclasses

from cxr_tf import labels, options, schema


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """One SavedModel from one run dir's checkpoint."""

    model_dir: str | None = options.model_dir()
    export_dir: str | None = options.path(
        "SavedModel dir to write, ending in a version number for TF Serving (e.g. "
        "models/cxr/1).")
    checkpoint: str = options.checkpoint()
    threshold: float = options.threshold()
    max_pixels: int = options.max_pixels()

    def __post_init__(self):
        schema.check(self)


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """Predicting files with a SavedModel or a run dir."""

    model: str | None = options.path(
        "An exported SavedModel dir, or a run dir (uses its checkpoints/best.keras).")
    output: str | None = options.path(
        "CSV to write (default: CSV on stdout, summary on stderr).")
    gradcam_dir: str | None = options.path("Write Grad-CAM overlays here (needs a run dir).")
    gradcam_top_k: int = schema.option(
        1, "Grad-CAM for the positive findings, or for the top-k findings when none is "
        "positive.", lower=1, upper=labels.NUM_CLASSES + 1)  # 14 findings (+ No Finding)
    threshold: float = options.threshold(
        "Decision threshold for every finding when the run has no thresholds.json (a "
        "SavedModel uses the thresholds it was exported with).")
    batch_size: int = options.batch_size("Images per prediction batch.")
    max_pixels: int = options.max_pixels()

    def __post_init__(self):
        schema.check(self)
