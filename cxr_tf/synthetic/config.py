"""What `python -m cxr_tf.synthetic` generates: SyntheticConfig, whose fields (default, help,
bounds) the app's flags are generated from. `generate(**config.generate_kwargs())` writes it."""

import dataclasses

from cxr_tf import options, schema


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    output_dir: str | None = options.output_dir("Where to write the Kaggle-layout dataset.")
    num_images: int = schema.option(2000, "Number of images to generate.", lower=1,
                                    upper=options.MAX_SYNTHETIC_IMAGES)
    # NIH's films are 1024 px, the size the README's synthetic command documents.
    image_size: int = options.image_size("Side of the generated square PNGs.", default=1024)
    seed: int = options.seed("Seed; the same seed gives the same files.")
    faults: bool = schema.option(False, "Add one file or row of each bad kind (for tests).")
    min_prevalence: float = schema.option(
        0.0, "Raise every finding's prevalence to at least this (0 keeps the real NIH "
        "figures).", check=schema.fraction_below_one)

    def __post_init__(self):
        schema.check(self)

    def generate_kwargs(self):
        """The keyword arguments of `cxr_tf.synthetic.generate`."""
        return dataclasses.asdict(self)
