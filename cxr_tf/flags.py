"""Every absl flag of every cxr_tf app, each defined once, and flagfile lookup by bare name.

An app defines its flags when it runs, not when it is imported (tests import several apps
into one process), through `cxr_tf.cli`:

    if __name__ == "__main__":
        cli.run(main, flags.define_train_flags)

A flag that several apps take (`data_dir`, `seed`, `batch_size`, ...) has one definition in
`_SHARED`: one type, default and bound. An app may give it its own help where it means
something narrower there. Every value is checked when the flags are parsed (bounds, finite
floats, thresholds in (0, 1)), so a bad value is a usage error that names the flag. Library
code never reads FLAGS: apps turn flags into plain arguments.

`python -m cxr_tf.train --flagfile=thr05.cfg` works from any directory because
`expand_flagfiles` resolves a flagfile name against the working directory, then the including
file's directory, then the packaged `cxr_tf/configs/`. absl alone would resolve nested
`--flagfile=paper.cfg` lines against the working directory only.
"""

import math
import os
import sys

from absl import app, flags

from cxr_tf import errors, schema
from cxr_tf.evaluation.config import EvalConfig

FLAGS = flags.FLAGS
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")


class FlagfileError(ValueError):
    """A --flagfile that cannot be found or that includes itself."""


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
    raise FlagfileError(
        f"flagfile {name!r} not found (looked in {', '.join(dict.fromkeys(candidates))})"
    )


def _flagfile_lines(path, stack):
    if path in stack:
        raise FlagfileError(f"flagfile {path} includes itself via {' -> '.join(stack)}")
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
    """Inlines every `--flagfile=NAME` of argv (recursively); later flags still win.

    Raises:
        FlagfileError: a flagfile is missing or includes itself.
    """
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


_ABSL_KINDS = {bool: "bool", int: "integer", float: "float", str: "string", tuple: "list"}


def define_config(flag_values, cls, *, only=None, exclude=(), helps=None):
    """Defines one flag per option field of the config dataclass `cls` (cxr_tf.schema): its
    name, type, default, help and choices come from the field, so they are written once.

    No validators are registered: the config checks every value when the app builds it
    (`build_config`), which is the one place a value is checked. only/exclude pick fields;
    helps: {name: help} where an app means something narrower by a field.
    """
    for field, spec, kind in schema.specs(cls):
        if not spec.flag or (only is not None and field.name not in only) \
                or field.name in exclude:
            continue
        kind_name = "enum" if spec.choices and kind is str else _ABSL_KINDS[kind]
        default = field.default
        if kind is tuple and default is not None:
            default = [f"{v:g}" if isinstance(v, float) else str(v) for v in default]
        extra = {"enum_values": list(spec.choices)} if kind_name == "enum" else {}
        help_text = (helps or {}).get(field.name, spec.help) + _bounds_note(spec)
        getattr(flags, f"DEFINE_{kind_name}")(
            name=field.name, default=default, help=help_text, flag_values=flag_values,
            module_name=sys.argv[0], **extra)


def _bounds_note(spec):
    if spec.lower is not None and spec.upper is not None:
        return f" [{spec.lower}, {spec.upper}]"
    if spec.lower is not None:
        return f" (>= {spec.lower})"
    if spec.upper is not None:
        return f" (<= {spec.upper})"
    return ""


def build_config(cls, flag_values=FLAGS, **values):
    """cls(**the flag values of its fields, **values); a bad value is a usage error naming the
    flag: `flag --learning_rate=-1.0: must be > 0`."""
    names = [f.name for f, _, _ in schema.specs(cls) if f.name in flag_values]
    try:
        return cls(**{name: flag_values[name].value for name in names}, **values)
    except errors.ConfigError as e:
        shown = flag_values[e.field].serialize() if e.field in flag_values else \
            f"{e.field}={e.value!r}"
        raise app.UsageError(f"flag {shown}: {e.reason}") from None


def flag_values_dict(names, flag_values=FLAGS):
    """The current values of the given flags, as a JSON-ready dict."""
    return {name: flag_values[name].value for name in names}


# --- checks run when the flags are parsed (absl adds "flag --NAME=VALUE: " in front) ---

def _finite(value):
    if value is not None and not math.isfinite(value):
        raise flags.ValidationError(f"must be a finite number, not {value}")
    return True


