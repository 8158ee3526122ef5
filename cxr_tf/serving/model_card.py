"""model_card.json: what a served model is, how it was made and measured, and what it must not
be used for, inside the SavedModel (assets/model_card.json, and the `metadata` signature's
`model_card` output).

    card = build(model_dir, "best", baked, image_size=224, max_pixels=50_000_000)

The sections and field names follow Google's Model Card Toolkit schema (v0.0.2:
`model_details`, `model_parameters`, `quantitative_analysis`, `considerations`;
`performance_metrics` entries with `type`, `value`, `slice`, `confidence_interval`), without
depending on the toolkit. What the schema has no field for is added inside those sections:
the training config, the dataset fingerprint and split sizes, the thresholds with their
provenance, the calibration, the out-of-distribution cut, package versions, and each
metric's `positives` and `negatives`. Plain Python and JSON: readable with no cxr_tf.
"""

import datetime
import json
import os

from cxr_tf import __version__
from cxr_tf.runs import layout, record

SCHEMA_VERSION = "0.0.2"
_SOURCE = "https://www.kaggle.com/datasets/nih-chest-xrays/data"
_INTENDED_USE = (
    "Research on, and second-reader triage of, frontal (PA/AP) chest radiographs of adults, "
    "by ML researchers and hospital ML engineers who validate it on their own data first.")
_LIMITATIONS = (
    "Trained on frontal adult chest films (NIH ChestX-ray14, one US hospital); lateral views, "
    "children, other body parts and other hospitals' scanners were not validated.",
    "NIH's labels were mined from radiology reports by NLP, not read from the images; "
    "published audits found many of them wrong, so every figure here is measured against "
    "noisy labels.",
    "A probability is calibrated only for the findings the calibration lists; a decision "
    "uses a threshold tuned on validation only where that finding had enough cases "
    "(thresholds: method and counts per finding).",
    "The out-of-distribution flag catches inputs unlike the training films (noise, "
    "photographs, rotated or inverted films); it does not catch a chest film of a finding "
    "or population the training data lacked.")
_NOT_FOR = (
    "Not a medical device: not for diagnosis, treatment or any decision about a patient "
    "without a clinician reading the film.")


def build(model_dir, checkpoint, baked, *, image_size, max_pixels):
    """The model card of `model_dir`'s `checkpoint` as exported with `baked` (a
    `graph.Baked`: calibration, detector, threshold provenance), as a JSON-ready dict."""
    run = record.read(model_dir)
    config = run.config
    return {
        "schema_version": SCHEMA_VERSION,
        "model_details": _details(run, checkpoint),
        "model_parameters": {
            "model_architecture": f"{config.arch} (one-channel ResNet, cxr_tf.model), "
                                  f"{image_size}x{image_size} px input, "
                                  f"{run.resolved.num_outputs or 14} sigmoid outputs",
            "input_format": f"serving_default: PNG or JPEG bytes (8/16-bit, gray or colour, at "
                            f"most {max_pixels:,} pixels as a padded square), padded to a square "
                            f"and resized to {image_size} px in the graph; predict_images: "
                            f"uint8 [N, {image_size}, {image_size}, 1]",
            "output_format": "probabilities float32 [N, 14] (calibrated where calibration "
                             "says), positive bool [N, 14] at the thresholds below, ood_score "
                             "float32 [N], in_distribution bool [N]",
            "label_names": list(run.resolved.label_names or ()),
            "data": _data(run),
            "training_config": config.to_dict(),
            "decision_thresholds": _thresholds(baked.provenance),
            "calibration": _calibration(baked.calibration),
            "out_of_distribution": _ood(baked.detector),
        },
        "quantitative_analysis": _quantitative(model_dir, checkpoint),
        "considerations": {
            "users": [{"description": "ML researchers; hospital ML engineers integrating and "
                                      "validating the model locally"}],
            "use_cases": [{"description": _INTENDED_USE}],
            "limitations": [{"description": text} for text in _LIMITATIONS],
            "tradeoffs": [{"description": "Thresholds tuned for F1 (or Youden) trade "
                                          "sensitivity against specificity per finding; "
                                          "choose your own operating point on local data."}],
            "ethical_considerations": [{"name": _NOT_FOR, "mitigation_strategy":
                                        "Keep a radiologist in the loop; monitor the "
                                        "out-of-distribution flag and local performance."}],
        },
    }


