"""Predicting files with an exported SavedModel or a run dir: what `python -m cxr_tf.predict`
runs. Every file goes through `cxr_tf.data.images.preprocess`, the preprocessing of the
training data; a file that cannot be read is a failure with its reason, and the others go on.

A folder from a PACS export or a shared drive may hold anything under an image's name: a FIFO
(reading it would wait for ever), a link to /dev/zero (a read that never ends), a link loop,
a name that is not UTF-8. Only regular files are read, at most `image_header.max_file_bytes` of
each, and any error while reading or decoding one file is that file's failure.
"""

import csv
import logging
import os
import stat

import numpy as np
import tensorflow as tf

from cxr_tf import errors, labels
from cxr_tf.data import image_header, images
from cxr_tf.evaluation import decisions, gradcam, ood
from cxr_tf.runs import calibration, checkpoints, layout, thresholds
from cxr_tf.runs import ood as ood_file


class Predictor:
    """A loaded model of either kind, with its label names, input size and decisions.

    thresholds_from: where the thresholds came from; None when they are `threshold` for
    every finding (a run dir without thresholds.json), which the caller names.
    decisions: what a prediction rests on, written beside predict's CSV: the thresholds with
    their provenance (`findings`, a one-line `summary`), the calibration and the
    out-of-distribution cut. A run dir gives what export would bake into a SavedModel.
    """

    def __init__(self, model_path, threshold=0.5):
        self.keras_model = None
        if os.path.isfile(os.path.join(model_path, "saved_model.pb")):
            self._load_saved_model(model_path)
        elif os.path.isfile(layout.config_path(model_path)):
            self._load_run_dir(model_path, threshold)
        else:
            raise errors.NotFoundError(
                f"{model_path}: neither a SavedModel (no saved_model.pb) nor a run dir "
                "(no config.json)")

    def _load_saved_model(self, model_path):
        loaded = tf.saved_model.load(model_path)
        meta = {k: v.numpy() for k, v in loaded.signatures["metadata"]().items()}
        self._signature = loaded.signatures["predict_images"]
        self._loaded = loaded  # keeps the signature's variables alive
        self.label_names = [name.decode() for name in meta["label_names"]]
        self.image_size = int(meta["image_size"])
        self.thresholds = meta["thresholds"].astype(np.float64)
        self.thresholds_from = f"as exported (cxr_tf {meta['version'].decode()})"
        self.decisions = _exported_decisions(meta, self.label_names)

    def _load_run_dir(self, model_path, threshold):
        self.keras_model = checkpoints.load_model(model_path, "best")
        self.label_names = list(labels.LABELS)
        self.image_size = int(self.keras_model.input_shape[1])
        provenance = thresholds.read_decisions(model_path, threshold)
        calibration.check_thresholds(model_path, provenance.content)
        self.thresholds = np.array(provenance.values)
        self.thresholds_from = provenance.source
        names = decisions.output_names(int(self.keras_model.output_shape[-1]))
        self._calibration = calibration.read(model_path, names)
        self._detector = ood_file.load(model_path)
        self._net = (ood.feature_model(self.keras_model, self._detector.layers)
                     if self._detector is not None else self.keras_model)
        self.decisions = {
            "summary": provenance.summary(), "findings": provenance.findings,
            "calibration": self._calibration.method if self._calibration else "none",
            "ood_method": self._detector.details["method"] if self._detector else "none",
            "ood_threshold": self._detector.threshold if self._detector else None}

    def __call__(self, batch):
        """uint8 (B, S, S, 1) -> {"probabilities" (B, 14), "positive" bool (B, 14),
        "ood_score" (B,) (NaN without a detector), "in_distribution" bool (B,)}."""
        n = len(self.label_names)
        if self.keras_model is None:
            out = {k: v.numpy() for k, v in self._signature(images=batch).items()}
            out["probabilities"] = out["probabilities"].astype(np.float64)
            out.pop("no_finding", None)
            return out
        outputs = self._net.predict_on_batch(batch)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        probs = decisions.probabilities(np.asarray(outputs[0], np.float64), self._calibration)
        no_finding = probs[:, n] if probs.shape[1] > n else None
        probs = probs[:, :n]
        if self._detector is None:
            score, inside = np.full(len(probs), np.nan), np.ones(len(probs), bool)
        else:
            score = self._detector.score(outputs[1:])
            inside = score <= self._detector.threshold
        return {"probabilities": probs,
                "positive": labels.decide(probs, self.thresholds, no_finding),
                "ood_score": score, "in_distribution": inside}


def _exported_decisions(meta, label_names):
    """The decisions a SavedModel's `metadata` reports (older exports lack the provenance)."""
    def strings(key):
        return [v.decode() for v in meta[key]] if key in meta else None

    methods, splits, reasons = (strings(f"threshold_{k}") for k in ("methods", "splits",
                                                                    "reasons"))
    findings = {}
    for i, name in enumerate(label_names):
        entry = {"threshold": float(meta["thresholds"][i])}
        if methods is not None:
            entry.update(method=methods[i], split=splits[i] or None,
                         positives=_count(meta["threshold_positives"][i]),
                         negatives=_count(meta["threshold_negatives"][i]))
            if reasons[i]:
                entry["reason"] = reasons[i]
        findings[name] = entry
    summary = meta["threshold_summary"].decode() if "threshold_summary" in meta else \
        "exported by an older cxr_tf: the thresholds' provenance is unknown"
    ood_threshold = float(meta["ood_threshold"]) if "ood_threshold" in meta else None
    return {"summary": summary, "findings": findings,
            "calibration": meta["calibration"].decode() if "calibration" in meta else "none",
            "ood_method": meta["ood_method"].decode() if "ood_method" in meta else "none",
            "ood_threshold": None if ood_threshold is None or np.isnan(ood_threshold)
            else ood_threshold}


