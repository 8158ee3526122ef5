"""The options several configs share, each written once: one type, default, bound and help.

    @dataclasses.dataclass(frozen=True)
    class ExportConfig:
        model_dir: str | None = options.model_dir()
        threshold: float = options.threshold()

        def __post_init__(self):
            schema.check(self)

Each function returns a `cxr_tf.schema.option` field. A config may pass its own `help` where
the option means something narrower there; the default and the bounds are the ones below, so
`--seed` or `--max_pixels` cannot drift apart between apps. `image_size` is the one option
whose default differs by app (the synthetic generator writes 1024 px films, stats reads
whichever size was prepared), so it takes `default=`.
"""

import os

from cxr_tf import errors, schema

# The ResNets' five stride-2 reductions leave a 1×1 map at 32 px: smaller can never be trained.
MIN_IMAGE_SIZE = 32
# Largest image decoded, as its padded square (equal to cxr_tf.data.images.MAX_PIXELS, which
# tests/test_options.py checks: the data layer sits above this module).
MAX_PIXELS = 50_000_000
# max_pixels' own upper bound, which keeps the export graph's float64 size checks exact.
MAX_PIXELS_LIMIT = 2**40
# The largest side whose square still fits that bound: a larger image_size could never be
# prepared or served, whatever max_pixels says.
MAX_IMAGE_SIZE = 2**20
# Counts a user types (batch size, epochs, steps, patience, replicates): int32. TensorFlow
# takes batch sizes and step counts as int64, and epochs × steps_per_epoch must fit the
# optimizer's int64 iteration counter, so two int32 counts multiply safely; no real run comes
# near 2**31 of anything.
MAX_COUNT = 2**31 - 1
# NIH's image names (00012345_000.png) hold an 8-digit patient number, and a synthetic set has
# at most one patient per image.
MAX_SYNTHETIC_IMAGES = 10**8 - 1
# numpy's legacy seeding (keras.utils.set_random_seed) takes 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
CHECKPOINTS = ("best", "last")


def fspath(value):
    """convert= for a path: a pathlib.Path (as tests and tools pass) becomes its str."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def path(help):
    """A file or folder; None unless given."""
    return schema.option(None, help, convert=fspath)


def data_dir(help="A prepared TFDS dir or a raw Kaggle folder."):
    return path(help)


def model_dir(help="Run dir written by cxr_tf.train."):
    return path(help)


def output_dir(help="Folder to write to."):
    return path(help)


def image_size(help="Square image side in pixels.", default=224):
    return schema.option(default, help, lower=MIN_IMAGE_SIZE, upper=MAX_IMAGE_SIZE)


def batch_size(help="Images per batch."):
    return schema.option(64, help, lower=1, upper=MAX_COUNT)


def seed(help="Seed for the patient-wise validation split and training."):
    return schema.option(0, help, lower=0, upper=MAX_SEED)


def val_fraction(help="Fraction of train_val patients carved out as validation."):
    return schema.option(0.1, help, lower=0.0, upper=0.9)


def checkpoint(help="Which checkpoint to load."):
    return schema.option("best", help, choices=CHECKPOINTS)


def threshold(help="Decision threshold for every finding when the run has no "
                   "thresholds.json."):
    return schema.option(0.5, help, check=schema.in_open_unit_interval)


def max_pixels(help="Largest image decoded, counted as its padded square max(width, height)^2 "
                    "and its decoded samples; a larger one is refused from its header, before "
                    "decoding."):
    return schema.option(MAX_PIXELS, help, lower=1, upper=MAX_PIXELS_LIMIT)


def count(default, help, lower=1):
    """A number of things a user types (epochs, steps, replicates): lower..MAX_COUNT."""
    return schema.option(default, help, lower=lower, upper=MAX_COUNT)


def overwrite(help="Start afresh instead of keeping what the output holds."):
    return schema.option(False, help)


def verify_data(help="Also read every byte of the prepared dataset and compare each shard's "
                     "checksum with the one prepare recorded (sizes and record counts are "
                     "always checked)."):
    return schema.option(False, help)


def check_image_fits(image_size, max_pixels, limit="max_pixels"):
    """A ConfigError unless an image_size × image_size image fits `max_pixels` (`limit` names
    the bound in the message): checked before any work, since prepare allocates S² bytes per
    image and a typo such as 40000 would otherwise cost gigabytes first."""
    if image_size is not None and image_size * image_size > max_pixels:
        raise errors.ConfigError(
            "image_size", image_size,
            f"makes {image_size * image_size:,}-pixel images, over {limit} "
            f"({max_pixels:,}): image_size² must fit")
