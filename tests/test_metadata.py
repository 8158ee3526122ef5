"""Tests for cxr_tf.data.metadata on the committed real slice (tests/data, cut by make_slice.py:
whole patients 1..111 of the real v2020 CSV, 443 rows) and on the full real metadata."""

import gzip
import hashlib
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_tf import labels
from cxr_tf.data import metadata

DATA = Path(__file__).resolve().parent / "data"
SLICE = DATA / "nih_slice"
SLICE_CSV = SLICE / "Data_Entry_2017_v2020.csv.gz"
KAGGLE_CSV = DATA / "kaggle_2017" / "Data_Entry_2017.csv"

# Counted on the slice with grep, independently of cxr_tf: per label over all 443 rows, then
# per official list.
SLICE_LABELS = dict(zip(labels.LABELS, (51, 47, 89, 93, 32, 20, 5, 31, 15, 24, 28, 14, 14, 9)))
SLICE_NO_FINDING = 165
SLICE_TRAIN_VAL = {"images": 315, "patients": 105}
SLICE_TEST = {"images": 128, "patients": 6}
KAGGLE_BAD_AGES = ["00000013_005.png", "00000061_012.png", "00000099_000.png"]
MESSAGE_TAIL = ("expected 'No Finding' or '|'-separated names from " + ", ".join(labels.LABELS))


def _slice_lines():
    with gzip.open(SLICE_CSV, "rt") as f:
        return f.read().splitlines()


# --- reading both CSV variants ---------------------------------------------------------------

def test_read_v2020_slice():
    frame = metadata.read_data_entry(SLICE_CSV)
    assert list(frame.columns) == ["image_id", "finding_labels", "follow_up", "patient_id",
                                   "age", "sex", "view", "width", "height"]
    assert len(frame) == 443
    first = frame.iloc[0]
    assert (first.image_id, first.finding_labels, first.follow_up, first.patient_id, first.age,
            first.sex, first.view, first.width, first.height) == (
        "00000001_000.png", "Cardiomegaly", 0, 1, 57, "M", "PA", 2682, 2749)
    for column in ("follow_up", "patient_id", "age", "width", "height"):
        assert frame[column].dtype == np.int64
    assert (frame["age"] >= 0).all()
    # Follow-up # is read, not derived from the file name: they differ on this row.
    assert frame.set_index("image_id").loc["00000003_000.png", "follow_up"] == 7


def test_read_kaggle_2017_variant():
    raw = pd.read_csv(KAGGLE_CSV, dtype=str)
    assert raw.columns[-1] == "Unnamed: 11" and len(raw.columns) == 12  # the trailing comma
    assert sorted(raw.loc[raw["Patient Age"].astype(int) > 120, "Image Index"]) == KAGGLE_BAD_AGES

    v2020 = metadata.read_data_entry(SLICE_CSV)
    kaggle = metadata.read_data_entry(KAGGLE_CSV)
    assert sorted(kaggle.loc[kaggle["age"] == -1, "image_id"]) == KAGGLE_BAD_AGES
    # Apart from those ages, both variants parse to the same frame.
    bad = kaggle["image_id"].isin(KAGGLE_BAD_AGES)
    pd.testing.assert_frame_equal(kaggle.drop(columns="age"), v2020.drop(columns="age"))
    pd.testing.assert_series_equal(kaggle["age"][~bad], v2020["age"][~bad])


def test_plain_and_gzip_read_the_same(tmp_path):
    plain = tmp_path / "Data_Entry_2017_v2020.csv"
    plain.write_text("\n".join(_slice_lines()) + "\n")
    packed = tmp_path / "Data_Entry_2017.csv.gz"
    with gzip.open(packed, "wt") as f:
        f.write(KAGGLE_CSV.read_text())
    pd.testing.assert_frame_equal(metadata.read_data_entry(plain),
                                  metadata.read_data_entry(SLICE_CSV))
    pd.testing.assert_frame_equal(metadata.read_data_entry(packed),
                                  metadata.read_data_entry(KAGGLE_CSV))


