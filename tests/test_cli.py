"""Tests for cxr_tf.cli: a user error is one `error: ...` line and exit 1 (2 for usage), a bug
keeps its traceback, and TensorFlow's C++ start-up lines are hidden unless --tf_logs.

The apps run as subprocesses, as a user runs them. Usage errors are found before TensorFlow is
imported, so those runs take about a second each."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from cxr_tf import cli, errors, flags
from cxr_tf.data import metadata
from cxr_tf.synthetic import rows

# Lines TensorFlow 2.21 printed at start-up on a CPU machine (cxr_tf.train --dry_run), and
# the GPU builds' factory lines (tensorflow#62075).
START_UP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795855481.275492   14990 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1795855481.275980   14990 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1795855481.371573   14990 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI FMA, in other operations, "
    "rebuild TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1795855483.520950   14990 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1731000000.000000    1234 cuda_dnn.cc:8310] Unable to register cuDNN factory: "
    "Attempting to register factory for plugin cuDNN when one has already been registered",
    "E0000 00:00:1731000000.000000    1234 cuda_blas.cc:1418] Unable to register cuBLAS "
    "factory: Attempting to register factory for plugin cuBLAS when one has already been "
    "registered",
    "W0000 00:00:1731000000.000000    1234 computation_placer.cc:177] computation placer "
    "already registered. Please check linkage and avoid linking the same target more than once.",
    "2024-01-01 12:00:00.000000: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] "
    "TF-TRT Warning: Could not find TensorRT",
    # At a model's first step (train, evaluate, predict), and from Beam under `tfds build`.
    "E0000 00:00:1796308152.482745   20172 util.cc:131] oneDNN supports DT_BOOL only on "
    "platforms with AVX-512. Falling back to the default Eigen-based implementation if present.",
    "W0000 00:00:1796309802.294625   17573 local_rendezvous.cc:412] Local rendezvous is "
    "aborting with status: DATA_LOSS: corrupted record at 0 (Is this even a TFRecord file?)",
    "WARNING:root:apitools not found, and bigquery client libraries are not available despite "
    "the import not raising an ImportError.",
]
# Real problems that look alike: these always show.
KEPT = [
    "E0000 00:00:1795855483.520950   14990 cuda_platform.cc:52] failed call to cuInit: "
    "CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected (100)",
    "F0000 00:00:1795855481.275492   14990 port.cc:153] oneDNN custom operations are on.",
    "W0000 00:00:1795855481.275492   14990 gpu_device.cc:2344] Cannot dlopen some GPU "
    "libraries.",
    "I0000 00:00:1795855481.275492   14990 port.cc:153] something else entirely",
    "Traceback (most recent call last):",
]


def run_app(app, *args, cwd=None, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", f"cxr_tf.{app}", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def run_code(code, timeout=900):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_error(proc, exit_code, message):
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines() == [f"error: {message}"]
    assert proc.returncode == exit_code


# --- the filter ---------------------------------------------------------------------------

@pytest.mark.parametrize("line", START_UP)
def test_known_start_up_lines_match(line):
    assert cli.TF_START_UP_LINES.match(line)


@pytest.mark.parametrize("line", KEPT)
def test_other_lines_do_not_match(line):
    assert not cli.TF_START_UP_LINES.match(line)


def test_filtered_stderr_drops_known_lines_and_passes_every_other_in_order(capfd):
    with cli.filtered_stderr(cli.TF_START_UP_LINES):
        for line in [START_UP[0], KEPT[0], START_UP[1], "a Python warning", START_UP[4]]:
            os.write(2, (line + "\n").encode())
        os.write(2, b"\xff not UTF-8\n")
        os.write(2, b"a last line without a newline")
    os.write(2, b"; after the block\n")
    assert capfd.readouterr().err == (f"{KEPT[0]}\na Python warning\n\ufffd not UTF-8\n"
                                      "a last line without a newline; after the block\n")


def test_the_process_long_filter_passes_lines_as_they_come_and_survives_a_crash():
    """The forwarder is a process of its own: what a process wrote just before it aborted
    (a C++ fatal line, say) still reaches the user; a progress bar's \\r redraws pass as
    they are, and a known line is dropped."""
    proc = subprocess.run([sys.executable, "-c", (  # bytes: text mode would turn \\r into \\n
        "import os\n"
        "from cxr_tf import cli, tf_logs\n"
        "cli.quiet_tensorflow_start_up()\n"
        f"os.write(2, {START_UP[1]!r}.encode() + b'\\n')\n"
        "os.write(2, b'bar 10%\\rbar 20%\\r')\n"
        "print('terminal:', tf_logs.stderr_is_terminal(), flush=True)\n"
        "os.write(2, b'F0000 last words before abort\\n')\n"
        "os.abort()\n")], capture_output=True, timeout=60)
    assert proc.returncode == -6  # SIGABRT
    assert proc.stdout == b"terminal: False\n"
    assert proc.stderr == b"bar 10%\rbar 20%\rF0000 last words before abort\n"


# --- which errors are the user's ----------------------------------------------------------

def raised(function, *args):
    try:
        function(*args)
    except Exception as e:  # noqa: BLE001 -- the test wants the exception object
        return e
    raise AssertionError("no exception")


def test_user_errors_and_bugs_are_told_apart_by_type():
    assert cli.is_user_error(raised(open, "/nonexistent/x.csv"))  # an OSError naming its file
    assert not cli.is_user_error(OSError("no file named"))
    assert cli.is_user_error(metadata.MetadataError("missing column(s) ['Patient ID']"))
    assert cli.is_user_error(errors.ConfigError("seed", -1, "must be at least 0"))
    # A caller's mistake in code is a plain ValueError: a bug, wherever it is raised.
    assert not cli.is_user_error(raised(rows.sample_rows, 0))
    assert not cli.is_user_error(raised(np.zeros(2).reshape, 3))
    assert not cli.is_user_error(raised(int, "x"))
    assert not cli.is_user_error(raised(dict().__getitem__, "x"))
    assert not cli.is_user_error(raised(np.linalg.inv, np.zeros((2, 2))))  # LinAlgError


def test_a_user_error_raised_through_a_helper_or_re_raised_is_still_the_users():
    def helper():
        raise errors.UserError("from a helper")

    def re_raising():
        try:
            helper()
        except errors.UserError as e:
            raise e

    assert cli.is_user_error(raised(re_raising))
    # Raised inside a library call, not on a `raise` line of cxr_tf's own.
    assert cli.is_user_error(raised(metadata.find_data_entry, "/nonexistent"))


def test_an_untested_keras_is_the_users():
    from cxr_tf.training import keras_compat  # imports TensorFlow

    error = raised(keras_compat.check_keras_version, "2.15.0")
    assert cli.is_user_error(error)
    assert cli.error_message(error).startswith("cxr_tf.training.keras_compat was tested with "
                                               "Keras 3.15.x, found Keras 2.15.0: ")
    assert not cli.is_user_error(raised(np.random.default_rng(0).choice, [], 1))


def test_error_message_is_one_line_naming_the_file():
    assert cli.error_message(raised(open, "/nonexistent/x.csv")) == (
        "/nonexistent/x.csv: No such file or directory")
    assert cli.error_message(ValueError("first\n  second\n")) == "first; second"
    assert cli.error_message(OSError("disk full")) == "disk full"


# --- apps: usage errors (exit 2) ----------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--thresholds=abc"], "flag --thresholds=abc: must be numbers ('abc' is not)"),
    (["--thresholds="], "flag --thresholds=: must hold at least one value"),
    (["--learning_rate=nan"], "flag --learning_rate=nan: must be a finite number"),
    (["--learning_rate=inf"], "flag --learning_rate=inf: must be a finite number"),
    (["--learning_rate=0"], "flag --learning_rate=0.0: must be > 0"),
    (["--learning_rate=-1"], "flag --learning_rate=-1.0: must be > 0"),
    (["--lerning_rate=0.1"], "Unknown command line flag 'lerning_rate'. Did you mean: "
                             "learning_rate ?"),
    (["--dry_run", "extra"], "unexpected arguments: ['extra']"),
    (["--synthetic", "--image_size=40000", "--model_dir=run"],
     "flag --image_size=40000: makes 1,600,000,000-pixel images, over the synthetic data's "
     "max_pixels (50,000,000): image_size² must fit"),
    (["--flagfile=nope.cfg"], "flagfile 'nope.cfg' not found (looked in nope.cfg, "
                              f"{os.path.join(flags.CONFIG_DIR, 'nope.cfg')})"),
    # Issue: a missing path silently loaded the packaged recommended.cfg.
    (["--flagfile=/home/u/exp/v7/recommended.cfg"],
     "flagfile '/home/u/exp/v7/recommended.cfg' not found (looked in "
     "/home/u/exp/v7/recommended.cfg); a path is read only from its folder: for the packaged "
     "recommended.cfg give its bare name"),
    (["--synthetic", "--model_dir=m", "--seed=4294967296"],
     "flag --seed=4294967296: must be at most 4294967295"),
    (["--synthetic", "--model_dir=m", f"--batch_size={2**63}"],
     f"flag --batch_size={2**63}: must be at most 2147483647"),
])
def test_train_usage_errors(tmp_path, args, message):
    assert_one_error(run_app("train", *args, cwd=tmp_path), 2, message)


def test_self_including_flagfile(tmp_path):
    cfg = tmp_path / "loop.cfg"
    cfg.write_text("--epochs=1\n--flagfile=loop.cfg\n")
    assert_one_error(run_app("train", f"--flagfile={cfg}"), 2,
                     f"flagfile {cfg} includes itself via {cfg}")


def test_missing_required_arguments_are_usage_errors():
    assert_one_error(run_app("predict"), 2, "--model and at least one file or folder are "
                     "required (python -m cxr_tf.predict --model=DIR FILES_OR_DIRS...)")
    assert_one_error(run_app("predict", "--threshold=1.5", "--model=m", "x.png"), 2,
                     "flag --threshold=1.5: must lie in (0, 1)")


# --- apps: user errors at run time (exit 1) -----------------------------------------------

def test_metadata_error_is_one_line(tmp_path):
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text("a,b\n1,2\n")
    proc = run_app("stats", f"--data_dir={tmp_path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"error: {csv}, line 1: missing column(s) ['Image Index', ")


@pytest.mark.slow
def test_invalid_model_dir_is_one_line(tmp_path):
    proc = run_app("export", f"--model_dir={tmp_path / 'missing'}",
                   f"--export_dir={tmp_path / 'out' / '1'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert_one_error(proc, 1, f"{tmp_path / 'missing'}: not a run dir (no config.json); a run "
                              "dir is what training writes: config.json, history.csv, "
                              "checkpoints/")


@pytest.mark.slow
def test_train_into_a_model_dir_under_a_file_is_one_line(tmp_path, prepared_dir):
    (tmp_path / "file").write_text("")
    model_dir = tmp_path / "file" / "run"
    proc = run_app("train", f"--data_dir={prepared_dir}", f"--model_dir={model_dir}",
                   "--arch=resnet18", "--image_size=32", "--epochs=1", "--steps_per_epoch=1",
                   timeout=900)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    said, line = proc.stderr.splitlines()  # what it was doing (on stderr), then the error
    assert said == f"opening the dataset in {prepared_dir}"
    assert line.startswith("error: ") and str(tmp_path / "file") in line
    assert line.endswith(": Not a directory")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_train_into_a_read_only_model_dir_is_one_line(tmp_path, prepared_dir):
    tmp_path.joinpath("ro").mkdir(mode=0o555)
    proc = run_app("train", f"--data_dir={prepared_dir}", f"--model_dir={tmp_path / 'ro' / 'run'}",
                   "--arch=resnet18", "--image_size=32", "--epochs=1", "--steps_per_epoch=1",
                   timeout=900)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1].endswith(": Permission denied")


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback():
    template = ("from cxr_tf import cli, errors, flags\n"
                "def main(argv):\n    {}\n"
                "cli.run(main, flags.define_stats_flags)\n")
    proc = run_code(template.format("from cxr_tf.data import metadata; "
                                    "metadata.find_data_entry('/nonexistent')"))
    assert_one_error(proc, 1, "/nonexistent: no Data_Entry CSV found; looked for "
                              "Data_Entry_2017_v2020.csv, Data_Entry_2017_v2020.csv.gz, "
                              "Data_Entry_2017.csv, Data_Entry_2017.csv.gz")
    proc = run_code(template.format("raise errors.ConfigError('seed', -1, 'must be at least 0')"))
    assert_one_error(proc, 2, "seed must be at least 0; received seed=-1")
    # A ValueError raised on a `raise` line of cxr_tf that is not a UserError is a caller's
    # mistake in code: a bug, with its traceback.
    for bug, last_line in [("from cxr_tf.synthetic import rows; rows.sample_rows(0)",
                            "ValueError: need num_images >= 1, seed >= 0 and 0 <= "
                            "min_prevalence < 1, got 0, 0, 0.0"),
                           ("import numpy; numpy.zeros(2).reshape(3)",
                            "ValueError: cannot reshape array of size 2 into shape (3,)"),
                           ("{}['x']", "KeyError: 'x'")]:
        proc = run_code(template.format(bug))
        assert proc.returncode == 1
        assert "Traceback (most recent call last)" in proc.stderr
        assert proc.stderr.splitlines()[-1] == last_line
        assert "error: " not in proc.stderr


# --- interrupts ---------------------------------------------------------------------------

APP = """
import os, signal, sys, time
from absl import flags as absl_flags
from cxr_tf import cli, errors, flags

