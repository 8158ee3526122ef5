"""Is a prepared dataset whole? Checked when it is opened, before a step runs.

    verify.check(version_dir)                  # milliseconds: sizes and record counts
    verify.check(version_dir, checksums=True)  # also reads every byte (verify_data)
    report["shards"] = verify.describe(version_dir)   # what prepare records

Two accounts of a prepared dataset are compared with its files: dataset_info.json (TFDS's,
which decides what TFDS reads: each split's shard files, the records in each, the bytes of
its examples) and the `shards` prepare_report.json records once the dataset is written (each
shard's file, records, byte size and CRC-32). The rules, in the order they are checked:

1. dataset_info.json is a TFDS dataset description naming its shards inside the dataset's
   folder, and prepare_report.json, where present, is a JSON object with well-formed shards;
2. every shard dataset_info.json lists exists;
3. each shard is the size prepare recorded, and dataset_info.json declares the records
   prepare wrote into it, and the two list the same shards;
4. each split's shards hold exactly its examples' bytes plus TFRecord's 16 bytes of framing
   per record, as dataset_info.json declares them (this needs no report, so it also holds for
   a dataset prepared before shards were recorded);
5. with `checksums`, each shard's CRC-32 is the one prepare recorded (or, with none recorded,
   every record reads back with its own CRCs intact and the counts are as declared).

An emptied, cut or deleted shard fails rule 2 or 3 (4 without a report), a dataset_info.json
claiming more records fails 3 and 4. A shard whose size is right but whose bytes changed
passes 1-4; reading it fails TFRecord's per-record CRC, which `locate` then names (and rule 5
finds it before a step runs). CRC-32 rather than sha256: the checksum guards against damage
(a failed copy, a bad disk), not an attacker, who could rewrite the report beside the shards
just as well, so a cryptographic hash buys nothing; zlib's CRC-32 is in the standard library
and at least as fast (0.4-1.1 GB/s against 0.4-0.5 GB/s for sha256 on the busy 2-core
development VM, docs/RELIABILITY.md), and any burst of up to 32 flipped bits changes it.

Every failure is one DamagedDataError naming the file, what is wrong and the remedy.
"""

import dataclasses
import json
import logging
import os
import re
import zlib

from etils import epath
from google.protobuf import json_format
from tensorflow_datasets.core import dataset_info, file_adapters, naming

from cxr_tf import errors

INFO_FILE = "dataset_info.json"
REPORT_FILE = "prepare_report.json"
# A TFRecord record is its data framed by a length (8 bytes) and two CRCs (4 bytes each).
FRAMING = 16
REMEDY = "rebuild it with prepare --overwrite (or tfds build --overwrite)"
_CHUNK = 1 << 22


class DamagedDataError(errors.UserError, ValueError):
    """A prepared dataset whose files are not what prepare wrote.

    Attributes: path (the file at fault), reason (what is wrong with it)."""

    def __init__(self, path, reason):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}; the prepared dataset is damaged: {REMEDY}")

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.path, self.reason)


@dataclasses.dataclass(frozen=True)
class Shard:
    """One TFRecord file of a split: what dataset_info.json declares (split, path, records),
    or what prepare recorded (also bytes and crc32, 8 hex digits)."""

    split: str
    path: str
    records: int
    bytes: int | None = None
    crc32: str | None = None


@dataclasses.dataclass(frozen=True)
class Declared:
    """What dataset_info.json declares: its shards in split order and, per split, the bytes
    of its serialized examples (TFDS's numBytes) if the files are TFRecords, else None."""

    shards: tuple
    example_bytes: dict


def declared(version_dir):
    """Reads dataset_info.json (rule 1). Raises DamagedDataError."""
    path = os.path.join(version_dir, INFO_FILE)
    try:
        proto = dataset_info.read_from_json(path)
    except dataset_info.DatasetInfoFileError as e:
        raise DamagedDataError(path, f"cannot be read ({e.__cause__ or e})") from e
    except (ValueError, RecursionError, json_format.Error) as e:
        raise DamagedDataError(path, f"not a TFDS dataset description ({first_line(e)})") \
            from e
    if not proto.name or not proto.splits:
        raise DamagedDataError(path, "declares no dataset name or no split")
    try:
        file_format = file_adapters.FileFormat.from_value(proto.file_format or "tfrecord")
    except ValueError as e:
        raise DamagedDataError(path, f"unknown file format {proto.file_format!r}") from e
    shards, example_bytes = [], {}
    for split in proto.splits:
        lengths = list(split.shard_lengths)
        if not split.name or any(n < 0 for n in lengths) or split.num_bytes < 0:
            raise DamagedDataError(path, f"split {split.name!r}: a name, and record counts "
                                         "and bytes of at least 0, are required")
        files = _shard_paths(path, version_dir, proto.name, split, file_format, len(lengths))
        shards += [Shard(split.name, f, n) for f, n in zip(files, lengths)]
        tfrecord = file_format == file_adapters.FileFormat.TFRECORD
        example_bytes[split.name] = split.num_bytes if tfrecord else None
    return Declared(tuple(shards), example_bytes)


