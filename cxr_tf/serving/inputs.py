"""Which files a predict run reads: pure Python, so that an input set without images is
refused before TensorFlow starts (seconds a user would wait for a one-line error)."""

import os

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def list_inputs(paths):
    """Files to predict, in order: each file as given, each folder's images sorted. Links to
    folders are not followed (os.walk's default), so a link loop cannot trap the walk."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found += [os.path.join(root, name) for name in sorted(files)
                          if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")]
        else:
            found.append(path)  # kept even if missing: it is reported as a failure
    return found