def define():
    flags._define_app_flags(flags.FLAGS)
    absl_flags.DEFINE_string("out", None, "where the app writes")

def main(argv):
    os.makedirs(flags.FLAGS.out, exist_ok=True)
    {body}
    os.kill(os.getpid(), signal.{signal})
    time.sleep(60)  # the signal's handler raises before this ends

cli.run(main, define, outputs=lambda f: [f.out, None])
"""


@pytest.mark.parametrize("body, signal_name, exit_code, line", [
    ("pass", "SIGINT", 130, "interrupted; nothing written"),
    ("pass", "SIGTERM", 143, "interrupted; nothing written"),
    ("open(os.path.join(flags.FLAGS.out, 'a.csv'), 'w').write('x')", "SIGINT", 130,
     "interrupted; left {out}: 1 file new, changed or removed (a.csv)"),
])
def test_an_interrupted_app_says_in_one_line_what_it_left(tmp_path, body, signal_name,
                                                          exit_code, line):
    out = tmp_path / "out"
    (tmp_path / "out").mkdir()
    (out / "old.txt").write_text("was there")  # unchanged: not reported
    proc = subprocess.run(
        [sys.executable, "-c", APP.format(body=body, signal=signal_name), f"--out={out}"],
        capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr, proc.stdout) == (exit_code, line.format(out=out) + "\n",
                                                           "")


def test_what_an_app_left_is_counted_in_a_folder_of_bounded_size(tmp_path, monkeypatch):
    (tmp_path / "a").write_text("1")
    before = {tmp_path: cli.snapshot(tmp_path)}
    (tmp_path / "a").unlink()
    for name in ("b", "c", "d", "e"):
        (tmp_path / name).write_text("2")
    assert cli.changed(before) == (f"left {tmp_path}: 5 files new, changed or removed (a, b, c "
                                   "and 2 more)")
    monkeypatch.setattr(cli, "SNAPSHOT_LIMIT", 3)  # a model_dir given as ~ is not walked whole
    assert cli.changed({tmp_path: cli.snapshot(tmp_path)}) == \
        f"{tmp_path} not checked (over 3 files)"


def test_the_code_that_knows_says_what_was_saved(tmp_path):
    body = ("try:\n        os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)\n"
            "    except errors.Interrupted as e:\n"
            "        raise e.saying('interrupted in epoch 3; the state after epoch 2 is saved')")
    proc = subprocess.run(
        [sys.executable, "-c", APP.format(body=body, signal="SIGTERM"), f"--out={tmp_path}"],
        capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (
        143, "interrupted in epoch 3; the state after epoch 2 is saved\n")


def test_a_second_signal_ends_the_process_at_once():
    """The first raises errors.Interrupted and gives both signals their default action back,
    so a second one (sent here while the first is being handled) kills the process."""
    code = ("import os, signal\n"
            "from cxr_tf import cli, errors\n"
            "cli.handle_interrupts()\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    signal.pause()\n"
            "except errors.Interrupted as e:\n"
            "    print('first', e.signum, signal.getsignal(signal.SIGINT) is signal.SIG_DFL,\n"
            "          flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    print('still running')\n")
    proc = run_code(code)
    assert (proc.returncode, proc.stdout, proc.stderr) == (-2, "first 15 True\n", "")


def test_every_apps_usage_renders():
    """absl prints the app's module docstring as --help's usage: a command continued with a
    backslash keeps its line breaks (no words run together), every app starts with its
    command."""
    import importlib

    for name in ("train", "evaluate", "export", "predict", "prepare", "stats",
                 "synthetic.__main__"):
        doc = importlib.import_module(f"cxr_tf.{name}").__doc__
        command = f"python -m cxr_tf.{name.split('.')[0]}"
        assert doc.split("\n\n")[1].strip().startswith(command), name
        for line in doc.splitlines():
            assert "   " not in line.strip(), (name, line)
            if line.endswith("\\"):
                assert line.strip().startswith(("python -m", "[")), (name, line)


# --- TensorFlow's start-up lines ----------------------------------------------------------

@pytest.mark.slow
def test_training_prints_no_tensorflow_line_at_its_first_step(tmp_path, prepared_dir):
    """oneDNN's `E0000 ... DT_BOOL` line came at the first training step, after start-up."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = run_app("train", f"--data_dir={prepared_dir}", "--image_size=32", "--arch=resnet18",
                   "--epochs=1", "--steps_per_epoch=1", "--batch_size=8",
                   f"--model_dir={tmp_path / 'run'}", cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tf_lines = [line for line in proc.stderr.splitlines()
                if re.match(r"[IWEF]\d{4} |WARNING: All log messages", line)]
    assert tf_lines == []


