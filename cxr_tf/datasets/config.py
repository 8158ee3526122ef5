"""What `python -m cxr_tf.prepare` and `python -m cxr_tf.stats` do: their configs, each
field with its default, help and bounds (`cxr_tf.schema.option`), from which the apps' flags
are generated. Pure Python, so the apps check their flags before TensorFlow starts.

    build.prepare(PrepareConfig(data_dir=KAGGLE_DIR, output_dir=TFDS_DIR, image_size=224))
"""

import dataclasses

from cxr_tf import options, schema

# "raw": the S×S×1 uint8 pixels as bytes (S² bytes; nothing to decode when training);
# "png": PNG level 1 (about half the disk on the synthetic set; a decode per image per epoch).
IMAGE_ENCODINGS = ("raw", "png")
# Each decode worker is a spawned Python process (~100 MB): beyond the machine's cores more
# only cost memory, and no machine prepare runs on has 1,024 cores.
MAX_WORKERS = 1024


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """One prepared dataset: which Kaggle folder, where to, at which size and split."""

    data_dir: str | None = options.data_dir(
        "Kaggle-layout NIH folder (images_*/, Data_Entry CSV).")
    output_dir: str | None = options.output_dir(
        "TFDS data_dir to write the prepared dataset to.")
    image_size: int = options.image_size("Side of the prepared square images.")
    val_fraction: float = options.val_fraction()
    seed: int = options.seed("Seed for the patient-wise validation split.")
    drop_rgba: bool = schema.option(False, "Skip RGB(A) PNGs as the paper did, instead of "
                                           "converting.")
    image_encoding: str = schema.option(
        "raw", "How images are stored: raw uint8 (no decode when training) or PNG (about half "
        "the disk).", choices=IMAGE_ENCODINGS)
    strict: bool = schema.option(False, "Fail on the first unknown label instead of skipping "
                                        "the row.")
    num_workers: int | None = schema.option(
        None, "Decode processes (default: all cores; 0: decode in this process).", lower=0,
        upper=MAX_WORKERS)
    max_pixels: int = options.max_pixels()
    overwrite: bool = options.overwrite(
        "Rebuild the prepared dataset even if it exists (for a source whose CSV or lists "
        "changed since it was prepared).")

    def __post_init__(self):
        schema.check(self)
        options.check_image_fits(self.image_size, self.max_pixels)


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Which dataset to count, and where to draw its label-proportion chart."""

    data_dir: str | None = options.data_dir(
        "A Kaggle folder (metadata only) or a prepared TFDS dir.")
    # None: whichever size was prepared; only needed when several were.
    image_size: int | None = options.image_size("Which prepared size to read, if several "
                                                 "exist.", default=None)
    plot: str | None = options.path("Write the label-proportion pie chart (paper Figure 1) "
                                    "here.")

    def __post_init__(self):
        schema.check(self)
