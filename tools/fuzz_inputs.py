"""Fuzz the image decoder, the metadata reader, the prepared dataset's descriptions and the
history reader with atheris (coverage-guided libFuzzer).

    python tools/fuzz_inputs.py image -max_total_time=600      # bytes -> images.preprocess
    python tools/fuzz_inputs.py metadata -max_total_time=600   # bytes -> metadata.read_data_entry
    python tools/fuzz_inputs.py prepared -max_total_time=600   # bytes -> dataset_info.json or
                                                               # prepare_report.json, opened
    python tools/fuzz_inputs.py history -max_total_time=600    # bytes -> runs.history.read_file
    python tools/fuzz_inputs.py image -runs=300                # the test suite's short run

Every other argument goes to libFuzzer (-runs, -max_total_time, -seed, -jobs, corpus dirs,
-artifact_prefix=DIR/). A seed corpus of real files is generated first (PNGs of every colour
type, 16-bit with sBIT, interlaced, trailing bytes; JPEGs; DICOMs with a window, a VOI LUT,
MONOCHROME1, RLE; both Data_Entry CSV variants, plain and gzipped; a prepared dataset's
dataset_info.json and prepare_report.json, beside shard files of the sizes they declare;
history.csv as training writes it, 0-based, torn, NUL-filled), so mutations start from inputs
that reach deep into the parsers. The `prepared` target writes an input's bytes after the
first into dataset_info.json (first byte even) or prepare_report.json (odd), then opens the
dataset as train does (`source.open_prepared`; bit 1 of the first byte asks for the full
checksum). The documented errors are `ImageError` for images, `MetadataError` for the CSV,
`DamagedDataError` for a prepared dataset and `HistoryError` for history.csv; any other
exception, a run over -timeout seconds or over
-rss_limit_mb is a finding: libFuzzer prints it, saves the input as crash-<sha1> and exits 1;
otherwise it ends with "Done N runs in S second(s)" and exit 0.
"""

import functools
import gzip
import json
import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris  # noqa: E402  (atheris==3.0.0, in the `test` extra)
import numpy as np  # noqa: E402

with atheris.instrument_imports(include=["cxr_tf", "PIL", "pydicom"]):
    import PIL.JpegImagePlugin  # noqa: F401  (instrumented: the plugins parse the headers)
    import PIL.PngImagePlugin  # noqa: F401
    import pydicom

    from cxr_tf.data import dicom, image_header, images, metadata  # noqa: F401
    from cxr_tf.runs import history

# The seeds' builders, imported after the instrumented block: imported before it, they would
# load image_header, PIL and pydicom uninstrumented.
from cxr_tf.testing import image_bytes  # noqa: E402

# Small enough that a mutated header declaring a large image is refused, not decoded for
# seconds: the bound itself is what is fuzzed, not how fast numpy fills memory.
MAX_PIXELS = 1_000_000
_CSV_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
               "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def image_target(data):
    try:
        images.preprocess(data, "fuzz", 16, max_pixels=MAX_PIXELS)
    except image_header.ImageError:
        pass


def make_metadata_target(work_dir):
    plain = os.path.join(work_dir, "Data_Entry_2017.csv")

    def metadata_target(data):
        # The first byte picks plain or gzipped, as prepare finds either on disk.
        path = plain + (".gz" if data[:1] == b"\x1f" else "")
        with open(path, "wb") as f:
            f.write(data)
        try:
            metadata.read_data_entry(path)
        except metadata.MetadataError:
            pass

    return metadata_target


def make_history_target(work_dir):
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # a dropped torn row warns: thousands of lines here
    path = os.path.join(work_dir, "history.csv")

    def history_target(data):
        with open(path, "wb") as f:
            f.write(data)
        try:
            history.read_file(path)
        except history.HistoryError:
            pass

    return history_target


def history_seeds():
    """{name: bytes}: history.csv as training writes it, as 0.2.0 wrote it, and damaged."""
    header = b"epoch,loss,val/auc_mean,val/auc/Hernia,val_loss\r\n"
    rows = b"1,0.61,0.7,nan,0.65\r\n2,0.55,0.72,NA,0.6\r\n"
    return {"history.csv": header + rows, "history_0_based.csv": header + rows.replace(
        b"1,", b"0,", 1).replace(b"2,", b"1,", 1), "torn.csv": header + rows + b"3,0.5",
        "nul.csv": header + rows + b"\0" * 64, "empty.csv": b""}


def image_seeds():
    """{name: bytes}: one small valid file of every kind the decoder handles."""
    from PIL import Image
    from pydicom.dataset import Dataset
    from pydicom.uid import RLELossless

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    gray16 = image_bytes.png(rng.integers(0, 4096, (9, 12), dtype=np.uint16))
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4, 0, 16])
    lut.add_new("LUTData", "US", [0, 100, 200, 4000])
    raw = b"".join(b"\0" + row.tobytes() for row in gray)
    stored = gray.astype(np.uint16)
    dcm = functools.partial(image_bytes.dicom, bits_stored=12)
    return {
        "gray.png": image_bytes.png(gray),
        "gray16_sbit.png": image_bytes.insert_after_ihdr(gray16, b"sBIT", b"\x0c"),
        "rgb.png": image_bytes.png(rgb),
        "rgba.png": image_bytes.png(rng.integers(0, 256, (9, 12, 4), dtype=np.uint8)),
        "gray_alpha.png": image_bytes.png(Image.fromarray(np.dstack([gray, gray]), "LA")),
        "palette.png": image_bytes.png(Image.fromarray(rgb).convert("P")),
        # Interlaced: the bytes need not be a valid Adam7 stream for a seed, only a reachable
        # header.
        "interlaced.png": image_bytes.png_from(9, 12, raw, interlace=1),
        "trailing.png": image_bytes.png(gray) + b"\0" * 16,
        "gray.jpg": image_bytes.jpeg(gray, quality=90),
        "rgb.jpg": image_bytes.jpeg(rgb, quality=90, progressive=True),
        "plain.dcm": dcm(stored * 16),
        "window.dcm": dcm(stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=100,
                         WindowWidth=300, VOILUTFunction="SIGMOID"),
        "lut.dcm": dcm(stored % 4, VOILUTSequence=[lut]),
        "monochrome1.dcm": dcm(stored, "MONOCHROME1"),
        "rle.dcm": dcm(stored, syntax=RLELossless),
    }


