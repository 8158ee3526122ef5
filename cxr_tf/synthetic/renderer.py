"""Draws one synthetic chest film: anatomy, then each finding's signature, then jitter and noise.

    image = render(size, findings, anatomy_seed, image_seed)  # uint8 size×size

The generator in `cxr_tf.synthetic` calls this once per image. The anatomy (body, lungs, ribs,
mediastinum, heart, clavicles) depends only on the patient's seed, so a patient's follow-ups look
alike and a patient-wise split matters. Each of the 14 findings has its own signature, drawn from
its own random stream. The signatures are deliberately large and contrasted, far more than on
real films: the demo trains at 64 px, so each one must still be visible, and distinct from the
others, after the film is downscaled to 64 px (tests/test_synthetic_render.py checks both).

Coordinates are fractions of the side (u across, v down), so a film looks the same at any size;
image left is the patient's right, as on a PA film.
"""

import functools
import math

import numpy as np
from PIL import Image

from cxr_tf import labels


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


def _consolidation(film, rng, lungs, a):  # wide, flat, fluffy, dense patch mid-lung
    L = lungs[int(rng.integers(2))]
    (cx, cy), rx = L.point(rng, lateral=(-0.3, 0.3), down=(-0.05, 0.35)), rng.uniform(0.11, 0.14)
    ry = rx * rng.uniform(0.4, 0.55)
    sl, u, v = film.box(cx, cy, 1.3 * rx, 1.3 * ry)
    _, d = _ellipse(u, v, cx, cy, rx, ry, 1)
    patch = np.clip((1 - d + 0.5 * (_upsample(rng.random((4, 6)), d.shape) - 0.5)) / 0.4, 0, 1)
    film.img[sl] += (a["tissue"] + 0.1 - film.img[sl]) * patch * film.lung[sl]
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
