"""Where did the model look? Grad-CAM's pointing game on NIH's radiologist boxes.

NIH ships `BBox_List_2017.csv` with ChestX-ray14: 984 boxes on 880 test images, 8 findings
(Infiltration spelled `Infiltrate`), in pixels of the 1024×1024 PNGs as distributed. Its
header is `Image Index,Finding Label,Bbox [x,y,w,h],,,`: the box header is split by its commas
into `Bbox [x`, `y`, `w`, `h]` and three unnamed columns, so the four numbers are read by
position after the column whose name starts with `Bbox`.

The pointing game (Zhang et al. 2016, arXiv:1608.00507): a box is a hit when the maximum of the
Grad-CAM map for its finding falls inside it. The box follows the image through the same steps
as the pixels (`images.pad_to_square`, then `images.resize`: `to_input`), and the maximum is
the centre of the map's highest pixel, so the test is made where the model looked.

The size of each image is read from the image file itself. Data_Entry's
`OriginalImage[Width,Height]` is the size of the film before NIH resized every image to
1024×1024 (2682×2749 for 00000001_000.png): the boxes are not in those pixels.

A random point hits a box with the probability of the share of the image it covers (`chance`),
which the report gives beside every hit rate. Numpy only: the heatmaps come from the caller
(`cxr_tf.evaluation.gradcam.GradCam`, through `cxr_tf.evaluation.runner.pointing_game`), so
this module stays free of TensorFlow.
"""

import csv
import dataclasses
import os
import re

import numpy as np

from cxr_tf import errors
from cxr_tf import labels as labels_lib
from cxr_tf.data import images
from cxr_tf.evaluation import inputs, report_markdown

ALIASES = {"Infiltrate": "Infiltration"}
EXAMPLES_PER_FINDING = 3
MAX_LISTED = 20
_NIH_IMAGE_RE = re.compile(r"^(\d{8})_\d{3}\.png$")  # the first 8 digits are the patient


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


@dataclasses.dataclass
class Pair:
    """The pointing game for one (image, finding): its boxes, in model-input pixels."""
    image_id: str
    label: str
    boxes: list  # [(x, y, w, h)] in model-input pixels
    hits: list  # one bool per box
    peak: tuple  # (row, col) of the map's maximum
    image: np.ndarray  # uint8 S×S, the model's input
    heatmap: np.ndarray  # float S×S in [0, 1]
    error: str = None  # why the image could not be read (then no boxes, hits or map)


@dataclasses.dataclass(frozen=True)
class BoxList:
    """A box list with the image files it was matched to (`find_boxes`).

    source: the box list's path; boxes: [Box]; paths: {image name: file} of the images found.
    """
    source: str
    boxes: list
    paths: dict


