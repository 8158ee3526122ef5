"""The synthetic dataset ready to train on: generated and prepared once into a cache dir.

    tfds_dir = synthetic_data_dir(image_size=64)   # what `train --synthetic` and the
                                                   # benchmarks read
"""

import os

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "cxr_tf")


def synthetic_data_dir(image_size, num_images=2000, min_prevalence=0.0, seed=0, cache_dir=None):
    """Generates and prepares the synthetic Kaggle-layout dataset once; returns the TFDS dir.

    cache_dir: default $CXR_TF_CACHE, else ~/.cache/cxr_tf. The generator writes images at
    twice the training size so that prepare's resize path is exercised as on real data.
    """
    from cxr_tf.datasets.config import PrepareConfig
    from cxr_tf.datasets.nih_chest_xray14 import build  # TensorFlow Datasets starts here
    from cxr_tf.synthetic.generator import generate

    cache_dir = cache_dir or os.environ.get("CXR_TF_CACHE", DEFAULT_CACHE)
    source_size = min(2 * image_size, 1024)
    name = f"synthetic_n{num_images}_s{source_size}_p{min_prevalence:g}_seed{seed}"
    kaggle_dir = os.path.join(cache_dir, name, "kaggle")
    tfds_dir = os.path.join(cache_dir, name, "tfds")
    if not os.path.exists(os.path.join(kaggle_dir, "test_list.txt")):
        generate(kaggle_dir, num_images=num_images, image_size=source_size, seed=seed,
                 min_prevalence=min_prevalence)
    build.prepare(PrepareConfig(data_dir=kaggle_dir, output_dir=tfds_dir, image_size=image_size))
    return tfds_dir
