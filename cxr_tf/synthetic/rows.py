"""The metadata rows of the synthetic NIH set: findings, patients, follow-ups, age, sex, view.

Drawn from the real NIH figures embedded below, so that the synthetic Data_Entry CSV has the
real label prevalence and co-occurrence, patients with many images, and a patient-disjoint
test list of the real size. `cxr_tf.synthetic` writes the rows and their films.
"""

import numpy as np

from cxr_tf import labels

# ---- Real NIH figures. Computed once with pandas from Data_Entry_2017_v2020.csv.gz (112,120 rows,
# 30,805 patients) and the official train_val/test lists; the generator never reads them.
_ROWS = 112_120
# Rows carrying each finding (value_counts of the '|'-split Finding Labels). No Finding: 60,361.
_LABEL_ROWS = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894,
    "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302,
    "Consolidation": 4667, "Edema": 2303, "Emphysema": 2516, "Fibrosis": 1686,
    "Pleural_Thickening": 3385, "Hernia": 227,
}
REAL_PREVALENCE = {name: n / _ROWS for name, n in _LABEL_ROWS.items()}
REAL_NO_FINDING = 60_361 / _ROWS  # 0.538
# Rows by number of findings (0 = No Finding); 2+ findings: 20,796 rows = 18.5%.
_ROWS_BY_COUNT = (60361, 30963, 14306, 4856, 1247, 301, 67, 16, 1, 2)
REAL_MULTI_LABEL = sum(_ROWS_BY_COUNT[2:]) / _ROWS
# The 48 most frequent Finding Labels strings (Counter(...).most_common(48)), 93.2% of the rows.
# The other 7,570 rows are drawn from what remains of each label's count (see LabelSampler).
_TOP_COMBOS = """60361 No Finding; 9547 Infiltration; 4215 Atelectasis; 3955 Effusion;
2705 Nodule; 2194 Pneumothorax; 2139 Mass; 1603 Effusion|Infiltration;
1350 Atelectasis|Infiltration; 1310 Consolidation; 1165 Atelectasis|Effusion;
1126 Pleural_Thickening; 1093 Cardiomegaly;
892 Emphysema; 829 Infiltration|Nodule; 737 Atelectasis|Effusion|Infiltration; 727 Fibrosis;
628 Edema; 484 Cardiomegaly|Effusion; 441 Consolidation|Infiltration; 420 Infiltration|Mass;
403 Effusion|Pneumothorax; 402 Effusion|Mass; 398 Atelectasis|Consolidation; 394 Mass|Nodule;
392 Edema|Infiltration; 345 Infiltration|Pneumothorax; 337 Emphysema|Pneumothorax;
337 Consolidation|Effusion; 322 Pneumonia; 251 Effusion|Pleural_Thickening; 249 Effusion|Nodule;
240 Atelectasis|Pneumothorax; 210 Infiltration|Pleural_Thickening; 200 Cardiomegaly|Infiltration;
200 Atelectasis|Consolidation|Effusion; 199 Infiltration|Pneumonia; 199 Atelectasis|Nodule;
189 Edema|Effusion; 185 Fibrosis|Infiltration; 178 Mass|Pneumothorax; 175 Atelectasis|Mass;
151 Consolidation|Mass; 140 Nodule|Pleural_Thickening; 137 Edema|Infiltration|Pneumonia;
134 Consolidation|Effusion|Infiltration; 132 Mass|Pleural_Thickening; 130 Nodule|Pneumothorax"""
# Patients by number of images, as (fewest, most, patients): 57% have one image, 18 have 101+.
_PATIENTS_BY_IMAGES = ((1, 1, 17503), (2, 2, 4113), (3, 3, 2100), (4, 4, 1330), (5, 5, 938),
                       (6, 7, 1395), (8, 10, 1201), (11, 15, 983), (16, 20, 439), (21, 30, 406),
                       (31, 50, 246), (51, 100, 133), (101, 184, 18))
# Age at the first image, patients per decade 0-9 ... 90-99. A patient's first and last images
# are 1.8 years apart on average (median 1, max 14): we draw 0..min(images, 5) years.
_FIRST_AGE_DECADES = (626, 1466, 3728, 4940, 6345, 7117, 4647, 1644, 280, 12)
_MAX_AGE_SPAN = 5
_MALE_PATIENTS = 0.540
# AP share grows with follow-ups (bedside films): 11.8% of first images, 57.7% from the 6th on.
_AP_FIRST, _AP_LATE, _AP_LATE_FROM = 0.118, 0.577, 5
# Test: 25,596 of 112,120 images; NIH test patients have 9.2 images on average vs 3.1.
_TEST_SHARE = 25_596 / _ROWS
# The most frequent (width, height, pixel spacing) of the original films, with their rows.
_ORIGINALS = ((2500, 2048, 0.168, 29986), (2992, 2991, 0.143, 21961), (3056, 2544, 0.139, 15340),
              (2500, 2048, 0.171, 7143), (2048, 2500, 0.168, 5817), (2021, 2021, 0.194, 4410),
              (2048, 2500, 0.171, 2838), (2544, 3056, 0.139, 2418))


