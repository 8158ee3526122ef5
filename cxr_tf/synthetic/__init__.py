"""The synthetic NIH ChestX-ray14 generator, in the exact Kaggle layout (`generator`), with
metadata rows that follow the real figures (`rows`) and films with learnable findings
(`renderer`); `dataset.synthetic_data_dir` generates and prepares it once into a cache.
`python -m cxr_tf.synthetic` runs the generator from the command line."""

from cxr_tf.synthetic.generator import generate  # noqa: F401
from cxr_tf.synthetic.renderer import render  # noqa: F401
