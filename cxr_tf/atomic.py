"""Files that are either wholly old or wholly new: write beside, then rename.

A job killed mid-write (SIGKILL, preemption) must not leave a truncated config.json, report
or thresholds file that a resumed run or a server would then read.
"""

import json
import os


def write_json(path, obj, **dump_options):
    """json.dump(obj, **dump_options) into `path`.tmp, then os.replace onto `path`."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, **dump_options)
    os.replace(tmp, path)
    return path
