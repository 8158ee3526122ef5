r"""TFDS builder for NIH ChestX-ray14 from the Kaggle layout (manual download).

    tfds build nih_chest_xray14 --imports=cxr_tf.datasets.nih_chest_xray14 --config=224 \
        --manual_dir=KAGGLE_DIR --data_dir=TFDS_DIR

works from any folder and builds what `python -m cxr_tf.prepare` builds, which runs

    build.prepare(PrepareConfig(data_dir=KAGGLE_DIR, output_dir=TFDS_DIR, image_size=224))

Any size works (a config is made from its name on demand, `configs.parse_name`), and the same
accounting is printed.

The metadata rules (label parsing, skip reasons, the patient-wise validation split) live in
`cxr_tf.data.metadata`; decoding lives in `cxr_tf.data.images`; the report in `report`. This
file wires them into TFDS, and keeps TFDS's own chatter (an "Unknown size" download, a
shuffle ETA, a warning for every size outside BUILDER_CONFIGS) out of the user's way.
"""

import collections
import contextlib
import json
import logging
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging as absl_logging

from cxr_tf import errors, labels, locks, tf_logs
from cxr_tf.data import image_header, metadata, parallel_decode, verify
from cxr_tf.datasets.nih_chest_xray14 import report as report_lib
from cxr_tf.datasets.nih_chest_xray14.configs import (  # noqa: F401 (re-exported)
    STANDARD_SIZES,
    NihConfig,
    new_config,
    parse_name,
)

_DESCRIPTION = """\
ChestX-ray14: 112,120 frontal chest X-rays of 30,805 patients, each labelled with any of 14
findings mined from radiology reports ("No Finding" is the all-zero label vector). Images are
converted to 8-bit gray, zero-padded to square and resized with antialiasing. Splits follow the
official patient-disjoint train_val/test lists; validation is carved out of train_val by patient.
"""

_CITATION = """\
@inproceedings{wang2017chestxray,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised
         Classification and Localization of Common Thorax Diseases},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi
          and Summers, Ronald M},
  booktitle={CVPR},
  pages={2097--2106},
  year={2017}
}
"""

_HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"

REPORT_FILE = report_lib.REPORT_FILE
# In the TFDS data dir: one prepare (or tfds build) of this dataset into it at a time.
LOCK_FILE = ".nih_chest_xray14.lock"


class SourceChangedError(metadata.MetadataError):
    """The prepared dataset was built from another Data_Entry CSV or split lists."""