def _shard_paths(info_path, version_dir, name, split, file_format, num_shards):
    """TFDS's own names for a split's shard files; each must lie in version_dir."""
    try:
        template = naming.ShardedFileTemplate(
            data_dir=epath.Path(version_dir), template=split.filepath_template or None,
            dataset_name=name, split=split.name, filetype_suffix=file_format.file_suffix)
        paths = [os.fspath(p) for p in template.sharded_filepaths(num_shards)]
    except (ValueError, KeyError, IndexError) as e:
        raise DamagedDataError(info_path, f"split {split.name!r}: unusable file name template "
                                          f"({first_line(e)})") from e
    for path in paths:
        if os.path.dirname(path) != os.fspath(version_dir):
            raise DamagedDataError(info_path, f"split {split.name!r}: shard {path!r} lies "
                                              "outside the dataset's folder")
    return paths


def recorded(version_dir):
    """The shards prepare recorded in prepare_report.json ({path: Shard}), or None when there
    is no report or it records none (prepared before shards were recorded). Rule 1."""
    path = os.path.join(version_dir, REPORT_FILE)
    try:
        with open(path, "rb") as f:
            report = json.loads(f.read())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DamagedDataError(path, f"cannot be read ({e.strerror or e})") from e
    except (ValueError, RecursionError) as e:
        raise DamagedDataError(path, f"not JSON ({first_line(e)})") from e
    if not isinstance(report, dict):
        raise DamagedDataError(path, "not a JSON object")
    if "shards" not in report:
        return None
    return _parse_shards(path, version_dir, report["shards"])


def _parse_shards(path, version_dir, shards):
    if not isinstance(shards, dict):
        raise DamagedDataError(path, "shards: not an object of splits")
    found = {}
    for split, entries in shards.items():
        if not isinstance(entries, list):
            raise DamagedDataError(path, f"shards: {split!r} is not a list")
        for entry in entries:
            shard = _parse_shard(split, entry, version_dir)
            if shard is None:
                raise DamagedDataError(path, f"shards: {split!r}: malformed entry "
                                             f"{json.dumps(entry)[:200]}")
            found[shard.path] = shard
    return found


