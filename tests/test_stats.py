"""Tests for cxr_tf.stats on the committed real slice, a tiny prepared dataset, and the full
real metadata."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_tf import labels, stats
from cxr_tf.data import metadata

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "tests" / "data" / "nih_slice"

# Counted on the slice with pandas string matching, independently of cxr_tf.
SLICE_STATS = {"splits": {
    "train_val": {
        "images": 315, "patients": 105, "no_finding": 139, "multi_label": 70,
        "labels": dict(zip(labels.LABELS, (40, 17, 67, 55, 20, 18, 3, 10, 8, 3, 8, 11, 9, 1))),
    },
    "test": {
        "images": 128, "patients": 6, "no_finding": 26, "multi_label": 55,
        "labels": dict(zip(labels.LABELS, (11, 30, 22, 38, 12, 2, 2, 21, 7, 21, 20, 3, 5, 8))),
    },
}}


def test_split_stats_small():
    # Three images of two patients: one No Finding, one with one label, one with two.
    matrix = np.zeros((3, 14), np.uint8)
    matrix[1, 0] = 1
    matrix[2, [0, 13]] = 1
    out = stats.split_stats(matrix, [7, 7, 9])
    assert out == {"images": 3, "patients": 2, "no_finding": 1, "multi_label": 1,
                   "labels": {**dict.fromkeys(labels.LABELS, 0), "Atelectasis": 2, "Hernia": 1}}


def test_compute_stats_on_slice():
    assert stats.compute_stats(str(SLICE)) == SLICE_STATS


def test_neither_kaggle_nor_prepared(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        stats.compute_stats(str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: no prepared nih_chest_xray14 dataset")
    assert message.endswith(
        "; nor a Kaggle folder: no Data_Entry CSV found; looked for Data_Entry_2017_v2020.csv, "
        "Data_Entry_2017_v2020.csv.gz, Data_Entry_2017.csv, Data_Entry_2017.csv.gz")


def test_format_stats():
    text = stats.format_stats(SLICE_STATS).splitlines()
    assert text[0] == " " * 20 + "   train_val        test       total"
    assert text[1] == "images" + " " * 14 + "         315         128         443"
    assert text[-1] == "Hernia" + " " * 14 + "           1           8           9"


def test_app_json_and_plot(tmp_path):
    plot = tmp_path / "fig1.png"
    result = subprocess.run(
        [sys.executable, "-m", "cxr_tf.stats", f"--data_dir={SLICE}", "--json", f"--plot={plot}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == SLICE_STATS  # one JSON object, nothing else
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_plot_label_pie(tmp_path):
    path = tmp_path / "pie.png"
    stats.plot_label_pie(SLICE_STATS, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_stats_on_prepared_dir(tmp_path):
    """prepare a tiny folder cut from the slice (patients 1..20, 32 px PNGs), then read it back."""
    import pandas as pd
    import tensorflow_datasets as tfds
    from PIL import Image

    from cxr_tf.datasets.config import PrepareConfig
    from cxr_tf.datasets.nih_chest_xray14 import build

    kaggle = tmp_path / "kaggle"
    (kaggle / "images_001" / "images").mkdir(parents=True)
    frame = metadata.read_data_entry(SLICE / "Data_Entry_2017_v2020.csv.gz")
    with gzip.open(SLICE / "Data_Entry_2017_v2020.csv.gz", "rt") as f:
        header, *rows = f.read().splitlines()
    keep = frame["patient_id"] <= 20
    (kaggle / "Data_Entry_2017.csv").write_text(
        "\n".join([header] + [r for r, k in zip(rows, keep) if k]) + "\n")
    for name in ("train_val_list.txt", "test_list.txt"):
        (kaggle / name).write_text((SLICE / name).read_text())
    gray = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    for image_id in frame.loc[keep, "image_id"]:
        Image.fromarray(gray).save(kaggle / "images_001" / "images" / image_id)

    out = tmp_path / "tfds"
    build.prepare(PrepareConfig(data_dir=kaggle, output_dir=out, image_size=32, num_workers=0))
    got = stats.compute_stats(str(out))

    # Expected: the CSV rows of each split's image ids (read with plain TFDS), counted with
    # pandas string operations rather than cxr_tf's own counting.
    builder = tfds.builder_from_directory(next((out / "nih_chest_xray14" / "32").iterdir()))
    table = pd.read_csv(kaggle / "Data_Entry_2017.csv", dtype=str)
    expected = {}
    for split in ("train", "validation", "test"):
        ids = builder.as_dataset(split=split).map(lambda example: example["image_id"])
        rows = table[table["Image Index"].isin([i.decode() for i in tfds.as_numpy(ids)])]
        names = rows["Finding Labels"].str.split("|")
        expected[split] = {
            "images": len(rows), "patients": rows["Patient ID"].nunique(),
            "no_finding": int((rows["Finding Labels"] == "No Finding").sum()),
            "multi_label": int((names.str.len() > 1).sum()),
            "labels": {label: int(names.map(lambda n, label=label: label in n).sum())
                       for label in labels.LABELS}}
    assert got == {"splits": expected}
    # Counted with grep/awk on the 96 rows: test holds patients 3 (8 Hernia images) and 13
    # (47 images); train_val holds the 41 images of 18 patients, 2 of them carved out.
    splits = got["splits"]
    assert int(keep.sum()) == 96
    assert (splits["test"]["images"], splits["test"]["patients"]) == (55, 2)
    assert splits["test"]["labels"]["Hernia"] == 8
    assert splits["train"]["images"] + splits["validation"]["images"] == 41
    assert (splits["train"]["patients"], splits["validation"]["patients"]) == (16, 2)


def test_real_metadata_figures(real_nih_dir):
    splits = stats.compute_stats(str(real_nih_dir))["splits"]
    assert (splits["train_val"]["images"], splits["train_val"]["patients"]) == (86_524, 28_008)
    assert (splits["test"]["images"], splits["test"]["patients"]) == (25_596, 2_797)
    assert splits["train_val"]["no_finding"] + splits["test"]["no_finding"] == 60_361
    total = {name: splits["train_val"]["labels"][name] + splits["test"]["labels"][name]
             for name in labels.LABELS}
    assert total["Hernia"] == 227 and total["Infiltration"] == 19_894
