"""Building the prepared dataset from a Kaggle-layout folder: what `python -m cxr_tf.prepare`
and the demo call. The TFDS builder does the work; this adds the accounting check and a copy
of prepare_report.json beside the TFDS data_dir."""

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


def prepare(data_dir, output_dir, image_size=224, *, strict=False, num_workers=None,
            overwrite=False, **options):
    """Builds the dataset and returns its report dict.

    `options` choose what is built, as `make_config` takes them: val_fraction, seed,
    drop_rgba, image_encoding, max_pixels (None: the default limit). `strict` (fail on an
    unknown label) and `num_workers` (decode processes) change how it is built, not what.
    A dataset already built from the same metadata is reused; one built from other metadata
    raises SourceChangedError, unless `overwrite` (which rebuilds it in any case).
    """
    if "max_pixels" in options and not options["max_pixels"]:
        del options["max_pixels"]  # None: the default limit
    config = make_config(image_size, **options)
    metadata.source_fingerprint(data_dir)  # a folder without the metadata: MetadataError now
    builder = Builder(config=config, data_dir=output_dir, num_workers=num_workers,
                      strict=strict)
    mode = tfds.download.GenerateMode
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=data_dir,
            # REUSE_CACHE_IF_EXISTS regenerates the dataset (there is nothing to download).
            download_mode=(mode.REUSE_CACHE_IF_EXISTS if overwrite
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
