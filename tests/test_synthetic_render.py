"""Tests for cxr_tf.synthetic_render: each finding's signature survives a downscale to 64 px
(the demo's training size) and differs from every other finding's."""

import numpy as np
import pytest

from cxr_tf import images, labels, synthetic_render


@pytest.mark.parametrize("name", labels.LABELS)
def test_every_signature_stays_visible_at_64_px(name):
    # Same patient and image seeds with and without the finding: only the signature differs.
    for i in range(3):
        with_it = images.resize(synthetic_render.render(256, (name,), [0, 1, i], [0, 2, i]), 64)
        without = images.resize(synthetic_render.render(256, (), [0, 1, i], [0, 2, i]), 64)
        diff = np.abs(with_it.astype(int) - without.astype(int))
        assert diff.max() >= 40 and (diff > 20).sum() >= 10, (name, diff.max(), (diff > 20).sum())


def test_signatures_are_distinct():
    maps = {}
    for name in labels.LABELS:
        diff = [images.resize(synthetic_render.render(128, f, [0, 1, 9], [0, 2, 9]), 64)
                .astype(float) for f in ((name,), ())]
        maps[name] = (diff[0] - diff[1]).ravel()
    for a in labels.LABELS:
        for b in labels.LABELS:
            if a < b:
                corr = np.corrcoef(maps[a], maps[b])[0, 1]
                assert corr < 0.9, (a, b, corr)
