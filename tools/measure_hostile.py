"""Peak memory of serving and of predict on hostile inputs, each input in a fresh process.

    python tools/measure_hostile.py [--work_dir=DIR] [--only=NAME,NAME] [--paths=serving,predict]

Exports an untrained resnet18 at 64 px (what is measured is the preprocessing, not the
model), writes every input of `hostile_inputs()` to a file (each at most 1 MB), then for each
input and each path starts a fresh Python process that loads the model, runs one good 64 px
PNG through it (the first call builds what every call needs), resets the kernel's peak RSS
(VmHWM, what ru_maxrss reports; `echo 5 > /proc/self/clear_refs`), reads the RSS, runs the
input and reads the peak: the increase is the input's own, not hidden under the peak that
loading TensorFlow left (without the reset, the figure is the rise of ru_maxrss):
    serving  the SavedModel's `serving_default` on the input's bytes, as TF Serving calls it;
    predict  `cxr_tf.serving.predictor.predict_files` on the input's files (PIL, pydicom).
Prints a table, then, as its last line, one JSON object {input: {"bytes", path: {"outcome",
"rss_increase_mb", "seconds", "baseline_mb", "peak_reset"}}}. docs/RELIABILITY.md records a
run; tests/test_hostile.py asserts the bound on the issue's inputs.
"""

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width, height, *, depth=8, colour=0, before=b"", full=True):
    """A PNG of zero pixels written by hand. `before`: chunks ahead of IHDR. With full=False
    the pixel data is a token 4 rows: the header alone decides whether it is refused."""
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    row = b"\0" * (1 + (width * samples * depth + 7) // 8)
    rows = height if full else min(height, 4)
    deflate, parts, written = zlib.compressobj(9), [], 0
    while written < rows:  # zeros deflate ~1000:1: gigabytes of pixels in under 1 MB
        step = min(rows - written, max(1, (1 << 24) // len(row)))
        parts.append(deflate.compress(row * step))
        written += step
    parts.append(deflate.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + before + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def jpeg(width, height):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def good_png(size=SIZE):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size), np.uint8)).save(
        buf, "PNG")
    return buf.getvalue()


def _dicom(**attributes):
    """A DICOM dataset (pydicom) with the attributes given, saved to bytes."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = attributes.pop("syntax", ExplicitVRLittleEndian)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelRepresentation = 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def rle_dicom(side):
    """An 8-bit side x side RLE Lossless DICOM of zeros: PackBits runs of 128, ~110 bytes a row
    (7000² is 49 MB of pixels in ~0.8 MB): the DICOM path at the limit."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    row = (b"\x81\x00" * (side // 128)) + (bytes([257 - side % 128, 0]) if side % 128 else b"")
    header = struct.pack("<16I", 1, 64, *[0] * 14)
    return _dicom(syntax=RLELossless, Rows=side, Columns=side, BitsAllocated=8, BitsStored=8,
                  HighBit=7, PixelData=encapsulate([header + row * side]))


def deflated_dicom(side):
    """A deflated DICOM whose dataset inflates to side² 16-bit zeros."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    return _dicom(syntax=DeflatedExplicitVRLittleEndian, Rows=side, Columns=side,
                  BitsAllocated=16, BitsStored=16, HighBit=15,
                  PixelData=bytes(2 * side * side))


def hostile_inputs(full=True):
    """{name: [file bytes, ...]} (several files: one request / one predict run).

    The first group reproduces issue 10; "at_limit_*" are the largest images accepted at the
    default --max_pixels (their cost is the bound's cost); the rest are malformed files.
    full=False keeps only inputs cheap to make, with token pixel data where the header decides.
    """
    text = chunk(b"tEXt", b"Comment\0crafted")
    inputs = {
        "narrow_1x40000.png": [png(1, 40000)],
        "narrow_1x40000.png_x3": [png(1, 40000)] * 3,
        "narrow_1x200000.png": [png(1, 200000)],
        "wide_40000x1249.png": [png(40000, 1249, full=full)],
        "long_65500x700.jpg": [jpeg(65500, 700)] if full else [],
        "before_ihdr_23000_gray.png": [png(23000, 23000, before=text, full=full)],
        "before_ihdr_10000_rgba16.png": [png(10000, 10000, depth=16, colour=6, before=text,
                                             full=full)],
        "at_limit_7071_gray.png": [png(7071, 7071)] if full else [],
        "at_limit_2500_rgba16.png": [png(2500, 2500, depth=16, colour=6)] if full else [],
        "at_limit_4082_rgb.png": [png(4082, 4082, colour=2)] if full else [],
        "gif89a.gif": [b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff" + bytes(20)],
        "random_bytes.png": [np.random.default_rng(1).bytes(4096)],
        "pixel_data_ends_early.png": [png(1024, 1024, full=False)],
        "dicom_rle_7000.dcm": [rle_dicom(7000)] if full else [],
        "dicom_deflate_bomb.dcm": [deflated_dicom(10000)] if full else [],
    }
    return {name: files for name, files in inputs.items() if files}


_CHILD = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
path, model_dir, good, groups = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
import tensorflow as tf

def status_mb(field):  # VmRSS (now) or VmHWM (the peak, what ru_maxrss reports)
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024

def reset_peak():  # Linux >= 4.0: VmHWM back to the current RSS, so each input has its own peak
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

if path == "serving":
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    def run(paths):
        data = [open(p, "rb").read() for p in paths]
        try:
            serve(image_bytes=tf.constant(data))
            return "accepted"
        except tf.errors.InvalidArgumentError as e:
            reason = e.message.split("assertion failed: [")[-1].splitlines()[0]
            return "refused: " + reason.rstrip("]").strip()
else:
    sys.path.insert(0, os.environ["CXR_TF_ROOT"])
    from cxr_tf.serving import predictor
    model = predictor.Predictor(model_dir)
    def run(paths):
        rows, failures, _ = predictor.predict_files(model, paths)
        if not failures:
            return "predicted"
        return "failed: " + failures[0]["reason"].split(": ", 1)[1]

run([good])
results = []
for paths in groups:
    resettable = reset_peak()
    before, start = status_mb("VmRSS" if resettable else "VmHWM"), time.time()
    outcome = run(paths)
    results.append({"outcome": outcome, "rss_increase_mb": round(status_mb("VmHWM") - before, 1),
                    "seconds": round(time.time() - start, 2), "baseline_mb": round(before, 1),
                    "peak_reset": resettable})
print(json.dumps(results))
"""


def measure(path, model_dir, good, groups, timeout=600):
    """Runs each group of files (one request, or one predict_files call) through `path`
    ("serving" or "predict") in one fresh process: a result dict per group, each with the
    peak RSS increase over the RSS just before it."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "CXR_TF_ROOT": _ROOT}
    if path == "serving":  # as TF Serving would: TensorFlow, and no cxr_tf on the path
        env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD, path, model_dir, good,
                           json.dumps(groups)],
                          capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        failed = {"outcome": f"process exit {proc.returncode}: "
                             f"{(proc.stderr.strip().splitlines() or [''])[-1]}",
                  "rss_increase_mb": None, "seconds": None}
        return [failed] * len(groups)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export_model(work_dir):
    sys.path.insert(0, _ROOT)
    from cxr_tf import model
    from cxr_tf.serving import graph

    export_dir = os.path.join(work_dir, "model", "1")
    if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        graph.export(model.build_model("resnet18", SIZE), export_dir, [0.5] * 14)
    return export_dir


def write_inputs(work_dir, inputs):
    """Each input's files under work_dir/inputs/NAME/; {name: [paths]}."""
    paths = {}
    for name, files in inputs.items():
        folder = os.path.join(work_dir, "inputs", name)
        os.makedirs(folder, exist_ok=True)
        stem, ext = os.path.splitext(name.split("_x")[0] if "_x" in name else name)
        paths[name] = []
        for i, data in enumerate(files):
            paths[name].append(os.path.join(folder, f"{stem}_{i}{ext}"))
            with open(paths[name][-1], "wb") as f:
                f.write(data)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "cxr_tf_hostile"))
    parser.add_argument("--only", default="", help="comma-separated input names")
    parser.add_argument("--paths", default="serving,predict")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    export_dir = export_model(args.work_dir)
    inputs = hostile_inputs()
    if args.only:
        inputs = {k: v for k, v in inputs.items() if k in args.only.split(",")}
    files = write_inputs(args.work_dir, inputs)
    good = os.path.join(args.work_dir, "good.png")
    with open(good, "wb") as f:
        f.write(good_png())
    results = {}
    for name, paths in files.items():
        results[name] = {"bytes": sum(len(d) for d in inputs[name])}
        for path in args.paths.split(","):
            if path == "serving" and name.endswith(".dcm"):
                continue  # the SavedModel serves PNG and JPEG only
            results[name][path] = measure(path, export_dir, good, [paths])[0]
            r = results[name][path]
            print(f"{name:30s} {results[name]['bytes']:>9,} B  {path:8s} "
                  f"+{r['rss_increase_mb']} MB  {r['outcome'][:90]}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
