"""The TFDS builder on its committed dummy_data (16 synthetic 32 px images), as TFDS's own
dataset tests do. The split sizes are those of the patient-wise split of that folder."""

import tensorflow_datasets as tfds

from cxr_tf.datasets import nih_chest_xray14


class NihChestXray14Test(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = nih_chest_xray14.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["224"]
    SKIP_CHECKSUMS = True
    # 16 images of 16 patients: 4 in test_list, 12 in train_val of which round(0.1 * 12) = 1
    # patient is carved out as validation.
    SPLITS = {"train": 11, "validation": 1, "test": 4}
    # The builder checks no split is empty and that examples are keyed by image id.
    OVERLAPPING_SPLITS = []


if __name__ == "__main__":
    tfds.testing.test_main()
