"""Where did the model look? Grad-CAM's pointing game on NIH's radiologist boxes (read by
`box_list`).

The pointing game (Zhang et al. 2016, arXiv:1608.00507): a box is a hit when the maximum of the
Grad-CAM map for its finding falls inside it. The box follows the image through the same steps
as the pixels (`images.pad_to_square`, then `images.resize`: `to_input`). The map is as coarse
as the last convolutional stage (2×2 cells at 64 px, 7×7 at 224 px), so its upsampled maximum
is often a block of tied pixels: the point tested is the centre of that block (`peak`), not its
top-left corner, so the test is made where the model looked.

A map that is all zero or constant (the model found nothing for that finding: Grad-CAM's ReLU
leaves no positive evidence) points nowhere. Its boxes are counted per finding and left out of
the hit rate with that reason, never scored as misses at pixel (0, 0).

The size of each image is read from the image file itself. Data_Entry's
`OriginalImage[Width,Height]` is the size of the film before NIH resized every image to
1024×1024 (2682×2749 for 00000001_000.png): the boxes are not in those pixels.

A random point hits a box with the probability of the share of the image it covers (`chance`),
which the report gives beside every hit rate. Numpy only: the heatmaps come from the caller
(`cxr_tf.evaluation.gradcam.GradCam`, through `cxr_tf.evaluation.runner.pointing_game`), so
this module stays free of TensorFlow; the overlays are drawn by `box_overlays`.
"""

import dataclasses
import math
import os
import re

import numpy as np

from cxr_tf import labels as labels_lib
from cxr_tf.data import images
from cxr_tf.evaluation import inputs, report_markdown

EXAMPLES_PER_FINDING = 3
MAX_LISTED = 20
_NIH_IMAGE_RE = re.compile(r"^(\d{8})_\d{3}\.png$")  # the first 8 digits are the patient


@dataclasses.dataclass
class Pair:
    """The pointing game for one (image, finding): its boxes, in model-input pixels."""
    image_id: str
    label: str
    boxes: list  # [(x, y, w, h)] in model-input pixels
    hits: list  # one bool per box
    peak: tuple  # (row, col) where the map points (`peak`); None for a flat map
    image: np.ndarray  # uint8 S×S, the model's input
    heatmap: np.ndarray  # float S×S in [0, 1]
    error: str = None  # why the image could not be read (then no boxes, hits or map)

    @property
    def flat(self):
        """The map is all zero or constant: it points nowhere, so its boxes are not scored."""
        return self.error is None and self.peak is None


def to_input(box, original_shape, size):
    """(x, y, w, h) of a box on the H×W original -> the same box on the size×size model input.

    The image is zero-padded to side×side, centred (`images.pad_to_square`: top = (side - H)
    // 2, left = (side - W) // 2), then resized to size×size, so x' = (x + left) · size / side.
    """
    height, width = original_shape[:2]
    side = max(height, width)
    top, left, scale = (side - height) // 2, (side - width) // 2, size / side
    return ((box.x + left) * scale, (box.y + top) * scale, box.w * scale, box.h * scale)


def is_flat(heatmap):
    """Whether the map is all zero or constant (max - min within 1e-6 of its scale, or not a
    number): a map that points nowhere."""
    heatmap = np.asarray(heatmap, np.float64)
    return not np.ptp(heatmap) > 1e-6 * np.abs(heatmap).max()


