"""prepare_report.json: the account of every CSV row and, once the dataset is written, of
every shard (what `cxr_tf.data.verify` checks when the dataset is opened).

    report = new_report(index, config, source)      # the builder fills it while it writes
    report = finish(version_dir, data_dir_root, written=True)
    print(format_report(report))

It lives in the version dir (the dataset carries its own account) and is copied to the TFDS
data dir, where the README points.
"""

import collections
import json
import os

from cxr_tf import atomic
from cxr_tf.data import metadata, verify

REPORT_FILE = verify.REPORT_FILE


def new_report(index, config, source):
    """The report of a build about to start: rows read, skips from the metadata so far."""
    return {
        "rows": index.rows,
        "written": collections.Counter({"train": 0, "validation": 0, "test": 0}),
        "skipped": all_reasons(index.skipped),
        "converted": collections.Counter(index.converted),
        "skipped_files": {k: list(v) for k, v in index.skipped_examples.items()},
        "empty_splits": {},  # split -> why it has no example (and was not written)
        "source": source,  # metadata.source_fingerprint of the Kaggle folder
        "config": {
            "image_size": config.image_size, "val_fraction": config.val_fraction,
            "seed": config.seed, "drop_rgba": config.drop_rgba,
            "image_encoding": config.image_encoding,
        },
    }


def all_reasons(counter):
    """Every skip reason appears in the report, with 0 where nothing was skipped."""
    out = collections.Counter({reason: 0 for reason in metadata.SKIP_REASONS})
    out.update(counter)
    return out


def write(version_dir, report):
    atomic.write_json(os.path.join(version_dir, REPORT_FILE), report, indent=2, sort_keys=True)


def finish(version_dir, data_dir_root, *, written):
    """The report of the dataset in version_dir, accounting checked, copied to data_dir_root;
    returned with `dataset_dir` added.

    written: the dataset was just written, so its shards are recorded (verify.describe); a
    dataset reused as it was keeps the report it has (recording its shards now would bless
    whatever happened to them since).
    """
    version_dir = os.fspath(version_dir)
    with open(os.path.join(version_dir, REPORT_FILE)) as f:
        report = json.load(f)
    if written:
        report["shards"] = verify.describe(version_dir)
        write(version_dir, report)
    check_accounting(report)
    atomic.write_json(os.path.join(os.fspath(data_dir_root), REPORT_FILE), report, indent=2,
                      sort_keys=True)
    report["dataset_dir"] = version_dir
    return report


def check_accounting(report):
    accounted = sum(report["written"].values()) + sum(report["skipped"].values())
    if accounted != report["rows"]:
        raise AssertionError(
            f"prepare lost rows: {report['rows']} read, {accounted} written or skipped"
        )


def format_report(report):
    """The human summary prepare (and `tfds build`) prints: rows, written, skipped (with up to
    five examples each), converted, shards, and where the dataset is."""
    lines = [f"rows read            {report['rows']:>9,}"]
    for split in ("train", "validation", "test"):
        lines.append(f"written {split:<12} {report['written'][split]:>9,}")
    for split, why in report.get("empty_splits", {}).items():
        lines.append(f"empty   {split:<12} {why}")
    for reason, n in sorted(report["skipped"].items()):
        if n:
            lines.append(f"skipped {reason:<12} {n:>9,}")
            lines.extend(f"    {name}" for name in report["skipped_files"].get(reason, [])[:5])
    for kind, n in sorted(report["converted"].items()):
        lines.append(f"converted {kind:<10} {n:>9,}")
    shards = [s for entries in report.get("shards", {}).values() for s in entries]
    if shards:
        size = sum(s["bytes"] for s in shards)
        lines.append(f"shards               {len(shards):>9,}  ({size:,} bytes, CRC-32 "
                     "recorded)")
    lines.append(f"dataset              {report['dataset_dir']}")
    return "\n".join(lines)
