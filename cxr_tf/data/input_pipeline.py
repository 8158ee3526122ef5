"""tf.data input pipelines, the big_vision way: read a split from a `source.Source`, then
`make_for_train(...)` or `make_for_eval(...)`; a run's choices come in as one `TrainOptions`
holding functions (`augment`, `target_fn`) and names (`features`) rather than booleans.

Images leave here as uint8 S×S×1 and labels as float32 multi-hot: normalisation lives in the
model, so that training, export and serving share one preprocessing.

Training data is a pure function of (seed, epoch): each epoch is shuffled with its own seed and
augmented with stateless ops keyed by (seed, epoch, position). A run resumed at epoch k by
BackupAndRestore therefore sees exactly the batches the uninterrupted run saw.
"""

import dataclasses
import math
import typing

import tensorflow as tf

from cxr_tf.data import source as source_lib

AUTOTUNE = tf.data.AUTOTUNE
_SHUFFLE_BUFFER = 16_384  # examples, at most...
_SHUFFLE_BYTES = 1 << 30  # ...and about this much image data (S² bytes each, or less as PNG)


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


def random_flip(images, seed):
    """A random horizontal flip alone (each image with probability 1/2) of a uint8 [B,S,S,1]
    batch, drawn statelessly from `seed` (shape [2]): CheXNet's only augmentation. The pixels
    are moved, never resampled, so the images stay exactly the stored ones or their mirror."""
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


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

def with_no_finding(target):
    """Appends the 15th "No Finding" target (1 when no finding is present) to [..., 14] labels:
    the `target_fn` of a run trained with a No Finding output."""
    target = tf.convert_to_tensor(target, tf.float32)
    return tf.concat([target, 1.0 - tf.reduce_max(target, axis=-1, keepdims=True)], axis=-1)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """A run's choices for its training stream (everything but its length and batch size).

    Args:
        seed: seeds each epoch's shuffle and each batch's augmentation.
        augment: None, or `fn(images uint8 [B,S,S,1], seed int64 [2]) -> images`, e.g.
            `functools.partial(augment, hflip=True)`; called once per batch with a seed from
            (seed, epoch, batch, input pipeline).
        target_fn: None (the 14 labels as float32), or `fn(labels [14]) -> target`, e.g.
            `with_no_finding`.
        features: metadata names (source.FEATURES) to yield with each image; then elements
            are dicts {"image", "labels", *features} instead of (image, target).
        cache: keep the stored images (raw pixels or PNG) in memory after the first epoch.
        deterministic: keep element order exact under parallel maps (bitwise-repeatable runs).
        shuffle_buffer: examples; default 16,384, fewer above 256 px so it holds about 1 GiB.
    """

    seed: int = 0
    augment: typing.Callable | None = None
    target_fn: typing.Callable | None = None
    features: tuple = ()
    cache: bool = False
    deterministic: bool = False
    shuffle_buffer: int | None = None


@dataclasses.dataclass(frozen=True)
class _Epochs:
    """The training schedule _pipeline runs: epochs first..end-1 of `steps` batches each
    (None: the whole split), shuffled within `shuffle_buffer` examples."""

    first: int
    end: int
    steps: int | None
    shuffle_buffer: int
    pipeline_id: int