@pytest.mark.slow
def test_dry_run_hides_tensorflow_start_up_lines_unless_tf_logs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    args = ["--flagfile=demo.cfg", "--dry_run", "--arch=resnet18", "--image_size=32"]
    quiet = run_app("train", *args, cwd=tmp_path, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert '"arch": "resnet18"' in quiet.stdout.splitlines()[0]
    assert quiet.stderr == ""
    loud = run_app("train", *args, "--tf_logs", cwd=tmp_path, env=env)
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout.splitlines()[0] == quiet.stdout.splitlines()[0]  # the same config
    shown = [line for line in loud.stderr.splitlines() if cli.TF_START_UP_LINES.match(line)]
    assert any("All log messages before absl::InitializeLog()" in line for line in shown)
    assert any("oneDNN custom operations are on" in line for line in shown)


@pytest.mark.slow
def test_tensorflow_probed_before_it_is_imported_still_starts_quietly():
    """TFDS and Keras call importlib.util.find_spec("tensorflow") before importing it."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", (
        "import importlib.util, sys\n"
        "from cxr_tf import cli\n"
        "cli.quiet_tensorflow_start_up()\n"
        "assert importlib.util.find_spec('tensorflow') is not None\n"
        "import tensorflow as tf\n"
        "print(type(tf.__loader__).__name__, type(tf.__spec__.loader).__name__)\n"
        "print(int(tf.constant(2) * 3))\n"
        "print('a warning of ours', file=sys.stderr)\n")],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["SourceFileLoader SourceFileLoader", "6"]
    assert proc.stderr.splitlines() == ["a warning of ours"]


# An interrupt whose handler runs inside __del__ (or a garbage-collection callback, as JAX
# registers one): Python drops the exception there. Found when a Ctrl-C during a run's first
# step was lost and training went on to the end.
_INTERRUPT_IN_DEL = """
import signal
from cxr_tf import cli, errors
cli.handle_interrupts()

class Finalized:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)
        sum(range(10))  # the handler runs here, where Python drops what it raises

