"""tf.data pipelines over a prepared `nih_chest_xray14` TFDS dir (fast) or a raw Kaggle folder (slow).

Images leave here as uint8 S×S×1 and labels as float32 multi-hot: normalisation lives in the
model, so that training, export and serving share one preprocessing.

Training data is a pure function of (seed, epoch): each epoch is shuffled with its own seed and
augmented with stateless ops keyed by (seed, epoch, position). A run resumed at epoch k by
BackupAndRestore therefore sees exactly the batches the uninterrupted run saw.
"""

import functools
import glob
import json
import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cxr_tf import labels
from cxr_tf.data import images, metadata

DATASET_NAME = "nih_chest_xray14"
SPLITS = ("train", "validation", "test")
AUTOTUNE = tf.data.AUTOTUNE
_SHUFFLE_BUFFER = 16_384  # examples, at most...
_SHUFFLE_BYTES = 1 << 30  # ...and about this much image data (S² bytes each, or less as PNG)


# --- locating data -------------------------------------------------------------------------

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
        raise FileNotFoundError(
            f"{data_dir}: no prepared {DATASET_NAME} dataset{size} "
            f"(run: python -m cxr_tf.prepare --data_dir=KAGGLE_DIR --output_dir={data_dir})"
        )
    exact = [p for p in found if os.path.basename(os.path.dirname(p)) == str(image_size)]
    if len(exact) == 1:
        return exact[0]
    raise ValueError(f"{data_dir}: several prepared datasets match, pick one: {found}")


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


def is_prepared(data_dir):
    """A TFDS dir written by prepare (or one of its version dirs), not a raw Kaggle folder."""
    return (os.path.isfile(os.path.join(data_dir, "dataset_info.json"))
            or os.path.isdir(os.path.join(data_dir, DATASET_NAME)))


def open_prepared(data_dir, image_size=None):
    """A read-only TFDS builder for the prepared dataset; needs no cxr_tf builder code."""
    return tfds.builder_from_directory(find_prepared(data_dir, image_size))


def prepared_image_size(builder):
    return int(builder.info.features["image"].shape[0])


# --- reading ---------------------------------------------------------------------------------

def _read_prepared(data_dir, split, image_size, input_context):
    builder = open_prepared(data_dir, image_size)
    num_files = builder.info.splits[split].num_shards
    # TFDS shards by file; with fewer files than input pipelines, shard by element instead.
    by_file = input_context is not None and num_files >= input_context.num_input_pipelines
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,  # order must not depend on the process: see the module docstring
        decoders={"image": tfds.decode.SkipDecoding()},  # decode after shuffling, in parallel
        read_config=tfds.ReadConfig(input_context=input_context if by_file else None),
    )
    if input_context is not None and not by_file and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    size = prepared_image_size(builder)
    # Datasets prepared before version 1.1.0, or with --image_encoding=png, hold PNG.
    is_png = isinstance(builder.info.features["image"], tfds.features.Image)

    def decode(example):
        if is_png:
            image = tf.io.decode_png(example["image"], channels=1)
        else:
            image = tf.io.decode_raw(example["image"], tf.uint8)
        image = tf.reshape(image, (size, size, 1))
        return {**example, "image": image}, tf.constant(True)

    return ds, decode, size


def _read_kaggle(data_dir, split, image_size, val_fraction, seed):
    """The slow path: decode and resize raw Kaggle PNGs on the fly (no prepare step)."""
    if image_size is None:
        raise ValueError(f"{data_dir}: reading a raw Kaggle folder needs image_size")
    index = metadata.build_index(data_dir, val_fraction=val_fraction, seed=seed)
    frame = index.frame[index.frame["split"] == split]
    columns = {
        "image_path": frame["path"].to_numpy(str),
        "image_id": frame["image_id"].to_numpy(str),
        "labels": frame[list(labels.LABELS)].to_numpy(np.uint8),
        "patient_id": frame["patient_id"].to_numpy(np.int32),
        "age": frame["age"].to_numpy(np.int32),
        "sex": frame["sex"].to_numpy(str),
        "view": frame["view"].to_numpy(str),
        "follow_up": frame["follow_up"].to_numpy(np.int32),
    }
    ds = tf.data.Dataset.from_tensor_slices(columns)

    def load(path, image_id):
        try:
            with open(path.decode(), "rb") as f:
                image, _ = images.preprocess(f.read(), image_id.decode(), image_size)
            return image, True
        except (images.ImageError, OSError) as e:
            tf.get_logger().warning("skipping %s", e)
            return np.zeros((image_size, image_size, 1), np.uint8), False

    def decode(example):
        image, ok = tf.numpy_function(
            load, [example["image_path"], example["image_id"]], [tf.uint8, tf.bool]
        )
        image.set_shape((image_size, image_size, 1))
        return {**example, "image": image}, ok

    return ds, decode, image_size


# --- augmentation ----------------------------------------------------------------------------

