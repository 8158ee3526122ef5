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
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from cxr_tf.testing import image_bytes  # noqa: E402

SIZE = 64
_TOKEN_ROWS = 4  # full=False: the pixel data of a header-decided input, enough to start decoding


def good_png(size=SIZE):
    """The warm-up input: a random size² gray PNG, which every path accepts."""
    return image_bytes.png(np.random.default_rng(0).integers(0, 256, (size, size), np.uint8))


def rle_dicom(side):
    """An 8-bit side x side RLE Lossless DICOM of zeros: PackBits runs of 128, ~110 bytes a row
    (7000² is 49 MB of pixels in ~0.8 MB): the DICOM path at the limit."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    row = (b"\x81\x00" * (side // 128)) + (bytes([257 - side % 128, 0]) if side % 128 else b"")
    header = struct.pack("<16I", 1, 64, *[0] * 14)
    return image_bytes.dicom(syntax=RLELossless, Rows=side, Columns=side, BitsAllocated=8,
                             BitsStored=8, HighBit=7, PixelData=encapsulate([header + row * side]))


def deflated_dicom(side):
    """A deflated DICOM whose dataset inflates to side² 16-bit zeros."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    return image_bytes.dicom(syntax=DeflatedExplicitVRLittleEndian, Rows=side, Columns=side,
                             BitsAllocated=16, BitsStored=16, HighBit=15,
                             PixelData=bytes(2 * side * side))


def hostile_inputs(full=True):
    """{name: [file bytes, ...]} (several files: one request / one predict run).

    The first group reproduces issue 10; "at_limit_*" are the largest images accepted at the
    default max_pixels (their cost is the bound's cost); the rest are malformed files.
    full=False keeps only inputs cheap to make, with token pixel data where the header decides.
    """
    png, cut = image_bytes.png_from, None if full else _TOKEN_ROWS
    text = image_bytes.chunk(b"tEXt", b"Comment\0crafted")
    inputs = {
        "narrow_1x40000.png": [png(1, 40000)],
        "narrow_1x40000.png_x3": [png(1, 40000)] * 3,
        "narrow_1x200000.png": [png(1, 200000)],
        "wide_40000x1249.png": [png(40000, 1249, rows=cut)],
        "long_65500x700.jpg": [long_jpeg()] if full else [],
        "before_ihdr_23000_gray.png": [png(23000, 23000, before=text, rows=cut)],
        "before_ihdr_10000_rgba16.png": [png(10000, 10000, depth=16, colour=6, before=text,
                                             rows=cut)],
        "at_limit_7071_gray.png": [png(7071, 7071)] if full else [],
        "at_limit_2500_rgba16.png": [png(2500, 2500, depth=16, colour=6)] if full else [],
        "at_limit_4082_rgb.png": [png(4082, 4082, colour=2)] if full else [],
        "gif89a.gif": [b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff" + bytes(20)],
        "random_bytes.png": [np.random.default_rng(1).bytes(4096)],
        "pixel_data_ends_early.png": [png(1024, 1024, rows=_TOKEN_ROWS)],
        "dicom_rle_7000.dcm": [rle_dicom(7000)] if full else [],
        "dicom_deflate_bomb.dcm": [deflated_dicom(10000)] if full else [],
    }
    return {name: files for name, files in inputs.items() if files}


def long_jpeg():
    """A 65500x700 gray JPEG (~540 KB): a 65500² square once padded."""
    return image_bytes.jpeg(np.full((700, 65500), 128, np.uint8), quality=90)


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
