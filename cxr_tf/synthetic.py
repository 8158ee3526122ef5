"""Synthetic NIH ChestX-ray14 in the exact Kaggle layout, with findings a CNN can learn.

    python -m cxr_tf.synthetic --output_dir=/tmp/nih_synth --num_images=2000 --image_size=1024 --seed=0 [--faults] [--min_prevalence=0.0]

Writes, like the Kaggle `nih-chest-xrays/data` download:
  images_001/images/00000001_000.png ...  folders filled in order, about num_images/12 each
  Data_Entry_2017.csv                     2017 Kaggle format (trailing empty column)
  train_val_list.txt, test_list.txt       patient-disjoint, about 77/23 of the images
  faults.json                             with --faults: each bad file/row and its expected outcome

Labels, follow-ups, age, sex and view follow the real NIH figures embedded below. Each finding
draws its own signature on an anatomy-like film (see `render`). The same seed gives
byte-identical files whatever the number of worker processes: every image draws from its own
generator seeded by (seed, image number), and the patient's anatomy by (seed, patient id).
"""

import concurrent.futures
import functools
import io
import json
import math
import multiprocessing
import os
import struct
import time
import zlib

import numpy as np
from PIL import Image

from cxr_tf import labels

# ---- Real NIH figures. Computed once with pandas from Data_Entry_2017_v2020.csv.gz (112,120 rows,
# 30,805 patients) and the official train_val/test lists; the generator never reads them.
_ROWS = 112_120
# Rows carrying each finding (value_counts of the '|'-split Finding Labels). No Finding: 60,361.
_LABEL_ROWS = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894,
    "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302,
    "Consolidation": 4667, "Edema": 2303, "Emphysema": 2516, "Fibrosis": 1686,
    "Pleural_Thickening": 3385, "Hernia": 227,
}
REAL_PREVALENCE = {name: n / _ROWS for name, n in _LABEL_ROWS.items()}
REAL_NO_FINDING = 60_361 / _ROWS  # 0.538
# Rows by number of findings (0 = No Finding); 2+ findings: 20,796 rows = 18.5%.
_ROWS_BY_COUNT = (60361, 30963, 14306, 4856, 1247, 301, 67, 16, 1, 2)
REAL_MULTI_LABEL = sum(_ROWS_BY_COUNT[2:]) / _ROWS
# The 48 most frequent Finding Labels strings (Counter(...).most_common(48)), 93.2% of the rows.
# The other 7,570 rows are drawn from what remains of each label's count (see _LabelSampler).
_TOP_COMBOS = """60361 No Finding; 9547 Infiltration; 4215 Atelectasis; 3955 Effusion;
2705 Nodule; 2194 Pneumothorax; 2139 Mass; 1603 Effusion|Infiltration;
1350 Atelectasis|Infiltration; 1310 Consolidation; 1165 Atelectasis|Effusion;
1126 Pleural_Thickening; 1093 Cardiomegaly;
892 Emphysema; 829 Infiltration|Nodule; 737 Atelectasis|Effusion|Infiltration; 727 Fibrosis;
628 Edema; 484 Cardiomegaly|Effusion; 441 Consolidation|Infiltration; 420 Infiltration|Mass;
403 Effusion|Pneumothorax; 402 Effusion|Mass; 398 Atelectasis|Consolidation; 394 Mass|Nodule;
392 Edema|Infiltration; 345 Infiltration|Pneumothorax; 337 Emphysema|Pneumothorax;
337 Consolidation|Effusion; 322 Pneumonia; 251 Effusion|Pleural_Thickening; 249 Effusion|Nodule;
240 Atelectasis|Pneumothorax; 210 Infiltration|Pleural_Thickening; 200 Cardiomegaly|Infiltration;
200 Atelectasis|Consolidation|Effusion; 199 Infiltration|Pneumonia; 199 Atelectasis|Nodule;
189 Edema|Effusion; 185 Fibrosis|Infiltration; 178 Mass|Pneumothorax; 175 Atelectasis|Mass;
151 Consolidation|Mass; 140 Nodule|Pleural_Thickening; 137 Edema|Infiltration|Pneumonia;
134 Consolidation|Effusion|Infiltration; 132 Mass|Pleural_Thickening; 130 Nodule|Pneumothorax"""
# Patients by number of images, as (fewest, most, patients): 57% have one image, 18 have 101+.
_PATIENTS_BY_IMAGES = ((1, 1, 17503), (2, 2, 4113), (3, 3, 2100), (4, 4, 1330), (5, 5, 938),
                       (6, 7, 1395), (8, 10, 1201), (11, 15, 983), (16, 20, 439), (21, 30, 406),
                       (31, 50, 246), (51, 100, 133), (101, 184, 18))
