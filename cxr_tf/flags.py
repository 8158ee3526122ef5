"""Every absl flag of every cxr_tf app, and flagfile lookup by bare name.

Each app calls its `define_*_flags()` at import time, so `--help` shows only what that app
takes. Library code never reads FLAGS: apps turn flags into plain arguments.

`python -m cxr_tf.train --flagfile=thr05.cfg` works from any directory because
`expand_flagfiles` resolves a flagfile name against the working directory, then the including
file's directory, then the packaged `cxr_tf/configs/`. absl alone would resolve nested
`--flagfile=paper.cfg` lines against the working directory only.
"""

import os

from absl import app, flags
from absl import logging

FLAGS = flags.FLAGS
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")


def resolve_flagfile(name, including_dir=None):
    """Returns the path of flagfile `name`: as given, beside its includer, or packaged."""
    name = os.path.expanduser(name)
    candidates = [name]
    if including_dir and not os.path.isabs(name):
        candidates.append(os.path.join(including_dir, name))
    candidates.append(os.path.join(CONFIG_DIR, os.path.basename(name)))
    for path in candidates:
        if os.path.isfile(path):
            return os.path.abspath(path)
    raise FileNotFoundError(
        f"flagfile {name!r} not found (looked in {', '.join(dict.fromkeys(candidates))})"
    )


def _flagfile_lines(path, stack):
    if path in stack:
        raise ValueError(f"flagfile {path} includes itself via {' -> '.join(stack)}")
    lines = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            # absl's rules: '#' or '//' at the start of a line is a comment.
            if not line or line.startswith(("#", "//")):
                continue
            if line.startswith(_FLAGFILE_PREFIXES):
                sub = resolve_flagfile(line.split("=", 1)[1].strip(), os.path.dirname(path))
                lines.extend(_flagfile_lines(sub, stack + [path]))
            else:
                lines.append(line)
    return lines


def expand_flagfiles(argv):
    """Inlines every `--flagfile=NAME` of argv (recursively); later flags still win."""
    out = list(argv[:1])
    args = iter(argv[1:])
    for arg in args:
        if arg in ("--flagfile", "-flagfile"):
            arg = "--flagfile=" + next(args, "")
        if arg.startswith(_FLAGFILE_PREFIXES):
            out.extend(_flagfile_lines(resolve_flagfile(arg.split("=", 1)[1]), []))
        else:
            out.append(arg)
    return out


def flags_parser(argv):
    """absl `app.run(..., flags_parser=flags_parser)`: expand flagfiles, then parse.

    TFDS and TF log every file they open at INFO, so apps show warnings and up unless the user
    passes --verbosity (e.g. --verbosity=0 for INFO).
    """
    # absl's own parser: a bad value exits 1 with "FATAL Flags parsing error: ...", not a
    # traceback.
    remaining = app.parse_flags_with_usage(expand_flagfiles(argv))
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    return remaining


def flag_values_dict(names):
    """The current values of the given flags, as a JSON-ready dict."""
    return {name: FLAGS[name].value for name in names}


def _once(define):
    """Lets two apps' define functions share a group without redefining flags."""

    def wrapper():
        if define.__name__ not in _defined:
            _defined.add(define.__name__)
            define()

    wrapper.__name__ = define.__name__
    return wrapper


_defined = set()


class _TolerantDefines:
    """`DEFINE_*` that skip a flag another app already defined in this process.

    Only tests import several apps into one process; each app run on its own defines its own.
    """

    def __getattr__(self, name):
        define = getattr(flags, name)

        def tolerant(flag_name, *args, **kwargs):
            if flag_name not in FLAGS:
                define(flag_name, *args, **kwargs)

        return tolerant


_defs = _TolerantDefines()


@_once
def define_output_flags():
    _defs.DEFINE_bool("json", False, "Print one JSON object instead of the human summary.")


@_once
def define_split_flags():
    _defs.DEFINE_float(
        "val_fraction", 0.1, "Fraction of train_val patients carved out as validation.",
        lower_bound=0.0, upper_bound=0.9,
    )
    _defs.DEFINE_integer("seed", 0, "Seed for the patient-wise validation split and training.")


@_once
def define_synthetic_flags():
    _defs.DEFINE_string("output_dir", None, "Where to write the Kaggle-layout dataset.")
    _defs.DEFINE_integer("num_images", 2000, "Number of images to generate.", lower_bound=1)
    _defs.DEFINE_integer("image_size", 1024, "Side of the generated square PNGs.", lower_bound=16)
    _defs.DEFINE_integer("seed", 0, "Seed; the same seed gives the same files.")
    _defs.DEFINE_bool("faults", False, "Add one file or row of each bad kind (for tests).")
    _defs.DEFINE_float(
        "min_prevalence", 0.0,
        "Raise every finding's prevalence to at least this (0 keeps the real NIH figures).",
    )


