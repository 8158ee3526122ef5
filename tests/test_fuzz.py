"""The fuzz harness (tools/fuzz_inputs.py) runs, briefly, and what it found stays fixed.

The long runs are documented in docs/RELIABILITY.md; here a few hundred inputs each, seeded,
so that the harness itself cannot rot."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_tf.data import image_header, images
from cxr_tf.testing import image_bytes

TOOL = Path(__file__).resolve().parents[1] / "tools" / "fuzz_inputs.py"


@pytest.mark.slow
@pytest.mark.parametrize("target, runs", [("image", 300), ("metadata", 100), ("prepared", 200),
                                          ("history", 300)])
def test_short_fuzz_run_finds_nothing(target, runs, tmp_path):
    pytest.importorskip("atheris")
    proc = subprocess.run(
        [sys.executable, str(TOOL), target, f"-runs={runs}", "-seed=1",
         f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Done {runs} runs" in proc.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_unknown_value_representation_is_an_image_error():
    """The harness's first finding: pydicom converts an element on first access, and an
    unknown VR raised NotImplementedError out of decode_dicom (a crashed prepare worker)."""
    element = b"\x28\x00\x04\x00CS"  # (0028,0004) Photometric Interpretation, VR CS
    data = image_bytes.dicom(np.zeros((2, 2), np.uint8))
    assert element in data
    with pytest.raises(image_header.ImageError) as info:
        images.decode_any(data.replace(element, b"\x28\x00\x04\x00C$"), "x.dcm")
    assert str(info.value) == (
        "x.dcm: DICOM header undecodable (With tag (0028,0004) got exception: Unknown Value "
        "Representation '0x43 0x24' in tag (0028,0004))")