# Age at the first image, patients per decade 0-9 ... 90-99. A patient's first and last images
# are 1.8 years apart on average (median 1, max 14): we draw 0..min(images, 5) years.
_FIRST_AGE_DECADES = (626, 1466, 3728, 4940, 6345, 7117, 4647, 1644, 280, 12)
_MAX_AGE_SPAN = 5
_MALE_PATIENTS = 0.540
# AP share grows with follow-ups (bedside films): 11.8% of first images, 57.7% from the 6th on.
_AP_FIRST, _AP_LATE, _AP_LATE_FROM = 0.118, 0.577, 5
# Test: 25,596 of 112,120 images; NIH test patients have 9.2 images on average vs 3.1.
_TEST_SHARE = 25_596 / _ROWS
# The most frequent (width, height, pixel spacing) of the original films, with their rows.
_ORIGINALS = ((2500, 2048, 0.168, 29986), (2992, 2991, 0.143, 21961), (3056, 2544, 0.139, 15340),
              (2500, 2048, 0.171, 7143), (2048, 2500, 0.168, 5817), (2021, 2021, 0.194, 4410),
              (2048, 2500, 0.171, 2838), (2544, 3056, 0.139, 2418))

CSV_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
NUM_FOLDERS = 12  # images_001 ... images_012, as NIH


class _LabelSampler:
    """Draws Finding Labels with the real marginals and co-occurrence.

    93% of rows come from the real top-48 combinations at their real frequency. The rest draw a
    finding count from the real count histogram minus the table's, then that many distinct
    findings weighted by what the table leaves of each label's real count: so rare labels and
    rare combinations (Hernia appears only there) keep close to their real share. Measured on
    10^6 draws: every label within 5% of its real prevalence, but Hernia +10% (0.22% for
    0.20%), as drawing without replacement favours the rare labels.
    """

    def __init__(self):
        combos = [item.strip().split(" ", 1) for item in _TOP_COMBOS.split(";")]
        self.combos = [tuple(labels.parse_findings(text)) for _, text in combos]
        counts = np.array([int(n) for n, _ in combos], dtype=np.float64)
        rest_labels = dict(_LABEL_ROWS)
        rest_counts = np.array(_ROWS_BY_COUNT, dtype=np.float64)
        for combo, n in zip(self.combos, counts):
            rest_counts[len(combo)] -= n
            for name in combo:
                rest_labels[name] -= n
        self.p = np.append(counts, _ROWS - counts.sum()) / _ROWS
        self.rest_k = rest_counts / rest_counts.sum()
        weights = np.array([rest_labels[name] for name in labels.LABELS], dtype=np.float64)
        self.rest_w = weights / weights.sum()

    def draw(self, rng, n):
        """n label tuples (names in NIH order; () is No Finding)."""
        picks = rng.choice(len(self.p), size=n, p=self.p)
        out = [self.combos[i] if i < len(self.combos) else None for i in picks]
        for row in np.flatnonzero(picks == len(self.combos)):
            k = rng.choice(len(self.rest_k), p=self.rest_k)
            chosen = rng.choice(labels.NUM_CLASSES, size=k, replace=False, p=self.rest_w)
            out[row] = tuple(labels.LABELS[j] for j in sorted(chosen))
        return out


def _raise_prevalence(rng, findings, min_prevalence):
    """Adds each finding whose real prevalence is below min_prevalence to images without it.

    Each lacking image gets it with probability (m - p) / (1 - p), so the expected prevalence
    is exactly m. Side effects: No Finding falls (from 54% to ~24% at m=0.1) and multi-label
    rows rise (from 19% to ~44%), as the added findings land on the real combinations
    independently; the frequent findings (Infiltration, Effusion, ...) keep their real share.
    """
    for name in labels.LABELS:
        p = REAL_PREVALENCE[name]
        if min_prevalence <= p:
            continue
        add = rng.random(len(findings)) < (min_prevalence - p) / (1 - p)
        for i in np.flatnonzero(add):
            if name not in findings[i]:
                findings[i] = tuple(n for n in labels.LABELS if n in findings[i] or n == name)
    return findings


