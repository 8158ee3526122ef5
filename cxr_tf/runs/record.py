"""config.json: the run record, one typed and versioned object read and written here only.

    record = read(model_dir)
    record.config.image_size          # the RunConfig as given (defaults from RunConfig)
    record.resolved.data_dir          # what the run resolved: data, steps, replicas, dataset
    record.environment.package_versions

The file stays a flat JSON object with every key cxr_tf 0.2.0 wrote, because users' scripts
read it: one key per RunConfig field (where `data_dir`, `model_dir` and `steps_per_epoch`
hold the values the run resolved them to), the other resolved values (`label_names`,
`num_outputs`, `num_replicas_in_sync`, `num_workers`, `dtype_policy`, `train_examples`,
`validation_examples`, `pos_weight_values`, `dataset`) and the environment
(`package_versions`, `command_line`, `argv`). Version 2 adds `"record_version": 2` and
`"given"`: only the fields whose value as given differs from the flat one (e.g.
`{"data_dir": null, "steps_per_epoch": null}` for a synthetic run), so the config as given is
the flat fields overlaid with `given`. Version 3 adds `"status"` (`Status`): whether the run is
running, complete or stopped and why, rewritten (`write_status`) whenever that changes. A
record without it (versions 1 and 2) is judged by `cxr_tf.runs.status` from its history.

`read` also loads the two shapes 0.2.0 wrote (version 1): with a `"flags"` copy of the config
as given, and the older one without it, where the given `data_dir` and `steps_per_epoch` are
unknown (`RunRecord.recorded` leaves them out, so a rerun is not refused over them).
"""

import dataclasses
import json
import os

from cxr_tf import atomic, errors
from cxr_tf.runs import RunDirError, layout
from cxr_tf.runs.config import FIELDS, RunConfig

RECORD_VERSION = 3
# RunConfig fields whose flat value in config.json is the one the run resolved.
RESOLVED_FIELDS = ("data_dir", "model_dir", "steps_per_epoch")
# The oldest shape (no "flags") wrote these resolved only: their given values are lost.
_UNKNOWN_IN_OLDEST = ("data_dir", "steps_per_epoch")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Which data a run trained on.

    dir: the prepared version dir (`.../nih_chest_xray14/<config>/<version>`) or the raw
        Kaggle folder. prepared: which of the two. source: the fingerprint (sha256 per file)
        of the Kaggle CSV and split lists it came from (prepare_report.json's `source`, or
        computed for a raw folder); None for a dataset prepared before fingerprints existed.
    """

    dir: str
    prepared: bool
    source: dict | None = None


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What the run resolved its config to. A field an older record lacks is None."""

    data_dir: str | None = None
    model_dir: str | None = None
    steps_per_epoch: int | None = None
    label_names: tuple | None = None
    num_outputs: int | None = None
    num_replicas_in_sync: int | None = None
    num_workers: int | None = None
    dtype_policy: str | None = None
    train_examples: int | None = None
    validation_examples: int | None = None
    pos_weight_values: tuple | None = None
    dataset: Dataset | None = None


@dataclasses.dataclass(frozen=True)
class Environment:
    """Where the run ran: package versions and the command line that started it."""

    package_versions: dict | None = None
    command_line: str | None = None
    argv: tuple | None = None


RUNNING, COMPLETE, STOPPED = "running", "complete", "stopped"
STATES = (RUNNING, COMPLETE, STOPPED)
EARLY_STOP, NAN_LOSS, INTERRUPTED, ERROR = "early_stop", "nan_loss", "interrupted", "error"
REASONS = (EARLY_STOP, NAN_LOSS, INTERRUPTED, ERROR)


