"""Building the prepared dataset from a Kaggle-layout folder: what `python -m cxr_tf.prepare`
and the demo call. The TFDS builder does the work (and checks, locks and reports it, as it does
under `tfds build`); this turns a PrepareConfig into the builder's arguments.

    report = prepare(PrepareConfig(data_dir=KAGGLE_DIR, output_dir=TFDS_DIR, image_size=224))
"""

import tensorflow_datasets as tfds

from cxr_tf.data import metadata
from cxr_tf.datasets.nih_chest_xray14.nih_chest_xray14_dataset_builder import (
    Builder,
    make_config,
)
from cxr_tf.datasets.nih_chest_xray14.report import check_accounting  # noqa: F401


def prepare(config):
    """Builds the dataset `config` (a datasets.config.PrepareConfig) describes and returns its
    report dict (prepare_report.json, with `dataset_dir`).

    image_size, val_fraction, seed, drop_rgba, image_encoding and max_pixels choose what is
    built; `strict` (fail on an unknown label) and `num_workers` (decode processes) change how
    it is built, not what.
    A dataset already built from the same metadata is reused if it is whole; one built from
    other metadata raises SourceChangedError, a damaged one verify.DamagedDataError, unless
    `config.overwrite` (which rebuilds it in any case). Another prepare writing into the same
    output_dir: PrepareInUseError, at once.
    """
    if not (config.data_dir and config.output_dir):
        raise ValueError("prepare needs data_dir and output_dir")
    nih_config = make_config(
        config.image_size, val_fraction=config.val_fraction, seed=config.seed,
        drop_rgba=config.drop_rgba, image_encoding=config.image_encoding,
        max_pixels=config.max_pixels)
    metadata.source_fingerprint(config.data_dir)  # a folder without the metadata: an error now
    builder = Builder(config=nih_config, data_dir=config.output_dir,
                      num_workers=config.num_workers, strict=config.strict)
    mode = tfds.download.GenerateMode
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=config.data_dir,
            # REUSE_CACHE_IF_EXISTS regenerates the dataset (there is nothing to download).
            download_mode=(mode.REUSE_CACHE_IF_EXISTS if config.overwrite
                           else mode.REUSE_DATASET_IF_EXISTS),
            # Statistics would decode every image once more; the report counts what matters.
            compute_stats=tfds.download.ComputeStatsMode.SKIP)
    )
    return builder.report