def sample_rows(num_images, seed=0, min_prevalence=0.0):
    """The metadata rows (dicts, in image-id order) of a synthetic set; no pixels."""
    if num_images < 1 or seed < 0 or not 0 <= min_prevalence < 1:
        raise ValueError(f"need num_images >= 1, seed >= 0 and 0 <= min_prevalence < 1, got "
                         f"{num_images}, {seed}, {min_prevalence}")
    rng = np.random.default_rng([seed, 0])
    # One patient holds at most 2% of the set, so a patient-wise split stays balanced.
    cap = max(1, num_images // 50)
    bins = [(lo, min(hi, cap), n) for lo, hi, n in _PATIENTS_BY_IMAGES if lo <= cap]
    lo, hi = (np.array(v) for v in zip(*[(lo, hi) for lo, hi, _ in bins]))
    bin_p, counts, total = _normalized([n for *_, n in bins]), [], 0
    while total < num_images:  # patients' image counts, drawn in batches for speed
        b = rng.choice(len(bins), size=256, p=bin_p)
        for count in rng.integers(lo[b], hi[b] + 1):
            if total < num_images:
                counts.append(min(int(count), num_images - total))
                total += counts[-1]
    findings = _raise_prevalence(rng, _LabelSampler().draw(rng, num_images), min_prevalence)
    originals = rng.choice(len(_ORIGINALS), num_images, p=_normalized([o[3] for o in _ORIGINALS]))
    ap_draws, n = rng.random(num_images), len(counts)
    ages = 10 * rng.choice(10, size=n, p=_normalized(_FIRST_AGE_DECADES)) + rng.integers(0, 10, n)
    males = rng.random(n) < _MALE_PATIENTS
    spans = rng.integers(0, np.minimum(counts, _MAX_AGE_SPAN) + 1)  # years, first to last image
    rows = []
    for patient, (count, age, male, span) in enumerate(zip(counts, ages, males, spans), 1):
        for follow_up in range(count):
            i = len(rows)
            ap = _AP_FIRST + (_AP_LATE - _AP_FIRST) * min(follow_up, _AP_LATE_FROM) / _AP_LATE_FROM
            width, height, spacing, _ = _ORIGINALS[originals[i]]
            rows.append({
                "image_index": f"{patient:08d}_{follow_up:03d}.png", "patient_id": patient,
                "follow_up": follow_up, "findings": findings[i],
                "age": int(min(age + span * follow_up // count, 95)), "sex": "M" if male else "F",
                "view": "AP" if ap_draws[i] < ap else "PA",
                "width": width, "height": height, "spacing": spacing,
            })
    return rows


def _normalized(weights):
    weights = np.asarray(weights, dtype=np.float64)
    return weights / weights.sum()


def _test_patients(rng, rows):
    """Patients drawn for test, more likely the more images they have (as in NIH), to ~22.8%."""
    sizes = {}
    for row in rows:
        sizes[row["patient_id"]] = sizes.get(row["patient_id"], 0) + 1
    ids = np.array(sorted(sizes))
    weight = np.array([sizes[i] for i in ids], dtype=np.float64)
    order = ids[np.argsort(-rng.random(len(ids)) ** (1 / weight))]  # weighted shuffle
    target, taken, test = _TEST_SHARE * len(rows), 0, set()
    for pid in order:
        if taken + sizes[pid] / 2 <= target:  # skip a patient that would overshoot by more
            test.add(int(pid))
            taken += sizes[pid]
    return test


# ---- Rendering. Coordinates are fractions of the side (u across, v down), so a film looks the
# same at any size; image left is the patient's right, as on a PA film. Every signature is big
# and contrasted enough to survive a downscale to 64 px (the demo trains at 64 px).

@functools.lru_cache(maxsize=4)
def _grid(size):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]


def _upsample(grid, shape):
    """Smooth noise: a small random grid resized (bicubic) to `shape`."""
    if 0 in shape:
        return np.zeros(shape, np.float32)
    img = Image.fromarray(np.asarray(grid, np.float32))
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def _ellipse(u, v, cx, cy, rx, ry, edge):
    """(soft mask, normalized distance) of an ellipse; `edge` is the blur, relative to radius."""
    d = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    return np.clip((1 - d) / edge, 0, 1), d


class _Film:
    """The float film in [0, 1], its lung mask, and drawing limited to a shape's bounding box."""

    def __init__(self, size):
        self.size = size
        self.u, self.v = _grid(size)
        self.img = np.zeros((size, size), np.float32)
        self.lung = np.zeros((size, size), np.float32)

    def box(self, cx, cy, rx, ry):
        s = self.size
        x0, x1 = max(int((cx - rx) * s), 0), min(math.ceil((cx + rx) * s) + 1, s)
        y0, y1 = max(int((cy - ry) * s), 0), min(math.ceil((cy + ry) * s) + 1, s)
        return (slice(y0, y1), slice(x0, x1)), self.u[:, x0:x1], self.v[y0:y1, :]

    def sharp(self, x, px=1.5):
        """0..1 ramp over `px` pixels of a signed distance `x` (in side fractions)."""
        return np.clip(x * (self.size / px) + 0.5, 0, 1)

    def band(self, x0, y0, angle, half_len, half_width):
        """(slice, mask) of a straight band centred on (x0, y0)."""
        r = half_len + half_width
        sl, u, v = self.box(x0, y0, r, r)
        c, s = math.cos(angle), math.sin(angle)
        along, across = (u - x0) * c + (v - y0) * s, (v - y0) * c - (u - x0) * s
        return sl, self.sharp(half_width - np.abs(across)) * self.sharp(half_len - np.abs(along), 4)


class _Lung:
    def __init__(self, film, side, cx, cy, rx, ry):
        self.side, self.cx, self.cy, self.rx, self.ry = side, cx, cy, rx, ry
        self.sl, self.u, self.v = film.box(cx, cy, rx, ry)
        self.m, self.d = _ellipse(self.u, self.v, cx, cy, rx, ry, 0.05)
        self.t = np.clip(side * (self.u - cx) / rx, -1, 1)  # -1 medial .. 1 lateral

    def point(self, rng, lateral=(-0.5, 0.6), down=(-0.5, 0.5)):
        return (self.cx + self.side * rng.uniform(*lateral) * self.rx,
                self.cy + rng.uniform(*down) * self.ry)


def _anatomy(rng):
    """Per patient, so that a patient's follow-ups look alike (patient-wise splits matter)."""
    u = rng.uniform
    return dict(body_rx=u(0.43, 0.48), tissue=u(0.55, 0.65), air=u(0.03, 0.1),
                lung_dx=u(0.165, 0.185), lung_cy=u(0.41, 0.44), lung_rx=u(0.125, 0.145),
                lung_ry=u(0.25, 0.28), lung_dark=u(0.28, 0.33), heart_cx=u(0.53, 0.56),
                heart_cy=u(0.57, 0.6), heart_rx=u(0.125, 0.14), heart_ry=u(0.11, 0.125),
                rib_period=u(0.06, 0.072), rib_phase=u(0, 1), marks=rng.random((10, 10)))


def _sides(rng, both):
    return (0, 1) if rng.random() < both else (int(rng.integers(2)),)


def _pneumothorax(film, rng, lungs, a):  # dark rim without markings, visceral pleural line
    L = lungs[int(rng.integers(2))]
    gap = rng.uniform(0.35, 0.5) * L.rx
    inner, d = _ellipse(L.u, L.v, L.cx - L.side * 0.9 * gap, L.cy + 0.5 * gap, L.rx - gap,
                        L.ry - 0.8 * gap, 0.03)
    region = L.m * (1 - inner)
    dark = a["air"] * 0.5
    film.img[L.sl] += (dark - film.img[L.sl]) * region
    film.img[L.sl] += 0.25 * film.sharp(0.004 - np.abs(d - 1) * (L.rx - gap)) * L.m


def _effusion(film, rng, lungs, a):  # bright basal fluid whose meniscus climbs laterally
    for side in _sides(rng, 0.35):
        L, h = lungs[side], rng.uniform(0.35, 0.55) * lungs[side].ry
        surface = L.cy + L.ry - h - 0.8 * h * ((L.t + 1) / 2) ** 2
        fluid = L.m * np.clip((L.v - surface) / 0.02, 0, 1)
        film.img[L.sl] += (a["tissue"] + rng.uniform(0.1, 0.15) - film.img[L.sl]) * fluid


def _pneumonia(film, rng, lungs, a):  # one upper lobe hazy down to a sharp fissure
    L = lungs[int(rng.integers(2))]
    fissure = L.cy + rng.uniform(-0.15, 0.1) * L.ry + rng.uniform(-0.3, 0.3) * (L.u - L.cx)
    texture = 0.7 + 0.3 * _upsample(rng.random((6, 6)), L.m.shape)
    film.img[L.sl] += rng.uniform(0.3, 0.38) * film.sharp(fissure - L.v, 2) * texture * L.m


def _edema(film, rng, lungs, a):  # bilateral perihilar "butterfly" haze
    amp, sx, sy = rng.uniform(0.22, 0.3), rng.uniform(0.45, 0.6), rng.uniform(0.35, 0.45)
    for L in lungs:
        hx, hy = L.cx - L.side * 0.45 * L.rx, L.cy + 0.05 * L.ry
        haze = np.exp(-0.5 * (((L.u - hx) / (sx * L.rx)) ** 2 + ((L.v - hy) / (sy * L.ry)) ** 2))
        film.img[L.sl] += amp * haze * L.m


def _infiltration(film, rng, lungs, a):  # patchy blotches in one zone
    for side in _sides(rng, 0.5):
        L = lungs[side]
        (cx, cy), rx, ry = L.point(rng, down=(-0.3, 0.45)), 0.75 * L.rx, 0.5 * L.ry
        sl, u, v = film.box(cx, cy, rx, ry)
        zone, _ = _ellipse(u, v, cx, cy, rx, ry, 0.5)
        blobs = np.clip((_upsample(rng.random((6, 6)), zone.shape) - 0.4) * 4, 0, 1)
        film.img[sl] += rng.uniform(0.35, 0.45) * blobs * zone * film.lung[sl]


def _fibrosis(film, rng, lungs, a):  # reticular net in both lower, outer lungs
    period, half = rng.uniform(0.06, 0.075), rng.uniform(0.006, 0.008)
    angle = rng.uniform(0, math.pi)
    for L in lungs:
        warp = 0.6 * _upsample(rng.random((6, 6)), L.m.shape)
        net = 0
        for theta in (angle, angle + rng.uniform(1.2, 1.9)):
            phase = ((L.u * math.cos(theta) + L.v * math.sin(theta)) / period + warp) % 1
            net = np.maximum(net, film.sharp(half - np.abs(phase - 0.5) * period, 1.2))
        zone = L.m * np.clip((L.v - L.cy + 0.3 * L.ry) / (0.3 * L.ry), 0, 1)
        film.img[L.sl] += rng.uniform(0.22, 0.3) * net * zone


def _consolidation(film, rng, lungs, a):  # wide, flat, fluffy patch low in a lung
    L = lungs[int(rng.integers(2))]
    (cx, cy), rx = L.point(rng, lateral=(-0.3, 0.3), down=(0.3, 0.55)), rng.uniform(0.11, 0.14)
    ry = rx * rng.uniform(0.4, 0.55)
    sl, u, v = film.box(cx, cy, 1.3 * rx, 1.3 * ry)
    _, d = _ellipse(u, v, cx, cy, rx, ry, 1)
    patch = np.clip((1 - d + 0.5 * (_upsample(rng.random((4, 6)), d.shape) - 0.5)) / 0.4, 0, 1)
    film.img[sl] += (a["tissue"] + 0.05 - film.img[sl]) * patch * film.lung[sl]
    for _ in range(2):  # air bronchograms: dark branches inside the patch
        bx, angle = cx + rng.uniform(-0.3, 0.3) * rx, rng.uniform(-0.4, 0.4)
        bs, m = film.band(bx, cy, angle, 0.6 * rx, 0.004)
        film.img[bs] -= 0.15 * m * np.clip(film.lung[bs], 0, 1)


def _atelectasis(film, rng, lungs, a):  # a thick, nearly horizontal plate in the lower lung
    L = lungs[int(rng.integers(2))]
    x0, y0 = L.point(rng, lateral=(-0.2, 0.3), down=(0.25, 0.5))
    sl, m = film.band(x0, y0, rng.uniform(-0.35, 0.35), rng.uniform(0.65, 0.85) * L.rx,
                      rng.uniform(0.018, 0.025))
    film.img[sl] += rng.uniform(0.4, 0.5) * m * film.lung[sl]


def _pleural_thickening(film, rng, lungs, a):  # bright rim along the lateral pleura and apex
    for side in _sides(rng, 0.35):
        L, width = lungs[side], rng.uniform(0.03, 0.04)
        rim = film.sharp((L.d - 1) * L.rx + width) * L.m
        where = np.clip(3 * L.t + 1, 0, 1) * film.sharp(L.cy + 0.3 * L.ry - L.v, 3)
        film.img[L.sl] += rng.uniform(0.4, 0.5) * rim * where


def _disc(film, cx, cy, r, amp):
    sl, u, v = film.box(cx, cy, r, r)
    film.img[sl] += amp * film.sharp(r - np.sqrt((u - cx) ** 2 + (v - cy) ** 2))


def _mass(film, rng, lungs, a):  # a large, sharp, very bright round opacity
    L = lungs[int(rng.integers(2))]
    _disc(film, *L.point(rng), rng.uniform(0.07, 0.095), rng.uniform(0.45, 0.55))


def _nodule(film, rng, lungs, a):  # two to four small bright dots
    for _ in range(int(rng.integers(2, 5))):
        L = lungs[int(rng.integers(2))]
        _disc(film, *L.point(rng), rng.uniform(0.025, 0.035), rng.uniform(0.5, 0.65))


def _hernia(film, rng, lungs, a, heart):  # retrocardiac gas bubble with an air-fluid level
    cx = 0.5 * (lungs[0].cx + lungs[1].cx) + rng.uniform(-0.02, 0.03)
    cy = heart[1] + heart[3] * rng.uniform(0.3, 0.7)
    r = rng.uniform(0.05, 0.065)
    sl, u, v = film.box(cx, cy, 1.3 * r, 1.3 * r)
    d = np.sqrt((u - cx) ** 2 + (v - cy) ** 2)
    gas = film.sharp(r - d) * film.sharp(cy + rng.uniform(0, 0.4) * r - v)
    film.img[sl] += 0.25 * film.sharp(0.005 - np.abs(d - r)) - 0.45 * gas


# Drawn in this order: opaque fills first, so that later spots stay visible on top of them.
_DRAW = {"Pneumothorax": _pneumothorax, "Effusion": _effusion, "Pneumonia": _pneumonia,
         "Edema": _edema, "Infiltration": _infiltration, "Fibrosis": _fibrosis,
         "Consolidation": _consolidation, "Atelectasis": _atelectasis,
         "Pleural_Thickening": _pleural_thickening, "Mass": _mass, "Nodule": _nodule}


def _finding_rng(image_seed, name):
    return np.random.default_rng([*image_seed, 1, labels.LABELS.index(name)])


def render(size, findings, anatomy_seed, image_seed):
    """One uint8 size×size film showing `findings` (names from labels.LABELS).

    Cardiomegaly enlarges the heart (cardiothoracic ratio ~0.6 instead of ~0.4); Emphysema
    makes both lungs larger, darker and sparser in markings; Hernia adds a retrocardiac bubble;
    the others are drawn by the functions in _DRAW. Position, size and contrast are jittered
    per image, the anatomy per patient; global shift, scale, gamma and noise per image.
    Each finding draws from its own stream: its look does not depend on the other findings, and
    the same seeds without it give the same film.
    """
    a = _anatomy(np.random.default_rng(anatomy_seed))
    jit = np.random.default_rng(image_seed)
    film, found = _Film(size), set(findings)
    k, dx, dy = jit.uniform(0.95, 1.05), jit.uniform(-0.025, 0.025), jit.uniform(-0.02, 0.02)
    X, Y = (lambda x: 0.5 + (x - 0.5) * k + dx), (lambda y: 0.5 + (y - 0.5) * k + dy)
    body, _ = _ellipse(film.u, film.v, X(0.5), Y(0.6), a["body_rx"] * k, 0.62 * k, 0.06)
    film.img[:] = a["air"] + (a["tissue"] - a["air"]) * body
    emphysema = "Emphysema" in found
    lungs = []
    for side in (-1, 1):
        ry = a["lung_ry"] * k * (1.12 if emphysema else 1)
        L = _Lung(film, side, X(0.5 + side * a["lung_dx"]), Y(a["lung_cy"]) + 0.04 * emphysema * k,
                  a["lung_rx"] * k, ry)
        hilum = np.exp(-(((L.t + 0.6) / 0.7) ** 2 + ((L.v - L.cy) / (0.5 * ry)) ** 2))
        vessels = (0.5 * _upsample(a["marks"], L.m.shape) + 0.5 * hilum) * (0.2 if emphysema else 1)
        period = a["rib_period"] * (1.15 if emphysema else 1)
        ribs = np.cos(2 * math.pi * ((L.v + 0.03 * L.t - 0.03 * L.t**2) / period + a["rib_phase"]))
        dark = a["lung_dark"] * (1.6 if emphysema else 1)
        film.img[L.sl] += L.m * (0.06 * vessels + 0.01 * (ribs + 1) - dark)
        film.lung[L.sl] += L.m
        lungs.append(L)
    sl, u, _ = film.box(X(0.5), Y(0.42), 0.06 * k, 0.34 * k)  # mediastinum and spine
    band = np.clip((0.055 * k - np.abs(u - X(0.5))) / 0.01, 0, 1)
    film.img[sl] += (a["tissue"] + 0.06 - film.img[sl]) * band
    cardio = "Cardiomegaly" in found
    enlarge = _finding_rng(image_seed, "Cardiomegaly").uniform(1.55, 1.75) if cardio else 1
    heart = (X(a["heart_cx"] + 0.02 * cardio), Y(a["heart_cy"]),
             a["heart_rx"] * k * jit.uniform(0.95, 1.05) * enlarge,
             a["heart_ry"] * k * (1.2 if cardio else 1))
    sl, u, v = film.box(heart[0], heart[1], heart[2], heart[3])
    heart_mask = _ellipse(u, v, *heart, 0.08)[0]
    film.img[sl] += (a["tissue"] + 0.08 + 0.06 * cardio - film.img[sl]) * heart_mask
    for side in (-1, 1):  # clavicles
        sl, m = film.band(X(0.5 + side * 0.17), Y(0.13), side * 0.25, 0.15 * k, 0.012 * k)
        film.img[sl] += 0.12 * m
    for name in _DRAW:
        if name in found:
            _DRAW[name](film, _finding_rng(image_seed, name), lungs, a)
    if "Hernia" in found:
        _hernia(film, _finding_rng(image_seed, "Hernia"), lungs, a, heart)
    img = np.clip(film.img, 0, 1) ** jit.uniform(0.9, 1.1) * jit.uniform(0.95, 1.05)
    noise = jit.uniform(0.008, 0.02) * jit.standard_normal(img.shape, np.float32)
    img += jit.uniform(-0.02, 0.02) + noise
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


# ---- Faults (--faults): one bad file or row of each kind that metadata/images must handle.

def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png():
    """A ~100-byte PNG whose header declares 10000x10000: must be refused, never decoded."""
    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 10001 * 4)) + _chunk(b"IEND", b""))