def _positive(value):
    if value is not None and not (math.isfinite(value) and value > 0):
        raise flags.ValidationError(f"must be a finite number > 0, not {value}")
    return True


def _probability(value):
    if value is not None and not 0.0 < value < 1.0:
        raise flags.ValidationError(f"must lie in (0, 1), not {value}")
    return True


def _fraction_below_one(value):
    if not 0.0 <= value < 1.0:
        raise flags.ValidationError(f"must lie in [0, 1), not {value}")
    return True


def _thresholds(values):
    if not values:
        raise flags.ValidationError("give at least one threshold, e.g. 0.5 or 0.4,0.5,0.6")
    for text in values:
        try:
            value = float(text)
        except ValueError:
            raise flags.ValidationError(f"{text!r} is not a number") from None
        if not 0.0 < value < 1.0:
            raise flags.ValidationError(f"each threshold must lie in (0, 1), not {text}")
    return True


class _Definer:
    """Defines one app's flags into `flag_values`, listed under the running app for --help.

    Float flags get a finite check on top of any `check` (absl's bounds let nan through).
    """

    def __init__(self, flag_values):
        self.flag_values = flag_values

    def define(self, kind, name, default, help, check=None, **kwargs):
        getattr(flags, f"DEFINE_{kind}")(
            name=name, default=default, help=help, flag_values=self.flag_values,
            # absl's --help lists the flags of the module named like sys.argv[0]: the app's.
            module_name=sys.argv[0], **kwargs)
        checks = [_finite] if kind == "float" else []
        for checker in checks + ([check] if check else []):
            flags.register_validator(name, checker, flag_values=self.flag_values)

    def shared(self, name, help=None, **default):
        """Defines shared flag `name` from `_SHARED`; `help` replaces its generic help.

        `default=` is only for image_size, whose documented defaults differ by app.
        """
        kind, shared_default, shared_help, kwargs = _SHARED[name]
        assert set(default) <= {"default"} and (not default or name == "image_size"), name
        self.define(kind, name, default.get("default", shared_default), help or shared_help,
                    **kwargs)


# Flags that several apps take: (kind, default, help, bounds and checks). One definition each.
_SHARED = {
    "tf_logs": ("bool", False, "Show TensorFlow's C++ start-up lines (oneDNN, CUDA "
                "probing) and INFO lines, hidden by default; other warnings and errors always "
                "show.", {}),
    "json": ("bool", False, "Print one JSON object instead of the human summary.", {}),
    "seed": ("integer", 0, "Seed for the patient-wise validation split and training.",
             {"lower_bound": 0}),
    "val_fraction": ("float", 0.1, "Fraction of train_val patients carved out as validation.",
                     {"lower_bound": 0.0, "upper_bound": 0.9}),
    "data_dir": ("string", None, "A prepared TFDS dir or a raw Kaggle folder.", {}),
    "output_dir": ("string", None, "Folder to write to.", {}),
    "model_dir": ("string", None, "Run dir written by cxr_tf.train.", {}),
    # The network downsamples 32x: a smaller prepared or generated image can never be trained.
    "image_size": ("integer", 224, "Square image side in pixels.", {"lower_bound": 32}),
    "batch_size": ("integer", 64, "Images per batch.", {"lower_bound": 1}),
    "checkpoint": ("enum", "best", "Which checkpoint to load.", {"enum_values": ["best", "last"]}),
    "threshold": ("float", 0.5, "Decision threshold for every finding when the run has no "
                  "thresholds.json.", {"check": _probability}),
    "max_pixels": ("integer", 50_000_000, "Largest image decoded, counted as its padded "
                   "square max(width, height)^2 and its decoded samples; a larger one is "
                   "refused from its header, before decoding.", {"lower_bound": 1}),
    "overwrite": ("bool", False, "Start afresh instead of keeping what the output holds.", {}),
}


def _common(d):
    d.shared("tf_logs")


def define_synthetic_flags(flag_values=FLAGS):
    d = _Definer(flag_values)
    _common(d)
    d.shared("output_dir", "Where to write the Kaggle-layout dataset.")
    d.define("integer", "num_images", 2000, "Number of images to generate.", lower_bound=1)
    # NIH's films are 1024 px, the size the README's synthetic command documents.
    d.shared("image_size", "Side of the generated square PNGs.", default=1024)
    d.shared("seed", "Seed; the same seed gives the same files.")
    d.define("bool", "faults", False, "Add one file or row of each bad kind (for tests).")
    d.define("float", "min_prevalence", 0.0, "Raise every finding's prevalence to at least "
             "this (0 keeps the real NIH figures).", check=_fraction_below_one)


