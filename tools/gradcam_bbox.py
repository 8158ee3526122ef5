"""How often does the Grad-CAM maximum fall inside the NIH radiologists' boxes?

    python tools/gradcam_bbox.py --model_dir=RUN --bbox_csv=BBox_List_2017.csv --data_dir=KAGGLE_DIR [--checkpoint=best] [--overlay_dir=DIR] [--batch_size=32]

NIH ships `BBox_List_2017.csv` (984 boxes on 880 images, 8 findings) with the Kaggle download:
columns `Image Index`, `Finding Label`, then `Bbox [x`, `y`, `w`, `h]` in pixels of the
original image. For every box, the image is preprocessed as in training, Grad-CAM is computed
for the box's finding (cxr_tf.serving.gradcam, last convolutional stage), and its maximum is mapped
back to original pixels; a hit is a maximum inside the box. The file spells Infiltration
"Infiltrate"; that is mapped.

Flags:
    --model_dir     run dir (config.json, checkpoints/).
    --bbox_csv      the NIH box list.
    --data_dir      the Kaggle folder holding the images (images_*/images/*.png, any depth).
    --checkpoint    best | last (default best).
    --overlay_dir   also write each overlay with its box (green) and maximum (white cross).
    --batch_size    images per Grad-CAM batch (default 32).

Prints a per-finding table, then one JSON line: boxes, hits, hit_rate, per_label, missing.
"""

import argparse
import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_ALIASES = {"Infiltrate": "Infiltration"}


def read_boxes(path):
    """[(image name, label, x, y, w, h)], columns picked by header name."""
    from cxr_tf import labels

    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        try:
            name_at, label_at = header.index("Image Index"), header.index("Finding Label")
            box_at = next(i for i, h in enumerate(header) if h.startswith("Bbox"))
        except (ValueError, StopIteration):
            raise ValueError(f"{path}: expected columns 'Image Index', 'Finding Label' and "
                             f"'Bbox [x', 'y', 'w', 'h]'; found {header}") from None
        boxes = []
        for line, row in enumerate(reader, start=2):
            if not row or not row[name_at].strip():
                continue
            label = _ALIASES.get(row[label_at].strip(), row[label_at].strip())
            if label not in labels.LABELS:
                raise ValueError(f"{path}:{line}: unknown finding {row[label_at]!r}")
            x, y, w, h = (float(v) for v in row[box_at:box_at + 4])
            boxes.append((row[name_at].strip(), label, x, y, w, h))
    return boxes


def find_images(data_dir, names):
    """{name: path} for the wanted file names anywhere under data_dir."""
    wanted, found = set(names), {}
    for root, _, files in os.walk(data_dir):
        for name in wanted.intersection(files):
            found.setdefault(name, os.path.join(root, name))
    return found


def hit_rate(model, boxes, paths, *, batch_size=32, overlay_dir=None):
    """Per-box results [(name, label, hit, (x, y))] for the boxes whose image was found."""
    import numpy as np

    from cxr_tf import labels
    from cxr_tf.data import images
    from cxr_tf.serving import gradcam

    cam = gradcam.GradCam(model)
    size = cam.size[0]
    todo = [b for b in boxes if b[0] in paths]
    results = []
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        batch, shapes = [], []
        for name, *_ in chunk:
            with open(paths[name], "rb") as f:
                gray, _ = images.decode_any(f.read(), name)
            shapes.append(gray.shape)
            batch.append(images.resize(images.pad_to_square(gray)[0], size)[:, :, None])
        heatmaps = cam(np.stack(batch), [labels.LABELS.index(b[1]) for b in chunk])
        for (name, label, x, y, w, h), shape, heatmap, image in zip(chunk, shapes, heatmaps, batch):
            px, py = gradcam.to_original(*gradcam.peak(heatmap), size, shape)
            hit = x <= px <= x + w and y <= py <= y + h
            results.append((name, label, bool(hit), (float(px), float(py))))
            if overlay_dir:
                _save(overlay_dir, name, label, image[:, :, 0], heatmap, (x, y, w, h), shape, hit)
    return results


def _save(out_dir, name, label, image, heatmap, box, shape, hit, min_side=256):
    """The overlay with the box (green) and the maximum (white cross), enlarged to at least
    `min_side` pixels so that a 64 px test model's overlay can still be read."""
    from PIL import ImageDraw

    from cxr_tf.serving import gradcam

    os.makedirs(out_dir, exist_ok=True)
    img, zoom = gradcam.enlarged_overlay(image, heatmap, min_side)
    size = image.shape[0]
    side = max(shape[:2])
    scale = zoom * size / side  # original pixels -> overlay pixels
    left, top = (side - shape[1]) // 2, (side - shape[0]) // 2
    x, y, w, h = box
    draw = ImageDraw.Draw(img)
    draw.rectangle([(x + left) * scale, (y + top) * scale,
                    (x + left + w) * scale, (y + top + h) * scale], outline=(0, 255, 0), width=2)
    row, col = ((v + 0.5) * zoom for v in gradcam.peak(heatmap))
    draw.line([(col - 8, row), (col + 8, row)], fill=(255, 255, 255), width=2)
    draw.line([(col, row - 8), (col, row + 8)], fill=(255, 255, 255), width=2)
    draw.text((4, img.height - 14), f"{label}: {'hit' if hit else 'miss'}", fill=(255, 255, 255))
    stem = os.path.splitext(name)[0]
    img.save(os.path.join(out_dir, f"{stem}_{label}_{'hit' if hit else 'miss'}.png"))


def summarize(results, boxes, paths):
    per_label = {}
    for _, label, hit, _ in results:
        entry = per_label.setdefault(label, {"boxes": 0, "hits": 0})
        entry["boxes"] += 1
        entry["hits"] += int(hit)
    for entry in per_label.values():
        entry["hit_rate"] = entry["hits"] / entry["boxes"]
    hits = sum(int(r[2]) for r in results)
    return {
        "boxes": len(results), "hits": hits,
        "hit_rate": hits / len(results) if results else None,
        "per_label": dict(sorted(per_label.items())),
        "missing": sorted({b[0] for b in boxes if b[0] not in paths}),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--bbox_csv", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--overlay_dir")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args(argv)

    from cxr_tf.serving import run_dir

    boxes = read_boxes(args.bbox_csv)
    paths = find_images(args.data_dir, [b[0] for b in boxes])
    model = run_dir.load_model(args.model_dir, args.checkpoint)
    results = hit_rate(model, boxes, paths, batch_size=args.batch_size,
                       overlay_dir=args.overlay_dir)
    summary = {"model_dir": args.model_dir, "checkpoint": args.checkpoint,
               **summarize(results, boxes, paths)}
    print(f"{'finding':<16} {'boxes':>6} {'hits':>6} {'rate':>6}")
    for label, entry in summary["per_label"].items():
        print(f"{label:<16} {entry['boxes']:>6} {entry['hits']:>6} {entry['hit_rate']:>6.3f}")
    if summary["missing"]:
        print(f"{len(summary['missing'])} images of the box list not found under {args.data_dir}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