@pytest.mark.parametrize("data_entry", [SLICE_CSV, KAGGLE_CSV], ids=["v2020", "kaggle2017"])
def test_label_counts_on_both_variants(data_entry):
    index = metadata.build_index(SLICE, data_entry=data_entry, require_files=False)
    matrix = index.label_matrix()
    assert matrix.shape == (443, 14) and matrix.dtype == np.uint8
    assert dict(zip(labels.LABELS, matrix.sum(axis=0).tolist())) == SLICE_LABELS
    assert int((matrix.sum(axis=1) == 0).sum()) == SLICE_NO_FINDING
    # Row i of the matrix is row i's own Finding Labels, in file order.
    assert index.frame["image_id"].tolist() == metadata.read_data_entry(data_entry)[
        "image_id"].tolist()
    names = index.frame["finding_labels"].str.split("|")  # by pandas, not labels.to_multi_hot
    expected = np.array([[label in row for label in labels.LABELS] for row in names], np.uint8)
    np.testing.assert_array_equal(matrix, expected)
    expected_unknown = 3 if data_entry == KAGGLE_CSV else 0
    assert index.converted == {"age_unknown": expected_unknown}


def test_age_handling(tmp_path):
    header, first = _slice_lines()[:2]
    ages = ["58", "058Y", "0", "120", "121", "414", "-3", "abc", "", "58.5", "006M"]
    rows = []
    for i, age in enumerate(ages):
        fields = first.split(",")
        fields[0], fields[2], fields[4] = f"00000001_{i:03d}.png", str(i), age
        rows.append(",".join(fields))
    path = tmp_path / "ages.csv"
    path.write_text("\n".join([header] + rows) + "\n")
    frame = metadata.read_data_entry(path)
    assert frame["age"].tolist() == [58, 58, 0, 120, -1, -1, -1, -1, -1, -1, -1]
    assert len(frame) == len(ages)  # rows are kept, only the age becomes unknown


def test_missing_column_and_bad_integer(tmp_path):
    header, *rows = _slice_lines()[:4]
    path = tmp_path / "no_view.csv"
    path.write_text(header.replace("View Position", "View") + "\n" + "\n".join(rows))
    with pytest.raises(metadata.MetadataError) as info:
        metadata.read_data_entry(path)
    assert str(info.value).startswith(f"{path}, line 1: missing column(s) ['View Position']")

    rows[1] = rows[1].replace(",1,58,M,", ",one,58,M,")  # Patient ID of line 3
    path = tmp_path / "bad_patient.csv"
    path.write_text("\n".join([header] + rows) + "\n")
    with pytest.raises(metadata.MetadataError) as info:
        metadata.read_data_entry(path)
    assert str(info.value) == (
        f"{path}, line 3: Patient ID 'one' is not a non-negative integer (1 such row(s))")
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args