@dataclasses.dataclass(frozen=True)
class Status:
    """Where a run stands: config.json's "status", written whole with the record.

    state: RUNNING (a process trains it, or did until it was killed without a word),
        COMPLETE (every configured epoch is trained) or STOPPED (it ended before: `reason`).
    epochs_done: the epochs finished when it was written; epochs: the epochs configured.
    reason: STOPPED's cause: EARLY_STOP, NAN_LOSS, INTERRUPTED or ERROR; detail: a line more
        (which signal, the error's message).
    """

    state: str
    epochs_done: int = 0
    epochs: int | None = None
    reason: str | None = None
    detail: str | None = None

    def __post_init__(self):
        if self.state not in STATES or (self.reason is not None and self.reason not in REASONS):
            raise ValueError(f"not a run status: {self!r}")

    @property
    def final(self):
        """Training it again would change nothing: complete, or stopped by its own rule (early
        stopping, a NaN loss); an interrupted or failed run resumes instead."""
        return self.state == COMPLETE or self.reason in (EARLY_STOP, NAN_LOSS)

    def to_json(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run's config.json.

    config: the RunConfig as given. resolved, environment: as above.
    recorded: the config fields this record knows as given (all of them since 0.2.0's
        "flags"; fields a newer cxr_tf added are missing from older records).
    version: the record_version read (1 for the shapes 0.2.0 wrote).
    status: the recorded Status; None in a record written before statuses (version < 3).
    """

    config: RunConfig
    resolved: Resolved
    environment: Environment = Environment()
    recorded: frozenset = frozenset(FIELDS)
    version: int = RECORD_VERSION
    status: Status | None = None

    def to_json(self):
        """The flat config.json object (see the module docstring)."""
        given = self.config.to_dict()
        flat = dict(given)
        flat.update({name: getattr(self.resolved, name) for name in RESOLVED_FIELDS})
        resolved = _plain(dataclasses.asdict(self.resolved))
        environment = _plain(dataclasses.asdict(self.environment))
        status = {} if self.status is None else {"status": self.status.to_json()}
        return {**flat, **resolved, **environment, "record_version": RECORD_VERSION,
                "given": {name: value for name, value in given.items() if flat[name] != value},
                **status}


def exists(model_dir):
    return os.path.isfile(layout.config_path(model_dir))


def write(model_dir, record):
    """RUN/config.json, whole or not at all. Returns its path."""
    return atomic.write_json(layout.config_path(model_dir), record.to_json(), indent=2,
                             sort_keys=True, default=str)


def write_status(model_dir, status):
    """Sets RUN/config.json's "status" to `status` (a Status), rewriting the file whole.

    Only that key changes: the rest of the record stays as written, in the shape of the
    version that wrote it (a status added to a 0.2.0 record leaves its "flags" as they are).
    """
    content = read_json(model_dir)
    content["status"] = status.to_json()
    return atomic.write_json(layout.config_path(model_dir), content, indent=2, sort_keys=True,
                             default=str)


def read(model_dir):
    """The RunRecord of RUN/config.json, of any record version; RunDirError when there is
    none (saying what a run dir is), when it is not JSON, not a cxr_tf run record, or when
    its values are invalid."""
    return from_json(read_json(model_dir), layout.config_path(model_dir))


def read_json(model_dir):
    """RUN/config.json as a dict, checked to be a cxr_tf run record (`is_run_record`)."""
    path = layout.config_path(model_dir)
    if not os.path.isfile(path):
        raise RunDirError(f"{model_dir}: not a run dir (no {layout.CONFIG_FILE}); a run dir is "
                          f"what training writes: {layout.CONFIG_FILE}, {layout.HISTORY_FILE}, "
                          f"{layout.CHECKPOINTS_DIR}/")
    with open(path, "rb") as f:
        try:
            content = json.loads(f.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{path}: not valid JSON ({e})") from e
    if not is_run_record(content):
        raise RunDirError(f"{path}: not a cxr_tf run record (a JSON object with record_version "
                          "or package_versions.cxr_tf); this folder belongs to something else")
    return content


def is_run_record(content):
    """Whether a parsed config.json is one cxr_tf wrote: every version records
    `record_version` (2 on) or the cxr_tf version in `package_versions` (0.2.0)."""
    if not isinstance(content, dict):
        return False
    versions = content.get("package_versions")
    return "record_version" in content or (isinstance(versions, dict) and "cxr_tf" in versions)


def from_json(content, path=layout.CONFIG_FILE):
    """The RunRecord of a parsed config.json object; `path` names it in errors."""
    version = content.get("record_version", 1)
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise RunDirError(f"{path}: record_version {version!r} is newer than this cxr_tf reads "
                          f"({RECORD_VERSION}); upgrade cxr_tf")
    given, recorded = _given(content, version)
    try:
        config = RunConfig(**given)
    except errors.ConfigError as e:
        raise RunDirError(f"{path}: {e}") from None
    return RunRecord(config=config, resolved=_resolved(content), environment=_environment(content),
                     recorded=frozenset(recorded), version=version,
                     status=_status(content.get("status"), path))


def _given(content, version):
    """({field: value as given}, the fields known) of each record shape."""
    if version >= 2:
        given = {name: content[name] for name in FIELDS if name in content}
        given.update({k: v for k, v in (content.get("given") or {}).items() if k in FIELDS})
        return given, set(given)
    if isinstance(content.get("flags"), dict):  # 0.2.0: the config as given, copied whole
        given = {name: value for name, value in content["flags"].items() if name in FIELDS}
        return given, set(given)
    # Older: only the flat values, where data_dir and steps_per_epoch are the resolved ones:
    # their given values are unknown, so they keep RunConfig's defaults.
    given = {name: content[name] for name in FIELDS
             if name in content and name not in _UNKNOWN_IN_OLDEST}
    return given, set(given)


def _resolved(content):
    values = {field.name: content.get(field.name) for field in dataclasses.fields(Resolved)}
    for name in ("label_names", "pos_weight_values"):
        if values[name] is not None:
            values[name] = tuple(values[name])
    if isinstance(values["dataset"], dict):
        values["dataset"] = Dataset(**{k: v for k, v in values["dataset"].items()
                                       if k in ("dir", "prepared", "source")})
    return Resolved(**values)


def _status(value, path):
    if value is None:
        return None
    try:
        return Status(**value)
    except (TypeError, ValueError) as e:
        raise RunDirError(f"{path}: its status is not one cxr_tf writes ({value!r})") from e


def _environment(content):
    argv = content.get("argv")
    return Environment(package_versions=content.get("package_versions"),
                       command_line=content.get("command_line"),
                       argv=None if argv is None else tuple(argv))


def _plain(values):
    """Tuples as lists, so the JSON written and the JSON read back compare equal."""
    if isinstance(values, (tuple, list)):
        return [_plain(v) for v in values]
    if isinstance(values, dict):
        return {k: _plain(v) for k, v in values.items()}
    return values