def _count(value):
    return None if int(value) < 0 else int(value)


def display_name(path):
    """`path` as printable text: bytes that are not UTF-8 (a name from another system's
    encoding) are escaped as \\xNN, so the CSV and the summary can always be written."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def read_file(path, name, max_bytes):
    """The bytes of the regular file at `path` (links followed); ImageError otherwise."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise image_header.ImageError(name, "missing", e.strerror or str(e)) from e
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise image_header.ImageError(name, "undecodable", f"{kind}, not an image file")
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise image_header.ImageError(name, "undecodable", e.strerror or str(e)) from e
    if len(data) > max_bytes:
        raise image_header.ImageError(name, "too_large", f"file over {max_bytes:,} bytes")
    return data


def _read(path, size, max_pixels):
    name = display_name(path)
    data = read_file(path, name, image_header.max_file_bytes(max_pixels))
    return images.preprocess(data, name, size, max_pixels=max_pixels)[0]


def predict_files(predictor, files, *, batch_size=32, gradcam_dir=None, gradcam_top_k=1,
                  max_pixels=image_header.MAX_PIXELS):
    """Predicts every file; returns (rows, failures, overlay paths).

    rows: {"file", "probabilities" (list), "positive_labels", "positive" (list of bool),
    "ood_score" (None without a detector), "in_distribution"}; failures: {"file", "reason"}.
    "file" is `display_name(path)`. Any exception while reading or decoding one file is its
    failure; images over `max_pixels` are refused before decoding.
    """
    overlays = None
    if gradcam_dir:
        if predictor.keras_model is None:
            raise ValueError("gradcam_dir needs the Keras model: the predictor must be loaded "
                             "from a run dir, not a SavedModel")
        overlays = _Overlays(predictor.keras_model, gradcam_dir, predictor.label_names,
                             gradcam_top_k)
    rows, failures = [], []
    for start in range(0, len(files), batch_size):
        batch_files, batch = [], []
        for path in files[start:start + batch_size]:
            try:
                batch.append(_read(path, predictor.image_size, max_pixels))
                batch_files.append(path)
            except image_header.ImageError as e:
                failures.append({"file": display_name(path), "reason": str(e)})
            except Exception as e:  # a decoder bug must not cost the other files their rows
                logging.debug("%s", display_name(path), exc_info=True)
                failures.append({"file": display_name(path),
                                 "reason": f"{display_name(path)}: {type(e).__name__}: {e}"})
        if not batch:
            continue
        batch = np.stack(batch)
        out = predictor(batch)
        probs, positive = out["probabilities"], out["positive"]
        for i, path in enumerate(batch_files):
            names = [predictor.label_names[c] for c in np.flatnonzero(positive[i])]
            score = float(out["ood_score"][i])
            rows.append({"file": display_name(path), "probabilities": probs[i].tolist(),
                         "positive_labels": "|".join(names) or labels.NO_FINDING,
                         "positive": positive[i].tolist(),
                         "ood_score": None if np.isnan(score) else score,
                         "in_distribution": bool(out["in_distribution"][i])})
        if overlays is not None:
            overlays.write(batch_files, batch, probs, positive)
    return rows, failures, (overlays.paths if overlays is not None else [])


class _Overlays:
    """Grad-CAM overlays in one folder: one PNG per file and finding (its positive findings,
    else its `top_k` likeliest), named FILE-STEM_FINDING.png, unique across batches."""

    def __init__(self, keras_model, out_dir, label_names, top_k):
        os.makedirs(out_dir, exist_ok=True)
        self._cam = gradcam.GradCam(keras_model)
        self._out_dir = out_dir
        self._label_names = label_names
        self._top_k = top_k
        self._used = set()
        self.paths = []

    def write(self, files, batch, probs, positive):
        jobs = []  # (image index, class index): positive findings, else the top-k
        for i in range(len(files)):
            classes = np.flatnonzero(positive[i])
            if not classes.size:
                classes = np.argsort(-probs[i])[:self._top_k]
            jobs += [(i, int(c)) for c in classes]
        heatmaps = self._cam(batch[[i for i, _ in jobs]], [c for _, c in jobs])
        for (i, c), heatmap in zip(jobs, heatmaps):
            finding = self._label_names[c]
            stem = os.path.splitext(os.path.basename(files[i]))[0]
            name, k = f"{stem}_{finding}.png", 2
            while name in self._used:  # two inputs with one name in different folders
                name, k = f"{stem}_{k}_{finding}.png", k + 1
            self._used.add(name)
            self.paths.append(gradcam.save_overlay(
                os.path.join(self._out_dir, name), batch[i, :, :, 0], heatmap,
                f"{finding} {probs[i, c]:.2f}"))


def write_csv(rows, label_names, f):
    """predict's CSV: file, one probability per finding, positive_labels (the columns of
    cxr_tf 0.2.0, first), then one 0/1 decision per finding (`<Finding>_positive`), ood_score
    (empty without a detector) and in_distribution (0/1)."""
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["file", *label_names, "positive_labels",
                     *(f"{name}_positive" for name in label_names), "ood_score",
                     "in_distribution"])
    for row in rows:
        writer.writerow([row["file"], *(f"{p:.6f}" for p in row["probabilities"]),
                         row["positive_labels"], *(int(p) for p in row["positive"]),
                         "" if row["ood_score"] is None else f"{row['ood_score']:.6g}",
                         int(row["in_distribution"])])
