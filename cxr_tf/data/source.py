"""A dataset source, opened once per run: a prepared `nih_chest_xray14` TFDS dir (fast) or a
raw Kaggle folder (slow), with its split sizes and each split's metadata.

    source = open_source(data_dir, image_size=224)
    source.split_sizes        # {"train": 78_468, "validation": 8_056, "test": 25_596}
    source.labels("validation")   # (n, 14) uint8, in pipeline order
    records, decode = source.read("train", input_context)   # for input_pipeline
    with source.reading():                  # a damaged shard met mid-run: one error naming it
        model.fit(...)

Opening reads dataset_info.json (prepared) or parses the Data_Entry CSV once (raw); a split's
metadata (labels, patient, age, sex, view) is read at most once and kept. A prepared dataset
is verified when it is opened (`cxr_tf.data.verify`: sizes and record counts, and with
verify_data every byte), so a damaged one is refused before a model is built.
"""

import contextlib
import dataclasses
import glob
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cxr_tf import errors, labels
from cxr_tf.data import image_header, images, metadata, verify

DATASET_NAME = "nih_chest_xray14"
SPLITS = metadata.SPLITS
# Per-image metadata that a split's columns, and the pipelines' `features=`, offer.
FEATURES = ("image_id", "patient_id", "follow_up", "age", "sex", "view")
_TEXT_FEATURES = ("image_id", "sex", "view")


class NotPreparedError(errors.NotFoundError):
    """No prepared dataset (at the size asked) in a data_dir. data_dir, image_size: as asked
    (image_size None: any size), so an app can spell the prepare command."""

    def __init__(self, message, data_dir=None, image_size=None):
        super().__init__(message)
        self.data_dir, self.image_size = data_dir, image_size

    def __reduce__(self):  # picklable across worker processes
        return type(self), (str(self), self.data_dir, self.image_size)


class SourceError(errors.UserError, ValueError):
    """A data_dir that cannot be read as asked (several prepared datasets match, a missing
    split)."""


# --- locating prepared data ------------------------------------------------------------------

def is_prepared(data_dir):
    """A TFDS dir written by prepare (or one of its version dirs), not a raw Kaggle folder."""
    return (os.path.isfile(os.path.join(data_dir, "dataset_info.json"))
            or os.path.isdir(os.path.join(data_dir, DATASET_NAME)))


def find_prepared(data_dir, image_size=None):
    """Returns the version dir (`DIR/nih_chest_xray14/<config>/<version>`) of a prepared dataset.

    Accepts the TFDS data_dir that `prepare` wrote to, or the version dir itself. With several
    prepared configs, `image_size` picks the one named by that size.
    """
    if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
        return data_dir
    found = sorted(glob.glob(os.path.join(data_dir, DATASET_NAME, "*", "*", "dataset_info.json")))
    found = _latest_versions([os.path.dirname(p) for p in found])
    if image_size is not None:
        found = [p for p in found if _config_size(p) == int(image_size)]
    if len(found) == 1:
        return found[0]
    if not found:
        size = f" at image_size={image_size}" if image_size else ""
        raise NotPreparedError(
            f"{data_dir}: no prepared {DATASET_NAME} dataset{size} "
            f"(prepare it first: `python -m cxr_tf.prepare`, output_dir {data_dir}"
            f"{f', image_size {image_size}' if image_size else ''})", data_dir, image_size)
    exact = [p for p in found if os.path.basename(os.path.dirname(p)) == str(image_size)]
    if len(exact) == 1:
        return exact[0]
    raise SourceError(f"{data_dir}: several prepared datasets match, pick one: {found}")


def _latest_versions(version_dirs):
    """One version dir per config: the newest, as TFDS itself picks (an older one is left by
    a previous cxr_tf release)."""
    latest = {}
    for path in version_dirs:
        config, version = os.path.split(path)
        if not tfds.core.Version.is_valid(version):
            continue
        version = tfds.core.Version(version)
        if config not in latest or version > latest[config][0]:
            latest[config] = (version, path)
    return sorted(path for _, path in latest.values())


def _config_size(version_dir):
    return int(os.path.basename(os.path.dirname(version_dir)).split("_")[0])


