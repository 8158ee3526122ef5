"""Google's radiologist-adjudicated labels for NIH images (Majkowska et al., Radiology 2020),
read into one table: the input of the report section (`expert_labels`).

Two file shapes are read, by header name (docs/DATA.md):
  * Google's `four_findings_expert_labels/{validation,test}_labels.csv`: NIH's metadata columns
    (`Image Index`, `Patient ID`, ...) plus the four findings; the split is in the file name.
  * torchxrayvision's `google2019_nih-chest-xray-labels.csv.gz`: both files in one, with a
    `Set Id` column (`val`, `test`).
Plain or gzipped; a file that is empty or not UTF-8 text is one error naming it.
"""

import os

import numpy as np
import pandas as pd

from cxr_tf.data import metadata

FINDINGS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
_SPLITS = {"val": "validation", "validation": "validation", "test": "test"}
_VALUES = {"YES": 1, "NO": 0}


def read(path, split=None):
    """The adjudicated labels of `path` (either shape, .csv or .csv.gz) as a DataFrame.

    Columns: image_id, patient_id, split ("validation" or "test"), and the four FINDINGS as
    0/1 ints. The split comes from `Set Id`, else from `split`, else from the file name
    (`validation_labels.csv`, `test_labels.csv`). Google leaves all four findings empty for an
    image it did not adjudicate: such rows are dropped (`frame.attrs["not_adjudicated"]`);
    `frame.attrs["rows_by_set"]` counts the file's own rows per set, dropped ones included.
    Raises metadata.MetadataError naming the file, line and column of a bad value (or saying
    the file is not a CSV table).
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except UnicodeDecodeError:
        byte, line = _first_bad_byte(path)
        raise metadata.MetadataError(f"not UTF-8 text (byte 0x{byte:02x}); save it as UTF-8",
                                     path, line) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise metadata.MetadataError(f"not a CSV table ({str(e).strip()})", path) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("Image Index", "Patient ID", *FINDINGS) if c not in frame.columns]
    if missing:
        raise metadata.MetadataError(
            f"missing column(s) {missing}; expected Google's four-findings header "
            f"(Image Index, Patient ID, ..., {', '.join(FINDINGS)}[, Set Id])", path)
    findings = frame[list(FINDINGS)].apply(lambda column: column.str.strip())
    unlabelled = (findings == "").all(axis=1)
    out = pd.DataFrame({
        "image_id": frame["Image Index"].str.strip(),
        "patient_id": _patient_ids(frame["Patient ID"], path),
        "split": _splits(frame, path, split),
    })
    for name in FINDINGS:
        out[name] = _yes_no(findings[name], unlabelled, path, name)
    _check_image_ids(out, path)  # before dropping rows, so errors give the file's line
    rows_by_set = {k: int(v) for k, v in out["split"].value_counts().sort_index().items()}
    out = out[~unlabelled.to_numpy()].reset_index(drop=True)
    out.attrs["not_adjudicated"] = int(unlabelled.sum())
    out.attrs["rows_by_set"] = rows_by_set
    return out


def _bad(path, rows, column, reason):
    row = int(rows[0])
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    return metadata.MetadataError(f"column '{column}': {reason}{more}", path, row + 2)


def _yes_no(values, unlabelled, path, column):
    codes = values.map(_VALUES)
    bad = np.flatnonzero(codes.isna().to_numpy() & ~unlabelled.to_numpy())
    if bad.size:
        value = values.iloc[bad[0]]
        hint = ("; HEDGE is a single reader's answer (individual_readers.csv): use the "
                "adjudicated validation_labels.csv or test_labels.csv"
                if value.upper() == "HEDGE" else "")
        raise _bad(path, bad, column, f"{value!r} is not YES or NO{hint}")
    return codes.fillna(-1).astype(np.int8)


def _patient_ids(values, path):
    ids = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = np.flatnonzero(ids.isna().to_numpy() | (ids % 1 != 0).to_numpy())
    if bad.size:
        raise _bad(path, bad, "Patient ID", f"{values.iloc[bad[0]]!r} is not a patient number")
    return ids.astype(np.int64)


def _splits(frame, path, split):
    if "Set Id" in frame.columns:
        values = frame["Set Id"].str.strip()
        bad = np.flatnonzero(~values.isin(list(_SPLITS)).to_numpy())
        if bad.size:
            raise _bad(path, bad, "Set Id", f"{values.iloc[bad[0]]!r} is not val or test")
        return values.map(_SPLITS)
    if split is None:
        name = os.path.basename(path).lower()
        split = next((s for s in ("validation", "test") if s in name), None)
    if split not in ("validation", "test"):
        raise metadata.MetadataError(
            "no Set Id column, and the file name says neither validation nor test: keep "
            "Google's name (validation_labels.csv, test_labels.csv) or pass split=", path)
    return pd.Series(split, index=frame.index)


def _check_image_ids(frame, path):
    bad = np.flatnonzero(~frame["image_id"].str.match(metadata.IMAGE_INDEX_RE).to_numpy())
    if bad.size:
        raise _bad(path, bad, "Image Index",
                   f"{frame['image_id'].iloc[bad[0]]!r} is not an NIH image name")
    first = frame.drop_duplicates("image_id")
    if len(first) != len(frame):
        repeated = frame["image_id"][frame["image_id"].duplicated()].iloc[0]
        raise metadata.MetadataError(f"image {repeated} is listed more than once", path)


def _first_bad_byte(path):
    """(the first byte that is not UTF-8, its 1-based line) of a (gzipped) text file: pandas's
    message gives a position within one of its read buffers only."""
    import gzip

    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data[e.start], data.count(b"\n", 0, e.start) + 1
    return 0, None