class Builder(tfds.core.GeneratorBasedBuilder):
    """NIH ChestX-ray14, resized and sharded."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Images stored as raw uint8 bytes by default (no PNG decode when training; "
                  "configs ending in _png keep PNG).",
    }
    BUILDER_CONFIGS = [new_config(size) for size in STANDARD_SIZES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the dataset from Kaggle (https://www.kaggle.com/datasets/nih-chest-xrays/data) or
    from the NIH box (https://nihcc.app.box.com/v/ChestXray-NIHCC) and extract it so that
    `manual_dir` holds `images_001/images/*.png` … `images_012/images/*.png`,
    `Data_Entry_2017.csv` (or `Data_Entry_2017_v2020.csv`, .gz accepted), `train_val_list.txt`
    and `test_list.txt`.
    """

    def __init__(self, *, num_workers=None, strict=False, **kwargs):
        """num_workers (decode processes; None = all cores) and strict (fail on an unknown
        label) change how the data is built, not what: they are not part of the config."""
        self._num_workers = num_workers
        self._strict = strict
        super().__init__(**kwargs)

    def download_and_prepare(self, *, download_config=None, **kwargs):
        """TFDS's, with what a prepared dataset needs around it, the same under prepare and
        `tfds build`: one process at a time in the data dir (a second is refused at once);
        a dataset already there is reused only when whole (verify.check) and prepared from
        the metadata the manual_dir holds now (SourceChangedError), unless overwritten; a
        dataset just written has its shards recorded in prepare_report.json, which is then
        copied to the data dir. Sets `self.report` (the report, with `dataset_dir`).
        """
        config = download_config or tfds.download.DownloadConfig()
        root = os.fspath(self.data_dir_root)
        tfds_cli = _run_by_tfds_cli()
        if tfds_cli:
            tf_logs.start()  # the apps do this in cxr_tf.cli; the tfds command line does not
        with locks.held(os.path.join(root, LOCK_FILE), lambda pid: PrepareInUseError(
                f"{root}: in use by another prepare (pid {pid}); wait for it to end or "
                "prepare into another output_dir")), _quiet_tfds(tfds_cli):
            reuse = self.data_path.exists() and not config.download_mode.overwrite_dataset
            if reuse:  # what TFDS checks before reusing it
                verify.check(self.data_dir)
                if config.manual_dir:
                    check_source(os.fspath(self.data_dir), os.fspath(config.manual_dir))
            super().download_and_prepare(download_config=download_config, **kwargs)
            self.report = report_lib.finish(self.data_dir, root, written=not reuse)
        if tfds_cli:  # the apps print their own summary
            print(report_lib.format_report(self.report), flush=True)

    def _create_builder_config(self, builder_config, version):
        """TFDS's, with configs made on demand: any name `parse_name` reads (TFDS itself
        knows BUILDER_CONFIGS only), and no "Using custom data configuration" warning for a
        size outside them."""
        if isinstance(builder_config, str) and ":" not in builder_config:
            builder_config = make_config(**parse_name(builder_config))
        if isinstance(builder_config, NihConfig) and \
                builder_config.name not in type(self).builder_configs:
            return builder_config
        return super()._create_builder_config(builder_config, version)

    def _log_download_bytes(self):
        # TFDS prints "Downloading and preparing dataset Unknown size ..." on stdout (where
        # `prepare --json` prints its JSON): there is nothing to download, say what happens.
        print(f"preparing {self.info.full_name} from the Kaggle folder into {self.data_dir}",
              file=sys.stderr, flush=True)

    def _log_download_done(self):
        pass  # the report's summary says it

    def _info(self):
        size = self.builder_config.image_size
        if self.builder_config.image_encoding == "png":
            image = tfds.features.Image(shape=(size, size, 1), dtype=np.uint8)
        else:
            image = tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                                         encoding=tfds.features.Encoding.BYTES)
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": image,
                "labels": tfds.features.Tensor(shape=(labels.NUM_CLASSES,), dtype=np.uint8),
                "image_id": tfds.features.Text(),
                "patient_id": np.int32,
                "follow_up": np.int32,
                "age": np.int32,  # -1 when unknown or implausible
                "sex": tfds.features.Text(),
                "view": tfds.features.Text(),
            }),
            supervised_keys=("image", "labels"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(label_names=list(labels.LABELS)),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        manual_dir = os.fspath(dl_manager.manual_dir)
        index = metadata.build_index(manual_dir, val_fraction=config.val_fraction,
                                     seed=config.seed, strict=self._strict)
        self._report = report_lib.new_report(index, config,
                                             metadata.source_fingerprint(manual_dir))
        frame = index.frame
        generators = {}
        # TFDS cannot write a split without examples ("No examples were yielded", after all the
        # decoding): an empty split is left out and the report says why.
        for split in metadata.SPLITS:
            rows = frame[frame["split"] == split]
            why = _why_empty(split, rows, frame, config) or self._why_undecodable(rows)
            if why:
                self._report["empty_splits"][split] = why
            else:
                generators[split] = self._generate_examples(rows)
        if not generators:
            raise metadata.MetadataError(
                "no image to prepare: " + "; ".join(
                    f"{split}: {why}" for split, why in self._report["empty_splits"].items()),
                path=manual_dir)
        return generators

    def _why_undecodable(self, rows):
        """Why the kept `rows` give no example, or None. Decodes in this process up to the
        first good file (one decode for a sound split); when none is good, their skips are
        counted here, as the split is never generated."""
        results = []
        for result in self._decode(rows, num_workers=0, encoding=None):
            if result.image is not None:
                return None
            results.append(result)
        for result in results:
            self._count_skip(result)
        reasons = collections.Counter(result.skip_reason for result in results)
        return (f"all {len(results)} image(s) skipped when decoding ("
                + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) + ")")

    def _decode(self, rows, num_workers, encoding):
        """Decoded results of the kept `rows`, in order (see parallel_decode.decode_files)."""
        config = self.builder_config
        return parallel_decode.decode_files(
            zip(rows["image_id"], rows["path"]), config.image_size, drop_rgba=config.drop_rgba,
            num_workers=num_workers, encoding=encoding, max_pixels=config.max_pixels)

    def _generate_examples(self, frame):
        records = frame.to_dict("records")
        label_matrix = frame[list(labels.LABELS)].to_numpy(np.uint8)
        decoded = self._decode(frame, self._num_workers, self.builder_config.image_encoding)
        split = records[0]["split"]
        # Ours, not TFDS's bars (off while preparing): decoding is the long step, and its rate
        # is the one a user can plan by. Drawn only on a terminal.
        decoded = tqdm.tqdm(decoded, total=len(records), desc=f"decoding {split}",
                            unit=" images", disable=not tf_logs.stderr_is_terminal())
        for record, label_vector, result in zip(records, label_matrix, decoded):
            if result.image is None:
                self._count_skip(result)
                continue
            self._report["converted"].update(result.conversions)
            self._report["written"][split] += 1
            yield record["image_id"], {
                "image": result.image,
                "labels": label_vector,
                "image_id": record["image_id"],
                "patient_id": record["patient_id"],
                "follow_up": record["follow_up"],
                "age": record["age"],
                "sex": record["sex"],
                "view": record["view"],
            }
        # Written after each split into the (temporary) version dir, so the finished dataset
        # carries its own account of every row, also when built with `tfds build`.
        report_lib.write(self.data_dir, self._report)

    def _count_skip(self, result):
        self._report["skipped"][result.skip_reason] += 1
        examples = self._report["skipped_files"].setdefault(result.skip_reason, [])
        if len(examples) < 50:
            examples.append(result.error)