@_once
def define_prepare_flags():
    define_split_flags()
    define_output_flags()
    _defs.DEFINE_string("data_dir", None, "Kaggle-layout NIH folder (images_*/, Data_Entry CSV).")
    _defs.DEFINE_string("output_dir", None, "TFDS data_dir to write the prepared dataset to.")
    _defs.DEFINE_integer("image_size", 224, "Side of the prepared square images.", lower_bound=8)
    _defs.DEFINE_bool("drop_rgba", False, "Skip RGB(A) PNGs as the paper did, instead of converting.")
    _defs.DEFINE_enum("image_encoding", "raw", ["raw", "png"],
                      "How images are stored: raw uint8 (no decode when training) or PNG "
                      "(about half the disk).")
    _defs.DEFINE_bool("strict", False, "Fail on the first unknown label instead of skipping the row.")
    _defs.DEFINE_integer("num_workers", None, "Decode processes (default: all cores).")
    _defs.DEFINE_integer("max_pixels", 50_000_000, "Largest image (width x height) decoded; "
                         "larger images are refused before decoding.", lower_bound=1)


@_once
def define_stats_flags():
    define_output_flags()
    _defs.DEFINE_string("data_dir", None, "A Kaggle folder (metadata only) or a prepared TFDS dir.")
    _defs.DEFINE_integer("image_size", None, "Which prepared size to read, if several exist.")
    _defs.DEFINE_string("plot", None, "Write the label-proportion pie chart (paper Figure 1) here.")


# Flags whose values define a training run; config.json records exactly these.
TRAIN_FLAG_NAMES = (
    "data_dir", "model_dir", "image_size", "arch", "batch_size", "epochs", "learning_rate",
    "optimizer", "weight_decay", "lr_schedule", "warmup_epochs", "thresholds", "pos_weight",
    "mixed_precision", "jit_compile", "strategy", "seed", "deterministic", "augment", "hflip",
    "val_fraction", "eval_test_each_epoch", "steps_per_epoch", "early_stop_patience",
    "synthetic", "synthetic_num_images", "synthetic_min_prevalence", "no_finding_output",
    "weights", "cache", "overwrite", "imagenet_weights",
)


@_once
def define_train_flags():
    define_split_flags()
    define_output_flags()
    # data and output
    _defs.DEFINE_string("data_dir", None, "A prepared TFDS dir or a raw Kaggle folder.")
    _defs.DEFINE_string("model_dir", None, "Run directory (config.json, history.csv, logs/, "
                        "checkpoints/, backup/). Rerunning the same command resumes.")
    _defs.DEFINE_integer("image_size", 224, "Square input side in pixels.", lower_bound=32)
    _defs.DEFINE_enum("arch", "resnet50", ["resnet18", "resnet34", "resnet50", "resnet101",
                                           "resnet50_v1", "resnet101_v1"], "Backbone.")
    _defs.DEFINE_string("weights", None, "Weights to start from: a file (.weights.h5 or "
                        ".keras), or imagenet (with --arch=resnet50_v1/resnet101_v1).")
    _defs.DEFINE_string("imagenet_weights", None, "Local copy of Keras's resnet50/101 notop "
                        "ImageNet weights (.h5), for machines without internet; used with "
                        "--weights=imagenet.")
    _defs.DEFINE_bool("overwrite", False, "Start afresh, deleting what model_dir holds; "
                      "without it a completed run is not retrained.")
    # optimisation (paper values as defaults)
    _defs.DEFINE_integer("batch_size", 64, "Global batch size.", lower_bound=1)
    _defs.DEFINE_integer("epochs", 50, "Epochs.", lower_bound=1)
    _defs.DEFINE_float("learning_rate", 0.01, "Peak learning rate.", lower_bound=0.0)
    _defs.DEFINE_enum("optimizer", "adam", ["adam", "adamw", "sgd"], "Optimizer.")
    _defs.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay (adamw, sgd).", lower_bound=0.0)
    _defs.DEFINE_enum("lr_schedule", "cosine", ["cosine", "constant"],
                      "cosine decays to 0 over all training steps (after warmup).")
    _defs.DEFINE_float("warmup_epochs", 0.0, "Linear warmup length in epochs.", lower_bound=0.0)
    # metrics and loss
    _defs.DEFINE_list("thresholds", ["0.5"], "Decision thresholds for F1/precision/recall.")
    _defs.DEFINE_enum("pos_weight", "none", ["none", "balanced"],
                      "balanced: per-class neg/pos from the train split, inside the BCE loss.")
    _defs.DEFINE_bool("no_finding_output", False,
                      "Add a 15th 'No Finding' output; when it is the most likely output, no "
                      "finding is returned (the paper's future-work constraint).")
    # execution
    _defs.DEFINE_enum("mixed_precision", "auto", ["auto", "bfloat16", "float16", "off"],
                      "auto: bfloat16 on GPUs that support it, off on CPU.")
    _defs.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
    _defs.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multi_worker", "one_device"],
                      "auto: Mirrored with >1 GPU, else the default strategy. multi_worker "
                      "reads TF_CONFIG.")
    # reproducibility and data handling
    _defs.DEFINE_bool("deterministic", False,
                      "keras.utils.set_random_seed + TF op determinism (bitwise-repeatable runs).")
    _defs.DEFINE_bool("augment", True, "Mild crop/scale, rotation, brightness/contrast.")
    _defs.DEFINE_bool("hflip", False, "Also flip horizontally (off: the heart's side matters).")
    _defs.DEFINE_bool("cache", False, "Cache the stored training images (raw or PNG) in memory.")
    _defs.DEFINE_bool("eval_test_each_epoch", False,
                      "Also score the test split each epoch (logged under test/, never used "
                      "for selection), as the paper did.")
    # runs and limits
    _defs.DEFINE_integer("steps_per_epoch", None, "Limit steps per epoch (smoke runs).",
                         lower_bound=1)
    _defs.DEFINE_integer("early_stop_patience", 0,
                         "Stop after this many epochs without val/auc_mean gain (0: off).",
                         lower_bound=0)
    _defs.DEFINE_bool("synthetic", False, "With no --data_dir: generate and prepare the "
                      "synthetic Kaggle-layout dataset into a cache dir and train on it.")
    _defs.DEFINE_integer("synthetic_num_images", 2000, "Images in the synthetic dataset.",
                         lower_bound=20)
    _defs.DEFINE_float("synthetic_min_prevalence", 0.0,
                       "Minimum per-finding prevalence of the synthetic dataset.")
    _defs.DEFINE_bool("dry_run", False, "Print the resolved config and model summary, then exit.")


