"""Tests for cxr_tf.labels: the NIH label order and Finding Labels -> multi-hot."""

import numpy as np
import pytest

from cxr_tf import labels

_EXPECTED_TAIL = (
    "expected 'No Finding' or '|'-separated names from Atelectasis, Cardiomegaly, Effusion, "
    "Infiltration, Mass, Nodule, Pneumonia, Pneumothorax, Consolidation, Edema, Emphysema, "
    "Fibrosis, Pleural_Thickening, Hernia"
)


def test_label_order_is_nih_order():
    assert labels.LABELS == (
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
        "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
        "Pleural_Thickening", "Hernia",
    )
    assert labels.NUM_CLASSES == 14


def test_multi_hot_sets_exactly_the_named_positions():
    vector = labels.to_multi_hot("Cardiomegaly|Effusion|Hernia")
    assert vector.dtype == np.uint8
    assert np.flatnonzero(vector).tolist() == [1, 2, 13]
    # Order in the text does not matter; a repeated name is one label.
    np.testing.assert_array_equal(labels.to_multi_hot("Hernia|Effusion|Cardiomegaly|Hernia"),
                                  vector)
    assert labels.parse_findings("Hernia|Atelectasis") == ["Atelectasis", "Hernia"]


def test_no_finding_is_all_zero():
    np.testing.assert_array_equal(labels.to_multi_hot("No Finding"), np.zeros(14, np.uint8))
    assert labels.parse_findings("No Finding") == []


def test_round_trip():
    for text in ("No Finding", "Atelectasis", "Effusion|Infiltration|Pleural_Thickening"):
        assert labels.from_multi_hot(labels.to_multi_hot(text)) == text
    with pytest.raises(ValueError, match=r"expected a vector of 14 labels, got shape \(13,\)"):
        labels.from_multi_hot(np.zeros(13))


def test_misspelling_raises_with_exact_message():
    with pytest.raises(labels.UnknownLabelError) as info:
        labels.to_multi_hot("Effusion|Pleural_Thickning")
    assert info.value.label == "Pleural_Thickning"
    assert str(info.value) == (
        "unknown label 'Pleural_Thickning' in Finding Labels 'Effusion|Pleural_Thickning'; "
        + _EXPECTED_TAIL
    )


@pytest.mark.parametrize("text, bad", [
    ("No Finding|Effusion", "No Finding"),  # never "no finding and a finding"
    ("effusion", "effusion"),  # case matters: no guessing
    ("", ""),
    ("Effusion|", ""),
])
def test_other_unknown_labels_raise(text, bad):
    with pytest.raises(labels.UnknownLabelError) as info:
        labels.to_multi_hot(text)
    assert info.value.label == bad


def spellings(name):
    """The variants a careless CSV might hold: case, underscores and spaces swapped or gone."""
    forms = {name.lower(), name.upper(), name.swapcase(), name.capitalize(), name.title(),
             name.replace("_", " "), name.replace("_", ""), name.replace(" ", "_"),
             name.replace(" ", ""), name[:1] + name[1:].lower(), name + "s"}
    if "_" in name:
        first, second = name.split("_")
        forms |= {f"{first}_{second.lower()}", f"{first.lower()}_{second}",
                  f"{second}_{first}"}
    return forms - {name}


def test_the_vocabulary_is_exactly_the_14_findings_and_no_finding():
    """Issue 23: an alias (Pleural_thickening -> Pleural_Thickening) passed the suite, which
    pinned "never guess a label" by one misspelling. Every case and underscore variant of
    every name is refused with the documented error; only the names themselves are taken."""
    accepted = set()
    for name in (*labels.LABELS, labels.NO_FINDING):
        found = labels.parse_findings(name)
        assert found == ([] if name == labels.NO_FINDING else [name])
        accepted.add(name)
        for variant in sorted(spellings(name)):
            with pytest.raises(labels.UnknownLabelError) as info:
                labels.parse_findings(variant)
            assert info.value.label == variant
            assert str(info.value) == (f"unknown label {variant!r} in Finding Labels "
                                       f"{variant!r}; " + _EXPECTED_TAIL)
            with pytest.raises(labels.UnknownLabelError):
                labels.to_multi_hot(f"Effusion|{variant}")
    assert accepted == set(labels.LABELS) | {labels.NO_FINDING}
    assert "Pleural_thickening" in spellings("Pleural_Thickening")
    assert "Infiltrate" not in labels.LABELS  # NIH's box list spelling: mapped there, not here
    with pytest.raises(labels.UnknownLabelError):
        labels.parse_findings("Infiltrate")
