"""Cuts the committed real-metadata slice used by the tests (run once; output is committed).

    python tests/data/make_slice.py [--nih_dir=../shared/data/nih]

Takes whole patients 1..111 (443 rows) from the real `Data_Entry_2017_v2020.csv.gz`: the
first 111 patient ids are the smallest run of whole patients that holds every one of the 14
findings, Hernia included, in both train_val and test, plus multi-label rows in both. Writes:
  nih_slice/Data_Entry_2017_v2020.csv.gz   the rows verbatim, header included
  nih_slice/train_val_list.txt, test_list.txt   the official lists restricted to those rows
  kaggle_2017/Data_Entry_2017.csv          the same rows in the 2017 Kaggle format: a trailing
                                           comma on every line, and three ages set above 120
                                           (148, 411, 412), as in the original Kaggle file.
"""

import argparse
import gzip
import os

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_PATIENT = 111
# Image id -> implausible age written into the 2017-format copy.
BAD_AGES = {"00000013_005.png": "148", "00000061_012.png": "411", "00000099_000.png": "412"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nih_dir", default=os.path.join(HERE, "..", "..", "..", "shared",
                                                          "data", "nih"))
    args = parser.parse_args()
    with gzip.open(os.path.join(args.nih_dir, "Data_Entry_2017_v2020.csv.gz"), "rt") as f:
        header, *lines = f.read().splitlines()
    rows = [line for line in lines if int(line.split(",")[3]) <= MAX_PATIENT]
    ids = {line.split(",")[0] for line in rows}
    assert all(image_id in ids for image_id in BAD_AGES), "BAD_AGES must name slice rows"

    out = os.path.join(HERE, "nih_slice")
    os.makedirs(out, exist_ok=True)
    # mtime=0 keeps the gzip bytes identical between runs.
    with open(os.path.join(out, "Data_Entry_2017_v2020.csv.gz"), "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(("\n".join([header] + rows) + "\n").encode())
    for name in ("train_val_list.txt", "test_list.txt"):
        with open(os.path.join(args.nih_dir, name)) as f:
            kept = [line.strip() for line in f if line.strip() in ids]
        with open(os.path.join(out, name), "w") as f:
            f.write("\n".join(kept) + "\n")

    out = os.path.join(HERE, "kaggle_2017")
    os.makedirs(out, exist_ok=True)
    kaggle = [header + ","]
    for line in rows:
        fields = line.split(",")
        fields[4] = BAD_AGES.get(fields[0], fields[4])
        kaggle.append(",".join(fields) + ",")
    with open(os.path.join(out, "Data_Entry_2017.csv"), "w") as f:
        f.write("\n".join(kaggle) + "\n")
    print(f"{len(rows)} rows of {MAX_PATIENT} patients")


if __name__ == "__main__":
    main()
