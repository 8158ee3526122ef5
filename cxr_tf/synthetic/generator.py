"""Synthetic NIH ChestX-ray14 in the exact Kaggle layout, with findings a CNN can learn.

    generate("/tmp/nih_synth", num_images=2000, image_size=1024, seed=0)   # python -m cxr_tf.synthetic

Writes, like the Kaggle `nih-chest-xrays/data` download:
  images_001/images/00000001_000.png ...  folders filled in order, about num_images/12 each
  Data_Entry_2017.csv                     2017 Kaggle format (trailing empty column)
  train_val_list.txt, test_list.txt       patient-disjoint, about 77/23 of the images
  faults.json                             with faults=True: each bad file/row and its expected outcome

Labels, follow-ups, age, sex and view follow the real NIH figures (`cxr_tf.synthetic.rows`).
Each finding draws its own signature on an anatomy-like film (`cxr_tf.synthetic.renderer`). The
same seed gives byte-identical files whatever the number of worker processes: every image draws
from its own generator seeded by (seed, image number), and the patient's anatomy by (seed,
patient id).
"""

import io
import json
import math
import os
import struct
import time
import zlib

import numpy as np
from PIL import Image

from cxr_tf import labels
from cxr_tf.data import parallel_decode
from cxr_tf.synthetic.renderer import render  # re-exported: tools and tests draw films
from cxr_tf.synthetic.rows import LabelSampler, sample_rows, test_patients

CSV_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
NUM_FOLDERS = 12  # images_001 ... images_012, as NIH


# ---- Faults (faults=True): one bad file or row of each kind that metadata/images must handle.

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
    findings = LabelSampler().draw(np.random.default_rng([seed, 4]), 1)[0]
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

    workers = parallel_decode.default_workers() if num_workers is None else num_workers
    if workers <= 1 or len(tasks) < 2 * workers:
        workers = 0  # starting processes would cost more than they save
    chunk = max(1, min(64, len(tasks) // (8 * max(workers, 1))))
    with tqdm(total=len(tasks), unit="img", disable=not progress, desc="synthetic") as bar:
        for _ in parallel_decode.map_in_order(_render_to_file, tasks, num_workers=workers,
                                              what="rendering", chunksize=chunk):
            bar.update()


def generate(output_dir, *, num_images=2000, image_size=1024, seed=0, faults=False,
             min_prevalence=0.0, num_workers=None, progress=True):
    """Writes the Kaggle-layout set to output_dir and returns a summary dict.

    Args:
        output_dir: created if needed; the layout is in the module docstring.
        num_images: normal images (the `faults` files and rows come on top).
        image_size: side of the square PNGs.
        seed: >= 0; the same seed gives byte-identical files for any num_workers.
        faults: also write one file or row of each bad kind, listed in faults.json as
            [{"image_id", "kind", "expect"[, "expect_drop_rgba"]}, ...].
        min_prevalence: raise every finding to at least this prevalence (see
            `_raise_prevalence`); 0 keeps the real NIH figures, where Hernia is 0.2%.
        num_workers: processes (default: all cores; 0 or 1: this process). They are spawned,
            not forked (`parallel_decode.map_in_order`), so a script calling this must guard
            its entry point with `if __name__ == "__main__":`.
        progress: show a tqdm bar.

    Returns:
        {"output_dir", "images", "image_size", "seed", "patients", "folders",
         "labels": {name: images}, "no_finding", "multi_label",
         "splits": {"train_val"|"test": {"images", "patients"}}, "faults", "seconds"},
        counting the normal images only.
    """
    start = time.perf_counter()
    rows = sample_rows(num_images, seed, min_prevalence)
    test = test_patients(np.random.default_rng([seed, 3]), rows)
    per_folder = math.ceil(num_images / NUM_FOLDERS)
    tasks = []
    for number, row in enumerate(rows):
        folder = os.path.join(output_dir, f"images_{number // per_folder + 1:03d}", "images")
        os.makedirs(folder, exist_ok=True)
        tasks.append((os.path.join(folder, row["image_index"]), image_size, seed,
                      row["patient_id"], number, row["findings"]))
    _run(tasks, num_workers, progress)
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