def read_boxes(path):
    """[Box] from NIH's box list; columns found by header name (the box by its `Bbox` prefix).

    Raises BoxListError naming the file, the line and the reason for a missing column, an
    unknown finding or a coordinate that is not a number (or a width/height <= 0).
    """
    with open(path, newline="") as f:
        try:
            return _boxes(path, csv.reader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise BoxListError(f"{path}: not a CSV text file ({e})") from None


def _boxes(path, reader):
    header = [h.strip() for h in next(reader, [])]
    try:
        name_at, label_at = header.index("Image Index"), header.index("Finding Label")
        box_at = next(i for i, h in enumerate(header) if h.startswith("Bbox"))
    except (ValueError, StopIteration):
        raise BoxListError(f"{path}: expected columns 'Image Index', 'Finding Label' and "
                           f"'Bbox [x,y,w,h]'; found {header}") from None
    boxes = []
    for line, row in enumerate(reader, start=2):
        if not row or not row[name_at].strip():
            continue
        label = ALIASES.get(row[label_at].strip(), row[label_at].strip())
        if label not in labels_lib.LABELS:
            raise BoxListError(f"{path}:{line}: unknown finding {row[label_at]!r}")
        try:
            x, y, w, h = (float(v) for v in row[box_at:box_at + 4])
        except ValueError:
            raise BoxListError(f"{path}:{line}: box {row[box_at:box_at + 4]} is not four "
                               "numbers x, y, w, h") from None
        if not (w > 0 and h > 0):
            raise BoxListError(f"{path}:{line}: box width and height must be > 0; got {w}, {h}")
        boxes.append(Box(row[name_at].strip(), label, x, y, w, h))
    return boxes


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
    boxes = read_boxes(bbox_csv)
    dirs = list(dict.fromkeys([os.path.dirname(os.path.abspath(bbox_csv)),
                               os.path.abspath(data_dir)]))  # walked once each
    paths = find_images(dirs, [b.image_id for b in boxes])
    if boxes and not paths:
        raise BoxImagesMissing(
            f"{bbox_csv}: none of the {len({b.image_id for b in boxes}):,} images of the box "
            f"list is under {' or '.join(dirs)}; the boxes need the image files (their "
            "size places each box)")
    return BoxList(os.path.abspath(bbox_csv), boxes, paths)


def to_input(box, original_shape, size):
    """(x, y, w, h) of a box on the H×W original -> the same box on the size×size model input.

    The image is zero-padded to side×side, centred (`images.pad_to_square`: top = (side - H)
    // 2, left = (side - W) // 2), then resized to size×size, so x' = (x + left) · size / side.
    """
    height, width = original_shape[:2]
    side = max(height, width)
    top, left, scale = (side - height) // 2, (side - width) // 2, size / side
    return ((box.x + left) * scale, (box.y + top) * scale, box.w * scale, box.h * scale)


def peak(heatmap):
    """(row, col) of the map's maximum (the first, in row-major order)."""
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(heatmap)), heatmap.shape))


def is_hit(peak_at, box):
    """Whether the centre of pixel (row, col) lies in the box (x, y, w, h), edges included."""
    row, col = peak_at
    x, y, w, h = box
    return bool(x <= col + 0.5 <= x + w and y <= row + 0.5 <= y + h)


def chance(box, size):
    """Share of the size×size input that the box covers: a random point's hit probability."""
    x, y, w, h = box
    inside_w = max(0.0, min(x + w, size) - max(x, 0.0))
    inside_h = max(0.0, min(y + h, size) - max(y, 0.0))
    return inside_w * inside_h / size ** 2


def load_image(path, size):
    """(uint8 size×size model input, (H, W) of the file): training's decode, pad and resize."""
    with open(path, "rb") as f:
        gray, _ = images.decode_any(f.read(), os.path.basename(path))
    return images.resize(images.pad_to_square(gray)[0], size), gray.shape


def point(box_list, heatmaps, size, *, batch_size=32):
    """Plays the pointing game; yields one Pair per (image, finding) whose image was found.

    An image that cannot be decoded yields a Pair with its `error` (counted by `summarize`)
    rather than stopping the game.

    Args:
        box_list: a BoxList (`find_boxes`): the boxes and the files of their images.
        heatmaps: callable (uint8 (B, S, S, 1) images, class indices (B,)) -> (B, S, S) maps,
            e.g. `cxr_tf.evaluation.gradcam.GradCam(model)`.
        size: S, the model's input side.
    """
    paths, pairs = box_list.paths, {}
    for box in box_list.boxes:
        if box.image_id in paths:
            pairs.setdefault((box.image_id, box.label), []).append(box)
    todo = list(pairs)
    for start in range(0, len(todo), batch_size):
        chunk, loaded = [], []
        for name, label in todo[start:start + batch_size]:
            try:
                loaded.append(load_image(paths[name], size))
                chunk.append((name, label))
            except Exception as e:  # noqa: BLE001 - one bad image is a counted skip
                reason = e if isinstance(e, (images.ImageError, OSError)) else \
                    f"{name}: {type(e).__name__}: {e}"
                yield Pair(name, label, [], [], None, None, None, error=str(reason))
        if not chunk:
            continue
        maps = heatmaps(np.stack([image for image, _ in loaded])[..., None],
                        np.array([labels_lib.LABELS.index(label) for _, label in chunk]))
        for (name, label), (image, shape), heatmap in zip(chunk, loaded, maps):
            heatmap = np.asarray(heatmap)
            on_input = [to_input(b, shape, size) for b in pairs[name, label]]
            at = peak(heatmap)
            yield Pair(name, label, on_input, [is_hit(at, b) for b in on_input], at, image,
                       heatmap)


