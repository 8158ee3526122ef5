"""The builder's configs: one per prepared dataset, named by what it holds.

    new_config(64, image_encoding="png").name      # "64_png"
    parse_name("224_val0.2_seed1")                 # {"image_size": 224, "val_fraction": 0.2, ...}

The name is the image size followed by each choice that differs from its default, so two
different datasets never share a folder, and any name can be read back into its config:
`tfds build --config=64` gets the same dataset as `prepare --image_size=64`.
"""

import dataclasses
import re

import tensorflow_datasets as tfds

from cxr_tf.data import image_header
from cxr_tf.datasets.config import IMAGE_ENCODINGS

STANDARD_SIZES = (224, 256, 320, 512, 1024)
MIN_SIZE = 8
NAME_FORMAT = "SIZE[_valFRACTION][_seedN][_droprgba][_png][_maxpxN], e.g. 224, 64_png"
_NAME = re.compile(r"(?P<image_size>\d+)(?:_val(?P<val_fraction>[0-9.e+-]+))?"
                   r"(?:_seed(?P<seed>\d+))?(?P<drop_rgba>_droprgba)?"
                   r"(?:_(?P<image_encoding>png))?(?:_maxpx(?P<max_pixels>\d+))?")


@dataclasses.dataclass(eq=False)
class NihConfig(tfds.core.BuilderConfig):
    image_size: int = 224
    val_fraction: float = 0.1
    seed: int = 0
    drop_rgba: bool = False
    image_encoding: str = "raw"
    max_pixels: int = image_header.MAX_PIXELS


def new_config(image_size, *, val_fraction=0.1, seed=0, drop_rgba=False, image_encoding="raw",
               max_pixels=image_header.MAX_PIXELS):
    """A new NihConfig named as the module docstring says. Raises ValueError for a size below
    MIN_SIZE or whose square is over max_pixels, or an unknown encoding."""
    if int(image_size) < MIN_SIZE:
        raise ValueError(f"image_size must be at least {MIN_SIZE}, got {image_size}")
    if int(image_size) ** 2 > max_pixels:
        raise ValueError(f"image_size {image_size} makes {int(image_size) ** 2:,}-pixel images, "
                         f"over max_pixels ({max_pixels:,}): image_size² must fit")
    if image_encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"image_encoding must be one of {IMAGE_ENCODINGS}, "
                         f"got {image_encoding!r}")
    name = str(int(image_size))
    if val_fraction != 0.1:
        name += f"_val{val_fraction:g}"
    if seed != 0:
        name += f"_seed{seed}"
    if drop_rgba:
        name += "_droprgba"
    if image_encoding != "raw":
        name += f"_{image_encoding}"
    if max_pixels != image_header.MAX_PIXELS:
        name += f"_maxpx{max_pixels}"
    return NihConfig(
        name=name,
        description=f"{image_size}x{image_size} gray ({image_encoding}), "
        f"val_fraction={val_fraction:g}, seed={seed}, drop_rgba={drop_rgba}",
        image_size=int(image_size), val_fraction=val_fraction, seed=seed,
        drop_rgba=drop_rgba, image_encoding=image_encoding, max_pixels=int(max_pixels),
    )


def parse_name(name):
    """The new_config arguments a config name stands for; ValueError naming the format when
    it is not one (or not the canonical spelling: "224_val0.1" is "224")."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a nih_chest_xray14 config name: {NAME_FORMAT}")
    found = match.groupdict()
    try:
        kwargs = {
            "image_size": int(found["image_size"]),
            "val_fraction": float(found["val_fraction"] or 0.1),
            "seed": int(found["seed"] or 0),
            "drop_rgba": bool(found["drop_rgba"]),
            "image_encoding": found["image_encoding"] or "raw",
            "max_pixels": int(found["max_pixels"] or image_header.MAX_PIXELS),
        }
        canonical = new_config(**kwargs).name
    except ValueError as e:
        raise ValueError(f"config {name!r}: {e}") from None
    if canonical != name:
        raise ValueError(f"config {name!r} is spelled {canonical!r} ({NAME_FORMAT})")
    return kwargs
