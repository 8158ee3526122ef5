r"""Turn a Kaggle-layout NIH folder into a sharded, resized TFDS dataset.

    python -m cxr_tf.prepare --data_dir=KAGGLE_DIR --output_dir=TFDS_DIR --image_size=224 \
        [--val_fraction=0.1] [--seed=0] [--drop_rgba] [--image_encoding=raw|png] [--strict] \
        [--num_workers=N] [--max_pixels=50000000] [--overwrite] [--json]

Writes TFDS_DIR/nih_chest_xray14/<config>/<version>/ (readable by `tfds.builder_from_directory`
without cxr_tf) and TFDS_DIR/prepare_report.json, which accounts for every CSV row:
rows = written + skipped. Images are stored as raw uint8 bytes (no decode when training);
--image_encoding=png stores PNG instead (less disk, a decode per image per epoch).
The report records a fingerprint of the CSV and lists: a dataset prepared from other metadata
is never reused (SourceChangedError); --overwrite rebuilds it. It also records each shard's
records, bytes and CRC-32, which train and evaluate check when they open the dataset (a damaged
one is refused, naming the file). One prepare at a time writes into a TFDS_DIR.
"""

import json
import sys

from absl import app

from cxr_tf import cli, flags
from cxr_tf.datasets.config import PrepareConfig

FLAGS = flags.FLAGS


def format_report(report):
    """The human summary (also what `tfds build` prints)."""
    from cxr_tf.datasets.nih_chest_xray14 import report as report_lib

    return report_lib.format_report(report)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags.build_config(PrepareConfig)
    if not config.data_dir or not config.output_dir:
        raise app.UsageError("--data_dir and --output_dir are required")
    from cxr_tf.datasets.nih_chest_xray14 import build  # TensorFlow starts here

    report = build.prepare(config)
    print(json.dumps(report, sort_keys=True) if FLAGS.json else format_report(report))
    sys.stdout.flush()


if __name__ == "__main__":
    cli.run(main, flags.define_prepare_flags, outputs=lambda f: [f.output_dir])
