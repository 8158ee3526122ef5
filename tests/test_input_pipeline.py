"""cxr_tf.data.source (a dataset opened once) and cxr_tf.data.input_pipeline (make_for_train /
make_for_eval, augmentation) on the session's tiny synthetic dataset."""

import functools
import os

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import labels
from cxr_tf.data import input_pipeline, metadata, source


@pytest.fixture(scope="module")
def prepared(prepared_dir):
    return source.open_source(prepared_dir)


def _first_batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def _ids(ds):
    return [i.decode() for b in ds for i in b["image_id"].numpy()]


# --- source ----------------------------------------------------------------------------------

def test_prepared_source_sizes_and_metadata_match_the_csv(kaggle_dir, prepared):
    index = metadata.build_index(str(kaggle_dir))
    counts = index.frame["split"].value_counts()
    assert prepared.prepared and prepared.image_size == 32
    assert prepared.split_sizes == {s: int(counts[s]) for s in ("train", "validation", "test")}
    expected = index.frame.set_index("image_id")
    rows = prepared.rows("validation")
    assert len(rows) == prepared.split_sizes["validation"]
    for row in rows:
        truth = expected.loc[row["image_id"]]
        np.testing.assert_array_equal(row["labels"], truth[list(labels.LABELS)].to_numpy())
        assert (row["patient_id"], row["sex"], row["view"]) == \
            (truth["patient_id"], truth["sex"], truth["view"])
    np.testing.assert_array_equal(prepared.labels("validation"),
                                  np.stack([r["labels"] for r in rows]))


def test_a_split_is_read_once_per_source(prepared_dir, monkeypatch):
    opened = source.open_source(prepared_dir)
    calls = []
    as_dataset = opened.builder.as_dataset
    monkeypatch.setattr(opened.builder, "as_dataset",
                        lambda **kw: calls.append(kw["split"]) or as_dataset(**kw))
    first = opened.labels("test")
    opened.rows("test")
    opened.labels("test")
    assert calls == ["test"]
    assert first.shape == (opened.split_sizes["test"], 14) and first.dtype == np.uint8


def test_raw_folder_parses_the_csv_once_per_run(kaggle_dir, monkeypatch):
    calls = []
    read = metadata.read_data_entry
    monkeypatch.setattr(metadata, "read_data_entry", lambda path: calls.append(path) or read(path))
    raw = source.open_source(kaggle_dir, image_size=32, val_fraction=0.2, seed=1)
    for split in ("train", "validation", "test"):
        raw.labels(split)
        input_pipeline.make_for_eval(raw, split, batch_size=8)
    assert len(calls) == 1
    assert sum(raw.split_sizes.values()) == len(raw.index.frame)


def test_raw_folder_needs_an_image_size(kaggle_dir):
    with pytest.raises(ValueError, match=f"^{kaggle_dir}: reading a raw Kaggle folder needs "
                                         "image_size$"):
        source.open_source(kaggle_dir)


def test_unknown_and_missing_splits_are_clear_errors(prepared):
    with pytest.raises(ValueError, match=r"^split must be one of \('train', 'validation', "
                                         r"'test'\), got 'val'$"):
        prepared.labels("val")
    holed = source.Source("DIR", 32, {"train": 3, "test": 2}, builder=prepared.builder)
    with pytest.raises(ValueError, match="^DIR: has no 'validation' split "
                                         r"\(it holds train, test\)$"):
        holed.read("validation")


def test_missing_prepared_size_is_a_clear_error(prepared_dir):
    with pytest.raises(FileNotFoundError, match="no prepared nih_chest_xray14 dataset at "
                                                "image_size=224"):
        source.open_source(prepared_dir, image_size=224)


def test_an_older_version_beside_the_new_one_is_ignored(prepared_dir, tmp_path):
    import shutil

    version_dir = source.find_prepared(str(prepared_dir))
    config_dir, version = os.path.split(version_dir)
    copy = tmp_path / "nih_chest_xray14" / os.path.basename(config_dir)
    shutil.copytree(version_dir, copy / version)
    shutil.copytree(version_dir, copy / "1.0.0")
    assert source.find_prepared(str(tmp_path)) == str(copy / version)


