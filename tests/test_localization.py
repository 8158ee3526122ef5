"""NIH boxes: the reader on the real header, boxes through pad-and-resize on non-square images,
the pointing game on hand-made maps, the bootstrap, and the evaluate report section."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_tf import errors, labels
from cxr_tf.data import image_header, images
from cxr_tf.evaluation import localization
from cxr_tf.evaluation.config import EvalConfig
from cxr_tf.evaluation.inputs import Bootstrap

HEAD = Path(__file__).resolve().parent / "data" / "bbox" / "BBox_List_2017_head.csv"


def test_evaluation_module_imports_no_tensorflow(import_roots):
    assert not import_roots("evaluation/localization.py") & {"tensorflow", "keras"}


def test_reads_the_real_header_shape():
    boxes = localization.read_boxes(HEAD)
    assert len(boxes) == 8
    assert boxes[0] == localization.Box("00013118_008.png", "Atelectasis", 225.084745762712,
                                        547.019216763771, 86.7796610169491, 79.1864406779661)
    assert [b.label for b in boxes if b.image_id == "00005066_030.png"] == [
        "Cardiomegaly", "Infiltration"]  # "Infiltrate" in the file
    assert {b.label for b in boxes} <= set(labels.LABELS)


def test_reads_rows_with_trailing_empty_cells(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("Finding Label,Image Index,Bbox [x,y,w,h],,,\n"
                    "Mass,00000001_000.png,1,2,3,4,,,\n\n")
    assert localization.read_boxes(path) == [
        localization.Box("00000001_000.png", "Mass", 1.0, 2.0, 3.0, 4.0)]


@pytest.mark.parametrize("text, message", [
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Fracture,1,2,3,4\n",
     r"b.csv:2: unknown finding 'Fracture'"),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Mass,1,2,3\n",
     r"b.csv:2: box \['1', '2', '3'\] is not four numbers x, y, w, h"),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Mass,1,2,0,4\n",
     r"b.csv:2: box width and height must be > 0; got 0.0, 4.0"),
    ("Image,Label,x,y,w,h\n", r"b.csv: expected columns 'Image Index', 'Finding Label'"),
])
def test_bad_box_lists_name_the_line_and_reason(tmp_path, text, message):
    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(localization.BoxListError, match=message) as raised:
        localization.read_boxes(path)
    assert isinstance(raised.value, errors.UserError)


def test_a_box_list_that_is_not_text_is_a_box_list_error(tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes(b"Image Index,Finding Label,Bbox [x,y,w,h]\n\xff\xfe\x00,Mass,1,2,3,4\n")
    with pytest.raises(localization.BoxListError, match=r"b.csv: not a CSV text file \("):
        localization.read_boxes(path)


def test_find_boxes_looks_beside_the_list_and_under_data_dir(tmp_path):
    (tmp_path / "kaggle" / "images_001" / "images").mkdir(parents=True)
    (tmp_path / "kaggle" / "images_001" / "images" / "00000001_000.png").write_bytes(b"x")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "00000002_000.png").write_bytes(b"x")
    csv = tmp_path / "lists" / "b.csv"
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                   "00000001_000.png,Mass,1,2,3,4\n00000002_000.png,Mass,1,2,3,4\n"
                   "00000003_000.png,Mass,1,2,3,4\n")
    found = localization.find_boxes(str(csv), str(tmp_path / "kaggle"))
    assert found.source == str(csv) and len(found.boxes) == 3
    assert found.paths == {
        "00000001_000.png": str(tmp_path / "kaggle" / "images_001" / "images" / "00000001_000.png"),
        "00000002_000.png": str(tmp_path / "lists" / "00000002_000.png")}


def test_box_scaling_worked_out():
    box = localization.Box("a.png", "Mass", 100, 50, 200, 100)
    # Wide 600×1000 (H×W): padded to 1000², 200 rows on top (left 0), then ×100/1000.
    assert localization.to_input(box, (600, 1000), 100) == pytest.approx((10, 25, 20, 10))
    # Tall 1000×600: 200 columns on the left, top 0.
    assert localization.to_input(box, (1000, 600), 100) == pytest.approx((30, 5, 20, 10))
    # Odd padding: 7×10 -> pad 3 rows, top = 3 // 2 = 1 (images.pad_to_square), no resize.
    assert localization.to_input(box, (7, 10), 10) == pytest.approx((100, 51, 200, 100))


@pytest.mark.parametrize("shape", [(90, 150), (150, 90), (101, 64)])
def test_boxes_follow_the_pixels_through_pad_and_resize(shape):
    """A white box drawn on a black non-square film lands, after the real pad_to_square and
    resize, where to_input puts the box (to within the resize's one-pixel blur)."""
    height, width = shape
    box = localization.Box("a.png", "Mass", width * 0.2, height * 0.3, width * 0.4, height * 0.5)
    film = np.zeros(shape, np.uint8)
    film[int(box.y):int(box.y + box.h), int(box.x):int(box.x + box.w)] = 255
    size = 48
    pixels = images.resize(images.pad_to_square(film)[0], size)
    rows, cols = np.nonzero(pixels > 127)
    x, y, w, h = localization.to_input(box, shape, size)
    assert cols.min() == pytest.approx(x, abs=1) and cols.max() + 1 == pytest.approx(x + w, abs=1)
    assert rows.min() == pytest.approx(y, abs=1) and rows.max() + 1 == pytest.approx(y + h, abs=1)


def test_hits_on_hand_made_heatmaps():
    heatmap = np.zeros((4, 4))
    heatmap[1, 2] = 1.0  # the maximum: row 1, col 2, centre at (x, y) = (2.5, 1.5)
    at = localization.peak(heatmap)
    assert at == (1, 2)
    assert localization.is_hit(at, (2, 1, 1, 1))  # x 2..3 holds 2.5, y 1..2 holds 1.5
    assert not localization.is_hit(at, (0, 0, 2, 2))  # x 0..2 misses 2.5
    assert localization.is_hit(at, (2.5, 1.5, 1, 1))  # edges count
    assert not localization.is_hit(at, (2, 0, 1, 1.4))  # y 0..1.4 misses 1.5
    # Ties: the first maximum in row-major order.
    assert localization.peak(np.ones((3, 3))) == (0, 0)
    # Chance: a 2×1 box covers 2 of 16 pixels; half of a box hanging off the edge counts.
    assert localization.chance((0, 0, 2, 1), 4) == pytest.approx(2 / 16)
    assert localization.chance((3, 3, 2, 2), 4) == pytest.approx(1 / 16)


def test_hit_rate_ci_resamples_patients():
    # Patient A: 3 hits of 3 boxes; patient B: 0 of 1. Rate 3/4. A resample holds A twice
    # (6/6 = 1), B twice (0/2 = 0) or one each (3/4): the interval spans 0 to 1.
    lo, hi = localization.hit_rate_ci([1, 1, 1, 0], ["A", "A", "A", "B"], n_boot=200)
    assert (lo, hi) == (pytest.approx(0.0), pytest.approx(1.0))
    # Every box hit: every resample is 1.
    assert localization.hit_rate_ci([1, 1, 1], ["A", "B", "C"], n_boot=50) == (
        pytest.approx(1.0), pytest.approx(1.0))
    # One patient: nothing to resample.
    assert localization.hit_rate_ci([1, 0], ["A", "A"], n_boot=50) == (None, None)
    assert localization.hit_rate_ci([1, 0], ["A", "B"], n_boot=0) == (None, None)
    assert localization.patient_of("00012345_007.png") == "00012345"
    assert localization.patient_of("film.png") == "film.png"


def _film(path, shape, spot):
    """A black non-square PNG with one bright 6×6 square whose top-left is `spot` (x, y)."""
    film = np.zeros(shape, np.uint8)
    film[spot[1]:spot[1] + 6, spot[0]:spot[0] + 6] = 255
    Image.fromarray(film).save(path)


def brightness_map(batch, class_indices):
    """A stand-in for Grad-CAM: the input itself, so the maximum is the bright square."""
    assert batch.dtype == np.uint8 and batch.shape[1:] == (32, 32, 1)
    return batch[..., 0].astype(np.float32) / 255.0


def test_pointing_game_on_non_square_films(tmp_path):
    _film(tmp_path / "00000001_000.png", (40, 64), (40, 20))  # wide: pad 12 rows on top
    _film(tmp_path / "00000002_000.png", (64, 40), (5, 50))  # tall: pad 12 columns on the left
    (tmp_path / "b.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Mass,38,18,10,10\n"  # around the spot: hit
        "00000001_000.png,Mass,0,0,10,10\n"  # same map, elsewhere: miss
        "00000002_000.png,Nodule,3,48,10,10\n"  # hit
        "00000001_000.png,Effusion,0,0,64,40\n"  # the whole film: hit
        "00000003_000.png,Mass,0,0,5,5\n"  # no such file
        "00000004_000.png,Mass,0,0,5,5\n")  # a PNG cut short: counted, the game goes on
    (tmp_path / "00000004_000.png").write_bytes(image_header.PNG_SIGNATURE + b"\0\0\0\rIHDR")
    boxes = localization.read_boxes(tmp_path / "b.csv")
    paths = localization.find_images([tmp_path], [b.image_id for b in boxes])
    assert sorted(paths) == ["00000001_000.png", "00000002_000.png", "00000004_000.png"]
    box_list = localization.BoxList("b.csv", boxes, paths)
    pairs = list(localization.point(box_list, brightness_map, 32, batch_size=2))
    assert [p.image_id for p in pairs if p.error] == ["00000004_000.png"]
    assert [(p.image_id, p.label, p.hits) for p in pairs if not p.error] == [
        ("00000001_000.png", "Mass", [True, False]),
        ("00000002_000.png", "Nodule", [True]),
        ("00000001_000.png", "Effusion", [True])]
    # The wide film's first box: (38, 18 + 12) × 32/64 = (19, 15), 10 × 0.5 = 5 a side.
    assert pairs[0].boxes[0] == pytest.approx((19, 15, 5, 5))
    assert pairs[2].error.startswith("00000004_000.png: ")
    section, examples = localization.summarize(pairs, box_list, size=32, bootstrap=Bootstrap(50),
                                               examples_per_finding=1)
    assert section["source"] == "b.csv" and section["bootstrap"]["replicates"] == 50
    assert section["per_finding"]["Mass"] | {"hit_rate_ci_low": 0, "hit_rate_ci_high": 0} == {
        "boxes": 2, "images": 1, "patients": 1, "hits": 1, "hit_rate": 0.5,
        "hit_rate_ci_low": 0, "hit_rate_ci_high": 0,
        "chance": pytest.approx(25 / 1024)}  # each box 5×5 of 32×32
    assert section["per_finding"]["Mass"]["hit_rate_ci_low"] is None  # one patient
    # Effusion's box is the whole film: 32 × 20 of the padded 32×32 input.
    assert section["per_finding"]["Effusion"]["chance"] == pytest.approx(20 / 32)
    assert list(section["per_finding"]) == ["Effusion", "Mass", "Nodule"]  # label order
    overall = section["overall"]
    assert (overall["boxes"], overall["hits"], overall["patients"]) == (4, 3, 2)
    assert (section["boxes_read"], section["boxes_scored"]) == (6, 4)
    assert section["images_missing_first"] == ["00000003_000.png"]
    assert section["images_unreadable"] == 1
    assert section["images_unreadable_first"] == [pairs[2].error]
    assert [len(v) for v in examples.values()] == [1, 1, 1]
    grid = localization.plot_overlays(tmp_path / "grid.png", examples)
    with Image.open(grid) as img:
        assert img.size == (260, 840)  # 1 column × 3 findings at 2.6 × 2.8 inches, 100 dpi
    text = localization.format_markdown(section, grid)
    assert "| Mass | 2 | 1 | 1 | 0.500 | 0.024 |" in text
    assert "| **all** | 4 | 3 | 3 | 0.750 [" in text
    assert "![Grad-CAM overlays with NIH boxes](grid.png)" in text


def test_evaluate_report_has_the_localization_section(kaggle_dir, tmp_path, make_run_dir):
    from cxr_tf.evaluation import runner

    make_run_dir(tmp_path / "run", kaggle_dir)
    first, second = sorted(kaggle_dir.glob("images_*/images/*.png"))[:2]
    csv = tmp_path / "BBox_List_2017.csv"
    # An untrained 32 px resnet18's conv5 is 1×1: its map is flat, so the maximum is the
    # first pixel, (0, 0), centre (0.5, 0.5) on the 32 px input = (1, 1) on the 64 px film.
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                   f"{first.name},Mass,0,0,8,8\n"  # hit
                   f"{second.name},Mass,30,30,8,8\n"  # miss
                   "99999999_000.png,Mass,0,0,8,8\n")  # not found
    report = runner.evaluate(EvalConfig(model_dir=str(tmp_path / "run"), data_dir=str(kaggle_dir),
                                        bootstrap=20, bbox_csv=str(csv)), progress=False)
    section = report["localization"]
    assert section["per_finding"]["Mass"]["hits"] == 1
    assert section["per_finding"]["Mass"]["boxes"] == 2
    assert section["images_missing"] == 1
    out = tmp_path / "run" / "eval_test"
    assert json.loads((out / "report.json").read_text())["localization"] == section
    assert "## Localisation: Grad-CAM pointing game" in (out / "report.md").read_text()
    assert (out / "localization.png").stat().st_size > 0


def test_evaluate_refuses_a_box_list_without_images(tmp_path, make_run_dir):
    from cxr_tf.evaluation import runner

    make_run_dir(tmp_path / "run")
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "b.csv").write_text(HEAD.read_text())
    config = EvalConfig(model_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "run"),
                        bbox_csv=str(tmp_path / "boxes" / "b.csv"))
    with pytest.raises(localization.BoxImagesMissing,
                       match=r"none of the 6 images of the box list is under") as raised:
        runner.evaluate(config)
    assert isinstance(raised.value, errors.UserError)
    assert isinstance(raised.value, FileNotFoundError)  # an OSError, as before