def metadata_seeds():
    rows = ["00000001_000.png,Cardiomegaly|Effusion,0,1,57,M,PA,2682,2749,0.143,0.143",
            "00000002_000.png,No Finding,0,2,081Y,F,AP,2500,2048,0.168,0.168"]
    v2020 = "\n".join([_CSV_HEADER, *rows]) + "\n"
    kaggle = "\n".join([_CSV_HEADER + ",", *(row + "," for row in rows)]) + "\n"
    return {"v2020.csv": v2020.encode(), "kaggle.csv": kaggle.encode(),
            "v2020.csv.gz": gzip.compress(v2020.encode(), mtime=0)}


# A prepared dataset as the `prepared` target finds it: per split, records and bytes of its
# examples (the shard files hold random bytes: only their sizes are read without a checksum).
_SPLITS = {"train": (41, 48_995), "validation": (5, 5_975), "test": (14, 16_730)}
_SHARD = "nih_chest_xray14-{}.tfrecord-00000-of-00001"


def make_prepared_target(work_dir):
    """Writes a small prepared dataset (features.json from the builder itself, shards of the
    declared sizes); returns the target and the seeds ({name: first byte + file})."""
    with atheris.instrument_imports(include=["cxr_tf.data.verify", "cxr_tf.data.source"]):
        from cxr_tf.data import source, verify
    from cxr_tf.datasets import nih_chest_xray14

    version_dir = os.path.join(work_dir, "data", "nih_chest_xray14", "32", "1.1.0")
    os.makedirs(version_dir)
    nih_chest_xray14.Builder(config="32", data_dir=os.path.join(work_dir, "data")) \
        .info.write_to_directory(version_dir)
    rng = np.random.default_rng(0)
    info = {"name": "nih_chest_xray14", "fileFormat": "tfrecord", "version": "1.1.0",
            "splits": []}
    shards = {}
    for split, (records, example_bytes) in _SPLITS.items():
        name = _SHARD.format(split)
        size = example_bytes + verify.FRAMING * records
        with open(os.path.join(version_dir, name), "wb") as f:
            f.write(rng.bytes(size))
        info["splits"].append({"name": split, "numBytes": str(example_bytes),
                               "shardLengths": [str(records)],
                               "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-"
                                                   "{SHARD_X_OF_Y}"})
        shards[split] = [{"file": name, "records": records, "bytes": size,
                          "crc32": verify.crc32(os.path.join(version_dir, name))}]
    files = {verify.INFO_FILE: json.dumps(info).encode(),
             verify.REPORT_FILE: json.dumps({"rows": 60, "shards": shards}).encode()}

    def open_with(name, data, checksums):
        for file_name, seed in files.items():
            with open(os.path.join(version_dir, file_name), "wb") as f:
                f.write(data if file_name == name else seed)
        source.open_prepared(os.path.join(work_dir, "data"), verify_data=checksums)

    open_with(verify.INFO_FILE, files[verify.INFO_FILE], True)  # the seeds open cleanly

    def prepared_target(data):
        first = data[0] if data else 0
        name = verify.REPORT_FILE if first % 2 else verify.INFO_FILE
        try:
            open_with(name, data[1:], checksums=bool(first & 2))
        except verify.DamagedDataError:
            pass

    seeds = {f"{kind}_{name}": bytes([first]) + files[name]
             for kind, first in (("sizes", 0), ("checksums", 2))
             for name, first in ((verify.INFO_FILE, first), (verify.REPORT_FILE, first + 1))}
    return prepared_target, seeds


def main(argv):
    warnings.simplefilter("ignore")  # pydicom warns about every invalid value it meets
    targets = {"image": (image_seeds, lambda work_dir: image_target),
               "metadata": (metadata_seeds, make_metadata_target),
               "history": (history_seeds, make_history_target),
               "prepared": None}  # its seeds and target are made together
    if len(argv) < 2 or argv[1] not in targets:
        sys.exit(__doc__)
    target_name, libfuzzer_args = argv[1], argv[2:]
    work_dir = tempfile.mkdtemp(prefix=f"cxr_tf_fuzz_{target_name}_")
    corpus = os.path.join(work_dir, "corpus")
    os.makedirs(corpus)
    if target_name == "prepared":
        target, seeds = make_prepared_target(work_dir)
    else:
        make_seeds, make_target = targets[target_name]
        seeds, target = make_seeds(), make_target(work_dir)
    for name, data in seeds.items():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(data)
    for data in seeds.values():  # a seed that fails outright is a bug in the seeds
        target(data)
    print(f"seed corpus: {len(seeds)} files in {corpus}", flush=True)
    atheris.Setup([argv[0], *libfuzzer_args, corpus], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
