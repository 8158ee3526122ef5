"""How often does the Grad-CAM maximum fall inside the NIH radiologists' boxes?

    python tools/gradcam_bbox.py --model_dir=RUN --bbox_csv=BBox_List_2017.csv --data_dir=KAGGLE_DIR [--checkpoint=best] [--overlay_dir=DIR] [--batch_size=32] [--bootstrap=1000]

NIH ships `BBox_List_2017.csv` (984 boxes on 880 images, 8 findings) with the Kaggle download:
columns `Image Index`, `Finding Label`, then `Bbox [x`, `y`, `w`, `h]` in pixels of the image
file. A thin wrapper over `cxr_tf.evaluation.runner.pointing_game`, the code behind
`python -m cxr_tf.evaluate --bbox_csv=...`: every image is preprocessed as in training, its
box goes through the same pad-and-resize, Grad-CAM (cxr_tf.evaluation.gradcam, last
convolutional stage) is computed for the box's finding, and a hit is a maximum (the centre of
its tied region) inside the box; a map that is all zero or constant is counted, not scored.
The file spells Infiltration "Infiltrate"; that is mapped. Beyond evaluate's section, the
tool writes one overlay per box (--overlay_dir) and prints per-finding totals as JSON.

Flags:
    --model_dir     run dir (config.json, checkpoints/).
    --bbox_csv      the NIH box list.
    --data_dir      the Kaggle folder holding the images (images_*/images/*.png, any depth;
                    the folder of the box list is searched too, as evaluate does).
    --checkpoint    best | last (default best).
    --overlay_dir   also write each box's overlay: box green (hit) or red (miss), maximum as a
                    white cross.
    --batch_size    images per Grad-CAM batch (default 32).
    --bootstrap     patient-level bootstrap replicates for the hit rates' 95 % CI (default 1000).

Prints a per-finding table, then one JSON line: boxes, hits, hit_rate, per_label, missing, and
`localization` (the evaluate report's section: CIs, chance rates, maps that point nowhere).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def summarize(section, missing):
    """The tool's JSON: totals, per_label {boxes, hits, hit_rate}, missing images, section."""
    overall = section["overall"] or {"boxes": 0, "hits": 0, "hit_rate": None}
    return {
        "boxes": overall["boxes"], "hits": overall["hits"], "hit_rate": overall["hit_rate"],
        "per_label": {label: {k: r[k] for k in ("boxes", "hits", "hit_rate", "flat_maps")}
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

    from cxr_tf.evaluation import box_list, runner
    from cxr_tf.evaluation.inputs import Bootstrap
    from cxr_tf.runs import checkpoints

    boxes = box_list.find_boxes(args.bbox_csv, args.data_dir)
    model = checkpoints.load_model(args.model_dir, args.checkpoint)
    section, _ = runner.pointing_game(model, boxes, batch_size=args.batch_size,
                                      bootstrap=Bootstrap(args.bootstrap),
                                      overlay_dir=args.overlay_dir)
    missing = sorted({b.image_id for b in boxes.boxes if b.image_id not in boxes.paths})
    summary = {"model_dir": args.model_dir, "checkpoint": args.checkpoint,
               **summarize(section, missing)}
    print(f"{'finding':<16} {'boxes':>6} {'hits':>6} {'rate':>6}  {'95% CI':<15} {'chance':>6} "
          f"{'flat maps':>9}")
    for label, r in section["per_finding"].items():
        ci = (f"[{r['hit_rate_ci_low']:.3f}, {r['hit_rate_ci_high']:.3f}]"
              if r["hit_rate_ci_low"] is not None else "")
        rate, chance = (("n/a", "n/a") if r["hit_rate"] is None else
                        (f"{r['hit_rate']:.3f}", f"{r['chance']:.3f}"))
        print(f"{label:<16} {r['boxes']:>6} {r['hits']:>6} {rate:>6}  {ci:<15} {chance:>6} "
              f"{r['flat_maps']:>9}")
    if section["flat_maps"]:
        print(f"{section['flat_maps']} maps point nowhere (all zero or constant): their "
              f"{section['boxes_on_flat_maps']} boxes are not scored")
    if section["images_missing"]:
        print(f"{section['images_missing']} images of the box list not found under "
              f"{args.data_dir}")
    for error in section["images_unreadable_first"]:
        print(f"unreadable: {error}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