# --- make_for_eval ---------------------------------------------------------------------------

def test_shapes_dtypes_and_label_alignment(kaggle_dir, prepared):
    ds = input_pipeline.make_for_eval(prepared, "train", batch_size=4, features=("image_id",))
    index = metadata.build_index(str(kaggle_dir))
    expected = index.frame.set_index("image_id")[list(labels.LABELS)]
    seen = 0
    for batch in ds:
        assert set(batch) == {"image", "labels", "image_id"}
        assert batch["image"].dtype == tf.uint8 and batch["image"].shape[1:] == (32, 32, 1)
        assert batch["labels"].dtype == tf.float32 and batch["labels"].shape[1:] == (14,)
        for image_id, row in zip(batch["image_id"].numpy(), batch["labels"].numpy()):
            np.testing.assert_array_equal(row, expected.loc[image_id.decode()].to_numpy())
            seen += 1
    assert seen == (index.frame["split"] == "train").sum()


def test_metadata_order_matches_pipeline_order(prepared):
    ids = _ids(input_pipeline.make_for_eval(prepared, "validation", batch_size=3,
                                            features=("image_id",)))
    assert ids == [r["image_id"] for r in prepared.rows("validation")]
    assert len(ids) == prepared.split_sizes["validation"] > 3  # the last batch is partial


def test_unknown_feature_is_a_clear_error(prepared):
    with pytest.raises(ValueError, match=r"features must be among .*, got \['patient'\]"):
        input_pipeline.make_for_eval(prepared, "test", batch_size=4, features=("patient",))


def test_no_finding_target(prepared):
    seen = 0
    for _, y in input_pipeline.make_for_eval(prepared, "train", batch_size=8,
                                             target_fn=input_pipeline.with_no_finding):
        y = y.numpy()
        assert y.shape[1] == 15
        np.testing.assert_array_equal(y[:, 14], 1.0 - y[:, :14].max(axis=1))
        seen += (y[:, 14] == 1).sum()
    assert seen == (prepared.labels("train").max(axis=1) == 0).sum() > 0
    # Eagerly too: [0, 1] has a finding, [0, 0] has none.
    np.testing.assert_array_equal(input_pipeline.with_no_finding(np.array([[0, 1], [0, 0]])),
                                  [[0, 1, 0], [0, 0, 1]])


def test_input_context_shards_are_disjoint_and_cover_the_split(prepared):
    ids = []
    for pipeline_id in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
        ds = input_pipeline.make_for_eval(prepared, "validation", batch_size=4,
                                          features=("image_id",), input_context=ctx)
        assert all(b["image"].shape[0] <= 2 for b in ds)  # per-replica batch = 4 / 2
        ids.append(_ids(ds))
    assert not set(ids[0]) & set(ids[1])
    assert len(ids[0]) + len(ids[1]) == prepared.split_sizes["validation"]


def _by_image_id(src, split, key):
    """{image_id: the example's `key` ("labels", "image")} of one split, via make_for_eval."""
    ds = input_pipeline.make_for_eval(src, split, batch_size=16, features=("image_id",))
    return {i: x for b in ds for i, x in zip(b["image_id"].numpy(), b[key].numpy())}


def _assert_same(a, b):
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_raw_kaggle_folder_reads_same_labels_as_prepared(kaggle_dir, prepared):
    raw = source.open_source(kaggle_dir, image_size=32)
    _assert_same(_by_image_id(raw, "validation", "labels"),
                 _by_image_id(prepared, "validation", "labels"))


