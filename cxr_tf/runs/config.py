"""What one training run does: `RunConfig`, a frozen dataclass checked once when it is built.

    config = RunConfig(model_dir="runs/demo", synthetic=True, image_size=64, epochs=4)
    runner.run(config)

Each field carries its default, help, bounds and choices (`cxr_tf.schema.option`); the train
app's flags are generated from these fields (`cxr_tf.flags.define_config`), so config.json
records them under the flag names, and the one check of a value is the one here, whether the
config comes from the command line, a test or a tool. Errors (`errors.ConfigError`) name the
argument and the value received, never a command-line flag.
"""

import dataclasses

from cxr_tf import archs, errors, labels, options, schema

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant", "plateau")
# What best.keras, early stopping and the plateau schedule follow (validation only).
MONITORS = ("val_auc_mean", "val_loss")
AUGMENT_OPS = ("mild", "flip")
POS_WEIGHTS = ("none", "balanced")
MIXED_PRECISION = ("auto", "bfloat16", "float16", "off")
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")
MIN_SYNTHETIC_IMAGES = 20
_IMAGENET_ARCHS = ", ".join(archs.IMAGENET_ARCHS)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What one training run does. Defaults are the paper's experiment (thr05.cfg).

    Data: `data_dir` (a prepared TFDS dir or a raw Kaggle folder), or `synthetic=True` to
    generate and prepare the demo dataset (`synthetic_num_images`, `synthetic_min_prevalence`)
    into the cache. `val_fraction` and `seed` split a raw folder's patients.
    `model_dir` is the run dir; `overwrite` starts it afresh instead of resuming.
    `steps_per_epoch` (None: the whole train split) limits smoke runs.
    """

    # data and output
    data_dir: str | None = options.data_dir()
    model_dir: str | None = options.model_dir(
        "Run directory (config.json, history.csv, logs/, checkpoints/, backup/). Rerunning "
        "the same command resumes.")
    image_size: int = options.image_size("Square input side in pixels.")
    arch: str = schema.option("resnet50", "Backbone.", choices=archs.ARCHS)
    weights: str | None = options.path(
        "Weights to start from: a file (.weights.h5 or .keras), or imagenet (with arch "
        f"{_IMAGENET_ARCHS}).")
    imagenet_weights: str | None = options.path(
        "Local copy of the arch's keras.applications notop ImageNet weights (.h5; archs "
        f"{_IMAGENET_ARCHS}), for machines without internet; used with weights imagenet.")
    overwrite: bool = options.overwrite(
        "Start afresh, deleting what model_dir holds; without it a completed run is not "
        "retrained.")
    # optimisation, loss and metrics (the paper's values)
    batch_size: int = options.batch_size("Global batch size.")
    epochs: int = options.count(50, "Epochs.")
    learning_rate: float = schema.option(0.01, "Peak learning rate.", check=schema.positive)
    optimizer: str = schema.option("adam", "Optimizer.", choices=OPTIMIZERS)
    weight_decay: float = schema.option(0.0, "Decoupled weight decay (adamw, sgd).", lower=0.0)
    lr_schedule: str = schema.option(
        "cosine", "cosine decays to 0 over all training steps (after warmup); constant keeps "
        "the learning rate; plateau multiplies it by lr_plateau_factor each time the monitored "
        "value has not improved for lr_plateau_patience epochs (no warmup).",
        choices=LR_SCHEDULES)
    warmup_epochs: float = schema.option(0.0, "Linear warmup length in epochs.", lower=0.0)
    lr_plateau_factor: float = schema.option(
        0.1, "plateau: the factor each reduction multiplies the learning rate by.",
        check=schema.in_open_unit_interval)
    lr_plateau_patience: int = options.count(
        1, "plateau: epochs without improvement of the monitored value before a reduction.")
    lr_plateau_min_delta: float = schema.option(
        1e-4, "plateau: an epoch improves on the best value only by more than this (absolute).",
        lower=0.0)
    lr_plateau_min: float = schema.option(
        0.0, "plateau: the learning rate is never reduced below this.", lower=0.0)
    monitor: str = schema.option(
        "val_auc_mean", "The validation value that picks best.keras and drives early stopping "
        "and the plateau schedule: val_auc_mean (higher is better) or val_loss (lower is "
        "better).", choices=MONITORS)
    thresholds: tuple = schema.option(
        (0.5,), "Decision thresholds for F1/precision/recall, each in (0, 1).",
        convert=schema.floats, check=schema.in_open_unit_interval)
    pos_weight: str = schema.option(
        "none", "balanced: per-class neg/pos from the train split, inside the BCE loss.",
        choices=POS_WEIGHTS)
    no_finding_output: bool = schema.option(
        False, "Add a 15th 'No Finding' output; when it is the most likely output, no finding "
        "is returned (the paper's future-work constraint).")
    # device, reproducibility, data handling and run length
    mixed_precision: str = schema.option(
        "auto", "auto: bfloat16 on GPUs that support it, off on CPU.", choices=MIXED_PRECISION)
    jit_compile: bool = schema.option(False, "XLA-compile the train step.")
    strategy: str = schema.option(
        "auto", "auto: Mirrored with >1 GPU, else the default strategy. multi_worker reads "
        "TF_CONFIG.", choices=STRATEGIES)
    cluster_timeout: int = options.count(
        600, "multi_worker: seconds to wait for every worker in TF_CONFIG to start and join the "
        "cluster; past it the run stops naming the missing ones.")
    seed: int = options.seed()
    deterministic: bool = schema.option(
        False, "keras.utils.set_random_seed + TF op determinism (bitwise-repeatable runs).")
    augment: bool = schema.option(True, "Augment the training images, as augment_ops says.")
    augment_ops: str = schema.option(
        "mild", "What augment applies: mild (crop/scale, rotation, brightness/contrast, and a "
        "horizontal flip with hflip) or flip (a random horizontal flip alone; needs hflip).",
        choices=AUGMENT_OPS)
    hflip: bool = schema.option(False, "Also flip horizontally (off: the heart's side matters).")
    cache: bool = schema.option(False, "Cache the stored training images (raw or PNG) in "
                                       "memory.")
    val_fraction: float = options.val_fraction()
    eval_test_each_epoch: bool = schema.option(
        False, "Also score the test split each epoch (logged under test/, never used for "
        "selection), as the paper did.")
    steps_per_epoch: int | None = options.count(None, "Limit steps per epoch (smoke runs).")
    verify_data: bool = options.verify_data()
    early_stop_patience: int = options.count(
        0, "Stop after this many epochs without improvement of the monitored value (0: off).",
        lower=0)
    synthetic: bool = schema.option(
        False, "With no data_dir: generate and prepare the synthetic Kaggle-layout dataset "
        "into a cache dir and train on it.")
    synthetic_num_images: int = schema.option(2000, "Images in the synthetic dataset.",
                                              lower=MIN_SYNTHETIC_IMAGES,
                                              upper=options.MAX_SYNTHETIC_IMAGES)
    synthetic_min_prevalence: float = schema.option(
        0.0, "Minimum per-finding prevalence of the synthetic dataset.",
        check=schema.fraction_below_one)

    def __post_init__(self):
        schema.check(self)
        self._check_combinations()
        if self.synthetic and not self.data_dir:  # prepared here, with the default limit
            options.check_image_fits(self.image_size, options.MAX_PIXELS,
                                     "the synthetic data's max_pixels")

    def _check_combinations(self):
        """Values that are each valid but contradict each other."""
        if self.lr_schedule == "plateau" and self.warmup_epochs:
            # ReduceLROnPlateau sets the optimizer's learning rate itself: it needs a plain
            # number there, not a schedule that a warmup would be.
            raise errors.ConfigError(
                "lr_schedule", self.lr_schedule,
                f"does not combine with warmup (warmup_epochs={self.warmup_epochs:g}): the "
                "plateau schedule sets the learning rate itself; set warmup_epochs to 0 or "
                "choose another schedule")
        if self.augment_ops == "flip" and not (self.augment and self.hflip):
            off = [name for name in ("augment", "hflip") if not getattr(self, name)]
            raise errors.ConfigError(
                "augment_ops", self.augment_ops,
                "is a random horizontal flip alone, so it needs augment and hflip on "
                f"({' and '.join(off)} {'is' if len(off) == 1 else 'are'} off)")

    @property
    def num_outputs(self):
        """14 findings, plus the No Finding output when asked for."""
        return labels.NUM_CLASSES + int(self.no_finding_output)

    def replace(self, **changes):
        """A copy with some fields changed (and checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """The fields as config.json records them: thresholds as the names metrics use
        ("0.4"), everything else as given."""
        values = dataclasses.asdict(self)
        # As evaluation.metrics.format_threshold names them (its sklearn import would slow the
        # train app's flag checks by seconds; tests/test_run_config.py checks the two agree).
        values["thresholds"] = [f"{t:.6g}" for t in self.thresholds]
        return values


FIELDS = tuple(field.name for field in dataclasses.fields(RunConfig))
