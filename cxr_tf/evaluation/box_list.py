"""NIH's radiologist box list (`BBox_List_2017.csv`), read and matched to its image files: the
input of the pointing game (`localization`).

NIH ships 984 boxes on 880 test images, 8 findings (Infiltration spelled `Infiltrate`), in
pixels of the 1024×1024 PNGs as distributed. The header is
`Image Index,Finding Label,Bbox [x,y,w,h],,,`: the box header is split by its commas into
`Bbox [x`, `y`, `w`, `h]` and three unnamed columns, so the four numbers are read by position
after the column whose name starts with `Bbox`. The list may be gzipped (`.csv.gz`), as the
other inputs may. A box whose numbers are not finite (NaN, inf) is counted as invalid, with a
warning, and not scored; any other bad row is an error naming the file and the line.
"""

import csv
import dataclasses
import gzip
import logging
import math
import os

from cxr_tf import errors
from cxr_tf import labels as labels_lib

ALIASES = {"Infiltrate": "Infiltration"}


class BoxListError(errors.UserError, ValueError):
    """A box list that cannot be read: the message names the file, the line and the reason."""


class BoxImagesMissing(errors.UserError, FileNotFoundError):
    """None of a box list's images is where it was looked for."""


@dataclasses.dataclass(frozen=True)
class Box:
    """One row of the box list: (x, y) is the top-left corner, in pixels of the image file."""
    image_id: str
    label: str
    x: float
    y: float
    w: float
    h: float


@dataclasses.dataclass(frozen=True)
class BoxList:
    """A box list with the image files it was matched to (`find_boxes`).

    source: the box list's path; boxes: [Box]; paths: {image name: file} of the images found;
    invalid: "FILE:LINE: reason" of each row left out (coordinates that are not finite).
    """
    source: str
    boxes: list
    paths: dict
    invalid: tuple = ()


def read_boxes(path):
    """The BoxList of NIH's box list (`paths` still empty), plain or gzipped; columns found by
    header name (the box by its `Bbox` prefix).

    A box with a coordinate that is not finite (NaN, inf) is left out and listed in
    `invalid`, with one warning. Raises BoxListError naming the file, the line and the reason
    for a missing column, a row too short, an unknown finding, a coordinate that is not a
    number or a width/height <= 0.
    """
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"  # by its first bytes, whatever its name
    try:
        with (gzip.open(path, "rt", newline="", encoding="utf-8-sig") if gzipped else
              open(path, newline="", encoding="utf-8-sig")) as f:
            boxes, invalid = _boxes(path, csv.reader(f))
    except (UnicodeDecodeError, csv.Error, gzip.BadGzipFile, EOFError) as e:
        kind = "gzipped CSV" if gzipped else "CSV text file"
        raise BoxListError(f"{path}: not a {kind} ({e})") from None
    if invalid:
        logging.warning("%s: %d box(es) with coordinates that are not finite numbers left out "
                        "(first: %s)", path, len(invalid), invalid[0])
    return BoxList(os.fspath(path), boxes, {}, tuple(invalid))


def _boxes(path, reader):
    header = [h.strip() for h in next(reader, [])]
    try:
        name_at, label_at = header.index("Image Index"), header.index("Finding Label")
        box_at = next(i for i, h in enumerate(header) if h.startswith("Bbox"))
    except (ValueError, StopIteration):
        raise BoxListError(f"{path}: expected columns 'Image Index', 'Finding Label' and "
                           f"'Bbox [x,y,w,h]'; found {header}") from None
    boxes, invalid, needed = [], [], max(name_at, label_at, box_at + 3) + 1
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < needed:
            raise BoxListError(f"{path}:{line}: {len(row)} field(s) {row}; expected the image, "
                               "the finding and the box's x, y, w, h")
        label = ALIASES.get(row[label_at].strip(), row[label_at].strip())
        if label not in labels_lib.LABELS:
            raise BoxListError(f"{path}:{line}: unknown finding {row[label_at]!r}")
        try:
            x, y, w, h = (float(v) for v in row[box_at:box_at + 4])
        except ValueError:
            raise BoxListError(f"{path}:{line}: box {row[box_at:box_at + 4]} is not four "
                               "numbers x, y, w, h") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            invalid.append(f"{path}:{line}: box {row[box_at:box_at + 4]} is not finite")
            continue
        if not (w > 0 and h > 0):
            raise BoxListError(f"{path}:{line}: box width and height must be > 0; got {w}, {h}")
        boxes.append(Box(row[name_at].strip(), label, x, y, w, h))
    return boxes, invalid


def find_images(dirs, names):
    """{name: path} for the wanted file names anywhere under the given folders (first wins)."""
    wanted, found = set(names), {}
    for top in dirs:
        for root, _, files in os.walk(top):
            for name in wanted.intersection(files):
                found.setdefault(name, os.path.join(root, name))
    return found


def find_boxes(bbox_csv, data_dir):
    """The BoxList of NIH's box list; images are looked for beside the CSV (where the Kaggle
    download has it) and under data_dir. BoxImagesMissing when none of them is found."""
    box_list = read_boxes(bbox_csv)
    boxes = box_list.boxes
    dirs = list(dict.fromkeys([os.path.dirname(os.path.abspath(bbox_csv)),
                               os.path.abspath(data_dir)]))  # walked once each
    paths = find_images(dirs, [b.image_id for b in boxes])
    if boxes and not paths:
        raise BoxImagesMissing(
            f"{bbox_csv}: none of the {len({b.image_id for b in boxes}):,} images of the box "
            f"list is under {' or '.join(dirs)}; the boxes need the image files (their "
            "size places each box)")
    return dataclasses.replace(box_list, source=os.path.abspath(bbox_csv), paths=paths)
