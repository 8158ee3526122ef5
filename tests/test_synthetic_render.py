"""Tests for cxr_tf.synthetic.renderer: each finding's signature survives a downscale to 64 px
(the demo's training size) and differs from every other finding's."""

import functools

import numpy as np
import pytest

from cxr_tf import labels
from cxr_tf.data import images
from cxr_tf.synthetic import renderer


@functools.lru_cache(maxsize=None)
def _film_at_64(size, findings, i):
    """Rendered at `size` for patient/image seeds i, then resized to 64 px (as the demo);
    cached, since the film without a finding is the baseline of every finding's check."""
    return images.resize(renderer.render(size, findings, [0, 1, i], [0, 2, i]), 64)


@pytest.mark.parametrize("name", labels.LABELS)
def test_every_signature_stays_visible_at_64_px(name):
    # Same patient and image seeds with and without the finding: only the signature differs.
    for i in range(3):
        with_it, without = _film_at_64(256, (name,), i), _film_at_64(256, (), i)
        diff = np.abs(with_it.astype(int) - without.astype(int))
        assert diff.max() >= 40 and (diff > 20).sum() >= 10, (name, diff.max(), (diff > 20).sum())


def test_signatures_are_distinct():
    maps = {}
    for name in labels.LABELS:
        with_it, without = _film_at_64(128, (name,), 9), _film_at_64(128, (), 9)
        maps[name] = (with_it.astype(float) - without.astype(float)).ravel()
    for a in labels.LABELS:
        for b in labels.LABELS:
            if a < b:
                corr = np.corrcoef(maps[a], maps[b])[0, 1]
                assert corr < 0.9, (a, b, corr)