def test_truncated_or_corrupt_gzip_names_the_file(tmp_path):
    packed = gzip.compress(KAGGLE_CSV.read_bytes())
    path = tmp_path / "Data_Entry_2017.csv.gz"
    path.write_bytes(packed[:len(packed) // 2])  # an interrupted download
    with pytest.raises(metadata.MetadataError) as info:
        metadata.read_data_entry(path)
    assert str(info.value) == (
        f"{path}: cannot read CSV: truncated or corrupt gzip data (Compressed file ended "
        "before the end-of-stream marker was reached)")
    path.write_bytes(packed[:10] + bytes(range(256)) * 4)  # a valid header, then garbage
    with pytest.raises(metadata.MetadataError,
                       match=rf"^{re.escape(str(path))}: cannot read CSV: truncated or corrupt "
                             r"gzip data \(Error -3 while decompressing data: "):
        metadata.read_data_entry(path)


def test_source_fingerprint(tmp_path):
    shutil.copy(KAGGLE_CSV, tmp_path)
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n")
    (tmp_path / "test_list.txt").write_text("")
    # sha256 of the exact bytes (the empty file's digest is the well-known e3b0c442...).
    assert metadata.source_fingerprint(tmp_path) == {
        "Data_Entry_2017.csv": hashlib.sha256(KAGGLE_CSV.read_bytes()).hexdigest(),
        "train_val_list.txt": hashlib.sha256(b"00000001_000.png\n").hexdigest(),
        "test_list.txt": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    }
    os.remove(tmp_path / "test_list.txt")
    with pytest.raises(metadata.MetadataError,
                       match="test_list.txt: official split list test_list.txt not found"):
        metadata.source_fingerprint(tmp_path)


def test_find_data_entry(tmp_path):
    with pytest.raises(metadata.MetadataError) as info:
        metadata.find_data_entry(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: no Data_Entry CSV found; looked for Data_Entry_2017_v2020.csv, "
        "Data_Entry_2017_v2020.csv.gz, Data_Entry_2017.csv, Data_Entry_2017.csv.gz")
    (tmp_path / "Data_Entry_2017.csv.gz").touch()
    assert metadata.find_data_entry(tmp_path) == str(tmp_path / "Data_Entry_2017.csv.gz")
    (tmp_path / "Data_Entry_2017_v2020.csv").touch()  # the corrected file wins
    assert metadata.find_data_entry(tmp_path) == str(tmp_path / "Data_Entry_2017_v2020.csv")


# --- skip reasons ----------------------------------------------------------------------------

# Appended after the 443 slice rows (lines 2..444), so they sit on lines 445..450.
_FAULT_ROWS = [
    "../../etc/passwd.png,No Finding,0,1,57,M,PA,1,1,0.1,0.1",
    "/abs/x.png,Foo,x,y,57,M,PA,1,1,0.1,0.1",  # garbage fields do not matter on a skipped row
    "00000001_000.PNG,No Finding,0,1,57,M,PA,1,1,0.1,0.1",
    "00000112_000.png,Effusion|Pleural_Thickning,0,112,40,F,PA,1,1,0.1,0.1",
    "00000001_000.png,Hernia,0,1,57,M,PA,1,1,0.1,0.1",  # duplicate: the first row wins
    "00000113_000.png,No Finding,0,113,40,F,PA,1,1,0.1,0.1",  # in neither list
]


def _faulty_dir(tmp_path, missing=()):
    """The slice plus one row of each metadata fault, and empty image files spread over the
    Kaggle folders except for `missing` (never opened: metadata only checks they exist)."""
    root = tmp_path / "kaggle"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text("\n".join(_slice_lines() + _FAULT_ROWS) + "\n")
    shutil.copy(SLICE / "test_list.txt", root)
    train_val = (SLICE / "train_val_list.txt").read_text() + "00000112_000.png\n"
    (root / "train_val_list.txt").write_text(train_val)
    ids = metadata.read_data_entry(SLICE_CSV)["image_id"]
    for i, image_id in enumerate(ids):
        if image_id not in missing:
            folder = root / ("images" if i % 3 == 0 else f"images_{i % 3:03d}/images")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / image_id).touch()
    return root


def test_every_skip_reason_is_counted(tmp_path):
    missing = ["00000003_000.png", "00000003_001.png", "00000045_000.png"]
    root = _faulty_dir(tmp_path, missing)
    index = metadata.build_index(root)
    assert index.rows == 449
    assert index.skipped == {"invalid_image_index": 3, "unknown_label": 1, "duplicate_row": 1,
                             "missing_file": 3, "not_in_split": 1}
    assert len(index.frame) == 440 == index.rows - sum(index.skipped.values())
    assert index.skipped_examples == {
        "invalid_image_index": ["line 445: '../../etc/passwd.png'", "line 446: '/abs/x.png'",
                                "line 447: '00000001_000.PNG'"],
        "unknown_label": ["line 448: '00000112_000.png': unknown label 'Pleural_Thickning'"],
        "duplicate_row": ["line 449: '00000001_000.png'"],
        "not_in_split": ["line 450: '00000113_000.png'"],
        "missing_file": ["line 6: '00000003_001.png'", "line 13: '00000003_000.png'",
                         "line 221: '00000045_000.png'"],
    }
    frame = index.frame.set_index("image_id")
    assert frame.loc["00000001_000.png", "finding_labels"] == "Cardiomegaly"  # not "Hernia"
    assert frame.loc["00000001_000.png", "path"] == str(root / "images/00000001_000.png")
    assert frame.loc["00000001_001.png", "path"] == str(
        root / "images_001/images/00000001_001.png")
    assert set(frame.index) == set(metadata.read_data_entry(SLICE_CSV)["image_id"]) - set(
        missing)


def test_without_files_nothing_is_missing(tmp_path):
    root = _faulty_dir(tmp_path, missing=["00000003_000.png"])
    index = metadata.build_index(root, require_files=False)
    assert index.skipped["missing_file"] == 0
    assert len(index.frame) == 443
    assert index.frame["path"].isna().all()


def test_strict_raises_on_the_first_unknown_label(tmp_path):
    root = _faulty_dir(tmp_path)
    with pytest.raises(metadata.MetadataError) as info:
        metadata.build_index(root, strict=True)
    # Line 446's "Foo" does not count: that row is skipped for its invalid Image Index first.
    assert str(info.value) == (
        f"{root / 'Data_Entry_2017.csv'}, line 448: unknown label 'Pleural_Thickning' in "
        f"Finding Labels 'Effusion|Pleural_Thickning'; {MESSAGE_TAIL}")


def test_image_in_both_lists_is_an_error(tmp_path):
    root = _faulty_dir(tmp_path)
    with open(root / "test_list.txt", "a") as f:
        f.write("00000001_000.png\n")
    with pytest.raises(metadata.MetadataError,
                       match=r"test_list.txt: 1 image id\(s\) also in .*train_val_list.txt: "
                             r"\['00000001_000.png'\]"):
        metadata.build_index(root)


def test_patient_in_both_lists_is_an_error(tmp_path):
    root = _faulty_dir(tmp_path)
    train_val = (root / "train_val_list.txt").read_text().replace("00000002_000.png\n", "")
    (root / "train_val_list.txt").write_text(train_val)
    (root / "test_list.txt").write_text("00000002_000.png\n00000001_002.png\n")
    train_val = train_val.replace("00000001_002.png\n", "")
    (root / "train_val_list.txt").write_text(train_val)
    # Patient 1 now has images in train_val and test; patient 2 moved wholly to test (fine).
    with pytest.raises(metadata.MetadataError) as info:
        metadata.build_index(root, require_files=False)
    assert str(info.value) == (f"{root / 'train_val_list.txt'} / {root / 'test_list.txt'}: "
                               "1 patient(s) in both test and train: [1]")


def test_missing_split_list(tmp_path):
    root = _faulty_dir(tmp_path)
    os.remove(root / "test_list.txt")
    with pytest.raises(metadata.MetadataError) as info:
        metadata.build_index(root)
    assert str(info.value) == (
        f"{root / 'test_list.txt'}: official split list test_list.txt not found")


def test_find_image_files(tmp_path):
    for rel in ("images_001/images/00000001_000.png", "images_002/images/00000002_000.png",
                "images/00000003_000.png", "images/notes.png", "images/00000004_000.png.bak",
                "images_001/00000005_000.png", "images_002/images/00000001_000.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    assert metadata.find_image_files(tmp_path) == {
        "00000001_000.png": str(tmp_path / "images_001/images/00000001_000.png"),
        "00000002_000.png": str(tmp_path / "images_002/images/00000002_000.png"),
        "00000003_000.png": str(tmp_path / "images/00000003_000.png"),
    }


# --- the split -------------------------------------------------------------------------------

def test_split_is_patient_wise_and_deterministic():
    index = metadata.build_index(SLICE, require_files=False)
    frame = index.frame
    tv_ids = set(metadata.read_split_list(SLICE / "train_val_list.txt"))
    test_ids = set(metadata.read_split_list(SLICE / "test_list.txt"))
    assert set(frame.loc[frame["split"] == "test", "image_id"]) == test_ids
    assert set(frame.loc[frame["split"] != "test", "image_id"]) == tv_ids
    patients = {s: set(frame.loc[frame["split"] == s, "patient_id"]) for s in metadata.SPLITS}
    assert {s: len(p) for s, p in patients.items()} == {"train": 95, "validation": 10, "test": 6}
    kept = frame["split"].value_counts()
    assert kept["train"] + kept["validation"] == SLICE_TRAIN_VAL["images"]
    assert len(patients["train"] | patients["validation"]) == SLICE_TRAIN_VAL["patients"]
    assert (kept["test"], len(patients["test"])) == (SLICE_TEST["images"], SLICE_TEST["patients"])
    assert not patients["train"] & patients["validation"]
    assert not (patients["train"] | patients["validation"]) & patients["test"]
    metadata.check_no_patient_overlap(frame)

    again = metadata.build_index(SLICE, require_files=False)
    pd.testing.assert_frame_equal(again.frame, frame)
    other = metadata.build_index(SLICE, require_files=False, seed=1)
    val = set(other.frame.loc[other.frame["split"] == "validation", "patient_id"])
    assert len(val) == 10 and val != patients["validation"]


def test_split_patients():
    ids = list(range(100, 200)) * 3
    chosen = metadata.split_patients(ids, 0.1, seed=7)
    assert len(chosen) == 10 and chosen <= set(ids)
    assert metadata.split_patients(ids[::-1], 0.1, seed=7) == chosen  # order does not matter
    assert metadata.split_patients(ids, 0.1, seed=8) != chosen
    assert metadata.split_patients(ids, 0.0, seed=7) == set()
    assert len(metadata.split_patients([1, 2, 3], 0.1, seed=0)) == 1  # never an empty split
    assert metadata.split_patients([1], 0.5, seed=0) == set()  # nor an empty train split
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        metadata.split_patients(ids, 1.0, seed=0)


def test_check_no_patient_overlap_names_patients():
    frame = pd.DataFrame({"patient_id": [1, 2, 3, 3, 4, 2, 5],
                          "split": ["train", "train", "train", "validation", "test", "test",
                                    "validation"]})
    with pytest.raises(metadata.MetadataError) as info:
        metadata.check_no_patient_overlap(frame)
    assert str(info.value) == ("1 patient(s) in both test and train: [2]; "
                               "1 patient(s) in both train and validation: [3]")


# --- the full real metadata ------------------------------------------------------------------

def test_full_real_metadata(real_nih_dir):
    index = metadata.build_index(real_nih_dir, require_files=False)
    frame = index.frame
    kept = frame["split"].value_counts()
    assert index.rows == 112_120 and sum(index.skipped.values()) == 0
    assert kept["test"] == 25_596
    assert kept["train"] + kept["validation"] == 86_524
    patients = {s: set(frame.loc[frame["split"] == s, "patient_id"]) for s in metadata.SPLITS}
    assert len(patients["train"] | patients["validation"]) == 28_008
    assert len(patients["test"]) == 2_797
    assert len(patients["validation"]) == 2_801  # round(0.1 * 28,008)
    metadata.check_no_patient_overlap(frame)
    counts = dict(zip(labels.LABELS, index.label_matrix().sum(axis=0).tolist()))
    assert counts["Hernia"] == 227 and counts["Infiltration"] == 19_894
    assert int((index.label_matrix().sum(axis=1) == 0).sum()) == 60_361