def _parse_shard(split, entry, version_dir):
    """A Shard, or None when `entry` is not {file: a plain name, records and bytes: counts,
    crc32: 8 hex digits}."""
    if not isinstance(entry, dict):
        return None
    name, crc = entry.get("file"), entry.get("crc32")
    counts = [entry.get("records"), entry.get("bytes")]
    if not (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\0" not in name):
        return None
    if not all(type(n) is int and n >= 0 for n in counts):
        return None
    if not (isinstance(crc, str) and re.fullmatch(r"[0-9a-f]{8}", crc)):
        return None
    return Shard(split, os.path.join(version_dir, name), counts[0], counts[1], crc)


def describe(version_dir):
    """{split: [{file, records, bytes, crc32}]} of a dataset just written: what prepare
    records in prepare_report.json (reads every shard once)."""
    out = {}
    for shard in declared(version_dir).shards:
        out.setdefault(shard.split, []).append({
            "file": os.path.basename(shard.path), "records": shard.records,
            "bytes": os.path.getsize(shard.path), "crc32": crc32(shard.path)})
    return out


def crc32(path):
    """zlib's CRC-32 of a file's bytes, as 8 hex digits."""
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


def check(version_dir, *, checksums=False):
    """Raises DamagedDataError unless the prepared dataset in version_dir is whole (rules 1-4;
    rule 5 too with `checksums`). Returns the Declared shards."""
    version_dir = os.fspath(version_dir)
    found = declared(version_dir)
    report = recorded(version_dir)
    sizes = {}
    for shard in found.shards:
        try:
            sizes[shard.path] = os.path.getsize(shard.path)
        except FileNotFoundError:
            raise DamagedDataError(shard.path, f"missing ({_describe(shard, found)})") from None
    if report is not None:
        _check_against_report(version_dir, found, report, sizes)
    _check_framing(version_dir, found, sizes)
    if checksums:
        _check_contents(found, report)
    return found


def _describe(shard, found):
    siblings = [s.path for s in found.shards if s.split == shard.split]
    return (f"{shard.split} shard {siblings.index(shard.path) + 1} of {len(siblings)}, "
            f"{shard.records:,} records")


def _check_against_report(version_dir, found, report, sizes):
    info = os.path.join(version_dir, INFO_FILE)
    for shard in found.shards:
        wrote = report.get(shard.path)
        if wrote is None:
            raise DamagedDataError(info, f"lists {os.path.basename(shard.path)}, which prepare "
                                         "did not write")
        if sizes[shard.path] != wrote.bytes:
            raise DamagedDataError(shard.path, f"{sizes[shard.path]:,} bytes, prepare wrote "
                                               f"{wrote.bytes:,} ({_describe(shard, found)})")
        if shard.records != wrote.records:
            raise DamagedDataError(info, f"declares {shard.records:,} records in "
                                         f"{os.path.basename(shard.path)}, prepare wrote "
                                         f"{wrote.records:,}")
    missing = sorted(set(report) - {shard.path for shard in found.shards})
    if missing:
        wrote = report[missing[0]]
        raise DamagedDataError(info, f"does not list {os.path.basename(wrote.path)}, which "
                                     f"prepare wrote ({wrote.split}, {wrote.records:,} records)")


def _check_framing(version_dir, found, sizes):
    for split, example_bytes in found.example_bytes.items():
        shards = [s for s in found.shards if s.split == split]
        if example_bytes is None or not shards:
            continue
        held = sum(sizes[s.path] for s in shards)
        records = sum(s.records for s in shards)
        expected = example_bytes + FRAMING * records
        if held != expected:
            where = shards[0].path if len(shards) == 1 else os.path.join(version_dir, INFO_FILE)
            raise DamagedDataError(where, f"{split}: the shards hold {held:,} bytes, "
                                          f"{INFO_FILE} declares {records:,} records in "
                                          f"{expected:,}")


def _check_contents(found, report):
    for shard in found.shards:
        wrote = (report or {}).get(shard.path)
        if wrote is not None:
            value = crc32(shard.path)
            if value != wrote.crc32:
                raise DamagedDataError(shard.path, f"CRC-32 {value}, prepare recorded "
                                                   f"{wrote.crc32}: its bytes changed")
        else:  # prepared before checksums were recorded: read it record by record
            problem = scan(shard)
            if problem is not None:
                raise problem


def scan(shard):
    """Reads every record of a shard (TFRecord checks each one's CRCs); a DamagedDataError
    if one is corrupt or truncated or the count differs from the declared one, else None."""
    import tensorflow as tf  # only here: the checks above need no TensorFlow

    try:
        count = int(tf.data.TFRecordDataset(shard.path).reduce(
            tf.constant(0, tf.int64), lambda n, _: n + 1))
    except tf.errors.DataLossError as e:
        return DamagedDataError(shard.path, record_error(e))
    if count != shard.records:
        return DamagedDataError(shard.path, f"holds {count:,} records, {INFO_FILE} declares "
                                            f"{shard.records:,}")
    return None


def record_error(error):
    """`corrupted record at 19388` out of a DataLossError's message (which names no file)."""
    text = getattr(error, "message", None) or str(error)
    match = re.search(r"(?:corrupted|truncated) record at \d+", text)
    return match.group(0) if match else first_line(text)


def locate(version_dir):
    """The DamagedDataError that explains a read failing mid-run (a DataLossError, a split
    ending before its declared count), naming the shard; None if every shard reads whole.
    Sizes first (a file may have changed since the dataset was opened), then every record."""
    try:
        found = check(version_dir)
    except DamagedDataError as e:
        return e
    # Reading every record takes a while on a large dataset: say why nothing happens.
    logging.warning("%s: reading failed; reading every shard to find the damaged one",
                    version_dir)
    for shard in found.shards:
        problem = scan(shard)
        if problem is not None:
            return problem
    return None


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
