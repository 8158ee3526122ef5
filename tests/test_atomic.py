"""cxr_tf.atomic: a file is wholly old or wholly new, its temporary name is per process and
removed on failure, and a failed write is one line naming the file and the cause."""

import json
import os
import subprocess
import sys

import pytest

from cxr_tf import atomic, cli


def test_write_json_replaces_the_file_whole(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"old": true}')
    assert atomic.write_json(path, {"seed": 3}, indent=1) == str(path)
    assert json.loads(path.read_text()) == {"seed": 3}
    assert os.listdir(tmp_path) == ["config.json"]


def test_temporary_name_is_hidden_unique_per_process_and_keeps_the_extension(tmp_path):
    pid = os.getpid()
    assert atomic.temporary_path(tmp_path / "last.keras") == \
        str(tmp_path / f".last.tmp-{pid}.keras")
    assert atomic.temporary_path(tmp_path / "epoch-0003.weights.h5") == \
        str(tmp_path / f".epoch-0003.tmp-{pid}.weights.h5")
    assert atomic.temporary_path("history.csv") == f".history.tmp-{pid}.csv"
    assert atomic.is_temporary(f".last.tmp-{pid + 1}.keras")
    assert not atomic.is_temporary("last.keras")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,0.5\n")
    with pytest.raises(RuntimeError, match="serializer broke"):
        with atomic.replacing(path) as tmp:
            with open(tmp, "w") as f:
                f.write("epoch,loss\n")  # half written
            raise RuntimeError("serializer broke")
    assert path.read_text() == "epoch,loss\n0,0.5\n"
    assert os.listdir(tmp_path) == ["history.csv"]


def test_an_os_error_names_the_target_and_the_cause(tmp_path):
    target = tmp_path / "missing_dir" / "config.json"
    with pytest.raises(OSError) as info:
        atomic.write_json(target, {})
    assert str(info.value) == f"[Errno 2] {target}: not written (No such file or directory)"


def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path):
    """The file-size limit makes the write fail as a full disk does, after 4 KiB were written."""
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
        "from cxr_tf import atomic, cli\n"
        "try:\n"
        "    atomic.write_file(sys.argv[1], b'x' * 100_000, mode='wb')\n"
        "except OSError as e:\n"
        "    print(e)\n"
    )
    target = tmp_path / "best.keras"
    proc = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True,
                          text=True, check=True, timeout=900)
    assert proc.stdout == f"[Errno 27] {target}: not written (File too large)\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_full_disk_during_a_keras_save_is_one_line_and_leaves_no_temporary(tmp_path):
    """The backup (h5py) and the lean model (zip) hit the file-size limit as a full disk."""
    script = (
        "import os, resource, signal, sys\n"
        "import keras\n"
                "from cxr_tf.training import callbacks\n"
        "inputs = keras.Input((64,))\n"
        "net = keras.Model(inputs, keras.layers.Dense(4096)(inputs))\n"
        "net.compile('adam', 'mse')\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))\n"
        "for saver in (callbacks.AtomicCheckpoint(sys.argv[1]), callbacks.EpochBackup(sys.argv[1])):\n"
        "    saver.set_model(net)\n"
        "    try:\n"
        "        saver.on_epoch_end(0, {})\n"
        "    except OSError as e:\n"
        "        print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, check=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.stdout.splitlines() == [
        f"[Errno 27] {tmp_path / 'checkpoints' / 'last.keras'}: not written (File too large)",
        f"[Errno 27] {tmp_path / 'backup' / 'epoch-0001.weights.h5'}: not written "
        "(File too large)"]
    assert os.listdir(tmp_path / "checkpoints") == []
    assert os.listdir(tmp_path / "backup") == []


def test_check_writable_fails_before_any_work_and_touches_nothing(tmp_path):
    existing = tmp_path / "preds.csv"
    existing.write_text("kept")
    atomic.check_writable(existing)
    atomic.check_writable(tmp_path / "new.csv")
    assert sorted(os.listdir(tmp_path)) == ["preds.csv"] and existing.read_text() == "kept"
    missing = tmp_path / "no_such_folder" / "preds.csv"
    for path, cause in [(missing, "No such file or directory"), (tmp_path, "a folder"),
                        (existing / "x.csv", "Not a directory")]:
        with pytest.raises(atomic.NotWrittenError) as info:
            atomic.check_writable(path)
        assert cli.error_message(info.value) == f"{path}: cannot be written ({cause})"
@pytest.mark.slow
def test_a_real_full_disk_while_the_backup_is_written_is_one_line_not_a_crash(small_disk):
    """ENOSPC on a 1 MB tmpfs (RLIMIT_FSIZE where mounting is not allowed) while EpochBackup
    writes 3 MB: the error is raised once, and the process exits normally. Before, h5py's file
    object failed to close twice at exit and the process died with SIGSEGV (exit 139)."""
    disk, limit = small_disk(1 << 20)
    script = (
        "import sys\n"
        "import keras, numpy as np\n"
        "from cxr_tf.training import callbacks\n"
        "inputs = keras.Input((64,))\n"
        "net = keras.Model(inputs, keras.layers.Dense(4096)(inputs))\n"
        "net.compile('adam', 'mse')\n"
        "net.fit(np.ones((4, 64)), np.ones((4, 4096)), verbose=0)\n"
        "backup = callbacks.EpochBackup(sys.argv[1])\n"
        "backup.set_model(net)\n"
        "try:\n"
        "    backup.on_epoch_end(0, {})\n"
        "except OSError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(disk / "run")], capture_output=True,
                          text=True, preexec_fn=limit, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    cause = "[Errno 28] {}: not written (No space left on device)" if limit is None else \
        "[Errno 27] {}: not written (File too large)"
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == cause.format(disk / "run" / "backup" / "epoch-0001.weights.h5") + "\n"
    assert "Exception ignored" not in proc.stderr and "h5py" not in proc.stderr
    assert os.listdir(disk / "run" / "backup") == []
