"""Building the prepared dataset from a Kaggle-layout folder: what `python -m cxr_tf.prepare`
and the demo call. The TFDS builder does the work; this refuses to reuse a dataset prepared
from other metadata, checks the accounting, and copies prepare_report.json beside the TFDS
data_dir."""

import json
import logging
import os
import shutil

import tensorflow_datasets as tfds

from cxr_tf.data import metadata
from cxr_tf.datasets.nih_chest_xray14.nih_chest_xray14_dataset_builder import (
    REPORT_FILE,
    Builder,
    make_config,
)


class SourceChangedError(metadata.MetadataError):
    """The prepared dataset was built from another Data_Entry CSV or split lists."""


def prepare(data_dir, output_dir, image_size=224, *, val_fraction=0.1, seed=0, drop_rgba=False,
            image_encoding="raw", strict=False, num_workers=None):
    """Builds the dataset (a no-op when already built from the same metadata) and returns its
    report dict. Raises SourceChangedError when it was built from other metadata."""
    config = make_config(
        image_size, val_fraction=val_fraction, seed=seed, drop_rgba=drop_rgba,
        image_encoding=image_encoding)
    # Also checks that data_dir holds the metadata, before TFDS's less helpful message.
    source = metadata.source_fingerprint(data_dir)
    builder = Builder(config=config, data_dir=output_dir, num_workers=num_workers,
                      strict=strict)
    if builder.data_path.exists():  # what TFDS checks before reusing it
        check_source(os.fspath(builder.data_dir), data_dir, source)
    builder.download_and_prepare(
        # Statistics would decode every image once more; the report already counts what matters.
        download_config=tfds.download.DownloadConfig(
            manual_dir=data_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP)
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


def check_source(dataset_dir, data_dir, current):
    """Raises SourceChangedError unless the dataset in `dataset_dir` was prepared from the
    metadata `data_dir` holds now: `current`, its `metadata.source_fingerprint`."""
    try:
        with open(os.path.join(dataset_dir, REPORT_FILE)) as f:
            recorded = json.load(f).get("source")
    except FileNotFoundError:
        recorded = None
    if recorded is None:  # prepared before fingerprints were recorded: say so, reuse it
        logging.warning("%s: no source fingerprint recorded; reusing it without checking that "
                        "%s still holds the same metadata", dataset_dir, data_dir)
        return
    changed = [f"{name} ({_change(name, recorded, current)})"
               for name in sorted(set(recorded) | set(current))
               if recorded.get(name) != current.get(name)]
    if changed:
        raise SourceChangedError(
            f"prepared from other metadata than {data_dir} holds now: {', '.join(changed)}; "
            "prepare into a new output_dir, or delete this folder and prepare again to rebuild",
            path=dataset_dir)


def _change(name, recorded, current):
    if name not in recorded:
        return "new"
    return "changed" if name in current else "gone"


def check_accounting(report):
    accounted = sum(report["written"].values()) + sum(report["skipped"].values())
    if accounted != report["rows"]:
        raise AssertionError(
            f"prepare lost rows: {report['rows']} read, {accounted} written or skipped"
        )
