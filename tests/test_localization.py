"""NIH boxes: the reader on the real header (plain or gzipped, bad rows), boxes through
pad-and-resize on non-square images, the pointing game on hand-made maps (tied maxima, maps that
point nowhere), the bootstrap, the real box list's head re-keyed onto synthetic films and
checked against an independent count, and the evaluate report section."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_tf import errors, labels
from cxr_tf.data import image_header, images
from cxr_tf.evaluation import box_list, box_overlays, localization
from cxr_tf.evaluation.config import EvalConfig
from cxr_tf.evaluation.inputs import Bootstrap

HEAD = Path(__file__).resolve().parent / "data" / "bbox" / "BBox_List_2017_head.csv"


def test_evaluation_module_imports_no_tensorflow(import_roots):
    for module in ("localization", "box_list", "box_overlays"):
        assert not import_roots(f"evaluation/{module}.py") & {"tensorflow", "keras"}


def test_reads_the_real_header_shape():
    boxes = box_list.read_boxes(HEAD).boxes
    assert len(boxes) == 8
    assert boxes[0] == box_list.Box("00013118_008.png", "Atelectasis", 225.084745762712,
                                        547.019216763771, 86.7796610169491, 79.1864406779661)
    assert [b.label for b in boxes if b.image_id == "00005066_030.png"] == [
        "Cardiomegaly", "Infiltration"]  # "Infiltrate" in the file
    assert {b.label for b in boxes} <= set(labels.LABELS)


def test_reads_rows_with_trailing_empty_cells(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("Finding Label,Image Index,Bbox [x,y,w,h],,,\n"
                    "Mass,00000001_000.png,1,2,3,4,,,\n\n")
    assert box_list.read_boxes(path).boxes == [
        box_list.Box("00000001_000.png", "Mass", 1.0, 2.0, 3.0, 4.0)]


@pytest.mark.parametrize("text, message", [
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Fracture,1,2,3,4\n",
     r"b.csv:2: unknown finding 'Fracture'"),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Mass,1,2,3\n",
     r"b.csv:2: 5 field\(s\) \['00000001_000.png', 'Mass', '1', '2', '3'\]; expected the "),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Mass,1,2,3,x\n",
     r"b.csv:2: box \['1', '2', '3', 'x'\] is not four numbers x, y, w, h"),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Mass,1,2,0,4\n",
     r"b.csv:2: box width and height must be > 0; got 0.0, 4.0"),
    ("Image,Label,x,y,w,h\n", r"b.csv: expected columns 'Image Index', 'Finding Label'"),
    # Issue: a one-field row was an IndexError traceback.
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png\n",
     r"b.csv:2: 1 field\(s\) \['00000001_000.png'\]; expected the image, the finding and the "
     r"box's x, y, w, h"),
])
def test_bad_box_lists_name_the_line_and_reason(tmp_path, text, message):
    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(box_list.BoxListError, match=message) as raised:
        box_list.read_boxes(path)
    assert isinstance(raised.value, errors.UserError)


def test_a_gzipped_box_list_reads_as_the_plain_one(tmp_path):
    # Issue: --bbox_csv=BBox_List_2017.csv.gz was a UnicodeDecodeError traceback.
    import gzip

    gz = tmp_path / "BBox_List_2017.csv.gz"
    gz.write_bytes(gzip.compress(HEAD.read_bytes()))
    assert box_list.read_boxes(gz).boxes == box_list.read_boxes(HEAD).boxes
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gz.read_bytes()[:-20])
    with pytest.raises(box_list.BoxListError, match=r"cut.csv.gz: not a gzipped CSV \("):
        box_list.read_boxes(cut)


def test_boxes_that_are_not_finite_are_counted_as_invalid_with_a_warning(tmp_path, caplog):
    path = tmp_path / "b.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00000001_000.png,Mass,1,2,3,4\n"
                    "00000001_000.png,Mass,nan,2,3,4\n"
                    "00000002_000.png,Nodule,1,inf,3,4\n"
                    "00000002_000.png,Nodule,1,2,-inf,4\n")
    with caplog.at_level("WARNING"):
        boxes = box_list.read_boxes(path)
    assert [b.image_id for b in boxes.boxes] == ["00000001_000.png"]
    assert boxes.invalid == (f"{path}:3: box ['nan', '2', '3', '4'] is not finite",
                             f"{path}:4: box ['1', 'inf', '3', '4'] is not finite",
                             f"{path}:5: box ['1', '2', '-inf', '4'] is not finite")
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: 3 box(es) with coordinates that are not finite numbers left out (first: "
        f"{boxes.invalid[0]})"]
    section, _ = localization.summarize([], boxes, size=32)
    assert (section["boxes_read"], section["boxes_invalid"]) == (4, 3)
    assert section["boxes_invalid_first"] == list(boxes.invalid)
    assert "- invalid: " + boxes.invalid[0] in localization.format_markdown(section)


def test_a_box_list_that_is_not_text_is_a_box_list_error(tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes(b"Image Index,Finding Label,Bbox [x,y,w,h]\n\xff\xfe\x00,Mass,1,2,3,4\n")
    with pytest.raises(box_list.BoxListError, match=r"b.csv: not a CSV text file \("):
        box_list.read_boxes(path)


def test_find_boxes_looks_beside_the_list_and_under_data_dir(tmp_path):
    (tmp_path / "kaggle" / "images_001" / "images").mkdir(parents=True)
    (tmp_path / "kaggle" / "images_001" / "images" / "00000001_000.png").write_bytes(b"x")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "00000002_000.png").write_bytes(b"x")
    csv = tmp_path / "lists" / "b.csv"
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                   "00000001_000.png,Mass,1,2,3,4\n00000002_000.png,Mass,1,2,3,4\n"
                   "00000003_000.png,Mass,1,2,3,4\n")
    found = box_list.find_boxes(str(csv), str(tmp_path / "kaggle"))
    assert found.source == str(csv) and len(found.boxes) == 3
    assert found.paths == {
        "00000001_000.png": str(tmp_path / "kaggle" / "images_001" / "images" / "00000001_000.png"),
        "00000002_000.png": str(tmp_path / "lists" / "00000002_000.png")}


def test_box_scaling_worked_out():
    box = box_list.Box("a.png", "Mass", 100, 50, 200, 100)
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
    box = box_list.Box("a.png", "Mass", width * 0.2, height * 0.3, width * 0.4, height * 0.5)
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

    # Chance: a 2×1 box covers 2 of 16 pixels; half of a box hanging off the edge counts.
    assert localization.chance((0, 0, 2, 1), 4) == pytest.approx(2 / 16)
    assert localization.chance((3, 3, 2, 2), 4) == pytest.approx(1 / 16)


def test_the_point_tested_is_the_centre_of_the_tied_maximum():
    # A 2×2 Grad-CAM grid upsampled to 64 px: the top-right cell's maximum is a 16×16 block
    # of equal values in the corner (the bilinear resize clamps past the cell centres). Issue:
    # argmax tested its top-left pixel (0, 48), on the image's top row.
    import tensorflow as tf

    cells = np.array([[0.2, 1.0], [0.1, 0.3]], np.float32)[None, :, :, None]
    upsampled = tf.image.resize(cells, (64, 64), method="bilinear").numpy()[0, :, :, 0]
    rows, cols = np.nonzero(upsampled == upsampled.max())
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 15, 48, 63)
    assert int(np.argmax(upsampled)) == 48  # row 0, col 48: what used to be tested
    assert localization.peak(upsampled) == (7.5, 55.5)  # the block's centre
    assert localization.is_hit((7.5, 55.5), (50, 5, 10, 10))  # x 50..60, y 5..15
    assert not localization.is_hit((0, 48), (50, 5, 10, 10))
    # Two tied regions: the larger wins, whatever comes first in row-major order.
    two = np.zeros((8, 8))
    two[0, 0] = 1.0
    two[4:7, 4:7] = 1.0
    assert localization.peak(two) == (5.0, 5.0)
    # An L-shaped region (7 pixels down column 0, 3 more along row 6): its centroid (3.9,
    # 0.6) lies in pixel (4, 1), outside it; the point is its nearest pixel, (4, 0).
    ell = np.zeros((8, 8))
    ell[0:7, 0] = ell[6, 1:4] = 1.0
    assert localization.peak(ell) == (4.0, 0.0)
    # Float noise below 1e-6 of the range is a tie; the unique maximum stays itself.
    noisy = np.zeros((4, 4))
    noisy[1, 1:3] = [1.0, 1.0 - 1e-9]
    assert localization.peak(noisy) == (1.0, 1.5)
    single = np.zeros((4, 4))
    single[2, 3] = 0.9
    assert localization.peak(single) == (2.0, 3.0)


def test_maps_that_point_nowhere_are_counted_and_not_scored():
    assert localization.is_flat(np.zeros((8, 8))) and localization.is_flat(np.ones((8, 8)))
    assert localization.is_flat(np.full((8, 8), np.nan))
    almost = np.ones((8, 8))
    almost[0, 0] = 1 + 1e-9
    assert localization.is_flat(almost)
    assert not localization.is_flat(np.eye(8))
    boxes = [box_list.Box("00000001_000.png", "Mass", 0, 0, 8, 8),
             box_list.Box("00000001_000.png", "Mass", 8, 8, 8, 8),
             box_list.Box("00000002_000.png", "Mass", 0, 0, 8, 8),
             box_list.Box("00000001_000.png", "Nodule", 0, 0, 8, 8)]
    found = box_list.BoxList("b.csv", boxes, {})
    film = np.zeros((16, 16), np.uint8)
    corner = np.zeros((16, 16))
    corner[:4, :4] = 1.0  # points at (1.5, 1.5): inside the first box only
    pairs = [localization.Pair("00000001_000.png", "Mass", [b[2:] for b in [(0, 0, 0, 0, 8, 8),
                                                                             (0, 0, 8, 8, 8, 8)]],
                               [], None, film, np.zeros((16, 16))),  # flat: all zero
             localization.Pair("00000002_000.png", "Mass", [(0, 0, 8, 8)], [True], (1.5, 1.5),
                               film, corner),
             localization.Pair("00000001_000.png", "Nodule", [(0, 0, 8, 8)], [], None, film,
                               np.ones((16, 16)))]  # flat: constant
    section, examples = localization.summarize(pairs, found, size=16, bootstrap=Bootstrap(0))
    mass, nodule = section["per_finding"]["Mass"], section["per_finding"]["Nodule"]
    assert (mass["boxes"], mass["hits"], mass["hit_rate"]) == (1, 1, 1.0)
    assert (mass["flat_maps"], mass["flat_map_boxes"]) == (1, 2)
    assert (nodule["boxes"], nodule["hit_rate"], nodule["chance"]) == (0, None, None)
    assert nodule["hit_rate_not_scored"] == localization.FLAT_REASON
    assert (section["flat_maps"], section["boxes_on_flat_maps"], section["boxes_scored"]) == (
        2, 3, 1)
    assert section["overall"]["hit_rate"] == 1.0 and section["overall"]["images"] == 1
    assert [p.image_id for p in examples["Mass"]] == ["00000002_000.png"]  # no flat example
    assert "| Nodule | 0 | 0 | 0 | 0 | not scored | – | 1 (1 boxes) |" in \
        localization.format_markdown(section)


def test_the_real_box_list_head_re_keyed_onto_synthetic_films_agrees_with_a_recount(
        kaggle_dir, tmp_path):
    """NIH's first box rows (tests/data/bbox), their images renamed to synthetic films and
    their boxes scaled from 1024 px to the films' 64 px; the stand-in map points at each
    film's centre block or nowhere (Cardiomegaly), and every count is recounted with pandas
    and plain geometry, independently of the module."""
    import pandas as pd

    head = pd.read_csv(HEAD, header=0, names=["image", "finding", "x", "y", "w", "h"],
                       usecols=range(6))
    films = sorted(kaggle_dir.glob("images_*/images/*.png"))
    rename = {name: films[i].name for i, name in enumerate(dict.fromkeys(head["image"]))}
    head["image"] = head["image"].map(rename)
    head[["x", "y", "w", "h"]] *= 64 / 1024
    csv = tmp_path / "boxes.csv"
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n" + "".join(
        f"{r.image},{r.finding},{r.x},{r.y},{r.w},{r.h}\n" for r in head.itertuples()))

    def centre_or_nowhere(batch, class_indices):
        maps = np.zeros(batch.shape[:3], np.float32)
        maps[:, 12:20, 12:20] = 1.0  # a tied 8×8 block: centre (15.5, 15.5) of 32
        maps[np.asarray(class_indices) == labels.LABELS.index("Cardiomegaly")] = 0.0
        return maps

    found = box_list.find_boxes(str(csv), str(kaggle_dir))
    pairs = list(localization.point(found, centre_or_nowhere, 32))
    section, _ = localization.summarize(pairs, found, size=32, bootstrap=Bootstrap(0))
    # The recount: each box on the 32 px input is x * 32/64 (the films are square 64 px); the
    # point tested is (16, 16) in edge coordinates.
    head[["x", "y", "w", "h"]] *= 32 / 64
    head["finding"] = head["finding"].replace("Infiltrate", "Infiltration")
    head["hit"] = ((head.x <= 16) & (16 <= head.x + head.w) & (head.y <= 16) &
                   (16 <= head.y + head.h))
    flat = head["finding"] == "Cardiomegaly"
    scored = head[~flat]
    assert section["boxes_read"] == len(head) == 8
    assert (section["flat_maps"], section["boxes_on_flat_maps"]) == (1, 1)
    assert section["boxes_scored"] == len(scored) == 7
    overall = section["overall"]
    assert overall["images"] == scored["image"].nunique() == 6
    assert overall["pairs"] == len(scored.groupby(["image", "finding"])) == 7
    assert overall["hits"] == int(scored["hit"].sum())
    for finding, rows in scored.groupby("finding"):
        entry = section["per_finding"][finding]
        assert (entry["boxes"], entry["images"], entry["hits"]) == (
            len(rows), rows["image"].nunique(), int(rows["hit"].sum())), finding
        assert entry["chance"] == pytest.approx(float((rows.w * rows.h).mean()) / 32 ** 2)
    assert section["per_finding"]["Cardiomegaly"]["hit_rate"] is None


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
    boxes = box_list.read_boxes(tmp_path / "b.csv").boxes
    paths = box_list.find_images([tmp_path], [b.image_id for b in boxes])
    assert sorted(paths) == ["00000001_000.png", "00000002_000.png", "00000004_000.png"]
    found = box_list.BoxList("b.csv", boxes, paths)
    pairs = list(localization.point(found, brightness_map, 32, batch_size=2))
    assert [p.image_id for p in pairs if p.error] == ["00000004_000.png"]
    assert [(p.image_id, p.label, p.hits) for p in pairs if not p.error] == [
        ("00000001_000.png", "Mass", [True, False]),
        ("00000002_000.png", "Nodule", [True]),
        ("00000001_000.png", "Effusion", [True])]
    # The wide film's first box: (38, 18 + 12) × 32/64 = (19, 15), 10 × 0.5 = 5 a side.
    assert pairs[0].boxes[0] == pytest.approx((19, 15, 5, 5))
    assert pairs[2].error.startswith("00000004_000.png: ")
    section, examples = localization.summarize(pairs, found, size=32, bootstrap=Bootstrap(50),
                                               examples_per_finding=1)
    assert section["source"] == "b.csv" and section["bootstrap"]["replicates"] == 50
    assert section["per_finding"]["Mass"] | {"hit_rate_ci_low": 0, "hit_rate_ci_high": 0} == {
        "boxes": 2, "pairs": 1, "images": 1, "patients": 1, "hits": 1, "hit_rate": 0.5,
        "hit_rate_ci_low": 0, "hit_rate_ci_high": 0, "hit_rate_not_scored": None,
        "chance": pytest.approx(25 / 1024),  # each box 5×5 of 32×32
        "flat_maps": 0, "flat_map_boxes": 0}
    assert section["per_finding"]["Mass"]["hit_rate_ci_low"] is None  # one patient
    # Effusion's box is the whole film: 32 × 20 of the padded 32×32 input.
    assert section["per_finding"]["Effusion"]["chance"] == pytest.approx(20 / 32)
    assert list(section["per_finding"]) == ["Effusion", "Mass", "Nodule"]  # label order
    overall = section["overall"]
    assert (overall["boxes"], overall["hits"], overall["patients"]) == (4, 3, 2)
    # Three (image, finding) pairs on two distinct images: the overall row counts images once.
    assert (overall["pairs"], overall["images"]) == (3, 2)
    assert (section["boxes_read"], section["boxes_scored"]) == (6, 4)
    assert section["images_missing_first"] == ["00000003_000.png"]
    assert section["images_unreadable"] == 1
    assert section["images_unreadable_first"] == [pairs[2].error]
    assert [len(v) for v in examples.values()] == [1, 1, 1]
    grid = box_overlays.plot_overlays(tmp_path / "grid.png", examples)
    with Image.open(grid) as img:
        assert img.size == (260, 840)  # 1 column × 3 findings at 2.6 × 2.8 inches, 100 dpi
    text = localization.format_markdown(section, grid)
    assert "| Mass | 2 | 1 | 1 | 1 | 0.500 | 0.024 | 0 (0 boxes) |" in text
    assert "| **all** (images counted once) | 4 | 3 | 2 | 3 | 0.750 [" in text
    assert "![Grad-CAM overlays with NIH boxes](grid.png)" in text


def test_evaluate_report_has_the_localization_section(kaggle_dir, tmp_path, make_run_dir):
    from cxr_tf.evaluation import runner

    make_run_dir(tmp_path / "run", kaggle_dir)
    first, second = sorted(kaggle_dir.glob("images_*/images/*.png"))[:2]
    csv = tmp_path / "BBox_List_2017.csv"
    # An untrained 32 px resnet18's conv5 is 1×1: its upsampled map is constant, so it points
    # nowhere. Issue: such maps were scored as misses (or hits) at pixel (0, 0).
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                   f"{first.name},Mass,0,0,8,8\n"
                   f"{second.name},Mass,30,30,8,8\n"
                   "99999999_000.png,Mass,0,0,8,8\n")  # not found
    report = runner.evaluate(EvalConfig(model_dir=str(tmp_path / "run"), data_dir=str(kaggle_dir),
                                        bootstrap=20, bbox_csv=str(csv)), progress=False)
    section = report["localization"]
    mass = section["per_finding"]["Mass"]
    assert (mass["flat_maps"], mass["flat_map_boxes"], mass["boxes"], mass["hits"]) == (2, 2, 0, 0)
    assert mass["hit_rate"] is None and mass["chance"] is None
    assert mass["hit_rate_not_scored"] == localization.FLAT_REASON
    assert (section["boxes_scored"], section["boxes_on_flat_maps"]) == (0, 2)
    assert section["images_missing"] == 1
    out = tmp_path / "run" / "eval_test"
    assert json.loads((out / "report.json").read_text())["localization"] == section
    text = (out / "report.md").read_text()
    assert "## Localisation: Grad-CAM pointing game" in text
    assert "0 of 3 scored (2 on 2 maps that point nowhere, 0 invalid, 1 images not found" in text
    assert "| Mass | 0 | 0 | 0 | 0 | not scored | – | 2 (2 boxes) |" in text
    assert (out / "localization.png").stat().st_size > 0
    from cxr_tf import evaluate

    assert ("Grad-CAM pointing game: 0 of 0 NIH boxes hit (no box scored); 2 boxes on 2 maps "
            "that point nowhere, not scored") in evaluate.format_summary(report)


def test_evaluate_refuses_a_box_list_without_images(tmp_path, make_run_dir):
    from cxr_tf.evaluation import runner

    make_run_dir(tmp_path / "run")
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "b.csv").write_text(HEAD.read_text())
    config = EvalConfig(model_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "run"),
                        bbox_csv=str(tmp_path / "boxes" / "b.csv"))
    with pytest.raises(box_list.BoxImagesMissing,
                       match=r"none of the 6 images of the box list is under") as raised:
        runner.evaluate(config)
    assert isinstance(raised.value, errors.UserError)
    assert isinstance(raised.value, FileNotFoundError)  # an OSError, as before