def define_prepare_flags(flag_values=FLAGS):
    d = _Definer(flag_values)
    _common(d)
    d.shared("json")
    d.shared("val_fraction")
    d.shared("seed", "Seed for the patient-wise validation split.")
    d.shared("data_dir", "Kaggle-layout NIH folder (images_*/, Data_Entry CSV).")
    d.shared("output_dir", "TFDS data_dir to write the prepared dataset to.")
    d.shared("image_size", "Side of the prepared square images.")
    d.shared("max_pixels")
    d.define("bool", "drop_rgba", False, "Skip RGB(A) PNGs as the paper did, instead of "
             "converting.")
    d.define("enum", "image_encoding", "raw", "How images are stored: raw uint8 (no decode "
             "when training) or PNG (about half the disk).", enum_values=["raw", "png"])
    d.define("bool", "strict", False, "Fail on the first unknown label instead of skipping "
             "the row.")
    d.define("integer", "num_workers", None, "Decode processes (default: all cores; 0: decode "
             "in this process).", lower_bound=0)
    d.shared("overwrite", "Rebuild the prepared dataset even if it exists (for a source "
             "whose CSV or lists changed since it was prepared).")


def define_stats_flags(flag_values=FLAGS):
    d = _Definer(flag_values)
    _common(d)
    d.shared("json")
    d.shared("data_dir", "A Kaggle folder (metadata only) or a prepared TFDS dir.")
    # None: whichever size was prepared; only needed when several were.
    d.shared("image_size", "Which prepared size to read, if several exist.", default=None)
    d.define("string", "plot", None, "Write the label-proportion pie chart (paper Figure 1) "
             "here.")


# Flags whose values define a training run; config.json records exactly these.
TRAIN_FLAG_NAMES = (
    "data_dir", "model_dir", "image_size", "arch", "batch_size", "epochs", "learning_rate",
    "optimizer", "weight_decay", "lr_schedule", "warmup_epochs", "thresholds", "pos_weight",
    "mixed_precision", "jit_compile", "strategy", "seed", "deterministic", "augment", "hflip",
    "val_fraction", "eval_test_each_epoch", "steps_per_epoch", "early_stop_patience",
    "synthetic", "synthetic_num_images", "synthetic_min_prevalence", "no_finding_output",
    "weights", "cache", "overwrite", "imagenet_weights",
)


