"""The configuration of one training run: a frozen dataclass, checked once when it is built.

    config = RunConfig(model_dir="runs/demo", synthetic=True, image_size=64, epochs=4)
    runner.run(config)

The train app builds it from its flags (`RunConfig(**flag_values)`); tests and tools build it
directly. Its fields are the train flags, so config.json records them under the same names.
Errors name the argument and the value received, never a command-line flag.
"""

import dataclasses
import math

from cxr_tf import labels

_CHOICES = {
    "optimizer": ("adam", "adamw", "sgd"),
    "lr_schedule": ("cosine", "constant"),
    "pos_weight": ("none", "balanced"),
    "mixed_precision": ("auto", "bfloat16", "float16", "off"),
    "strategy": ("auto", "mirrored", "multi_worker", "one_device"),
}
MIN_IMAGE_SIZE = 32  # the ResNets' five stride-2 reductions leave a 1×1 map


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What one training run does. Defaults are the paper's experiment (thr05.cfg).

    Data: `data_dir` (a prepared TFDS dir or a raw Kaggle folder), or `synthetic=True` to
    generate and prepare the demo dataset (`synthetic_num_images`, `synthetic_min_prevalence`)
    into the cache. `val_fraction` and `seed` split a raw folder's patients.
    `model_dir` is the run dir; `overwrite` starts it afresh instead of resuming.
    `arch` is checked by `model.build_model`, which also takes `weights` and
    `imagenet_weights`. `steps_per_epoch` (None: the whole train split) limits smoke runs.
    """

    model_dir: str | None = None
    data_dir: str | None = None
    image_size: int = 224
    arch: str = "resnet50"
    weights: str | None = None
    imagenet_weights: str | None = None
    overwrite: bool = False
    batch_size: int = 64
    epochs: int = 50
    learning_rate: float = 0.01
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    thresholds: tuple = (0.5,)
    pos_weight: str = "none"
    no_finding_output: bool = False
    mixed_precision: str = "auto"
    jit_compile: bool = False
    strategy: str = "auto"
    seed: int = 0
    deterministic: bool = False
    augment: bool = True
    hflip: bool = False
    cache: bool = False
    val_fraction: float = 0.1
    eval_test_each_epoch: bool = False
    steps_per_epoch: int | None = None
    early_stop_patience: int = 0
    synthetic: bool = False
    synthetic_num_images: int = 2000
    synthetic_min_prevalence: float = 0.0

    def __post_init__(self):
        # Thresholds arrive as flag text ("0.4") or numbers; kept as a tuple of floats.
        object.__setattr__(self, "thresholds", _thresholds(self.thresholds))
        for name in ("image_size", "batch_size", "epochs", "seed", "early_stop_patience",
                     "synthetic_num_images"):
            value = getattr(self, name)
            _check(_is_int(value), f"{name} must be an integer, got {value!r}")
        _check(self.image_size >= MIN_IMAGE_SIZE,
               f"image_size must be at least {MIN_IMAGE_SIZE}, got {self.image_size}")
        _check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        _check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        _check(_finite(self.learning_rate) and self.learning_rate > 0,
               f"learning_rate must be finite and > 0, got {self.learning_rate!r}")
        for name in ("weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            _check(_finite(value) and value >= 0, f"{name} must be finite and >= 0, got {value!r}")
        for name, choices in _CHOICES.items():
            _check(getattr(self, name) in choices,
                   f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        _check(_finite(self.val_fraction) and 0.0 <= self.val_fraction <= 0.9,
               f"val_fraction must lie in [0, 0.9], got {self.val_fraction!r}")
        _check(self.steps_per_epoch is None or _is_int(self.steps_per_epoch)
               and self.steps_per_epoch >= 1,
               f"steps_per_epoch must be None or at least 1, got {self.steps_per_epoch!r}")
        _check(self.early_stop_patience >= 0,
               f"early_stop_patience must be >= 0 (0: off), got {self.early_stop_patience}")
        _check(self.synthetic_num_images >= 20,
               f"synthetic_num_images must be at least 20, got {self.synthetic_num_images}")
        _check(_finite(self.synthetic_min_prevalence) and 0 <= self.synthetic_min_prevalence < 1,
               f"synthetic_min_prevalence must lie in [0, 1), got {self.synthetic_min_prevalence!r}")

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
        # train app's flag checks by seconds; tests/test_config.py checks the two agree).
        values["thresholds"] = [f"{t:.6g}" for t in self.thresholds]
        return values


def _thresholds(values):
    if isinstance(values, (str, float, int)):
        values = [values]
    out = []
    for value in values:
        try:
            threshold = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"thresholds must be numbers, got {value!r}") from None
        _check(0.0 < threshold < 1.0, f"thresholds must lie in (0, 1), got {value}")
        out.append(threshold)
    _check(bool(out), "thresholds must hold at least one threshold, got none")
    return tuple(out)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok, message):
    if not ok:
        raise ValueError(message)
