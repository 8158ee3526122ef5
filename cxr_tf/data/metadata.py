"""NIH ChestX-ray14 metadata: Data_Entry CSV, official split lists, patient-wise validation split.

`build_index(data_dir)` turns a Kaggle-layout folder into one DataFrame of kept rows plus a
count of every skipped row by reason, so that `rows == kept + skipped` always holds and no row
disappears silently. It reads text only: images are decoded later (cxr_tf.data.images), which adds
its own reasons (`undecodable`, `too_large`, `dropped_rgba`) to the same counters.

The Data_Entry CSV comes in two published variants; both are read by header name:
  * v2020 (`Data_Entry_2017_v2020.csv`): the unquoted headers `OriginalImage[Width,Height]` and
    `OriginalImagePixelSpacing[x,y]` are split by their comma, giving 11 columns.
  * 2017 Kaggle original (`Data_Entry_2017.csv`): the same plus a trailing comma on every line
    (an empty `Unnamed: 11` column), and a few implausible ages above 120.
"""

import collections
import dataclasses
import hashlib
import os
import re
import zlib

import numpy as np
import pandas as pd

from cxr_tf import errors
from cxr_tf import labels as labels_lib

IMAGE_INDEX_RE = re.compile(r"^\d{8}_\d{3}\.png$")
SKIP_REASONS = ("invalid_image_index", "unknown_label", "duplicate_row", "missing_file",
                "not_in_split", "undecodable", "too_large", "dropped_rgba")
SPLITS = ("train", "validation", "test")
DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
MAX_AGE = 120
MAX_EXAMPLES = 20

# CSV header -> our column. Width/height headers are what pandas makes of the unquoted
# "OriginalImage[Width,Height]" header in both variants.
_COLUMNS = {
    "Image Index": "image_id",
    "Finding Labels": "finding_labels",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
    "OriginalImage[Width": "width",
    "Height]": "height",
}
_INT_COLUMNS = ("follow_up", "patient_id", "width", "height")
# Ages are plain years ("58"); DICOM age strings with a year unit ("058Y", as in Kaggle's
# sample_labels.csv) mean the same. Anything else (months, weeks, text) is unknown, not guessed.
_AGE_RE = r"^\s*(\d{1,3})Y?\s*$"


class MetadataError(errors.UserError, ValueError):
    """Bad metadata. The message names the file, the 1-based line (when known) and the reason."""

    def __init__(self, reason, path=None, line=None):
        self.reason, self.path, self.line = reason, path, line
        where = f"{path}, line {line}" if path is not None and line is not None else path
        super().__init__(f"{where}: {reason}" if where is not None else reason)

    def __reduce__(self):  # keep it picklable across worker processes
        return type(self), (self.reason, self.path, self.line)


def _line(row):
    """1-based file line of 0-based data row `row` (line 1 is the header)."""
    return int(row) + 2