def test_png_and_raw_storage_read_back_the_same_pixels(kaggle_dir, prepared, tmp_path):
    from cxr_tf.datasets.config import PrepareConfig
    from cxr_tf.datasets.nih_chest_xray14 import build

    report = build.prepare(PrepareConfig(data_dir=kaggle_dir, output_dir=tmp_path, image_size=32,
                                         image_encoding="png", num_workers=0))
    assert report["dataset_dir"].split(os.sep)[-2] == "32_png"
    png_source = source.open_source(tmp_path)
    assert type(prepared.builder.info.features["image"]).__name__ == "Tensor"
    assert type(png_source.builder.info.features["image"]).__name__ == "Image"
    _assert_same(_by_image_id(prepared, "train", "image"),
                 _by_image_id(png_source, "train", "image"))


# --- make_for_train --------------------------------------------------------------------------

def _train_stream(src, initial_epoch, seed=0, augment=input_pipeline.augment):
    return input_pipeline.make_for_train(
        src, batch_size=4, initial_epoch=initial_epoch, epochs=3,
        steps_per_epoch=src.split_sizes["train"] // 4,
        options=input_pipeline.TrainOptions(seed=seed, deterministic=True, augment=augment))


def test_training_stream_is_a_function_of_seed_and_epoch(prepared):
    steps = prepared.split_sizes["train"] // 4
    from_start = _first_batches(_train_stream(prepared, 0), 3 * steps + 1)
    assert len(from_start) == 3 * steps  # epochs 0, 1, 2 and no more
    resumed = _first_batches(_train_stream(prepared, 1), 2 * steps)
    # Epochs 1 and 2 read by a fresh pipeline (a resumed run) equal those of the long run.
    for (xa, ya), (xb, yb) in zip(from_start[steps:], resumed, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # Epochs are shuffled and augmented differently, and so are seeds.
    assert not np.array_equal(from_start[0][0], from_start[steps][0])
    assert not np.array_equal(from_start[0][0],
                              _first_batches(_train_stream(prepared, 0, seed=1), 1)[0][0])


def test_training_order_does_not_depend_on_the_global_seed(prepared):
    batches = []
    for global_seed in (0, 5):  # 0 once failed while tracing a tensor-seeded shuffle
        tf.random.set_seed(global_seed)
        batches.append(_first_batches(_train_stream(prepared, 1), 1)[0])
    np.testing.assert_array_equal(batches[0][0], batches[1][0])
    np.testing.assert_array_equal(batches[0][1], batches[1][1])


def test_each_epoch_is_a_shuffle_of_the_split(prepared):
    steps = prepared.split_sizes["train"] // 4
    ds = input_pipeline.make_for_train(
        prepared, batch_size=4, epochs=2, steps_per_epoch=steps,
        options=input_pipeline.TrainOptions(features=("image_id",), cache=True))
    ids = _ids(ds)
    every = {r["image_id"] for r in prepared.rows("train")}
    epochs = [ids[:4 * steps], ids[4 * steps:]]
    for epoch in epochs:
        assert len(epoch) == len(set(epoch)) == 4 * steps and set(epoch) <= every
    assert epochs[0] != epochs[1]


def test_training_batches_are_augmented_and_evaluation_is_not(prepared):
    plain = _first_batches(_train_stream(prepared, 0, augment=None), 1)[0][0]
    augmented = _first_batches(_train_stream(prepared, 0), 1)[0][0]
    assert plain.shape == augmented.shape == (4, 32, 32, 1)
    assert not np.array_equal(plain, augmented)
    flipped = functools.partial(input_pipeline.augment, hflip=True)
    assert not np.array_equal(augmented,
                              _first_batches(_train_stream(prepared, 0, augment=flipped), 1)[0][0])
    # Evaluation yields the stored pixels themselves (a fixed-seed augmentation would give
    # two equal passes, but not these), in file order: TFDS's own read of the split.
    import tensorflow_datasets as tfds

    stored = tfds.as_numpy(prepared.builder.as_dataset(split="test", shuffle_files=False))
    stored = np.stack([example["image"] for example in stored])
    evaluated = np.concatenate([x.numpy() for x, _ in input_pipeline.make_for_eval(
        prepared, "test", batch_size=5)])
    assert evaluated.shape == stored.shape == (prepared.split_sizes["test"], 32, 32, 1)
    np.testing.assert_array_equal(evaluated, stored)


def test_epochs_must_exceed_the_initial_epoch(prepared):
    with pytest.raises(ValueError, match=r"^epochs \(2\) must exceed initial_epoch \(2\)$"):
        input_pipeline.make_for_train(prepared, batch_size=4, initial_epoch=2, epochs=2)


# --- augmentation ----------------------------------------------------------------------------

def test_augment_eager_equals_in_pipeline():
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = 255 * np.exp(-((xx - 12) ** 2 + (yy - 18) ** 2) / 60.0)  # an off-centre blob
    batch = tf.constant(np.repeat(smooth[None, ..., None], 4, axis=0).astype(np.uint8))
    seed = tf.constant([3, 4], tf.int64)
    eager = input_pipeline.augment(batch, seed).numpy()
    ds = tf.data.Dataset.from_tensors((batch, seed)).map(input_pipeline.augment)
    np.testing.assert_array_equal(eager, next(iter(ds)).numpy())
    assert eager.dtype == np.uint8 and eager.shape == (4, 32, 32, 1)
    # Mild: most of each image stays where it was, and each image gets its own draw.
    for image in eager:
        assert np.corrcoef(image.ravel(), smooth.ravel())[0, 1] > 0.8
    assert not np.array_equal(eager[0], eager[1])


def test_no_horizontal_flip_by_default():
    # Left-bright images stay left-bright under 64 default augmentation draws.
    image = np.zeros((64, 32, 32, 1), np.uint8)
    image[:, :, :12] = 200
    out = input_pipeline.augment(tf.constant(image), tf.constant([5, 0], tf.int64)).numpy()
    assert (out[:, :, :12].mean(axis=(1, 2, 3)) > out[:, :, 20:].mean(axis=(1, 2, 3))).all()
    flipped = input_pipeline.augment(tf.constant(image), tf.constant([5, 0], tf.int64),
                                     hflip=True).numpy()
    assert (flipped[:, :, :12].mean(axis=(1, 2, 3)) < flipped[:, :, 20:].mean(axis=(1, 2, 3))).any()


def test_random_flip_mirrors_some_images_and_changes_no_pixel():
    """CheXNet's augmentation: each image is exactly itself or its mirror, drawn per image from
    the seed, in the pipeline as eagerly."""
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    seed = tf.constant([7, 1], tf.int64)
    out = input_pipeline.random_flip(tf.constant(images), seed).numpy()
    same = [np.array_equal(a, b) for a, b in zip(out, images)]
    mirrored = [np.array_equal(a, b[:, ::-1]) for a, b in zip(out, images)]
    assert all(s != m for s, m in zip(same, mirrored))  # one or the other, never both
    assert 16 < sum(mirrored) < 48  # about half of 64
    ds = tf.data.Dataset.from_tensors((tf.constant(images), seed)).map(input_pipeline.random_flip)
    np.testing.assert_array_equal(out, next(iter(ds)).numpy())


def test_warp_affine_matches_tensorflows_projective_transform():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (3, 20, 24, 1)).astype(np.uint8))
    transforms = tf.constant([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # identity
                              [0.95, -0.12, 2.3, 0.12, 0.95, -1.7],  # rotate, zoom, shift
                              [1.1, 0.05, -3.0, -0.05, 0.9, 4.5]], tf.float32)
    ours = input_pipeline.warp_affine(images, transforms).numpy()
    theirs = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), output_shape=[20, 24], fill_value=0.0,
        transforms=tf.concat([transforms, tf.zeros((3, 2))], axis=1),
        interpolation="BILINEAR", fill_mode="CONSTANT").numpy()
    np.testing.assert_array_equal(ours[0], images.numpy()[0].astype(np.float32))
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    assert (ours[1] == 0).any()  # pixels mapped from outside the image are zero
