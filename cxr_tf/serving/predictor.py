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
from cxr_tf.evaluation import gradcam, metrics
from cxr_tf.runs import checkpoints, layout, thresholds

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def list_inputs(paths):
    """Files to predict, in order: each file as given, each folder's images sorted. Links to
    folders are not followed (os.walk's default), so a link loop cannot trap the walk."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found += [os.path.join(root, name) for name in sorted(files)
                          if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")]
        else:
            found.append(path)  # kept even if missing: it is reported as a failure
    return found


class Predictor:
    """A loaded model of either kind, with its label names, input size and thresholds.

    thresholds_from: where the thresholds came from; None when they are `threshold` for
    every finding (a run dir without thresholds.json), which the caller names.
    """

    def __init__(self, model_path, threshold=0.5):
        self.keras_model = None
        if os.path.isfile(os.path.join(model_path, "saved_model.pb")):
            loaded = tf.saved_model.load(model_path)
            meta = {k: v.numpy() for k, v in loaded.signatures["metadata"]().items()}
            self._signature = loaded.signatures["predict_images"]
            self._loaded = loaded  # keeps the signature's variables alive
            self.label_names = [name.decode() for name in meta["label_names"]]
            self.image_size = int(meta["image_size"])
            self.thresholds = meta["thresholds"].astype(np.float64)
            self.thresholds_from = f"as exported (cxr_tf {meta['version'].decode()})"
        elif os.path.isfile(layout.config_path(model_path)):
            self.keras_model = checkpoints.load_model(model_path, "best")
            self.label_names = list(labels.LABELS)
            self.image_size = int(self.keras_model.input_shape[1])
            values, self.thresholds_from = thresholds.decision_thresholds(model_path, threshold)
            self.thresholds = np.array(values)
        else:
            raise errors.NotFoundError(
                f"{model_path}: neither a SavedModel (no saved_model.pb) nor a run dir "
                "(no config.json)")

    def __call__(self, batch):
        """uint8 (B, S, S, 1) -> (probabilities (B, 14), positive bool (B, 14))."""
        n = len(self.label_names)
        no_finding = None
        if self.keras_model is not None:
            logits = self.keras_model.predict_on_batch(batch)
            probs = metrics.sigmoid(np.asarray(logits, np.float64))
            probs, no_finding = probs[:, :n], (probs[:, n] if probs.shape[1] > n else None)
        else:
            out = self._signature(images=batch)
            probs = out["probabilities"].numpy().astype(np.float64)
            no_finding = out["no_finding"].numpy() if "no_finding" in out else None
        return probs, labels.decide(probs, self.thresholds, no_finding)


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

    rows: {"file", "probabilities" (list), "positive_labels"}; failures: {"file", "reason"}.
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
        probs, positive = predictor(batch)
        for i, path in enumerate(batch_files):
            names = [predictor.label_names[c] for c in np.flatnonzero(positive[i])]
            rows.append({"file": display_name(path), "probabilities": probs[i].tolist(),
                         "positive_labels": "|".join(names) or labels.NO_FINDING})
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
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["file", *label_names, "positive_labels"])
    for row in rows:
        writer.writerow([row["file"], *(f"{p:.6f}" for p in row["probabilities"]),
                         row["positive_labels"]])
