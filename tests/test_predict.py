"""The predict app: PNG, JPEG and DICOM files, a broken file in the batch, Grad-CAM overlays."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxr_tf import labels
from cxr_tf.serving import graph, inputs, predictor
from cxr_tf.testing.image_bytes import dicom, png, png_from

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
SIZE = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A hospital's folder: one film as PNG, JPEG and three DICOM encodings, a broken PNG
    and a text file. The film spans 0..255, so a DICOM without a window maps 1:1."""
    root = tmp_path_factory.mktemp("files")
    film = np.random.default_rng(0).integers(0, 256, (48, 40), dtype=np.uint8)
    film[0, 0], film[-1, -1] = 0, 255
    data = png(film)
    (root / "a.png").write_bytes(data)
    (root / "broken.png").write_bytes(data[:len(data) // 2])
    Image.fromarray(film).save(root / "c.jpg", quality=95)
    sub = root / "dicom"
    sub.mkdir()
    (sub / "m2.dcm").write_bytes(dicom(film))
    # MONOCHROME1 stores bright air: the inverse film, which must decode back to the film.
    (sub / "m1.dcm").write_bytes(dicom(255 - film, "MONOCHROME1"))
    # 16-bit with a rescale (0.5 * stored - 500 = film) and a window mapping 0..255 onto itself.
    (sub / "window.dcm").write_bytes(dicom(film.astype(np.uint16) * 2 + 1000, RescaleSlope=0.5,
                                           RescaleIntercept=-500, WindowCenter=128,
                                           WindowWidth=256))
    (root / "notes.txt").write_text("not an image, and not an image extension")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory, trained_run):
    """The session's trained run dir (read only: predict writes nothing into it) and its
    SavedModel."""
    from cxr_tf.runs import checkpoints

    run_dir = trained_run[0]
    export_dir = tmp_path_factory.mktemp("models") / "export" / "1"
    graph.export(checkpoints.load_model(str(run_dir)), export_dir, [0.5] * 14)
    return run_dir, export_dir


def by_name(rows):
    return {os.path.basename(r["file"]): np.array(r["probabilities"]) for r in rows}


def test_list_inputs_walks_folders_for_image_files(folder):
    names = [os.path.relpath(p, folder) for p in inputs.list_inputs([str(folder)])]
    assert names == ["a.png", "broken.png", "c.jpg", "dicom/m1.dcm", "dicom/m2.dcm",
                     "dicom/window.dcm"]
    assert inputs.list_inputs([str(folder / "notes.txt")]) == [str(folder / "notes.txt")]


def test_dicom_made_from_a_png_gives_the_png_probabilities(folder, models):
    run_dir, export_dir = models
    files = inputs.list_inputs([str(folder)])
    keras_rows, failures, _ = predictor.predict_files(predictor.Predictor(str(run_dir)), files)
    assert [f["file"] for f in failures] == [str(folder / "broken.png")]
    probs = by_name(keras_rows)
    for name in ("m2.dcm", "m1.dcm", "window.dcm"):  # MONOCHROME2, MONOCHROME1, rescale+window
        np.testing.assert_allclose(probs[name], probs["a.png"], atol=1e-6, err_msg=name)
    assert np.abs(probs["c.jpg"] - probs["a.png"]).max() < 0.05  # JPEG is lossy: close only
    saved_rows, _, _ = predictor.predict_files(predictor.Predictor(str(export_dir)), files)
    for name, p in by_name(saved_rows).items():  # SavedModel and Keras model agree
        np.testing.assert_allclose(p, probs[name], atol=1e-5)


def test_dicom_without_its_preamble_predicts_as_the_whole_file(folder, models, tmp_path):
    run_dir, _ = models
    whole = (folder / "dicom" / "m2.dcm").read_bytes()
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(whole[132:])  # no 128-byte preamble, no "DICM"
    rows, failures, _ = predictor.predict_files(predictor.Predictor(str(run_dir)),
                                              [str(folder / "a.png"), str(bare)])
    assert failures == []
    np.testing.assert_allclose(rows[1]["probabilities"], rows[0]["probabilities"], atol=1e-6)


def test_monochrome1_without_inversion_would_differ(folder, models):
    # The same stored pixels labelled MONOCHROME2 are the negative film: other probabilities.
    run_dir, _ = models
    negative = folder.parent / "negative.dcm"
    stored = 255 - np.asarray(Image.open(folder / "a.png"))
    negative.write_bytes(dicom(stored))
    rows, _, _ = predictor.predict_files(predictor.Predictor(str(run_dir)),
                                       [str(folder / "a.png"), str(negative)])
    assert np.abs(np.subtract(rows[0]["probabilities"], rows[1]["probabilities"])).max() > 1e-3


@pytest.mark.slow
def test_mixed_folder_with_one_broken_file(folder, models, tmp_path):
    _, export_dir = models
    out = tmp_path / "preds.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.predict", f"--model={export_dir}", str(folder),
         str(tmp_path / "missing.png"), f"--output={out}"],
        capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 1  # some files failed
    assert "Predicted 5 of 7 files" in proc.stdout
    assert "2 failed:" in proc.stdout
    assert f"{folder / 'broken.png'}: PNG truncated (read " in proc.stdout
    assert f"{tmp_path / 'missing.png'}: No such file or directory" in proc.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    # cxr_tf 0.2.0's columns first, then the decisions and the out-of-distribution flag.
    assert list(rows[0]) == ["file", *labels.LABELS, "positive_labels",
                             *(f"{name}_positive" for name in labels.LABELS), "ood_score",
                             "in_distribution"]
    assert [os.path.basename(r["file"]) for r in rows] == ["a.png", "c.jpg", "m1.dcm", "m2.dcm",
                                                          "window.dcm"]
    for row in rows:
        probs = np.array([float(row[name]) for name in labels.LABELS])
        expected = [n for n, p in zip(labels.LABELS, probs) if p >= 0.5]
        assert row["positive_labels"] == ("|".join(expected) or labels.NO_FINDING)
        assert [row[f"{n}_positive"] for n in labels.LABELS] == [
            str(int(p >= 0.5)) for p in probs]
        # Exported without a detector: no score, and nothing flagged.
        assert (row["ood_score"], row["in_distribution"]) == ("", "1")
    # Exported by graph.export with bare thresholds: their provenance is unknown, and said.
    assert "Thresholds: unknown (no provenance given)" in proc.stdout
    beside = json.loads((tmp_path / "preds.thresholds.json").read_text())
    assert beside["findings"]["Hernia"] == {"threshold": 0.5, "method": "unknown",
                                            "split": None, "positives": None,
                                            "negatives": None}


