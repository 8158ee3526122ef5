import os

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import labels
from cxr_tf.data import input_pipeline, metadata


def _first_batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_shapes_dtypes_and_label_alignment(kaggle_dir, prepared_dir):
    ds = input_pipeline.make_dataset(str(prepared_dir), "train", batch_size=4, training=False,
                                     with_metadata=True)
    index = metadata.build_index(str(kaggle_dir))
    expected = index.frame.set_index("image_id")[list(labels.LABELS)]
    seen = 0
    for batch in ds:
        assert batch["image"].dtype == tf.uint8 and batch["image"].shape[1:] == (32, 32, 1)
        assert batch["labels"].dtype == tf.float32 and batch["labels"].shape[1:] == (14,)
        for image_id, row in zip(batch["image_id"].numpy(), batch["labels"].numpy()):
            np.testing.assert_array_equal(row, expected.loc[image_id.decode()].to_numpy())
            seen += 1
    assert seen == (index.frame["split"] == "train").sum()


def test_metadata_order_matches_pipeline_order(prepared_dir):
    rows = input_pipeline.split_metadata(str(prepared_dir), "validation")
    ds = input_pipeline.make_dataset(str(prepared_dir), "validation", batch_size=3,
                                     training=False, with_metadata=True)
    ids = [i.decode() for b in ds for i in b["image_id"].numpy()]
    assert ids == [r["image_id"] for r in rows]
    assert len(ids) > 0


def test_training_stream_is_a_function_of_seed_and_epoch(prepared_dir):
    n = input_pipeline.split_size(str(prepared_dir), "train")
    steps = n // 4

    def stream(epoch, seed=0):
        return input_pipeline.make_dataset(str(prepared_dir), "train", batch_size=4,
                                           training=True, seed=seed, epoch=epoch, epochs=3,
                                           steps_per_epoch=steps, deterministic=True)

    from_start = _first_batches(stream(0), steps + 2)
    resumed = _first_batches(stream(1), 2)
    # Epoch 1 read by a fresh pipeline (a resumed run) equals epoch 1 of the long run.
    for (xa, ya), (xb, yb) in zip(from_start[steps:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # Epochs are shuffled and augmented differently, and so are seeds.
    assert not np.array_equal(from_start[0][0], from_start[steps][0])
    assert not np.array_equal(from_start[0][0], _first_batches(stream(0, seed=1), 1)[0][0])


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


def test_evaluation_is_not_augmented(prepared_dir):
    a = _first_batches(input_pipeline.make_dataset(str(prepared_dir), "test", batch_size=5,
                                                   training=False), 1)
    b = _first_batches(input_pipeline.make_dataset(str(prepared_dir), "test", batch_size=5,
                                                   training=False, seed=7), 1)
    np.testing.assert_array_equal(a[0][0], b[0][0])


def test_input_context_shards_are_disjoint_and_cover_the_split(prepared_dir):
    ids = []
    for pipeline_id in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
        ds = input_pipeline.make_dataset(str(prepared_dir), "validation", batch_size=4,
                                         training=False, with_metadata=True, input_context=ctx)
        shard = [i for b in ds for i in b["image_id"].numpy()]
        assert all(b["image"].shape[0] <= 2 for b in ds)  # per-replica batch = 4 / 2
        ids.append(shard)
    assert not set(ids[0]) & set(ids[1])
    assert len(ids[0]) + len(ids[1]) == input_pipeline.split_size(str(prepared_dir), "validation")


def test_raw_kaggle_folder_reads_same_labels_as_prepared(kaggle_dir, prepared_dir):
    raw = input_pipeline.make_dataset(str(kaggle_dir), "validation", batch_size=64,
                                      training=False, image_size=32, with_metadata=True)
    prepared = input_pipeline.make_dataset(str(prepared_dir), "validation", batch_size=64,
                                           training=False, with_metadata=True)
    raw_rows = {i: l for b in raw for i, l in zip(b["image_id"].numpy(), b["labels"].numpy())}
    prep_rows = {i: l for b in prepared
                 for i, l in zip(b["image_id"].numpy(), b["labels"].numpy())}
    assert raw_rows.keys() == prep_rows.keys()
    for key in raw_rows:
        np.testing.assert_array_equal(raw_rows[key], prep_rows[key])


def test_no_finding_target(prepared_dir):
    for x, y in input_pipeline.make_dataset(str(prepared_dir), "train", batch_size=8,
                                            training=False, add_no_finding=True):
        y = y.numpy()
        assert y.shape[1] == 15
        np.testing.assert_array_equal(y[:, 14], 1.0 - y[:, :14].max(axis=1))


def test_missing_prepared_size_is_a_clear_error(prepared_dir):
    with pytest.raises(FileNotFoundError, match="no prepared nih_chest_xray14 dataset at "
                                                "image_size=224"):
        input_pipeline.find_prepared(str(prepared_dir), 224)


def test_png_and_raw_storage_read_back_the_same_pixels(kaggle_dir, prepared_dir, tmp_path):
    from cxr_tf.datasets.nih_chest_xray14 import build

    report = build.prepare(str(kaggle_dir), str(tmp_path), 32, image_encoding="png",
                             num_workers=0)
    assert report["dataset_dir"].split(os.sep)[-2] == "32_png"
    raw_builder = input_pipeline.open_prepared(str(prepared_dir))
    png_builder = input_pipeline.open_prepared(str(tmp_path))
    assert type(raw_builder.info.features["image"]).__name__ == "Tensor"
    assert type(png_builder.info.features["image"]).__name__ == "Image"

    def pixels(data_dir):
        ds = input_pipeline.make_dataset(data_dir, "train", batch_size=16, training=False,
                                         with_metadata=True)
        return {i: x for b in ds for i, x in zip(b["image_id"].numpy(), b["image"].numpy())}

    raw, png = pixels(str(prepared_dir)), pixels(str(tmp_path))
    assert raw.keys() == png.keys() and len(raw) > 0
    for key in raw:
        np.testing.assert_array_equal(raw[key], png[key])


def test_an_older_version_beside_the_new_one_is_ignored(prepared_dir, tmp_path):
    import shutil

    version_dir = input_pipeline.find_prepared(str(prepared_dir))
    config_dir, version = os.path.split(version_dir)
    copy = tmp_path / "nih_chest_xray14" / os.path.basename(config_dir)
    shutil.copytree(version_dir, copy / version)
    shutil.copytree(version_dir, copy / "1.0.0")
    assert input_pipeline.find_prepared(str(tmp_path)) == str(copy / version)


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