def define_train_flags(flag_values=FLAGS):
    d = _Definer(flag_values)
    _common(d)
    d.shared("json")
    d.shared("val_fraction")
    d.shared("seed")
    # data and output
    d.shared("data_dir")
    d.shared("model_dir", "Run directory (config.json, history.csv, logs/, checkpoints/, "
             "backup/). Rerunning the same command resumes.")
    d.shared("image_size", "Square input side in pixels.")
    d.define("enum", "arch", "resnet50", "Backbone.", enum_values=[
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet50_v1", "resnet101_v1"])
    d.define("string", "weights", None, "Weights to start from: a file (.weights.h5 or "
             ".keras), or imagenet (with --arch=resnet50_v1/resnet101_v1).")
    d.define("string", "imagenet_weights", None, "Local copy of Keras's resnet50/101 notop "
             "ImageNet weights (.h5), for machines without internet; used with "
             "--weights=imagenet.")
    d.shared("overwrite", "Start afresh, deleting what model_dir holds; without it a "
             "completed run is not retrained.")
    _define_optimisation_flags(d)
    _define_execution_flags(d)


def _define_optimisation_flags(d):
    """Train's optimiser, loss and metric flags (paper values as defaults)."""
    d.shared("batch_size", "Global batch size.")
    d.define("integer", "epochs", 50, "Epochs.", lower_bound=1)
    d.define("float", "learning_rate", 0.01, "Peak learning rate.", check=_positive)
    d.define("enum", "optimizer", "adam", "Optimizer.", enum_values=["adam", "adamw", "sgd"])
    d.define("float", "weight_decay", 0.0, "Decoupled weight decay (adamw, sgd).",
             lower_bound=0.0)
    d.define("enum", "lr_schedule", "cosine", "cosine decays to 0 over all training steps "
             "(after warmup).", enum_values=["cosine", "constant"])
    d.define("float", "warmup_epochs", 0.0, "Linear warmup length in epochs.", lower_bound=0.0)
    d.define("list", "thresholds", ["0.5"], "Decision thresholds for F1/precision/recall, "
             "each in (0, 1).", check=_thresholds)
    d.define("enum", "pos_weight", "none", "balanced: per-class neg/pos from the train "
             "split, inside the BCE loss.", enum_values=["none", "balanced"])
    d.define("bool", "no_finding_output", False, "Add a 15th 'No Finding' output; when it is "
             "the most likely output, no finding is returned (the paper's future-work "
             "constraint).")


def _define_execution_flags(d):
    """Train's device, reproducibility, data-handling and run-length flags."""
    d.define("enum", "mixed_precision", "auto", "auto: bfloat16 on GPUs that support it, off "
             "on CPU.", enum_values=["auto", "bfloat16", "float16", "off"])
    d.define("bool", "jit_compile", False, "XLA-compile the train step.")
    d.define("enum", "strategy", "auto", "auto: Mirrored with >1 GPU, else the default "
             "strategy. multi_worker reads TF_CONFIG.",
             enum_values=["auto", "mirrored", "multi_worker", "one_device"])
    d.define("bool", "deterministic", False, "keras.utils.set_random_seed + TF op "
             "determinism (bitwise-repeatable runs).")
    d.define("bool", "augment", True, "Mild crop/scale, rotation, brightness/contrast.")
    d.define("bool", "hflip", False, "Also flip horizontally (off: the heart's side matters).")
    d.define("bool", "cache", False, "Cache the stored training images (raw or PNG) in "
             "memory.")
    d.define("bool", "eval_test_each_epoch", False, "Also score the test split each epoch "
             "(logged under test/, never used for selection), as the paper did.")
    d.define("integer", "steps_per_epoch", None, "Limit steps per epoch (smoke runs).",
             lower_bound=1)
    d.define("integer", "early_stop_patience", 0, "Stop after this many epochs without "
             "val/auc_mean gain (0: off).", lower_bound=0)
    d.define("bool", "synthetic", False, "With no --data_dir: generate and prepare the "
             "synthetic Kaggle-layout dataset into a cache dir and train on it.")
    d.define("integer", "synthetic_num_images", 2000, "Images in the synthetic dataset.",
             lower_bound=20)
    d.define("float", "synthetic_min_prevalence", 0.0, "Minimum per-finding prevalence of "
             "the synthetic dataset.", check=_fraction_below_one)
    d.define("bool", "dry_run", False, "Print the resolved config and model summary, then "
             "exit.")


def define_evaluate_flags(flag_values=FLAGS):
    d = _Definer(flag_values)
    _common(d)
    d.shared("json")
    define_config(flag_values, EvalConfig)  # the rest come from its fields


def define_export_flags(flag_values=FLAGS):
    d = _Definer(flag_values)
    _common(d)
    d.shared("json")
    d.shared("model_dir")
    d.define("string", "export_dir", None, "SavedModel dir to write, ending in a version "
             "number for TF Serving (e.g. models/cxr/1).")
    d.shared("checkpoint")
    d.shared("threshold")
    d.shared("max_pixels")


def define_predict_flags(flag_values=FLAGS):
    d = _Definer(flag_values)
    _common(d)
    d.shared("json")
    d.define("string", "model", None, "An exported SavedModel dir, or a run dir (uses its "
             "checkpoints/best.keras).")
    d.define("string", "output", None, "CSV to write (default: CSV on stdout, summary on "
             "stderr).")
    d.define("string", "gradcam_dir", None, "Write Grad-CAM overlays here (needs a run dir).")
    d.define("integer", "gradcam_top_k", 1, "Grad-CAM for the positive findings, or for the "
             "top-k findings when none is positive.", lower_bound=1)
    d.shared("threshold", "Decision threshold for every finding when the run has no "
             "thresholds.json (a SavedModel uses the thresholds it was exported with).")
    d.shared("batch_size", "Images per prediction batch.")
    d.shared("max_pixels")