def patient_of(image_id):
    """NIH's image name starts with the 8-digit patient id; other names stand for themselves."""
    match = _NIH_IMAGE_RE.match(image_id)
    return match.group(1) if match else image_id


def hit_rate_ci(hits, groups, *, n_boot=1000, alpha=0.05, seed=0):
    """Percentile bootstrap CI of the hit rate, resampling groups (patients) whole: (lo, hi).

    A patient's boxes are not independent (one reader, one film series), so patients are
    drawn with replacement and the rate is their hits over their boxes (scipy.stats.bootstrap
    on the paired per-patient sums). None, None with fewer than two patients or n_boot 0.
    """
    from scipy import stats

    hits = np.asarray(hits, np.float64)
    _, group = np.unique(np.asarray(groups), return_inverse=True)
    if n_boot < 1 or group.max(initial=-1) < 1:
        return None, None
    per_hits, per_boxes = np.bincount(group, hits), np.bincount(group)
    result = stats.bootstrap(
        (per_hits, per_boxes), lambda h, n, axis=-1: h.sum(axis) / n.sum(axis), paired=True,
        vectorized=True, n_resamples=n_boot, confidence_level=1 - alpha, method="percentile",
        random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summarize(pairs, box_list, *, size, bootstrap=inputs.Bootstrap(),
              examples_per_finding=EXAMPLES_PER_FINDING):
    """(the report's `localization` section, {finding: [Pair]} the first few pairs to draw).

    Per finding: boxes scored, images, hits, hit rate with its patient-level bootstrap CI,
    and the chance rate (mean share of the input the boxes cover). Boxes whose image was not
    found are counted (and the first few named), never silently dropped.
    """
    n_boot, seed = bootstrap.replicates, bootstrap.seed
    per, examples, unreadable = {}, {}, {}
    for pair in pairs:
        if pair.error:
            unreadable[pair.image_id] = pair.error
            continue
        entry = per.setdefault(pair.label, {"hits": [], "groups": [], "chance": [], "images": 0})
        entry["hits"] += pair.hits
        entry["groups"] += [patient_of(pair.image_id)] * len(pair.hits)
        entry["chance"] += [chance(b, size) for b in pair.boxes]
        entry["images"] += 1
        shown = examples.setdefault(pair.label, [])
        if len(shown) < examples_per_finding:
            shown.append(pair)

    def figures(hits, groups, chances, images):
        lo, hi = hit_rate_ci(hits, groups, n_boot=n_boot, seed=seed)
        return {"boxes": len(hits), "images": images, "patients": len(set(groups)),
                "hits": int(sum(hits)), "hit_rate": float(np.mean(hits)),
                "hit_rate_ci_low": lo, "hit_rate_ci_high": hi,
                "chance": float(np.mean(chances))}

    order = [label for label in labels_lib.LABELS if label in per]
    per_finding = {label: figures(per[label]["hits"], per[label]["groups"],
                                  per[label]["chance"], per[label]["images"]) for label in order}
    everything = [per[label] for label in order]
    boxes = box_list.boxes
    missing = sorted({b.image_id for b in boxes if b.image_id not in box_list.paths})
    section = {
        "source": box_list.source,
        "method": "pointing game: a hit when the Grad-CAM maximum lies in the box",
        "image_size_from": "image file",
        "bootstrap": {"replicates": n_boot, "confidence": 0.95, "seed": seed, "unit": "patient",
                      "method": "percentile"},
        "boxes_read": len(boxes),
        "boxes_scored": sum(f["boxes"] for f in per_finding.values()),
        "images_missing": len(missing),
        "images_missing_first": missing[:MAX_LISTED],
        "images_unreadable": len(unreadable),
        "images_unreadable_first": [unreadable[k] for k in sorted(unreadable)[:MAX_LISTED]],
        "per_finding": per_finding,
        "overall": (figures(sum((e["hits"] for e in everything), []),
                            sum((e["groups"] for e in everything), []),
                            sum((e["chance"] for e in everything), []),
                            sum(e["images"] for e in everything)) if everything else None),
    }
    return section, examples


def plot_overlays(path, examples):
    """A grid PNG: one row per finding, its first pairs as columns: the model's input, the
    Grad-CAM map (jet), the boxes (green: hit, red: missed) and the maximum (white cross)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import patches
    from matplotlib import pyplot as plt

    rows = [label for label in labels_lib.LABELS if examples.get(label)]
    cols = max((len(examples[label]) for label in rows), default=1)
    fig, axes = plt.subplots(max(len(rows), 1), cols, figsize=(2.6 * cols, 2.8 * max(len(rows), 1)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, label in enumerate(rows):
        for c, pair in enumerate(examples[label]):
            ax, size = axes[r, c], pair.image.shape[0]
            extent = (0, size, size, 0)  # pixel edges, so boxes in input pixels line up
            ax.imshow(pair.image, cmap="gray", vmin=0, vmax=255, extent=extent)
            ax.imshow(pair.heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1, extent=extent)
            for (x, y, w, h), hit in zip(pair.boxes, pair.hits):
                ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, linewidth=1.5,
                                               edgecolor="lime" if hit else "red"))
            ax.plot(pair.peak[1] + 0.5, pair.peak[0] + 0.5, "w+", markersize=10, mew=2)
            ax.set_title(f"{label}\n{pair.image_id}: {'hit' if any(pair.hits) else 'miss'}",
                         fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_box_overlays(pairs, out_dir):
    """Passes the pairs on, writing `<image>_<finding>_<hit|miss>.png` into out_dir for each
    of their boxes (one box per picture, drawn as in `plot_overlays`)."""
    os.makedirs(out_dir, exist_ok=True)
    for pair in pairs:
        for box, hit in zip(pair.boxes, pair.hits):
            one = dataclasses.replace(pair, boxes=[box], hits=[hit])
            stem = os.path.splitext(pair.image_id)[0]
            name = f"{stem}_{pair.label}_{'hit' if hit else 'miss'}.png"
            plot_overlays(os.path.join(out_dir, name), {pair.label: [one]})
        yield pair


def format_markdown(section, grid=None):
    """The section's markdown body (report_markdown.format_markdown adds the title)."""
    lines = [f"- boxes: `{section['source']}`; {section['boxes_scored']:,} of "
             f"{section['boxes_read']:,} scored ({section['images_missing']:,} images not "
             f"found, {section['images_unreadable']:,} unreadable)",
             "- a hit: the Grad-CAM maximum for the box's finding lies in the box (boxes "
             "scaled through the same pad-to-square and resize as the pixels; image sizes "
             "from the image files)",
             f"- 95 % CI: patient-level percentile bootstrap, "
             f"{section['bootstrap']['replicates']} replicates; chance: the share of the image "
             "the boxes cover", ""]
    rows = list(section["per_finding"].items())
    if section["overall"]:
        rows.append(("**all**", section["overall"]))
    f = report_markdown.format_value
    table = []
    for name, r in rows:
        ci = (f" [{f(r['hit_rate_ci_low'])}, {f(r['hit_rate_ci_high'])}]"
              if r["hit_rate_ci_low"] is not None else "")
        table.append([name, r["boxes"], r["images"], r["hits"], f"{f(r['hit_rate'])}{ci}",
                      f(r["chance"])])
    lines += report_markdown.markdown_table(
        ["Finding", "Boxes", "Images", "Hits", "Hit rate [95 % CI]", "Chance"], table)
    if grid:
        lines += [f"![Grad-CAM overlays with NIH boxes]({os.path.basename(grid)})", ""]
    return "\n".join(lines)