def _details(run, checkpoint):
    return {
        "name": f"cxr_tf {run.config.arch} chest X-ray classifier",
        "overview": "Multi-label classifier of 14 thoracic findings on chest radiographs "
                    "(NIH ChestX-ray14 labels).",
        "version": {"name": __version__, "date": datetime.date.today().isoformat(),
                    "diff": f"checkpoint {checkpoint}"},
        "licenses": [{"identifier": "Apache-2.0"}],
        "references": [{"reference": _SOURCE}],
        "citations": [{"style": "text", "citation": (
            "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale "
            "chest X-ray database and benchmarks. CVPR 2017.")}],
        "package_versions": run.environment.package_versions,
        "command_line": run.environment.command_line,
    }


def _data(run):
    dataset = run.resolved.dataset
    fingerprint = dataset.source if dataset is not None else None
    return [
        {"name": "NIH ChestX-ray14, train split", "link": _SOURCE,
         "description": "official train_val list minus the validation patients",
         "examples": run.resolved.train_examples, "source_fingerprint": fingerprint},
        {"name": "NIH ChestX-ray14, validation split", "link": _SOURCE,
         "description": f"{run.config.val_fraction:g} of the train_val patients, split by "
                        f"patient (seed {run.config.seed}); every threshold, calibration and "
                        "the OOD cut were chosen on it",
         "examples": run.resolved.validation_examples, "patient_wise": True},
    ]


def _thresholds(provenance):
    if provenance is None:
        return None
    return {"summary": provenance.summary(), "source": provenance.source,
            "findings": provenance.findings}


def _calibration(calibration):
    if calibration is None:
        return {"method": "none"}
    return {"method": calibration.method, **calibration.details,
            "findings": calibration.findings}


def _ood(detector):
    if detector is None:
        return {"method": "none", "note": "ood_score is NaN and in_distribution true"}
    return {**detector.details, "reference": "Lee et al., NeurIPS 2018 (Mahalanobis)"}


def _quantitative(model_dir, checkpoint):
    """Per-finding AUC and AP with their intervals and counts, from evaluate's reports of the
    same checkpoint (validation, and test when it was evaluated)."""
    metrics, sources = [], []
    for split in ("validation", "test"):
        path = os.path.join(layout.eval_dir(model_dir, split), "report.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            report = json.load(f)
        if report.get("checkpoint") != checkpoint:
            continue
        sources.append(os.path.relpath(path, model_dir))
        for name, row in report["per_class"].items():
            counts = {"positives": row["positives"], "negatives": row["negatives"]}
            entry = {"type": "auc", "value": row["auc"], "slice": f"{split}/{name}", **counts}
            if row["auc"] is None:
                entry["not_estimable"] = row["auc_not_estimable"]
            elif row.get("auc_ci_low") is not None:
                entry["confidence_interval"] = {"lower_bound": row["auc_ci_low"],
                                                "upper_bound": row["auc_ci_high"]}
            metrics.append(entry)
            if row.get("average_precision") is not None:
                metrics.append({"type": "average_precision", "value": row["average_precision"],
                                "slice": f"{split}/{name}", **counts})
        overall = report["overall"]
        metrics.append({"type": "auc_mean", "value": overall["auc_mean"], "slice": split,
                        "findings_averaged": overall["auc_mean_over"],
                        "examples": overall["examples"]})
    note = None if sources else (f"no evaluate report of the {checkpoint} checkpoint in the run "
                                 "dir: evaluate it before exporting to put its figures here")
    return {"performance_metrics": metrics, "sources": sources, "note": note}


def summary(card):
    """A few lines for the export app: what a serving engineer checks first."""
    params = card["model_parameters"]
    lines = [params["model_architecture"]]
    means = [m for m in card["quantitative_analysis"]["performance_metrics"]
             if m["type"] == "auc_mean" and m["value"] is not None]
    for m in means:
        lines.append(f"{m['slice']} mean AUC {m['value']:.3f} over {m['findings_averaged']} "
                     f"findings ({m['examples']:,} images)")
    if not means:
        lines.append(card["quantitative_analysis"]["note"] or "no per-finding AUC estimable")
    calibration = params["calibration"]
    if calibration["method"] == "none":
        lines.append("calibration: none")
    else:
        fitted = sum(e["method"] != "none" for e in calibration["findings"].values())
        lines.append(f"calibration: {calibration['method']} ({fitted} of "
                     f"{len(calibration['findings'])} outputs calibrated)")
    ood = params["out_of_distribution"]
    lines.append("out-of-distribution flag: " + (
        f"{ood['method']}, cut {ood['threshold']:.4g} ({ood['percentile']:g}th percentile of "
        f"{ood['validation_examples']:,} validation films)" if ood["method"] != "none"
        else "none (ood_score NaN, in_distribution true)"))
    lines.append(f"intended use: {card['considerations']['use_cases'][0]['description']}")
    return lines