def augment(images, seed, *, hflip=False, max_rotation_deg=7.0, scale=(0.9, 1.1),
            max_shift=0.04, max_brightness=0.1, contrast=(0.9, 1.1)):
    """Mild, label-preserving augmentation of a uint8 [B,S,S,1] batch with stateless ops.

    One affine warp per image does crop/scale, rotation and shift; then brightness and
    contrast. Each image draws its own parameters from `seed` (shape [2]). No horizontal flip
    by default: the heart's side matters (dextrocardia is a finding).

    The whole batch is one XLA-compiled function: XLA fuses the warp's gathers and arithmetic
    into one vectorised loop, ~3x faster per core than TF's ImageProjectiveTransformV3 kernel
    (which XLA cannot compile), with the same result to float rounding (tools/bench_input.py,
    tests/test_input_pipeline.py).
    """
    return _augment(images, seed, hflip=hflip, max_rotation_deg=float(max_rotation_deg),
                    scale=tuple(map(float, scale)), max_shift=float(max_shift),
                    max_brightness=float(max_brightness), contrast=tuple(map(float, contrast)))


@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _augment(images, seed, *, hflip, max_rotation_deg, scale, max_shift, max_brightness,
             contrast):
    shape = tf.shape(images)
    n, size = shape[0], tf.cast(shape[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 6)

    def uniform(i, low, high, extra=()):
        return tf.random.stateless_uniform([n, *extra], seeds[i], low, high)

    angle = uniform(0, -1.0, 1.0) * max_rotation_deg * math.pi / 180
    zoom = uniform(1, scale[0], scale[1])
    shift = uniform(2, -max_shift, max_shift, (2,)) * size
    # Output pixel (x, y) samples input at A·(x, y) + b; rotate and zoom about the centre.
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    centre = (size - 1.0) / 2.0
    b_x = centre - cos * centre + sin * centre + shift[:, 0]
    b_y = centre - sin * centre - cos * centre + shift[:, 1]
    warped = warp_affine(images, tf.stack([cos, -sin, b_x, sin, cos, b_y], axis=1))
    if hflip:
        flip = uniform(3, 0.0, 1.0) < 0.5
        warped = tf.where(flip[:, None, None, None], tf.reverse(warped, axis=[2]), warped)
    brightness = uniform(4, -max_brightness, max_brightness)[:, None, None, None] * 255
    factor = uniform(5, contrast[0], contrast[1])[:, None, None, None]
    mean = tf.reduce_mean(warped, axis=[1, 2, 3], keepdims=True)
    out = (warped - mean) * factor + mean + brightness
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def warp_affine(images, transforms):
    """Bilinear affine warp of [B,H,W,1] images, zero outside: output pixel (x, y) reads the
    input at (t0·x + t1·y + t2, t3·x + t4·y + t5), t = transforms[b] ([B, 6]). The same
    convention and result as ImageProjectiveTransformV3 (BILINEAR, CONSTANT 0), in plain ops
    that XLA can compile. Returns float32."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32),
                         indexing="ij")
    t = transforms[:, :, None, None]
    src_x = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    src_y = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    x0, y0 = tf.floor(src_x), tf.floor(src_y)
    fx, fy = src_x - x0, src_y - y0
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    flat = tf.reshape(tf.cast(images, tf.float32), [-1])
    base = (tf.range(batch) * height * width)[:, None, None]

    def pixel(y, x):
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        row, column = tf.clip_by_value(y, 0, height - 1), tf.clip_by_value(x, 0, width - 1)
        return tf.where(inside, tf.gather(flat, base + row * width + column), 0.0)

    top = pixel(y0, x0) * (1 - fx) + pixel(y0, x0 + 1) * fx
    bottom = pixel(y0 + 1, x0) * (1 - fx) + pixel(y0 + 1, x0 + 1) * fx
    return (top * (1 - fy) + bottom * fy)[..., None]


# --- the pipeline ----------------------------------------------------------------------------

def make_dataset(data_dir, split, *, batch_size, training, image_size=None, augment_images=None,
                 hflip=False, seed=0, epoch=0, epochs=None, steps_per_epoch=None,
                 deterministic=False, input_context=None, cache=False, with_metadata=False,
                 add_no_finding=False, val_fraction=0.1, shuffle_buffer=None):
    """Batches of (image uint8 [B,S,S,1], labels float32 [B,14]) for one split.

    training=True: epochs `epoch` .. `epochs`-1 back to back, each shuffled with its own seed,
    augmented (unless augment_images=False), cut to `steps_per_epoch` full batches.
    training=False: one pass in file order, no augmentation, last partial batch kept.
    with_metadata=True yields a dict (image, labels, image_id, patient_id, age, sex, view).
    add_no_finding appends a 15th "No Finding" target (1 when no finding is present).
    input_context: a tf.distribute.InputContext; batch_size is then the global batch and each
    replica gets batch_size / num_replicas_in_sync, read from its own share of the files.
    shuffle_buffer: examples; default 16,384, fewer above 256 px so it holds about 1 GiB.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    prepared = is_prepared(data_dir)
    if prepared:
        ds, decode, size = _read_prepared(data_dir, split, image_size, input_context)
    else:
        ds, decode, size = _read_kaggle(data_dir, split, image_size, val_fraction, seed)
        if input_context is not None and input_context.num_input_pipelines > 1:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    augment_images = training if augment_images is None else augment_images
    if shuffle_buffer is None:
        shuffle_buffer = max(1_024, min(_SHUFFLE_BUFFER, _SHUFFLE_BYTES // size**2))

    def to_example(example):
        example, ok = decode(example)
        image = example["image"]
        target = tf.cast(example["labels"], tf.float32)
        if add_no_finding:
            target = tf.concat([target, [1.0 - tf.reduce_max(target)]], axis=0)
        if with_metadata:
            keep = ("image_id", "patient_id", "age", "sex", "view")
            return {"image": image, "labels": target, **{k: example[k] for k in keep}}, ok
        return (image, target), ok

    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0

    def finish(examples, epoch_number):
        examples = examples.map(to_example, num_parallel_calls=AUTOTUNE)
        if not prepared:
            # Only a raw Kaggle folder can hold an undecodable file here (prepare skipped and
            # counted them): drop it, with the warning logged, rather than train on a blank.
            # (Not filtering prepared data keeps its cardinality known to Keras.)
            examples = examples.filter(_is_ok)
        batches = examples.map(_without_flag).batch(
            batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE)
        if not augment_images:
            return batches
        # Augmentation keyed by (seed, epoch, batch, input pipeline): a pure function of them.
        key = functools.partial(_batch_seed, seed, epoch_number, pipeline_id)
        return batches.enumerate().map(
            lambda i, batch: _augment_batch(batch, key(i), hflip), num_parallel_calls=AUTOTUNE)

    # Order (as big_vision): read -> cache -> shuffle -> repeat -> map -> batch -> prefetch.
    # The cache and the shuffle buffer hold stored bytes (raw pixels or PNG); decoding after
    # shuffling lets decode + augment run in parallel on all cores.
    if cache:
        ds = ds.cache()
    if training:
        # "Repeat" is a concatenation of seeded epochs rather than ds.repeat(): the batches
        # of epoch e then depend only on (seed, e), which is what makes a resume exact.
        def one_epoch(e):
            shuffled = ds.shuffle(shuffle_buffer, seed=seed * 1_000_003 + e + 1,
                                  reshuffle_each_iteration=False)
            batches = finish(shuffled, e)
            return batches.take(steps_per_epoch) if steps_per_epoch else batches

        epochs = epoch + 1 if epochs is None else epochs
        if epochs <= epoch:
            raise ValueError(f"epochs ({epochs}) must exceed the first epoch ({epoch})")
        ds = functools.reduce(tf.data.Dataset.concatenate,
                              [one_epoch(e) for e in range(epoch, epochs)])
    else:
        ds = finish(ds, 0)
    options = tf.data.Options()
    options.deterministic = bool(deterministic or not training)
    # Sharding was done above; stop tf.distribute from sharding a second time.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(AUTOTUNE)


def _is_ok(example, ok):
    return ok


def _without_flag(example, ok):
    return example


def _batch_seed(seed, epoch, pipeline_id, batch_index):
    return tf.stack([tf.constant(seed * 1_000_003 + epoch, tf.int64),
                     tf.cast(batch_index, tf.int64) * 1_024 + pipeline_id])


def _augment_batch(batch, seed, hflip):
    if isinstance(batch, dict):
        return {**batch, "image": augment(batch["image"], seed, hflip=hflip)}
    images, target = batch
    return augment(images, seed, hflip=hflip), target


def split_size(data_dir, split, image_size=None, val_fraction=0.1, seed=0):
    """Number of examples in a split (prepared: from dataset_info; raw: from the metadata)."""
    if is_prepared(data_dir):
        return open_prepared(data_dir, image_size).info.splits[split].num_examples
    index = metadata.build_index(data_dir, val_fraction=val_fraction, seed=seed)
    return int((index.frame["split"] == split).sum())


def split_metadata(data_dir, split, image_size=None, val_fraction=0.1, seed=0):
    """Per-example records of a split in pipeline order (labels, patient, age, sex, view),
    read without decoding images: for label counts, pos_weight and subgroup reports."""
    if is_prepared(data_dir):
        builder = open_prepared(data_dir, image_size)
        ds = builder.as_dataset(split=split, shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
        rows = [{k: v for k, v in ex.items() if k != "image"} for ex in tfds.as_numpy(ds)]
        for row in rows:
            for key in ("image_id", "sex", "view"):
                row[key] = row[key].decode()
        return rows
    index = metadata.build_index(data_dir, val_fraction=val_fraction, seed=seed)
    frame = index.frame[index.frame["split"] == split]
    return [
        {"image_id": r["image_id"], "patient_id": r["patient_id"], "age": r["age"],
         "sex": r["sex"], "view": r["view"], "follow_up": r["follow_up"],
         "labels": np.array([r[name] for name in labels.LABELS], np.uint8)}
        for r in frame.to_dict("records")
    ]


def read_prepare_report(data_dir):
    path = os.path.join(data_dir, "prepare_report.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