def test_an_output_that_cannot_be_written_is_refused_before_predicting(folder, models,
                                                                       tmp_path):
    # Issue: an unwritable --output was found only after every file was predicted.
    run_dir, _ = models
    out = tmp_path / "no_such_folder" / "preds.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.predict", f"--model={run_dir}", str(folder),
         f"--output={out}"], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: {out}: cannot be written (No such file or "
                                        "directory)"]


@pytest.mark.slow
def test_json_output_and_no_finding_label(folder, models):
    run_dir, _ = models
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.predict", f"--model={run_dir}", "--threshold=0.999",
         str(folder / "a.png"), str(folder / "dicom" / "m2.dcm"), "--json"],
        capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["predicted"] == 2 and out["failed"] == []
    assert out["thresholds_from"] == "--threshold=0.999"
    assert [p["positive_labels"] for p in out["predictions"]] == [labels.NO_FINDING] * 2


def test_a_threshold_no_probability_reaches_gives_no_finding(folder, models):
    run_dir, _ = models
    model = predictor.Predictor(str(run_dir), threshold=0.999)
    assert model.thresholds_from is None  # no thresholds.json: the app names --threshold
    assert model.thresholds.tolist() == [0.999] * 14
    rows, failures, _ = predictor.predict_files(model, [str(folder / "a.png"),
                                                        str(folder / "dicom" / "m2.dcm")])
    assert failures == [] and [r["positive_labels"] for r in rows] == [labels.NO_FINDING] * 2