def peak(heatmap):
    """(row, col) where the map points: the centre of its largest region of tied maxima.

    An upsampled Grad-CAM map holds blocks of equal maxima (16×16 pixels at 64 px): argmax
    would pick a block's top-left pixel, on the image's top row or left column. The pixels
    within 1e-6 of the maximum (of the map's range) are grouped into 8-connected regions
    (scipy.ndimage.label); the largest (the first in row-major order among equals) is the
    map's maximum, and the point is its centroid, in pixel indices (7.5: between 7 and 8),
    or the region's pixel nearest the centroid when the centroid falls outside it (an L;
    among equally near pixels the first in row-major order).
    """
    from scipy import ndimage

    heatmap = np.asarray(heatmap, np.float64)
    top = heatmap.max()
    tied = heatmap >= top - 1e-6 * (top - heatmap.min())
    regions, count = ndimage.label(tied, structure=np.ones((3, 3)))
    sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    rows, cols = np.nonzero(regions == 1 + int(np.argmax(sizes)))
    centre = (float(rows.mean()), float(cols.mean()))
    # The tested point is the centre + 0.5 in edge coordinates (`is_hit`): this pixel holds it.
    holding = (math.floor(centre[0] + 0.5), math.floor(centre[1] + 0.5))
    if holding in set(zip(rows.tolist(), cols.tolist())):
        return centre
    nearest = int(np.argmin((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2))
    return float(rows[nearest]), float(cols[nearest])


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
    rather than stopping the game; a map that points nowhere (`is_flat`) yields a Pair with
    its boxes, no peak and no hits.

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
            at = None if is_flat(heatmap) else peak(heatmap)
            hits = [] if at is None else [is_hit(at, b) for b in on_input]
            yield Pair(name, label, on_input, hits, at, image, heatmap)


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


FLAT_REASON = "the model pointed nowhere (its Grad-CAM map is all zero or constant)"


def summarize(pairs, box_list, *, size, bootstrap=inputs.Bootstrap(),
              examples_per_finding=EXAMPLES_PER_FINDING):
    """(the report's `localization` section, {finding: [Pair]} the first few pairs to draw).

    Per finding: the boxes scored, the pairs (image, finding) and images they lie on, hits,
    the hit rate with its patient-level bootstrap CI and the chance rate (mean share of the
    input the boxes cover), all over the maps that point somewhere; maps that point nowhere
    are counted (`flat_maps`, `flat_map_boxes`) and left out, with the reason. The overall
    row counts distinct images, and pairs as pairs. Boxes whose image was not found or could
    not be read, and rows that were invalid, are counted (and the first few named), never
    silently dropped.
    """
    per, examples, unreadable = {}, {}, {}
    for pair in pairs:
        if pair.error:
            unreadable[pair.image_id] = pair.error
            continue
        entry = per.setdefault(pair.label, _Tally())
        entry.add(pair, size)
        shown = examples.setdefault(pair.label, [])
        if len(shown) < examples_per_finding and not pair.flat:
            shown.append(pair)
    order = [label for label in labels_lib.LABELS if label in per]
    per_finding = {label: per[label].figures(bootstrap) for label in order}
    everything = sum((per[label] for label in order), _Tally())
    missing = sorted({b.image_id for b in box_list.boxes if b.image_id not in box_list.paths})
    section = {
        "source": box_list.source,
        "method": "pointing game: a hit when the Grad-CAM maximum (the centre of its tied "
                  "region) lies in the box",
        "image_size_from": "image file",
        "bootstrap": {"replicates": bootstrap.replicates, "confidence": 0.95,
                      "seed": bootstrap.seed, "unit": "patient", "method": "percentile"},
        "boxes_read": len(box_list.boxes) + len(box_list.invalid),
        "boxes_invalid": len(box_list.invalid),
        "boxes_invalid_first": list(box_list.invalid[:MAX_LISTED]),
        "boxes_scored": sum(f["boxes"] for f in per_finding.values()),
        "boxes_on_flat_maps": sum(f["flat_map_boxes"] for f in per_finding.values()),
        "flat_maps": sum(f["flat_maps"] for f in per_finding.values()),
        "flat_map_reason": FLAT_REASON,
        "images_missing": len(missing),
        "images_missing_first": missing[:MAX_LISTED],
        "images_unreadable": len(unreadable),
        "images_unreadable_first": [unreadable[k] for k in sorted(unreadable)[:MAX_LISTED]],
        "per_finding": per_finding,
        "overall": everything.figures(bootstrap) if order else None,
    }
    return section, examples


@dataclasses.dataclass
class _Tally:
    """The scored boxes of some pairs (hits, patients, chance), and the flat maps."""
    hits: list = dataclasses.field(default_factory=list)
    groups: list = dataclasses.field(default_factory=list)
    chance: list = dataclasses.field(default_factory=list)
    pairs: int = 0
    images: set = dataclasses.field(default_factory=set)
    flat_maps: int = 0
    flat_map_boxes: int = 0

    def add(self, pair, size):
        if pair.flat:
            self.flat_maps += 1
            self.flat_map_boxes += len(pair.boxes)
            return
        self.hits += pair.hits
        self.groups += [patient_of(pair.image_id)] * len(pair.hits)
        self.chance += [chance(b, size) for b in pair.boxes]
        self.pairs += 1
        self.images.add(pair.image_id)

    def __add__(self, other):
        return _Tally(self.hits + other.hits, self.groups + other.groups,
                      self.chance + other.chance, self.pairs + other.pairs,
                      self.images | other.images, self.flat_maps + other.flat_maps,
                      self.flat_map_boxes + other.flat_map_boxes)

    def figures(self, bootstrap):
        scored = bool(self.hits)
        lo, hi = (hit_rate_ci(self.hits, self.groups, n_boot=bootstrap.replicates,
                              seed=bootstrap.seed) if scored else (None, None))
        return {"boxes": len(self.hits), "pairs": self.pairs, "images": len(self.images),
                "patients": len(set(self.groups)), "hits": int(sum(self.hits)),
                "hit_rate": float(np.mean(self.hits)) if scored else None,
                "hit_rate_ci_low": lo, "hit_rate_ci_high": hi,
                "hit_rate_not_scored": None if scored else FLAT_REASON,
                "chance": float(np.mean(self.chance)) if scored else None,
                "flat_maps": self.flat_maps, "flat_map_boxes": self.flat_map_boxes}


def format_markdown(section, grid=None):
    """The section's markdown body (report_markdown.format_markdown adds the title)."""
    lines = [f"- boxes: `{section['source']}`; {section['boxes_scored']:,} of "
             f"{section['boxes_read']:,} scored ({section['boxes_on_flat_maps']:,} on "
             f"{section['flat_maps']:,} maps that point nowhere, "
             f"{section['boxes_invalid']:,} invalid, {section['images_missing']:,} images not "
             f"found, {section['images_unreadable']:,} unreadable)",
             "- a hit: the Grad-CAM maximum for the box's finding (the centre of its region of "
             "tied maxima) lies in the box (boxes scaled through the same pad-to-square and "
             "resize as the pixels; image sizes from the image files)",
             "- flat maps: a Grad-CAM map that is all zero or constant means the model pointed "
             "nowhere for that finding; its boxes are counted, not scored as misses",
             f"- 95 % CI: patient-level percentile bootstrap, "
             f"{section['bootstrap']['replicates']} replicates; chance: the share of the image "
             "the boxes cover", ""]
    rows = list(section["per_finding"].items())
    if section["overall"]:
        rows.append(("**all** (images counted once)", section["overall"]))
    f = report_markdown.format_value
    table = []
    for name, r in rows:
        ci = (f" [{f(r['hit_rate_ci_low'])}, {f(r['hit_rate_ci_high'])}]"
              if r["hit_rate_ci_low"] is not None else "")
        rate = f"{f(r['hit_rate'])}{ci}" if r["hit_rate"] is not None else "not scored"
        table.append([name, r["boxes"], r["pairs"], r["images"], r["hits"], rate,
                      f(r["chance"]), f"{r['flat_maps']} ({r['flat_map_boxes']} boxes)"])
    lines += report_markdown.markdown_table(
        ["Finding", "Boxes", "Image-finding pairs", "Images", "Hits", "Hit rate [95 % CI]",
         "Chance", "Flat maps"], table)
    for invalid in section["boxes_invalid_first"]:
        lines.append(f"- invalid: {invalid}")
    if grid:
        lines += [f"![Grad-CAM overlays with NIH boxes]({os.path.basename(grid)})", ""]
    return "\n".join(lines)
