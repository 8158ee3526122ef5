"""history.csv: one row per epoch, appended by training (a resumable CSV logger), cut back
to the epochs the backup holds here (`keep_epochs`: on restart and on an interrupt), and read
here only: by the checkpoint callback on resume, the completion rule of older run dirs and
tools/plot_history.py.

    rows = read_history(model_dir)     # [{"epoch": 1, "loss": 0.61, "val/auc_mean": 0.72, ...}]

Epochs count from 1, as the progress bar ("Epoch 1/3") and the backups (epoch-0001) do. A file
written before that (cxr_tf 0.2.0 and until this release) counts from 0; it is recognised by its
first row and read 1-based.

Rows are appended, not written atomically, so a crash or a power loss can leave the last one
torn, or the file's end filled with NUL bytes (ext4 after a power cut): that tail is dropped with
one warning, as if the epoch had not finished (a resumed run writes the row again). Any other
damage (a row that is not numbers, a missing column) is a HistoryError naming the file, the line
and what to do.
"""

import csv
import io
import math
import os

from absl import logging

from cxr_tf import atomic
from cxr_tf.runs import RunDirError, layout

# Keras's CSVLogger writes "NA" for a column an epoch did not log; empty cells are read the same.
_MISSING = ("", "NA")
# The validation metric the best checkpoint and early stopping follow (training's MONITOR).
MONITOR = "val/auc_mean"


class HistoryError(RunDirError):
    """history.csv is damaged in a way that is not an interrupted append."""


def read_history(model_dir):
    """history.csv's rows, oldest epoch first, as {column: float} with "epoch" an int counted
    from 1; [] when there is no history.csv. A torn or NUL-filled last line is dropped with a
    warning; other damage raises HistoryError."""
    path = layout.history_path(model_dir)
    if not os.path.isfile(path):
        return []
    return read_file(path)


def read_file(path):
    """The rows of the history.csv at `path` (see read_history)."""
    with open(path, "rb") as f:
        data = f.read()
    text, dropped = _whole_lines(data)
    if dropped:
        logging.warning("%s: dropped its last %d bytes (a row cut short by a crash or a power "
                        "loss); that epoch counts as not finished", path, dropped)
    try:
        text = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _damaged(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise _damaged(path, f"not CSV ({e})") from None
    if not lines or not lines[0]:
        return []
    header = lines[0]
    if header[0] != "epoch" or len(set(header)) != len(header):
        raise _damaged(path, f"line 1 is not a history header (epoch, loss, ...): {header[:4]}")
    rows = [_row(path, header, line, values)
            for line, values in enumerate(lines[1:], start=2) if values]
    if rows and rows[0]["epoch"] == 0:  # written 0-based, before epochs counted from 1
        for row in rows:
            row["epoch"] += 1
    return rows


def keep_epochs(path, epochs):
    """Rewrites the history.csv at `path` (if any) with only its rows of epochs 1..`epochs`:
    the epochs the backup holds. A row written before its epoch was backed up (a crash or an
    interrupt between the two) goes, and the resumed run writes it again."""
    if not os.path.exists(path):
        return
    rows = [row for row in read_file(path) if row["epoch"] <= epochs]
    text = io.StringIO()
    if rows:  # none: an empty file, for CSVLogger to write its own header
        writer = csv.writer(text, lineterminator="\r\n")  # as CSVLogger's rows end
        writer.writerow(rows[0])
        writer.writerows([_text(value) for value in row.values()] for row in rows)
    atomic.write_file(path, text.getvalue(), newline="")


def _text(value):
    """A history value as CSVLogger writes it: epochs as integers, floats in full."""
    return str(value) if isinstance(value, int) or not math.isfinite(value) else repr(value)


def _whole_lines(data):
    """(the bytes up to the last complete line, how many bytes after it were dropped): the
    last line goes when it holds NUL bytes or lacks its newline (CSVLogger ends every row with
    one). NUL bytes before complete rows are not a torn tail: they stay, for _row to refuse."""
    end = len(data)
    nul = data.find(b"\0")
    if nul >= 0:
        start = data.rfind(b"\n", 0, nul) + 1  # the line holding the first NUL byte
        if data[start:].replace(b"\0", b"").rstrip(b"\r\n").count(b"\n") == 0:
            end = start
    cut = data.rfind(b"\n", 0, end) + 1
    if data[cut:end].strip():
        end = cut
    return data[:end], len(data) - end


def _row(path, header, line, values):
    if len(values) != len(header):
        raise _damaged(path, f"line {line} has {len(values)} fields, the header {len(header)}")
    row = {}
    for name, value in zip(header, values):
        try:
            row[name] = math.nan if value.strip() in _MISSING else float(value)
        except ValueError:
            raise _damaged(path, f"line {line}: {name} is {value[:40]!r}, not a number") from None
    epoch = row["epoch"]
    if not (math.isfinite(epoch) and epoch == int(epoch) and epoch >= 0):
        raise _damaged(path, f"line {line}: epoch is {values[0]!r}, not an epoch number")
    row["epoch"] = int(epoch)
    return row


def _damaged(path, what):
    return HistoryError(f"{path}: {what}. It is training's per-epoch log: restore it from a "
                        "copy, or delete the damaged line (that epoch's figures are lost; the "
                        "run still resumes from backup/)")