def test_gradcam_overlays_per_file_and_finding(folder, models, tmp_path):
    run_dir, export_dir = models
    model = predictor.Predictor(str(run_dir), threshold=0.5)
    files = [str(folder / "a.png"), str(folder / "dicom" / "m2.dcm")]
    rows, _, overlays = predictor.predict_files(model, files, gradcam_dir=str(tmp_path / "cam"),
                                              gradcam_top_k=2)
    expected = []
    for row in rows:
        stem = os.path.splitext(os.path.basename(row["file"]))[0]
        found = row["positive_labels"].split("|")
        if found == [labels.NO_FINDING]:
            order = np.argsort(-np.array(row["probabilities"]))[:2]
            found = [labels.LABELS[c] for c in order]
        expected += [f"{stem}_{name}.png" for name in found]
    assert [os.path.basename(p) for p in overlays] == expected
    for path in overlays:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (256, 256) and img.mode == "RGB"
    with pytest.raises(ValueError, match="^gradcam_dir needs the Keras model: the predictor "):
        predictor.predict_files(predictor.Predictor(str(export_dir)), files, gradcam_dir=str(tmp_path))


def test_the_apps_summary_names_the_counts_the_csv_and_each_failure():
    from cxr_tf import predict

    summary = {"model": "models/cxr/1", "thresholds_from": "--threshold=0.5", "files": 3,
               "predicted": 2, "output": "preds.csv", "gradcam_dir": None, "gradcam": [],
               "decisions": {"summary": "the default 0.5 for every finding"},
               "decisions_file": "preds.thresholds.json", "out_of_distribution": 1,
               "failed": [{"file": "b.png", "reason": "b.png: PNG truncated (read 9 bytes)"}]}
    assert predict.format_summary(summary).splitlines() == [
        "Predicted 2 of 3 files with models/cxr/1 (thresholds: --threshold=0.5).",
        "Thresholds: the default 0.5 for every finding",
        "CSV: preds.csv (thresholds and their provenance: preds.thresholds.json)",
        "Out of distribution: 1 of 2 files (in_distribution 0 in the CSV: do not trust their "
        "findings)",
        "1 failed:", "  b.png: PNG truncated (read 9 bytes)"]
    no_detector = {**summary, "out_of_distribution": None, "failed": []}
    assert not [line for line in predict.format_summary(no_detector).splitlines()
                if line.startswith(("Out of distribution", "1 failed"))]


def test_unknown_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a SavedModel .* nor a run dir"):
        predictor.Predictor(str(tmp_path))


# ---- hostile folders (issue 10): one bad file is one counted failure


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, folder):
    """A folder as a careless export or an attacker leaves it: a FIFO and a link to
    /dev/zero named like images, a link loop, a folder link back up, a name that is not
    UTF-8, a 1x40000 PNG and DICOMs a scanner writes (window width 0, JPEG-LS)."""
    import pydicom
    from pydicom.uid import JPEGLSLossless

    root = tmp_path_factory.mktemp("hostile")
    good = (folder / "a.png").read_bytes()
    (root / "good.png").write_bytes(good)
    os.mkfifo(root / "fifo.png")
    os.symlink("/dev/zero", root / "zero.png")
    os.symlink("loop.png", root / "loop.png")
    (root / "sub").mkdir()
    os.symlink("..", root / "sub" / "up")  # not followed: the walk cannot loop
    with open(os.path.join(os.fsencode(root), b"caf\xe9.png"), "wb") as f:
        f.write(good)

    (root / "narrow.png").write_bytes(png_from(1, 40000, b"\0\0" * 40000))
    film = np.asarray(Image.open(folder / "a.png"))
    (root / "width0.dcm").write_bytes(dicom(film, WindowCenter=128, WindowWidth=0))
    ds = pydicom.dcmread(io.BytesIO(dicom(film)))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless  # pixel data no installed plugin decodes
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 32])
    ds.save_as(root / "jpegls.dcm", enforce_file_format=True)
    return root