def open_prepared(data_dir, image_size=None, *, verify_data=False):
    """A read-only TFDS builder for the prepared dataset (needs no cxr_tf builder code),
    verified first (`verify.check`; verify_data: every byte too). Raises
    verify.DamagedDataError."""
    version_dir = find_prepared(data_dir, image_size)
    verify.check(version_dir, checksums=verify_data)
    try:
        return tfds.builder_from_directory(version_dir)
    except Exception as e:  # noqa: BLE001 - its files passed the checks: TFDS refuses the rest
        # (features.json, metadata.json), and any reason it gives is about those files.
        raise verify.DamagedDataError(
            version_dir, f"TFDS cannot open it ({type(e).__name__}: {verify.first_line(e)})"
        ) from e


# --- the source ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """An opened dataset: exactly one of `builder` (prepared) and `index` (raw Kaggle) is set.

    Attributes:
        data_dir: the directory it was opened from.
        image_size: side of the images it yields (a prepared dataset's own size).
        split_sizes: {split: number of examples}: a prepared dataset's splits (prepare leaves
            out an empty one), or all three of a raw folder (0 when empty).
        builder: the TFDS builder of a prepared dataset, or None.
        index: the metadata.Index of a raw Kaggle folder (CSV parsed once), or None.
    """

    data_dir: str
    image_size: int
    split_sizes: dict
    builder: object = None
    index: metadata.Index = None
    # split -> columns, filled on first use: a frozen Source still reads each split once.
    _columns: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    @property
    def prepared(self):
        return self.builder is not None

    def check_split(self, split):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self.split_sizes:
            raise SourceError(f"{self.data_dir}: has no {split!r} split "
                             f"(it holds {', '.join(self.split_sizes) or 'none'})")

    def columns(self, split):
        """{"labels": (n, 14) uint8, "image_id": (n,) str, "patient_id", "age", ...}: the
        split's metadata in pipeline order, read without decoding an image (once per split)."""
        self.check_split(split)
        if split not in self._columns:
            read = _prepared_columns if self.prepared else _kaggle_columns
            with self.reading():
                self._columns[split] = read(self, split)
        return self._columns[split]

    def labels(self, split):
        """(n, 14) uint8 multi-hot labels of a split, in LABELS and pipeline order."""
        return self.columns(split)["labels"]

    def rows(self, split):
        """Per-example dicts (labels, image_id, patient_id, age, sex, view, follow_up) in
        pipeline order: for label counts and subgroup reports."""
        columns = self.columns(split)
        values = [columns[k].tolist() for k in FEATURES]
        return [{"labels": y, **dict(zip(FEATURES, row))}
                for y, row in zip(columns["labels"], zip(*values))]

    @contextlib.contextmanager
    def reading(self):
        """Runs a block that reads this source (fit, predict): a prepared shard found damaged
        while reading (a corrupt or truncated record, a split that ends before its declared
        count) becomes one verify.DamagedDataError naming the shard, not TensorFlow's
        traceback, which names none."""
        try:
            yield
        except (tf.errors.DataLossError, tf.errors.FailedPreconditionError) as e:
            if not self.prepared or (isinstance(e, tf.errors.FailedPreconditionError)
                                     and "elements but contained only" not in str(e)):
                raise
            damage = verify.locate(os.fspath(self.builder.data_dir))
            if damage is None:
                raise
            raise damage from e

    def read(self, split, input_context=None):
        """(records, decode): a tf.data.Dataset of stored examples of `split` in file order (this
        input pipeline's share of them under `input_context`), and the function that maps a
        record to ({"image": uint8 S×S×1, "labels": uint8 [14], features...}, ok). `ok` is
        False only for an undecodable raw Kaggle file (warned), which the pipeline drops."""
        self.check_split(split)
        if self.prepared:
            return _read_prepared(self, split, input_context)
        return _read_kaggle(self, split, input_context)


def open_source(data_dir, *, image_size=None, val_fraction=0.1, seed=0, verify_data=False):
    """Opens a prepared TFDS dir or a raw Kaggle folder.

    Args:
        data_dir: what `prepare` wrote (or a version dir in it), or a Kaggle-layout folder.
        image_size: picks the prepared config of that size (required for a raw folder, which
            is resized on the fly). A prepared dir without that size is an error: the images
            would otherwise be silently resized away.
        val_fraction, seed: the patient-wise validation split of a raw folder (a prepared
            dataset fixed its split when it was prepared).
        verify_data: also compare every prepared shard's checksum with prepare's record
            (sizes and record counts are always checked: verify.check).

    Raises verify.DamagedDataError for a prepared dataset that is not what prepare wrote.
    """
    data_dir = os.fspath(data_dir)
    if is_prepared(data_dir):
        builder = open_prepared(data_dir, image_size, verify_data=verify_data)
        splits = builder.info.splits
        return Source(data_dir, int(builder.info.features["image"].shape[0]),
                      {s: splits[s].num_examples for s in SPLITS if s in splits},
                      builder=builder)
    if image_size is None:
        raise ValueError(f"{data_dir}: reading a raw Kaggle folder needs image_size")
    index = metadata.build_index(data_dir, val_fraction=val_fraction, seed=seed)
    counts = index.frame["split"].value_counts()
    return Source(data_dir, int(image_size), {s: int(counts.get(s, 0)) for s in SPLITS},
                  index=index)


