"""How often does the Grad-CAM maximum fall inside the NIH radiologists' boxes?

    python tools/gradcam_bbox.py --model_dir=RUN --bbox_csv=BBox_List_2017.csv --data_dir=KAGGLE_DIR [--checkpoint=best] [--overlay_dir=DIR] [--batch_size=32] [--bootstrap=1000]

NIH ships `BBox_List_2017.csv` (984 boxes on 880 images, 8 findings) with the Kaggle download:
columns `Image Index`, `Finding Label`, then `Bbox [x`, `y`, `w`, `h]` in pixels of the image
file. The work is `cxr_tf.evaluation.localization` (the same code as
`python -m cxr_tf.evaluate --bbox_csv=...`): every image is preprocessed as in training, its
box goes through the same pad-and-resize, Grad-CAM (cxr_tf.serving.gradcam, last
convolutional stage) is computed for the box's finding, and a hit is a maximum inside the box.
The file spells Infiltration "Infiltrate"; that is mapped.

Flags:
    --model_dir     run dir (config.json, checkpoints/).
    --bbox_csv      the NIH box list.
    --data_dir      the Kaggle folder holding the images (images_*/images/*.png, any depth).
    --checkpoint    best | last (default best).
    --overlay_dir   also write each box's overlay: box green (hit) or red (miss), maximum as a
                    white cross.
    --batch_size    images per Grad-CAM batch (default 32).
    --bootstrap     patient-level bootstrap replicates for the hit rates' 95 % CI (default 1000).

Prints a per-finding table, then one JSON line: boxes, hits, hit_rate, per_label, missing, and
`localization` (the evaluate report's section: CIs, chance rates).
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_tf.evaluation.localization import find_images, read_boxes  # noqa: E402


def hit_rate(model, boxes, paths, *, batch_size=32, overlay_dir=None, n_boot=1000):
    """The evaluate report's localization section for these boxes (writing one overlay per
    box into overlay_dir when given)."""
    from cxr_tf.evaluation import localization
    from cxr_tf.serving import gradcam

    cam = gradcam.GradCam(model)
    size = cam.size[0]
    pairs = localization.point(boxes, paths, cam, size, batch_size=batch_size)
    if overlay_dir:
        pairs = _saving(pairs, overlay_dir)
    section, _ = localization.summarize(pairs, boxes, paths, size=size, n_boot=n_boot)
    return section


def _saving(pairs, out_dir):
    """Passes the pairs on, writing `<image>_<finding>_<hit|miss>.png` for each box."""
    from cxr_tf.evaluation import localization

    os.makedirs(out_dir, exist_ok=True)
    for pair in pairs:
        for box, hit in zip(pair.boxes, pair.hits):
            one = dataclasses.replace(pair, boxes=[box], hits=[hit])
            stem = os.path.splitext(pair.image_id)[0]
            localization.plot_overlays(
                os.path.join(out_dir, f"{stem}_{pair.label}_{'hit' if hit else 'miss'}.png"),
                {pair.label: [one]})
        yield pair


def summarize(section, missing):
    """The tool's JSON: totals, per_label {boxes, hits, hit_rate}, missing images, section."""
    overall = section["overall"] or {"boxes": 0, "hits": 0, "hit_rate": None}
    return {
        "boxes": overall["boxes"], "hits": overall["hits"], "hit_rate": overall["hit_rate"],
        "per_label": {label: {k: r[k] for k in ("boxes", "hits", "hit_rate")}
                      for label, r in sorted(section["per_finding"].items())},
        "missing": missing, "localization": section,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--bbox_csv", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--overlay_dir")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)

    from cxr_tf.runs import checkpoints

    boxes = read_boxes(args.bbox_csv)
    paths = find_images([args.data_dir], [b.image_id for b in boxes])
    model = checkpoints.load_model(args.model_dir, args.checkpoint)
    section = hit_rate(model, boxes, paths, batch_size=args.batch_size,
                       overlay_dir=args.overlay_dir, n_boot=args.bootstrap)
    section["source"] = os.path.abspath(args.bbox_csv)
    missing = sorted({b.image_id for b in boxes if b.image_id not in paths})
    summary = {"model_dir": args.model_dir, "checkpoint": args.checkpoint,
               **summarize(section, missing)}
    print(f"{'finding':<16} {'boxes':>6} {'hits':>6} {'rate':>6}  {'95% CI':<15} {'chance':>6}")
    for label, r in section["per_finding"].items():
        ci = (f"[{r['hit_rate_ci_low']:.3f}, {r['hit_rate_ci_high']:.3f}]"
              if r["hit_rate_ci_low"] is not None else "")
        print(f"{label:<16} {r['boxes']:>6} {r['hits']:>6} {r['hit_rate']:>6.3f}  {ci:<15} "
              f"{r['chance']:>6.3f}")
    if section["images_missing"]:
        print(f"{section['images_missing']} images of the box list not found under "
              f"{args.data_dir}")
    for error in section["images_unreadable_first"]:
        print(f"unreadable: {error}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