def hostile_failures(hostile):
    """{file name: the failure reason predict gives} for the `hostile` folder's bad files."""
    shown = str(hostile) + "/"
    return {
        "fifo.png": f"{shown}fifo.png: a FIFO, not an image file",
        "zero.png": f"{shown}zero.png: a character device, not an image file",
        "loop.png": f"{shown}loop.png: Too many levels of symbolic links",
        "narrow.png": f"{shown}narrow.png: declares 1x40000, padded to 40000x40000 = "
                      "1,600,000,000 pixels, over the 50,000,000 limit",
        "jpegls.dcm": f"{shown}jpegls.dcm: no decoder for JPEG-LS Lossless Image Compression",
    }


@pytest.mark.slow
def test_hostile_folder_every_file_predicted_or_one_failure(hostile, models, tmp_path):
    _, export_dir = models
    out = tmp_path / "out" / "preds.csv"
    out.parent.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.predict", f"--model={export_dir}", str(hostile),
         f"--output={out}", "--json"], capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 1, proc.stderr  # some failed; none hung, none crashed the job
    summary = json.loads(proc.stdout)
    reasons = {os.path.basename(f["file"]): f["reason"] for f in summary["failed"]}
    assert reasons == hostile_failures(hostile)
    predicted = sorted(os.path.basename(p["file"]) for p in summary["predictions"])
    assert predicted == ["caf\\xe9.png", "good.png", "width0.dcm"]
    assert summary["files"] == 8 and summary["predicted"] == 3
    # Written whole, no temporary left; the decisions beside the CSV.
    assert sorted(os.listdir(out.parent)) == ["preds.csv", "preds.thresholds.json"]
    with open(out, newline="", encoding="utf-8") as f:
        rows = {os.path.basename(r["file"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == predicted
    assert rows["caf\\xe9.png"]["Atelectasis"] == rows["good.png"]["Atelectasis"]


def test_hostile_folder_in_process(hostile, models):
    """What the app reports for the hostile folder (test above), from the library: each bad
    file one failure with its reason, none hangs, the others predicted."""
    _, export_dir = models
    files = inputs.list_inputs([str(hostile)])
    rows, failures, _ = predictor.predict_files(predictor.Predictor(str(export_dir)), files)
    assert {os.path.basename(f["file"]): f["reason"] for f in failures} == \
        hostile_failures(hostile)
    assert len(files) == 8 and len(rows) == 3
    assert sorted(os.path.basename(r["file"]) for r in rows) == \
        ["caf\\xe9.png", "good.png", "width0.dcm"]


def test_any_exception_while_decoding_is_that_files_failure(folder, models, monkeypatch):
    _, export_dir = models
    real = predictor.images.preprocess

    def flaky(data, name, size, **kwargs):
        if name.endswith("c.jpg"):
            raise RuntimeError("decoder bug")
        return real(data, name, size, **kwargs)

    monkeypatch.setattr(predictor.images, "preprocess", flaky)
    files = [str(folder / "a.png"), str(folder / "c.jpg"), str(folder / "dicom" / "m2.dcm")]
    rows, failures, _ = predictor.predict_files(predictor.Predictor(str(export_dir)), files)
    assert [os.path.basename(r["file"]) for r in rows] == ["a.png", "m2.dcm"]
    assert failures == [{"file": files[1], "reason": f"{files[1]}: RuntimeError: decoder bug"}]


def test_bytes_read_per_file_are_capped(tmp_path):
    from cxr_tf.data import image_header

    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(image_header.max_file_bytes(1000) + 1)  # sparse: no disk used
    with pytest.raises(image_header.ImageError, match=r"big.png: file over 67,109,864 bytes"):
        predictor.read_file(str(big), str(big), image_header.max_file_bytes(1000))
    assert len(predictor.read_file(str(big), "x", image_header.max_file_bytes(1000) + 1)) == \
        image_header.max_file_bytes(1000) + 1


def test_max_pixels_reaches_the_decoder(folder, models):
    _, export_dir = models
    files = [str(folder / "a.png")]  # 40x48: a 48x48 square once padded, 2,304 pixels
    model = predictor.Predictor(str(export_dir))
    rows, failures, _ = predictor.predict_files(model, files, max_pixels=2303)
    assert rows == [] and failures[0]["reason"].endswith("over the 2,303 limit")
    rows, failures, _ = predictor.predict_files(model, files, max_pixels=2304)
    assert len(rows) == 1 and failures == []