@_once
def define_evaluate_flags():
    define_output_flags()
    _defs.DEFINE_string("model_dir", None, "Run dir written by cxr_tf.train.")
    _defs.DEFINE_enum("split", "test", ["test", "validation"], "Split to evaluate.")
    _defs.DEFINE_string("data_dir", None, "Prepared TFDS dir or Kaggle folder (default: the "
                        "run's config.json data_dir).")
    _defs.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint to load.")
    _defs.DEFINE_integer("bootstrap", 1000, "Patient-level bootstrap replicates for the AUC "
                         "95% CI (0: none).", lower_bound=0)
    _defs.DEFINE_enum("tune_thresholds", None, ["f1", "youden"],
                      "Tune per-class thresholds on the VALIDATION split (whatever --split "
                      "says) and write RUN/thresholds.json.")
    _defs.DEFINE_integer("batch_size", 64, "Images per prediction batch.", lower_bound=1)
    _defs.DEFINE_string("expert_labels", None, "Google's radiologist labels CSV for the NIH "
                        "test images: also score against them.")
    _defs.DEFINE_string("bbox_csv", None, "NIH's BBox_List_2017.csv: also report Grad-CAM "
                        "localisation against its boxes.")
    _defs.DEFINE_enum("dataset", "nih", ["nih", "chexpert"], "Which dataset --data_dir holds.")
    _defs.DEFINE_enum("uncertain_labels", "ignore", ["ignore", "zeros", "ones"],
                      "CheXpert's uncertain (-1) labels: left out of that finding's metrics, "
                      "or read as 0 or 1.")
    _defs.DEFINE_list("views", ["frontal"], "Views to evaluate (frontal, lateral).")


@_once
def define_export_flags():
    define_output_flags()
    _defs.DEFINE_string("model_dir", None, "Run dir written by cxr_tf.train.")
    _defs.DEFINE_string("export_dir", None, "SavedModel dir to write, ending in a version "
                        "number for TF Serving (e.g. models/cxr/1).")
    _defs.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint to load.")
    _defs.DEFINE_float("threshold", 0.5, "Decision threshold for every finding when the run "
                       "has no thresholds.json.", lower_bound=0.0, upper_bound=1.0)
    _defs.DEFINE_integer("max_pixels", 50_000_000, "Largest image (width x height) decoded; "
                         "larger images are refused before decoding.", lower_bound=1)


@_once
def define_predict_flags():
    define_output_flags()
    _defs.DEFINE_string("model", None, "An exported SavedModel dir, or a run dir (uses its "
                        "checkpoints/best.keras).")
    _defs.DEFINE_string("output", None, "CSV to write (default: CSV on stdout, summary on "
                        "stderr).")
    _defs.DEFINE_string("gradcam_dir", None, "Write Grad-CAM overlays here (needs a run dir).")
    _defs.DEFINE_integer("gradcam_top_k", 1, "Grad-CAM for the positive findings, or for the "
                         "top-k findings when none is positive.", lower_bound=1)
    _defs.DEFINE_float("threshold", 0.5, "Decision threshold for every finding when the run "
                       "has no thresholds.json (a SavedModel uses the thresholds it was "
                       "exported with).", lower_bound=0.0, upper_bound=1.0)
    _defs.DEFINE_integer("batch_size", 32, "Images per prediction batch.", lower_bound=1)
    _defs.DEFINE_integer("max_pixels", 50_000_000, "Largest image (width x height) decoded; "
                         "larger images are refused before decoding.", lower_bound=1)