def make_for_train(source, split="train", *, batch_size, epochs, initial_epoch=0,
                   steps_per_epoch=None, options=TrainOptions(), input_context=None):
    """Training batches: epochs `initial_epoch` .. `epochs`-1 back to back (as Keras's fit
    counts them), each shuffled with its own seed and cut to `steps_per_epoch` full batches.

    Args:
        source: a `source.Source` (open_source), opened once per run.
        batch_size: the global batch; under `input_context` (a tf.distribute.InputContext)
            each replica gets batch_size / num_replicas_in_sync from its own share of files.
        options: the run's TrainOptions (seed, augmentation, targets, features, cache, ...).
    """
    if epochs <= initial_epoch:
        raise ValueError(f"epochs ({epochs}) must exceed initial_epoch ({initial_epoch})")
    shuffle_buffer = options.shuffle_buffer
    if shuffle_buffer is None:
        shuffle_buffer = max(1_024, min(_SHUFFLE_BUFFER, _SHUFFLE_BYTES // source.image_size**2))
    schedule = _Epochs(initial_epoch, epochs, steps_per_epoch, shuffle_buffer,
                       input_context.input_pipeline_id if input_context is not None else 0)
    records, decode = source.read(split, input_context)
    return _pipeline(
        records, _parse_fn(source, decode, options.target_fn, options.features),
        batch_size=_replica_batch(batch_size, input_context),
        drop_undecodable=not source.prepared, options=options, schedule=schedule)


def make_for_eval(source, split, *, batch_size, target_fn=None, features=(),
                  input_context=None):
    """One pass over a split in file order (the order of `source.labels(split)`): no shuffle,
    no augmentation, the last partial batch kept. Arguments as in `make_for_train` and
    `TrainOptions`."""
    records, decode = source.read(split, input_context)
    return _pipeline(records, _parse_fn(source, decode, target_fn, features),
                     batch_size=_replica_batch(batch_size, input_context),
                     drop_undecodable=not source.prepared)


def _pipeline(records, parse, *, batch_size, drop_undecodable, options=None, schedule=None):
    """The one place that fixes the order of the steps, as big_vision's input pipeline does:
    filter → cache → shuffle → repeat → map → batch → prefetch.

    schedule=None: one pass in file order (evaluation: options None, so no cache, no
    augmentation, a deterministic order). schedule: training epochs first..end-1; the repeat
    is a loop of epochs around shuffle, map and batch, so that no batch straddles two epochs
    and each epoch depends on (seed, epoch) only. Each step says why it stands where it does
    (hence the length).
    """
    options = options or TrainOptions(deterministic=True)
    seed, augment = options.seed, options.augment
    # filter: a split arrives as its own records (prepare wrote each split apart), so nothing
    # is dropped before decoding; an undecodable raw file is found only by decoding (below).
    # cache: first, so it holds the compact stored bytes, and every epoch reshuffles the same
    # cached records; nothing random is cached.
    if options.cache:
        records = records.cache()

    def one_epoch(epoch):
        examples = records
        if schedule is not None:
            # shuffle: before decoding, so the buffer holds stored bytes, not decoded images;
            # seeded by (seed, epoch) alone, never by how many epochs this process has run.
            # The graph-level seed is cleared in this function's graph: tf.data pairs it with
            # the op seed, and a global seed of 0 with a tensor op seed fails while tracing
            # (`seeds == (0, 0)` in random_seed.get_seed; tensorflow#17284). The order then
            # does not depend on the global seed either.
            tf.random.set_seed(None)
            examples = examples.shuffle(schedule.shuffle_buffer, seed=_epoch_seed(seed, epoch),
                                        reshuffle_each_iteration=False)
        # map: decode after shuffling, in parallel on all cores.
        examples = examples.map(parse, num_parallel_calls=AUTOTUNE)
        if drop_undecodable:
            # Only a raw Kaggle folder can hold an undecodable file (prepare skipped and counted
            # them): drop it, warned, rather than train on a blank. Not filtering prepared
            # data keeps its cardinality known to Keras.
            examples = examples.filter(_is_ok)
        # batch: before augmentation, which is one XLA-compiled call per batch.
        batches = examples.map(_without_flag).batch(
            batch_size, drop_remainder=schedule is not None, num_parallel_calls=AUTOTUNE)
        if schedule is not None and schedule.steps:
            batches = batches.take(schedule.steps)
        if augment is None:
            return batches

        def augment_batch(index, batch):
            return _augment_batch(batch, augment,
                                  _batch_seed(seed, epoch, schedule.pipeline_id, index))

        return batches.enumerate().map(augment_batch, num_parallel_calls=AUTOTUNE)

    if schedule is None:
        ds = one_epoch(0)
    else:
        # repeat: one dataset of epochs rather than ds.repeat(), whose k-th reshuffle depends
        # on the k-1 before it in this process: here epoch e is a function of (seed, e), so a
        # fresh pipeline started at epoch k (a resumed run) yields the same batches.
        ds = tf.data.Dataset.range(schedule.first, schedule.end).flat_map(one_epoch)
    return _finish(ds, options.deterministic)


def _finish(ds, deterministic):
    """The last steps of every pipeline: its options, then prefetch."""
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    # The source sharded by input pipeline; stop tf.distribute from sharding a second time.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # prefetch: last, so the whole pipeline runs ahead of the training step.
    return ds.with_options(options).prefetch(AUTOTUNE)


def _parse_fn(source, decode, target_fn, features):
    """record -> ((image, target) or {"image", "labels", *features}, ok)."""
    unknown = sorted(set(features) - set(source_lib.FEATURES))
    if unknown:
        raise ValueError(f"features must be among {source_lib.FEATURES}, got {unknown}")

    def parse(record):
        example, ok = decode(record)
        target = tf.cast(example["labels"], tf.float32)
        if target_fn is not None:
            target = target_fn(target)
        if features:
            return {"image": example["image"], "labels": target,
                    **{k: example[k] for k in features}}, ok
        return (example["image"], target), ok

    return parse


def _replica_batch(batch_size, input_context):
    if input_context is None:
        return batch_size
    return input_context.get_per_replica_batch_size(batch_size)


def _is_ok(element, ok):
    return ok


def _without_flag(element, ok):
    return element


def _epoch_seed(seed, epoch):
    return tf.constant(seed * 1_000_003 + 1, tf.int64) + tf.cast(epoch, tf.int64)


def _batch_seed(seed, epoch, pipeline_id, batch_index):
    return tf.stack([tf.constant(seed * 1_000_003, tf.int64) + tf.cast(epoch, tf.int64),
                     tf.cast(batch_index, tf.int64) * 1_024 + pipeline_id])


def _augment_batch(batch, augment, seed):
    if isinstance(batch, dict):
        return {**batch, "image": augment(batch["image"], seed)}
    images, target = batch
    return augment(images, seed), target
