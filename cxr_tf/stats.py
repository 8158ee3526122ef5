"""Label and patient counts per split, from a Kaggle folder or a prepared dataset.

    python -m cxr_tf.stats --data_dir=DIR [--json] [--plot=fig1.png] [--image_size=N]

DIR is either a Kaggle-layout folder (only the Data_Entry CSV and the two official lists are
read, so no images are needed; splits `train_val` and `test`) or a TFDS data_dir written by
`python -m cxr_tf.prepare` (splits `train`, `validation`, `test`; labels and patient ids are
read with the images left encoded). `--plot` draws the label-proportion pie chart (paper
Figure 1) over all splits.
"""

import json
import os

import numpy as np
from absl import app, logging

from cxr_tf import cli, errors, flags, labels
from cxr_tf.data import metadata
from cxr_tf.datasets.config import StatsConfig


def split_stats(label_matrix, patient_ids):
    """Counts for one split: images, patients, No Finding rows, multi-label rows, per label."""
    label_matrix = np.asarray(label_matrix, dtype=np.int64).reshape(-1, labels.NUM_CLASSES)
    per_image = label_matrix.sum(axis=1)
    return {
        "images": int(len(label_matrix)),
        "patients": int(len(np.unique(np.asarray(patient_ids)))),
        "no_finding": int((per_image == 0).sum()),
        "multi_label": int((per_image > 1).sum()),
        "labels": dict(zip(labels.LABELS, label_matrix.sum(axis=0).tolist())),
    }


def kaggle_stats(data_dir):
    """{"splits": {"train_val": ..., "test": ...}} from the metadata of a Kaggle folder."""
    index = metadata.build_index(data_dir, val_fraction=0.0, require_files=False)
    skipped = sum(index.skipped.values())
    if skipped:
        logging.warning("%s: %d of %d rows skipped: %s", data_dir, skipped, index.rows,
                        dict(index.skipped))
    frame = index.frame
    # val_fraction=0 leaves every train_val row in "train".
    names = {"train_val": "train", "test": "test"}
    return {"splits": {
        name: split_stats(index.label_matrix(split), frame.loc[frame["split"] == split,
                                                               "patient_id"])
        for name, split in names.items()
    }}


def prepared_stats(data_dir, image_size=None):
    """{"splits": {"train": ..., "validation": ..., "test": ...}} from a prepared dataset."""
    from cxr_tf.data import source  # only here: a Kaggle folder needs no TensorFlow

    # find_prepared first: a folder that holds no prepared dataset is a FileNotFoundError.
    data = source.open_source(source.find_prepared(data_dir, image_size))
    return {"splits": {split: split_stats(data.labels(split), data.columns(split)["patient_id"])
                       for split in data.split_sizes}}


def compute_stats(data_dir, image_size=None):
    """Per-split counts of `data_dir`: a Kaggle folder if it holds a Data_Entry CSV, otherwise
    a prepared TFDS data_dir."""
    try:
        metadata.find_data_entry(data_dir)
    except metadata.MetadataError as not_kaggle:
        try:
            return prepared_stats(data_dir, image_size)
        except FileNotFoundError as e:
            raise errors.NotFoundError(f"{e}; nor a Kaggle folder: {not_kaggle.reason}") from None
    return kaggle_stats(data_dir)


def format_stats(stats):
    """The human summary: one table of split totals, one of label counts per split."""
    splits = stats["splits"]
    names = list(splits)
    width = max(len(name) for name in labels.LABELS + ("multi_label",)) + 2
    lines = ["".ljust(width) + "".join(name.rjust(12) for name in names + ["total"])]

    def row(title, values):
        lines.append(title.ljust(width) + "".join(f"{v:>12,}" for v in values + [sum(values)]))

    for key in ("images", "patients", "no_finding", "multi_label"):
        row(key, [splits[name][key] for name in names])
    lines.append("")
    for label in labels.LABELS:
        row(label, [splits[name]["labels"][label] for name in names])
    return "\n".join(lines)


def plot_label_pie(stats, path):
    """Writes the paper's Figure 1: each finding's (and No Finding's) share of all labels."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    from matplotlib import pyplot as plt

    splits = stats["splits"].values()
    counts = {label: sum(s["labels"][label] for s in splits) for label in labels.LABELS}
    counts[labels.NO_FINDING] = sum(s["no_finding"] for s in splits)
    images = sum(s["images"] for s in splits)
    total = sum(counts.values())
    fig, ax = plt.subplots(figsize=(10, 6))
    # 15 slices: tab20 keeps them distinct; the small ones are named in the legend, not on
    # the pie, where their names would overlap.
    wedges, _, _ = ax.pie(
        list(counts.values()), colors=plt.get_cmap("tab20").colors[:len(counts)],
        autopct=lambda pct: f"{pct:.1f}%" if pct >= 2 else "", startangle=90,
        counterclock=False, pctdistance=0.8, textprops={"fontsize": 8})
    ax.legend(wedges, [f"{name} {n / total:.1%} ({n:,})" for name, n in counts.items()],
              loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    ax.set_title(f"Label proportions ({images:,} images, {total:,} labels)")
    ax.axis("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags.build_config(StatsConfig)
    if not config.data_dir:
        raise app.UsageError("--data_dir is required")
    if not os.path.isdir(config.data_dir):
        raise app.UsageError(f"--data_dir={config.data_dir}: not a directory")
    stats = compute_stats(config.data_dir, config.image_size)  # user errors: cxr_tf.cli
    if config.plot:
        plot_label_pie(stats, config.plot)
    if FLAGS.json:
        print(json.dumps(stats))
    else:
        print(format_stats(stats))
        if config.plot:
            print(f"\nwrote {config.plot}")


FLAGS = flags.FLAGS

if __name__ == "__main__":
    cli.run(main, flags.define_stats_flags, outputs=lambda f: [f.plot])
