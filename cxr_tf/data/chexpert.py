"""CheXpert (Irvin et al. 2019, Stanford) read through TFDS's own `chexpert` builder.

Prepare it once with TFDS's command line: `tfds build chexpert`, its manual_dir the folder that
holds `CheXpert-v1.0-small/` (train/, valid/, train.csv and valid.csv: a manual download), its
data_dir TFDS_DIR.

`read(TFDS_DIR, image_size=S)` then yields what the NIH pipeline yields, for the findings both
label sets share: uint8 S×S×1 images preprocessed exactly as `prepare` does (the stored JPEG
bytes go through `images.preprocess`: one channel, centred zero pad to square, antialiased
resize), and per finding a label -1 (uncertain), 0 or 1.

What the TFDS builder stores (tensorflow_datasets/image_classification/chexpert.py, 3.1.0):
`name` (the CSV's Path, e.g. `CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg`),
`image` (the JPEG bytes as shipped), `image_view` (frontal | lateral) and `label`, a sequence of
class indices into ("uncertain", "positive", "negative", "unmentioned"), one per CSV column
after the first five, in the CSV's order. The builder keeps neither the column names nor Sex,
Age or AP/PA, so the order is Stanford's fixed header (`OBSERVATIONS`), checked by length.
"""

import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cxr_tf import errors
from cxr_tf.data import images

DATASET_NAME = "chexpert"
SPLIT = "validation"  # the radiologist-labelled split (3-radiologist consensus, 234 images)
VIEWS = ("frontal", "lateral")  # the builder's image_view ClassLabel, in its order
# Stanford's CSV header after Path, Sex, Age, Frontal/Lateral, AP/PA.
OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
# NIH finding (our output) -> CheXpert observation, for the findings both label sets share.
SHARED = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
UNCERTAIN = -1
# The builder's label class index -> our value. "unmentioned" (a blank cell: the report does
# not mention it) is negative, as CheXpert's authors read it; the validation split has none.
_VALUE_OF_CLASS = {"uncertain": UNCERTAIN, "positive": 1, "negative": 0, "unmentioned": 0}
_PATIENT_RE = re.compile(r"patient(\d+)")


class ChexpertError(errors.UserError, ValueError):
    """The prepared chexpert dataset is not laid out as Stanford's CSV and folders are."""


def open_builder(data_dir):
    """TFDS's chexpert builder over a prepared TFDS_DIR; a clear error when it is not there."""
    builder = tfds.builder(DATASET_NAME, data_dir=data_dir)
    if not builder.is_prepared():
        raise errors.NotFoundError(
            f"{data_dir}: no prepared {DATASET_NAME} dataset (build it with TFDS: "
            f"`tfds build {DATASET_NAME}`, manual_dir the folder holding CheXpert-v1.0-small, "
            f"data_dir {data_dir})")
    return builder


def patient_id(name):
    """'CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg' -> 64541."""
    match = _PATIENT_RE.search(name)
    if match is None:
        raise ChexpertError(f"{name}: no 'patient<digits>' folder in the CheXpert path")
    return int(match.group(1))


def label_values(class_indices, label_names):
    """The builder's per-observation class indices -> int8 -1/0/1 for the SHARED findings, in
    SHARED's order. `label_names`: the builder's ClassLabel names."""
    class_indices = np.asarray(class_indices)
    if class_indices.shape != (len(OBSERVATIONS),):
        raise ChexpertError(f"expected {len(OBSERVATIONS)} CheXpert labels ({', '.join(OBSERVATIONS)})"
                         f", got {class_indices.shape[0]}: not Stanford's CSV layout")
    values = np.array([_VALUE_OF_CLASS[name] for name in label_names], np.int8)
    return values[class_indices[[OBSERVATIONS.index(c) for c in SHARED.values()]]]


def read(data_dir, image_size, *, split=SPLIT, views=("frontal",)):
    """(tf.data.Dataset of uint8 S×S×1 images, per-image rows) of one split, in one order.

    Rows are dicts: image_id (the CSV Path), patient_id, view, labels (int8 -1/0/1 per
    SHARED finding), and sex "unknown" / age -1 (the builder does not keep them), so the
    report's subgroup code can read them like NIH rows. Images of other views are left out;
    `excluded` counts them by view.

    Returns (dataset, rows, excluded).
    """
    unknown = sorted(set(views) - set(VIEWS))
    if unknown or not views:
        raise ValueError(f"views must be a non-empty subset of {VIEWS}; received {list(views)}")
    builder = open_builder(data_dir)
    label_names = builder.info.features["label"].feature.names
    keep = tf.constant([VIEWS.index(v) for v in views], tf.int64)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["image_view"], keep)))

    rows, excluded = [], {}
    meta = builder.as_dataset(split=split, shuffle_files=False,
                              decoders={"image": tfds.decode.SkipDecoding()})
    for ex in tfds.as_numpy(meta.map(lambda ex: {k: v for k, v in ex.items() if k != "image"})):
        view = VIEWS[int(ex["image_view"])]
        if view not in views:
            excluded[view] = excluded.get(view, 0) + 1
            continue
        name = ex["name"].decode()
        rows.append({"image_id": name, "patient_id": patient_id(name), "view": view,
                     "sex": "unknown", "age": -1,
                     "labels": label_values(ex["label"], label_names)})

    def load(data, name):
        # The same PIL decode, pad and resize as `prepare`, so pixels match training's.
        return images.preprocess(data, name.decode(), image_size)[0]

    def to_image(ex):
        image = tf.numpy_function(load, [ex["image"], ex["name"]], tf.uint8, stateful=False)
        return tf.ensure_shape(image, (image_size, image_size, 1))

    return ds.map(to_image, num_parallel_calls=tf.data.AUTOTUNE), rows, excluded