# --- reading ---------------------------------------------------------------------------------

def _prepared_columns(source, split):
    ds = source.builder.as_dataset(split=split, shuffle_files=False,
                                   decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: {k: v for k, v in ex.items() if k != "image"}).batch(8_192)
    parts = list(tfds.as_numpy(ds))
    if not parts:
        return _empty_columns()
    columns = {k: np.concatenate([p[k] for p in parts]) for k in ("labels", *FEATURES)}
    for key in _TEXT_FEATURES:
        columns[key] = np.char.decode(columns[key].astype(bytes), "utf-8")
    return columns


def _empty_columns():
    return {"labels": np.zeros((0, labels.NUM_CLASSES), np.uint8),
            **{k: np.zeros(0, str if k in _TEXT_FEATURES else np.int32) for k in FEATURES}}


def _kaggle_columns(source, split):
    frame = source.index.frame[source.index.frame["split"] == split]
    return {"labels": frame[list(labels.LABELS)].to_numpy(np.uint8),
            **{k: frame[k].to_numpy(str if k in _TEXT_FEATURES else np.int32)
               for k in FEATURES}}


def _read_prepared(source, split, input_context):
    builder = source.builder
    num_files = builder.info.splits[split].num_shards
    # TFDS shards by file; with fewer files than input pipelines, shard by element instead.
    by_file = input_context is not None and num_files >= input_context.num_input_pipelines
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,  # order must not depend on the process: see input_pipeline
        decoders={"image": tfds.decode.SkipDecoding()},  # decode after shuffling, in parallel
        read_config=tfds.ReadConfig(input_context=input_context if by_file else None),
    )
    if by_file:
        # TFDS asserts a split's count only when it reads all of it; this pipeline reads every
        # num_input_pipelines-th file from its own (TFDS's file sharding), so it asserts its
        # share: a shard that ends early stops the run (see Source.reading), never a short
        # epoch that Keras would only warn about.
        lengths = builder.info.splits[split].shard_lengths
        ds = ds.apply(tf.data.experimental.assert_cardinality(sum(
            lengths[input_context.input_pipeline_id::input_context.num_input_pipelines])))
    else:
        ds = _shard(ds, input_context)
    size = source.image_size
    # Datasets prepared before version 1.1.0, or with image_encoding "png", hold PNG.
    is_png = isinstance(builder.info.features["image"], tfds.features.Image)

    def decode(example):
        if is_png:
            image = tf.io.decode_png(example["image"], channels=1)
        else:
            image = tf.io.decode_raw(example["image"], tf.uint8)
        image = tf.reshape(image, (size, size, 1))
        return {**example, "image": image}, tf.constant(True)

    return ds, decode


def _read_kaggle(source, split, input_context):
    """The slow path: decode and resize raw Kaggle PNGs on the fly (no prepare step)."""
    frame = source.index.frame[source.index.frame["split"] == split]
    ds = tf.data.Dataset.from_tensor_slices(
        {"image_path": frame["path"].to_numpy(str), **source.columns(split)})
    ds = _shard(ds, input_context)
    size = source.image_size

    def load(path, image_id):
        try:
            with open(path.decode(), "rb") as f:
                image, _ = images.preprocess(f.read(), image_id.decode(), size)
            return image, True
        except Exception as e:  # noqa: BLE001 - one bad file must not stop a long job
            reason = e if isinstance(e, image_header.ImageError) else \
                f"{path.decode(errors='replace')}: {type(e).__name__}: {e}"
            tf.get_logger().warning("skipping %s", reason)
            return np.zeros((size, size, 1), np.uint8), False

    def decode(example):
        image, ok = tf.numpy_function(
            load, [example["image_path"], example["image_id"]], [tf.uint8, tf.bool])
        image.set_shape((size, size, 1))
        return {**example, "image": image}, ok

    return ds, decode


def _shard(ds, input_context):
    if input_context is None or input_context.num_input_pipelines == 1:
        return ds
    return ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