class LabelSampler:
    """Draws Finding Labels with the real marginals and co-occurrence.

    93% of rows come from the real top-48 combinations at their real frequency. The rest draw a
    finding count from the real count histogram minus the table's, then that many distinct
    findings weighted by what the table leaves of each label's real count: so rare labels and
    rare combinations (Hernia appears only there) keep close to their real share. Measured on
    10^6 draws: every label within 5% of its real prevalence, but Hernia +10% (0.22% for
    0.20%), as drawing without replacement favours the rare labels.
    """

    def __init__(self):
        combos = [item.strip().split(" ", 1) for item in _TOP_COMBOS.split(";")]
        self.combos = [tuple(labels.parse_findings(text)) for _, text in combos]
        counts = np.array([int(n) for n, _ in combos], dtype=np.float64)
        rest_labels = dict(_LABEL_ROWS)
        rest_counts = np.array(_ROWS_BY_COUNT, dtype=np.float64)
        for combo, n in zip(self.combos, counts):
            rest_counts[len(combo)] -= n
            for name in combo:
                rest_labels[name] -= n
        self.p = np.append(counts, _ROWS - counts.sum()) / _ROWS
        self.rest_k = rest_counts / rest_counts.sum()
        weights = np.array([rest_labels[name] for name in labels.LABELS], dtype=np.float64)
        self.rest_w = weights / weights.sum()

    def draw(self, rng, n):
        """n label tuples (names in NIH order; () is No Finding)."""
        picks = rng.choice(len(self.p), size=n, p=self.p)
        out = [self.combos[i] if i < len(self.combos) else None for i in picks]
        for row in np.flatnonzero(picks == len(self.combos)):
            k = rng.choice(len(self.rest_k), p=self.rest_k)
            chosen = rng.choice(labels.NUM_CLASSES, size=k, replace=False, p=self.rest_w)
            out[row] = tuple(labels.LABELS[j] for j in sorted(chosen))
        return out


def _raise_prevalence(rng, findings, min_prevalence):
    """Adds each finding whose real prevalence is below min_prevalence to images without it.

    Each lacking image gets it with probability (m - p) / (1 - p), so the expected prevalence
    is exactly m. Side effects: No Finding falls (from 54% to ~24% at m=0.1) and multi-label
    rows rise (from 19% to ~44%), as the added findings land on the real combinations
    independently; the frequent findings (Infiltration, Effusion, ...) keep their real share.
    """
    for name in labels.LABELS:
        p = REAL_PREVALENCE[name]
        if min_prevalence <= p:
            continue
        add = rng.random(len(findings)) < (min_prevalence - p) / (1 - p)
        for i in np.flatnonzero(add):
            if name not in findings[i]:
                findings[i] = tuple(n for n in labels.LABELS if n in findings[i] or n == name)
    return findings


def sample_rows(num_images, seed=0, min_prevalence=0.0):
    """The metadata rows (dicts, in image-id order) of a synthetic set; no pixels."""
    if num_images < 1 or seed < 0 or not 0 <= min_prevalence < 1:
        raise ValueError(f"need num_images >= 1, seed >= 0 and 0 <= min_prevalence < 1, got "
                         f"{num_images}, {seed}, {min_prevalence}")
    rng = np.random.default_rng([seed, 0])
    # One patient holds at most 2% of the set, so a patient-wise split stays balanced.
    cap = max(1, num_images // 50)
    bins = [(lo, min(hi, cap), n) for lo, hi, n in _PATIENTS_BY_IMAGES if lo <= cap]
    lo, hi = (np.array(v) for v in zip(*[(lo, hi) for lo, hi, _ in bins]))
    bin_p, counts, total = _normalized([n for *_, n in bins]), [], 0
    while total < num_images:  # patients' image counts, drawn in batches for speed
        b = rng.choice(len(bins), size=256, p=bin_p)
        for count in rng.integers(lo[b], hi[b] + 1):
            if total < num_images:
                counts.append(min(int(count), num_images - total))
                total += counts[-1]
    findings = _raise_prevalence(rng, LabelSampler().draw(rng, num_images), min_prevalence)
    originals = rng.choice(len(_ORIGINALS), num_images, p=_normalized([o[3] for o in _ORIGINALS]))
    ap_draws, n = rng.random(num_images), len(counts)
    ages = 10 * rng.choice(10, size=n, p=_normalized(_FIRST_AGE_DECADES)) + rng.integers(0, 10, n)
    males = rng.random(n) < _MALE_PATIENTS
    spans = rng.integers(0, np.minimum(counts, _MAX_AGE_SPAN) + 1)  # years, first to last image
    rows = []
    for patient, (count, age, male, span) in enumerate(zip(counts, ages, males, spans), 1):
        for follow_up in range(count):
            i = len(rows)
            ap = _AP_FIRST + (_AP_LATE - _AP_FIRST) * min(follow_up, _AP_LATE_FROM) / _AP_LATE_FROM
            width, height, spacing, _ = _ORIGINALS[originals[i]]
            rows.append({
                "image_index": f"{patient:08d}_{follow_up:03d}.png", "patient_id": patient,
                "follow_up": follow_up, "findings": findings[i],
                "age": int(min(age + span * follow_up // count, 95)), "sex": "M" if male else "F",
                "view": "AP" if ap_draws[i] < ap else "PA",
                "width": width, "height": height, "spacing": spacing,
            })
    return rows


def _normalized(weights):
    weights = np.asarray(weights, dtype=np.float64)
    return weights / weights.sum()


def test_patients(rng, rows):
    """Patients drawn for test, more likely the more images they have (as in NIH), to ~22.8%."""
    sizes = {}
    for row in rows:
        sizes[row["patient_id"]] = sizes.get(row["patient_id"], 0) + 1
    ids = np.array(sorted(sizes))
    weight = np.array([sizes[i] for i in ids], dtype=np.float64)
    order = ids[np.argsort(-rng.random(len(ids)) ** (1 / weight))]  # weighted shuffle
    target, taken, test = _TEST_SHARE * len(rows), 0, set()
    for pid in order:
        if taken + sizes[pid] / 2 <= target:  # skip a patient that would overshoot by more
            test.add(int(pid))
            taken += sizes[pid]
    return test
