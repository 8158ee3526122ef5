"""Synthetic NIH ChestX-ray14 in the exact Kaggle layout, with findings a CNN can learn.

    python -m cxr_tf.synthetic --output_dir=/tmp/nih_synth --num_images=2000 --image_size=1024 --seed=0 [--faults] [--min_prevalence=0.0]

Writes, like the Kaggle `nih-chest-xrays/data` download:
  images_001/images/00000001_000.png ...  folders filled in order, about num_images/12 each
  Data_Entry_2017.csv                     2017 Kaggle format (trailing empty column)
  train_val_list.txt, test_list.txt       patient-disjoint, about 77/23 of the images
  faults.json                             with --faults: each bad file/row and its expected outcome

Labels, follow-ups, age, sex and view follow the real NIH figures embedded below. Each finding
draws its own signature on an anatomy-like film (see `cxr_tf.synthetic_render`). The same
seed gives byte-identical files whatever the number of worker processes: every image draws
from its own generator seeded by (seed, image number), and the patient's anatomy by (seed,
patient id).
"""

import concurrent.futures
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
from cxr_tf.synthetic_render import render  # re-exported: tools and tests draw films

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


# ---- Faults (--faults): one bad file or row of each kind that metadata/images must handle.

def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png():
    """A ~100-byte PNG whose header declares 10000x10000: must be refused, never decoded."""
    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 10001 * 4)) + _chunk(b"IEND", b""))


# PIL's default, as most PNG writers. Level 1 would write a 1024² film in 46 ms instead of 73,
# but its files decode ~15% slower (9.7 vs 8.3 ms), and prepare's benchmark times that decode.
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
    """Writes the Kaggle-layout set to output_dir and returns a summary dict.

    Args:
        output_dir: created if needed; the layout is in the module docstring.
        num_images: normal images (the --faults files and rows come on top).
        image_size: side of the square PNGs.
        seed: >= 0; the same seed gives byte-identical files for any num_workers.
        faults: also write one file or row of each bad kind, listed in faults.json as
            [{"image_id", "kind", "expect"[, "expect_drop_rgba"]}, ...].
        min_prevalence: raise every finding to at least this prevalence (see
            `_raise_prevalence`); 0 keeps the real NIH figures, where Hernia is 0.2%.
        num_workers: processes (default: all cores). They are spawned, not forked, so a script
            calling this must guard its entry point with `if __name__ == "__main__":`.
        progress: show a tqdm bar.

    Returns:
        {"output_dir", "images", "image_size", "seed", "patients", "folders",
         "labels": {name: images}, "no_finding", "multi_label",
         "splits": {"train_val"|"test": {"images", "patients"}}, "faults", "seconds"},
        counting the normal images only.
    """
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
    workers = num_workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                              else os.cpu_count() or 1)
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