# PIL's default. Level 1 writes a 1024² film ~25% faster, but its files decode ~40% slower,
# and prepare decodes a set more often than we write it.
_COMPRESS_LEVEL = 6


def _encode(image, mode):
    """A PNG of the gray `image` stored as `mode`; decoding it back gives `image` exactly."""
    if mode == "P":  # identity gray palette
        img = Image.frombytes("P", image.shape[::-1], image.tobytes())
        img.putpalette(np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes())
    elif mode in ("RGB", "RGBA"):
        alpha = [np.full_like(image, 255)] if mode == "RGBA" else []
        img = Image.fromarray(np.dstack([image] * 3 + alpha))
    elif mode == "I;16":
        img = Image.fromarray(image.astype(np.uint16) * 257)
    else:
        img = Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=_COMPRESS_LEVEL)
    return buf.getvalue()


def _write_faults(folder, rows, lists, csv_rows, size, seed):
    """Writes the fault files and rows (one patient); returns the faults.json entries.

    Every fault file holds the same film, so the converted ones decode to identical pixels.
    """
    patient, faults = rows[-1]["patient_id"] + 1, []
    findings = _LabelSampler().draw(np.random.default_rng([seed, 4]), 1)[0]
    image = render(size, findings, [seed, 1, patient], [seed, 5])

    def add(kind, expect, encode=None, in_split=True, **fields):
        fu = len(faults)
        row = dict(rows[0], patient_id=patient, follow_up=fu, findings=findings,
                   image_index=f"{patient:08d}_{fu:03d}.png")
        row.update(fields)
        if encode is not None:
            with open(os.path.join(folder, row["image_index"]), "wb") as f:
                f.write(encode(image))
        csv_rows.append(row)
        if in_split:
            lists["train_val"].append(row["image_index"])
        faults.append({"image_id": row["image_index"], "kind": kind, "expect": expect})
        if kind in ("rgb", "rgba"):
            faults[-1]["expect_drop_rgba"] = "skipped:dropped_rgba"

    png = lambda mode: (lambda image: _encode(image, mode))  # noqa: E731
    add("rgba", "converted:rgba", png("RGBA"))
    add("rgb", "converted:rgb", png("RGB"))
    add("gray16", "converted:gray16", png("I;16"))
    add("palette", "converted:palette", png("P"))
    margin = size // 10  # a portrait film, 80% as wide as high
    add("non_square", "converted:padded", lambda im: _encode(im[:, margin:-margin].copy(), "L"))
    add("truncated_png", "skipped:undecodable", lambda im: (d := _encode(im, "L"))[:len(d) // 2])
    add("zero_bytes", "skipped:undecodable", lambda im: b"")
    add("not_png", "skipped:undecodable",
        lambda im: b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>\n")
    add("too_large", "skipped:too_large", lambda im: _bomb_png())
    add("unknown_label", "skipped:unknown_label", png("L"), labels_text="Pleural_Thickning")
    add("unparsable_age", "kept:age_unknown", png("L"), age="abc")
    add("implausible_age", "kept:age_unknown", png("L"), age=412)
    add("missing_file", "skipped:missing_file")
    add("not_in_split", "skipped:not_in_split", png("L"), in_split=False)
    for kind, path in (("path_traversal", "../../etc/passwd"), ("absolute_path", "/etc/passwd")):
        add(kind, "skipped:invalid_image_index", in_split=False, image_index=path)
    csv_rows.append(dict(rows[0]))
    faults.append({"image_id": rows[0]["image_index"], "kind": "duplicate_row",
                   "expect": "skipped:duplicate_row"})
    return faults


def _csv_line(row):
    # NIH writes the names in alphabetical order ("Consolidation|Infiltration").
    text = row.get("labels_text") or "|".join(sorted(row["findings"])) or labels.NO_FINDING
    return (f"{row['image_index']},{text},{row['follow_up']},{row['patient_id']},{row['age']},"
            f"{row['sex']},{row['view']},{row['width']},{row['height']},"
            f"{row['spacing']},{row['spacing']},\n")


def _render_to_file(task):
    path, size, seed, patient_id, number, findings = task
    image = render(size, findings, anatomy_seed=[seed, 1, patient_id], image_seed=[seed, 2, number])
    with open(path, "wb") as f:
        f.write(_encode(image, "L"))


def _run(tasks, num_workers, progress):
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="img", disable=not progress, desc="synthetic")
    if num_workers <= 1 or len(tasks) < 2 * num_workers:
        for task in tasks:
            _render_to_file(task)
            bar.update()
    else:
        # spawn, not fork: the caller may hold TensorFlow's threads, which fork cannot copy.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            chunk = max(1, min(64, len(tasks) // (8 * num_workers)))
            for _ in pool.map(_render_to_file, tasks, chunksize=chunk):
                bar.update()
    bar.close()


def generate(output_dir, *, num_images=2000, image_size=1024, seed=0, faults=False,
             min_prevalence=0.0, num_workers=None, progress=True):
    """Writes the Kaggle-layout set to output_dir and returns a summary dict (see `main`)."""
    start = time.perf_counter()
    rows = sample_rows(num_images, seed, min_prevalence)
    test = _test_patients(np.random.default_rng([seed, 3]), rows)
    per_folder = math.ceil(num_images / NUM_FOLDERS)
    tasks = []
    for number, row in enumerate(rows):
        folder = os.path.join(output_dir, f"images_{number // per_folder + 1:03d}", "images")
        os.makedirs(folder, exist_ok=True)
        tasks.append((os.path.join(folder, row["image_index"]), image_size, seed,
                      row["patient_id"], number, row["findings"]))
    workers = num_workers or len(os.sched_getaffinity(0))
    _run(tasks, workers, progress)
    lists = {"train_val": [r["image_index"] for r in rows if r["patient_id"] not in test],
             "test": [r["image_index"] for r in rows if r["patient_id"] in test]}
    csv_rows = list(rows)
    fault_list = []
    if faults:
        fault_list = _write_faults(folder, rows, lists, csv_rows, image_size, seed)
        with open(os.path.join(output_dir, "faults.json"), "w") as f:
            json.dump(fault_list, f, indent=1)
    with open(os.path.join(output_dir, "Data_Entry_2017.csv"), "w", newline="") as f:
        f.write(CSV_HEADER + "\n")
        f.writelines(_csv_line(row) for row in csv_rows)
    for split, names in lists.items():
        with open(os.path.join(output_dir, f"{split}_list.txt"), "w") as f:
            f.writelines(name + "\n" for name in sorted(names))
    return _summary(output_dir, rows, test, fault_list, image_size, seed,
                    folders=number // per_folder + 1, seconds=time.perf_counter() - start)


def _summary(output_dir, rows, test, fault_list, image_size, seed, folders, seconds):
    counts = {name: sum(name in r["findings"] for r in rows) for name in labels.LABELS}
    splits = {}
    for split, in_test in (("train_val", False), ("test", True)):
        part = [r for r in rows if (r["patient_id"] in test) == in_test]
        splits[split] = {"images": len(part), "patients": len({r["patient_id"] for r in part})}
    return {
        "output_dir": str(output_dir), "images": len(rows), "image_size": image_size,
        "seed": seed, "patients": len({r["patient_id"] for r in rows}), "folders": folders,
        "labels": counts, "no_finding": sum(not r["findings"] for r in rows),
        "multi_label": sum(len(r["findings"]) > 1 for r in rows), "splits": splits,
        "faults": len(fault_list), "seconds": round(seconds, 2),
    }


def main(argv):
    from absl import app
    from absl import flags as absl_flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = absl_flags.FLAGS
    if not f.output_dir:
        raise app.UsageError("--output_dir is required")
    s = generate(f.output_dir, num_images=f.num_images, image_size=f.image_size, seed=f.seed,
                 faults=f.faults, min_prevalence=f.min_prevalence)
    print(f"Wrote {s['images']:,} images of {s['patients']:,} patients ({s['image_size']} px, "
          f"{s['folders']} folders) to {s['output_dir']} in {s['seconds']:.1f} s")
    for split, part in s["splits"].items():
        print(f"  {split:<10} {part['images']:>7,} images {part['patients']:>7,} patients")
    print(f"  No Finding {s['no_finding']:>7,}   multi-label {s['multi_label']:>7,}")
    for name, count in s["labels"].items():
        print(f"  {name:<19}{count:>7,}  {count / s['images']:6.1%}")
    if s["faults"]:
        print(f"  + {s['faults']} fault files/rows, listed in faults.json")


if __name__ == "__main__":
    from absl import app

    from cxr_tf import flags

    # Defined here, not at import: the demo imports generate() next to prepare's flags.
    flags.define_synthetic_flags()
    app.run(main, flags_parser=flags.flags_parser)