def make_config(image_size, *, val_fraction=0.1, seed=0, drop_rgba=False, image_encoding="raw",
                max_pixels=image_header.MAX_PIXELS):
    """A config named by image size ("224"), with any non-default choice that changes the data
    appended ("224_val0.2_seed1_droprgba_png"), so two different datasets never share a folder.

    For a standard size this is the builder's own config object: TFDS refuses a custom config
    that shares a standard config's name.
    """
    config = new_config(image_size, val_fraction=val_fraction, seed=seed, drop_rgba=drop_rgba,
                        image_encoding=image_encoding, max_pixels=max_pixels)
    return Builder.builder_configs.get(config.name, config)


def check_source(dataset_dir, manual_dir):
    """Raises SourceChangedError unless the dataset in `dataset_dir` was prepared from the
    metadata `manual_dir` holds now (its `metadata.source_fingerprint`)."""
    try:
        with open(os.path.join(dataset_dir, REPORT_FILE)) as f:
            recorded = json.load(f).get("source")
    except FileNotFoundError:
        recorded = None
    if recorded is None:  # prepared before fingerprints were recorded: say so, reuse it
        logging.warning("%s: no source fingerprint recorded; reusing it without checking that "
                        "%s still holds the same metadata", dataset_dir, manual_dir)
        return
    current = metadata.source_fingerprint(manual_dir)
    changed = [f"{name} ({_change(name, recorded, current)})"
               for name in sorted(set(recorded) | set(current))
               if recorded.get(name) != current.get(name)]
    if changed:
        raise SourceChangedError(
            f"prepared from other metadata than {manual_dir} holds now: {', '.join(changed)}; "
            "prepare into a new output_dir, or rebuild it (prepare --overwrite, "
            "`tfds build --overwrite`)", path=dataset_dir)


def _change(name, recorded, current):
    if name not in recorded:
        return "new"
    return "changed" if name in current else "gone"


def _why_empty(split, rows, frame, config):
    """Why metadata left `split` without rows, or None when it has some."""
    if len(rows):
        return None
    if split == "validation" and config.val_fraction == 0:
        return "val_fraction is 0: no patient is held out for validation"
    if split == "validation" and frame.loc[frame["split"] == "train", "patient_id"].nunique() < 2:
        return "fewer than 2 train_val patients: none can be held out for validation"
    source = metadata.TEST_LIST if split == "test" else metadata.TRAIN_VAL_LIST
    return f"no row of {source} was kept for {split} (see 'skipped')"


class PrepareInUseError(errors.UserError, RuntimeError):
    """Another prepare (or tfds build) of this dataset holds the data dir."""


def _run_by_tfds_cli():
    """Whether this process is the `tfds` command line (`tfds build`), which prints no
    summary of its own and leaves TensorFlow's log lines as they come."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return (os.path.basename(sys.argv[0]) == "tfds" if sys.argv else False) or \
        (spec is not None and spec.name.startswith("tensorflow_datasets.scripts.cli"))


@contextlib.contextmanager
def _quiet_tfds(tfds_cli):
    """TFDS's progress bars off (a shuffle ETA of hours for a step of seconds; ours show the
    decoding), and under the tfds command line its INFO lines (a line per file written)."""
    from tensorflow_datasets.core.utils import tqdm_utils

    # TFDS has no getter for whether its bars are on; its module flag says.
    bars = getattr(tqdm_utils, "_active", True)
    verbosity = absl_logging.get_verbosity()
    tfds.display_progress_bar(False)
    if tfds_cli:
        absl_logging.set_verbosity(min(verbosity, absl_logging.WARNING))
    try:
        yield
    finally:
        tfds.display_progress_bar(bars)
        absl_logging.set_verbosity(verbosity)
