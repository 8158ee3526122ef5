"""The `nih_chest_xray14` TFDS dataset. Importing this package registers it with TFDS."""

from cxr_tf.datasets.nih_chest_xray14.nih_chest_xray14_dataset_builder import (  # noqa: F401
    REPORT_FILE,
    STANDARD_SIZES,
    Builder,
    NihConfig,
    SourceChangedError,
    make_config,
)
