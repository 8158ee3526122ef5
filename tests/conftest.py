"""Session fixtures, built once per test process on first use: tiny synthetic Kaggle-layout
datasets (clean, with faults, prepared, one whose test split has estimable AUCs), one run dir
trained in process for the readers of run dirs, and the path to the real NIH metadata when
../shared is present. docs/TESTING.md lists them."""

import ast
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REAL_NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih"
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def real_nih_dir():
    if not (REAL_NIH / "Data_Entry_2017_v2020.csv.gz").exists():
        pytest.skip(f"real NIH metadata not found at {REAL_NIH} (a fresh clone has no ../shared)")
    return REAL_NIH


@pytest.fixture(scope="session")
def kaggle_dir(tmp_path_factory):
    """60 synthetic 64 px images in the exact Kaggle layout, no faults."""
    from cxr_tf import synthetic

    out = tmp_path_factory.mktemp("kaggle")
    synthetic.generate(out, num_images=60, image_size=64, seed=0, progress=False, num_workers=1)
    return out


@pytest.fixture(scope="session")
def faults_dir(tmp_path_factory):
    """A small synthetic Kaggle folder with one file or row of every bad kind."""
    from cxr_tf import synthetic

    out = tmp_path_factory.mktemp("faults")
    synthetic.generate(out, num_images=40, image_size=48, seed=1, faults=True, progress=False,
                       num_workers=1)
    return out


@pytest.fixture(scope="session")
def prepared_dir(kaggle_dir, tmp_path_factory):
    """`kaggle_dir` prepared at 32 px: the TFDS dir most pipeline and training tests read."""
    from cxr_tf.datasets.config import PrepareConfig
    from cxr_tf.datasets.nih_chest_xray14 import build

    out = tmp_path_factory.mktemp("tfds")
    build.prepare(PrepareConfig(data_dir=kaggle_dir, output_dir=out, image_size=32,
                                num_workers=0))
    return out


@pytest.fixture(scope="session")
def estimable_dir(tmp_path_factory):
    """200 synthetic images with every finding at >= 40 %, prepared at 32 px: a test split of
    46 images in which most findings have 10 positives and 10 negatives, so that their AUCs
    are estimable (`prepared_dir`'s 14 test images leave every AUC not estimable)."""
    from cxr_tf import synthetic
    from cxr_tf.datasets.config import PrepareConfig
    from cxr_tf.datasets.nih_chest_xray14 import build

    root = tmp_path_factory.mktemp("estimable")
    synthetic.generate(root / "kaggle", num_images=200, image_size=32, seed=5, progress=False,
                       num_workers=1, min_prevalence=0.4)
    build.prepare(PrepareConfig(data_dir=root / "kaggle", output_dir=root / "tfds", image_size=32,
                                num_workers=0))
    return root / "tfds"


TRAINED = dict(arch="resnet18", image_size=32, batch_size=4, epochs=2, steps_per_epoch=3,
               learning_rate=0.001, thresholds=("0.4", "0.5"), seed=0)


@pytest.fixture(scope="session")
def trained_run(prepared_dir, tmp_path_factory):
    """A run dir trained once per test session (per xdist worker), in this process, as
    `python -m cxr_tf.train` would leave it: resnet18, 32 px, 2 epochs of 3 steps of 4 images
    on `prepared_dir`, thresholds 0.4 and 0.5 (TRAINED). Returns (path, the runner's summary).

    Built on first use: about 15-25 s of CPU, charged in --durations to the first test that
    asks for it (a slow test's share of the session). Read it, never write into it: a test
    that evaluates (which writes eval_*/ and thresholds.json) or exports from it works on
    `trained_copy`."""
    from cxr_tf.runs.config import RunConfig
    from cxr_tf.training import runner

    path = tmp_path_factory.mktemp("trained") / "run"
    summary = runner.run(RunConfig(data_dir=str(prepared_dir), model_dir=str(path), **TRAINED),
                         verbose=0)
    return path, summary


@pytest.fixture
def trained_copy(trained_run, tmp_path):
    """A private copy of `trained_run`'s run dir (a test may write into it)."""
    import shutil

    return shutil.copytree(trained_run[0], tmp_path / "trained")


@pytest.fixture(scope="session")
def make_run_dir():
    """Makes a run dir as cxr_tf.train leaves it (config.json written by cxr_tf.runs.record,
    checkpoints/best|last.keras) holding an untrained resnet18 (32 px unless image_size says);
    returns the Keras model."""

    def make(path, data_dir=None, num_outputs=14, seed=0, thresholds=("0.5",), image_size=32):
        import keras

        from cxr_tf import labels, model
        from cxr_tf.runs import record
        from cxr_tf.runs.config import RunConfig

        keras.utils.set_random_seed(seed)
        net = model.build_model("resnet18", image_size, num_outputs)
        os.makedirs(path / "checkpoints")
        for name in ("best", "last"):
            net.save(path / "checkpoints" / f"{name}.keras")
        data_dir = str(data_dir or path)
        config = RunConfig(model_dir=str(path), data_dir=data_dir, image_size=image_size,
                           arch="resnet18", thresholds=thresholds,
                           no_finding_output=num_outputs == 15)
        record.write(path, record.RunRecord(config=config, resolved=record.Resolved(
            data_dir=data_dir, model_dir=str(path), num_outputs=num_outputs,
            label_names=tuple(labels.LABELS))))
        return net

    return make


@pytest.fixture(scope="session")
def import_roots():
    """The top-level packages a cxr_tf module imports, read from its source (not run):
    import_roots("evaluation/metrics.py") -> {"math", "numpy", "sklearn"}."""

    def roots(module_file):
        tree = ast.parse((Path(__file__).resolve().parents[1] / "cxr_tf" / module_file).read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.split(".")[0])
        return found

    return roots


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(bytes) -> (folder, limit): a folder where writes fail past `bytes`.

    A tmpfs of that size where this process may mount one (root): a real full disk, ENOSPC.
    Elsewhere the folder is plain and `limit` is the RLIMIT_FSIZE to give a subprocess
    (`preexec_fn=limit`): a write past it fails with EFBIG, as the disk would with ENOSPC.
    """
    import resource
    import signal
    import subprocess

    mounted = []

    def make(size):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True)
        if proc.returncode == 0:
            mounted.append(folder)
            return folder, None

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

        return folder, limit

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)
