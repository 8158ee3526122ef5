"""Building the prepared dataset from a Kaggle-layout folder: what `python -m cxr_tf.prepare`
and the demo call. The TFDS builder does the work; this adds the accounting check and a copy
of prepare_report.json beside the TFDS data_dir.

    report = prepare(PrepareConfig(data_dir=KAGGLE_DIR, output_dir=TFDS_DIR, image_size=224))
"""

import json
import os
import shutil

import tensorflow_datasets as tfds

from cxr_tf.data import metadata
from cxr_tf.datasets.nih_chest_xray14.nih_chest_xray14_dataset_builder import (
    REPORT_FILE,
    Builder,
    make_config,
)


def prepare(config):
    """Builds the dataset `config` (a datasets.config.PrepareConfig) describes and returns its
    report dict.

    image_size, val_fraction, seed, drop_rgba, image_encoding and max_pixels choose what is
    built; `strict` (fail on an unknown label) and `num_workers` (decode processes) change how
    it is built, not what.
    A dataset already built from the same metadata is reused; one built from other metadata
    raises SourceChangedError, unless `config.overwrite` (which rebuilds it in any case).
    """
    if not (config.data_dir and config.output_dir):
        raise ValueError("prepare needs data_dir and output_dir")
    data_dir, output_dir = config.data_dir, config.output_dir
    nih_config = make_config(
        config.image_size, val_fraction=config.val_fraction, seed=config.seed,
        drop_rgba=config.drop_rgba, image_encoding=config.image_encoding,
        max_pixels=config.max_pixels)
    metadata.source_fingerprint(data_dir)  # a folder without the metadata: MetadataError now
    builder = Builder(config=nih_config, data_dir=output_dir, num_workers=config.num_workers,
                      strict=config.strict)
    mode = tfds.download.GenerateMode
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=data_dir,
            # REUSE_CACHE_IF_EXISTS regenerates the dataset (there is nothing to download).
            download_mode=(mode.REUSE_CACHE_IF_EXISTS if config.overwrite
                           else mode.REUSE_DATASET_IF_EXISTS),
            # Statistics would decode every image once more; the report counts what matters.
            compute_stats=tfds.download.ComputeStatsMode.SKIP)
    )
    with open(os.path.join(builder.data_dir, REPORT_FILE)) as f:
        report = json.load(f)
    report["dataset_dir"] = os.fspath(builder.data_dir)
    check_accounting(report)
    shutil.copyfile(
        os.path.join(builder.data_dir, REPORT_FILE),
        os.path.join(output_dir, REPORT_FILE),
    )
    return report


def check_accounting(report):
    accounted = sum(report["written"].values()) + sum(report["skipped"].values())
    if accounted != report["rows"]:
        raise AssertionError(
            f"prepare lost rows: {report['rows']} read, {accounted} written or skipped"
        )