def find_data_entry(data_dir):
    """Path of the Data_Entry CSV in `data_dir`, preferring the corrected v2020 file."""
    candidates = [os.path.join(data_dir, name + ext)
                  for name in DATA_ENTRY_NAMES for ext in ("", ".gz")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise MetadataError("no Data_Entry CSV found; looked for "
                        + ", ".join(os.path.basename(p) for p in candidates), path=data_dir)


def source_fingerprint(data_dir):
    """{file name: sha256} of the Data_Entry CSV and the two official lists of `data_dir`: the
    metadata a prepared dataset was built from (images are not hashed: 112,120 files)."""
    paths = (find_data_entry(data_dir), _list_path(None, data_dir, TRAIN_VAL_LIST),
             _list_path(None, data_dir, TEST_LIST))
    fingerprint = {}
    for path in paths:
        with open(path, "rb") as f:
            fingerprint[os.path.basename(path)] = hashlib.file_digest(f, "sha256").hexdigest()
    return fingerprint


def read_data_entry(path):
    """Reads a Data_Entry CSV (.csv or .csv.gz, either variant) into typed columns.

    Columns: image_id, finding_labels, sex, view (str); follow_up, patient_id, width, height,
    age (int; age -1 = unknown, also for an implausible age outside 0..120). The index is the
    0-based data row, so row i sits on line i + 2 of the file.

    Raises MetadataError for a missing header, or a non-integer Patient ID, Follow-up # or
    size in a row whose Image Index is valid (rows with an invalid index are skipped later, so
    their other fields don't matter).
    """
    try:
        # Everything as text so that one bad value never breaks the read; index_col=False so a
        # trailing comma never turns the first column into the index.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                          index_col=False, compression="infer")
    except (EOFError, zlib.error) as e:  # gzip's errors name no file
        raise MetadataError(f"cannot read CSV: truncated or corrupt gzip data ({e})",
                            path=path) from e
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise MetadataError(f"cannot read CSV: {e}", path=path) from e
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [h for h in _COLUMNS if h not in raw.columns]
    if missing:
        raise MetadataError(f"missing column(s) {missing}; found {list(raw.columns)}",
                            path=path, line=1)
    frame = raw[list(_COLUMNS)].rename(columns=_COLUMNS)
    frame = frame.apply(lambda column: column.str.strip())
    frame = frame.reset_index(drop=True)

    valid = frame["image_id"].str.fullmatch(IMAGE_INDEX_RE.pattern)
    for column in _INT_COLUMNS:
        text = frame[column]
        ok = text.str.fullmatch(r"\d{1,18}")
        bad = valid & ~ok
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            header = next(h for h, c in _COLUMNS.items() if c == column)
            raise MetadataError(f"{header} {text.iloc[row]!r} is not a non-negative integer "
                                f"({int(bad.sum())} such row(s))", path=path, line=_line(row))
        frame[column] = text.where(ok, "-1").astype(np.int64)

    years = frame["age"].str.extract(_AGE_RE, expand=False)
    age = pd.to_numeric(years, errors="coerce")
    frame["age"] = age.where((age >= 0) & (age <= MAX_AGE), -1).astype(np.int64)
    return frame


def read_split_list(path):
    """Image ids of an official split list (one per line; blank lines ignored)."""
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise MetadataError(f"cannot read split list: {e.strerror}", path=path) from e


def split_patients(patient_ids, val_fraction, seed):
    """The validation patients: round(val_fraction * n) of the n distinct ids (at least one when
    val_fraction > 0 and n > 1), chosen by `seed` alone, independent of the input order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    patients = np.unique(np.asarray(list(patient_ids)))
    count = int(round(val_fraction * len(patients)))
    if val_fraction > 0 and len(patients) > 1:
        count = min(max(count, 1), len(patients) - 1)
    chosen = np.random.default_rng(seed).permutation(patients)[:count]
    return set(chosen.tolist())


def find_image_files(data_dir):
    """image_id -> path for every `images_*/images/*.png` and `images/*.png` in `data_dir`.

    Only names matching IMAGE_INDEX_RE are listed. Folders are visited in sorted order and the
    first file of a name wins, so the result does not depend on the file system's order.
    """
    folders = sorted(
        os.path.join(data_dir, entry.name, "images")
        for entry in os.scandir(data_dir)
        if entry.is_dir() and entry.name.startswith("images_"))
    folders.append(os.path.join(data_dir, "images"))
    files = {}
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if IMAGE_INDEX_RE.fullmatch(entry.name) and entry.name not in files and entry.is_file():
                files[entry.name] = entry.path
    return files


@dataclasses.dataclass
class Index:
    """The kept rows of a Data_Entry CSV with their split, and the account of the rest."""

    frame: pd.DataFrame
    rows: int
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped_examples: dict = dataclasses.field(default_factory=dict)
    converted: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def label_matrix(self, split=None):
        """(n, 14) uint8 labels in LABELS order, for one split or all kept rows."""
        frame = self.frame if split is None else self.frame[self.frame["split"] == split]
        return frame[list(labels_lib.LABELS)].to_numpy(dtype=np.uint8)


def _parse_labels(texts, candidates, path, strict):
    """Multi-hot labels of the candidate rows, and per row the unknown label name (or None)."""
    codes, uniques = pd.factorize(texts[candidates])
    # ~800 distinct label strings in 112k rows: parse each string once, then index.
    table = np.zeros((len(uniques), labels_lib.NUM_CLASSES), dtype=np.uint8)
    bad = np.full(len(uniques), None, dtype=object)
    errors = {}
    for code, text in enumerate(uniques):
        try:
            table[code] = labels_lib.to_multi_hot(text)
        except labels_lib.UnknownLabelError as e:
            bad[code], errors[code] = e.label, e
    rows = np.flatnonzero(candidates)
    if strict and errors:
        first = int(np.flatnonzero(np.isin(codes, list(errors)))[0])
        raise MetadataError(str(errors[codes[first]]), path=path, line=_line(rows[first]))
    matrix = np.zeros((len(texts), labels_lib.NUM_CLASSES), dtype=np.uint8)
    matrix[rows] = table[codes]
    unknown = np.full(len(texts), None, dtype=object)
    unknown[rows] = bad[codes]
    return matrix, unknown


def _list_path(explicit, data_dir, name):
    path = explicit if explicit is not None else os.path.join(data_dir, name)
    if not os.path.isfile(path):
        raise MetadataError(f"official split list {name} not found", path=path)
    return path


def build_index(data_dir, *, val_fraction=0.1, seed=0, strict=False, require_files=True,
                data_entry=None, train_val_list=None, test_list=None):
    """Reads a Kaggle-layout folder into an Index of kept rows with train/validation/test split.

    Each row that is not kept is counted under the first reason that applies, in this order:
    invalid_image_index (never used as a path), unknown_label (MetadataError if strict),
    duplicate_row (an image id seen on an earlier line), not_in_split (in neither official
    list), missing_file (only if require_files). Validation patients are drawn from the
    train_val rows by `split_patients(..., val_fraction, seed)`.
    """
    path = data_entry if data_entry is not None else find_data_entry(data_dir)
    frame = read_data_entry(path)
    (tv_path, tv_ids), (test_path, test_ids) = _split_lists(data_dir, train_val_list, test_list)
    image_id = frame["image_id"]
    reason = np.full(len(frame), "", dtype=object)
    examples = collections.defaultdict(list)

    def skip(mask, name, describe=lambda row: ""):
        new = mask & (reason == "")
        reason[new] = name
        for row in np.flatnonzero(new)[:MAX_EXAMPLES - len(examples[name])]:
            examples[name].append(f"line {_line(row)}: {image_id.iat[row]!r}{describe(row)}")

    valid = image_id.str.fullmatch(IMAGE_INDEX_RE.pattern).to_numpy()
    skip(~valid, "invalid_image_index")
    matrix, unknown = _parse_labels(frame["finding_labels"], valid, path, strict)
    skip(pd.notna(unknown), "unknown_label",
         lambda row: f": unknown label {unknown[row]!r}")
    # Only valid ids can collide; the first line with an id wins even if it is skipped itself,
    # so a later copy never stands in for a rejected row.
    skip(valid & image_id.duplicated(keep="first").to_numpy(), "duplicate_row")
    in_tv = image_id.isin(tv_ids).to_numpy()
    in_test = image_id.isin(test_ids).to_numpy()
    skip(~(in_tv | in_test), "not_in_split")
    paths = None
    if require_files:
        files = find_image_files(data_dir)
        paths = image_id.map(files)
        skip(paths.isna().to_numpy(), "missing_file")

    # Validation patients come from every listed train_val row, not just the kept ones, so a
    # missing or undecodable file never moves a patient between splits.
    val_patients = split_patients(frame["patient_id"][valid & in_tv], val_fraction, seed)
    split = np.where(in_test, "test",
                     np.where(frame["patient_id"].isin(val_patients), "validation", "train"))

    keep = reason == ""
    kept = _kept_rows(frame, keep, split, paths, matrix)
    try:
        check_no_patient_overlap(kept)
    except MetadataError as e:
        raise MetadataError(e.reason, path=f"{tv_path} / {test_path}") from None

    skipped = collections.Counter(r for r in reason if r)
    converted = collections.Counter({"age_unknown": int((kept["age"] == -1).sum())})
    return Index(frame=kept, rows=len(frame), skipped=skipped,
                 skipped_examples=dict(examples), converted=converted)


def _split_lists(data_dir, train_val_list, test_list):
    """((path, ids) of train_val_list.txt, (path, ids) of test_list.txt); MetadataError if a
    list is missing or an image id is in both."""
    tv_path = _list_path(train_val_list, data_dir, TRAIN_VAL_LIST)
    test_path = _list_path(test_list, data_dir, TEST_LIST)
    tv_ids, test_ids = set(read_split_list(tv_path)), set(read_split_list(test_path))
    both = sorted(tv_ids & test_ids)
    if both:
        raise MetadataError(f"{len(both)} image id(s) also in {tv_path}: {both[:5]}",
                            path=test_path)
    return (tv_path, tv_ids), (test_path, test_ids)


def _kept_rows(frame, keep, split, paths, matrix):
    """The kept rows' columns, their split, file path (None without files) and labels."""
    kept = frame.loc[keep, ["image_id", "patient_id", "follow_up", "age", "sex", "view",
                            "finding_labels", "width", "height"]].reset_index(drop=True)
    kept["split"] = split[keep]
    kept["path"] = paths[keep].to_numpy() if paths is not None else None
    return pd.concat([kept, pd.DataFrame(matrix[keep], columns=list(labels_lib.LABELS))],
                     axis=1)


def check_no_patient_overlap(frame):
    """Raises MetadataError if any patient_id appears in more than one split."""
    patients = frame.groupby("split")["patient_id"].unique()
    problems = []
    names = sorted(patients.index)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(patients[a].tolist()) & set(patients[b].tolist()))
            if shared:
                problems.append(f"{len(shared)} patient(s) in both {a} and {b}: {shared[:10]}")
    if problems:
        raise MetadataError("; ".join(problems))