try:
    Finalized()  # collected at once
    while True:  # until the interrupt is delivered again
        pass
except errors.Interrupted as e:
    print("interrupted by", e.signum)
"""


def test_an_interrupt_raised_where_python_drops_exceptions_is_delivered_again():
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT_IN_DEL], capture_output=True,
                          text=True, timeout=900)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "interrupted by 2\n", "")


# A library frame that C++ might have called: the interrupt waits until the main thread is
# back in a frame it can unwind (found when a Ctrl-C while TFDS opened a dataset segfaulted
# inside TensorFlow's tensor conversion, or became dm-tree's AttributeError).
_INTERRUPT_IN_A_LIBRARY = """
import sys
sys.path.insert(0, sys.argv[1])
from cxr_tf import cli, errors
import fakelib
cli.handle_interrupts()
try:
    fakelib.work()
    while True:
        pass
except errors.Interrupted as e:
    print("library finished:", fakelib.finished, "interrupted by", e.signum)
"""
_FAKELIB = """
import signal, time

finished = False


def work():
    global finished
    signal.raise_signal(signal.SIGINT)
    end = time.monotonic() + 0.05  # the handler runs here: it waits
    while time.monotonic() < end:
        pass
    finished = True
"""


def run_beside_a_library(tmp_path, script, module, source):
    """Runs `script` (python -c) with `module` made from `source` in a site-packages folder
    (installed library code, to the handler); returns (exit code, stdout, stderr)."""
    library = tmp_path / "site-packages"
    library.mkdir()
    (library / f"{module}.py").write_text(source)
    proc = subprocess.run([sys.executable, "-c", script, str(library)], capture_output=True,
                          text=True, timeout=900)
    return proc.returncode, proc.stdout, proc.stderr


def test_an_interrupt_waits_to_leave_library_code(tmp_path):
    assert run_beside_a_library(tmp_path, _INTERRUPT_IN_A_LIBRARY, "fakelib", _FAKELIB) == (
        0, "library finished: True interrupted by 2\n", "")


# A loop of ours around a library call that spends its time in C (a training step): the
# handler always runs in the library's frame as the call returns. Raised at the loop's next
# line, the interrupt ends the loop after the step it came in; sent again 10 ms later, as
# before, it landed in the library's frame again, step after step (a Ctrl-C waited for the end
# of a training epoch).
_INTERRUPT_IN_A_LOOP = """
import sys
sys.path.insert(0, sys.argv[1])
from cxr_tf import cli, errors
import fakestep
cli.handle_interrupts()
try:
    for step in range(2000):
        fakestep.run(step)
except errors.Interrupted as e:
    print("steps run:", fakestep.done, "interrupted by", e.signum)
"""
_FAKESTEP = """
import signal, time

done = 0


def run(step):
    global done
    if step == 3:
        signal.raise_signal(signal.SIGTERM)  # the handler runs here: it waits
    time.sleep(0.005)
    done += 1
"""


def test_an_interrupt_waiting_in_a_library_is_raised_at_the_next_line_of_ours(tmp_path):
    assert run_beside_a_library(tmp_path, _INTERRUPT_IN_A_LOOP, "fakestep", _FAKESTEP) == (
        0, "steps run: 4 interrupted by 15\n", "")


def frame_of(filename, module="lib"):
    """A stand-in for a frame running code of `filename` in module `module`."""
    import types

    return types.SimpleNamespace(f_code=types.SimpleNamespace(co_filename=filename),
                                 f_globals={"__name__": module})


def test_a_second_signal_while_the_first_waits_ends_the_process(monkeypatch):
    # Raising gives both signals their default action: not in this test process.
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    traced, ended = [], []
    monkeypatch.setattr(cli, "_raise_at_our_next_line", traced.append)
    monkeypatch.setattr(cli, "_end_now", ended.append)
    monkeypatch.setattr(cli, "_waiting", {})
    library = frame_of("/venv/lib/python3.11/site-packages/tensorflow/python/ops/array_ops.py")
    ours = frame_of("/work/cxr_tf/training/runner.py")
    cli._interrupt(signal.SIGINT, library)  # waits for a line of ours
    assert (traced, ended, cli._waiting) == ([library], [], {"signum": signal.SIGINT})
    cli._interrupt(signal.SIGTERM, library)  # a second signal
    assert ended == [signal.SIGTERM]
    cli._waiting.update(resent=True)  # what a signal _unraisable sent again finds
    with pytest.raises(errors.Interrupted):
        cli._interrupt(signal.SIGINT, ours)
    assert cli._waiting == {}


def test_which_frames_an_interrupt_is_raised_in():
    import sysconfig

    site = os.path.join(os.sep, "venv", "lib", "python3.11", "site-packages")
    assert cli.can_raise_in(frame_of(os.path.join(site, "keras", "src", "trainers", "trainer.py")))
    assert cli.can_raise_in(frame_of(os.path.join(os.sep, "work", "cxr_tf", "training",
                                                  "runner.py")))
    assert cli.can_raise_in(frame_of(os.path.join(site, "cxr_tf", "cli.py")))  # not editable
    assert cli.can_raise_in(frame_of(os.path.join(os.sep, "work", "tools", "measure_hostile.py"),
                                     "__main__"))
    assert cli.can_raise_in(frame_of("<string>", "__main__"))  # python -c
    for library in ("tensorflow/python/framework/constant_op.py", "tree/__init__.py",
                    "tensorflow_datasets/core/reader.py"):
        assert not cli.can_raise_in(frame_of(os.path.join(site, library)))
    assert not cli.can_raise_in(frame_of("/usr/lib/python3/dist-packages/numpy/core/numeric.py"))
    # The standard library's helpers run under C++ callers too (abc's isinstance checks), and
    # so does code made at run time: a namedtuple's __new__ as dm-tree rebuilds one.
    assert not cli.can_raise_in(frame_of(os.path.join(sysconfig.get_paths()["stdlib"], "abc.py")))
    assert not cli.can_raise_in(frame_of("<frozen importlib._bootstrap>"))
    assert not cli.can_raise_in(frame_of("<string>", "namedtuple_Point"))
    assert not cli.can_raise_in(frame_of("<string>", "tensorflow.python.data.ops"))
